"""`-l podman|docker` (copa/oci/loaders.py) against the real stores: podman in a private store
(tests/support/podman.py) and a real dockerd started here (tests/support/dockerd.py). The oracle is what each
store says about the image it holds (`podman image inspect`, the Engine API's /images/NAME/json), compared with
the image copa wrote: its config digest (the image ID), its diff_ids and its name.

The image is a copa-patched one: the tiny hermetic Debian image (tests/support/debimage.py) with a gzip layer
written by copa's layer writer appended by copa's mutate, so the loaders get a compressed layer to unpack into
the archive as they would after a real patch.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from copa.errors import LoaderError, UsageError
from copa.oci.image import Bundle, Image
from copa.oci.layer import Entry, write_layer
from copa.oci.layout import LayoutSource
from copa.oci.loaders import (
    DEFAULT_DOCKER_HOST,
    Endpoint,
    _docker_load,
    detect_loader,
    docker_endpoint,
    load,
)
from copa.oci.model import Manifest, MediaType
from copa.oci.mutate import append_layer, original_of
from tests.support import debimage, images, multiplatform
from tests.support.aptrepo import AptRepo, RepoServer
from tests.support.dockerd import Dockerd
from tests.support.podman import PodmanStore
from tests.support.registry import free_port
from tests.support.trivy import write_report

ROOT = Path(__file__).resolve().parents[1]

CREATED = "2026-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def patched(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    base = debimage.base_image()
    source = LayoutSource(base.layout, base.ref)
    root = source.root()
    assert isinstance(root, Manifest)
    image = Image.load(source, root)
    layer = write_layer([Entry.file("etc/copa-loaded", b"patched\n")], tmp_path_factory.mktemp("layer"))
    return append_layer(source, root, image, layer, original_of(image, base.image_ref), created=CREATED,
                        comment="loaders test")


@pytest.fixture(scope="module")
def config(patched: Bundle) -> dict[str, object]:
    with patched.open_blob(patched.primary.config) as f:
        doc = json.loads(f.read())
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanStore]:
    store = PodmanStore(tmp_path_factory.mktemp("podman"))
    yield store
    store.close()


@pytest.fixture(scope="module")
def dockerd() -> Iterator[Dockerd]:
    # Not under pytest's tmp_path: containerd's socket lives in the exec root, and a unix socket path must stay
    # under 108 bytes.
    with Dockerd(Path(tempfile.mkdtemp(prefix="copa-dockerd-"))) as engine:
        yield engine


def _diff_ids(config: dict[str, object]) -> list[str]:
    rootfs = config["rootfs"]
    assert isinstance(rootfs, dict)
    return list(rootfs["diff_ids"])


def _no_archive_left(workdir: Path) -> None:
    assert list(workdir.glob("*.tar")) == [], "the archive written for the load must be removed"


# --- podman ----------------------------------------------------------------------------------------------------


def test_podman_holds_the_image_copa_wrote(patched: Bundle, config: dict[str, object], podman: PodmanStore,
                                           tmp_path: Path) -> None:
    written = load("podman", patched, "registry.test/app:1.0-patched", tmp_path, env=podman.env)
    inspected = podman.inspect("registry.test/app:1.0-patched")
    assert written.kind == "podman"
    assert written.target == "containers-storage:registry.test/app:1.0-patched"
    assert f"sha256:{inspected['Id']}" == str(written.digest) == str(patched.primary.config.digest)
    assert inspected["RootFS"]["Layers"] == _diff_ids(config)
    assert len(_diff_ids(config)) == 2  # the base layer and the appended one
    assert "registry.test/app:1.0-patched" in inspected["RepoTags"]
    assert inspected["Labels"]["sh.copa.patch.layer"] == _diff_ids(config)[-1]
    _no_archive_left(tmp_path)


def test_podman_names_a_short_name_as_it_normalises_it(patched: Bundle, podman: PodmanStore, tmp_path: Path) -> None:
    written = load("podman", patched, "app:short", tmp_path, env=podman.env)
    # podman files "app:short" under localhost/; copa reports the name podman gave it.
    assert written.target == "containers-storage:localhost/app:short"
    assert podman.inspect("localhost/app:short")["Id"] == patched.primary.config.digest.hex


def test_podman_missing_is_exit_9(patched: Bundle, podman: PodmanStore, tmp_path: Path) -> None:
    env = {**podman.env, "PATH": str(tmp_path / "empty")}
    with pytest.raises(LoaderError) as raised:
        load("podman", patched, "registry.test/app:missing", tmp_path, env=env)
    assert str(raised.value) == "podman is not installed: install podman or drop -l podman"
    assert raised.value.exit_code == 9
    _no_archive_left(tmp_path)
    assert "registry.test/app:missing" not in podman.names()


def test_podman_failing_gives_its_error_line(patched: Bundle, podman: PodmanStore, tmp_path: Path) -> None:
    # A storage configuration naming a driver podman does not have: podman itself fails, as it would for a user.
    # (A libpod state directory of its own too: libpod remembers the driver of the store it was first used with.)
    broken = PodmanStore(tmp_path / "broken")
    (broken.root / "storage.conf").write_text(
        f'[storage]\ndriver = "no-such-driver"\ngraphroot = "{broken.root / "storage"}"\n'
        f'runroot = "{broken.root / "run"}"\n'
    )
    workdir = tmp_path / "work"
    workdir.mkdir()
    with pytest.raises(LoaderError) as raised:
        load("podman", patched, "registry.test/app:broken", workdir, env=broken.env)
    message = str(raised.value)
    assert message.startswith("podman load failed: ") and "\n" not in message
    assert "no-such-driver" in message, message
    _no_archive_left(workdir)
    # A name podman's archive reader refuses (its rules are stricter than the reference grammar): the line that
    # introduces podman's list of formats it tried, with the docker-archive item, which says why.
    with pytest.raises(LoaderError) as raised:
        load("podman", patched, "UPPER/app:1", workdir, env=podman.env)
    message = str(raised.value)
    assert message.startswith("podman load failed: payload does not match any of the supported image formats: "
                              'docker-archive: Invalid tag "UPPER/app:1"'), message
    assert "\n" not in message


# --- names -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["1.0-patched", "app", "app:", "app:bad/tag", "app:-x"])
def test_a_store_needs_repository_and_tag(patched: Bundle, podman: PodmanStore, name: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs a REPOSITORY:TAG name"):
        load("podman", patched, name, tmp_path, env=podman.env)
    _no_archive_left(tmp_path)


# --- Docker engine ---------------------------------------------------------------------------------------------


def test_docker_holds_the_image_copa_wrote(patched: Bundle, config: dict[str, object], dockerd: Dockerd,
                                           tmp_path: Path) -> None:
    written = load("docker", patched, "registry.test/app:1.0-patched", tmp_path, env={"DOCKER_HOST": dockerd.host})
    inspected = dockerd.image("registry.test/app:1.0-patched")
    assert written.kind == "docker"
    assert written.target == "docker-daemon:registry.test/app:1.0-patched"
    assert inspected["Id"] == str(written.digest) == str(patched.primary.config.digest)
    assert inspected["RootFS"]["Layers"] == _diff_ids(config)
    assert inspected["RepoTags"] == ["registry.test/app:1.0-patched"]
    assert inspected["Config"]["Labels"]["sh.copa.patch.layer"] == _diff_ids(config)[-1]
    _no_archive_left(tmp_path)


def test_docker_engine_of_the_current_context(patched: Bundle, dockerd: Dockerd, tmp_path: Path) -> None:
    """Without DOCKER_HOST, the docker CLI's current context names the engine (as for Copacetic)."""
    config_dir = tmp_path / "dockercfg"
    meta = config_dir / "contexts" / "meta" / hashlib.sha256(b"copa-test").hexdigest()
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(json.dumps({"Name": "copa-test", "Metadata": {},
                                                "Endpoints": {"docker": {"Host": dockerd.host}}}))
    (config_dir / "config.json").write_text(json.dumps({"currentContext": "copa-test"}))
    workdir = tmp_path / "work"
    workdir.mkdir()
    written = load("docker", patched, "registry.test/app:context", workdir, env={"DOCKER_CONFIG": str(config_dir)})
    assert dockerd.image("registry.test/app:context")["Id"] == str(written.digest)


