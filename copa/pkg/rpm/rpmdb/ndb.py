"""rpm's ndb Packages.db (SUSE since 15 SP?, rpm >= 4.15 with the ndb backend), read and written in Python.

The format (rpm's lib/backend/ndb/rpmpkg.c), little-endian, in 16-byte blocks:

* a 32-byte header: "RpmP", version 0, generation (bumped by every write), the number of 4096-byte slot pages,
  the next package index (hnum) to give out;
* slots after it, 16 bytes each, filling the slot pages: "Slot", package index (0: free), first block, blocks;
* each header blob at its slot's block: "BlbS", package index, generation it was written in, length, the blob,
  zero padding, then a tail: adler32 of everything from "BlbS" through the padding, the length again, "BlbE".

The indexes live apart, in Index.db (rpm's xdb format), stamped with the Packages.db generation they were built
from: rpm rebuilds them when the stamps differ or the file is missing. So an upgrade writes Packages.db afresh
(blobs packed after the slot pages, the generation bumped) and deletes Index.db, which rpm regenerates on its
next run ("Generating N missing index(es)"), as it does after copying a Packages.db alone.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping

from copa.errors import UnsupportedImageError

_MAGIC = b"RpmP"
_SLOT = b"Slot"
_HEAD = b"BlbS"
_TAIL = b"BlbE"
_PAGE = 4096
_BLOCK = 16
_HEADER = 32


def _damaged(what: str, detail: str) -> UnsupportedImageError:
    return UnsupportedImageError(f"{what}: the rpm database (ndb) is damaged ({detail}); rebuild it in the "
                                 "image (rpmdb --rebuilddb) and try again")


def read_packages(data: bytes, what: str = "/var/lib/rpm/Packages.db") -> tuple[dict[int, bytes], int, int]:
    """The header blobs by package index, the generation, and the next package index."""
    if len(data) < _HEADER or data[:4] != _MAGIC:
        raise _damaged(what, "no RpmP header")
    version, generation, slot_pages, next_index = struct.unpack_from("<4I", data, 4)
    if version != 0:
        raise _damaged(what, f"version {version}")
    if not slot_pages or slot_pages * _PAGE > len(data):
        raise _damaged(what, f"{slot_pages} slot pages in {len(data)} bytes")
    blobs: dict[int, bytes] = {}
    for off in range(_HEADER, slot_pages * _PAGE, 16):
        magic, index, block, count = struct.unpack_from("<4sIII", data, off)
        if magic != _SLOT:
            raise _damaged(what, f"slot at {off} has no Slot magic")
        if not index:
            continue
        start, end = block * _BLOCK, (block + count) * _BLOCK
        if start < slot_pages * _PAGE or end > len(data) or count * _BLOCK < 16 + 12:
            raise _damaged(what, f"package {index}'s blob lies outside the file")
        head, blob_index, _gen, length = struct.unpack_from("<4sIII", data, start)
        checksum, tail_length, tail = struct.unpack_from("<II4s", data, end - 12)
        if head != _HEAD or tail != _TAIL or blob_index != index or length != tail_length \
                or 16 + length + 12 > end - start:
            raise _damaged(what, f"package {index}'s blob header or tail does not match its slot")
        if zlib.adler32(data[start:end - 12]) != checksum:
            raise _damaged(what, f"package {index}'s blob fails its checksum")
        if index in blobs:
            raise _damaged(what, f"package {index} has two slots")
        blobs[index] = data[start + 16:start + 16 + length]
    return blobs, generation, next_index


def write_packages(blobs: Mapping[int, bytes], generation: int, next_index: int) -> bytes:
    """A Packages.db holding `blobs` (by package index), every blob written in `generation`."""
    slots_needed = 2 + len(blobs)  # the header takes the first two slots' room
    slot_pages = max(1, -(-slots_needed * 16 // _PAGE))
    out = bytearray(struct.pack("<4s4I", _MAGIC, 0, generation, slot_pages, next_index))
    out += bytes(_HEADER - len(out))
    slots: list[bytes] = []
    body = bytearray()
    block = slot_pages * _PAGE // _BLOCK
    for index in sorted(blobs):
        blob = blobs[index]
        size = 16 + len(blob) + 12
        count = -(-size // _BLOCK)
        item = bytearray(struct.pack("<4sIII", _HEAD, index, generation, len(blob)) + blob)
        item += bytes(count * _BLOCK - 12 - len(item))
        item += struct.pack("<II4s", zlib.adler32(item), len(blob), _TAIL)
        slots.append(struct.pack("<4sIII", _SLOT, index, block, count))
        body += item
        block += count
    out += b"".join(slots)
    while len(out) < slot_pages * _PAGE:
        out += struct.pack("<4sIII", _SLOT, 0, 0, 0)
    return bytes(out + body)
