"""/etc/ld.so.cache: glibc's format "glibc-ld.so.cache1.1", read and written as ldconfig (glibc 2.33+) writes it.

Layout (elf/cache.c, sysdeps/generic/dl-cache.h): a 48-byte header (magic, version, nlibs, len_strings, endian
flag, extension offset), nlibs 24-byte entries (flags, key and value string offsets from the file start, osversion,
hwcap), the string table (suffix-merged as elf/stringtable.c does: keys are tails of their paths), then, 4-aligned,
the extension directory whose generator section names the ldconfig that wrote the file. Older caches start with the
libc5-era "ld.so-1.7.0" table and carry the new one after it; those are read, and written back in the new format
only when asked to."""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

OLD_MAGIC = b"ld.so-1.7.0"
NEW_MAGIC = b"glibc-ld.so.cache1.1"
EXT_MAGIC = 0xEAA42174
TAG_GENERATOR, TAG_HWCAPS = 0, 1
ENDIAN_LITTLE, ENDIAN_BIG = 2, 3
HWCAP_EXTENSION = 1 << 62
_HEADER = 48
_ENTRY = 24


class CacheError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class CacheEntry:
    flags: int
    key: str  # the soname (or a dev link's name)
    value: str  # the path ld.so opens
    osversion: int = 0
    hwcap: int = 0


@dataclass(frozen=True)
class Cache:
    entries: tuple[CacheEntry, ...]
    generator: bytes  # which ldconfig wrote it: kept, so a rewrite matches what the image's own ldconfig writes
    little: bool = True
    hwcaps: tuple[str, ...] = ()  # glibc-hwcaps subdirectory names (their entries are not rewritten by copa)
    had_old_format: bool = False


def _cstr(data: bytes, off: int) -> str:
    end = data.index(b"\0", off)
    return data[off:end].decode("utf-8", "surrogateescape")


def parse(data: bytes) -> Cache:
    start = 0
    had_old = False
    if data.startswith(OLD_MAGIC):
        # struct cache_file: magic[11], nlibs (uint32 at 12), then nlibs 12-byte entries; the new table follows,
        # aligned to 8 (ALIGN_CACHE).
        nlibs = struct.unpack_from("<I", data, 12)[0]
        start = 16 + nlibs * 12
        start = (start + 7) & ~7
        had_old = True
        if not data[start:].startswith(NEW_MAGIC):
            raise CacheError("an old-format-only ld.so.cache (libc5 era) is not supported")
    if not data[start:].startswith(NEW_MAGIC):
        raise CacheError("not a glibc ld.so.cache")
    flags = data[start + 28]
    little = (flags & 3) != ENDIAN_BIG
    e = "<" if little else ">"
    nlibs, len_strings = struct.unpack_from(e + "II", data, start + 20)
    ext_offset = struct.unpack_from(e + "I", data, start + 32)[0]
    entries = []
    for i in range(nlibs):
        fl, key, value, osv, hwcap = struct.unpack_from(e + "iIIIQ", data, start + _HEADER + i * _ENTRY)
        # String offsets count from the new header in a combined file; in a new-only file that is the file start.
        entries.append(CacheEntry(fl, _cstr(data, start + key), _cstr(data, start + value), osv, hwcap))
    generator = b""
    hwcaps: list[str] = []
    pos = start + ext_offset
    if ext_offset and pos + 8 <= len(data) and struct.unpack_from(e + "I", data, pos)[0] == EXT_MAGIC:
        count = struct.unpack_from(e + "I", data, pos + 4)[0]
        for i in range(count):
            tag, _fl, off, size = struct.unpack_from(e + "IIII", data, pos + 8 + 16 * i)
            if tag == TAG_GENERATOR:
                generator = data[start + off:start + off + size]
            elif tag == TAG_HWCAPS:
                hwcaps = [_cstr(data, start + o) for o in struct.unpack_from(e + f"{size // 4}I", data, start + off)]
    del len_strings
    return Cache(tuple(entries), generator, little, tuple(hwcaps), had_old)


