"""A loopback package mirror that demands credentials: Basic auth, and over HTTPS a client certificate.

    tls = make_tls(tmp / "tls")                      # a CA, a server certificate for 127.0.0.1, a client certificate
    with AuthServer(repo.root, logins={"copa": "s3cret"}) as http_server: ...
    with AuthServer(repo.root, logins=..., tls=tls, client_cert=True) as https_server: ...

Without the right `Authorization: Basic` header a request gets 401 (with a WWW-Authenticate challenge, as a real
mirror behind nginx's auth_basic answers); with `logins=None` every request is served. `requests` records each
request's path and the login it carried (None without one), so tests can compare what a client sent. With
`root=None` every path is answered with a small body (for clients whose requests are all that matters); with
`redirect_to=URL` every request that passes is answered with a 302 to URL + its path.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import ipaddress
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Tls:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return key


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool, usage: list[x509.ObjectIdentifier],
          san: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if ca:
        builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                        critical=True)
    return builder.sign(issuer_key, hashes.SHA256())


def make_tls(directory: Path) -> Tls:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _key(directory / "ca.key")
    ca = _cert("copa test CA", ca_key, None, ca_key, ca=True, usage=[])
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_key = _key(directory / "server.key")
    server = _cert("127.0.0.1", server_key, ca.subject, ca_key, ca=False, usage=[ExtendedKeyUsageOID.SERVER_AUTH],
                   san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    (directory / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    client_key = _key(directory / "client.key")
    client = _cert("copa test client", client_key, ca.subject, ca_key, ca=False,
                   usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    (directory / "client.pem").write_bytes(client.public_bytes(serialization.Encoding.PEM))
    return Tls(directory / "ca.pem", directory / "server.pem", directory / "server.key", directory / "client.pem",
               directory / "client.key")


def basic_login(header: str | None) -> tuple[str, str] | None:
    """(user, password) of an `Authorization: Basic` header, None without one."""
    if not header or not header.startswith("Basic "):
        return None
    user, _, password = base64.b64decode(header[6:]).decode("utf-8", "replace").partition(":")
    return user, password


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _allowed(self) -> bool:
        login = basic_login(self.headers.get("Authorization"))
        with self.server.lock:
            self.server.requests.append((self.path, login))
        logins = self.server.logins
        if logins is None or (login is not None and logins.get(login[0]) == login[1]):
            return True
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="copa test mirror"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def do_GET(self) -> None:
        if not self._allowed():
            return
        if self.server.redirect_to:
            self.send_response(302)
            self.send_header("Location", self.server.redirect_to + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.server.root is None:
            body = b"ok\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def do_HEAD(self) -> None:
        if self._allowed():
            super().do_HEAD()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    root: Path | None
    logins: Mapping[str, str] | None
    redirect_to: str
    requests: list[tuple[str, tuple[str, str] | None]]
    lock: threading.Lock


class AuthServer:
    def __init__(self, root: Path | None, logins: Mapping[str, str] | None = None, *, tls: Tls | None = None,
                 client_cert: bool = False, redirect_to: str = "") -> None:
        handler = partial(_Handler, directory=str(root or "/nonexistent"))
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.root = root
        self._server.logins = logins
        self._server.redirect_to = redirect_to
        self._server.requests = []
        self._server.lock = threading.Lock()
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.server_cert, tls.server_key)
            if client_cert:
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(tls.ca)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="authmirror",
                                        daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[tuple[str, tuple[str, str] | None]]:
        return self._server.requests

    def __enter__(self) -> AuthServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
