"""Reading a .rpm file, streamed: lead, signature header, main header, compressed cpio payload.

    lead            96 bytes: ed ab ee db, format 3.0, type, arch, name, os, signature type 5
    signature       a header (HEADERSIGNATURES region) padded to 8 bytes: header digests, sizes, signatures
    main header     a header (HEADERIMMUTABLE region): everything about the package and its files
    payload         cpio (cpio.py) compressed by PAYLOADCOMPRESSOR, to the end of the file

Before anything of the package is used: the main header's SHA256HEADER (else SHA1HEADER) digest must match;
the caller's `check` (e.g. signature.verify_headers: the OpenPGP signature over the main header) runs; then
the payload streams through its digests (PAYLOADDIGEST over the compressed bytes, PAYLOADDIGESTALT over the
cpio; the signature header's MD5 over header + payload for packages older than rpm 4.14 that have neither)
and each regular file through its FILEDIGESTS entry. Files come out in the header's order with the header's
metadata (as rpm installs them, the cpio fields being only a cross-check); small contents stay in memory,
larger ones go to one spool file per package, so memory stays bounded whatever the package size.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import lzma
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, cast

import zstandard
from isal import igzip

from copa.errors import IntegrityError, LocalIOError, UnsupportedImageError
from copa.oci.image import CORRUPT_STREAM
from copa.oci.layer import clean_path
from copa.pkg.rpm.cpio import CpioReader
from copa.pkg.rpm.header import Header
from copa.pkg.rpm.tags import DigestAlgo, FileFlag, Sig, Tag
from copa.pkg.streams import MAX_UNPACKED_BYTES, open_content

LEAD_MAGIC = b"\xed\xab\xee\xdb"
LEAD_SIZE = 96
_SIGTYPE_HEADERSIG = 5  # the lead's signature type: a signature header follows
_INLINE_MAX = 64 << 10  # files up to this size stay in memory...
_INLINE_BUDGET = 2 << 20  # ...up to this much per package; the rest is spooled to disk
# Reads and spool writes in pieces of this size: packages are read two or more at once (one per core), and bigger
# buffers held by each reader raise the peak RSS without saving measurable CPU.
_CHUNK = 256 << 10
_ZEROS = bytes(_CHUNK)
# What may follow the cpio trailer inside the payload (rpm writes none; old cpio writers padded to 512-byte blocks):
# anything more is not the package's, and decompressing an unbounded tail of zeros would be a bomb.
_TAIL_MAX = 64 << 10
_HASHES = {DigestAlgo.MD5: "md5", DigestAlgo.SHA1: "sha1", DigestAlgo.SHA224: "sha224", DigestAlgo.SHA256: "sha256",
           DigestAlgo.SHA384: "sha384", DigestAlgo.SHA512: "sha512"}
_CORRUPT: tuple[type[Exception], ...] = (lzma.LZMAError, zstandard.ZstdError, *CORRUPT_STREAM)


class BadRpm(IntegrityError):
    """A package that is corrupt, truncated or does not match its digests (exit 5)."""


class UnsupportedRpm(UnsupportedImageError):
    """A package in a format copa does not read: a source or v3 package, an unknown compressor (exit 6)."""


@dataclass(frozen=True, slots=True)
class Lead:
    major: int
    minor: int
    type: int  # 0 binary, 1 source
    name: str


@dataclass(frozen=True)
class RpmHeaders:
    """What precedes the payload. `header_bytes` is the main header exactly as in the file: what its digests
    and OpenPGP signature cover."""

    what: str
    lead: Lead
    signature: Header
    header: Header
    header_bytes: bytes

    @property
    def nevra(self) -> str:
        h = self.header
        epoch = h.integer(Tag.EPOCH)
        evr = f"{epoch}:" if epoch is not None else ""
        return f"{h.string(Tag.NAME)}-{evr}{h.string(Tag.VERSION)}-{h.string(Tag.RELEASE)}.{h.string(Tag.ARCH)}"


@dataclass(frozen=True, slots=True)
class RpmFile:
    """One file of the package, as the header describes it.

    `kind` is file, dir, symlink, hardlink (its content is `linkname`'s, an earlier file of the same inode),
    chardev, blockdev or fifo. A %ghost file is listed (rpm records it in its database) but has no content."""

    path: str  # normalised, no leading slash ("usr/bin/x")
    kind: str
    mode: int  # permission bits, setuid/setgid/sticky included (the file type is `kind`)
    user: str
    group: str
    mtime: int
    size: int
    linkname: str  # symlink target as in FILELINKTOS; for a hardlink the normalised path it links to
    flags: FileFlag
    digest: str  # FILEDIGESTS entry (hex, algorithm RpmContents.digest_algo); "" for non-regular files
    inode: int
    rdev: int
    caps: str  # FILECAPS text ("cap_net_raw=ep"), "" for none
    lang: str  # FILELANGS, "" for every language
    staged: Path | None = None  # the package's spool file holding the content of its larger files...
    inline: bytes | None = None  # ...or the content in memory
    offset: int = 0  # where the content starts in `staged`

    @property
    def ghost(self) -> bool:
        return bool(self.flags & FileFlag.GHOST)

    @property
    def config(self) -> bool:
        return bool(self.flags & FileFlag.CONFIG)

    @property
    def noreplace(self) -> bool:
        return bool(self.flags & FileFlag.NOREPLACE)

    @property
    def has_content(self) -> bool:
        return self.staged is not None or self.inline is not None

    def open(self) -> BinaryIO:
        return open_content(self.path, self.inline, self.staged, self.offset, self.size)


@dataclass(frozen=True)
class RpmContents:
    headers: RpmHeaders
    files: tuple[RpmFile, ...]  # header order (sorted by path), ghosts included
    digest_algo: DigestAlgo

    @property
    def header(self) -> Header:
        return self.headers.header


HeaderCheck = Callable[[RpmHeaders], None]


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


class _Hashing(io.RawIOBase):
    """Passes a stream through, hashing every byte read and counting them."""

    def __init__(self, src: BinaryIO, hashes: list[_Hasher]) -> None:
        super().__init__()
        self._src, self.hashes, self.count = src, hashes, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer)
        chunk = self._src.read(len(view))
        view[:len(chunk)] = chunk
        for h in self.hashes:
            h.update(chunk)
        self.count += len(chunk)
        return len(chunk)

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


# --- lead and headers ----------------------------------------------------------------------------------------


def read_headers(f: BinaryIO, what: str) -> RpmHeaders:
    """Lead, signature header and main header from the start of a package; the main header's digest checked.
    Leaves `f` at the payload."""
    lead_raw = f.read(LEAD_SIZE)
    if len(lead_raw) != LEAD_SIZE or lead_raw[:4] != LEAD_MAGIC:
        raise BadRpm(f"{what} is not an rpm package (no rpm lead)")
    lead = Lead(lead_raw[4], lead_raw[5], int.from_bytes(lead_raw[6:8], "big"),
                lead_raw[10:76].split(b"\0", 1)[0].decode("utf-8", "replace"))
    if lead.major not in (3, 4) or int.from_bytes(lead_raw[78:80], "big") != _SIGTYPE_HEADERSIG:
        raise UnsupportedRpm(f"{what}: rpm package format {lead.major}.{lead.minor} is not supported "
                             "(only packages made by rpm 4 and later)")
    if lead.type != 0:
        raise UnsupportedRpm(f"{what} is a source package; copa installs binary packages only")
    signature, sig_raw = Header.read(f, f"{what} (signature header)", BadRpm)
    pad = -len(sig_raw) % 8
    if f.read(pad) != b"\0" * pad:
        raise BadRpm(f"{what}: signature header padding is missing or not zero; the package is corrupt")
    header, header_raw = Header.read(f, what, BadRpm)
    headers = RpmHeaders(what, lead, signature, header, header_raw)
    _check_header_digest(headers)
    return headers


def _check_header_digest(h: RpmHeaders) -> None:
    if h.signature.region is None or h.header.region is None:
        raise BadRpm(f"{h.what}: headers lack their immutable regions; the package is corrupt")
    for tag, algo in ((Tag.SHA256HEADER, "sha256"), (Tag.SHA1HEADER, "sha1")):
        expected = h.signature.string(tag)
        if expected is None:
            continue
        if hashlib.new(algo, h.header_bytes).hexdigest() != expected.lower():
            raise BadRpm(f"{h.what}: header {algo} digest does not match; the package is corrupt or tampered")
        return
    raise BadRpm(f"{h.what}: has no header digest (SHA256HEADER or SHA1HEADER); refusing it")


# --- payload -------------------------------------------------------------------------------------------------


def _decompressor(name: str, raw: BinaryIO, what: str) -> BinaryIO:
    if name == "gzip":
        return cast(BinaryIO, igzip.GzipFile(fileobj=raw))  # type: ignore[no-untyped-call]
    if name == "xz":
        return cast(BinaryIO, lzma.LZMAFile(raw, format=lzma.FORMAT_XZ))
    if name == "lzma":
        return cast(BinaryIO, lzma.LZMAFile(raw, format=lzma.FORMAT_ALONE))
    if name == "bzip2":
        return cast(BinaryIO, bz2.BZ2File(raw))
    if name == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return cast(BinaryIO, io.BufferedReader(reader))
    if name == "":
        return raw
    raise UnsupportedRpm(f"{what}: payload compressor {name!r} is not supported (gzip, bzip2, xz, lzma, zstd)")


def _hasher(algo: int, what: str) -> _Hasher:
    name = _HASHES.get(algo)  # type: ignore[call-overload]
    if name is None:
        raise UnsupportedRpm(f"{what}: digest algorithm {algo} is not supported")
    return cast(_Hasher, hashlib.new(name))


@dataclass(frozen=True, slots=True)
class _Meta:
    """The header's per-file arrays, read once and checked to be as long as the file list."""

    paths: tuple[str, ...]
    modes: tuple[int, ...]
    sizes: tuple[int, ...]
    users: tuple[str, ...]
    groups: tuple[str, ...]
    mtimes: tuple[int, ...]
    links: tuple[str, ...]
    flags: tuple[int, ...]
    digests: tuple[str, ...]
    inodes: tuple[int, ...]
    devices: tuple[int, ...]
    rdevs: tuple[int, ...]
    caps: tuple[str, ...]
    langs: tuple[str, ...]


def _file_meta(h: Header, what: str) -> _Meta:
    basenames = h.strings(Tag.BASENAMES)
    if basenames:
        dirnames, dirindexes = h.strings(Tag.DIRNAMES), h.ints(Tag.DIRINDEXES)
        if len(dirindexes) != len(basenames) or any(i >= len(dirnames) for i in dirindexes):
            raise BadRpm(f"{what}: header's file name arrays disagree; the package is corrupt")
        paths = tuple(dirnames[i] + b for i, b in zip(dirindexes, basenames, strict=True))
    else:
        paths = h.strings(Tag.OLDFILENAMES)
    n = len(paths)

    def ints(tag: Tag, default: int = 0, required: bool = True) -> tuple[int, ...]:
        values = h.ints(tag)
        if not values and not (required and n):
            return (default,) * n
        if len(values) != n:
            raise BadRpm(f"{what}: header has {len(values)} {tag.name} values for {n} files; the package is corrupt")
        return values

    def strings(tag: Tag, required: bool = True) -> tuple[str, ...]:
        values = h.strings(tag)
        if not values and not (required and n):
            return ("",) * n
        if len(values) != n:
            raise BadRpm(f"{what}: header has {len(values)} {tag.name} values for {n} files; the package is corrupt")
        return values

    sizes = ints(Tag.LONGFILESIZES) if Tag.LONGFILESIZES in h else ints(Tag.FILESIZES)
    return _Meta(paths, ints(Tag.FILEMODES), sizes, strings(Tag.FILEUSERNAME), strings(Tag.FILEGROUPNAME),
                 ints(Tag.FILEMTIMES), strings(Tag.FILELINKTOS), ints(Tag.FILEFLAGS, required=False),
                 strings(Tag.FILEDIGESTS), ints(Tag.FILEINODES, required=False),
                 ints(Tag.FILEDEVICES, required=False), ints(Tag.FILERDEVS, required=False),
                 strings(Tag.FILECAPS, required=False), strings(Tag.FILELANGS, required=False))


_KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFCHR: "chardev",
          stat.S_IFBLK: "blockdev", stat.S_IFIFO: "fifo"}


