"""RPM headers: the tag store of a package's signature and main header, and of an installed package's rpmdb record.

On disk a header is

    8e ad e8 01 00 00 00 00     magic, version 1, four reserved bytes (absent from rpmdb blobs)
    il, dl                      big-endian uint32: number of index entries, bytes of data
    il x (tag, type, offset, count)   big-endian int32 each
    dl bytes of data            values at `offset`; integers big-endian and aligned to their size

The first entry of a modern header is a region tag (HEADERIMMUTABLE in the main header, HEADERSIGNATURES in the
signature header). Its offset points at a 16-byte trailer in the data, itself an index entry whose negative
offset is -16 x the number of entries the region covers: the part the header digests and signatures were made
over. rpm installs a package by storing that region verbatim with tags appended after it (install time, file
states, the signature header's digests); `installed_header` builds that record as rpm 4.18 does.

Every offset, count and string is checked when a header is made, so a hostile header raises the header's
error class (BadHeader, exit 5, unless the caller names another) and never an IndexError later.
"""

from __future__ import annotations

import functools
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple

from copa.errors import CopaError, IntegrityError
from copa.pkg.rpm.tags import HEADER_SIGBASE, HEADER_TAGBASE, SIG_TO_HEADER, FileState, Tag, Type

MAGIC = b"\x8e\xad\xe8\x01\x00\x00\x00\x00"
# rpm's own limits (hdrchkTags, hdrchkData): more than this is a corrupt or hostile header.
MAX_ENTRIES = 0xFFFF
MAX_DATA = 256 << 20
REGION_TAGS = frozenset({Tag.HEADERIMAGE, Tag.HEADERSIGNATURES, Tag.HEADERIMMUTABLE})
_ENTRY = struct.Struct(">iIiI")  # tag, type, offset, count: offset is signed (region trailers are negative)
_INTS = {Type.CHAR: "B", Type.INT8: "B", Type.INT16: "H", Type.INT32: "I", Type.INT64: "Q"}
_TYPES = tuple(Type)  # by type code (0..9)
_SIZES = tuple(t.size for t in _TYPES)
_STRING_TYPES = frozenset({Type.STRING, Type.STRING_ARRAY, Type.I18NSTRING})
# What a signature-header value may be to be merged into an installed header (headerMergeLegacySigs).
_MERGE_MAX_COUNT = 16 * 1024


class BadHeader(IntegrityError):
    """A header that is malformed, truncated or inconsistent."""


class Entry(NamedTuple):
    """One index entry as stored. A named tuple rather than a frozen dataclass: every plan reads every installed
    header, tens of thousands of entries on a real image, and a tuple is made in a fraction of the time (172
    headers, 10 282 entries: 7 ms of the plan's 14 ms of parsing went into making the dataclasses)."""

    tag: int
    type: Type
    offset: int
    count: int  # type: ignore[assignment]  # (rpm's name for it; it hides tuple.count, which nothing here uses)


@dataclass(frozen=True, slots=True)
class Region:
    tag: int  # HEADERIMMUTABLE, HEADERSIGNATURES or HEADERIMAGE
    entries: int  # index entries covered, the region entry included
    data_length: int  # data bytes covered, the 16-byte trailer included


@dataclass(frozen=True, slots=True)
class Value:
    """A tag's value ready to be stored: type, element count and the encoded (big-endian) bytes."""

    tag: int
    type: Type
    count: int
    raw: bytes

    @classmethod
    def ints(cls, tag: int, type_: Type, values: Sequence[int]) -> Value:
        return cls(tag, type_, len(values), struct.pack(f">{len(values)}{_INTS[type_]}", *values))

    @classmethod
    def int32(cls, tag: int, *values: int) -> Value:
        return cls.ints(tag, Type.INT32, values)

    @classmethod
    def string(cls, tag: int, text: str) -> Value:
        return cls(tag, Type.STRING, 1, _encode(text) + b"\0")

    @classmethod
    def strings(cls, tag: int, texts: Sequence[str], type_: Type = Type.STRING_ARRAY) -> Value:
        return cls(tag, type_, len(texts), b"".join(_encode(t) + b"\0" for t in texts))

    @classmethod
    def bin(cls, tag: int, data: bytes) -> Value:
        return cls(tag, Type.BIN, len(data), data)


