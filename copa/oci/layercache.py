"""What reading one layer taught `rootfs.scan`, kept by the layer blob's digest so a sweep reads each base layer once.

A record is the layer's tar members in stream order (path, type, mode, owner, size, link target) with the contents
scan captured (package databases, /etc, ...), and the hardlink targets outside the captured paths that a second
read would fetch. `scan` replays a record exactly as it would replay the tar stream, so the merged View is the same
with or without the cache. Records depend on the capture spec (which paths, which size limits): it is part of the
key, with a format version.

On disk (in the copa cache's derived entries, which the cache verifies by sha256 on first use): one zstd frame of
MAGIC, a big-endian u64 header length, a JSON header, then the captured contents back to back. JSON and offsets
parsed here, never pickle: the directory may be shared with other hosts, and a record is data, not code.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import zstandard

from copa.oci.digest import Digest

# Bump when what a record holds changes (which members get content, the encoding, path cleaning). 3: records are
# keyed by the blob's digest.
FORMAT = 3
MAGIC = b"copa-layer-record\n"
_MAX_RECORD = 1 << 30  # a decompressed record beyond this is not one we wrote
_KINDS = frozenset({"file", "dir", "symlink", "hardlink", "other"})


class NamedStore(Protocol):
    """The part of copa's cache (copa.pkg.cache.Cache) a record store needs: verified, atomic named entries."""

    def named(self, name: str) -> Path: ...

    def write_named(self, name: str, write: Callable[[BinaryIO], object]) -> Path: ...


@dataclass(frozen=True, slots=True)
class Member:
    """One tar member as scan sees it; `content` is what scan captured of it (None: not captured)."""

    path: str  # normalised: no leading '/', no '.' parts
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    linkname: str
    content: bytes | None


@dataclass(frozen=True, slots=True)
class LayerRecord:
    members: tuple[Member, ...]
    targets: dict[str, bytes]  # hardlink targets outside the captured paths -> their content in this layer


class CorruptRecord(ValueError):
    pass


def encode(record: LayerRecord, out: BinaryIO) -> None:
    blobs: list[bytes] = []
    offset = 0

    def place(data: bytes | None) -> list[int]:
        nonlocal offset
        if data is None:
            return [-1, 0]
        at = offset
        blobs.append(data)
        offset += len(data)
        return [at, len(data)]

    members = [[m.path, m.kind, m.mode, m.uid, m.gid, m.size, m.linkname, *place(m.content)] for m in record.members]
    targets = [[path, *place(data)] for path, data in record.targets.items()]
    header = json.dumps({"format": FORMAT, "members": members, "targets": targets},
                        separators=(",", ":")).encode()
    with zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False) as z:
        z.write(MAGIC)
        z.write(struct.pack(">Q", len(header)))
        z.write(header)
        for blob in blobs:
            z.write(blob)


def decode(raw: BinaryIO) -> LayerRecord:
    """Parse a record; CorruptRecord for anything that is not exactly what `encode` writes."""
    try:
        data = zstandard.ZstdDecompressor().stream_reader(raw).read(_MAX_RECORD + 1)
    except zstandard.ZstdError as e:
        raise CorruptRecord(f"not zstd: {e}") from None
    if len(data) > _MAX_RECORD or not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        raise CorruptRecord("bad magic or size")
    (length,) = struct.unpack_from(">Q", data, len(MAGIC))
    start = len(MAGIC) + 8
    body = start + length
    if body > len(data):
        raise CorruptRecord("header runs past the end")
    try:
        header = json.loads(data[start:body])
    except ValueError as e:
        raise CorruptRecord(f"header: {e}") from None
    blobs = memoryview(data)[body:]
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CorruptRecord("unknown format")

    def blob(at: Any, size: Any) -> bytes | None:
        if not isinstance(at, int) or not isinstance(size, int):
            raise CorruptRecord("bad offset")
        if at == -1:
            return None
        if at < 0 or size < 0 or at + size > len(blobs):
            raise CorruptRecord("offset out of range")
        return bytes(blobs[at:at + size])

    members: list[Member] = []
    targets: dict[str, bytes] = {}
    try:
        for path, kind, mode, uid, gid, size, linkname, at, n in header["members"]:
            if not (isinstance(path, str) and kind in _KINDS and isinstance(linkname, str)
                    and all(isinstance(v, int) for v in (mode, uid, gid, size))):
                raise CorruptRecord("bad member")
            members.append(Member(path, kind, mode, uid, gid, size, linkname, blob(at, n)))
        for path, at, n in header["targets"]:
            content = blob(at, n)
            if not isinstance(path, str) or content is None:
                raise CorruptRecord("bad target")
            targets[path] = content
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, CorruptRecord):
            raise
        raise CorruptRecord(f"bad header: {e}") from None
    return LayerRecord(tuple(members), targets)


class LayerCache:
    """Layer records in a copa cache directory, by (blob digest, capture spec, format)."""

    def __init__(self, store: NamedStore) -> None:
        self.store = store
        self.hits = 0
        self.misses = 0

    @staticmethod
    def name(blob: Digest, spec: str) -> str:
        key = hashlib.sha256(f"{FORMAT}\0{blob}\0{spec}".encode()).hexdigest()
        return f"layers/{key[:2]}/{key}.rec"

    def get(self, blob: Digest, spec: str) -> LayerRecord | None:
        path = self.store.named(self.name(blob, spec))
        try:
            with path.open("rb") as f:
                record = decode(f)
        except OSError:
            self.misses += 1
            return None
        except CorruptRecord:
            # The sum matched (or there was none) yet it does not parse: written by an incompatible copa. Replace it.
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        self.hits += 1
        return record

    def put(self, blob: Digest, spec: str, record: LayerRecord) -> None:
        self.store.write_named(self.name(blob, spec), lambda out: encode(record, out))


def roundtrip(record: LayerRecord) -> LayerRecord:
    """encode then decode in memory (tests and a self-check)."""
    buffer = io.BytesIO()
    encode(record, buffer)
    buffer.seek(0)
    return decode(buffer)