class _Spool:
    """Larger contents appended to one file per package; a failed write is the local disk's fault."""

    def __init__(self, path: Path, what: str) -> None:
        self.path, self._what, self.position = path, what, 0
        self._f: BinaryIO | None = None

    def _error(self, e: OSError) -> LocalIOError:
        return LocalIOError(f"{self._what}: cannot stage package files under {self.path.parent} "
                            f"({e.strerror or e}); free space there or set TMPDIR to a larger file system")

    def write(self, data: bytes) -> None:
        try:
            if self._f is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._f = cast(BinaryIO, self.path.open("wb"))
            if data == (_ZEROS if len(data) == _CHUNK else bytes(len(data))):  # (memcmp: stops at the first byte set)
                self._f.seek(len(data), io.SEEK_CUR)  # zeros become a hole: a huge empty image costs no disk
            else:
                self._f.write(data)
        except OSError as e:
            raise self._error(e) from None
        self.position += len(data)

    def close(self) -> None:
        if self._f is not None:
            try:
                self._f.truncate(self.position)  # a trailing hole still counts
                self._f.close()
            except OSError as e:
                raise self._error(e) from None


def read_rpm(path: Path, stage: Path, name: str | None = None, check: HeaderCheck | None = None) -> RpmContents:
    """Read and verify a package; contents of its larger files go to `stage`. `name` is how errors call it
    (cached files are named by digest); `check` runs on the verified headers before the payload is read."""
    what = name or path.name
    try:
        f = path.open("rb")
    except OSError as e:
        raise LocalIOError(f"cannot read package {what} ({e.strerror or e})") from None
    with f:
        try:
            headers = read_headers(cast(BinaryIO, f), what)
            if check is not None:
                check(headers)
            return _read_payload(cast(BinaryIO, f), headers, stage)
        except _CORRUPT as e:
            raise BadRpm(f"{what}: payload is corrupt ({e}); the package is damaged") from None
        except OSError as e:
            if e.errno is None:  # a decompressor's complaint about the data (bz2: "Invalid data stream")
                raise BadRpm(f"{what}: payload is corrupt ({e}); the package is damaged") from None
            raise LocalIOError(f"{what}: cannot read the package ({e.strerror or e})") from None


