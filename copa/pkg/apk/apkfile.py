"""Read a v2 .apk: signature, control and data gzip members, each checked before anything is used.

* identity: sha1 of the control member's compressed bytes must equal the index's C: (Q1...), which the
  signed index vouches for;
* signature: `.SIGN.RSA*.<key>` over the control member, by a trusted key. A package named by a verified index
  is authenticated by the identity check alone, as apk-tools installs it (APK_SIGN_VERIFY_IDENTITY): its
  signature is not checked again (an RSA-4096 verification is ~0.6 ms of pure-Python `pow`), and an unknown
  key is tolerated there;
* data: .PKGINFO's `datahash` is the sha256 of the data member's compressed bytes, and each file's
  `APK-TOOLS.checksum.SHA1` PAX header the sha1 of its content (of the link target for a symlink).

The data member is decompressed once (ISA-L's inflate, about twice zlib's speed), after its datahash is checked:
into memory when small (most packages), else into one file under the stage directory. The tar is then walked by
offset, so each file's content is a slice of it: small files are copied into memory, bigger ones stay in the
staged tar and are read from there by offset. A package costs at most one file creation, not one per file, and
its bytes pass through no Python stream layers.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from isal import isal_zlib
from isal.igzip_lib import IsalError

from copa.errors import IntegrityError, LocalIOError, UnsafePathError
from copa.oci.layer import clean_path
from copa.pkg.apk.index import decode_hash
from copa.pkg.apk.signing import Keys, find_signature, tar_members, verify
from copa.pkg.streams import MAX_EXPANSION_RATIO, MAX_UNPACKED_BYTES, RATIO_FLOOR, open_content

CHECKSUM_PAX = "APK-TOOLS.checksum.SHA1"
SCRIPT_NAMES = (".pre-install", ".post-install", ".pre-upgrade", ".post-upgrade", ".pre-deinstall",
                ".post-deinstall", ".trigger")
_CHUNK = 1 << 16
_READ_WHOLE_MAX = 8 << 20  # a compressed data member up to this size is read (and hashed) once, in memory...
_MEMORY_TAR_MAX = 16 << 20  # ...and its tar walked in memory up to this size (bigger: on disk). Both per reader
# thread (one a core): together they bound what reading packages adds to the peak RSS.
_OUT_CHUNK = 1 << 20  # most decompressed bytes per call once on disk: the bomb limits are checked this often
_INLINE_MAX = 64 << 10  # files up to this size are kept in memory...
_INLINE_BUDGET = 2 << 20  # ...up to this much per package (as the deb and rpm readers); the rest stays staged
_GZIP_ERROR = cast(type[Exception], IsalError)  # typed as a plain class in isal's stubs


@dataclass(frozen=True, slots=True)
class DataFile:
    path: str  # clean, relative ("usr/bin/x")
    kind: str  # "file" | "dir" | "symlink" | "hardlink"
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    mtime: int
    size: int
    linkname: str
    staged: Path | None  # a regular file's content: in the package's staged data tar at `offset`...
    sha1: bytes | None  # from the PAX header (verified), None when the package has none
    inline: bytes | None = None  # ...or in memory
    offset: int = 0

    @property
    def has_content(self) -> bool:
        return self.staged is not None or self.inline is not None

    def open(self) -> BinaryIO:
        return open_content(self.path, self.inline, self.staged, self.offset, self.size, _truncated)


def _truncated() -> IntegrityError:
    return IntegrityError("a staged package file is shorter than its tar header says; the stage directory was "
                          "changed while copa ran")


@dataclass(frozen=True)
class ApkContents:
    identity: bytes  # sha1 of the control member
    pkginfo: dict[str, tuple[str, ...]]  # .PKGINFO keys -> values in order
    scripts: dict[str, bytes]  # ".post-install" -> script
    files: tuple[DataFile, ...]  # data archive order
    signed_by: str

    def info(self, key: str) -> str:
        values = self.pkginfo.get(key, ())
        return values[0] if values else ""


def _read_member(f: BinaryIO, what: str, limit: int = 64 << 20) -> tuple[bytes, bytes]:
    """(compressed bytes, decompressed bytes) of the gzip member at the file's position; leaves the file
    positioned just after it."""
    d = zlib.decompressobj(wbits=31)
    raw = bytearray()
    out = bytearray()
    while not d.eof:
        chunk = f.read(_CHUNK)
        if not chunk:
            raise IntegrityError(f"{what}: gzip segment is truncated; the package is corrupt")
        try:
            out += d.decompress(chunk)
        except zlib.error as e:
            raise IntegrityError(f"{what}: bad gzip data ({e}); the package is corrupt") from None
        raw += chunk
        if len(out) > limit:
            raise IntegrityError(f"{what}: control data larger than {limit} bytes; refusing it")
    unused = len(d.unused_data)
    if unused:
        f.seek(-unused, io.SEEK_CUR)
        del raw[len(raw) - unused:]
    return bytes(raw), bytes(out)


def parse_pkginfo(text: str) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or " = " not in line:
            continue
        key, _, value = line.partition(" = ")
        out.setdefault(key.strip(), []).append(value)
    return {k: tuple(v) for k, v in out.items()}


def read_apk(path: Path, stage: Path, keys: Keys, *, expected: str, require_signature: bool, what: str,
             vouched: bool = False) -> ApkContents:
    """Verify and unpack `path` (larger files staged under `stage`). `expected` is the index's C: value; `vouched`
    says that index's signature verified, so a matching identity authenticates the package."""
    with path.open("rb") as f:
        raw_sig, sig_tar = _read_member(f, what)
        signature = find_signature(tar_members(sig_tar, what))
        raw_ctl, ctl_tar = _read_member(f, what)
        if signature is None:
            # Unsigned package: the first member is the control segment itself.
            raw_ctl, ctl_tar = raw_sig, sig_tar
            f.seek(len(raw_sig))
        identity = hashlib.sha1(raw_ctl, usedforsecurity=False).digest()
        if expected and identity != decode_hash(expected):
            raise IntegrityError(f"{what}: control checksum does not match the index (C:{expected}); the "
                                 "repository or mirror serves a corrupt or tampered package")
        signed_by = ""
        if vouched and expected:
            pass  # the identity matched what a verified index names
        elif signature is not None and keys.public_key(signature.key_name, what) is not None:
            verify(signature, raw_ctl, keys, False, what)
            signed_by = signature.key_name
        elif require_signature:
            verify(signature, raw_ctl, keys, False, what)  # raises: no signature or no trusted key
        control = tar_members(ctl_tar, what)
        if ".PKGINFO" not in control:
            raise IntegrityError(f"{what}: has no .PKGINFO; it is not an apk package")
        pkginfo = parse_pkginfo(control[".PKGINFO"].decode("utf-8", "replace"))
        scripts = {n: control[n] for n in SCRIPT_NAMES if n in control}
        files = _unpack_data(f, stage, pkginfo.get("datahash", ("",))[0], what)
    return ApkContents(identity, pkginfo, scripts, files, signed_by)