def test_docker_engine_error_stream_is_a_loader_error(dockerd: Dockerd, tmp_path: Path) -> None:
    """What the engine says about a tar it cannot load ({"errorDetail": ...} in its message stream)."""
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"this is not a tar archive" * 100)
    with pytest.raises(LoaderError) as raised:
        _docker_load(docker_endpoint({"DOCKER_HOST": dockerd.host}), garbage, "registry.test/app:garbage", 60)
    message = str(raised.value)
    assert message.startswith(f"the Docker engine at {dockerd.host} refused the image: ") and "\n" not in message
    assert "registry.test/app:garbage" not in dockerd.tags()


def test_no_engine_at_a_missing_socket(patched: Bundle, tmp_path: Path) -> None:
    host = f"unix://{tmp_path}/docker.sock"
    with pytest.raises(LoaderError) as raised:
        load("docker", patched, "registry.test/app:1", tmp_path, env={"DOCKER_HOST": host})
    assert str(raised.value) == (f"no Docker engine answers at {host} (No such file or directory): start it, set "
                                 "DOCKER_HOST, or use -l podman")
    assert raised.value.exit_code == 9
    _no_archive_left(tmp_path)


def test_no_engine_at_a_dead_socket_or_port(patched: Bundle, tmp_path: Path) -> None:
    dead = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(dead))  # a socket file nobody listens on, as a stopped engine leaves behind
    port = free_port()
    for host in (f"unix://{dead}", f"tcp://127.0.0.1:{port}"):
        with pytest.raises(LoaderError, match=rf"^no Docker engine answers at {host} \(Connection refused\): "):
            load("docker", patched, "registry.test/app:1", tmp_path, env={"DOCKER_HOST": host})