def _encode(text: str) -> bytes:
    # Strings are decoded with surrogateescape, so a non-UTF-8 file name goes back out as the same bytes.
    return text.encode("utf-8", "surrogateescape")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Header:
    """A parsed header: its index entries in stored order and its data store, both exactly as read."""

    entries: tuple[Entry, ...]
    data: bytes
    what: str = field(default="rpm header", compare=False)  # how errors name it: the package
    error: type[CopaError] = field(default=BadHeader, compare=False, repr=False)
    _by_tag: dict[int, Entry] = field(init=False, compare=False, repr=False)
    _region: Region | None = field(init=False, compare=False, repr=False)
    _ends: dict[tuple[int, int], int] = field(init=False, compare=False, repr=False)  # string data ends, memoised

    def __post_init__(self) -> None:
        by_tag, ends = _check_index(self.entries, self.data, self._fail)
        object.__setattr__(self, "_ends", ends)
        object.__setattr__(self, "_by_tag", by_tag)
        object.__setattr__(self, "_region", self._find_region())

    # --- reading -------------------------------------------------------------------------------------------

    @classmethod
    def parse(cls, blob: bytes, what: str = "rpm header", error: type[CopaError] = BadHeader) -> Header:
        """A header from bytes, with or without the 8-byte magic (rpmdb blobs have none). Trailing bytes are
        an error: a blob is exactly one header."""
        view = memoryview(blob)
        if bytes(view[:8]) == MAGIC:
            view = view[8:]
        if len(view) < 8:
            raise error(f"{what}: header is truncated ({len(blob)} bytes)")
        il, dl = struct.unpack_from(">II", view)
        _check_sizes(il, dl, what, error)
        size = 8 + 16 * il + dl
        if len(view) != size:
            raise error(f"{what}: header is {len(view)} bytes but its index says {size}")
        return cls._from_parts(view[8:8 + 16 * il], bytes(view[8 + 16 * il:]), what, error)

    @classmethod
    def read(cls, stream: BinaryIO, what: str = "rpm header", error: type[CopaError] = BadHeader
             ) -> tuple[Header, bytes]:
        """The header at the stream's position (magic required): the header and the exact bytes it took, which
        is what rpm's digests and signatures cover."""
        intro = _read_exactly(stream, 16, what, error)
        if intro[:8] != MAGIC:
            raise error(f"{what}: no rpm header magic where a header should start; not an rpm package")
        il, dl = struct.unpack_from(">II", intro, 8)
        _check_sizes(il, dl, what, error)
        rest = _read_exactly(stream, 16 * il + dl, what, error)
        return cls._from_parts(memoryview(rest)[:16 * il], rest[16 * il:], what, error), intro + rest

    @classmethod
    def _from_parts(cls, index: memoryview, data: bytes, what: str, error: type[CopaError]) -> Header:
        entries: list[Entry] = []
        types = len(_TYPES)
        for tag, type_code, offset, count in _ENTRY.iter_unpack(index):
            if type_code >= types:  # (unsigned: never negative)
                raise error(f"{what}: header tag {tag} has unknown type {type_code}; the package is corrupt")
            entries.append(Entry(tag, _TYPES[type_code], offset, count))
        return cls(tuple(entries), data, what, error)

    def _fail(self, problem: str) -> CopaError:
        return self.error(f"{self.what}: {problem}; the package or database is corrupt")

    def _string_end(self, e: Entry) -> int:
        """Where the entry's last string's NUL ends (every string entry's is found when the header is made)."""
        key = (e.offset, e.count)
        end = self._ends.get(key)
        if end is None:
            end = self._ends[key] = _string_end(self.data, e.offset, e.count, e.tag, self._fail)
        return end

    def _find_region(self) -> Region | None:
        if not self.entries or self.entries[0].tag not in REGION_TAGS:
            return None
        first = self.entries[0]
        tag, type_code, offset, count = _ENTRY.unpack_from(self.data, first.offset)
        n = -offset // 16 if offset < 0 and offset % 16 == 0 else 0
        if tag != first.tag or type_code != Type.BIN or count != 16 or not 1 <= n <= len(self.entries):
            raise self._fail(f"region trailer of tag {first.tag} is malformed")
        # Entries the region counts normally keep their data before the trailer; rpm may have appended data of
        # tags it changed after loading ("dribbles") behind it. Such a header is read as it is; only cutting out
        # its region (immutable()) fails.
        return Region(first.tag, n, first.offset + 16)

    def _length(self, e: Entry) -> int:
        if e.type in (Type.STRING, Type.STRING_ARRAY, Type.I18NSTRING):
            return self._string_end(e) - e.offset
        return 0 if e.type == Type.NULL else e.type.size * e.count

    # --- values --------------------------------------------------------------------------------------------

    @property
    def tags(self) -> tuple[int, ...]:
        return tuple(e.tag for e in self.entries)

    def entry(self, tag: int) -> Entry | None:
        return self._by_tag.get(tag)

    def __contains__(self, tag: int) -> bool:
        return tag in self._by_tag

    def raw(self, tag: int) -> bytes | None:
        """A tag's stored bytes (strings with their NULs), None when absent."""
        e = self._by_tag.get(tag)
        return None if e is None else self.data[e.offset:e.offset + self._length(e)]

    def value(self, tag: int) -> Value | None:
        e = self._by_tag.get(tag)
        if e is None:
            return None
        return Value(e.tag, e.type, e.count, self.data[e.offset:e.offset + self._length(e)])

    def strings(self, tag: int) -> tuple[str, ...]:
        """A STRING_ARRAY or I18NSTRING (all its strings; I18N: one per HEADERI18NTABLE locale), or a STRING
        as one string; () when absent."""
        e = self._by_tag.get(tag)
        if e is None:
            return ()
        if e.type not in (Type.STRING, Type.STRING_ARRAY, Type.I18NSTRING):
            raise self._fail(f"tag {tag} is {e.type.name}, not strings")
        raw = self.data[e.offset:self._string_end(e) - 1]
        return tuple(_decode(raw).split("\0"))  # one decode: NUL is NUL in UTF-8

    def string(self, tag: int) -> str | None:
        """A STRING, or an I18NSTRING's first (the C locale's) text; None when absent."""
        found = self.strings(tag)
        return found[0] if found else None

    def ints(self, tag: int) -> tuple[int, ...]:
        """An integer tag's values, unsigned as rpm reads them; () when absent."""
        e = self._by_tag.get(tag)
        if e is None:
            return ()
        fmt = _INTS.get(e.type)
        if fmt is None:
            raise self._fail(f"tag {tag} is {e.type.name}, not integers")
        return struct.unpack_from(f">{e.count}{fmt}", self.data, e.offset)

    def integer(self, tag: int) -> int | None:
        found = self.ints(tag)
        return found[0] if found else None

    def bin(self, tag: int) -> bytes | None:
        e = self._by_tag.get(tag)
        if e is None:
            return None
        if e.type != Type.BIN:
            raise self._fail(f"tag {tag} is {e.type.name}, not binary")
        return self.data[e.offset:e.offset + e.count]

    # --- regions and writing -------------------------------------------------------------------------------

    @property
    def region(self) -> Region | None:
        return self._region

    def immutable(self) -> Header:
        """Only the region: the entries and data the header's digests and signatures cover (for an installed
        header, the package's header as it was in the .rpm)."""
        region = self._region
        if region is None:
            raise self.error(f"{self.what}: header has no immutable region (made by an rpm older than 4.0?); "
                             "copa cannot use it")
        if region.entries == len(self.entries) and region.data_length == len(self.data):
            return self
        for e in self.entries[1:region.entries]:
            if e.offset + self._length(e) > region.data_length - 16:
                raise self._fail(f"tag {e.tag} lies outside the header's immutable region")
        return Header(self.entries[:region.entries], self.data[:region.data_length], self.what, self.error)

    def to_bytes(self, magic: bool = True) -> bytes:
        """The header as rpm writes it: with the magic in a .rpm file, without it in an rpmdb blob."""
        index = b"".join(_ENTRY.pack(e.tag, e.type, e.offset, e.count) for e in self.entries)
        return (MAGIC if magic else b"") + struct.pack(">II", len(self.entries), len(self.data)) + index + self.data

    def append(self, values: Iterable[Value]) -> Header:
        """This header with `values` added after its entries, sorted by tag and each aligned to its type in the
        data store, as rpm's headerExport places tags added to a loaded header."""
        entries = list(self.entries)
        data = bytearray(self.data)
        for v in sorted(values, key=lambda v: v.tag):
            if v.tag in self._by_tag:
                raise ValueError(f"tag {v.tag} is already in the header")
            data += b"\0" * (-len(data) % v.type.size)
            entries.append(Entry(v.tag, v.type, len(data), v.count))
            data += v.raw
        return Header(tuple(entries), bytes(data), self.what, self.error)