def _compressed_data(f: BinaryIO, datahash: str, what: str) -> Iterator[bytes]:
    """The data member's compressed bytes in chunks, checked against the signed control segment's `datahash`
    before the first chunk is handed out (no tar parser sees unverified bytes). A small member is read and hashed
    once, in memory; a big one is hashed in a first pass and hashed again as it is read, so that a file changing
    between the passes cannot slip content by."""
    start = f.tell()
    whole = f.read(_READ_WHOLE_MAX + 1)
    if len(whole) <= _READ_WHOLE_MAX:
        if datahash and hashlib.sha256(whole).hexdigest() != datahash:
            raise _datahash_error(what)
        yield whole  # at once: the decompressor's output limit, not its input, bounds each step
        return
    h = hashlib.sha256(whole)
    del whole  # not held while the rest streams
    if datahash:
        while chunk := f.read(1 << 20):
            h.update(chunk)
        if h.hexdigest() != datahash:
            raise _datahash_error(what)
    f.seek(start)
    again = hashlib.sha256()
    while chunk := f.read(1 << 20):
        again.update(chunk)
        yield chunk
    if datahash and again.hexdigest() != datahash:
        raise _datahash_error(what)


def _datahash_error(what: str) -> IntegrityError:
    return IntegrityError(f"{what}: data segment sha256 does not match .PKGINFO datahash; the package is corrupt "
                          "or tampered")