def _read_payload(f: BinaryIO, headers: RpmHeaders, stage: Path) -> RpmContents:
    h, what = headers.header, headers.what
    payload_format = h.string(Tag.PAYLOADFORMAT) or "cpio"
    if payload_format != "cpio":
        raise UnsupportedRpm(f"{what}: payload format {payload_format!r} is not supported (cpio only)")
    compressor = h.string(Tag.PAYLOADCOMPRESSOR)
    digest_algo = h.integer(Tag.PAYLOADDIGESTALGO) or DigestAlgo.SHA256
    payload_digest = h.strings(Tag.PAYLOADDIGEST)
    payload_alt = h.strings(Tag.PAYLOADDIGESTALT)
    compressed: list[_Hasher] = []
    if payload_digest:
        compressed.append(_hasher(digest_algo, what))
    legacy_md5 = headers.signature.bin(Sig.MD5) if not payload_digest else None
    if legacy_md5 is not None:
        md5 = hashlib.md5(headers.header_bytes, usedforsecurity=False)
        compressed.append(cast(_Hasher, md5))
    raw = _Hashing(f, compressed)
    buffered = io.BufferedReader(raw, _CHUNK)
    if compressor is None:
        # rpm opens such a payload as gzip, and zlib passes data without the gzip magic through unchanged
        # (rpmbuild's w0.ufdio packages have no compressor tag).
        compressor = "gzip" if buffered.peek(2)[:2] == b"\x1f\x8b" else ""
    decompressed = _decompressor(compressor, cast(BinaryIO, buffered), what)
    # PAYLOADDIGESTALT (over the cpio) is rpm's alternative to PAYLOADDIGEST (over the compressed bytes): rpm
    # accepts a package when either verifies (rpmvsVerify's getAlt). The cpio is a function of the compressed
    # bytes, so once PAYLOADDIGEST is checked a second pass of sha256 over every decompressed byte proves nothing
    # more: it is hashed only for a package that has no PAYLOADDIGEST.
    alt = [_hasher(digest_algo, what)] if payload_alt and not payload_digest else []
    archive: BinaryIO = cast(BinaryIO, _Hashing(decompressed, alt)) if alt else decompressed
    # Without a payload digest in the (signed) header, the per-file digests are what vouch for the contents.
    reader = io.BufferedReader(cast(io.RawIOBase, archive), _CHUNK)
    files = _unpack(cast(BinaryIO, reader), h, stage, what, not payload_digest)
    tail = len(reader.read(_TAIL_MAX + 1))
    if tail > _TAIL_MAX:
        raise BadRpm(f"{what}: payload goes on for more than {_TAIL_MAX} bytes after its cpio trailer; refusing "
                     "it as a decompression bomb")
    raw.drain()
    if payload_digest and compressed[0].hexdigest() != payload_digest[0].lower():
        raise BadRpm(f"{what}: payload digest does not match the header; the package is corrupt or tampered")
    if alt and alt[0].hexdigest() != payload_alt[0].lower():
        raise BadRpm(f"{what}: uncompressed payload digest does not match the header; the package is corrupt")
    if legacy_md5 is not None and bytes.fromhex(compressed[-1].hexdigest()) != legacy_md5:
        raise BadRpm(f"{what}: package MD5 digest does not match; the package is corrupt or tampered")
    size = headers.signature.integer(Sig.SIZE) or headers.signature.integer(Tag.LONGSIGSIZE)
    if size is not None and size != len(headers.header_bytes) + raw.count:
        raise BadRpm(f"{what}: package is {len(headers.header_bytes) + raw.count} bytes after its signature, "
                     f"its signature header says {size}; the package is truncated or corrupt")
    file_algo = h.integer(Tag.FILEDIGESTALGO) or DigestAlgo.MD5
    return RpmContents(headers, files, DigestAlgo(file_algo) if file_algo in _HASHES else DigestAlgo.MD5)