def _check_index(entries: Iterable[Entry], data: bytes, fail: Callable[[str], CopaError]
                 ) -> tuple[dict[int, Entry], dict[tuple[int, int], int]]:
    """Every entry checked against the data store (an error from `fail` if one does not fit); the entries by tag
    and where each string entry's strings end. One loop of plain comparisons and table look-ups: it runs for
    every entry of every header read (hundreds of installed headers at each plan, each with ~60 tags)."""
    dl = len(data)
    by_tag: dict[int, Entry] = {}
    ends: dict[tuple[int, int], int] = {}
    first = True
    for entry in entries:
        tag, type_, offset, count = entry
        # A tag again after the region replaces the region's one: rpm writes a tag it changed after loading
        # (relocated file names) behind the region and, reading the header, lets it win (headerImport).
        by_tag[tag] = entry
        if first:
            first = False
            if tag in REGION_TAGS:
                if type_ != Type.BIN or count != 16 or not 0 <= offset <= dl - 16:
                    raise fail(f"region tag {tag} is malformed")
                continue
        if count < 1 or count > MAX_DATA or not 0 <= offset <= dl:
            raise fail(f"tag {tag} points outside the header data (offset {offset}, count {count})")
        if type_ in _STRING_TYPES:
            if type_ == Type.STRING and count != 1:
                raise fail(f"string tag {tag} has count {count}")
            if count == 1:  # (most string entries: found here without a call)
                nul = data.find(b"\0", offset)
                if nul < 0:
                    raise fail(f"string tag {tag} is not NUL-terminated")
                ends[(offset, 1)] = nul + 1
            elif (offset, count) not in ends:
                ends[(offset, count)] = _string_end(data, offset, count, tag, fail)
        elif type_ != Type.NULL:
            size = _SIZES[type_]
            if offset % size:
                raise fail(f"tag {tag} is misaligned")
            if offset + size * count > dl:
                raise fail(f"tag {tag} runs past the header data")
    return by_tag, ends


