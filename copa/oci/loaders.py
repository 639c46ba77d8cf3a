"""`-l/--loader`: put the patched image into a local image store, podman's or a Docker engine's.

What Copacetic does (pkg/imageloader, pkg/patch/single.go and multi.go), and what copa follows:
- The image is handed over as a docker-archive tar; the store tags it by the archive's RepoTags, the patched
  name (`REPO:TAG`), and the store's image ID is the config digest (Docker's classic store, podman).
- A multi-platform result is loaded one image per patched platform, each tagged `TAG-ARCH[-VARIANT]` (the
  caller names them: copa.targets.platform_tag); platforms kept as they were are not loaded. A local store holds one
  platform per name.
- podman has no daemon: the `podman` command loads the archive (`podman load -i FILE`). The Docker engine is
  spoken to over its API (`POST /images/load`, the tar streamed as the body); no docker command is needed.

The archive is written by copa's own writer (copa.oci.archive) into the caller's work directory and removed
after the load: a docker-archive is the one format both podman and every Docker engine version read (the
engine reads OCI archives only from version 25 on).
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from copa.errors import LoaderError, UsageError
from copa.oci.archive import write_archive
from copa.oci.digest import Digest, InvalidDigest
from copa.oci.image import Bundle
from copa.oci.model import Manifest
from copa.oci.reference import Reference, valid_tag

if TYPE_CHECKING:
    from copa.oci.transport import Written

LOADERS = ("podman", "docker")
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
# skopeo's transport names for the two stores: how the loaded image is named in copa's output.
_TRANSPORT = {"podman": "containers-storage", "docker": "docker-daemon"}
_CHUNK = 1 << 20
_PING_TIMEOUT = 10.0  # an engine that does not answer a ping in this long is not going to take an image


def load(
    loader: str,
    bundle: Bundle,
    name: str,
    workdir: Path,
    *,
    manifest: Manifest | None = None,
    timeout: float = 300.0,
    env: Mapping[str, str] | None = None,
) -> Written:
    """Load one image of `bundle` (its primary one, or `manifest`) into `loader`'s store, tagged `name`.

    `name` is a full `REPO:TAG` (the store needs a repository to tag; for a multi-platform result, one call per
    patched platform with its `manifest` and its TAG-ARCH[-VARIANT] name). `env` defaults to the process
    environment (podman's CONTAINERS_* settings, DOCKER_HOST and friends). Returns the loaded name and the store's
    image ID."""
    check_name(name)
    environ = os.environ if env is None else env
    # A missing podman or a silent engine fails here, before time and disk go into the archive.
    store = _ready(loader, environ, timeout)
    image = dataclasses.replace(bundle, primary=manifest) if manifest is not None else bundle
    archive = workdir / f"load-{image.primary.digest.hex[:16]}.tar"
    try:
        write_archive(archive, image, [name])
        if isinstance(store, Endpoint):
            loaded, image_id = _docker_load(store, archive, name, timeout)
        else:
            loaded, image_id = _podman_load(store, archive, name, environ)
    finally:
        with contextlib.suppress(FileNotFoundError):
            archive.unlink()
    # Imported here: transport's write_outputs calls load, so a module-level import would be circular.
    from copa.oci.transport import Written

    return Written(loader, f"{_TRANSPORT[loader]}:{loaded}", image_id)


def check_available(loader: str, *, timeout: float = _PING_TIMEOUT, env: Mapping[str, str] | None = None) -> None:
    """Fail now (LoaderError) when `loader`'s store cannot take an image: called before any work or push, so a
    run that cannot load leaves nothing behind."""
    _ready(loader, os.environ if env is None else env, timeout)


def _ready(loader: str, env: Mapping[str, str], timeout: float) -> str | Endpoint:
    """podman's path, or the Docker engine's endpoint once it has answered a ping."""
    if loader not in LOADERS:
        raise UsageError(f"unknown loader {loader!r}: use -l podman or -l docker")
    if loader == "podman":
        return _podman_binary(env)
    endpoint = docker_endpoint(env)
    _ping(endpoint, min(timeout, _PING_TIMEOUT))
    return endpoint


def detect_loader(env: Mapping[str, str] | None = None) -> str | None:
    """Copacetic's choice when no loader is named: a Docker engine that answers a ping, else podman when it is
    installed, else None."""
    environ = os.environ if env is None else env
    for loader in ("docker", "podman"):
        with contextlib.suppress(LoaderError):
            _ready(loader, environ, _PING_TIMEOUT)
            return loader
    return None


def check_name(name: str) -> None:
    """Refuse a name a store cannot tag (called by load; callable early, before any patch work)."""
    repo, sep, tag = name.rpartition(":")
    ok = bool(sep and repo and "/" not in tag and valid_tag(tag))
    if ok:
        try:
            Reference.parse(name)
        except UsageError:
            ok = False
    if not ok:
        raise UsageError(f"cannot load the image as {name!r}: a local image store needs a REPOSITORY:TAG name; "
                         "pass -t REPOSITORY:TAG")


# --- podman -----------------------------------------------------------------------------------------------


def _podman_binary(env: Mapping[str, str]) -> str:
    found = shutil.which("podman", path=env.get("PATH", os.defpath))
    if found is None:
        raise LoaderError("podman is not installed: install podman or drop -l podman")
    return found


def _podman(podman: str, args: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        # stdin from /dev/null: podman must never wait for an answer on a terminal.
        return subprocess.run([podman, *args], capture_output=True, text=True, check=False, env=dict(env),
                              stdin=subprocess.DEVNULL)
    except OSError as e:
        raise LoaderError(f"cannot run {podman}: {e.strerror or e}; check the podman installation") from None


def _first_error(stderr: str) -> str:
    """podman's message: its `Error: ...` line (progress lines can come first), else the first line at all. When
    that line only introduces a list (`... any of the supported image formats:`), the docker-archive item says
    what was wrong with the archive copa gave it."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    error = next((line.removeprefix("Error: ") for line in lines if line.startswith("Error: ")), "")
    if not error:
        return lines[0] if lines else "no message"
    if error.endswith(":"):
        detail = next((line.removeprefix("* ") for line in lines if line.startswith("* docker-archive:")), "")
        return f"{error} {detail}" if detail else error.removesuffix(":")
    return error


def _podman_load(podman: str, archive: Path, name: str, env: Mapping[str, str]) -> tuple[str, Digest]:
    proc = _podman(podman, ["load", "--quiet", "--input", str(archive)], env)
    if proc.returncode != 0:
        raise LoaderError(f"podman load failed: {_first_error(proc.stderr)}")
    # podman names the image as it normalises the archive's RepoTag ("app:1.0" -> "localhost/app:1.0"):
    # the name it printed is the one to inspect and to report.
    names = _podman_loaded_names(proc.stdout)
    loaded = names[0] if names else name
    proc = _podman(podman, ["image", "inspect", "--format", "{{.Id}}", loaded], env)
    if proc.returncode != 0:
        raise LoaderError(f"podman loaded the image but cannot inspect {loaded}: {_first_error(proc.stderr)}")
    return loaded, _image_id(proc.stdout.strip(), "podman")


def _podman_loaded_names(stdout: str) -> list[str]:
    """`Loaded image: NAME` (podman 4), `Loaded image(s): A,B` (podman 3)."""
    names: list[str] = []
    for line in stdout.splitlines():
        head, sep, rest = line.partition(":")
        if sep and head.strip() in ("Loaded image", "Loaded image(s)"):
            names.extend(n.strip() for n in rest.split(",") if n.strip())
    return names


def _image_id(text: str, what: str) -> Digest:
    try:
        return Digest.parse(text if ":" in text else f"sha256:{text}")
    except InvalidDigest:
        raise LoaderError(f"{what} reported image ID {text!r}, which is not a digest") from None


# --- Docker engine ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the Docker engine listens: a unix socket, or TCP (TLS when DOCKER_TLS_VERIFY/DOCKER_TLS ask)."""

    url: str  # as configured, for messages
    socket_path: str = ""
    host: str = ""
    port: int = 0
    tls: bool = False
    verify: bool = False
    cert_path: Path | None = None


def docker_endpoint(env: Mapping[str, str]) -> Endpoint:
    """DOCKER_HOST, else the current docker context's endpoint (DOCKER_CONTEXT or config.json's currentContext,
    as the docker CLI and Copacetic pick it), else /var/run/docker.sock."""
    url = env.get("DOCKER_HOST") or _context_host(env) or DEFAULT_DOCKER_HOST
    tls = bool(env.get("DOCKER_TLS_VERIFY") or env.get("DOCKER_TLS"))
    verify = bool(env.get("DOCKER_TLS_VERIFY"))
    cert_path = Path(env["DOCKER_CERT_PATH"]) if env.get("DOCKER_CERT_PATH") else _docker_config_dir(env)
    parts = urlsplit(url)
    if parts.scheme == "unix" and (parts.path or parts.netloc):
        return Endpoint(url, socket_path=parts.netloc + parts.path)
    if parts.scheme in ("tcp", "http", "https") and parts.hostname:
        try:
            port = parts.port or (2376 if tls or parts.scheme == "https" else 2375)
        except ValueError:
            port = 0
        if port:
            return Endpoint(url, host=parts.hostname, port=port, tls=tls or parts.scheme == "https", verify=verify,
                            cert_path=cert_path)
    if parts.scheme == "ssh":
        raise LoaderError(f"Docker host {url} is reached over ssh, which copa does not speak: forward the socket "
                          "(ssh -L /tmp/docker.sock:/var/run/docker.sock HOST) and set "
                          "DOCKER_HOST=unix:///tmp/docker.sock, or use -l podman")
    raise LoaderError(f"Docker host {url!r} is not a unix:// or tcp://HOST:PORT address: fix DOCKER_HOST (or the "
                      "docker context), or use -l podman")


def _docker_config_dir(env: Mapping[str, str]) -> Path:
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"])
    return Path(env.get("HOME") or Path.home()) / ".docker"


def _context_host(env: Mapping[str, str]) -> str:
    """The docker endpoint of the current context; "" for the default context or when none is set up.

    A context's metadata lives in DOCKER_CONFIG/contexts/meta/<sha256 of its name>/meta.json."""
    config_dir = _docker_config_dir(env)
    name = env.get("DOCKER_CONTEXT", "")
    if not name:
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads((config_dir / "config.json").read_text())
            if isinstance(doc, dict) and isinstance(doc.get("currentContext"), str):
                name = doc["currentContext"]
    if not name or name == "default":
        return ""
    meta_path = config_dir / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest() / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        raise LoaderError(f"docker context {name!r} has no readable endpoint ({meta_path}): fix the context "
                          "(docker context use default), set DOCKER_HOST, or use -l podman") from None
    host = meta.get("Endpoints", {}).get("docker", {}).get("Host") if isinstance(meta, dict) else None
    if not isinstance(host, str) or not host:
        raise LoaderError(f"docker context {name!r} names no Docker endpoint: fix the context, set DOCKER_HOST, or "
                          "use -l podman")
    return host


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout, blocksize=_CHUNK)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _tls_context(endpoint: Endpoint) -> ssl.SSLContext:
    """The docker CLI's TLS: ca.pem, cert.pem and key.pem from DOCKER_CERT_PATH (default ~/.docker)."""
    certs = endpoint.cert_path or Path("~/.docker").expanduser()
    try:
        if endpoint.verify:
            ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        else:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if (certs / "cert.pem").exists():
            ctx.load_cert_chain(str(certs / "cert.pem"), str(certs / "key.pem"))
    except (OSError, ssl.SSLError) as e:
        raise LoaderError(f"cannot read the Docker TLS certificates in {certs}: {getattr(e, 'strerror', None) or e}; "
                          "check DOCKER_CERT_PATH") from None
    return ctx


