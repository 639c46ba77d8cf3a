"""A response: status, headers, and a body read from the connection as the caller asks for it."""

from __future__ import annotations

import http.client
import json
import re
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from copa.web.errors import BodyError, ReadTimedOut

REDIRECTS = frozenset({301, 302, 303, 307, 308})
# At most this much decoded data per decompression step: a small gzip body must not inflate into gigabytes at once.
_INFLATE_STEP = 1 << 20


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


class Body:
    """The body of one response, read from its connection. `read(n)` fills up to n bytes, `read1(n)` returns
    after one socket read (so a body trickling in comes back to a caller checking its deadline). Transport
    failures become BodyError or ReadTimedOut. Reaching the end hands the connection back to its pool.

    `decode_content`: undo a gzip or deflate Content-Encoding (copa asks for identity, so only a server that
    ignores that sends one)."""

    def __init__(self, raw: http.client.HTTPResponse, release: Callable[[bool], None]) -> None:
        self._raw = raw
        self._release: Callable[[bool], None] | None = release
        self.decode_content = False
        self._inflater: Any = None
        self._decoded_end = False
        encoding = (raw.getheader("Content-Encoding") or "").strip().lower()
        self._encoded = encoding in ("gzip", "x-gzip", "deflate")
        if raw.length == 0 or raw.isclosed():
            self._finish(reusable=True)

    @property
    def closed(self) -> bool:
        return self._release is None

    def _finish(self, reusable: bool) -> None:
        release, self._release = self._release, None
        if release is not None:
            if reusable:
                self._raw.read()  # a zero-length remainder: marks the response complete for http.client
            else:
                self._raw.close()
            release(reusable and not self._raw.will_close)

    def _transport(self, read: Callable[[int], bytes], n: int) -> bytes:
        if self._release is None:
            return b""
        expected = self._raw.length
        try:
            data = read(n)
        except TimeoutError as e:
            self._finish(reusable=False)
            raise ReadTimedOut(f"read timed out ({e})") from e
        except (http.client.HTTPException, OSError) as e:
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
            self._inflater = zlib.decompressobj(47)  # zlib or gzip framing, whichever the header shows
        while not self._decoded_end:
            pending = self._inflater.unconsumed_tail
            if not pending:
                pending = self._transport(read, max(n, 1 << 16))
                if not pending:
                    self._decoded_end = True
                    if not self._inflater.eof:  # all input was decoded as it came (max_length bounds output only)
                        raise BodyError(f"the {self._raw.getheader('Content-Encoding')} body ended before its "
                                        "compressed stream did")
                    return b""
            try:
                out = self._inflater.decompress(pending, min(n, _INFLATE_STEP) if n > 0 else _INFLATE_STEP)
            except zlib.error as e:
                raise BodyError(f"the {self._raw.getheader('Content-Encoding')} body is corrupt: {e}") from None
            if out:
                return bytes(out)
        return b""

    def read1(self, n: int = -1) -> bytes:
        n = n if n is not None and n > 0 else 1 << 16
        if self.decode_content and self._encoded:
            return self._decoded(self._raw.read1, n)
        return self._transport(self._raw.read1, n)

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            out = bytearray()
            while chunk := self.read1(1 << 16):
                out += chunk
            return bytes(out)
        if self.decode_content and self._encoded:
            return self._decoded(self._raw.read, n)
        return self._transport(self._raw.read, n)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self._release is not None:
            self._raw.close()
            self._finish(reusable=False)


class Response:
    def __init__(self, raw: http.client.HTTPResponse, sent: Sent, release: Callable[[bool], None]) -> None:
        self.status_code = raw.status
        self.reason = raw.reason
        self.headers = Headers(raw.getheaders())
        self.url = sent.url
        self.request = sent
        self.raw = Body(raw, release)
        self._content: bytes | None = None

    @property
    def is_redirect(self) -> bool:
        return self.status_code in REDIRECTS and "Location" in self.headers

    @property
    def content(self) -> bytes:
        """The whole body, decoded (read once; later calls return the same bytes)."""
        if self._content is None:
            self.raw.decode_content = True
            self._content = self.raw.read()
        return self._content

    @property
    def text(self) -> str:
        charset = "utf-8"
        for param in self.headers.get("Content-Type", "").split(";")[1:]:
            key, _, value = param.strip().partition("=")
            if key.lower() == "charset" and value:
                charset = value.strip('"')
        try:
            return self.content.decode(charset, errors="replace")
        except LookupError:
            return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)

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
