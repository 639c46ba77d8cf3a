"""A response: status, headers, and a body read from the connection as the caller asks for it."""

from __future__ import annotations

import http.client
import re
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

from copa.web.errors import BodyError, ReadTimedOut, WebError

REDIRECTS = frozenset({301, 302, 303, 307, 308})
CONTENT_LIMIT = 64 << 20  # the most `content` reads (and a request without `stream` preloads)
# Characters a request target may carry as they are; anything else (a space, a non-ASCII letter in a redirect's
# Location) is percent-encoded. '%' is kept: what arrives encoded stays as encoded (a pre-signed URL's signature).
TARGET_SAFE = "!#$%&'()*+,/:;=?@[]~"
# At most this much decoded data per decompression step: a small gzip body must not inflate into gigabytes at once.
_INFLATE_STEP = 1 << 20
_Chunk = TypeVar("_Chunk", bytes, memoryview)


class Headers(Mapping[str, str]):
    """Response headers, looked up without regard to case. A header sent more than once is joined with ", "
    (RFC 9110 5.3), so two WWW-Authenticate lines come back as one list of challenges."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._items: dict[str, tuple[str, str]] = {}
        for name, value in pairs:
            key = name.lower()
            known = self._items.get(key)
            self._items[key] = (name, f"{known[1]}, {value}" if known is not None else value)

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return repr(dict(self.items()))


@dataclass(frozen=True, slots=True)
class Sent:
    """What was sent for a response: its method and URL (after any redirects)."""

    method: str
    url: str


# One link of an RFC 8288 Link header: <URL> (which may hold commas) and its ;-separated parameters.
_LINK = re.compile(r'<([^>]*)>((?:\s*;\s*[^;,=]+(?:=(?:"[^"]*"|[^;,]*))?)*)')


def _links(header: str) -> dict[str, dict[str, str]]:
    """RFC 8288 Link header -> {rel: {"url": ..., other params}}."""
    out: dict[str, dict[str, str]] = {}
    for match in _LINK.finditer(header):
        link = {"url": match.group(1)}
        for param in match.group(2).split(";"):
            key, _, value = param.strip().partition("=")
            if key:
                link[key.strip().lower()] = value.strip().strip('"')
        out[link.get("rel") or link["url"]] = link
    return out


class WireResponse(http.client.HTTPResponse):
    """http.client's response, skipping every interim (1xx) response before the final one, not only 100
    Continue: a 103 Early Hints taken for the answer would leave the real one on the connection for the next
    request to read."""

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if not 100 < status < 200 or status == 101:
                return version, status, reason
            http.client.parse_headers(self.fp)  # the interim response's headers, dropped


class _Inflater:
    """Content-Encoding gzip or deflate undone: several gzip members one after another (as gzip -d reads them),
    and a "deflate" body with or without its zlib wrapper (servers send both)."""

    def __init__(self, encoding: str) -> None:
        self._raw_deflate_possible = encoding == "deflate"
        self._d: Any = zlib.decompressobj(47)  # zlib or gzip framing, whichever the header shows
        self._started = False

    @property
    def pending(self) -> bool:
        """Whether input is held back: past the output limit, or the start of a next gzip member."""
        return bool(self._d.unconsumed_tail) or (bool(self._d.eof) and bool(self._d.unused_data))

    @property
    def finished(self) -> bool:
        return bool(self._d.eof) and not self._d.unused_data

    def decompress(self, data: bytes, limit: int) -> bytes:
        """Up to `limit` decoded bytes from what is held back plus `data`."""
        if self._d.eof:  # what follows a finished member is the next one (a finished member's tail is moot)
            data = self._d.unused_data + data
            if not data:
                return b""
            self._d = zlib.decompressobj(47)
        elif self._d.unconsumed_tail:
            data = self._d.unconsumed_tail + data
        try:
            out = self._d.decompress(data, limit)
        except zlib.error:
            if not (self._raw_deflate_possible and not self._started):
                raise
            self._d = zlib.decompressobj(-15)
            out = self._d.decompress(data, limit)
        self._started = True
        return bytes(out)


class Body:
    """The body of one response, read from its connection. `read(n)` fills up to n bytes, `read1(n)` returns
    after one socket read (so a body trickling in comes back to a caller checking its deadline). Transport
    failures become BodyError or ReadTimedOut. Reaching the end hands the connection back to its pool.

    `decode_content`: undo a gzip or deflate Content-Encoding (copa asks for identity, so only a server that
    ignores that sends one). `timeout` bounds how long a decoding read may go on without producing a byte."""

    def __init__(self, raw: http.client.HTTPResponse, release: Callable[[bool], None],
                 timeout: float | None = None) -> None:
        self._raw = raw
        self._release: Callable[[bool], None] | None = release
        self._timeout = timeout
        self.decode_content = False
        self._inflater: _Inflater | None = None
        self._decoded_end = False
        self._encoding = (raw.getheader("Content-Encoding") or "").strip().lower()
        self._encoded = self._encoding in ("gzip", "x-gzip", "deflate")
        if raw.length == 0 or raw.isclosed():
            # No body (HEAD, 204, 304, Content-Length: 0). One announced anyway (a chunked 204) is not read: the
            # connection is not used again.
            announced = raw.chunked or (raw.getheader("Content-Length") or "0").strip() != "0"
            self._finish(reusable=not (announced and raw.status in (204, 304)))

    @property
    def closed(self) -> bool:
        return self._release is None

    def _finish(self, reusable: bool) -> None:
        release, self._release = self._release, None
        if release is not None:
            # Closing the response marks it complete for its connection (which stays open when reusable).
            self._raw.close()
            release(reusable and not self._raw.will_close)

    def _transport(self, read: Callable[[int], _Chunk], n: int) -> _Chunk | bytes:
        if self._release is None:
            return b""
        expected = self._raw.length
        try:
            data = read(n)
        except TimeoutError as e:
            self._finish(reusable=False)
            raise ReadTimedOut(f"read timed out ({e})") from e
        except (http.client.HTTPException, OSError, ValueError) as e:
            self._finish(reusable=False)
            raise BodyError(f"connection lost during the body: {type(e).__name__}: {e}") from e
        if not data and n:
            if expected:  # http.client's read1 returns b"" for a body cut short; say so, as read() does
                self._finish(reusable=False)
                raise BodyError(f"connection lost during the body: {expected} more bytes were expected "
                                "(IncompleteRead)")
            self._finish(reusable=True)
        elif self._raw.length == 0 and not self._raw.chunked:
            self._finish(reusable=True)
        return data

    def _decoded(self, read: Callable[[int], bytes], n: int) -> bytes:
        if self._inflater is None:
            self._inflater = _Inflater(self._encoding)
        # Compressed input that decodes to nothing (empty deflate blocks, trickled) must not hold the caller past
        # the timeout: it checks its own deadline only when a read returns.
        deadline = time.monotonic() + self._timeout if self._timeout is not None else None
        while not self._decoded_end:
            data = b""
            if not self._inflater.pending:
                data = self._transport(read, max(n, 1 << 16))
                if not data:
                    self._decoded_end = True
                    if not self._inflater.finished:
                        raise BodyError(f"the {self._encoding} body ended before its compressed stream did")
                    return b""
            try:
                out = self._inflater.decompress(data, min(n, _INFLATE_STEP))
            except zlib.error as e:
                self.close()
                raise BodyError(f"the {self._encoding} body is corrupt: {e}") from None
            if out:
                return out
            if deadline is not None and time.monotonic() > deadline:
                self.close()
                raise ReadTimedOut(f"the {self._encoding} body decoded to nothing for {self._timeout} s")
        return b""

    def read1(self, n: int = -1) -> bytes:
        n = n if n is not None and n > 0 else 1 << 16
        if self.decode_content and self._encoded:
            return self._decoded(self._raw.read1, n)
        return self._transport(self._raw.read1, n)

    def readinto1(self, buffer: bytearray | memoryview) -> int:
        """At most one socket read, straight into `buffer`: a large body (a layer) is copied once, not once per
        wrapper. A chunked or encoded body goes through read1."""
        view = memoryview(buffer).cast("B")
        raw = self._raw
        if (self.decode_content and self._encoded) or raw.chunked or raw.length is None or raw.fp is None:
            data = self.read1(len(view))
            view[:len(data)] = data
            return len(data)
        want = min(len(view), raw.length)

        def one(_: int) -> memoryview:
            # http.client's read1 without its bytes object: the same bookkeeping of the length left.
            assert raw.fp is not None and raw.length is not None
            got = raw.fp.readinto1(view[:want])
            raw.length -= got
            return view[:got]

        return len(self._transport(one, want))

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            out = bytearray()
            while chunk := self.read1(1 << 16):
                out += chunk
            return bytes(out)
        if self.decode_content and self._encoded:
            return self._decoded(self._raw.read, n)
        return self._transport(self._raw.read, n)

    def drain(self, limit: int) -> None:
        """Read and drop what is left of a small body (a redirect's), so the connection can be used again; a
        body of unknown or larger size closes the connection instead."""
        left = self._raw.length
        if left is not None and left <= limit and not self._raw.chunked:
            try:
                while self._transport(self._raw.read1, 1 << 16):
                    pass
            except WebError:
                pass
        self.close()

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self._release is not None:
            self._finish(reusable=False)


class Response:
    def __init__(self, raw: http.client.HTTPResponse, sent: Sent, release: Callable[[bool], None],
                 timeout: float | None = None) -> None:
        self.status_code = raw.status
        self.reason = raw.reason
        self.headers = Headers(raw.getheaders())
        self.url = sent.url
        self.request = sent
        self.raw = Body(raw, release, timeout)
        self._content: bytes | None = None

    @property
    def is_redirect(self) -> bool:
        return self.status_code in REDIRECTS and "Location" in self.headers

    @property
    def location(self) -> str | None:
        """The Location header as a URL to request: http.client decodes header bytes as latin-1, so the bytes
        as sent are percent-encoded here (a UTF-8 path stays UTF-8, not encoded twice)."""
        value = self.headers.get("Location")
        if value is None:
            return None
        return quote(value.strip().encode("latin-1", "replace"), safe=TARGET_SAFE)

    @property
    def content(self) -> bytes:
        """The whole body, decoded (read once; later calls return the same bytes), at most CONTENT_LIMIT bytes:
        what is read whole is a small document; blobs are streamed."""
        if self._content is None:
            self.raw.decode_content = True
            out = bytearray()
            while chunk := self.raw.read1(1 << 16):
                out += chunk
                if len(out) > CONTENT_LIMIT:
                    self.raw.close()
                    raise BodyError(f"{self.request.method} {self.url}: the response is larger than "
                                    f"{CONTENT_LIMIT >> 20} MiB, more than any document copa reads whole")
            self._content = bytes(out)
        return self._content

    @property
    def links(self) -> dict[str, dict[str, str]]:
        return _links(self.headers.get("Link", ""))

    def iter_content(self, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        if self._content is not None:
            yield self._content
            return
        self.raw.decode_content = True
        while chunk := self.raw.read1(chunk_size):
            yield chunk

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Response [{self.status_code}] {self.request.method} {self.url}>"