def _string_end(data: bytes, offset: int, count: int, tag: int, fail: Callable[[str], CopaError]) -> int:
    """Where the last of `count` strings from `offset` ends (after its NUL); every string must end inside the data."""
    if count == 1:
        nul = data.find(b"\0", offset)
        if nul < 0:
            raise fail(f"string tag {tag} is not NUL-terminated")
        return nul + 1
    found = _strings_pattern(count).match(data, offset)
    if found is None:
        raise fail(f"string tag {tag} is not NUL-terminated")
    return found.end()


@functools.lru_cache(maxsize=64)
def _strings_pattern(count: int) -> re.Pattern[bytes]:
    # `count` NUL-terminated strings, matched in C: headers of big packages hold arrays of 100k names.
    return re.compile(rb"(?:[^\0]*\0){%d}" % count)


def _check_sizes(il: int, dl: int, what: str, error: type[CopaError]) -> None:
    if il < 1 or il > MAX_ENTRIES or dl > MAX_DATA:
        raise error(f"{what}: header claims {il} tags and {dl} data bytes; the package or database is corrupt")


def _read_exactly(stream: BinaryIO, n: int, what: str, error: type[CopaError]) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise error(f"{what}: file ends inside an rpm header; the package is truncated")
    return data


def merged_signature_values(main: Header, signature: Header) -> list[Value]:
    """The signature header's values rpm copies into the installed header (headerMergeLegacySigs): renumbered
    per SIG_TO_HEADER, others kept if numbered 256..999, and only when the main header lacks the tag, the value
    is no I18NSTRING or NULL, a number is single, and a string or blob is under 16 KiB elements."""
    out: list[Value] = []
    for e in signature.entries:
        tag = SIG_TO_HEADER.get(e.tag)
        if tag is None:
            if not HEADER_SIGBASE <= e.tag < HEADER_TAGBASE:
                continue
            tag = e.tag
        if tag in main or e.type in (Type.NULL, Type.I18NSTRING):
            continue
        if e.type in _INTS and e.count != 1:
            continue
        if e.type in (Type.STRING, Type.STRING_ARRAY, Type.BIN) and e.count >= _MERGE_MAX_COUNT:
            continue
        value = signature.value(e.tag)
        assert value is not None
        out.append(Value(tag, value.type, value.count, value.raw))
    return out


