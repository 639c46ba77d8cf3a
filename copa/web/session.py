"""Sessions: default headers and TLS settings, a pool of kept-alive connections per origin, redirects."""

from __future__ import annotations

import base64
import http.client
import os
import select
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit

from copa.web import tls
from copa.web.errors import (
    ConnectError,
    ConnectTimedOut,
    InvalidRequest,
    InvalidURL,
    ReadTimedOut,
    TlsError,
    TooManyRedirects,
    WebError,
)
from copa.web.proxies import Proxy, proxy_for
from copa.web.response import TARGET_SAFE, Response, Sent, WireResponse

DEFAULT_HEADERS = {
    "User-Agent": "copa",
    "Accept": "*/*",
    # Bodies are checksummed as the server stores them: no on-the-fly compression.
    "Accept-Encoding": "identity",
}
_BLOCK = 1 << 16  # request bodies are sent in 64 KiB writes (http.client's default is 8 KiB)
_DRAIN = 64 << 10  # a redirect's body up to this size is read to keep its connection; a larger one closes it
# What a connection kept alive for reuse may fail with when the server has closed it meanwhile; a request that
# meets one before any response byte is sent again on a fresh connection, when its body can be sent again.
_STALE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, http.client.RemoteDisconnected)

Body = bytes | bytearray | memoryview | Iterable[bytes] | Any  # bytes, a file-like with read(), or an iterable
Hook = Callable[[Response], Any]


class _Pool:
    """Idle connections to one origin (through one proxy, with one TLS setting)."""

    def __init__(self, make: Callable[[], http.client.HTTPConnection], size: int) -> None:
        self._make = make
        self._idle: list[http.client.HTTPConnection] = []
        self._size = size
        self._lock = threading.Lock()

    def take(self) -> tuple[http.client.HTTPConnection, bool]:
        """A connection and whether it was used before."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._make(), False
            if conn.sock is not None and not _dropped(conn.sock):
                return conn, True
            conn.close()

    def give(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self._size:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _dropped(sock: socket.socket) -> bool:
    """Whether an idle kept-alive connection was closed by the server (it is readable: EOF or stray bytes)."""
    try:
        poller = select.poll()  # not select(): it fails for descriptors past 1023, which a busy program has
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def _content_length(body: Any) -> int | None:
    if body is None:
        return None
    if isinstance(body, (bytes, bytearray, memoryview)):
        return len(body)
    if hasattr(body, "read") and hasattr(body, "__len__"):  # a sized stream; a list's len() counts its chunks
        return len(body)
    if hasattr(body, "fileno") and hasattr(body, "tell"):
        try:
            return int(os.fstat(body.fileno()).st_size - body.tell())
        except (OSError, ValueError):
            return None
    return None


def _chunked(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """HTTP/1.1 chunked transfer coding of `pieces`: each one's size line, the piece itself, its CRLF; then the
    last chunk. (An empty piece would end the body: it is skipped.)"""
    for piece in pieces:
        if piece:
            yield b"%X\r\n" % len(piece)
            yield piece
            yield b"\r\n"
    yield b"0\r\n\r\n"


def _replayable(body: Any) -> bool:
    return body is None or isinstance(body, (bytes, bytearray, memoryview))


def basic_authorization(user: str, password: str) -> str:
    """An Authorization (or Proxy-Authorization) value for HTTP Basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _same_host(old: str, new: str) -> bool:
    """Whether a redirect stays with the host its credentials were meant for (an http -> https upgrade on the
    default ports counts as staying, as with requests and curl)."""
    a, b = urlsplit(old), urlsplit(new)
    if a.hostname != b.hostname:
        return False
    default = {"http": 80, "https": 443}
    a_port, b_port = a.port or default.get(a.scheme), b.port or default.get(b.scheme)
    if a.scheme == b.scheme:
        return a_port == b_port
    return a.scheme == "http" and b.scheme == "https" and a_port == 80 and b_port == 443


