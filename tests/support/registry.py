"""Real registries for tests: Debian's `docker-registry` (distribution 2.8) as a subprocess.

Variants: anonymous, htpasswd Basic auth, and Bearer token auth with a token issuer running in the
test process (JWTs signed here with `cryptography`; the registry finds our key by the libtrust key
id in the JWT `kid` header, computed from the certificate named in its `rootcertbundle`).

Fixtures (import them into a conftest): `anon_registry`, `other_registry` (session-scoped anonymous
registries), `basic_registry`, `token_registry` (module-scoped), `tiny_layout` (an OCI layout with a
small and a ~300 KiB layer, built once by umoci under ~/.cache/copa-tests/).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

REGISTRY_BIN = "/usr/bin/docker-registry"
CACHE = Path.home() / ".cache" / "copa-tests"
USER, PASSWORD = "alice", "s3cret-pw"
SERVICE, ISSUER = "copa-test-registry", "copa-test-issuer"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_tool(name: str, package: str) -> str:
    """Tests never skip for a missing tool: install it."""
    path = shutil.which(name)
    if path is None:
        subprocess.run(["apt-get", "install", "-y", "-q", package], check=True, capture_output=True)
        path = shutil.which(name)
    assert path is not None, f"{name} missing even after apt-get install {package}"
    return path


# -- token issuer ---------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def libtrust_key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """distribution's libtrust key id: base32 of the first 240 bits of SHA-256(DER SPKI), 4-char groups."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii").rstrip("=")
    return ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))