class _DataTar:
    """The decompressed data tar: in memory (`data`) when it is small, else the file `path` under the stage."""

    def __init__(self, stage: Path, what: str) -> None:
        self._stage, self._what = stage, what
        self._pieces: list[bytes] = []
        self.size = 0
        self.data: bytes | None = None
        self.path: Path | None = None
        self._out: BinaryIO | None = None

    def _disk_error(self, e: OSError) -> LocalIOError:
        return LocalIOError(f"{self._what}: cannot stage package files under {self._stage} ({e.strerror or e}); "
                            "free space there or set TMPDIR to a larger file system")

    def _open_file(self) -> BinaryIO:
        self.path = self._stage / "data.tar"  # a name of ours, never the package's own paths: nothing escapes
        try:
            self._stage.mkdir(parents=True, exist_ok=True)
            return self.path.open("wb")
        except OSError as e:
            raise self._disk_error(e) from None

    def room(self) -> int:
        """How much the next decompression step may produce: in memory, just past what memory may hold (one step
        for most packages); on disk, a chunk."""
        return _OUT_CHUNK if self._out is not None else max(_MEMORY_TAR_MAX + 1 - self.size, 1)

    def write(self, piece: bytes) -> None:
        self.size += len(piece)
        try:
            if self._out is None and self.size > _MEMORY_TAR_MAX:
                # Too big to hold: what came so far and the rest go to disk.
                self._out = self._open_file()
                for p in self._pieces:
                    self._out.write(p)
                self._pieces = []
            if self._out is not None:
                self._out.write(piece)
            else:
                self._pieces.append(piece)
        except OSError as e:
            raise self._disk_error(e) from None

    def finish(self) -> None:
        if self._out is not None:
            try:
                self._out.close()
            except OSError as e:
                raise self._disk_error(e) from None
        else:
            self.data = b"".join(self._pieces)
            self._pieces = []

    def abort(self) -> None:
        if self._out is not None:
            self._out.close()

    def staged(self) -> Path:
        """The tar on disk, written there on first need (a file too big to keep in memory)."""
        if self.path is None:
            assert self.data is not None
            out = self._open_file()
            try:
                with out:
                    out.write(self.data)
            except OSError as e:
                raise self._disk_error(e) from None
        assert self.path is not None
        return self.path


def _inflate(chunks: Iterator[bytes], tar: _DataTar, what: str) -> None:
    """Decompress the data segment into `tar`: every gzip member of it, zero padding between members skipped (as
    Python's gzip reads a concatenation), with the decompression-bomb limits of copa.pkg.streams."""
    d: isal_zlib.Decompress | None = None  # the current member's decompressor; None between members
    fed = 0  # compressed bytes handed over so far
    try:
        for chunk in chunks:
            fed += len(chunk)
            data = chunk
            while True:
                if d is None:
                    data = data.lstrip(b"\0") if data[:1] == b"\0" else data
                    if not data:
                        break
                    d = isal_zlib.decompressobj(wbits=31)
                room, before = tar.room(), len(data)
                piece = d.decompress(data, room)
                data = d.unused_data if d.eof else d.unconsumed_tail
                if not piece and not d.eof and data and len(data) == before:
                    raise IntegrityError(f"{what}: bad data archive (gzip makes no progress); the package is corrupt")
                full = len(piece) == room  # output may be pending inside the decompressor: ask again
                if d.eof:
                    d = None
                tar.write(piece)
                used = fed - len(data)  # compressed bytes consumed: what the expansion ratio is measured against
                if tar.size > MAX_UNPACKED_BYTES:
                    raise _bomb(what, f"decompresses to more than {MAX_UNPACKED_BYTES >> 30} GiB")
                if tar.size > RATIO_FLOOR and tar.size > MAX_EXPANSION_RATIO * used:
                    raise _bomb(what, f"decompresses to more than {MAX_EXPANSION_RATIO} times its size "
                                      f"({tar.size} bytes from {used})")
                if d is not None and not data and not full:
                    break  # this member wants more input
        if d is not None:
            raise IntegrityError(f"{what}: data segment is truncated; the package is corrupt")
    except _GZIP_ERROR as e:
        tar.abort()
        raise IntegrityError(f"{what}: bad data archive (gzip: {e}); the package is corrupt") from None
    except BaseException:
        tar.abort()
        raise
    tar.finish()


def _bomb(what: str, reason: str) -> IntegrityError:
    return IntegrityError(f"{what}: data segment {reason}; refusing it as a decompression bomb")


def _unpack_data(f: BinaryIO, stage: Path, datahash: str, what: str) -> tuple[DataFile, ...]:
    tar = _DataTar(stage, what)
    _inflate(_compressed_data(f, datahash, what), tar, what)
    if tar.data is not None:
        return _walk(tar, io.BytesIO(tar.data), what)  # BytesIO shares the bytes: no copy
    assert tar.path is not None
    try:
        with tar.path.open("rb") as staged:
            return _walk(tar, cast(BinaryIO, staged), what)
    except OSError as e:
        raise LocalIOError(f"{what}: cannot read the staged package files under {stage} ({e.strerror or e})") \
            from None


def _walk(tar: _DataTar, source: BinaryIO, what: str) -> tuple[DataFile, ...]:
    """The members of the decompressed tar (random access: a file's content is a slice of it, never a copy
    through tarfile's stream layers)."""
    files: list[DataFile] = []
    kinds: dict[str, str] = {}  # path -> kind of the members read so far
    content = _Content(tar, source, what)
    try:
        with tarfile.open(fileobj=source, mode="r:") as archive:
            for member in archive:
                got = _member(content, member, len(files), what, kinds)
                kinds[got.path] = got.kind
                files.append(got)
    except tarfile.TarError as e:
        raise IntegrityError(f"{what}: bad data archive ({e}); the package is corrupt") from None
    return tuple(files)