def _unpack(stream: BinaryIO, h: Header, stage: Path, what: str, need_digests: bool) -> tuple[RpmFile, ...]:
    meta = _file_meta(h, what)
    n = len(meta.paths)
    declared = sum(meta.sizes[i] for i in range(n) if stat.S_ISREG(meta.modes[i]))
    if declared > MAX_UNPACKED_BYTES:
        # Checked before any byte is decompressed: the header (digest-checked) is what the payload must match.
        raise BadRpm(f"{what}: header declares {declared} bytes of files, more than copa's limit of "
                     f"{MAX_UNPACKED_BYTES >> 30} GiB per package; refusing it")
    clean = [clean_path(p, f"{what}: file") for p in meta.paths]
    by_path = {p: i for i, p in enumerate(clean)}
    if len(by_path) != n:
        raise BadRpm(f"{what}: header lists a file twice; the package is corrupt")
    file_algo = h.integer(Tag.FILEDIGESTALGO) or DigestAlgo.MD5
    # Hard links: files of one (device, inode) with a regular mode; the first in header order carries the
    # content, the others link to it.
    groups: dict[tuple[int, int], int] = {}
    leader = list(range(n))
    for i in range(n):
        if stat.S_ISREG(meta.modes[i]) and meta.inodes[i] and not meta.flags[i] & FileFlag.GHOST:
            leader[i] = groups.setdefault((meta.devices[i], meta.inodes[i]), i)
    members = [0] * n
    for i in range(n):
        members[leader[i]] += 1
    content: dict[int, tuple[bytes | None, int]] = {}  # group leader -> (inline bytes or None, spool offset)
    seen = [False] * n
    spool = _Spool(stage / "spool", what)  # a name of ours, never the package's: nothing escapes `stage`
    budget = _INLINE_BUDGET
    try:
        for entry, body in CpioReader(stream, what, lambda i: meta.sizes[i] if 0 <= i < n else 0, BadRpm):
            i = entry.index if entry.index >= 0 else by_path.get(clean_path(entry.name, f"{what}: archive entry"), -1)
            if not 0 <= i < n or seen[i] or meta.flags[i] & FileFlag.GHOST:
                raise BadRpm(f"{what}: payload entry {entry.name or entry.index!r} is not a file of the header "
                             "(or is there twice); the package is corrupt")
            seen[i] = True
            mode = meta.modes[i]
            if entry.index < 0 and stat.S_IFMT(entry.mode) != stat.S_IFMT(mode):
                raise BadRpm(f"{what}: {clean[i]} has another file type in the payload than in the header")
            if not stat.S_ISREG(mode):
                continue  # directories, symlinks, devices: everything comes from the header
            if entry.size == 0 and meta.sizes[i] and members[leader[i]] > 1:
                continue  # a hard link's entry without content: another member of its inode carries it
            if entry.size != meta.sizes[i]:
                raise BadRpm(f"{what}: {clean[i]} is {entry.size} bytes in the payload, {meta.sizes[i]} in the "
                             "header; the package is corrupt")
            hasher = _hasher(file_algo, what)
            if meta.sizes[i] <= _INLINE_MAX and budget >= meta.sizes[i]:
                data = body.read()
                hasher.update(data)
                budget -= len(data)
                stored: tuple[bytes | None, int] = (data, 0)
            else:
                stored = (None, spool.position)
                while chunk := body.read(_CHUNK):
                    hasher.update(chunk)
                    spool.write(chunk)
            if meta.digests[i] and hasher.hexdigest() != meta.digests[i].lower():
                raise BadRpm(f"{what}: {clean[i]} does not match its digest in the header; the package is corrupt")
            if not meta.digests[i] and need_digests:
                raise BadRpm(f"{what}: {clean[i]} has no digest and the package no payload digest; refusing it")
            content[leader[i]] = stored
    finally:
        spool.close()
    missing = [clean[i] for i in range(n) if not seen[i] and not meta.flags[i] & FileFlag.GHOST]
    if missing:
        raise BadRpm(f"{what}: payload lacks {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1
                                                               else "") + "; the package is corrupt")
    return tuple(_file(i, meta, clean, leader, content, spool.path, what) for i in range(n))


