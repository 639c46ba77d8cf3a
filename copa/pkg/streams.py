"""Byte streams shared by the package readers: a bounded view of a stream, a slice of a spool file, a package
file's content (in memory or spooled), and the guard every decompressed package stream goes through.

Decompression bombs: a package member may inflate to at most MAX_UNPACKED_BYTES, and past RATIO_FLOOR bytes to at
most MAX_EXPANSION_RATIO times the compressed bytes read so far. Packages of real files expand a few times to a
few tens of times; a stream of zeros compresses about 1000:1 (gzip) to 7000:1 (xz), and far more as concatenated
streams, so a bomb is stopped after RATIO_FLOOR bytes (well under a second of decompression), whatever it claims.
A package that really holds hundreds of MiB of zeros is refused too: the price of a bound that needs no trust."""

from __future__ import annotations

import io
import lzma
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from copa.openfiles import descriptor

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


class _FileSlice(io.RawIOBase):
    """`size` bytes of a file from `offset`, read with pread: no file position, so the descriptor may be one shared
    by every slice of the file while a layer is written (copa.openfiles), and a read lands in the caller's buffer or
    in the bytes returned, with no buffer in between. If the file ends first, the error `truncated` makes is raised;
    without `truncated` the slice ends there."""

    def __init__(self, path: Path, offset: int, size: int, truncated: Callable[[], Exception] | None) -> None:
        super().__init__()
        self._fd, self._owned = descriptor(path)
        self._pos, self.left, self._truncated = offset, size, truncated

    def readable(self) -> bool:
        return True

    def _ended(self) -> None:
        if self._truncated is not None:
            raise self._truncated()
        self.left = 0

    def read(self, n: int | None = -1) -> bytes:
        if self.left <= 0 or n == 0:
            return b""
        data = os.pread(self._fd, self.left if n is None or n < 0 else min(n, self.left), self._pos)
        if not data:
            self._ended()
            return b""
        self._pos += len(data)
        self.left -= len(data)
        return data

    def readall(self) -> bytes:
        parts = []
        while self.left > 0 and (data := self.read()):
            parts.append(data)
        return b"".join(parts)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")[:max(0, self.left)]
        if not view:
            return 0
        got = os.preadv(self._fd, [view], self._pos)
        if not got:
            self._ended()
            return 0
        self._pos += got
        self.left -= got
        return got

    def close(self) -> None:
        if not self.closed and self._owned:
            os.close(self._fd)
        super().close()


def open_slice(path: Path, offset: int, size: int, truncated: Callable[[], Exception] | None = None) -> BinaryIO:
    """`size` bytes of the file at `path` from `offset`; closing it releases the file."""
    return cast(BinaryIO, _FileSlice(path, offset, size, truncated))


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


# An .xz stream is decompressed in steps of this much input, each asked for up to this much output. lzma.LZMAFile
# feeds its decompressor 8 KiB at a time: hundreds of calls per package, each giving the GIL back and then waiting
# to take it again, up to the interpreter's switch interval, while another thread runs Python (reading ahead while
# the image is scanned, it took 4-5 times as long as alone; in large steps about twice).
_XZ_STEP_IN = 256 << 10
_XZ_STEP_OUT = 8 << 20


class _XzReader(io.RawIOBase):
    """What lzma.LZMAFile reads from an .xz stream, in large steps: concatenated streams in turn, trailing data that
    is not a stream ignored, a stream cut short an EOFError, a damaged one an LZMAError. Closing it closes `raw`."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw
        self._decompressor = lzma.LZMADecompressor()
        self._buffer = b""
        self._at = 0
        self._end = False

    def readable(self) -> bool:
        return True

    def _step(self) -> bool:
        """Decompress the next output into the buffer; False at the end of the data."""
        while True:
            if self._decompressor.eof:
                raw = self._decompressor.unused_data or self._raw.read(_XZ_STEP_IN)
                if not raw:
                    return False
                self._decompressor = lzma.LZMADecompressor()  # the next stream
                try:
                    data = self._decompressor.decompress(raw, _XZ_STEP_OUT)
                except lzma.LZMAError:
                    # Trailing data that is not a stream, ignored as LZMAFile ignores it (its first step into the
                    # data is shorter: damage a few KiB into a second stream fails there, is ignored here).
                    return False
            else:
                raw = b""
                if self._decompressor.needs_input:
                    raw = self._raw.read(_XZ_STEP_IN)
                    if not raw:
                        raise EOFError("Compressed file ended before the end-of-stream marker was reached")
                data = self._decompressor.decompress(raw, _XZ_STEP_OUT)
            if data:
                self._buffer, self._at = data, 0
                return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._at >= len(self._buffer) and (self._end or not self._step()):
            self._end = True
            return 0
        n = min(len(buffer), len(self._buffer) - self._at)
        memoryview(buffer)[:n] = memoryview(self._buffer)[self._at:self._at + n]
        self._at += n
        return n

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


def xz_reader(raw: BinaryIO) -> BinaryIO:
    """`raw` (an .xz stream) decompressed as lzma.LZMAFile would, in large steps (see _XZ_STEP_IN)."""
    return cast(BinaryIO, io.BufferedReader(_XzReader(raw), 1 << 20))
