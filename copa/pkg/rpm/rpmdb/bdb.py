"""BerkeleyDB files as rpm 4.14-4.16 keeps them (RHEL/UBI 8, Amazon Linux 2, CentOS 7), read and written in Python.

Written here rather than through a binding: PyPI's `berkeleydb` has no wheels (a C build at install time and
libdb at run time), and rpm uses only a small part of the format: a hash database (Packages: 4-byte header
numbers -> header blobs) and btrees (the indexes: key -> packed (hnum, idx) pairs), no duplicates, no
transactions or checksums.

The format, as BerkeleyDB 5.3 writes it (hash and btree version 9; earlier versions only read):

* page 0 is the meta page: the common DBMETA (lsn, pgno, magic, version, pagesize, type, free list, last_pgno,
  file uid) then the hash fields (max_bucket, high/low masks, fill factor, element count, the hash of a fixed
  string that tells which hash function made the file, 32 `spares`) or the btree ones (minkey, root page);
* every other page starts with a 26-byte header (lsn, pgno, prev, next, entries, hf_offset, level, type) and an
  array of 2-byte item offsets; items are laid out from the page's end downwards;
* hash bucket b lives on page b + spares[ceil(log2(b + 1))] (plus pages chained by `next`); its items are
  key/data pairs sorted by key: a type byte then the bytes (H_KEYDATA), or a reference to overflow pages
  (H_OFFPAGE: page, total length) for data larger than a quarter page. The bucket is FNV-1 of the key, masked
  by high_mask (low_mask when past max_bucket);
* btree leaves (level 1) hold sorted key/data pairs, each item 4-byte aligned (len, type, bytes) or an
  overflow reference (B_OVERFLOW) above the minkey-derived size; internal pages hold (key, child page); leaves
  are chained by prev/next;
* overflow pages hold `hf_offset` bytes of the item each, chained by next.

The writer rebuilds each file from its (changed) items, keeping the original's page size, byte order, file uid,
fill factor and minkey: a fresh, fully valid file (db_verify, rpm's bdb_ro) that BerkeleyDB itself can go on
modifying. No `__db.*` environment is produced.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from copa.errors import UnsupportedImageError

HASH_MAGIC = 0x061561
BTREE_MAGIC = 0x053162

# Page types (db_page.h).
P_IBTREE, P_LBTREE, P_OVERFLOW, P_HASHMETA, P_BTREEMETA, P_HASH_UNSORTED, P_HASH = 3, 5, 7, 8, 9, 2, 13
H_KEYDATA, H_DUPLICATE, H_OFFPAGE, H_OFFDUP = 1, 2, 3, 4
B_KEYDATA, B_DUPLICATE, B_OVERFLOW = 1, 2, 3
_PAGE_HEADER = 26
_NOT_LOGGED = (0, 1)  # the LSN of pages written outside a logging environment (rpm's never logs)
_CHARKEY = b"%$sniglet^&\0"  # hashed with its NUL (sizeof in C)


class BdbError(UnsupportedImageError):
    pass


def _damaged(what: str, detail: str) -> BdbError:
    return BdbError(f"{what}: the rpm database (BerkeleyDB) is damaged or of an unknown kind ({detail}); "
                    "rebuild it in the image (rpmdb --rebuilddb) and try again")


def fnv1(data: bytes) -> int:
    """BerkeleyDB's default hash function (__ham_func5: FNV-1 from 0, multiply then xor)."""
    h = 0
    for byte in data:
        h = ((h * 16777619) & 0xFFFFFFFF) ^ byte
    return h


def _log2ceil(n: int) -> int:
    return (n - 1).bit_length()


@dataclass(frozen=True, slots=True)
class Meta:
    kind: str  # "hash" or "btree"
    endian: str  # struct prefix: "<" or ">"
    version: int
    pagesize: int
    last_pgno: int
    flags: int
    uid: bytes
    # hash
    max_bucket: int = 0
    high_mask: int = 0
    low_mask: int = 0
    ffactor: int = 0
    charkey: int = 0
    spares: tuple[int, ...] = ()
    # btree
    minkey: int = 2
    root: int = 1