def _file(i: int, meta: _Meta, clean: list[str], leader: list[int], content: dict[int, tuple[bytes | None, int]],
          spool: Path, what: str) -> RpmFile:
    mode, flags = meta.modes[i], FileFlag(meta.flags[i])
    kind = _KINDS.get(stat.S_IFMT(mode))
    if kind is None:
        raise BadRpm(f"{what}: {clean[i]} has unknown file type {mode:o}; the package is corrupt")
    linkname = meta.links[i] if kind == "symlink" else ""
    inline: bytes | None = None
    staged: Path | None = None
    offset = 0
    if kind == "file" and not flags & FileFlag.GHOST:
        if leader[i] != i:
            kind, linkname = "hardlink", clean[leader[i]]
        else:
            if i not in content:
                raise BadRpm(f"{what}: no content for {clean[i]} in the payload; the package is corrupt")
            inline, offset = content[i]
            staged = spool if inline is None else None
    return RpmFile(clean[i], kind, stat.S_IMODE(mode), meta.users[i], meta.groups[i], meta.mtimes[i],
                   meta.sizes[i], linkname, flags, meta.digests[i], meta.inodes[i], meta.rdevs[i], meta.caps[i],
                   meta.langs[i], staged, inline, offset)


def expect_identity(name: str, epoch: str, version: str, release: str, arch: str, then: HeaderCheck | None = None
                    ) -> HeaderCheck:
    """A header check: the package's own header must name the NEVRA of the repository entry that selected it (the
    metadata vouches for the file's checksum, not for the two agreeing), then `then` runs."""
    def check(headers: RpmHeaders) -> None:
        h = headers.header
        got_epoch = h.integer(Tag.EPOCH)
        want = (name, str(int(epoch)) if epoch.isdigit() else "0", version, release, arch)
        got = (h.string(Tag.NAME) or "", str(got_epoch or 0), h.string(Tag.VERSION) or "",
               h.string(Tag.RELEASE) or "", h.string(Tag.ARCH) or "")
        if got != want:
            raise BadRpm(f"{headers.what}: its header says {headers.nevra} but the repository metadata lists "
                         f"{name}-{version}-{release}.{arch}; the repository serves a wrong or tampered package")
        if then is not None:
            then(headers)
    return check