def test_no_engine_when_it_never_answers(patched: Bundle, tmp_path: Path) -> None:
    """An engine that accepts the connection and says nothing (a hung daemon): in-process, as no real engine
    hangs on demand."""
    with socket.socket(socket.AF_INET) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        accepted: list[socket.socket] = []
        thread = threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True)
        thread.start()
        host = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        with pytest.raises(LoaderError, match=rf"^no Docker engine answers at {host} \(timed out\)"):
            load("docker", patched, "registry.test/app:1", tmp_path, env={"DOCKER_HOST": host}, timeout=0.5)
        thread.join(5)
        for conn in accepted:
            conn.close()


@pytest.mark.parametrize(
    ("env", "want"),
    [
        ({}, Endpoint(DEFAULT_DOCKER_HOST, socket_path="/var/run/docker.sock")),
        ({"DOCKER_HOST": "unix:///run/user/1000/docker.sock"},
         Endpoint("unix:///run/user/1000/docker.sock", socket_path="/run/user/1000/docker.sock")),
        ({"DOCKER_HOST": "tcp://10.0.0.1:2375"}, Endpoint("tcp://10.0.0.1:2375", host="10.0.0.1", port=2375)),
        ({"DOCKER_HOST": "tcp://engine.test", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": "/certs"},
         Endpoint("tcp://engine.test", host="engine.test", port=2376, tls=True, verify=True, cert_path=Path("/certs"))),
    ],
)
def test_docker_endpoint(env: dict[str, str], want: Endpoint, tmp_path: Path) -> None:
    got = docker_endpoint({"HOME": str(tmp_path), **env})
    assert got.url == want.url and got.socket_path == want.socket_path
    assert (got.host, got.port, got.tls, got.verify) == (want.host, want.port, want.tls, want.verify)
    if want.cert_path is not None:
        assert got.cert_path == want.cert_path


@pytest.mark.parametrize(
    ("host", "needle"),
    [("ssh://me@engine.test", "over ssh, which copa does not speak"), ("npipe:////./pipe/docker_engine", "not a "),
     ("tcp://", "not a unix:// or tcp://HOST:PORT")],
)
def test_unusable_docker_host(host: str, needle: str, tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match="use -l podman") as raised:
        docker_endpoint({"HOME": str(tmp_path), "DOCKER_HOST": host})
    assert needle in str(raised.value)



def test_docker_engine_over_tls(patched: Bundle, dockerd: Dockerd, tmp_path: Path) -> None:
    """A remote engine: tcp:// with DOCKER_TLS_VERIFY and the client certificate from DOCKER_CERT_PATH."""
    env = {"DOCKER_HOST": dockerd.tls_host, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(dockerd.client_certs)}
    written = load("docker", patched, "registry.test/app:tls", tmp_path, env=env)
    assert dockerd.image("registry.test/app:tls")["Id"] == str(written.digest)
    # Without a client certificate the engine refuses the handshake; plain HTTP to it is answered with a 400.
    ca_only = tmp_path / "ca-only"
    ca_only.mkdir()
    (ca_only / "ca.pem").write_bytes((dockerd.client_certs / "ca.pem").read_bytes())
    refused = rf"^the TLS handshake with the Docker engine at {dockerd.tls_host} failed"
    with pytest.raises(LoaderError, match=refused):
        load("docker", patched, "registry.test/app:tls2", tmp_path, env={**env, "DOCKER_CERT_PATH": str(ca_only)})
    plain = rf"^the Docker engine at {dockerd.tls_host} answered a ping with HTTP 400"
    with pytest.raises(LoaderError, match=plain):
        load("docker", patched, "registry.test/app:tls2", tmp_path, env={"DOCKER_HOST": dockerd.tls_host})
    assert "registry.test/app:tls2" not in dockerd.tags()
    _no_archive_left(tmp_path)


def test_detect_loader_as_copacetic_does(dockerd: Dockerd, podman: PodmanStore, tmp_path: Path) -> None:
    """No -l: an engine that answers first, else an installed podman, else none."""
    nowhere = f"unix://{tmp_path}/none.sock"
    assert detect_loader({**podman.env, "DOCKER_HOST": dockerd.host}) == "docker"
    assert detect_loader({**podman.env, "DOCKER_HOST": nowhere}) == "podman"
    assert detect_loader({"DOCKER_HOST": nowhere, "PATH": str(tmp_path)}) is None


# --- the CLI ---------------------------------------------------------------------------------------------------


def copa(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "copa", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**env, "COPA_DEBUG": ""}, check=False)


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one error line; every other stderr line must be a progress line."""
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in lines if line.startswith("copa: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    return errors[0]


@pytest.fixture(scope="module")
def repo_server() -> Iterator[tuple[AptRepo, RepoServer]]:
    repo = debimage.hermetic_repo()
    with RepoServer(repo.root) as server:
        yield repo, server


@pytest.fixture(scope="module")
def patch_args(repo_server: tuple[AptRepo, RepoServer], tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    repo, server = repo_server
    report = write_report(tmp_path_factory.mktemp("report") / "trivy.json", {"app": debimage.FIXES["app"]})
    return ["patch", "-i", debimage.base_image().image_ref, "-r", str(report), *debimage.copa_args(server.url, repo)]


def _skopeo_json(*args: str) -> dict[str, Any]:
    proc = subprocess.run(["skopeo", *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert isinstance(doc, dict)
    return doc


def test_cli_loads_into_podman(patch_args: list[str], podman: PodmanStore, tmp_path: Path) -> None:
    """The image podman holds is the one copa wrote into the layout of the same run (read by skopeo)."""
    name = "registry.test/hermetic:cli-podman"
    proc = copa(*patch_args, "-t", name, "-l", "podman", "--oci-dir", str(tmp_path / "out"), "--json",
                env=podman.env)
    assert proc.returncode == 0, proc.stderr
    outputs = {o["kind"]: o for o in json.loads(proc.stdout)["outputs"]}
    layout = f"oci:{tmp_path / 'out'}:cli-podman"
    config_digest = _skopeo_json("inspect", "--raw", layout)["config"]["digest"]
    diff_ids = _skopeo_json("inspect", "--config", layout)["rootfs"]["diff_ids"]
    inspected = podman.inspect(name)
    assert outputs["podman"]["target"] == f"containers-storage:{name}"
    assert outputs["podman"]["digest"] == config_digest == f"sha256:{inspected['Id']}"
    assert inspected["RootFS"]["Layers"] == diff_ids and len(diff_ids) == 2
    assert name in inspected["RepoTags"]


def test_cli_loads_into_docker(patch_args: list[str], dockerd: Dockerd, tmp_path: Path) -> None:
    """The image the engine holds is the one copa wrote as a docker-archive in the same run (read by skopeo).
    The patch layer is zstd, which this engine (20.10) cannot read: the archive it gets holds plain tars."""
    name = "registry.test/hermetic:cli-docker"
    tar = tmp_path / "out.tar"
    proc = copa(*patch_args, "-t", name, "-l", "docker", "--output-tar", str(tar), "--compression", "zstd", "--json",
                env={**os.environ, "DOCKER_HOST": dockerd.host})
    assert proc.returncode == 0, proc.stderr
    outputs = {o["kind"]: o for o in json.loads(proc.stdout)["outputs"]}
    config_digest = _skopeo_json("inspect", "--raw", f"docker-archive:{tar}")["config"]["digest"]
    diff_ids = _skopeo_json("inspect", "--config", f"docker-archive:{tar}")["rootfs"]["diff_ids"]
    inspected = dockerd.image(name)
    assert outputs["docker"]["target"] == f"docker-daemon:{name}"
    assert outputs["docker"]["digest"] == config_digest == inspected["Id"]
    assert inspected["RootFS"]["Layers"] == diff_ids and len(diff_ids) == 2
    assert inspected["RepoTags"] == [name]


def test_cli_without_podman_is_exit_9_and_writes_nothing(patch_args: list[str], podman: PodmanStore,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = copa(*patch_args, "-t", "registry.test/hermetic:nopodman", "-l", "podman", "--oci-dir", str(out),
                env={**podman.env, "PATH": str(tmp_path / "empty")})
    assert proc.returncode == 9, proc.stderr
    assert error_line(proc) == "copa: error: podman is not installed: install podman or drop -l podman"
    assert not out.exists()


def test_cli_without_docker_engine_is_exit_9_and_writes_nothing(patch_args: list[str], tmp_path: Path) -> None:
    host = f"unix://{tmp_path}/docker.sock"
    out = tmp_path / "out"
    proc = copa(*patch_args, "-t", "registry.test/hermetic:nodocker", "-l", "docker", "--oci-dir", str(out),
                env={**os.environ, "DOCKER_HOST": host})
    assert proc.returncode == 9, proc.stderr
    assert error_line(proc) == (f"copa: error: no Docker engine answers at {host} (No such file or directory): "
                                "start it, set DOCKER_HOST, or use -l podman")
    assert not out.exists()


def test_cli_layout_source_needs_a_repository_name_before_any_work(patch_args: list[str], podman: PodmanStore,
                                                                   ) -> None:
    """An image from a layout has no repository: the default name (TAG-patched) cannot be a store's name."""
    before = podman.names()
    proc = copa(*patch_args, "-l", "podman", env=podman.env)
    assert proc.returncode == 2, proc.stderr
    assert error_line(proc) == ("copa: error: cannot load the image as 'hermetic-patched': a local image store needs "
                                "a REPOSITORY:TAG name; pass -t REPOSITORY:TAG")
    assert "building the patch layer" not in proc.stderr
    assert podman.names() == before