# rpm's %_transaction_color per host architecture (its platform macros): 64-bit multilib hosts 3 (ELF32|ELF64),
# ia64 2, every other (32-bit) one 0. The INSTALLCOLOR rpm records is the color of the rpm that installed it.
_COLOR_3 = frozenset({"x86_64", "amd64", "ia32e", "aarch64", "ppc64", "ppc64le", "ppc64p7", "s390x", "riscv64",
                      "loongarch64", "mips64", "mips64el", "mips64r6", "mips64r6el", "sparc64", "sparc64v"})


def transaction_color(rpm_arch: str) -> int:
    """The INSTALLCOLOR rpm writes on a host of this (rpm-spelled) architecture: x86_64, aarch64... -> 3."""
    if rpm_arch in _COLOR_3:
        return 3
    return 2 if rpm_arch == "ia64" else 0


def installed_header(main: Header, signature: Header, *, install_time: int, install_tid: int,
                     file_states: Sequence[int] | None = None, install_color: int = 3) -> Header:
    """The header rpm 4.18 stores in its database for a package it installs: the main header's immutable region
    verbatim, then the signature header's digests and signatures (see merged_signature_values), INSTALLTIME,
    FILESTATES (one per file; all NORMAL unless given), INSTPREFIXES (a relocatable package's PREFIXES, as copa
    never relocates), INSTALLCOLOR (the transaction's color: see transaction_color) and INSTALLTID (the
    transaction id, a timestamp), sorted by tag."""
    base = main.immutable()
    if base.region is None or base.region.tag != Tag.HEADERIMMUTABLE:
        raise base.error(f"{base.what}: main header has no HEADERIMMUTABLE region; copa cannot install it")
    values = merged_signature_values(base, signature)
    values += [Value.int32(Tag.INSTALLTIME, install_time), Value.int32(Tag.INSTALLCOLOR, install_color),
               Value.int32(Tag.INSTALLTID, install_tid)]
    prefixes = base.strings(Tag.PREFIXES)
    if prefixes:
        # A relocatable package records where its prefixes went (rpmRelocateFileList): where they were, unrelocated.
        values.append(Value.strings(Tag.INSTPREFIXES, prefixes))
    files = len(base.strings(Tag.BASENAMES)) or len(base.strings(Tag.OLDFILENAMES))
    if files:
        states = list(file_states) if file_states is not None else [FileState.NORMAL] * files
        if len(states) != files:
            raise ValueError(f"{len(states)} file states for {files} files")
        values.append(Value.ints(Tag.FILESTATES, Type.CHAR, states))
    return base.append(v for v in values if v.tag not in base)
