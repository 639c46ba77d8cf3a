"""Byte streams shared by the package readers: a bounded view of a stream, a slice of a spool file, a package
file's content (in memory or spooled), and the guard every decompressed package stream goes through.

Decompression bombs: a package member may inflate to at most MAX_UNPACKED_BYTES, and past RATIO_FLOOR bytes to at
most MAX_EXPANSION_RATIO times the compressed bytes read so far. Packages of real files expand a few times to a
few tens of times; a stream of zeros compresses about 1000:1 (gzip) to 7000:1 (xz), and far more as concatenated
streams, so a bomb is stopped after RATIO_FLOOR bytes (well under a second of decompression), whatever it claims.
A package that really holds hundreds of MiB of zeros is refused too: the price of a bound that needs no trust."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol, cast

MAX_UNPACKED_BYTES = 16 << 30  # one package member, decompressed (and an rpm's files, as its header declares them)
MAX_EXPANSION_RATIO = 250  # decompressed / compressed bytes, checked once past RATIO_FLOOR
RATIO_FLOOR = 128 << 20  # below this much output any ratio is fine: small members of zeros are legitimate


class Source(Protocol):
    def read(self, n: int, /) -> bytes: ...


class Bounded(io.RawIOBase):
    """Exactly `size` bytes of the underlying stream from its position, then EOF.

    If the stream ends first, the error `truncated` makes is raised; without `truncated` the view ends there."""

    def __init__(self, raw: Source, size: int, truncated: Callable[[], Exception] | None = None) -> None:
        super().__init__()
        self._raw, self.left, self._truncated = raw, size, truncated

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.left <= 0:
            return 0
        view = memoryview(buffer)
        chunk = self._raw.read(min(len(view), self.left))
        if not chunk and self._truncated is not None:
            raise self._truncated()
        view[:len(chunk)] = chunk
        self.left -= len(chunk)
        return len(chunk)

    def skip_rest(self) -> None:
        while self.left:
            if not self.read(min(self.left, 1 << 20)):
                return


class _Slice(Bounded):
    """A bounded view of an open file that closes the file when closed."""

    def __init__(self, f: BinaryIO, size: int, truncated: Callable[[], Exception] | None) -> None:
        super().__init__(f, size, truncated)
        self._file = f

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            super().close()


def open_slice(path: Path, offset: int, size: int, truncated: Callable[[], Exception] | None = None) -> BinaryIO:
    """`size` bytes of the file at `path` from `offset`, buffered; closing it closes the file."""
    f = path.open("rb")
    f.seek(offset)
    return cast(BinaryIO, io.BufferedReader(_Slice(f, size, truncated), 1 << 16))


def open_content(path: str, inline: bytes | None, staged: Path | None, offset: int, size: int,
                 truncated: Callable[[], Exception] | None = None) -> BinaryIO:
    """The content of package file `path`: kept in memory (`inline`), or `size` bytes of the spool file `staged`
    from `offset`; ValueError when it has none."""
    if inline is not None:
        return io.BytesIO(inline)
    if staged is None:
        raise ValueError(f"{path} has no content")
    return open_slice(staged, offset, size, truncated)


class _Counting(io.RawIOBase):
    """Passes a stream through, counting the bytes read from it (what the decompressor has consumed)."""

    def __init__(self, raw: Source) -> None:
        super().__init__()
        self._raw, self.count = raw, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer)
        chunk = self._raw.read(len(view))
        view[:len(chunk)] = chunk
        self.count += len(chunk)
        return len(chunk)


class _Inflation(io.RawIOBase):
    """A decompressed stream that fails once it outgrows the bomb limits (see the module's docstring)."""

    def __init__(self, inner: BinaryIO, counted: _Counting, bomb: Callable[[str], Exception]) -> None:
        super().__init__()
        self._inner, self._counted, self._bomb, self.count = inner, counted, bomb, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer)
        chunk = self._inner.read(len(view))
        self.count += len(chunk)
        if self.count > MAX_UNPACKED_BYTES:
            raise self._bomb(f"decompresses to more than {MAX_UNPACKED_BYTES >> 30} GiB")
        if self.count > RATIO_FLOOR and self.count > MAX_EXPANSION_RATIO * max(self._counted.count, 1):
            raise self._bomb(f"decompresses to more than {MAX_EXPANSION_RATIO} times its size "
                             f"({self.count} bytes from {self._counted.count})")
        view[:len(chunk)] = chunk
        return len(chunk)


def inflate(raw: Source, decompressor: Callable[[BinaryIO], BinaryIO], bomb: Callable[[str], Exception]
            ) -> BinaryIO:
    """`raw` decompressed by `decompressor(stream)`, buffered, failing with `bomb(reason)` past the limits."""
    counted = _Counting(raw)
    inner = decompressor(cast(BinaryIO, io.BufferedReader(counted, 1 << 16)))
    return cast(BinaryIO, io.BufferedReader(_Inflation(inner, counted, bomb), 1 << 16))