def _put_blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _multi_layout(dest: Path) -> str:
    """The hermetic image as linux/amd64 in an OCI index beside a linux/arm64 image (its config saying arm64; the
    layers are the amd64 ones: only the index matters here). Returns the image argument."""
    base = debimage.base_image()
    layout = images.copy_layout(base.layout, dest)
    source = LayoutSource(layout, base.ref)
    amd_desc, amd = source.root_descriptor(), source.root()
    assert isinstance(amd, Manifest)
    with source.open_blob(amd.config) as f:
        config = json.loads(f.read())
    arm_doc = json.loads(amd.raw)
    arm_doc["config"].update(_put_blob(layout, json.dumps({**config, "architecture": "arm64"}).encode()))
    arm = _put_blob(layout, json.dumps(arm_doc).encode())
    index = {"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": [
        {"mediaType": amd.media_type, "digest": str(amd_desc.digest), "size": amd_desc.size,
         "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": amd.media_type, **arm, "platform": {"os": "linux", "architecture": "arm64"}},
    ]}
    entry = {"mediaType": MediaType.OCI_INDEX, **_put_blob(layout, json.dumps(index).encode()),
             "annotations": {"org.opencontainers.image.ref.name": "multi"}}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    return f"oci:{layout}:multi"


def test_cli_loads_each_patched_platform_under_its_own_tag(patch_args: list[str], podman: PodmanStore,
                                                            tmp_path: Path) -> None:
    """A multi-platform image patched without a report file (Copacetic's multi-platform mode): the patched
    platform is loaded as TAG-ARCH (Copacetic's name); the platform left as it was is not loaded, and nothing is
    loaded under the bare TAG (a store holds one platform per name)."""
    image = _multi_layout(tmp_path / "multi")
    at = patch_args.index("-r")
    args = [a if a != debimage.base_image().image_ref else image for a in patch_args[:at] + patch_args[at + 2:]]
    name = "registry.test/hermetic:multi"
    proc = copa(*args, "-t", name, "--platform", "linux/amd64", "-l", "podman", "--oci-dir", str(tmp_path / "out"),
                "--json", env=podman.env)
    assert proc.returncode == 0, proc.stderr
    loaded = [o for o in json.loads(proc.stdout)["outputs"] if o["kind"] == "podman"]
    assert [o["target"] for o in loaded] == [f"containers-storage:{name}-amd64"]
    config = _skopeo_json("--override-arch", "amd64", "inspect", "--config", f"oci:{tmp_path / 'out'}:multi")
    raw = _skopeo_json("--override-arch", "amd64", "inspect", "--raw", f"oci:{tmp_path / 'out'}:multi")
    assert raw["mediaType"] == MediaType.OCI_INDEX
    amd_entry = next(e for e in raw["manifests"] if e["platform"]["architecture"] == "amd64")
    amd_manifest = json.loads((tmp_path / "out/blobs/sha256" / amd_entry["digest"].split(":")[1]).read_bytes())
    inspected = podman.inspect(f"{name}-amd64")
    assert inspected["RootFS"]["Layers"] == config["rootfs"]["diff_ids"] and len(config["rootfs"]["diff_ids"]) == 2
    assert loaded[0]["digest"] == f"sha256:{inspected['Id']}" == amd_manifest["config"]["digest"]
    assert not {name, f"{name}-arm64"} & podman.names()


