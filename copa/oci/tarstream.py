"""A streaming tar reader: the members of a tar stream, in order, read with large buffered reads.

Python's `tarfile` in stream mode (`r|`) reads its input in 10 KiB records and copies the rest of its buffer on
every read, so walking a 250 MB layer costs tens of thousands of small reads and decompressor calls held under the
GIL; skipping a member's content goes through the same loop. This reader keeps one buffer and an offset, reads
1 MiB at a time, hands large contents straight from the source, and parses a header with a few slices.

It reads what `tarfile` reads, the same way (checked member for member against it in tests/test_tarstream.py):
ustar, v7, GNU (long names and links, base-256 numbers) and pax (local and global headers); the ustar prefix is
joined as `tarfile` joins it, a v7 directory is a regular-file header whose name ends in a slash, and the first of
several name sources wins as it does there (pax over an inner GNU long name when the pax header comes first).
Differences, all of them refusals of what a container runtime refuses too: a header with a bad checksum, a
truncated header or member, and an implausibly large long name or pax header fail (tarfile ends the archive
quietly on a bad header after the first); sparse members fail (no layer writer or package builder emits them).
Every failure is a `TarFormatError`, a `tarfile.TarError`, so handlers written for `tarfile` catch it.
"""

from __future__ import annotations

import io
import re
import struct
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, cast

BLOCK = 512
_CHUNK = 1 << 20
_ZERO = bytes(BLOCK)
_META_LIMIT = 16 << 20  # a GNU long name or a pax header larger than this is not a real one
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"  # as tarfile decodes names on Linux: undecodable bytes survive a round trip

REGULAR = frozenset("0\x007")  # REGTYPE, AREGTYPE, CONTTYPE
# Types whose size is not content (tarfile's SUPPORTED_TYPES minus the regular ones): any other type's content,
# unknown ones included, is skipped by its size.
_HEADER_ONLY = frozenset("123456")
_GNU_META = frozenset("LKS")  # the prefix field of these headers is not a ustar prefix
_PAX_NUMBERS = {"size": int, "uid": int, "gid": int, "mtime": float}
_PAX_RECORD = re.compile(rb"(\d+) ")


class TarFormatError(tarfile.TarError):
    pass


@dataclass(slots=True)
class TarMember:
    """One member as `tarfile.TarInfo` describes it (the attributes copa reads)."""

    name: str
    type: str  # one character: "0" regular, "5" directory, "2" symlink, "1" hard link...
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int | float
    linkname: str
    uname: str
    gname: str
    pax_headers: dict[str, str] = field(default_factory=dict)

    def isreg(self) -> bool:
        return self.type in REGULAR

    isfile = isreg

    def isdir(self) -> bool:
        return self.type == "5"

    def issym(self) -> bool:
        return self.type == "2"

    def islnk(self) -> bool:
        return self.type == "1"

    def ischr(self) -> bool:
        return self.type == "3"

    def isblk(self) -> bool:
        return self.type == "4"

    def isfifo(self) -> bool:
        return self.type == "6"

    def isdev(self) -> bool:
        return self.type in ("3", "4", "6")

    def issparse(self) -> bool:
        return False  # refused while reading


def _text(field_: bytes) -> str:
    end = field_.find(0)
    return (field_ if end < 0 else field_[:end]).decode(_ENCODING, _ERRORS)


def _number(field_: bytes) -> int:
    first = field_[0]
    if first in (0x80, 0xFF):  # GNU base-256, for values an octal field cannot hold
        n = int.from_bytes(field_[1:], "big")
        return n - 256 ** (len(field_) - 1) if first == 0xFF else n
    try:
        return int(field_.rstrip(b"\0 ") or b"0", 8)  # the common case: digits, then NULs or spaces
    except ValueError:
        pass
    end = field_.find(0)  # as tarfile: up to the first NUL, then stripped
    digits = (field_ if end < 0 else field_[:end]).strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise TarFormatError("invalid header: a numeric field is not octal") from None


