"""A real Docker engine (Debian's docker.io `dockerd`) started by the tests in a private directory.

    with Dockerd(tmp / "docker") as engine:       # root needed, as for any dockerd
        engine.host                               # "unix:///.../docker.sock": DOCKER_HOST for copa
        engine.tls_host, engine.client_certs      # also on tcp://127.0.0.1:PORT, TLS with client certificates
        engine.get("/images/app:1.0/json")        # the Engine API, parsed, as an oracle

Why these settings:
- `--data-root`/`--exec-root`/`--pidfile` in the private directory, `-H unix://` a socket there: nothing of the
  machine's /var/lib/docker or /var/run/docker.sock is touched, and the whole engine is one directory to delete.
- `--storage-driver vfs`: no overlay module needed; the images loaded by the tests are small.
- `--iptables=false --ip6tables=false --bridge=none`: the tests load images and never run containers, and a
  sandbox may have no netfilter; without them dockerd refuses to start there.
- `--tlsverify` on the TCP listener (a throwaway CA, a server certificate for 127.0.0.1, a client certificate;
  `client_certs` is a DOCKER_CERT_PATH directory with ca.pem, cert.pem and key.pem): the way a remote engine is
  reached. The unix socket is not affected by it.
- The engine starts its own containerd under the exec root and stops it when it stops.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.registry import free_port, require_tool

START_TIMEOUT = 60.0


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=60)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._path))
        self.sock = sock


def request(sock: Path, method: str, path: str) -> tuple[int, bytes]:
    """One Engine API request on the unix socket `sock`: (status, body)."""
    conn = UnixConnection(sock)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def answers(sock: Path) -> bool:
    """Whether an Engine API server answers a ping on `sock`."""
    try:
        return request(sock, "GET", "/_ping")[0] == 200
    except (OSError, http.client.HTTPException):
        return False


def _pem_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return key


def _pem_cert(path: Path, subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
              issuer_key: ec.EllipticCurvePrivateKey, usage: x509.ObjectIdentifier | None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True))
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(
            "127.0.0.1"))]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def make_certs(directory: Path) -> tuple[Path, Path]:
    """(server directory, client DOCKER_CERT_PATH directory), both holding ca.pem, cert.pem and key.pem."""
    server, client = directory / "server", directory / "client"
    server.mkdir(parents=True)
    client.mkdir()
    ca_key = _pem_key(directory / "ca-key.pem")
    ca = _pem_cert(server / "ca.pem", "copa test CA", ca_key, None, ca_key, None)
    (client / "ca.pem").write_bytes((server / "ca.pem").read_bytes())
    _pem_cert(server / "cert.pem", "127.0.0.1", _pem_key(server / "key.pem"), ca, ca_key,
              ExtendedKeyUsageOID.SERVER_AUTH)
    _pem_cert(client / "cert.pem", "copa test client", _pem_key(client / "key.pem"), ca, ca_key,
              ExtendedKeyUsageOID.CLIENT_AUTH)
    return server, client


class Dockerd:
    def __init__(self, root: Path) -> None:
        self.binary = require_tool("dockerd", "docker.io")
        self.root = root
        self.socket = root / "docker.sock"
        self.log = root / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.client_certs = root / "tls" / "client"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def tls_host(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def __enter__(self) -> Dockerd:
        self.root.mkdir(parents=True, exist_ok=True)
        server, _ = make_certs(self.root / "tls")
        self.port = free_port()
        argv = [
            self.binary, "--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=vfs",
            f"--data-root={self.root / 'data'}", f"--exec-root={self.root / 'exec'}",
            f"--pidfile={self.root / 'docker.pid'}", f"-H=unix://{self.socket}",
            "--tlsverify", f"--tlscacert={server / 'ca.pem'}", f"--tlscert={server / 'cert.pem'}",
            f"--tlskey={server / 'key.pem'}", f"-H=tcp://127.0.0.1:{self.port}",
        ]  # fmt: skip
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, "TMPDIR": str(self.root)})
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.close()
                raise AssertionError(f"dockerd exited with {self.proc.returncode}: {self._log_tail()}")
            if answers(self.socket):
                return self
            time.sleep(0.2)
        self.close()
        raise AssertionError(f"dockerd did not answer within {START_TIMEOUT} s: {self._log_tail()}")

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-5:])
        return "(no log)"

    def get(self, path: str) -> Any:
        status, body = request(self.socket, "GET", path)
        assert status == 200, f"GET {path}: HTTP {status} {body[:300]!r}"
        return json.loads(body)

    def image(self, name: str) -> dict[str, Any]:
        doc = self.get(f"/images/{quote(name, safe='/:@')}/json")
        assert isinstance(doc, dict)
        return doc

    def tags(self) -> set[str]:
        return {t for image in self.get("/images/json") for t in image.get("RepoTags") or () if t != "<none>:<none>"}

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # dockerd stops its containerd on SIGTERM
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)
