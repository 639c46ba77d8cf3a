"""Read a v2 .apk: signature, control and data gzip members, each checked before anything is used.

* identity: sha1 of the control member's compressed bytes must equal the index's C: (Q1...), which the
  signed index vouches for;
* signature: `.SIGN.RSA*.<key>` over the control member, by a trusted key (packages from a repository with
  a verified index are also covered by the identity check, so an unknown key is tolerated there);
* data: .PKGINFO's `datahash` is the sha256 of the data member's compressed bytes, and each file's
  `APK-TOOLS.checksum.SHA1` PAX header the sha1 of its content (of the link target for a symlink).

The data member is streamed: each file goes to a staging directory while it is hashed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from copa.errors import IntegrityError, UnsafePathError
from copa.oci.layer import clean_path
from copa.pkg.apk.index import decode_hash
from copa.pkg.apk.signing import Keys, find_signature, tar_members, verify
from copa.pkg.streams import inflate

CHECKSUM_PAX = "APK-TOOLS.checksum.SHA1"
SCRIPT_NAMES = (".pre-install", ".post-install", ".pre-upgrade", ".post-upgrade", ".pre-deinstall",
                ".post-deinstall", ".trigger")
_CHUNK = 1 << 16


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
    staged: Path | None
    sha1: bytes | None  # from the PAX header (verified), None when the package has none


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


class _HashingReader(io.RawIOBase):
    def __init__(self, src: BinaryIO) -> None:
        super().__init__()
        self._src = src
        self.hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._src.read(len(buffer))
        self.hash.update(data)
        memoryview(buffer)[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        while chunk := self._src.read(_CHUNK):
            self.hash.update(chunk)


def read_apk(path: Path, stage: Path, keys: Keys, *, expected: str, require_signature: bool, what: str
             ) -> ApkContents:
    """Verify and unpack `path` (files staged under `stage`). `expected` is the index's C: value."""
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
        if signature is not None and keys.public_key(signature.key_name, what) is not None:
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


def _unpack_data(f: BinaryIO, stage: Path, datahash: str, what: str) -> tuple[DataFile, ...]:
    if datahash:
        # Check the whole data member against the signed control segment before the tar parser sees any of it.
        start = f.tell()
        h = hashlib.sha256()
        while chunk := f.read(1 << 20):
            h.update(chunk)
        if h.hexdigest() != datahash:
            raise IntegrityError(f"{what}: data segment sha256 does not match .PKGINFO datahash; the package is "
                                 "corrupt or tampered")
        f.seek(start)
    stage.mkdir(parents=True, exist_ok=True)
    reader = _HashingReader(f)
    files: list[DataFile] = []

    def bomb(reason: str) -> IntegrityError:
        return IntegrityError(f"{what}: data segment {reason}; refusing it as a decompression bomb")

    gz = inflate(io.BufferedReader(reader, _CHUNK), lambda s: cast(BinaryIO, gzip.GzipFile(fileobj=s, mode="rb")), bomb)
    kinds: dict[str, str] = {}  # path -> kind of the members read so far
    try:
        with tarfile.open(fileobj=gz, mode="r|") as tar:
            for member in tar:
                got = _member(tar, member, stage, len(files), what, kinds)
                kinds[got.path] = got.kind
                files.append(got)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise IntegrityError(f"{what}: bad data archive ({e}); the package is corrupt") from None
    reader.drain()
    if datahash and reader.hash.hexdigest() != datahash:
        raise IntegrityError(f"{what}: data segment sha256 does not match .PKGINFO datahash; the package is "
                             "corrupt or tampered")
    return tuple(files)


def _member(tar: tarfile.TarFile, m: tarfile.TarInfo, stage: Path, n: int, what: str, kinds: dict[str, str]
            ) -> DataFile:
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
    if m.isreg():
        kind = "file"
        staged = stage / f"{n:06d}"
        h = hashlib.sha1(usedforsecurity=False)
        src = tar.extractfile(m)
        assert src is not None
        with staged.open("wb") as out:
            while chunk := src.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
        if sha1 is not None and h.digest() != sha1:
            raise IntegrityError(f"{what}: {path}: content does not match its SHA1 header; the package is corrupt")
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
    return DataFile(path, kind, m.mode & 0o7777, m.uid, m.gid, m.uname, m.gname, int(m.mtime), m.size if staged
                    else 0, m.linkname, staged, sha1)


def remove_stage(stage: Path) -> None:
    shutil.rmtree(stage, ignore_errors=True)