def read_meta(data: bytes, what: str) -> Meta:
    if len(data) < 512:
        raise _damaged(what, "shorter than a meta page")
    for endian in ("<", ">"):
        magic, version, pagesize = struct.unpack_from(endian + "III", data, 12)
        if magic in (HASH_MAGIC, BTREE_MAGIC):
            break
    else:
        raise _damaged(what, "not a BerkeleyDB hash or btree file")
    encrypt, _type, metaflags = data[24], data[25], data[26]
    if encrypt or metaflags & 1:
        raise _damaged(what, "encrypted or checksummed, which rpm never makes")
    if pagesize not in (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536) or len(data) % pagesize:
        raise _damaged(what, f"page size {pagesize} for {len(data)} bytes")
    last_pgno, _nparts, _keys, _records, flags = struct.unpack_from(endian + "IIIII", data, 32)
    if (last_pgno + 1) * pagesize > len(data):
        raise _damaged(what, "the file is shorter than its last page")
    uid = data[52:72]
    if magic == HASH_MAGIC:
        if version < 8:  # hash version 8 and up: sorted-or-unsorted pages and this meta layout
            raise _damaged(what, f"hash version {version}")
        max_bucket, high, low, ffactor, _nelem, charkey = struct.unpack_from(endian + "6I", data, 72)
        spares = struct.unpack_from(endian + "32I", data, 96)
        if max_bucket >= last_pgno:  # every bucket has a page of its own
            raise _damaged(what, f"{max_bucket + 1} buckets in {last_pgno} pages")
        if flags:  # duplicates or subdatabases: nothing rpm asks for
            raise _damaged(what, f"hash flags {flags:#x}")
        if charkey != fnv1(_CHARKEY):
            raise _damaged(what, "made with a hash function other than BerkeleyDB's default")
        return Meta("hash", endian, version, pagesize, last_pgno, flags, uid, max_bucket, high, low, ffactor,
                    charkey, spares)
    minkey, _re_len, _re_pad, root = struct.unpack_from(endian + "4I", data, 76)
    if flags:  # duplicates, record numbers, compression: nothing rpm asks for
        raise _damaged(what, f"btree flags {flags:#x}")
    return Meta("btree", endian, version, pagesize, last_pgno, flags, uid, minkey=minkey or 2, root=root)


class _Pages:
    def __init__(self, data: bytes, meta: Meta, what: str) -> None:
        self.data, self.meta, self.what = data, meta, what

    def header(self, pgno: int) -> tuple[int, int, int, int, int, int]:
        """(prev, next, entries, hf_offset, level, type) of a page."""
        if not 0 < pgno <= self.meta.last_pgno:
            raise _damaged(self.what, f"page {pgno} is out of range")
        base = pgno * self.meta.pagesize
        got, prev, nxt, entries, hf, level, typ = struct.unpack_from(self.meta.endian + "IIIHHBB", self.data,
                                                                      base + 8)
        if got != pgno:
            raise _damaged(self.what, f"page {pgno} says it is page {got}")
        return prev, nxt, entries, hf, level, typ

    def offsets(self, pgno: int, entries: int) -> tuple[int, ...]:
        base = pgno * self.meta.pagesize
        offs = struct.unpack_from(f"{self.meta.endian}{entries}H", self.data, base + _PAGE_HEADER)
        if any(not _PAGE_HEADER + 2 * entries <= o < self.meta.pagesize for o in offs):
            raise _damaged(self.what, f"page {pgno} has an item outside the page")
        return offs

    def page(self, pgno: int) -> bytes:
        base = pgno * self.meta.pagesize
        return self.data[base:base + self.meta.pagesize]

    def chain(self, pgno: int, loop: str) -> Iterator[tuple[int, tuple[int, int, int, int, int, int]]]:
        """Each page of the chain starting at `pgno`, with its header, along the next links; `loop` (where {}
        stands for the page) is the damage a page met twice reports."""
        seen: set[int] = set()
        while pgno:
            if pgno in seen:
                raise _damaged(self.what, loop.format(pgno))
            seen.add(pgno)
            header = self.header(pgno)
            yield pgno, header
            pgno = header[1]

    def overflow(self, pgno: int, total: int) -> bytes:
        out = bytearray()
        seen: set[int] = set()
        while pgno and len(out) < total:
            if pgno in seen:
                raise _damaged(self.what, f"overflow pages loop at page {pgno}")
            seen.add(pgno)
            _prev, nxt, _entries, length, _level, typ = self.header(pgno)
            if typ != P_OVERFLOW or length > self.meta.pagesize - _PAGE_HEADER:
                raise _damaged(self.what, f"page {pgno} is not an overflow page")
            base = pgno * self.meta.pagesize + _PAGE_HEADER
            out += self.data[base:base + length]
            pgno = nxt
        if len(out) != total:
            raise _damaged(self.what, f"an overflow item has {len(out)} of its {total} bytes")
        return bytes(out)


