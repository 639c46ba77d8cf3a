"""The cpio archive inside an rpm payload, streamed entry by entry.

rpm 4.18 writes SVR4 "newc" entries: "070701", thirteen 8-digit hex fields (ino, mode, uid, gid, nlink, mtime,
filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check), the NUL-terminated name ("./usr/bin/x"),
padding to 4 bytes, the content, padding to 4; the archive ends with an entry named "TRAILER!!!". Hard links
share an inode; all but the last carry no content (size 0), the last carries it.

Packages with a file of 4 GiB or more (the header has LONGFILESIZES) use rpm's own "stripped" entries instead:
"07070X" and one 8-digit hex field, the index of the file in the header, then its content (the size comes from
the header), padded to 4. A reader needs the header's sizes for those (`sizes`).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, cast

from copa.errors import CopaError, IntegrityError
from copa.pkg.streams import Bounded

NEWC = b"070701"
STRIPPED = b"07070X"
TRAILER = "TRAILER!!!"
_NAME_MAX = 4096  # PATH_MAX: rpm refuses longer names too
_FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "size", "devmajor", "devminor", "rdevmajor",
           "rdevminor", "namesize", "check")


class BadCpio(IntegrityError):
    pass


@dataclass(frozen=True, slots=True)
class CpioEntry:
    name: str  # as archived ("./usr/bin/x"); "" for a stripped entry
    index: int  # a stripped entry's file index in the header; -1 for newc entries
    ino: int
    mode: int
    nlink: int
    mtime: int
    size: int
    rdev: tuple[int, int]


class CpioReader:
    """Entries of a cpio stream: iterate to get (entry, body); a body not read to its end is skipped."""

    def __init__(self, stream: BinaryIO, what: str, sizes: Callable[[int], int] | None = None,
                 error: type[CopaError] = BadCpio) -> None:
        self._stream, self._what, self._sizes, self._error = stream, what, sizes, error
        self.position = 0  # bytes consumed: entries align to 4 from the archive's start

    def read(self, n: int) -> bytes:
        data = self._stream.read(n)
        if len(data) != n:
            raise self._error(f"{self._what}: payload ends inside a cpio entry; the package is truncated")
        self.position += n
        return data

    def _align(self) -> None:
        pad = -self.position % 4
        if pad and self.read(pad).strip(b"\0"):
            raise self._error(f"{self._what}: cpio padding is not zero; the payload is corrupt")

    def __iter__(self) -> Iterator[tuple[CpioEntry, BinaryIO]]:
        while True:
            magic = self.read(6)
            entry: CpioEntry | None
            if magic == STRIPPED:
                entry = self._stripped()
            elif magic == NEWC:
                entry = self._newc()
            else:
                raise self._error(f"{self._what}: payload is not a cpio newc archive (magic {magic!r}); "
                                  "the package is corrupt or of an unknown format")
            if entry is None:
                return
            body = Bounded(self, entry.size)
            yield entry, cast(BinaryIO, io.BufferedReader(body, 1 << 16))
            body.skip_rest()
            self._align()

    def _hex(self, raw: bytes, what: str) -> int:
        try:
            if len(raw) != 8 or not raw.isalnum():
                raise ValueError
            return int(raw, 16)
        except ValueError:
            raise self._error(f"{self._what}: cpio {what} field {raw!r} is not hexadecimal; the payload is "
                              "corrupt") from None

    def _newc(self) -> CpioEntry | None:
        raw = self.read(13 * 8)
        f = {name: self._hex(raw[i * 8:i * 8 + 8], name) for i, name in enumerate(_FIELDS)}
        if not 1 <= f["namesize"] <= _NAME_MAX:
            raise self._error(f"{self._what}: cpio name of {f['namesize']} bytes; the payload is corrupt")
        name_raw = self.read(f["namesize"])
        if name_raw[-1:] != b"\0" or b"\0" in name_raw[:-1]:
            raise self._error(f"{self._what}: cpio name is not NUL-terminated; the payload is corrupt")
        name = name_raw[:-1].decode("utf-8", "surrogateescape")
        self._align()
        if name == TRAILER:
            return None
        return CpioEntry(name, -1, f["ino"], f["mode"], f["nlink"], f["mtime"], f["size"],
                         (f["rdevmajor"], f["rdevminor"]))

    def _stripped(self) -> CpioEntry:
        index = self._hex(self.read(8), "file index")
        if self._sizes is None:
            raise self._error(f"{self._what}: stripped cpio entry without a header to size it")
        self._align()
        return CpioEntry("", index, 0, 0, 0, 0, self._sizes(index), (0, 0))
