"""copa.web against real servers started here (http.server, raw sockets, a forward proxy, TLS with a throwaway CA):
what the registry suites do not reach: proxies from the environment, redirects and credentials, connection reuse,
bodies cut short or encoded, request bodies, timeouts, and TLS settings."""

from __future__ import annotations

import base64
import contextlib
import datetime
import gzip
import json
import os
import resource
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from copa.net import describe_connection_error, is_permanent
from copa.oci.certs import merged_bundle
from copa.pkg.cache import Cache
from copa.pkg.fetch import Fetcher
from copa.web.errors import (
    BodyError,
    ConnectError,
    ConnectTimedOut,
    InvalidRequest,
    InvalidURL,
    ReadTimedOut,
    TlsError,
    TooManyRedirects,
    WebError,
)
from copa.web.proxies import proxy_for
from copa.web.response import Response
from copa.web.session import Session

PAYLOAD = b"".join(b"layer %06d of a compressible body\n" % i for i in range(20000))  # ~700 KB
GZ = gzip.compress(PAYLOAD)
BIG = 1 << 20
CHUNKS = (b"hello ", b"chunked ", b"world")
UNRESOLVABLE = "copa.test"  # a reserved TLD: no resolver here knows it; the test proxy maps it to 127.0.0.1


def _basic(login: str) -> str:
    return "Basic " + base64.b64encode(login.encode()).decode()


def _read_head(conn: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """(request line, headers with lower-case names, bytes read past the head) from a raw connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the end of the head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    line, *fields = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
    return line, headers, rest


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until both directions are closed."""

    def copy(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    back = threading.Thread(target=copy, args=(b, a), daemon=True)
    back.start()
    copy(a, b)
    back.join(10)


def _wait_for(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the server"
        time.sleep(0.01)


# -- certificates ------------------------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(cn: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, issuer_key: ec.EllipticCurvePrivateKey,
          extensions: list[x509.ExtensionType]) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    for ext in extensions:
        critical = isinstance(ext, x509.BasicConstraints | x509.KeyUsage)
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True)
class Pki:
    ca: str  # the CA certificate (PEM file)
    server_cert: str  # valid for DNS name "localhost" only, not for 127.0.0.1
    server_key: str
    client_cert: str
    client_key: str
    client_pem: str  # client certificate and key in one file


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("copa test CA", ca_key, _name("copa test CA"), ca_key, [
        x509.BasicConstraints(ca=True, path_length=None),
        x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                      data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                      encipher_only=False, decipher_only=False),
    ])
    leaf = [x509.BasicConstraints(ca=False, path_length=None)]
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server = _cert("localhost", server_key, ca.subject, ca_key, [
        *leaf, x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        x509.SubjectAlternativeName([x509.DNSName("localhost")])])
    client = _cert("copa-client", client_key, ca.subject, ca_key, [
        *leaf, x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])])
    files = {"ca.pem": _pem(ca), "server.pem": _pem(server), "server.key": _pem_key(server_key),
             "client.pem": _pem(client), "client.key": _pem_key(client_key),
             "client-both.pem": _pem(client) + _pem_key(client_key)}
    for name, data in files.items():
        (d / name).write_bytes(data)
    return Pki(str(d / "ca.pem"), str(d / "server.pem"), str(d / "server.key"), str(d / "client.pem"),
               str(d / "client.key"), str(d / "client-both.pem"))


# -- an origin server (http.server) -------------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: Message
    body: bytes


class _Handler(BaseHTTPRequestHandler):
    """Routes: /redirect?code=&to=, /loop, /gzip, /chunked, /dup, /big, /close-after (answers, then closes the
    kept-alive connection), /drop-reused (closes without answering when the connection served a request before);
    anything else answers "<METHOD> <path>". Every request is recorded in server.seen."""

    protocol_version = "HTTP/1.1"
    timeout = 10
    server: Origin

    def setup(self) -> None:
        self.served = 0
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(5)
            self.request.do_handshake()
            self.server.peers.append((self.request.getpeercert() or {}).get("subject"))
        super().setup()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                out += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            return out
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, status: int, body: bytes = b"", headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _route(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/drop-reused" and self.served:
            self.close_connection = True
            return
        self.served += 1
        self.server.seen.append(Seen(self.command, self.path, self.headers, self._body()))
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/redirect":
            self._answer(int(query.get("code", "302")), headers=(("Location", query["to"]),))
        elif url.path == "/loop":
            self._answer(302, b"again", headers=(("Location", "/loop"),))
        elif url.path == "/gzip":
            self._answer(200, GZ, headers=(("Content-Encoding", "gzip"),))
        elif url.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in CHUNKS) + b"0\r\n\r\n")
        elif url.path == "/dup":
            self._answer(401, headers=(("WWW-Authenticate", 'Bearer realm="https://auth/token"'),
                                       ("www-authenticate", 'Basic realm="registry"'),
                                       ("Link", '</v2/_catalog?last=b&n=2>; rel="next"')))
        elif url.path == "/big":
            self._answer(200, b"x" * BIG)
        else:
            self._answer(200, f"{self.command} {self.path}".encode())
            if url.path == "/close-after":
                self.close_connection = True

    do_GET = do_POST = do_PUT = do_HEAD = _route