def _read(kind: str, walk: Callable[[_Pages], dict[bytes, bytes]], data: bytes, what: str) -> dict[bytes, bytes]:
    """`walk` over the pages of a `kind` database."""
    try:
        meta = read_meta(data, what)
        if meta.kind != kind:
            raise _damaged(what, f"a {meta.kind} where rpm keeps a {kind} database")
        return walk(_Pages(data, meta, what))
    except (struct.error, IndexError, ValueError) as e:  # a field pointing past what it should: damage
        raise _damaged(what, str(e) or type(e).__name__) from None


def read_hash(data: bytes, what: str) -> dict[bytes, bytes]:
    """Every key/data pair of a hash database, walking the buckets."""
    return _read("hash", _read_hash, data, what)


def _read_hash(pages: _Pages) -> dict[bytes, bytes]:
    meta, what, e = pages.meta, pages.what, pages.meta.endian
    out: dict[bytes, bytes] = {}
    for bucket in range(meta.max_bucket + 1):
        first = bucket + meta.spares[_log2ceil(bucket + 1)]
        for pgno, (_prev, _nxt, entries, _hf, _level, typ) in pages.chain(first, f"bucket {bucket}'s pages loop"):
            if typ not in (P_HASH, P_HASH_UNSORTED) or entries % 2:
                raise _damaged(what, f"bucket page {pgno} has type {typ} and {entries} items")
            page = pages.page(pgno)
            offs = pages.offsets(pgno, entries)
            items: list[bytes] = []
            for i, off in enumerate(offs):
                end = meta.pagesize if i == 0 else offs[i - 1]
                if end <= off:
                    raise _damaged(what, f"page {pgno}'s items overlap")
                item = page[off:end]
                if item[0] == H_KEYDATA:
                    items.append(item[1:])
                elif item[0] == H_OFFPAGE and len(item) >= 12:
                    ov_pgno, tlen = struct.unpack_from(e + "II", item, 4)
                    items.append(pages.overflow(ov_pgno, tlen))
                else:
                    raise _damaged(what, f"page {pgno} has an item of type {item[0]} (duplicates?)")
            for i in range(0, len(items), 2):
                out[items[i]] = items[i + 1]
    return out


def read_btree(data: bytes, what: str) -> dict[bytes, bytes]:
    """Every key/data pair of a btree database, from the leftmost leaf along the leaf chain."""
    return _read("btree", _read_btree, data, what)