class Session:
    """Connections kept alive per origin, default headers (`headers`), TLS settings (`verify`, `cert`) a request
    may override, response `hooks`. Safe to share between threads: each request takes its own connection."""

    def __init__(self, pool_size: int = 10) -> None:
        self.headers: dict[str, str] = dict(DEFAULT_HEADERS)
        self.verify: tls.Verify = True
        self.cert: tls.Cert = None
        self.max_redirects = 30
        self.hooks: dict[str, list[Hook]] = {"response": []}
        self._pool_size = pool_size
        self._pools: dict[tuple[Any, ...], _Pool] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the verbs --------------------------------------------------------------------------------------------

    def get(self, url: str, **kw: Any) -> Response:
        return self.request("GET", url, **kw)

    def head(self, url: str, **kw: Any) -> Response:
        kw.setdefault("allow_redirects", False)
        return self.request("HEAD", url, **kw)

    def post(self, url: str, **kw: Any) -> Response:
        return self.request("POST", url, **kw)

    def put(self, url: str, **kw: Any) -> Response:
        return self.request("PUT", url, **kw)

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Sequence[tuple[str, str]] | Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        data: Body | Mapping[str, str] | None = None,
        stream: bool = False,
        timeout: float | None = None,
        allow_redirects: bool = True,
        verify: tls.Verify | None = None,
        cert: tls.Cert = None,
        auth: tuple[str, str] | None = None,
    ) -> Response:
        """Send one request, following redirects (unless told not to). With `stream`, the body is left on the
        connection for the caller to read; otherwise it is read now (`content`)."""
        if params:
            query = urlencode(list(params.items()) if isinstance(params, Mapping) else list(params))
            url = f"{url}{'&' if '?' in url else '?'}{query}"
        merged: dict[str, tuple[str, str]] = {k.lower(): (k, v) for k, v in self.headers.items()}
        if isinstance(data, Mapping):
            data = urlencode(list(data.items())).encode()
            merged["content-type"] = ("Content-Type", "application/x-www-form-urlencoded")
        for k, v in (headers or {}).items():
            merged[k.lower()] = (k, v)
        if auth is not None:
            merged["authorization"] = ("Authorization", basic_authorization(*auth))
        verify = self.verify if verify is None else verify
        cert = self.cert if cert is None else cert
        start = _start_position(data)
        for _hop in range(self.max_redirects + 1):
            resp = self._send(method, url, merged, data, timeout, verify, cert)
            for hook in self.hooks["response"]:
                hook(resp)
            if not (allow_redirects and resp.is_redirect):
                if not stream:
                    _ = resp.content
                return resp
            target = urljoin(url, resp.location or "")
            resp.raw.drain(_DRAIN)  # a small redirect body is read, so its connection serves the next request
            if resp.status_code in (301, 302, 303) and method not in ("GET", "HEAD"):  # as Go's client (skopeo)
                method, data = "GET", None
                for name in ("content-length", "content-type", "transfer-encoding"):
                    merged.pop(name, None)
            elif data is not None and not _replayable(data):
                if start is None:
                    raise WebError(f"{method} {url} was redirected to {target} with a body that cannot be sent again")
                getattr(data, "seek")(start)  # noqa: B009 - data is a file-like here, the union says otherwise
            if not _same_host(url, target):
                merged.pop("authorization", None)
            url = target
        raise TooManyRedirects(f"more than {self.max_redirects} redirects, the last to {url}")

    # -- one exchange -----------------------------------------------------------------------------------------

    def _pool(self, scheme: str, host: str, port: int, proxy: Proxy | None, verify: tls.Verify,
              cert: tls.Cert, timeout: float | None) -> _Pool:
        key = (scheme, host, port, proxy, verify, cert) if scheme == "https" else (scheme, host, port, proxy)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = _Pool(
                    lambda: _connection(scheme, host, port, proxy, verify, cert, timeout), self._pool_size)
            return pool

    def _send(self, method: str, url: str, headers: dict[str, tuple[str, str]], data: Any, timeout: float | None,
              verify: tls.Verify, cert: tls.Cert) -> Response:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise InvalidURL(f"cannot request {url}: only http:// and https:// URLs with a host are supported")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise InvalidURL(f"cannot request {url}: the port is not a number") from None
        proxy = proxy_for(scheme, parts.hostname, port)
        target = quote(parts.path or "/", safe=TARGET_SAFE)
        if parts.query:
            target += "?" + quote(parts.query, safe=TARGET_SAFE)
        if proxy is not None and scheme == "http":
            target = f"http://{parts.netloc.rpartition('@')[2]}{target}"  # a plain proxy is sent the absolute URL
        out = {name: value for name, value in headers.values()}
        if proxy is not None and scheme == "http" and proxy.authorization:
            out["Proxy-Authorization"] = proxy.authorization
        length = _content_length(data)
        if data is not None and length is not None and "content-length" not in headers:
            out["Content-Length"] = str(length)
        # A file-like body of unknown length (or one whose caller set Transfer-Encoding) is framed by http.client, a
        # block at a time. Chunks from an iterable are framed here and sent as they are: http.client's framing
        # copies each into a new bytes object (an 8 MiB piece of a layer streamed while written: 8 MiB more resident).
        encode_chunked = data is not None and length is None and (hasattr(data, "read")
                                                                 or "transfer-encoding" in headers)
        if data is not None and length is None and not encode_chunked:
            out["Transfer-Encoding"] = "chunked"
            data = _chunked(data)
        pool = self._pool(scheme, parts.hostname, port, proxy, verify, cert, timeout)
        for attempt in (0, 1):
            conn, reused = pool.take()
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            try:
                raw = _exchange(conn, method, target, data, out, encode_chunked, url, proxy)
            except _STALE as e:
                if reused and attempt == 0 and _replayable(data):
                    continue
                raise ConnectError(f"{method} {url}: connection lost before the response ({e})") from e
            except ssl.SSLError as e:
                # A kept-alive TLS connection the server closed just now can also end in an EOF the TLS layer
                # reports; that is the stale case above, not a handshake failure.
                if reused and attempt == 0 and _replayable(data) and isinstance(e, (ssl.SSLEOFError,
                                                                                   ssl.SSLZeroReturnError)):
                    continue
                raise TlsError(f"{method} {url}: TLS failed ({e})") from e
            except TimeoutError as e:
                raise ReadTimedOut(f"{method} {url}: no response within {timeout} s ({e})") from e
            except ValueError as e:  # http.client refuses a header value with a line break or beyond latin-1
                raise InvalidRequest(f"{method} {url}: a header cannot be sent ({e})") from None
            except (http.client.HTTPException, OSError) as e:
                if isinstance(e, WebError):
                    raise
                raise ConnectError(f"{method} {url}: {type(e).__name__}: {e}") from e
            break

        def release(reusable: bool, conn: http.client.HTTPConnection = conn) -> None:
            if reusable:
                pool.give(conn)
            else:
                conn.close()

        return Response(raw, Sent(method, url), release, timeout)


