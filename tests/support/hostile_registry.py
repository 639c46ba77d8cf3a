"""A small in-process registry that misbehaves on demand (issue 12): the real docker-registry cannot.

It serves one image (any repository, any tag) from blobs it is given, speaking just enough of the distribution
API for a client to pull: `GET /v2/`, manifests by tag or digest, blobs. `mode` selects one misbehaviour:

    ok                      a well-behaved registry (the baseline: skopeo pulls from it)
    redirect-loop           every manifest or blob request is redirected to itself, forever
    redirect-pingpong       two URLs redirect to each other
    manifest-endless        the manifest body never ends (chunked, no length announced)
    manifest-larger         Content-Length announces the manifest; the body is far longer
    blob-endless            a blob's body goes on far past the descriptor's size
    blob-shorter            a blob ends before its Content-Length (the connection closes)
    trickle-manifest        the manifest arrives one byte every `trickle` seconds
    trickle-blob            the same for every blob
    trickle-token           the same for the token server's answer
    wrong-digest-header     Docker-Content-Digest names another digest than the manifest's
    wrong-manifest          a manifest asked for by digest comes back as another document
    token-never-answers     /v2/ asks for a Bearer token; the token server accepts and never answers
    token-garbage           the token server answers 200 with a body that is not JSON
    401-loop                every request is 401 with a fresh Bearer challenge, whatever the token
    retry-after-forever     every manifest request is 429 with Retry-After: 3600
    index-contains-itself   the tag is an index whose one entry names a digest; asked for that digest, the registry
                            serves the index again (the nearest a registry can come to an index containing itself)

Requests are logged as (method, path, status) so a test can bound how many a client made.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
MODES = ("ok", "redirect-loop", "redirect-pingpong", "manifest-endless", "manifest-larger", "blob-endless",
         "blob-shorter", "trickle-manifest", "trickle-blob", "trickle-token", "wrong-digest-header", "wrong-manifest",
         "token-never-answers", "token-garbage", "401-loop", "retry-after-forever", "index-contains-itself")


@dataclass
class HostileRegistry:
    manifest: bytes
    blobs: dict[str, bytes]  # digest -> bytes
    mode: str = "ok"
    trickle: float = 0.25  # seconds between bytes in the trickle modes
    log: list[tuple[str, str, int]] = field(default_factory=list)
    _server: http.server.ThreadingHTTPServer | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def host(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def manifest_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()

    def start(self) -> HostileRegistry:
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def send_response(self, code: int, message: str | None = None) -> None:
                registry.log.append((self.command, self.path, code))
                super().send_response(code, message)

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
                    registry._serve(self)

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client hanging up on a misbehaving answer is the expected outcome, not news

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- serving ------------------------------------------------------------------------------------------------

    def _reply(self, h: http.server.BaseHTTPRequestHandler, code: int, body: bytes = b"",
               headers: dict[str, str] | None = None) -> None:
        h.send_response(code)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _trickle(self, h: http.server.BaseHTTPRequestHandler, body: bytes, headers: dict[str, str]) -> None:
        h.send_response(200)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        for i in range(len(body)):
            if self._stop.wait(self.trickle):
                return
            h.wfile.write(body[i:i + 1])
            h.wfile.flush()

    def _endless(self, h: http.server.BaseHTTPRequestHandler, start: bytes, headers: dict[str, str],
                 length: int | None) -> None:
        """`start`, then spaces until the client hangs up (at most 1 GiB, so a broken client cannot run forever)."""
        h.send_response(200)
        for k, v in headers.items():
            h.send_header(k, v)
        if length is None:
            h.send_header("Transfer-Encoding", "chunked")
        else:
            h.send_header("Content-Length", str(length))
        h.end_headers()
        chunk = b" " * 65536
        sent = 0
        for piece in [start] + [chunk] * (1 << 14):
            if self._stop.is_set():
                return
            h.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if length is None else piece)
            sent += len(piece)
        if length is None:
            h.wfile.write(b"0\r\n\r\n")

    def _serve(self, h: http.server.BaseHTTPRequestHandler) -> None:
        mode, path = self.mode, h.path
        if path.startswith("/token"):
            self._token(h)
            return
        token_modes = ("token-never-answers", "token-garbage", "trickle-token", "401-loop")
        if mode in token_modes and ("Bearer" not in h.headers.get("Authorization", "") or mode == "401-loop"):
            realm = f"http://{self.host}/token?n={len(self.log)}"
            self._reply(h, 401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                        {"WWW-Authenticate": f'Bearer realm="{realm}",service="hostile"',
                         "Content-Type": "application/json"})
            return
        if path == "/v2/" or path == "/v2":
            self._reply(h, 200, b"{}", {"Content-Type": "application/json"})
            return
        m = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/([^/?]+)(\?.*)?", path)
        if m is None:
            self._reply(h, 404, b'{"errors":[{"code":"NOT_FOUND"}]}')
            return
        kind, ref, query = m.group(2), m.group(3), m.group(4) or ""
        if mode == "redirect-loop":
            self._reply(h, 307, headers={"Location": path})
            return
        if mode == "redirect-pingpong":
            other = path.split("?")[0] + ("" if query else "?ping=1")
            self._reply(h, 307, headers={"Location": other})
            return
        if kind == "manifests":
            self._manifest(h, ref)
        else:
            self._blob(h, ref)

    def _manifest(self, h: http.server.BaseHTTPRequestHandler, ref: str) -> None:
        mode = self.mode
        body = self.manifest
        headers = {"Content-Type": MANIFEST_TYPE, "Docker-Content-Digest": self.manifest_digest}
        if mode == "index-contains-itself":
            index = json.dumps({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [
                {"mediaType": INDEX_TYPE, "digest": "sha256:" + "b" * 64, "size": 300}]}).encode()
            self._reply(h, 200, index, {"Content-Type": INDEX_TYPE})
            return
        if ref.startswith("sha256:") and ref != self.manifest_digest:
            self._reply(h, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
            return
        if mode == "retry-after-forever":
            self._reply(h, 429, b'{"errors":[{"code":"TOOMANYREQUESTS"}]}', {"Retry-After": "3600"})
        elif mode == "manifest-endless":
            self._endless(h, body, headers, None)
        elif mode == "manifest-larger":
            self._endless(h, body, headers, 200 << 20)
        elif mode == "trickle-manifest":
            self._trickle(h, body, headers)
        elif mode == "wrong-digest-header":
            self._reply(h, 200, body, {**headers, "Docker-Content-Digest": "sha256:" + "0" * 64})
        elif mode == "wrong-manifest" and ref.startswith("sha256:"):
            self._reply(h, 200, body.replace(b"}", b' }', 1), headers)
        else:
            self._reply(h, 200, body, headers)

    def _blob(self, h: http.server.BaseHTTPRequestHandler, digest: str) -> None:
        data = self.blobs.get(digest)
        if data is None:
            self._reply(h, 404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
            return
        headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}
        if self.mode == "blob-endless":
            self._endless(h, data, headers, len(data) + (200 << 20))
        elif self.mode == "blob-shorter":
            h.send_response(200)
            h.send_header("Content-Length", str(len(data) + 1000))
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.close_connection = True
        elif self.mode == "trickle-blob":
            self._trickle(h, data, headers)
        else:
            self._reply(h, 200, data, headers)

    def _token(self, h: http.server.BaseHTTPRequestHandler) -> None:
        mode = self.mode
        if mode == "token-never-answers":
            self._stop.wait(120)  # accepted, never answered (until the server stops)
            return
        if mode == "token-garbage":
            self._reply(h, 200, b"<html>not a token</html>", {"Content-Type": "text/html"})
            return
        body = json.dumps({"token": f"t{time.monotonic_ns()}", "expires_in": 300}).encode()
        if mode == "trickle-token":
            self._trickle(h, body, {"Content-Type": "application/json"})
            return
        self._reply(h, 200, body, {"Content-Type": "application/json"})