def _read_btree(pages: _Pages) -> dict[bytes, bytes]:
    meta, what, e = pages.meta, pages.what, pages.meta.endian
    node = meta.root
    for _ in range(64):
        _prev, _nxt, entries, _hf, _level, typ = pages.header(node)
        if typ == P_LBTREE:
            break
        if typ != P_IBTREE or not entries:
            raise _damaged(what, f"page {node} of type {typ} in the tree")
        off = pages.offsets(node, entries)[0]
        (node,) = struct.unpack_from(e + "I", pages.page(node), off + 4)
    else:
        raise _damaged(what, "the tree is too deep")
    out: dict[bytes, bytes] = {}
    for pgno, (_prev, _nxt, entries, _hf, _level, typ) in pages.chain(node, "leaf pages loop at {}"):
        if typ != P_LBTREE or entries % 2:
            raise _damaged(what, f"leaf page {pgno} has type {typ} and {entries} items")
        page = pages.page(pgno)
        items: list[bytes] = []
        for off in pages.offsets(pgno, entries):
            (length,) = struct.unpack_from(e + "H", page, off)
            kind = page[off + 2] & 0x7F  # the high bit marks a deleted item
            if page[off + 2] & 0x80:
                items.append(b"")  # a deleted pair is skipped below
                continue
            if kind == B_KEYDATA:
                if off + 3 + length > meta.pagesize:
                    raise _damaged(what, f"page {pgno} has an item past its end")
                items.append(page[off + 3:off + 3 + length])
            elif kind == B_OVERFLOW:
                ov_pgno, tlen = struct.unpack_from(e + "II", page, off + 4)
                items.append(pages.overflow(ov_pgno, tlen))
            else:
                raise _damaged(what, f"page {pgno} has an item of type {kind} (duplicates?)")
        offs = pages.offsets(pgno, entries)
        for i in range(0, len(items), 2):
            if page[offs[i] + 2] & 0x80 or page[offs[i + 1] + 2] & 0x80:
                continue
            out[items[i]] = items[i + 1]
    return out


# ---- writing ----------------------------------------------------------------------------------------------


def _align4(n: int) -> int:
    return (n + 3) & ~3


class _Writer:
    """Pages of a new file: page 0 (meta) is filled last."""

    def __init__(self, meta: Meta) -> None:
        if meta.version != 9:  # BerkeleyDB >= 4.6 (RHEL 6 and later): an older rpm could not read what we write
            raise BdbError(f"the rpm database is BerkeleyDB {meta.kind} version {meta.version}, older than copa "
                           "writes (9); patch images of RHEL/CentOS 6 or later")
        self.meta = meta
        self.pages: list[bytearray] = [bytearray(meta.pagesize)]

    def new(self) -> int:
        self.pages.append(bytearray(self.meta.pagesize))
        return len(self.pages) - 1

    def header(self, pgno: int, prev: int, nxt: int, entries: int, hf: int, level: int, typ: int) -> None:
        struct.pack_into(self.meta.endian + "IIIIIHHBB", self.pages[pgno], 0, *_NOT_LOGGED, pgno, prev, nxt,
                         entries, hf, level, typ)

    def items(self, pgno: int, items: list[bytes], prev: int, nxt: int, level: int, typ: int, align: bool) -> None:
        page = self.pages[pgno]
        end = self.meta.pagesize
        offs: list[int] = []
        for item in items:
            end -= _align4(len(item)) if align else len(item)
            page[end:end + len(item)] = item
            offs.append(end)
        if _PAGE_HEADER + 2 * len(offs) > end:
            raise AssertionError("page overfilled")
        struct.pack_into(f"{self.meta.endian}{len(offs)}H", page, _PAGE_HEADER, *offs)
        self.header(pgno, prev, nxt, len(items), end, level, typ)

    def overflow(self, data: bytes) -> int:
        """Overflow pages holding `data`; the first page's number."""
        room = self.meta.pagesize - _PAGE_HEADER
        chunks = [data[i:i + room] for i in range(0, len(data), room)] or [b""]
        first = len(self.pages)
        numbers = [self.new() for _ in chunks]
        for i, (pgno, chunk) in enumerate(zip(numbers, chunks, strict=True)):
            prev = numbers[i - 1] if i else 0
            nxt = numbers[i + 1] if i + 1 < len(numbers) else 0
            self.pages[pgno][_PAGE_HEADER:_PAGE_HEADER + len(chunk)] = chunk
            self.header(pgno, prev, nxt, 1, len(chunk), 0, P_OVERFLOW)  # entries: the reference count
        return first

    def meta_common(self, typ: int, magic: int, keys: int) -> None:
        m = self.meta
        struct.pack_into(m.endian + "IIIIIIBBBBIIIIII", self.pages[0], 0, *_NOT_LOGGED, 0, magic, 9, m.pagesize,
                         0, typ, 0, 0, 0, len(self.pages) - 1, 0, keys, keys, m.flags)
        self.pages[0][52:72] = m.uid

    def bytes(self) -> bytes:
        return b"".join(self.pages)