def _exchange(conn: http.client.HTTPConnection, method: str, target: str, data: Any, headers: dict[str, str],
              encode_chunked: bool, url: str, proxy: Proxy | None) -> http.client.HTTPResponse:
    """Send the request and read the response's head on `conn`, which is closed if that fails."""
    try:
        if conn.sock is None:
            _connect(conn, url, proxy)
        try:
            conn.request(method, target, body=data, headers=headers, encode_chunked=encode_chunked)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError) as e:
            # A server may answer and close while the body is still going (413 for a blob too large, 401 for an
            # upload): that answer is what to report, not the broken pipe. The connection is not used again.
            try:
                early = conn.getresponse()
            except (http.client.HTTPException, OSError):
                raise e from None
            early.will_close = True
            return early
        return conn.getresponse()
    except BaseException:
        conn.close()
        raise


def _start_position(data: Any) -> int | None:
    if data is None or _replayable(data) or not hasattr(data, "seek") or not hasattr(data, "tell"):
        return None
    try:
        return int(data.tell())
    except (OSError, ValueError):
        return None


def _connection(scheme: str, host: str, port: int, proxy: Proxy | None, verify: tls.Verify, cert: tls.Cert,
                timeout: float | None) -> http.client.HTTPConnection:
    """A new (not yet connected) connection; through `proxy` as a tunnel (https) or as the peer (http)."""
    peer_host, peer_port = (proxy.host, proxy.port) if proxy is not None else (host, port)
    if scheme == "https":
        try:
            ctx = tls.context(verify, cert)
        except (OSError, ValueError) as e:
            raise TlsError(f"cannot set up TLS for {host} (CA bundle {verify!r}, client certificate {cert!r}): "
                           f"{e}") from e
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            peer_host, peer_port, timeout=timeout, context=ctx, blocksize=_BLOCK)
        if proxy is not None:
            tunnel = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else None
            conn.set_tunnel(host, port, headers=tunnel)
    else:
        conn = http.client.HTTPConnection(peer_host, peer_port, timeout=timeout, blocksize=_BLOCK)
    conn.response_class = WireResponse
    return conn


def _connect(conn: http.client.HTTPConnection, url: str, proxy: Proxy | None) -> None:
    """Open the TCP connection (and the proxy tunnel and TLS handshake), naming what failed."""
    via = f" through proxy {proxy}" if proxy is not None else ""
    try:
        conn.connect()
    except ssl.SSLError as e:
        conn.close()
        raise TlsError(f"TLS handshake with {urlsplit(url).netloc}{via} failed: {e}") from e
    except TimeoutError as e:
        conn.close()
        raise ConnectTimedOut(f"connecting to {urlsplit(url).netloc}{via} timed out ({e})") from e
    except OSError as e:
        conn.close()
        raise ConnectError(f"cannot connect to {urlsplit(url).netloc}{via}: {e}") from e
