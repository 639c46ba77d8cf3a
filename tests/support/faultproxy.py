"""An in-process HTTP proxy in front of a registry that injects faults, for retry and integrity tests.

Each `Fault` applies to the first `count` requests whose method and path match: `drop` closes the
connection without an answer, `500` and `429` answer with that status (429 with Retry-After),
`corrupt` forwards the request and flips a byte of the answer's body, `truncate` forwards it and sends the
announced Content-Length but only half the body, `stall` holds the request `hold` seconds unanswered (past a
client's timeout) and then closes. A truncated body is also held `hold` seconds before the close (a body that
stops mid-way). `fired` is set when the fault is applied, so a test can act (e.g. SIGKILL) at that moment.
The proxy keeps the Host header, so the registry's Location headers point back at the proxy. Every request is
logged.
"""

from __future__ import annotations

import http.client
import http.server
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}


@dataclass
class Fault:
    kind: str  # "drop" | "500" | "429" | "corrupt" | "truncate" | "stall"
    path: str  # regex searched in the request path (with query)
    method: str = ""  # "" matches any method
    count: int = 1
    retry_after: int = 1
    hold: float = 0.0  # seconds a stalled request, or a truncated body, is held open before the close
    fired: threading.Event = field(default_factory=threading.Event)

    def matches(self, method: str, path: str) -> bool:
        return self.count > 0 and (not self.method or self.method == method) and re.search(self.path, path) is not None


@dataclass
class FaultProxy:
    upstream: str  # "127.0.0.1:PORT"
    faults: list[Fault] = field(default_factory=list)
    log: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status or -1 for drop)
    _server: http.server.ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def host(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.server_address[1]}"

    def add(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.count -= 1
                    return fault
        return None

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _chunked(self) -> bytes:
                out = bytearray()
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    out += self.rfile.read(size)
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(out)

            def _handle(self) -> None:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    body = self._chunked()  # (a streamed upload's body: forwarded whole, with its length)
                    length = len(body)
                else:
                    length = int(self.headers.get("Content-Length", "0") or 0)
                    body = self.rfile.read(length) if length else b""
                fault = proxy._take(self.command, self.path)
                if fault is not None and fault.kind == "stall":
                    proxy.log.append((self.command, self.path, -1))
                    fault.fired.set()
                    time.sleep(fault.hold)
                    self.close_connection = True
                    return
                if fault is not None:
                    fault.fired.set()
                if fault is not None and fault.kind == "drop":
                    proxy.log.append((self.command, self.path, -1))
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault is not None and fault.kind in ("500", "429"):
                    status = int(fault.kind)
                    payload = b'{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}'
                    proxy.log.append((self.command, self.path, status))
                    self.send_response(status)
                    if status == 429:
                        self.send_header("Retry-After", str(fault.retry_after))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    conn.request(self.command, self.path, body=body if body or length else None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    if fault is not None and fault.kind == "corrupt" and data and self.command != "HEAD":
                        data = bytes([data[0] ^ 0xFF]) + data[1:]
                    proxy.log.append((self.command, self.path, resp.status))
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                            self.send_header(k, v)
                    if self.command == "HEAD":
                        self.send_header("Content-Length", resp.getheader("Content-Length", "0"))
                    else:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if fault is not None and fault.kind == "truncate" and self.command != "HEAD":
                        self.wfile.write(data[: len(data) // 2])
                        self.wfile.flush()
                        time.sleep(fault.hold)
                        self.close_connection = True
                        return
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