def libcmp(p1: str, p2: str) -> int:
    """_dl_cache_libcmp: runs of digits compare as numbers, a digit sorts after a non-digit."""
    a, b = p1.encode("utf-8", "surrogateescape"), p2.encode("utf-8", "surrogateescape")
    i = j = 0
    while i < len(a):
        c1 = a[i]
        c2 = b[j] if j < len(b) else 0
        if 0x30 <= c1 <= 0x39:
            if 0x30 <= c2 <= 0x39:
                v1 = v2 = 0
                while i < len(a) and 0x30 <= a[i] <= 0x39:
                    v1 = v1 * 10 + a[i] - 0x30
                    i += 1
                while j < len(b) and 0x30 <= b[j] <= 0x39:
                    v2 = v2 * 10 + b[j] - 0x30
                    j += 1
                if v1 != v2:
                    return v1 - v2
                continue
            return 1
        if 0x30 <= c2 <= 0x39:
            return -1
        if c1 != c2:
            return _signed(c1) - _signed(c2)
        i += 1
        j += 1
    return 0 - (_signed(b[j]) if j < len(b) else 0)


def _signed(c: int) -> int:
    return c - 256 if c >= 128 else c  # `char` is signed on the architectures glibc's ldconfig runs on here


def entry_compare(e1: CacheEntry, e2: CacheEntry) -> int:
    """elf/cache.c compare(): descending by libcmp of the keys, then flags descending, then hwcap descending."""
    res = libcmp(e2.key, e1.key)
    if res == 0:
        if e1.flags != e2.flags:
            return 1 if e1.flags < e2.flags else -1
        bits1, bits2 = bin(e1.hwcap).count("1"), bin(e2.hwcap).count("1")
        if bits2 != bits1:
            return 1 if bits2 > bits1 else -1
        if e2.hwcap != e1.hwcap:
            return 1 if e2.hwcap > e1.hwcap else -1
    return res


def sort_entries(entries: Sequence[CacheEntry]) -> list[CacheEntry]:
    """ldconfig's order: each entry is inserted after every entry that does not compare greater (stable)."""
    return sorted(entries, key=functools.cmp_to_key(entry_compare))


def _string_table(strings: Sequence[str]) -> tuple[bytes, dict[str, int]]:
    """elf/stringtable.c stringtable_finalize: strings sorted by their reversed bytes, descending (so a string comes
    right before its own suffixes), each one that is a tail of the one before stored inside it."""
    unique = sorted({s.encode("utf-8", "surrogateescape") for s in strings}, key=lambda s: s[::-1], reverse=True)
    offsets: dict[bytes, int] = {}
    out = bytearray()
    prev: bytes | None = None
    for s in unique:
        if prev is not None and len(prev) >= len(s) and prev.endswith(s):
            offsets[s] = offsets[prev] + len(prev) - len(s)
        else:
            offsets[s] = len(out)
            out += s + b"\0"
        prev = s
    return bytes(out), {k.decode("utf-8", "surrogateescape"): v for k, v in offsets.items()}


def write(cache: Cache) -> bytes:
    """The new-format file ldconfig writes for these entries (already in ldconfig's order)."""
    if cache.hwcaps:
        raise CacheError("glibc-hwcaps entries are not rewritten")
    e = "<" if cache.little else ">"
    strings, offsets = _string_table([s for en in cache.entries for s in (en.key, en.value)])
    str_offset = _HEADER + _ENTRY * len(cache.entries)
    ext_offset = (str_offset + len(strings) + 3) & ~3
    header = NEW_MAGIC + struct.pack(e + "IIB3xI12x", len(cache.entries), len(strings),
                                     ENDIAN_LITTLE if cache.little else ENDIAN_BIG, ext_offset)
    body = b"".join(struct.pack(e + "iIIIQ", en.flags, str_offset + offsets[en.key], str_offset + offsets[en.value],
                                en.osversion, en.hwcap) for en in cache.entries)
    pad = b"\0" * (ext_offset - str_offset - len(strings))
    sections = [(TAG_GENERATOR, cache.generator)] if cache.generator else []
    ext_size = 8 + 16 * len(sections)
    ext = struct.pack(e + "II", EXT_MAGIC, len(sections))
    data_off = ext_offset + ext_size
    tail = b""
    for tag, payload in sections:
        ext += struct.pack(e + "IIII", tag, 0, data_off + len(tail), len(payload))
        tail += payload
    return header + body + strings + pad + ext + tail
