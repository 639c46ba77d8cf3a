"""Byte streams shared by the package readers: a bounded view of a stream, a slice of a spool file, and a package
file's content (in memory or spooled)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol, cast


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