class Origin(ThreadingHTTPServer):
    """An HTTP/1.1 server on 127.0.0.1 (TLS when given a context), counting the connections it accepted and
    closed."""

    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.seen: list[Seen] = []
        self.peers: list[object] = []  # the client certificate's subject, per TLS connection
        self.connections = 0
        self.closed = 0
        super().__init__(("127.0.0.1", 0), _Handler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def server_bind(self) -> None:
        TCPServer.server_bind(self)  # HTTPServer's would look our own name up in DNS
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def get_request(self) -> tuple[socket.socket, object]:
        sock, address = self.socket.accept()
        self.connections += 1
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def shutdown_request(self, request: object) -> None:
        super().shutdown_request(request)  # type: ignore[arg-type]
        self.closed += 1

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client hanging up or failing the handshake is what several tests do

    def url(self, path: str = "/", host: str = "127.0.0.1", **query: str) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{host}:{self.port}{path}" + (f"?{urlencode(query)}" if query else "")

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def _serving(tls: ssl.SSLContext | None = None) -> Iterator[Origin]:
    server = Origin(tls)
    yield server
    server.stop()


@pytest.fixture
def origin() -> Iterator[Origin]:
    yield from _serving()


@pytest.fixture
def tls_origin(pki: Pki) -> Iterator[Origin]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    yield from _serving(ctx)


@pytest.fixture
def mtls_origin(pki: Pki) -> Iterator[Origin]:
    """A TLS server that requires a client certificate from the test CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(pki.ca)
    yield from _serving(ctx)


# -- a raw socket server ------------------------------------------------------------------------------------------


class RawServer:
    """A TCP server on 127.0.0.1 handing each connection to `handle(conn, server)` in its own thread."""

    def __init__(self, handle: Callable[[socket.socket, RawServer], None]) -> None:
        self.stopped = threading.Event()
        self.connections = 0
        self._handle = handle
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with conn, contextlib.suppress(OSError):
            self._handle(conn, self)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.stopped.set()
        self._sock.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket, RawServer], None]], RawServer]]:
    servers: list[RawServer] = []

    def start(handle: Callable[[socket.socket, RawServer], None]) -> RawServer:
        servers.append(RawServer(handle))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


# -- a forward proxy ----------------------------------------------------------------------------------------------


@dataclass
class ForwardProxy:
    """A plain-HTTP proxy: CONNECT host:port opens a tunnel, an absolute-URI request is forwarded (one per
    connection). Host names under copa.test resolve to 127.0.0.1 here, and nowhere else. With `password`, a
    request without that Proxy-Authorization is refused with 407."""

    password: str | None = None
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # (method, target, headers)

    def __post_init__(self) -> None:
        self.server = RawServer(lambda conn, _: self._handle(conn))
        self.port = self.server.port

    def url(self, login: str = "") -> str:
        return f"http://{login + '@' if login else ''}127.0.0.1:{self.port}"

    @staticmethod
    def _upstream(host: str, port: int) -> socket.socket:
        if host == UNRESOLVABLE or host.endswith("." + UNRESOLVABLE):
            host = "127.0.0.1"
        return socket.create_connection((host, port), timeout=5)

    def _handle(self, conn: socket.socket) -> None:
        line, headers, rest = _read_head(conn)
        method, target, _ = line.split(" ", 2)
        self.seen.append((method, target, headers))
        if self.password is not None and headers.get("proxy-authorization") != self.password:
            conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"p\"\r\n"
                         b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            with self._upstream(host, int(port)) as upstream:
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                _pipe(conn, upstream)
            return
        url = urlsplit(target)
        assert url.scheme == "http" and url.hostname, f"not an absolute URI: {target}"
        keep = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k not in ("proxy-authorization", "connection"))
        with self._upstream(url.hostname, url.port or 80) as upstream:
            path = url.path + (f"?{url.query}" if url.query else "")
            upstream.sendall(f"{method} {path} HTTP/1.1\r\n{keep}Connection: close\r\n\r\n".encode("latin-1") + rest)
            _pipe(conn, upstream)


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    p = ForwardProxy()
    yield p
    p.server.stop()


# -- the environment and the client -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("REQUEST_METHOD", raising=False)


@pytest.fixture
def session() -> Iterator[Session]:
    with Session() as s:
        yield s


# == 1. proxies ===================================================================================================


def test_http_request_goes_through_the_proxy_with_absolute_url_and_login(
        proxy: ForwardProxy, origin: Origin, session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", proxy.url("us%40er:p%3Ass"))  # percent-encoded "us@er" and "p:ss"
    resp = session.get(origin.url("/v2/", n="1"), auth=("reg", "secret"))
    assert resp.content == b"GET /v2/?n=1"
    [(method, target, headers)] = proxy.seen
    assert (method, target) == ("GET", f"http://127.0.0.1:{origin.port}/v2/?n=1")
    assert headers["proxy-authorization"] == _basic("us@er:p:ss")
    assert headers["authorization"] == _basic("reg:secret")


def test_https_request_goes_through_a_connect_tunnel(
        proxy: ForwardProxy, tls_origin: Origin, pki: Pki, session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    # The proxy is 127.0.0.1, the certificate names only "localhost": verification must use the origin's name.
    monkeypatch.setenv("https_proxy", proxy.url("user:pw"))
    for path in ("/v2/", "/v2/again"):
        assert session.get(tls_origin.url(path, host="localhost"), verify=pki.ca).content == f"GET {path}".encode()
    [(method, target, headers)] = proxy.seen  # one tunnel, kept alive for the second request
    assert (method, target) == ("CONNECT", f"localhost:{tls_origin.port}")
    assert headers["proxy-authorization"] == _basic("user:pw")
    assert all("Proxy-Authorization" not in s.headers for s in tls_origin.seen)  # never sent inside the tunnel


def test_tunnelled_tls_still_checks_the_origin_host_name(
        proxy: ForwardProxy, tls_origin: Origin, pki: Pki, session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", proxy.url())
    with pytest.raises(TlsError):
        session.get(tls_origin.url("/v2/", host="127.0.0.1"), verify=pki.ca)  # the certificate names localhost
    assert [m for m, _, _ in proxy.seen] == ["CONNECT"]


def test_proxy_refusing_connect_is_a_connect_error(
        proxy: ForwardProxy, tls_origin: Origin, pki: Pki, session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy.password = _basic("right:one")
    monkeypatch.setenv("https_proxy", proxy.url("wrong:one"))
    with pytest.raises(ConnectError, match="407"):
        session.get(tls_origin.url("/v2/", host="localhost"), verify=pki.ca)
    assert tls_origin.seen == []


@pytest.mark.parametrize(("env", "via_proxy"), [
    ({"https_proxy": "{proxy}"}, False),  # the https setting is not for http:// URLs
    ({"all_proxy": "{proxy}"}, True),
    ({"HTTP_PROXY": "{proxy}"}, True),
    ({"HTTP_PROXY": "{proxy}", "REQUEST_METHOD": "GET"}, False),  # in a CGI program that is a request header
    ({"http_proxy": "127.0.0.1:{port}"}, True),  # no scheme: http://
])
def test_which_setting_applies(env: dict[str, str], via_proxy: bool, proxy: ForwardProxy, origin: Origin,
                               session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(proxy=proxy.url(), port=proxy.port))
    assert session.get(origin.url("/x")).content == b"GET /x"
    assert len(proxy.seen) == (1 if via_proxy else 0)


@pytest.mark.parametrize(("no_proxy", "host", "bypassed"), [
    ("localhost", "localhost", True),
    ("other.example, LOCALHOST.", "localhost", True),
    ("localhost:{port}", "localhost", True),
    ("localhost:1", "localhost", False),
    ("127.0.0.0/8", "127.0.0.1", True),
    ("10.0.0.0/8", "127.0.0.1", False),
    ("127.0.0.1", "127.0.0.1", True),
    ("127.0.0.1:{port}", "127.0.0.1", True),
    (f".{UNRESOLVABLE}", f"registry.{UNRESOLVABLE}", True),
    (UNRESOLVABLE, f"registry.{UNRESOLVABLE}", True),
    (f"try.{UNRESOLVABLE}", f"registry.{UNRESOLVABLE}", False),  # a suffix, but not at a dot
    ("*", f"registry.{UNRESOLVABLE}", True),
    ("", f"registry.{UNRESOLVABLE}", False),
])
def test_no_proxy(no_proxy: str, host: str, bypassed: bool, proxy: ForwardProxy, origin: Origin,
                  session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", proxy.url())
    monkeypatch.setenv("no_proxy", no_proxy.format(port=origin.port))
    url = origin.url("/x", host=host)
    if bypassed and host.endswith(UNRESOLVABLE):
        with pytest.raises(ConnectError) as caught:  # straight to a name only the proxy knows
            session.get(url)
        assert describe_connection_error(caught.value) == "host name does not resolve"
    else:
        assert session.get(url).content == b"GET /x"
    assert len(proxy.seen) == (0 if bypassed else 1)


def test_no_proxy_ipv6_host_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    # proxy_for itself: an IPv6 loopback to connect to is not there in every container.
    monkeypatch.setenv("http_proxy", "http://proxy.example:3128")
    for entry in ("::1", "[::1]", "::1/128", "[::1]:8080"):
        monkeypatch.setenv("no_proxy", entry)
        assert proxy_for("http", "::1", 8080) is None, entry
    monkeypatch.setenv("no_proxy", "[::1]:9090")
    assert proxy_for("http", "::1", 8080) is not None


@pytest.mark.parametrize("name", ["https_proxy", "all_proxy"])
def test_socks_proxy_is_refused_clearly(name: str, session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, "socks5://127.0.0.1:1080")
    with pytest.raises(InvalidURL, match=r"socks5://127\.0\.0\.1: only http:// proxies are supported"):
        session.get("https://localhost:1/")


def test_unsupported_url_scheme(session: Session) -> None:
    with pytest.raises(InvalidURL, match="only http:// and https://"):
        session.get("ftp://127.0.0.1/file")


# == 2. redirects =================================================================================================


def test_authorization_kept_on_same_host_redirect(origin: Origin, session: Session) -> None:
    resp = session.get(origin.url("/redirect", to="/next"), auth=("u", "p"))
    assert resp.content == b"GET /next"
    assert [s.headers["Authorization"] for s in origin.seen] == [_basic("u:p")] * 2


@pytest.mark.parametrize("credentials", ["auth", "header"])
def test_authorization_dropped_on_redirect_to_another_host(credentials: str, origin: Origin,
                                                           session: Session) -> None:
    kw: dict[str, object] = ({"auth": ("u", "p")} if credentials == "auth"
                             else {"headers": {"authorization": "Bearer tok"}})
    resp = session.get(origin.url("/redirect", to=origin.url("/next", host="localhost")), **kw)
    assert resp.content == b"GET /next"
    assert resp.url == origin.url("/next", host="localhost")
    first, second = origin.seen
    assert "Authorization" in first.headers
    assert "Authorization" not in second.headers


def test_303_turns_post_into_get_without_body(origin: Origin, session: Session) -> None:
    resp = session.post(origin.url("/redirect", code="303", to="/next"), data=b'{"a": 1}',
                        headers={"Content-Type": "application/json"})
    assert resp.request.method == "GET"
    _, second = origin.seen
    assert (second.method, second.body) == ("GET", b"")
    assert "Content-Length" not in second.headers and "Content-Type" not in second.headers


def test_307_keeps_method_and_body(origin: Origin, session: Session) -> None:
    session.put(origin.url("/redirect", code="307", to="/next"), data=b"payload",
                headers={"Content-Type": "application/octet-stream"})
    assert [(s.method, s.body, s.headers["Content-Type"]) for s in origin.seen] == [
        ("PUT", b"payload", "application/octet-stream")] * 2


def test_307_sends_a_file_body_again_from_where_it_started(origin: Origin, session: Session,
                                                           tmp_path: Path) -> None:
    (tmp_path / "blob").write_bytes(b"skip:the body")
    with (tmp_path / "blob").open("rb") as f:
        f.seek(5)
        session.put(origin.url("/redirect", code="307", to="/next"), data=f)
    assert [(s.body, s.headers["Content-Length"]) for s in origin.seen] == [(b"the body", "8")] * 2


def test_307_with_a_generator_body_is_refused(origin: Origin, session: Session) -> None:
    with pytest.raises(WebError, match="cannot be sent again"):
        session.post(origin.url("/redirect", code="307", to="/next"), data=iter([b"once"]))
    assert len(origin.seen) == 1


def test_redirect_loop_stops_after_max_redirects(origin: Origin, session: Session) -> None:
    session.max_redirects = 3
    with pytest.raises(TooManyRedirects):
        session.get(origin.url("/loop"))
    assert len(origin.seen) == 4  # the request and 3 redirects followed


def test_allow_redirects_false_returns_the_redirect(origin: Origin, session: Session) -> None:
    resp = session.get(origin.url("/redirect", to="/next"), allow_redirects=False)
    assert (resp.status_code, resp.headers["location"], resp.is_redirect) == (302, "/next", True)
    assert len(origin.seen) == 1


def test_head_does_not_follow_by_default(origin: Origin, session: Session) -> None:
    assert session.head(origin.url("/redirect", to="/next")).status_code == 302
    assert session.head(origin.url("/redirect", to="/next"), allow_redirects=True).status_code == 200
    assert [s.path for s in origin.seen][-1] == "/next"
    assert len(origin.seen) == 3


# == 3. connection reuse ==========================================================================================


def test_sequential_requests_reuse_one_connection(origin: Origin, session: Session) -> None:
    assert session.get(origin.url("/a")).content == b"GET /a"
    assert session.get(origin.url("/chunked")).content == b"".join(CHUNKS)
    assert session.post(origin.url("/b"), data=b"x").content == b"POST /b"
    assert origin.connections == 1


def test_tls_requests_reuse_one_connection(tls_origin: Origin, pki: Pki, session: Session) -> None:
    for path in ("/a", "/b"):
        assert session.get(tls_origin.url(path, host="localhost"), verify=pki.ca).status_code == 200
    assert tls_origin.connections == 1


def test_streamed_body_read_to_its_end_is_reused(origin: Origin, session: Session) -> None:
    resp = session.get(origin.url("/chunked"), stream=True)
    assert b"".join(iter(lambda: resp.raw.read1(4), b"")) == b"".join(CHUNKS)
    assert resp.raw.closed
    assert session.get(origin.url("/a")).content == b"GET /a"
    assert origin.connections == 1


@pytest.mark.parametrize("body", [None, b"bytes", "generator"])
def test_idle_connection_closed_by_server_is_replaced(body: bytes | str | None, origin: Origin,
                                                      session: Session) -> None:
    # Noticed before the request is sent: even a body that cannot be sent twice goes out on a new connection.
    assert session.get(origin.url("/close-after")).status_code == 200
    _wait_for(lambda: origin.closed == 1)
    data = _chunks() if body == "generator" else body
    assert session.post(origin.url("/a"), data=data).content == b"POST /a"
    assert origin.seen[-1].body == (b"" if body is None else b"generated" if body == "generator" else body)
    assert origin.connections == 2


def test_reused_connection_dropped_at_the_request_is_retried(origin: Origin, session: Session) -> None:
    session.get(origin.url("/a"))
    resp = session.post(origin.url("/drop-reused"), data=b"body")
    assert resp.content == b"POST /drop-reused"
    assert origin.seen[-1].body == b"body"
    assert origin.connections == 2


def test_an_iterable_body_goes_out_chunked_piece_by_piece(raw_server: Callable[..., RawServer],
                                                          session: Session) -> None:
    # Framed by copa.web itself (each piece sent as it is, not copied into a framed one): the wire shows each
    # piece's size line, an empty piece left out (it would end the body), then the last chunk.
    seen: list[bytes] = []

    def handle(conn: socket.socket, _server: RawServer) -> None:
        _, headers, rest = _read_head(conn)
        assert headers.get("transfer-encoding") == "chunked" and "content-length" not in headers
        while not rest.endswith(b"0\r\n\r\n"):
            rest += conn.recv(65536)
        seen.append(rest)
        conn.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")

    big = bytes(range(256)) * 4096
    resp = session.post(raw_server(handle).url(), data=iter([b"hello", b"", big, b"!"]))
    assert resp.status_code == 202
    assert seen == [b"5\r\nhello\r\n" + b"%X\r\n" % len(big) + big + b"\r\n1\r\n!\r\n0\r\n\r\n"]


def test_an_iterable_body_with_the_callers_transfer_encoding_is_framed_once(origin: Origin, session: Session) -> None:
    resp = session.post(origin.url("/a"), data=iter([b"gener", b"ated"]), headers={"Transfer-Encoding": "chunked"})
    assert resp.content == b"POST /a"
    assert origin.seen[-1].body == b"generated"


def test_reused_connection_dropped_with_a_generator_body_is_not_retried(origin: Origin, session: Session) -> None:
    session.get(origin.url("/a"))
    with pytest.raises(ConnectError, match="connection lost before the response"):
        session.post(origin.url("/drop-reused"), data=iter([b"once"]))
    assert origin.connections == 1


@pytest.mark.parametrize("path", ["/big", "/chunked", "/gzip"])
def test_readinto1_fills_the_callers_buffer_and_hands_the_connection_back(path: str, origin: Origin,
                                                                          session: Session) -> None:
    # Layers are read this way (copa.oci.registry): straight into the buffer for a sized body, through read1 for
    # a chunked or encoded one; read to its end, the connection is used again.
    expected = session.get(origin.url(path)).content
    resp = session.get(origin.url(path), stream=True)
    resp.raw.decode_content = True
    read = _readinto1(resp)
    chunks = list(iter(lambda: read(7000), b""))
    assert max(map(len, chunks)) <= 7000
    assert b"".join(chunks) == expected
    assert resp.raw.closed
    assert session.get(origin.url("/a")).content == b"GET /a"
    assert origin.connections == 1


def test_stream_closed_before_its_end_is_not_reused(origin: Origin, session: Session) -> None:
    resp = session.get(origin.url("/big"), stream=True)
    assert resp.raw.read1(100) == b"x" * 100
    resp.close()
    assert session.get(origin.url("/a")).content == b"GET /a"
    assert origin.connections == 2


# == 4. response bodies ===========================================================================================


def _short_body(conn: socket.socket, _: RawServer) -> None:
    _read_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"y" * 10)


def _short_chunked(conn: socket.socket, _: RawServer) -> None:
    _read_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nonly part")


def _readinto1(resp: Response) -> Callable[[int], bytes]:
    def read(n: int) -> bytes:
        buffer = bytearray(n)
        return bytes(buffer[:resp.raw.readinto1(buffer)])

    return read


@pytest.mark.parametrize("handle", [_short_body, _short_chunked])
@pytest.mark.parametrize("how", ["read1", "read", "readinto1"])
def test_streamed_body_cut_short_raises(how: str, handle: Callable[[socket.socket, RawServer], None],
                                        raw_server: Callable[..., RawServer], session: Session) -> None:
    resp = session.get(raw_server(handle).url(), stream=True)
    read = {"read1": resp.raw.read1, "read": resp.raw.read, "readinto1": _readinto1(resp)}[how]
    with pytest.raises(BodyError):
        for _ in range(100):
            read(30)
    assert resp.raw.closed


@pytest.mark.parametrize("handle", [_short_body, _short_chunked])
def test_body_cut_short_raises(handle: Callable[[socket.socket, RawServer], None],
                               raw_server: Callable[..., RawServer], session: Session) -> None:
    with pytest.raises(BodyError):
        session.get(raw_server(handle).url())


def _bad_gzip(body: bytes) -> Callable[[socket.socket, RawServer], None]:
    def handle(conn: socket.socket, _: RawServer) -> None:
        _read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    return handle


@pytest.mark.parametrize("body", [GZ[: len(GZ) // 2], b"not gzip at all"], ids=["truncated", "corrupt"])
def test_broken_gzip_body_raises(body: bytes, raw_server: Callable[..., RawServer], session: Session) -> None:
    # The HTTP framing is complete; the gzip stream inside is not: decoding must not pass off a prefix as the body.
    with pytest.raises(BodyError):
        session.get(raw_server(_bad_gzip(body)).url())


def test_chunked_response_is_read_whole(origin: Origin, session: Session) -> None:
    resp = session.get(origin.url("/chunked"))
    assert "Content-Length" not in resp.headers
    assert resp.content == b"".join(CHUNKS)


def test_gzip_is_decoded_by_content(origin: Origin, session: Session) -> None:
    resp = session.get(origin.url("/gzip"))
    assert resp.headers["content-encoding"] == "gzip"
    assert resp.content == PAYLOAD


@pytest.mark.parametrize(("decode", "expected"), [(True, PAYLOAD), (False, GZ)])
def test_gzip_by_read1_only_when_asked(decode: bool, expected: bytes, origin: Origin, session: Session) -> None:
    resp = session.get(origin.url("/gzip"), stream=True)
    resp.raw.decode_content = decode
    assert b"".join(iter(lambda: resp.raw.read1(1 << 16), b"")) == expected


@pytest.mark.parametrize("n", [10, 1000, 70000])
def test_read1_never_returns_more_than_asked_while_decoding(n: int, origin: Origin, session: Session) -> None:
    resp = session.get(origin.url("/gzip"), stream=True)
    resp.raw.decode_content = True
    chunks = list(iter(lambda: resp.raw.read1(n), b""))
    assert max(map(len, chunks)) <= n
    assert b"".join(chunks) == PAYLOAD


def test_repeated_headers_are_joined_and_names_ignore_case(origin: Origin, session: Session) -> None:
    resp = session.get(origin.url("/dup"))
    expected = 'Bearer realm="https://auth/token", Basic realm="registry"'
    assert resp.headers["WWW-Authenticate"] == resp.headers["www-authenticate"] == expected
    assert "wWw-AuThEnTiCaTe" in resp.headers
    assert resp.headers.get("X-Missing") is None


def test_link_header(origin: Origin, session: Session) -> None:
    resp = session.get(origin.url("/dup"))
    assert resp.links["next"] == {"url": "/v2/_catalog?last=b&n=2", "rel": "next"}


# == 5. request bodies ============================================================================================


class Sized:
    """A file-like body that knows its length but has no file descriptor."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __len__(self) -> int:
        return len(self._data)

    def read(self, n: int = -1) -> bytes:
        out, self._data = (self._data, b"") if n < 0 else (self._data[:n], self._data[n:])
        return out


def _chunks() -> Iterator[bytes]:
    yield b"gen"
    yield b"erated"


@pytest.mark.parametrize(("data", "length"), [
    (b"bytes", "5"),
    (bytearray(b"array"), "5"),
    (Sized(b"sized body"), "10"),
])
def test_body_with_a_length_gets_content_length(data: object, length: str, origin: Origin,
                                                session: Session) -> None:
    session.put(origin.url("/up"), data=data)
    [seen] = origin.seen
    assert (seen.headers["Content-Length"], seen.headers["Transfer-Encoding"]) == (length, None)
    assert len(seen.body) == int(length)


def test_generator_body_is_sent_chunked(origin: Origin, session: Session) -> None:
    session.put(origin.url("/up"), data=_chunks())
    [seen] = origin.seen
    assert (seen.headers["Transfer-Encoding"], seen.headers["Content-Length"]) == ("chunked", None)
    assert seen.body == b"generated"


def test_list_of_chunks_is_sent_whole(origin: Origin, session: Session) -> None:
    # An Iterable[bytes] that has a len(), which counts chunks, not bytes: a Content-Length from it would cut the
    # body short and leave its rest on the connection, read by the server as the start of the next request.
    session.put(origin.url("/up"), data=[b"two ", b"chunks"])
    session.get(origin.url("/after"))
    assert [(s.method, s.path, s.body) for s in origin.seen] == [("PUT", "/up", b"two chunks"), ("GET", "/after", b"")]


def test_request_target_is_percent_encoded(origin: Origin, session: Session) -> None:
    session.get(origin.url("/v2/a b/é") + "?q=x y&r=%41")
    assert origin.seen[0].path == "/v2/a%20b/%C3%A9?q=x%20y&r=%41"  # what came encoded stays as it was


def test_form_data_is_url_encoded(origin: Origin, session: Session) -> None:
    session.post(origin.url("/token"), data={"scope": "repository:a/b:pull,push", "name": "é&="})
    [seen] = origin.seen
    assert seen.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert parse_qs(seen.body.decode("ascii"), strict_parsing=True) == {
        "scope": ["repository:a/b:pull,push"], "name": ["é&="]}


def test_params_are_encoded_into_the_query(origin: Origin, session: Session) -> None:
    session.get(origin.url("/token", service="reg"), params=[("scope", "x y"), ("scope", "a&b=c")])
    [seen] = origin.seen
    query = urlsplit(seen.path).query
    assert " " not in query
    assert parse_qs(query, strict_parsing=True) == {"service": ["reg"], "scope": ["x y", "a&b=c"]}


# == 6. timeouts and refused connections ==========================================================================


def _silent(conn: socket.socket, server: RawServer) -> None:
    server.stopped.wait(10)


def _stalls_mid_body(conn: socket.socket, server: RawServer) -> None:
    _read_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst part")
    server.stopped.wait(10)


def test_server_that_never_answers_times_out(raw_server: Callable[..., RawServer], session: Session) -> None:
    server = raw_server(_silent)
    start = time.monotonic()
    with pytest.raises(ReadTimedOut) as caught:
        session.get(server.url(), timeout=0.5)
    assert 0.4 < time.monotonic() - start < 3
    assert describe_connection_error(caught.value) == "timed out"


def test_body_that_stalls_times_out(raw_server: Callable[..., RawServer], session: Session) -> None:
    server = raw_server(_stalls_mid_body)
    resp = session.get(server.url(), stream=True, timeout=0.5)
    assert resp.raw.read1(100) == b"first part"
    start = time.monotonic()
    with pytest.raises(ReadTimedOut):
        resp.raw.read1(100)
    assert time.monotonic() - start < 3


def _answers_first_request_only(keep_alive: bool) -> Callable[[socket.socket, RawServer], None]:
    def handle(conn: socket.socket, server: RawServer) -> None:
        if server.connections == 1:
            _read_head(conn)
            close = b"" if keep_alive else b"Connection: close\r\n"
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n%s\r\nok" % close)
            if not keep_alive:
                return
        server.stopped.wait(10)

    return handle


@pytest.mark.parametrize("keep_alive", [True, False], ids=["reused", "new"])
def test_timeout_is_the_requests_own(keep_alive: bool, raw_server: Callable[..., RawServer],
                                     session: Session) -> None:
    # The connection (reused, or new in a pool made by a request with another timeout) waits as long as this
    # request says.
    server = raw_server(_answers_first_request_only(keep_alive))
    assert session.get(server.url(), timeout=10).content == b"ok"
    start = time.monotonic()
    with pytest.raises(ReadTimedOut):
        session.get(server.url(), timeout=0.5)
    assert time.monotonic() - start < 3
    assert server.connections == (1 if keep_alive else 2)


def test_closed_port_is_connection_refused(session: Session) -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    with pytest.raises(ConnectError) as caught:
        session.get(f"http://127.0.0.1:{port}/", timeout=5)
    assert describe_connection_error(caught.value) == "connection refused"


def test_connect_timeout(session: Session) -> None:
    # A listening socket whose accept queue is full drops new SYNs: connecting hangs until the timeout.
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener, contextlib.ExitStack() as fillers:
        port = listener.getsockname()[1]
        for _ in range(8):
            filler = fillers.enter_context(socket.socket())
            filler.settimeout(0.2)
            try:
                filler.connect(("127.0.0.1", port))
            except TimeoutError:
                break
        else:
            pytest.skip("this kernel does not hold back connections over the backlog")
        with pytest.raises(ConnectTimedOut) as caught:
            session.get(f"http://127.0.0.1:{port}/", timeout=0.3)
        assert describe_connection_error(caught.value) == "timed out"


# == 7. TLS =======================================================================================================


def test_tls_verified_with_a_ca_file(tls_origin: Origin, pki: Pki, session: Session) -> None:
    assert session.get(tls_origin.url("/a", host="localhost"), verify=pki.ca).content == b"GET /a"


def test_tls_default_bundle_does_not_know_the_test_ca(tls_origin: Origin, session: Session) -> None:
    with pytest.raises(TlsError) as caught:
        session.get(tls_origin.url("/a", host="localhost"))
    assert describe_connection_error(caught.value) == "TLS handshake failed"
    assert tls_origin.seen == []


def test_tls_host_name_is_checked(tls_origin: Origin, pki: Pki, session: Session) -> None:
    with pytest.raises(TlsError):
        session.get(tls_origin.url("/a", host="127.0.0.1"), verify=pki.ca)


def test_tls_verify_false(tls_origin: Origin, session: Session) -> None:
    session.verify = False
    assert session.get(tls_origin.url("/a", host="127.0.0.1")).content == b"GET /a"


@pytest.mark.parametrize("which", ["pair", "one file"])
def test_client_certificate_is_presented(which: str, mtls_origin: Origin, pki: Pki, session: Session) -> None:
    cert: str | tuple[str, str] = (pki.client_cert, pki.client_key) if which == "pair" else pki.client_pem
    resp = session.get(mtls_origin.url("/a", host="localhost"), verify=pki.ca, cert=cert)
    assert resp.content == b"GET /a"
    assert mtls_origin.peers == [((("commonName", "copa-client"),),)]


def test_missing_client_certificate_fails(mtls_origin: Origin, pki: Pki, session: Session) -> None:
    with pytest.raises(ConnectError):
        session.get(mtls_origin.url("/a", host="localhost"), verify=pki.ca, timeout=5)
    assert mtls_origin.seen == []



# == 8. regressions: defects found in review ======================================================================


def _serve_paths(answer: Callable[[str], bytes], lines: list[bytes] | None = None,
                 ) -> Callable[[socket.socket, RawServer], None]:
    """A keep-alive raw handler: each request on the connection gets the bytes `answer(path)` returns; request
    lines are recorded in `lines`."""

    def handle(conn: socket.socket, _: RawServer) -> None:
        while True:
            try:
                line, _headers, _rest = _read_head(conn)
            except ConnectionError:
                return
            if lines is not None:
                lines.append(line.encode("latin-1"))
            conn.sendall(answer(line.split(" ")[1]))

    return handle


def _ok(body: bytes = b"ok") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


# A Location as a server sends it: UTF-8 and a space in the path, a signature whose %2F and + must not change.
_LOCATION = b"/caf\xc3\xa9 x?X-Amz-Signature=a%2Fb+c&q=%7E"
_LOCATION_TARGET = "/caf%C3%A9%20x?X-Amz-Signature=a%2Fb+c&q=%7E"


def _to_cafe(path: str) -> bytes:
    if path == "/start":
        return b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % _LOCATION
    if path == _LOCATION_TARGET:
        return _ok()
    return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


def test_non_ascii_location_is_requested_as_its_utf8_encoding(raw_server: Callable[..., RawServer],
                                                              session: Session) -> None:
    lines: list[bytes] = []
    server = raw_server(_serve_paths(_to_cafe, lines))
    assert session.get(server.url("/start"), allow_redirects=False).location == _LOCATION_TARGET
    resp = session.get(server.url("/start"))
    assert (resp.status_code, resp.content, resp.url) == (200, b"ok", server.url(_LOCATION_TARGET))
    assert lines[-1] == f"GET {_LOCATION_TARGET} HTTP/1.1".encode()


def test_non_ascii_location_through_the_package_fetcher(raw_server: Callable[..., RawServer], session: Session,
                                                        tmp_path: Path) -> None:
    # copa.pkg.fetch follows redirects itself (each hop gets its own login): the same Location, the same target.
    lines: list[bytes] = []
    server = raw_server(_serve_paths(_to_cafe, lines))
    fetcher = Fetcher(Cache(tmp_path / "cache"), session=session, retries=1)
    assert fetcher.get_bytes(server.url("/start"), "InRelease") == b"ok"
    assert lines == [b"GET /start HTTP/1.1", f"GET {_LOCATION_TARGET} HTTP/1.1".encode()]


def _refuses_the_body(conn: socket.socket, _: RawServer) -> None:
    # A registry refusing a blob upload from its head: it answers, reads nothing more, and drops the connection
    # (with unread data a close is a reset; SO_LINGER 0 makes it one for sure).
    _read_head(conn)
    body = b'{"errors":[{"code":"SIZE_INVALID","message":"too big"}]}'
    conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    time.sleep(0.2)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.parametrize("body", ["sized", "generator"])
def test_answer_before_the_whole_body_is_returned(body: str, raw_server: Callable[..., RawServer],
                                                  session: Session) -> None:
    # Far more than the socket buffers hold: the client is still sending when the connection is reset.
    size = 32 << 20
    data = Sized(b"x" * size) if body == "sized" else (b"x" * (1 << 16) for _ in range(size >> 16))
    resp = session.put(raw_server(_refuses_the_body).url("/v2/a/blobs/uploads/1"), data=data, timeout=5)
    assert resp.status_code == 413
    assert json.loads(resp.content)["errors"][0]["code"] == "SIZE_INVALID"


def _early_hints(path: str) -> bytes:
    body = f"body of {path}".encode()
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" if path == "/a" else b""
    return hints * 2 + _ok(body)


def test_interim_103_responses_are_skipped(raw_server: Callable[..., RawServer], session: Session) -> None:
    server = raw_server(_serve_paths(_early_hints))
    first = session.get(server.url("/a"))
    assert (first.status_code, first.content) == (200, b"body of /a")
    second = session.get(server.url("/b"))  # on the same connection: nothing of the first answer is left over
    assert (second.status_code, second.content) == (200, b"body of /b")
    assert server.connections == 1


def _chunked_without_body(status: int, then_close: bool) -> Callable[[socket.socket, RawServer], None]:
    # "Transfer-Encoding: chunked" on a response that has no body by definition, and no chunks.
    def handle(conn: socket.socket, server: RawServer) -> None:
        if server.connections > 1:
            _serve_paths(lambda _: _ok())(conn, server)
            return
        _read_head(conn)
        conn.sendall(b"HTTP/1.1 %d No body\r\nTransfer-Encoding: chunked\r\n\r\n" % status)
        if not then_close:
            server.stopped.wait(10)

    return handle


@pytest.mark.parametrize("then_close", [False, True], ids=["stays open", "closes"])
@pytest.mark.parametrize("status", [204, 304])
def test_chunked_header_on_a_response_without_body(status: int, then_close: bool,
                                                   raw_server: Callable[..., RawServer], session: Session) -> None:
    server = raw_server(_chunked_without_body(status, then_close))
    start = time.monotonic()
    resp = session.request("PUT" if status == 204 else "GET", server.url("/a"), timeout=2)
    assert (resp.status_code, resp.content) == (status, b"")
    assert time.monotonic() - start < 1.5
    assert session.get(server.url("/b"), timeout=2).content == b"ok"
    assert server.connections == 2  # what follows such a head is unknown: its connection is not used again


def _encoded(path: str) -> bytes:
    encoding, body = {
        "/multi-member": (b"gzip", gzip.compress(b"first member, ") + gzip.compress(b"second member")),
        "/raw-deflate": (b"deflate", _raw_deflate(b"raw deflate, no zlib wrapper")),
        "/zlib-deflate": (b"deflate", zlib.compress(b"deflate with its zlib wrapper")),
    }[path]
    return b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n%s" % (encoding, len(body), body)


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize(("path", "expected"), [
    ("/multi-member", b"first member, second member"),
    ("/raw-deflate", b"raw deflate, no zlib wrapper"),
    ("/zlib-deflate", b"deflate with its zlib wrapper"),
])
@pytest.mark.parametrize("how", ["content", "read1"])
def test_content_encodings_decoded_whole(how: str, path: str, expected: bytes,
                                         raw_server: Callable[..., RawServer], session: Session) -> None:
    server = raw_server(_serve_paths(_encoded))
    if how == "content":
        assert session.get(server.url(path)).content == expected
    else:
        resp = session.get(server.url(path), stream=True)
        resp.raw.decode_content = True
        assert b"".join(iter(lambda: resp.raw.read1(4), b"")) == expected
    assert session.get(server.url("/zlib-deflate")).content == b"deflate with its zlib wrapper"
    assert server.connections == 1


def _trickles_empty_blocks(conn: socket.socket, server: RawServer) -> None:
    # A gzip stream that keeps arriving but decodes to nothing: empty stored blocks, one every 0.1 s for 3 s.
    _read_head(conn)
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n")

    def chunk(data: bytes) -> None:
        conn.sendall(b"%x\r\n%s\r\n" % (len(data), data))

    chunk(c.compress(b"") + c.flush(zlib.Z_SYNC_FLUSH))  # the gzip header and an empty block
    for _ in range(30):
        if server.stopped.wait(0.1):
            return
        chunk(b"\x00\x00\x00\xff\xff")  # an empty stored block, not the last
    chunk(c.compress(b"data") + c.flush())
    conn.sendall(b"0\r\n\r\n")
    server.stopped.wait(10)


def test_gzip_body_decoding_to_nothing_times_out(raw_server: Callable[..., RawServer], session: Session) -> None:
    resp = session.get(raw_server(_trickles_empty_blocks).url(), stream=True, timeout=0.5)
    resp.raw.decode_content = True
    start = time.monotonic()
    with pytest.raises(ReadTimedOut):
        resp.raw.read1(1 << 16)
    assert 0.4 < time.monotonic() - start < 2
    assert resp.raw.closed


def _ca(cn: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return _cert(cn, key, _name(cn), key, [x509.BasicConstraints(ca=True, path_length=None)])


def test_ca_bundle_setting_naming_a_hashed_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # REQUESTS_CA_BUNDLE=/etc/ssl/certs: an OpenSSL hashed directory, every certificate a file and a HASH.0 link.
    d = tmp_path / "certs"
    d.mkdir()
    for i, cn in enumerate(("dir CA one", "dir CA two")):
        name = cn.replace(" ", "-") + ".pem"
        (d / name).write_bytes(_pem(_ca(cn)))
        (d / f"{i:08x}.0").symlink_to(name)  # as c_rehash links them
    extra = tmp_path / "registry-ca.crt"
    extra.write_bytes(_pem(_ca("certs.d CA")))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(d))
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    out = merged_bundle(None, [extra], tmp_path / "merged.pem")
    found = [c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(out.read_bytes())]
    assert sorted(found) == ["CN=certs.d CA", "CN=dir CA one", "CN=dir CA two"]
    ssl.create_default_context(cafile=str(out))  # a bundle OpenSSL reads


def _post_handshake_auth(pki: Pki, peers: list[object]) -> Callable[[socket.socket, RawServer], None]:
    """A TLS 1.3 server that asks for the client certificate only once the request came (as Apache does for an
    SSLVerifyClient in a <Location>), recording its subject in `peers`; 403 when it cannot ask."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    ctx.load_verify_locations(pki.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.post_handshake_auth = True  # with CERT_REQUIRED: no certificate asked for in the handshake

    def subject(tls: ssl.SSLSocket) -> object:
        try:
            return (tls.getpeercert() or {}).get("subject")
        except ValueError:  # "handshake not done yet": the certificate asked for has not come yet
            return None

    def handle(conn: socket.socket, _: RawServer) -> None:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            _read_head(tls)
            assert subject(tls) is None  # none in the handshake
            try:
                tls.verify_client_post_handshake()
            except ssl.SSLError as e:  # the client did not offer post-handshake authentication
                body = str(e).encode()
                tls.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                return
            tls.settimeout(0.05)
            deadline = time.monotonic() + 3
            while subject(tls) is None and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    tls.recv(1)  # sends the CertificateRequest, then reads the client's answer to it
            peers.append(subject(tls))
            tls.settimeout(5)
            tls.sendall(_ok())

    return handle


def test_client_certificate_asked_for_after_the_handshake(pki: Pki, raw_server: Callable[..., RawServer],
                                                          session: Session) -> None:
    peers: list[object] = []
    server = raw_server(_post_handshake_auth(pki, peers))
    resp = session.get(f"https://localhost:{server.port}/private", verify=pki.ca,
                       cert=(pki.client_cert, pki.client_key), timeout=5)
    assert (resp.status_code, resp.content) == (200, b"ok")
    assert peers == [((("commonName", "copa-client"),),)]


def test_keep_alive_with_more_than_1024_descriptors_open(origin: Origin, session: Session) -> None:
    # select() cannot watch a descriptor past 1023: checking an idle connection with it discarded every one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 1100 + 256
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"the descriptor limit ({hard}) is too low")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    held = [os.open(os.devnull, os.O_RDONLY)]
    try:
        while held[-1] < 1100:  # every free number below taken: the connection's socket gets one past 1100
            held.append(os.dup(held[0]))
        for i in range(5):
            assert session.get(origin.url(f"/{i}")).content == f"GET /{i}".encode()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert origin.connections == 1


@pytest.mark.parametrize("token", ["abc\r\nX-Injected: 1", "abc\nX-Injected: 1", "t\u00e9\u20ac"],
                         ids=["CRLF", "LF", "beyond latin-1"])
def test_header_value_that_cannot_be_sent(token: str, origin: Origin, session: Session) -> None:
    # An Authorization built from a token server's answer: refused as a WebError, never written in part.
    with pytest.raises(InvalidRequest) as caught:
        session.get(origin.url("/a"), headers={"Authorization": f"Bearer {token}"})
    assert isinstance(caught.value, WebError)
    assert is_permanent(caught.value)
    assert session.get(origin.url("/b")).content == b"GET /b"
    assert [s.path for s in origin.seen] == ["/b"]
    assert "X-Injected" not in origin.seen[0].headers


def test_socks_proxy_error_is_described_as_itself(session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", "socks5://127.0.0.1:1080")
    with pytest.raises(InvalidURL) as caught:
        session.get("https://localhost:1/")
    assert describe_connection_error(caught.value) == str(caught.value)
    assert "only http:// proxies are supported" in str(caught.value)
    assert is_permanent(caught.value)  # no retries: the setting is wrong


def _redirects_with_a_page(path: str) -> bytes:
    if path == "/blob":
        page = b'<a href="/cdn/blob">Temporary Redirect</a>.\n'
        return b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /cdn/blob\r\nContent-Length: %d\r\n\r\n%s" % (
            len(page), page)
    return _ok()


def test_redirects_with_a_small_body_reuse_the_connection(raw_server: Callable[..., RawServer],
                                                          session: Session) -> None:
    lines: list[bytes] = []
    server = raw_server(_serve_paths(_redirects_with_a_page, lines))
    for _ in range(5):
        assert session.get(server.url("/blob")).content == b"ok"
    assert lines == [b"GET /blob HTTP/1.1", b"GET /cdn/blob HTTP/1.1"] * 5
    assert server.connections == 1


@pytest.mark.parametrize("code", ["301", "302"])
def test_301_302_turn_put_into_get_without_body(code: str, origin: Origin, session: Session) -> None:
    # As Go's http client (skopeo, containerd) does for any method but GET and HEAD, not only for POST.
    resp = session.put(origin.url("/redirect", code=code, to="/next"), data=b"payload",
                       headers={"Content-Type": "application/octet-stream"})
    assert (resp.request.method, resp.content) == ("GET", b"GET /next")
    first, second = origin.seen
    assert (first.method, first.body) == ("PUT", b"payload")
    assert (second.method, second.body) == ("GET", b"")
    assert "Content-Length" not in second.headers and "Content-Type" not in second.headers


@dataclass
class _PortMapProxy(ForwardProxy):
    """A forward proxy whose CONNECT tunnels, to whatever port, all lead to `to_port` on 127.0.0.1: a server seen
    as https://localhost (port 443) and https://localhost:8443."""

    to_port: int = 0

    def _upstream(self, host: str, port: int) -> socket.socket:  # type: ignore[override]
        return socket.create_connection(("127.0.0.1", self.to_port), timeout=5)


@pytest.mark.parametrize(("start", "to", "kept"), [
    ("https://localhost", "https://localhost:443", True),
    ("https://localhost:443", "https://localhost", True),
    ("https://localhost", "https://localhost:8443", False),
])
def test_authorization_on_redirect_to_the_default_port_spelled_out(
        start: str, to: str, kept: bool, tls_origin: Origin, pki: Pki, session: Session,
        monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = _PortMapProxy(to_port=tls_origin.port)  # nothing listens on 443 here: the proxy's tunnels lead there
    try:
        monkeypatch.setenv("https_proxy", proxy.url())
        resp = session.get(f"{start}/redirect?{urlencode({'to': to + '/next'})}", auth=("u", "p"), verify=pki.ca)
    finally:
        proxy.server.stop()
    assert resp.content == b"GET /next"
    assert [s.headers["Authorization"] for s in tls_origin.seen] == [_basic("u:p"), _basic("u:p") if kept else None]