@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
def test_docker_loader_on_podmans_engine_api(patched: Bundle, podman: PodmanStore, tcp: bool, tmp_path: Path) -> None:
    """podman's Docker-compatible service (`podman system service`, what podman-docker users point DOCKER_HOST
    at) is a second real implementation of the Engine API: -l docker loads into it, on a unix socket and on
    plain tcp:// (dockerd here listens on TCP with TLS only)."""
    name = f"registry.test/app:compat-{'tcp' if tcp else 'unix'}"
    with podman.service(tcp) as host:
        written = load("docker", patched, name, tmp_path, env={"DOCKER_HOST": host})
    assert written.target == f"docker-daemon:{name}"
    assert podman.inspect(name)["Id"] == patched.primary.config.digest.hex == written.digest.hex


class _FaultyEngine(http.server.BaseHTTPRequestHandler):
    """Answers pings; on /images/load, either drops the connection part-way through the upload or answers 500.
    In-process because no real engine fails like this on demand."""

    mode = "drop"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def address_string(self) -> str:
        return "unix"  # a unix socket's peer is "", which BaseHTTPRequestHandler cannot index

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")

    def do_POST(self) -> None:
        if self.mode == "drop":
            self.rfile.read(1024)
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"message": "no space left on device"}).encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize(("mode", "want"), [
    ("drop", r"(stopped taking|dropped) the image"),
    ("500", r"refused the image: no space left on device$"),
])
def test_engine_failing_during_the_load(patched: Bundle, mode: str, want: str, tmp_path: Path) -> None:
    handler = type("Handler", (_FaultyEngine,), {"mode": mode})
    sock = tmp_path / "engine.sock"
    with socketserver.ThreadingUnixStreamServer(str(sock), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            with pytest.raises(LoaderError, match=rf"^the Docker engine at unix://{sock} {want}"):
                load("docker", patched, "registry.test/app:1", tmp_path, env={"DOCKER_HOST": f"unix://{sock}"})
        finally:
            server.shutdown()
    _no_archive_left(tmp_path)


@pytest.mark.live
@pytest.mark.slow
@pytest.mark.sweep  # about a minute: three platforms patched from the Debian archive
def test_cli_loads_every_patched_platform_of_a_real_index(podman: PodmanStore, tmp_path: Path) -> None:
    """The multi-platform fixture (amd64, arm64, arm/v7, 386, a ppc64le image copa cannot patch, attestations),
    patched whole as Copacetic does without a report: podman holds TAG-amd64, TAG-arm64, TAG-arm-v7 and TAG-386, each
    the image of that platform in the index copa wrote in the same run; nothing else is loaded."""
    layout, ref = multiplatform.multiplatform_layout()
    name = "registry.test/multi-real:1"
    out = tmp_path / "out"
    proc = copa("patch", "-i", f"oci:{layout}:{ref}", "-t", name, "-l", "podman", "--oci-dir", str(out), "--json",
                env=podman.env)
    assert proc.returncode == 0, proc.stderr
    loaded = {o["target"]: o["digest"] for o in json.loads(proc.stdout)["outputs"] if o["kind"] == "podman"}
    index = _skopeo_json("inspect", "--raw", f"oci:{out}:1")
    expected: dict[str, dict[str, Any]] = {}
    for entry in index["manifests"]:
        platform = entry.get("platform", {})
        if platform.get("architecture") in ("amd64", "arm64", "arm", "386"):
            suffix = "-".join(x for x in (platform["architecture"], platform.get("variant", "")) if x)
            expected[f"{name}-{suffix}"] = json.loads((out / "blobs/sha256" / entry["digest"][7:]).read_bytes())
    assert set(expected) == {f"{name}-amd64", f"{name}-arm64", f"{name}-arm-v7", f"{name}-386"}
    assert set(loaded) == {f"containers-storage:{n}" for n in expected}
    assert podman.names() >= set(expected) and not podman.names() & {name, f"{name}-ppc64le"}
    for tag, manifest in expected.items():
        config = json.loads((out / "blobs/sha256" / manifest["config"]["digest"][7:]).read_bytes())
        inspected = podman.inspect(tag)
        assert loaded[f"containers-storage:{tag}"] == manifest["config"]["digest"] == f"sha256:{inspected['Id']}"
        assert inspected["RootFS"]["Layers"] == config["rootfs"]["diff_ids"]
        assert inspected["Architecture"] == config["architecture"]
