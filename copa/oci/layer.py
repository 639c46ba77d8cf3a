"""The deterministic tar layer writer every package adapter shares.

Entries are sorted by path and written with fixed owners, modes and mtimes, so the same inputs give
the same layer digest. The tar goes straight through the compressor into a temporary file while the
uncompressed (diff_id) and compressed (digest) hashes are computed on the way: no layer is ever held
in memory. Every path is checked before anything is written.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import io
import os
import posixpath
import shutil
import tarfile
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol, cast

import zstandard
from isal import igzip

from copa import events
from copa.errors import LocalIOError, UnsafePathError
from copa.oci.digest import Digest
from copa.oci.tarstream import block_sum
from copa.openfiles import shared_descriptors

WHITEOUT_PREFIX = ".wh."
# ISA-L level 2: 15x faster than zlib's default 6 (which docker uses) for a layer ~12% larger; the patch layer's
# compression was a third of a patch run's CPU time with zlib. On the 94 MB patch layer of the Debian benchmark,
# level 3 takes 0.34 s of CPU for 30.7 MB, level 2 0.20 s for 31.4 MB, level 1 0.19 s for 31.8 MB.
_GZIP_LEVEL = 2
_GZIP_BLOCK = 1 << 20  # deflate looks back 32 KiB only: 1 MiB members cost <0.1% in size
OPAQUE = ".wh..wh..opq"


class Kind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    WHITEOUT = "whiteout"


from copa.oci.compression import Compression as Compression  # noqa: E402  # re-exported: callers import it from here


# Memoised: the effects look the same few thousand paths up many times (a refusal raises, and is not cached).
@functools.lru_cache(maxsize=1 << 16)
def clean_path(path: str, what: str = "path") -> str:
    """Normalise a path inside the image root to 'a/b/c' form, refusing anything that could escape it."""
    if "\x00" in path:
        raise UnsafePathError(f"{what} {path!r} contains a NUL byte; refusing to write it")
    stripped = path.lstrip("/")
    while stripped.startswith("./"):
        stripped = stripped[2:].lstrip("/")
    parts = [p for p in stripped.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafePathError(f"{what} {path!r} climbs out of the image root with '..'; refusing to write it")
    clean = "/".join(parts)
    # (surrogateescape: a name that is not UTF-8 is measured in the bytes it stands for)
    if len(clean.encode("utf-8", "surrogateescape")) > PATH_MAX_BYTES or any(
            len(p.encode("utf-8", "surrogateescape")) > NAME_MAX_BYTES for p in parts):
        raise UnsafePathError(f"{what} {path[:80]!r}... is too long for a file system (more than {PATH_MAX_BYTES} "
                              f"bytes, or a name of more than {NAME_MAX_BYTES}); refusing it")
    return clean


# What a file system holds (Linux's PATH_MAX and NAME_MAX): a longer path in a layer cannot be unpacked by any
# runtime, so it is refused here rather than published as an image that fails on every pull.
PATH_MAX_BYTES = 4095
NAME_MAX_BYTES = 255


class ParentCheck:
    """Refuses a path (already resolved through the image's symlinks) below something of the image that is not a
    directory: a runtime would fail to unpack it, or replace the file with a directory. `kind_of(p)` is the kind of
    the image's node at `p` ("dir", "file", "symlink"...) or None, and must not change: a directory found fine is
    not asked about again (with all of its ancestors), and the thousands of files of a patch share a few hundred."""

    def __init__(self, kind_of: Callable[[str], str | None]) -> None:
        self._kind_of = kind_of
        self._fine: set[str] = set()

    def __call__(self, path: str, what: str = "path") -> None:
        parent = posixpath.dirname(path)
        walked = []
        while parent and parent not in self._fine:
            kind = self._kind_of(parent)
            if kind is not None and kind != "dir":
                raise UnsafePathError(f"{what} /{path} would go below /{parent}, which is not a directory in the "
                                      f"image (a {kind}); refusing it")
            walked.append(parent)
            parent = posixpath.dirname(parent)
        self._fine.update(walked)


@dataclass(frozen=True, slots=True)
class Entry:
    """One tar entry of a layer. `content` opens the file data (FILE only); `linkname` for links."""

    path: str
    kind: Kind
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    size: int = 0
    content: Callable[[], BinaryIO] | None = None
    linkname: str = ""
    mtime: int | None = None
    uname: str = ""
    gname: str = ""
    pax: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def file(cls, path: str, data: bytes, mode: int = 0o644, mtime: int | None = None) -> Entry:
        return cls(path, Kind.FILE, mode, size=len(data), content=lambda: io.BytesIO(data), mtime=mtime)

    @classmethod
    def whiteout(cls, path: str) -> Entry:
        return cls(path, Kind.WHITEOUT, mode=0)


@dataclass(frozen=True, slots=True)
class LayerBlob:
    """A written layer: its compressed file on disk plus both digests."""

    path: Path
    digest: Digest
    diff_id: Digest
    size: int
    media_type: str

    def open(self) -> BinaryIO:
        return open(self.path, "rb")


class _HashingWriter(io.RawIOBase):
    """Passes writes through, hashing them. With `background`, the hashing runs on a thread of its own, in order
    (sha256 releases the GIL on large buffers): the layer's uncompressed stream is ~3 times its compressed size,
    and hashing it on the writing thread held up the tar writer. `hexdigest()` waits for it."""

    def __init__(self, out: BinaryIO, background: bool = False) -> None:
        super().__init__()
        self._out = out
        self._hash = hashlib.sha256()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="copa-hash") if background else None
        self._last: Future[None] | None = None
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self._pool is not None:
            # Hashed after this returns: the caller must not change `data` afterwards (_TarWriter hands over each
            # buffer and starts a new one).
            self._last = self._pool.submit(self._hash.update, data)
        else:
            self._hash.update(data)
        self.size += len(data)
        self._out.write(data)
        return len(data)

    def hexdigest(self) -> str:
        if self._last is not None:
            self._last.result()
        return self._hash.hexdigest()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        super().close()


def _tarinfo(entry: Entry, name: str, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = mtime
    info.mode = entry.mode & 0o7777
    info.uid, info.gid = entry.uid, entry.gid
    info.uname, info.gname = entry.uname, entry.gname
    info.pax_headers = dict(entry.pax)
    if entry.kind is Kind.FILE:
        info.type, info.size = tarfile.REGTYPE, entry.size
    elif entry.kind is Kind.DIR:
        info.type = tarfile.DIRTYPE
    elif entry.kind is Kind.SYMLINK:
        info.type, info.linkname = tarfile.SYMTYPE, entry.linkname
    elif entry.kind is Kind.HARDLINK:
        info.type, info.linkname = tarfile.LNKTYPE, entry.linkname
    else:  # whiteouts are empty regular files
        info.type, info.size, info.mode = tarfile.REGTYPE, 0, 0
    return info


def check_entries(entries: Iterable[Entry], is_base_symlink: Callable[[str], bool]) -> list[Entry]:
    """Clean every path, refuse duplicates, and refuse writing beneath a symlink.

    A layer entry below a symlink (one in this layer or in the image underneath) would be created
    wherever the link points when the runtime unpacks it: the classic tar escape. Adapters map package
    paths to their real directories first (as dpkg follows /lib -> usr/lib), so a hit here is an attack
    or a bug, never a normal package.
    """
    cleaned: dict[str, Entry] = {}
    for entry in entries:
        path = clean_path(entry.path)
        if not path:
            continue  # the root itself
        if entry.kind is Kind.WHITEOUT:
            # A deletion is written as an empty '.wh.<name>' file beside the deleted path.
            path = posixpath.join(posixpath.dirname(path), WHITEOUT_PREFIX + posixpath.basename(path))
        if path in cleaned:
            raise UnsafePathError(f"layer path {path!r} appears twice; refusing an ambiguous layer")
        linkname = entry.linkname
        if entry.kind is Kind.HARDLINK:
            linkname = clean_path(linkname, "hardlink target")
        cleaned[path] = Entry(
            path, entry.kind, entry.mode, entry.uid, entry.gid, entry.size, entry.content, linkname,
            entry.mtime, entry.uname, entry.gname, entry.pax,
        )
    symlinks = {p for p, e in cleaned.items() if e.kind is Kind.SYMLINK}
    # Directories whose every ancestor (and themselves) passed: thousands of files share a few hundred of them.
    passed: set[str] = set()
    for path, entry in cleaned.items():
        parent = posixpath.dirname(path)
        climbed = []
        while parent and parent not in passed:
            if parent in symlinks or (parent not in cleaned and is_base_symlink(parent)):
                raise UnsafePathError(
                    f"layer path {path!r} would be written through the symlink {parent!r}; refusing it"
                )
            climbed.append(parent)
            parent = posixpath.dirname(parent)
        passed.update(climbed)
        if entry.kind is Kind.HARDLINK and entry.linkname not in cleaned and is_base_symlink(entry.linkname):
            raise UnsafePathError(f"hardlink {path!r} points at the symlink {entry.linkname!r}; refusing it")
    return _links_after_targets([cleaned[p] for p in sorted(cleaned)])


def _links_after_targets(ordered: list[Entry]) -> list[Entry]:
    """Sorted order, except that a hardlink waits until its target is written (tar readers need the target)."""
    paths = {e.path for e in ordered}
    written: set[str] = set()
    waiting: dict[str, list[Entry]] = {}
    out: list[Entry] = []

    def emit(entry: Entry) -> None:
        out.append(entry)
        written.add(entry.path)
        for link in waiting.pop(entry.path, []):
            emit(link)

    for entry in ordered:
        if entry.kind is Kind.HARDLINK and entry.linkname in paths and entry.linkname not in written:
            waiting.setdefault(entry.linkname, []).append(entry)
        else:
            emit(entry)
    if waiting:
        raise UnsafePathError(f"hardlinks to {sorted(waiting)} form a cycle; refusing the layer")
    return out


class LayerWatch(Protocol):
    """Told how far the compressed layer file has been written, as it is written (copa.oci.registry's
    StreamedUpload sends it to the registry meanwhile)."""

    def started(self, path: Path) -> None:
        """The file being written (under a temporary name: it is renamed at the end, an open file stays valid)."""

    def grew(self, size: int) -> None:
        """The first `size` bytes of the file are written and flushed, final."""

    def ended(self, size: int | None) -> None:
        """The layer is complete at `size` bytes; None: its writing failed (the file is gone)."""


class _Watched(io.RawIOBase):
    """Writes through to a file, flushing and telling `watch` each time another `step` bytes are in it."""

    def __init__(self, out: BinaryIO, watch: LayerWatch, step: int = 64 << 10) -> None:
        super().__init__()
        self._out, self._watch, self._step = out, watch, step
        self.size = 0
        self._told = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._out.write(data)
        self.size += len(data)
        if self.size - self._told >= self._step:
            self._out.flush()
            self._told = self.size
            self._watch.grew(self.size)
        return len(data)


def write_layer(
    entries: Iterable[Entry],
    directory: Path,
    *,
    compression: Compression = Compression.GZIP,
    docker: bool = False,
    default_mtime: int = 0,
    clamp_mtime: int | None = None,
    is_base_symlink: Callable[[str], bool] = lambda _p: False,
    watch: LayerWatch | None = None,
) -> LayerBlob:
    """Write `entries` as one compressed tar layer file in `directory` and return its digests. `watch` follows the
    compressed file as it grows (and is told how it ended, whatever happens)."""
    try:
        blob = _write_layer(entries, directory, compression, docker, default_mtime, clamp_mtime, is_base_symlink,
                            watch)
    except BaseException:
        if watch is not None:
            watch.ended(None)
        raise
    if watch is not None:
        watch.ended(blob.size)
    return blob


def _write_layer(entries: Iterable[Entry], directory: Path, compression: Compression, docker: bool,
                 default_mtime: int, clamp_mtime: int | None, is_base_symlink: Callable[[str], bool],
                 watch: LayerWatch | None) -> LayerBlob:
    media_type = compression.media_type(docker)
    ordered = check_entries(entries, is_base_symlink)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix="layer-", suffix=".tmp", dir=directory)
    except OSError as e:
        raise _disk_error(directory, e) from None
    tmp = Path(tmp_name)
    gz: _ParallelGzip | None = None
    uncompressed: _HashingWriter | None = None
    try:
        # Progress counts the file contents put into the layer (known up front), compression included in the time.
        content = sum(e.size for e in ordered if e.kind is Kind.FILE)
        # The contents are slices of a few spool files: one descriptor each while the layer is written (copa.openfiles).
        with os.fdopen(fd, "wb") as raw_out, events.task(events.Kind.LAYER_WRITE, "patch layer", content) as task, \
                shared_descriptors():
            if watch is not None:
                watch.started(tmp)
            compressed = _HashingWriter(cast(BinaryIO, _Watched(raw_out, watch)) if watch is not None else raw_out)
            sink = cast(BinaryIO, compressed)
            comp_stream: BinaryIO
            if compression is Compression.GZIP:
                gz = _ParallelGzip(sink)
                comp_stream = cast(BinaryIO, gz)
            else:
                comp_stream = cast(BinaryIO, zstandard.ZstdCompressor(level=3).stream_writer(sink, closefd=False))
            uncompressed = _HashingWriter(comp_stream, background=True)
            tar = _TarWriter(cast(BinaryIO, uncompressed))
            for entry in ordered:
                mtime = entry.mtime if entry.mtime is not None else default_mtime
                if clamp_mtime is not None:
                    mtime = min(mtime, clamp_mtime)
                info = _tarinfo(entry, entry.path, mtime)
                if entry.kind is Kind.FILE:
                    if entry.content is None:
                        raise ValueError(f"file entry {entry.path} has no content")
                    with entry.content() as src:
                        tar.add(info, src)  # reads exactly entry.size bytes; short content is refused
                    task.advance(entry.size)
                else:
                    tar.add(info)
            tar.close()
            comp_stream.close()
        digest = Digest("sha256", compressed.hexdigest())
        diff_id = Digest("sha256", uncompressed.hexdigest())
        final = directory / f"{digest.hex}.layer"
        shutil.move(tmp, final)
        return LayerBlob(final, digest, diff_id, compressed.size, media_type)
    except OSError as e:
        # Package content is read from our own staging files and the layer goes to our work directory: an OSError
        # here is the local disk (ENOSPC, EIO), not bad input.
        raise _disk_error(directory, e) from None
    finally:
        if gz is not None:
            gz.abort()  # no-op after a clean close; after a failure, stops the workers without writing more
        if uncompressed is not None:
            uncompressed.close()  # its hashing thread
        tmp.unlink(missing_ok=True)  # gone already after the move; a failure leaves nothing half-written


def _disk_error(directory: Path, e: OSError) -> LocalIOError:
    return LocalIOError(f"cannot write the patch layer under {directory} ({e.strerror or e}); free space there or "
                        "set TMPDIR to a larger file system")


class _ParallelGzip(io.RawIOBase):
    """gzip on every core: the stream is cut into fixed-size blocks, each compressed as its own gzip member.

    Concatenated members are one valid gzip stream (RFC 1952) that every layer reader accepts; fixed block
    boundaries, mtime 0 and no file name keep the output identical for identical input. At most a few blocks
    are in flight, so memory stays bounded whatever the layer size.

    The buffers written are kept (not copied) until their bytes are cut into blocks, each block joined from them
    once: the caller must not change a buffer after writing it (_TarWriter hands over each one and starts anew).
    Copying them into a growing buffer and slicing blocks out of it copied every byte of a layer three times.
    """

    def __init__(self, out: BinaryIO) -> None:
        super().__init__()
        self._out = out
        self._parts: deque[memoryview] = deque()  # written, not yet in a block
        self._held = 0  # their bytes
        self._blocks = 0  # submitted so far
        self._workers = max(1, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="copa-gzip")
        self._pending: deque[Future[bytes]] = deque()

    def writable(self) -> bool:
        return True

    def _take(self, size: int) -> bytes:
        """The next `size` held bytes (all of them, if fewer), as one block."""
        pieces = []
        while size and self._parts:
            part = self._parts[0]
            if len(part) <= size:
                pieces.append(part)
                self._parts.popleft()
            else:
                pieces.append(part[:size])
                self._parts[0] = part[size:]
            size -= len(pieces[-1])
            self._held -= len(pieces[-1])
        return b"".join(pieces)

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        if view:
            self._parts.append(view)
            self._held += len(view)
        while self._held >= _GZIP_BLOCK:
            self._submit(self._take(_GZIP_BLOCK))
        # Blocks compressed already go to the file now, in order, not when the queue is full: a layer uploaded
        # while it is written (copa.oci.registry.StreamedUpload) can only send what is in the file.
        while self._pending and self._pending[0].done():
            self._out.write(self._pending.popleft().result())
        return len(data)

    def _submit(self, block: bytes) -> None:
        self._blocks += 1
        self._pending.append(self._pool.submit(igzip.compress, block, _GZIP_LEVEL, mtime=0))
        while len(self._pending) > 2 * self._workers:
            self._out.write(self._pending.popleft().result())

    def abort(self) -> None:
        """Stop the workers and drop what is pending (after a failure: the output is discarded anyway)."""
        self._pending.clear()
        self._parts.clear()
        self._held = 0
        self._pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        if self.closed:
            return
        try:
            # The rest as the last block; an empty stream is one empty member. (Not "nothing pending": blocks
            # already written out are not pending, and an extra empty member would make the bytes depend on timing.)
            if self._held or not self._blocks:
                self._submit(self._take(self._held))
            while self._pending:
                self._out.write(self._pending.popleft().result())
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            super().close()


_OCTAL_7 = 8 ** 7  # the largest value + 1 of an 8-byte octal field (uid, gid) and of a 12-byte one (size, mtime)
_OCTAL_11 = 8 ** 11
_DEVICES = (tarfile.CHRTYPE, tarfile.BLKTYPE)


def _plain_header(info: tarfile.TarInfo) -> bytes | None:
    """The header `info.tobuf(PAX_FORMAT)` writes for a member that needs no pax record (ASCII names that fit their
    fields, numbers that fit theirs: nearly every package file), built directly; None for any other member, which
    tobuf then writes. tarfile's own header code was a fifth of writing a layer. (Byte for byte the same:
    tests/test_layer_tarwriter.py.)"""
    name, linkname, uname, gname = info.name, info.linkname, info.uname, info.gname
    if info.type == tarfile.DIRTYPE and not name.endswith("/"):
        name += "/"
    uid, gid, size, mtime = info.uid, info.gid, info.size, info.mtime
    if (info.pax_headers or info.type in _DEVICES or len(name) > 100 or len(linkname) > 100 or len(uname) > 32
            or len(gname) > 32 or not (name.isascii() and linkname.isascii() and uname.isascii()
                                       and gname.isascii())
            or type(uid) is not int or type(gid) is not int or type(size) is not int or type(mtime) is not int
            or not (0 <= uid < _OCTAL_7 and 0 <= gid < _OCTAL_7 and 0 <= size < _OCTAL_11 and 0 <= mtime < _OCTAL_11)):
        return None
    head = b"".join((
        name.encode("ascii").ljust(100, b"\0"), b"%07o\0" % (info.mode & 0o7777), b"%07o\0" % uid, b"%07o\0" % gid,
        b"%011o\0" % size, b"%011o\0" % mtime, b"        ", info.type, linkname.encode("ascii").ljust(100, b"\0"),
        tarfile.POSIX_MAGIC, uname.encode("ascii").ljust(32, b"\0"), gname.encode("ascii").ljust(32, b"\0"),
        bytes(8 + 8 + 155 + 12),  # no device numbers, no ustar prefix; the block's padding
    ))
    # The checksum counts its own field as eight spaces; tarfile writes six octal digits, a NUL and keeps the space.
    return head[:148] + b"%06o\0" % block_sum(head) + head[155:]


class _TarWriter:
    """Writes a tar stream byte for byte as `tarfile.open(mode="w|", format=PAX_FORMAT)` does (headers from
    `TarInfo.tobuf`, NUL padding to 512, two NUL blocks and padding to a 10240-byte record at the end), in large
    writes: tarfile's stream copies its buffer on every 10 KiB record, which cost more than the compression."""

    _FLUSH = 1 << 20

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._buf = bytearray()
        self._offset = 0

    def _emit(self, data: bytes | bytearray | memoryview) -> None:
        self._offset += len(data)
        if len(data) >= self._FLUSH // 2:
            # A large piece of a file's content goes out as it is (the reader made it for us and drops it): copied
            # into the buffer it was one more copy of most of a layer's bytes.
            self._flush()
            self._out.write(data)
            return
        self._buf += data
        if len(self._buf) >= self._FLUSH:
            self._flush()

    def _flush(self) -> None:
        if self._buf:
            self._out.write(self._buf)
            self._buf = bytearray()  # the consumer may still hold the old one

    def add(self, info: tarfile.TarInfo, content: BinaryIO | None = None) -> None:
        header = _plain_header(info)
        if header is None:
            header = info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
        self._emit(header)
        if content is None or not info.isreg():
            return
        left = info.size
        while left > 0:
            chunk = content.read(min(left, self._FLUSH))
            if not chunk:
                raise UnsafePathError(f"content of {info.name!r} is shorter than its declared size")
            self._emit(chunk)
            left -= len(chunk)
        if info.size % tarfile.BLOCKSIZE:
            self._emit(bytes(tarfile.BLOCKSIZE - info.size % tarfile.BLOCKSIZE))

    def close(self) -> None:
        self._emit(bytes(2 * tarfile.BLOCKSIZE))
        if self._offset % tarfile.RECORDSIZE:
            self._emit(bytes(tarfile.RECORDSIZE - self._offset % tarfile.RECORDSIZE))
        self._flush()