def write_hash(items: Mapping[bytes, bytes], meta: Meta) -> bytes:
    """A hash database of `items`, with the page size, byte order, uid and fill factor of `meta`."""
    e, size = meta.endian, meta.pagesize
    room = size - _PAGE_HEADER
    big = size // 4  # data above this goes to overflow pages (hash's ISBIG)
    per_pair = 2 * 2 + 1 + 8 + 12  # offsets, key item of a typical 4-byte key, an off-page data reference
    buckets = 2
    while len(items) > buckets * max(1, room // per_pair) * 3 // 4 or (
            meta.ffactor and len(items) > buckets * meta.ffactor):
        buckets *= 2
    w = _Writer(meta)
    for _ in range(buckets):
        w.new()
    by_bucket: dict[int, list[tuple[bytes, bytes]]] = {}
    for key, value in items.items():
        if len(key) > big:
            raise BdbError("an rpm database key is too long to write")
        h = fnv1(key)
        by_bucket.setdefault(h & (buckets - 1), []).append((key, value))
    for bucket in range(buckets):
        encoded: list[bytes] = []
        for key, value in sorted(by_bucket.get(bucket, [])):
            encoded.append(bytes([H_KEYDATA]) + key)
            if len(value) > big:
                encoded.append(struct.pack(e + "B3xII", H_OFFPAGE, w.overflow(value), len(value)))
            else:
                encoded.append(bytes([H_KEYDATA]) + value)
        # Fill the bucket page, then pages chained after it, pair by pair.
        pgno, prev = bucket + 1, 0
        while True:
            used, n = 0, 0
            while n < len(encoded) and used + len(encoded[n]) + len(encoded[n + 1]) + 4 <= room:
                used += len(encoded[n]) + len(encoded[n + 1]) + 4
                n += 2
            if n == 0 and encoded:
                raise BdbError("an rpm database item does not fit a page")
            rest = encoded[n:]
            nxt = w.new() if rest else 0
            w.items(pgno, encoded[:n], prev, nxt, 0, P_HASH, align=False)
            if not rest:
                break
            encoded, prev, pgno = rest, pgno, nxt
    w.meta_common(P_HASHMETA, HASH_MAGIC, len(items))
    spares = [1 if i <= _log2ceil(buckets) else 0 for i in range(32)]
    struct.pack_into(e + "6I32I", w.pages[0], 72, buckets - 1, buckets - 1, buckets // 2 - 1, meta.ffactor,
                     len(items), fnv1(_CHARKEY), *spares)
    return w.bytes()