@dataclass
class TokenIssuer:
    """A Docker token server (GET with Basic auth, or POST refresh_token) in a thread."""

    key: ec.EllipticCurvePrivateKey
    cert_pem: bytes
    users: dict[str, str]
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # token -> user
    requests: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # (user, scopes)
    server: http.server.ThreadingHTTPServer | None = None

    @classmethod
    def create(cls, users: dict[str, str]) -> TokenIssuer:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert.public_bytes(serialization.Encoding.PEM), users)

    def sign(self, subject: str, access: list[dict[str, Any]]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "kid": libtrust_key_id(self.key.public_key())}
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        der = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def grant(self, user: str, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            for one in scope.split(" "):
                parts = one.split(":")
                if len(parts) == 3 and parts[0] == "repository":
                    access.append({"type": "repository", "name": parts[1], "actions": parts[2].split(",")})
        self.requests.append((user, tuple(scopes)))
        return self.sign(user, access if user else [])

    def start(self) -> str:
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, code: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                user = ""
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    name, _, pw = base64.b64decode(header[6:]).decode().partition(":")
                    if issuer.users.get(name) != pw:
                        self._reply(401, {"details": "incorrect username or password"})
                        return
                    user = name
                token = issuer.grant(user, query.get("scope", []))
                self._reply(200, {"token": token, "access_token": token, "expires_in": 300})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                refresh = form.get("refresh_token", [""])[0]
                user = issuer.refresh_tokens.get(refresh)
                if form.get("grant_type", [""])[0] != "refresh_token" or user is None:
                    self._reply(401, {"error": "invalid_grant"})
                    return
                token = issuer.grant(user, form.get("scope", [""])[0].split(" "))
                self._reply(200, {"access_token": token, "expires_in": 300})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


# -- registry process -----------------------------------------------------------------------------


@dataclass
class RunningRegistry:
    host: str  # "127.0.0.1:PORT"
    workdir: Path
    process: subprocess.Popen[bytes]
    issuer: TokenIssuer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.issuer is not None:
            self.issuer.stop()


def start_registry(
    workdir: Path, auth: dict[str, Any] | None = None, issuer: TokenIssuer | None = None
) -> RunningRegistry:
    """Start docker-registry on a free loopback port; `auth` is the config's `auth` section."""
    require_tool("docker-registry", "docker-registry")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": uuid.uuid4().hex},
    }
    if auth:
        config["auth"] = auth
    config_path = workdir / "config.yml"
    config_path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    log = (workdir / "registry.log").open("ab")
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config_path)], stdout=log, stderr=log)
    log.close()
    running = RunningRegistry(f"127.0.0.1:{port}", workdir, proc, issuer)
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {(workdir / 'registry.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{running.url}/v2/", timeout=2):
                break
        except urllib.error.HTTPError:
            break  # 401: up, and asking for auth
        except OSError:
            if time.monotonic() > deadline:
                running.stop()
                raise RuntimeError("docker-registry did not answer /v2/ within 20 s") from None
            time.sleep(0.05)
    return running


def start_basic_registry(workdir: Path, users: dict[str, str]) -> RunningRegistry:
    htpasswd = require_tool("htpasswd", "apache2-utils")
    workdir.mkdir(parents=True, exist_ok=True)
    lines = [
        subprocess.run([htpasswd, "-Bbn", user, pw], check=True, capture_output=True, text=True).stdout.strip()
        for user, pw in users.items()
    ]
    (workdir / "htpasswd").write_text("\n".join(lines) + "\n")
    return start_registry(workdir, {"htpasswd": {"realm": "copa-test", "path": str(workdir / "htpasswd")}})


def start_token_registry(workdir: Path, users: dict[str, str]) -> RunningRegistry:
    workdir.mkdir(parents=True, exist_ok=True)
    issuer = TokenIssuer.create(users)
    (workdir / "issuer.pem").write_bytes(issuer.cert_pem)
    realm = issuer.start()
    auth = {
        "token": {"realm": realm, "service": SERVICE, "issuer": ISSUER, "rootcertbundle": str(workdir / "issuer.pem")}
    }
    try:
        return start_registry(workdir, auth, issuer)
    except BaseException:
        issuer.stop()
        raise


# -- test image -------------------------------------------------------------------------------------


def build_tiny_layout() -> Path:
    """An OCI layout `<dir>:t` made by umoci: one small layer and one ~300 KiB incompressible layer."""
    umoci = require_tool("umoci", "umoci")
    final = CACHE / "registry" / "tiny-layout-v1"
    if (final / "index.json").exists():
        return final
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    layout = tmp / "layout"
    small, big = tmp / "hello.txt", tmp / "big.bin"
    small.write_text("hello from copa\n")
    # Deterministic but incompressible, so the gzip layer stays larger than a test chunk size.
    with big.open("wb") as f:
        seed = b"copa"
        for _ in range(300 * 1024 // 32):
            seed = hashlib.sha256(seed).digest()
            f.write(seed)

    def run(*args: str) -> None:
        subprocess.run([umoci, *args], check=True, capture_output=True)

    run("init", "--layout", str(layout))
    run("new", "--image", f"{layout}:t")
    run("insert", "--image", f"{layout}:t", str(small), "/hello.txt")
    run("insert", "--image", f"{layout}:t", str(big), "/big.bin")
    run("config", "--image", f"{layout}:t", "--config.cmd", "/hello.txt")
    run("gc", "--layout", str(layout))
    layout.rename(final)
    shutil.rmtree(tmp, ignore_errors=True)
    return final


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def anon_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    reg = start_registry(tmp_path_factory.mktemp("anon-registry"))
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def other_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    reg = start_registry(tmp_path_factory.mktemp("other-registry"))
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    reg = start_basic_registry(tmp_path_factory.mktemp("basic-registry"), {USER: PASSWORD})
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    reg = start_token_registry(tmp_path_factory.mktemp("token-registry"), {USER: PASSWORD})
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def tiny_layout() -> Path:
    return build_tiny_layout()


def record(client: Any) -> list[tuple[str, str, int]]:
    """Every response a copa RegistryClient's session sees from now on, as (method, url, status)."""
    log: list[tuple[str, str, int]] = []

    def hook(resp: Any, *args: Any, **kwargs: Any) -> None:
        log.append((resp.request.method or "", resp.request.url or "", resp.status_code))

    client.session.hooks["response"].append(hook)
    return log