def _connect(endpoint: Endpoint, timeout: float) -> http.client.HTTPConnection:
    if endpoint.socket_path:
        return _UnixConnection(endpoint.socket_path, timeout)
    if endpoint.tls:
        return http.client.HTTPSConnection(endpoint.host, endpoint.port, timeout=timeout, blocksize=_CHUNK,
                                           context=_tls_context(endpoint))
    return http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout, blocksize=_CHUNK)


def _no_engine(endpoint: Endpoint, detail: str = "") -> LoaderError:
    why = f" ({detail})" if detail else ""
    return LoaderError(f"no Docker engine answers at {endpoint.url}{why}: start it, set DOCKER_HOST, or use -l podman")


def _ping(endpoint: Endpoint, timeout: float) -> None:
    conn = _connect(endpoint, timeout)
    try:
        conn.request("GET", "/_ping")
        resp = conn.getresponse()
        body = resp.read(4096)
    except PermissionError:
        raise LoaderError(f"permission denied on the Docker socket {endpoint.socket_path}: join the group that owns "
                          "it (usually docker), set DOCKER_HOST, or use -l podman") from None
    except ssl.SSLError as e:
        certs = endpoint.cert_path or "~/.docker"
        raise LoaderError(f"the TLS handshake with the Docker engine at {endpoint.url} failed ({e.reason or e}): "
                          f"check DOCKER_CERT_PATH ({certs}: ca.pem, cert.pem, key.pem) and DOCKER_TLS_VERIFY"
                          ) from None
    except (OSError, http.client.HTTPException) as e:
        raise _no_engine(endpoint, _reason(e)) from None
    finally:
        conn.close()
    if resp.status != 200:
        raise LoaderError(f"the Docker engine at {endpoint.url} answered a ping with HTTP {resp.status} "
                          f"({_api_message(body)}): check DOCKER_HOST and DOCKER_TLS_VERIFY, or use -l podman")