def block_sum(block: bytes | memoryview) -> int:
    """The sum of a 512-byte block's bytes, in C: adler32's low half is 1 + the sum of its input modulo 65521,
    which 256 bytes of at most 255 never reach, so each half's sum is exact (sum() over a header's bytes took 2.2 us,
    and a cold Debian patch reads ~10 000 headers and writes ~5 000)."""
    view = memoryview(block)
    return (zlib.adler32(view[:256]) & 0xFFFF) + (zlib.adler32(view[256:512]) & 0xFFFF) - 2


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156])
    # The checksum field counts as eight spaces (256), its bytes not.
    unsigned = 256 + block_sum(block) - sum(block[148:156])
    if stored == unsigned:
        return True
    signed: int = 256 + sum(struct.unpack_from("148b", block)) + sum(struct.unpack_from("356b", block, 156))
    return stored == signed


def _pax_records(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        m = _PAX_RECORD.match(data, pos)
        if m is None:
            raise TarFormatError("invalid pax header record")
        length = int(m.group(1))
        end = pos + length
        if length < 5 or end > len(data) or data[end - 1] != 0x0A:
            raise TarFormatError("invalid pax header record length")
        key, eq, value = data[m.end():end - 1].partition(b"=")
        if not eq or not key:
            raise TarFormatError("invalid pax header record")
        out[key.decode(_ENCODING, _ERRORS)] = value.decode(_ENCODING, _ERRORS)
        pos = end
    return out


def _apply_pax(member: TarMember, pax: dict[str, str]) -> None:
    for key, value in pax.items():
        if key.startswith("GNU.sparse."):
            raise TarFormatError(f"member {member.name!r} is a sparse file (pax {key}); sparse members are not "
                                 "supported")
        if key in ("path", "linkpath", "uname", "gname"):
            if key == "path":
                member.name = value.rstrip("/")
            elif key == "linkpath":
                member.linkname = value
            else:
                setattr(member, key, value)
        elif key in _PAX_NUMBERS:
            try:
                number = _PAX_NUMBERS[key](value)
            except ValueError:
                number = 0  # as tarfile: an unreadable number is 0
            setattr(member, key, number)
    member.pax_headers = dict(pax)


class TarStream:
    """Iterate to get the members; `extractfile(member)` reads the current member's content (before the next)."""

    def __init__(self, source: BinaryIO) -> None:
        self._src = source
        self._buf = b""
        self._pos = 0
        self._left = 0  # content bytes of the current member not yet consumed
        self._pad = 0  # padding after them
        self._global: dict[str, str] = {}
        self._count = 0
        self._done = False
        self._scratch: bytearray | None = None

    def __enter__(self) -> TarStream:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    # ------------------------------------------------------------------ raw input

    def _take_upto(self, n: int) -> bytes:
        """The next `n` bytes, fewer only where the input ends. A read that crosses the end of the buffer copies
        just what it returns: the new chunk becomes the buffer as it is (joining it to the old rest would copy a
        whole chunk for every header that straddles two)."""
        pos = self._pos
        end = pos + n
        if end <= len(self._buf):
            self._pos = end
            return self._buf[pos:end]
        parts = [self._buf[pos:]]
        need = end - len(self._buf)
        self._buf, self._pos = b"", 0
        while need > 0:
            chunk = self._src.read(max(_CHUNK, need))
            if not chunk:
                break
            if len(chunk) > need:
                parts.append(chunk[:need])
                self._buf, self._pos = chunk, need
                break
            parts.append(chunk)
            need -= len(chunk)
        return b"".join(parts)

    def _take(self, n: int) -> bytes:
        out = self._take_upto(n)
        if len(out) != n:
            raise TarFormatError("unexpected end of data: the tar stream is truncated")
        return out

    def _skip(self, n: int) -> None:
        have = len(self._buf) - self._pos
        if n <= have:
            self._pos += n
            return
        n -= have
        self._buf, self._pos = b"", 0
        if self._scratch is None:
            self._scratch = bytearray(_CHUNK)
        view = memoryview(self._scratch)
        readinto = getattr(self._src, "readinto", None)
        while n > 0:
            want = min(n, _CHUNK)
            got = readinto(view[:want]) if readinto is not None else len(self._src.read(want))
            if not got:
                raise TarFormatError("unexpected end of data: the tar stream is truncated")
            n -= got

    def _read_content(self, n: int) -> bytes:
        """Up to `n` bytes of the current member (fewer only at its end)."""
        n = min(n, self._left)
        if n <= 0:
            return b""
        have = len(self._buf) - self._pos
        if have:
            take = min(have, n)
            out = self._buf[self._pos:self._pos + take]
            self._pos += take
        else:
            out = self._src.read(n)
            if not out:
                raise TarFormatError("unexpected end of data: a member's content is truncated")
        self._left -= len(out)
        return out

    def _finish_member(self) -> None:
        if self._left or self._pad:
            self._skip(self._left + self._pad)
            self._left = self._pad = 0

    # ------------------------------------------------------------------ headers

    def _header(self) -> bytes | None:
        """The next header block; None at the end of the archive."""
        block = self._take_upto(BLOCK)
        if len(block) != BLOCK:
            if not block.strip(b"\0"):
                if not block and self._count == 0:
                    raise TarFormatError("empty file: not a tar archive")
                return None  # no end-of-archive blocks, or a cut one: nothing more was written
            raise TarFormatError("truncated header: the tar stream is cut inside a member header")
        if block == _ZERO:
            return None
        if not _checksum_ok(block):
            raise TarFormatError("bad checksum in a member header: not a tar stream, or a damaged one")
        return block

    def _meta(self, size: int, what: str) -> bytes:
        if size > _META_LIMIT:
            raise TarFormatError(f"implausibly large {what} ({size} bytes)")
        data = self._take(size)
        self._skip(-size % BLOCK)
        return data

    def _next(self) -> TarMember | None:
        # Name sources met before the real header, outermost first: the first one wins, as in tarfile, where
        # each extended header sets its fields after the ones nested inside it.
        pending: list[tuple[str, object]] = []
        while True:
            block = self._header()
            if block is None:
                if pending:
                    raise TarFormatError("an extended header is not followed by a member")
                return None
            kind = chr(block[156]) if block[156] else "\0"
            size = _number(block[124:136])
            if kind in ("L", "K"):
                pending.append((kind, _text(self._meta(size, "GNU long name"))))
                continue
            if kind in ("x", "X", "g"):
                records = _pax_records(self._meta(size, "pax header"))
                if kind == "g":
                    self._global.update(records)
                else:
                    pending.append(("x", records))
                continue
            if kind == "S":
                raise TarFormatError(f"member {_text(block[0:100])!r} is a GNU sparse file; sparse members are not "
                                     "supported")
            member = self._member(block, kind, size)
            if self._global:
                _apply_pax(member, self._global)
            for source, value in reversed(pending):
                if source == "x":
                    assert isinstance(value, dict)
                    _apply_pax(member, {**self._global, **value})
                elif source == "L":
                    assert isinstance(value, str)
                    member.name = value.removesuffix("/") if member.isdir() else value
                else:
                    assert isinstance(value, str)
                    member.linkname = value
            return member

    def _member(self, block: bytes, kind: str, size: int) -> TarMember:
        name = _text(block[0:100])
        if kind == "\0" and name.endswith("/"):
            kind = "5"  # a v7 directory
        if kind == "5":
            name = name.rstrip("/")
        prefix = _text(block[345:500])
        if prefix and kind not in _GNU_META:
            name = prefix + "/" + name
        return TarMember(name, kind, _number(block[100:108]), _number(block[108:116]), _number(block[116:124]), size,
                         _number(block[136:148]), _text(block[157:257]), _text(block[265:297]),
                         _text(block[297:329]))

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[TarMember]:
        while not self._done:
            self._finish_member()
            member = self._next()
            if member is None:
                self._done = True
                return
            self._count += 1
            if member.size < 0:
                raise TarFormatError(f"member {member.name!r} has a negative size")
            data = member.size if (member.type in REGULAR or member.type not in _HEADER_ONLY) else 0
            self._left, self._pad = data, -data % BLOCK
            yield member

    def extractfile(self, member: TarMember) -> BinaryIO | None:
        """The content of the member just yielded (None for what has none), read before the next member."""
        if not member.isreg():
            return None
        return cast(BinaryIO, _Content(self))


class _Content(io.RawIOBase):
    def __init__(self, stream: TarStream) -> None:
        super().__init__()
        self._stream = stream

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        stream = self._stream
        if size is None or size < 0:
            parts = []
            while stream._left:
                parts.append(stream._read_content(stream._left))
            return b"".join(parts)
        return stream._read_content(size)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def open_stream(source: BinaryIO) -> TarStream:
    return TarStream(source)