class _Content:
    """Regular files' contents out of the data tar: small ones copied into memory (up to a budget per package), the
    others left where they are, in the staged tar, read by offset."""

    def __init__(self, tar: _DataTar, source: BinaryIO, what: str) -> None:
        self._tar, self._source, self._what = tar, source, what
        self._view = memoryview(tar.data) if tar.data is not None else None
        self._budget = _INLINE_BUDGET

    def take(self, path: str, offset: int, size: int, sha1: bytes | None) -> tuple[bytes | None, Path | None]:
        """(inline content, or the staged tar holding it at `offset`), after checking its SHA1 header."""
        if offset + size > self._tar.size:
            raise IntegrityError(f"{self._what}: {path}: the data archive ends inside it; the package is corrupt")
        inline = size <= _INLINE_MAX and size <= self._budget
        if self._view is not None:
            data = self._view[offset:offset + size]
            if sha1 is not None and hashlib.sha1(data, usedforsecurity=False).digest() != sha1:
                raise self._mismatch(path)
            if inline:
                self._budget -= size
                return bytes(data), None
            return None, self._tar.staged()
        h = hashlib.sha1(usedforsecurity=False)
        kept = bytearray()
        self._source.seek(offset)
        left = size
        while left:
            chunk = self._source.read(min(left, 1 << 20))
            if not chunk:
                raise IntegrityError(f"{self._what}: {path}: the data archive ends inside it; the package is corrupt")
            h.update(chunk)
            if inline:
                kept += chunk
            left -= len(chunk)
        if sha1 is not None and h.digest() != sha1:
            raise self._mismatch(path)
        if inline:
            self._budget -= size
            return bytes(kept), None
        return None, self._tar.staged()

    def _mismatch(self, path: str) -> IntegrityError:
        return IntegrityError(f"{self._what}: {path}: content does not match its SHA1 header; the package is corrupt")


def _member(content: _Content, m: tarfile.TarInfo, n: int, what: str, kinds: dict[str, str]) -> DataFile:
    path = clean_path(m.name, f"{what} entry")
    if "\n" in path:
        # The installed database is one path a line: such a name would forge database lines.
        raise UnsafePathError(f"{what}: entry {path!r} has a newline in its name; refusing the package")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafePathError(f"{what}: entry {path.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8; "
                              "refusing the package") from None
    seen = kinds.get(path)
    if seen is not None and not (seen == "dir" and m.isdir()):
        raise UnsafePathError(f"{what}: entry {path!r} appears twice in the data archive; refusing an ambiguous "
                              "package")
    pax = m.pax_headers.get(CHECKSUM_PAX, "")
    try:
        sha1 = bytes.fromhex(pax) if pax else None
    except ValueError:
        raise IntegrityError(f"{what}: {path}: bad {CHECKSUM_PAX} header; the package is corrupt") from None
    staged: Path | None = None
    inline: bytes | None = None
    offset = 0
    if m.issparse():
        # Its content is not one run of the tar (and apk-tools does not install GNU sparse members at all).
        raise UnsafePathError(f"{what}: {path} is a sparse file, which apk does not install; refusing the package")
    if m.isreg():
        kind = "file"
        inline, staged = content.take(path, m.offset_data, m.size, sha1)
        offset = m.offset_data if staged is not None else 0
    elif m.isdir():
        kind = "dir"
    elif m.issym():
        kind = "symlink"
        if sha1 is not None and hashlib.sha1(m.linkname.encode(), usedforsecurity=False).digest() != sha1:
            raise IntegrityError(f"{what}: {path}: link target does not match its SHA1 header; the package is corrupt")
    elif m.islnk():
        kind = "hardlink"
        target = clean_path(m.linkname, f"{what}: {path}: hard link target")
        if kinds.get(target) not in ("file", "hardlink"):
            # As apk: a hard link names a file extracted earlier from this package, never one of the image's.
            raise UnsafePathError(f"{what}: {path} is a hard link to {target!r}, which is not a file earlier in the "
                                  "package; refusing it")
        return DataFile(path, kind, m.mode & 0o7777, m.uid, m.gid, m.uname, m.gname, int(m.mtime), 0, target, None,
                        sha1)
    else:
        raise UnsafePathError(f"{what}: {path} is a device, fifo or other special file; refusing the package")
    return DataFile(path, kind, m.mode & 0o7777, m.uid, m.gid, m.uname, m.gname, int(m.mtime),
                    m.size if kind == "file" else 0, m.linkname, staged, sha1, inline, offset)


def remove_stage(stage: Path) -> None:
    shutil.rmtree(stage, ignore_errors=True)