def write_btree(items: Mapping[bytes, bytes], meta: Meta) -> bytes:
    """A btree database of `items`, with the page size, byte order, uid and minkey of `meta`."""
    e, size = meta.endian, meta.pagesize
    room = size - _PAGE_HEADER
    # B_MINKEY_TO_OVFLSIZE: items larger than this go to overflow pages.
    ovfl = room // (meta.minkey * 2) - (_align4(3) + 2 + 4)
    w = _Writer(meta)
    root = w.new()  # the root is page 1, filled last
    leaves: list[tuple[bytes, list[bytes]]] = []  # (first key, items)
    current: list[bytes] = []
    first_key = b""
    used = 0
    for key in sorted(items):
        value = items[key]
        if len(key) > ovfl:
            raise BdbError("an rpm database key is too long to write")
        k = struct.pack(e + "HB", len(key), B_KEYDATA) + key
        if len(value) > ovfl:
            d = struct.pack(e + "HBxII", 0, B_OVERFLOW, w.overflow(value), len(value))
        else:
            d = struct.pack(e + "HB", len(value), B_KEYDATA) + value
        need = _align4(len(k)) + _align4(len(d)) + 4
        if current and used + need > room:
            leaves.append((first_key, current))
            current, used = [], 0
        if not current:
            first_key = key
        current += [k, d]
        used += need
    leaves.append((first_key, current))
    # Levels from the leaves up: each a list of (first key, page number).
    if len(leaves) == 1:
        w.items(root, leaves[0][1], 0, 0, 1, P_LBTREE, align=True)
    else:
        numbers = [w.new() for _ in leaves]
        for i, (pgno, (_first, leaf)) in enumerate(zip(numbers, leaves, strict=True)):
            prev = numbers[i - 1] if i else 0
            nxt = numbers[i + 1] if i + 1 < len(numbers) else 0
            w.items(pgno, leaf, prev, nxt, 1, P_LBTREE, align=True)
        level = [(first, pgno) for (first, _), pgno in zip(leaves, numbers, strict=True)]
        depth = 2
        while True:
            groups: list[list[tuple[bytes, int]]] = [[]]
            used = 0
            for first, child in level:
                need = _align4(12 + len(first)) + 2
                if groups[-1] and used + need > room:
                    groups.append([])
                    used = 0
                groups[-1].append((first, child))
                used += need
            if len(groups) == 1:
                _internal(w, root, groups[0], depth, leftmost=True)
                break
            numbers = [w.new() for _ in groups]
            for i, (pgno, group) in enumerate(zip(numbers, groups, strict=True)):
                _internal(w, pgno, group, depth, leftmost=i == 0)
            level = [(group[0][0], pgno) for group, pgno in zip(groups, numbers, strict=True)]
            depth += 1
    w.meta_common(P_BTREEMETA, BTREE_MAGIC, len(items))
    struct.pack_into(e + "4I", w.pages[0], 76, meta.minkey, 0, 0x20, root)  # minkey, re_len, re_pad, root
    return w.bytes()


def _internal(w: _Writer, pgno: int, children: list[tuple[bytes, int]], depth: int, leftmost: bool) -> None:
    # A search never compares with an internal page's first key: BerkeleyDB leaves the leftmost one empty.
    items = [struct.pack(w.meta.endian + "HBxII", len(key), B_KEYDATA, child, 0) + key
             for key, child in ((b"" if i == 0 and leftmost else k, c) for i, (k, c) in enumerate(children))]
    w.items(pgno, items, 0, 0, depth, P_IBTREE, align=True)


def new_meta(kind: str, pagesize: int = 4096, uid: bytes = bytes(20)) -> Meta:
    """The meta of a new file, for databases the image lacked (tests build from scratch)."""
    return Meta(kind, "<", 9, pagesize, 0, 0, uid, charkey=fnv1(_CHARKEY))


def pairs(data: bytes, endian: str, what: str) -> Iterator[tuple[int, int]]:
    """An index value: the (hnum, idx) pairs rpm packs as two native 32-bit integers each."""
    if len(data) % 8:
        raise _damaged(what, f"an index value of {len(data)} bytes")
    return struct.iter_unpack(endian + "II", data)  # (in C: every key of every index is read at each upgrade)


def pack_pairs(values: list[tuple[int, int]], endian: str) -> bytes:
    return struct.pack(f"{endian}{2 * len(values)}I", *(n for pair in values for n in pair))