def _reason(e: BaseException) -> str:
    if isinstance(e, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _api_message(body: bytes) -> str:
    """An engine error body: {"message": ...} JSON, or plain text."""
    text = body.decode("utf-8", "replace").strip()
    with contextlib.suppress(ValueError):
        doc = json.loads(text)
        if isinstance(doc, dict) and isinstance(doc.get("message"), str):
            return str(doc["message"])
    return text.splitlines()[0] if text else "no message"


@dataclass(frozen=True, slots=True)
class _Message:
    """One message of the engine's JSON stream; only its error matters here (progress text is not shown)."""

    error: str = ""

    @classmethod
    def parse(cls, doc: Any) -> _Message:
        if not isinstance(doc, dict):
            return cls()
        detail = doc.get("errorDetail")
        error = detail.get("message") if isinstance(detail, dict) else None
        error = error or doc.get("error")
        return cls(error if isinstance(error, str) else "")


def _messages(resp: http.client.HTTPResponse) -> Iterator[_Message]:
    """The concatenated JSON objects of a streamed response, parsed as they arrive."""
    decoder = json.JSONDecoder()
    text = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may be split across reads
    buffer = ""
    while chunk := resp.read1(65536):
        buffer += text.decode(chunk)
        while buffer := buffer.lstrip():
            try:
                doc, end = decoder.raw_decode(buffer)
            except ValueError:
                break  # an object not complete yet
            buffer = buffer[end:]
            yield _Message.parse(doc)
    if buffer.strip():
        yield _Message(error=f"unreadable answer from the engine: {buffer.strip()[:200]}")


def _docker_load(endpoint: Endpoint, archive: Path, name: str, timeout: float) -> tuple[str, Digest]:
    conn = _connect(endpoint, timeout)
    try:
        size = archive.stat().st_size
        with archive.open("rb") as body:
            try:
                # http.client sends a file body in blocksize pieces: the tar is never in memory whole.
                conn.request("POST", "/images/load?quiet=1", body=body,
                             headers={"Content-Type": "application/x-tar", "Content-Length": str(size)})
            except (BrokenPipeError, ConnectionResetError):
                pass  # the engine may have refused the upload part-way: its answer says why
            except (OSError, http.client.HTTPException) as e:
                raise LoaderError(f"the Docker engine at {endpoint.url} stopped taking the image ({_reason(e)}); "
                                  "check its log") from None
        try:
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            raise LoaderError(f"the Docker engine at {endpoint.url} dropped the image load ({_reason(e)}); check "
                              "its log") from None
        if resp.status != 200:
            raise LoaderError(f"the Docker engine at {endpoint.url} refused the image: {_api_message(resp.read())}")
        try:
            errors = [m.error for m in _messages(resp) if m.error]
        except (OSError, http.client.HTTPException) as e:
            raise LoaderError(f"the Docker engine at {endpoint.url} stopped answering during the load "
                              f"({_reason(e)}); check its log") from None
        if errors:
            raise LoaderError(f"the Docker engine at {endpoint.url} refused the image: {errors[0]}")
    finally:
        conn.close()
    return name, _docker_image_id(endpoint, name, timeout)


def _docker_image_id(endpoint: Endpoint, name: str, timeout: float) -> Digest:
    conn = _connect(endpoint, timeout)
    try:
        conn.request("GET", f"/images/{quote(name, safe='/:@')}/json")
        resp = conn.getresponse()
        body = resp.read()
    except (OSError, http.client.HTTPException) as e:
        raise LoaderError(f"the Docker engine at {endpoint.url} loaded the image but did not answer about it "
                          f"({_reason(e)})") from None
    finally:
        conn.close()
    if resp.status != 200:
        raise LoaderError(f"the Docker engine at {endpoint.url} loaded the image but has no {name}: "
                          f"{_api_message(body)}")
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    image_id = doc.get("Id") if isinstance(doc, dict) else None
    if not isinstance(image_id, str):
        raise LoaderError(f"the Docker engine at {endpoint.url} answered without an image ID for {name}")
    return _image_id(image_id, "the Docker engine")
