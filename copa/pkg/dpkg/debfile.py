"""Reading .deb files: an ar archive holding debian-binary, control.tar.* and data.tar.*.

The control archive is small and read whole; the data archive is streamed member by member into a
staging directory, from which the layer writer later copies each file. Every path is checked.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
import shutil
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import zstandard
from isal import igzip

from copa.errors import IntegrityError, LocalIOError, UnsafePathError
from copa.oci.image import CORRUPT_STREAM
from copa.oci.layer import clean_path
from copa.oci.tarstream import TarStream
from copa.pkg.streams import Bounded, inflate, open_content, xz_reader

_AR_MAGIC = b"!<arch>\n"
_AR_HEADER_START = re.compile(rb"[!-~]+ *(?:[0-9]+ *)*\Z")  # a member name then numeric fields, cut short
_CONTROL_LIMIT = 64 << 20
_INLINE_MAX = 64 << 10  # files up to this size stay in memory...
# ...up to this much per package, the rest staged on disk: every package is held until the layer is written, so
# this bounds a patch's memory (2 MiB took a 22-package patch past 150 MB)
_INLINE_BUDGET = 512 << 10


class BadDeb(IntegrityError):
    pass


_CORRUPT: tuple[type[Exception], ...] = (tarfile.TarError, *CORRUPT_STREAM)


@dataclass(frozen=True, slots=True)
class ArMember:
    name: str
    size: int


def _truncated() -> BadDeb:
    return BadDeb("truncated .deb archive member")


def _ar_members(f: BinaryIO, what: str) -> Iterator[tuple[ArMember, Bounded]]:
    if f.read(8) != _AR_MAGIC:
        raise BadDeb(f"{what} is not a Debian package (no ar header)")
    while True:
        header = f.read(60)
        if not header:
            return
        if len(header) != 60 and _AR_HEADER_START.match(header):
            raise BadDeb(f"{what}: the archive is truncated inside an ar member header; the package is corrupt")
        if len(header) != 60 or header[58:60] != b"`\n":
            raise BadDeb(f"{what}: corrupt ar member header (garbage after the last member?); the package is "
                         "corrupt")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise BadDeb(f"{what}: corrupt ar member size") from None
        body = Bounded(f, size, _truncated)
        yield ArMember(name, size), body
        body.skip_rest()
        if size % 2:
            f.read(1)  # ar pads members to even offsets


def _decompress(name: str, stream: BinaryIO, what: str) -> BinaryIO:
    """The member's tar stream, guarded against decompression bombs (copa.pkg.streams.inflate)."""
    def bomb(reason: str) -> BadDeb:
        return BadDeb(f"{what}: member {name} {reason}; refusing it as a decompression bomb")

    if name.endswith(".xz"):
        return inflate(stream, xz_reader, bomb)
    if name.endswith(".gz"):
        return inflate(stream, lambda s: cast(BinaryIO, igzip.GzipFile(fileobj=s)), bomb)  # type: ignore[no-untyped-call]
    if name.endswith(".zst"):
        # A .zst member may hold several frames (pzstd, zstd --adapt...); libzstd, as dpkg uses it, reads them all.
        # Input in 256 KiB steps (the default is 128 KiB) and output in 1 MiB ones: fewer round trips through the
        # GIL while another thread runs Python (see copa.pkg.streams._XZ_STEP_IN).
        return inflate(stream, lambda s: cast(BinaryIO, io.BufferedReader(
            zstandard.ZstdDecompressor().stream_reader(s, read_size=256 << 10, read_across_frames=True), 1 << 20)),
            bomb)
    if name.endswith(".tar"):
        return stream
    raise BadDeb(f"{what}: unsupported compression of member {name!r}")


@dataclass(frozen=True, slots=True)
class DataFile:
    """One member of data.tar: where dpkg would put it (`path`, as in the package) and its metadata.

    A regular file's content is kept in memory when small (most package files are) and otherwise appended to
    one spool file per package, so small files cost no file system round trip, big ones no memory, and a
    package of thousands of files (perl-modules) not thousands of file creations."""

    path: str  # normalised, no leading slash; "" never appears
    kind: str  # file, dir, symlink, hardlink
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    size: int
    mtime: int
    linkname: str  # symlink target as written; for hardlinks a normalised package path
    staged: Path | None = None  # the package's spool file holding the content of its larger regular files...
    inline: bytes | None = None  # ...or the content in memory, for small regular files
    offset: int = 0  # where the content starts in `staged`

    @property
    def has_content(self) -> bool:
        return self.staged is not None or self.inline is not None

    def open(self) -> BinaryIO:
        return open_content(self.path, self.inline, self.staged, self.offset, self.size, _truncated)

    def md5(self) -> str:
        h = hashlib.md5(usedforsecurity=False)
        with self.open() as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()


@dataclass(frozen=True)
class DebContents:
    control: bytes
    control_files: dict[str, bytes]  # every control.tar member except ./control: md5sums, conffiles, scripts...
    files: tuple[DataFile, ...]  # in archive order, which is the order dpkg lists them


class Stopped(Exception):
    """Raised out of read_deb when its `stop` says so: nobody wants the package any more."""


def read_deb(path: Path, stage: Path, name: str | None = None, stop: Callable[[], bool] | None = None
             ) -> DebContents:
    """Read a .deb: control members in memory (small), data files staged under `stage`. `name` is how errors
    call it (cached files are named by digest, which tells the user nothing)."""
    what = name or path.name
    control: bytes | None = None
    control_files: dict[str, bytes] = {}
    files: list[DataFile] | None = None
    with path.open("rb") as f:
        for member, body in _ar_members(cast(BinaryIO, f), what):
            if member.name.startswith("control.tar"):
                if control is not None:
                    # dpkg-deb reads the first and refuses more: which one counts would be the attacker's choice.
                    raise BadDeb(f"{what} has a second control.tar member; the package is corrupt or tampered")
                control, control_files = _read_control(_decompress(member.name, cast(BinaryIO, body), what), what)
            elif member.name.startswith("data.tar"):
                if files is not None:
                    raise BadDeb(f"{what} has a second data.tar member; the package is corrupt or tampered")
                files = _stage_data(_decompress(member.name, cast(BinaryIO, body), what), stage, what, stop)
    if control is None or files is None:
        raise BadDeb(f"{what} lacks a control or data archive; it is not a valid .deb")
    return DebContents(control, control_files, tuple(files))


def _read_control(stream: BinaryIO, what: str) -> tuple[bytes, dict[str, bytes]]:
    try:
        control, members = _control_members(stream, what)
    except _CORRUPT as e:
        raise BadDeb(f"{what}: control archive is corrupt ({e}); delete the cached copy or fix the repository") \
            from None
    except OSError as e:
        raise LocalIOError(f"{what}: cannot read the downloaded package ({e})") from None
    if not control:
        raise BadDeb(f"{what}: control archive has no control file")
    return control, members


def _control_members(stream: BinaryIO, what: str) -> tuple[bytes, dict[str, bytes]]:
    control = b""
    members: dict[str, bytes] = {}
    total = 0
    with TarStream(stream) as tar:
        for m in tar:
            name = posixpath.normpath(m.name).lstrip("./")
            if not m.isreg() or "/" in name:
                continue
            total += m.size
            if total > _CONTROL_LIMIT:
                raise BadDeb(f"{what}: control archive is implausibly large")
            data = tar.extractfile(m)
            content = data.read() if data else b""
            if name == "control":
                control = content
            else:
                members[name] = content
    return control, members


class _StageFile:
    """A staged file being written: a failed write is the local disk's fault (ENOSPC...), never the package's."""

    def __init__(self, path: Path, what: str) -> None:
        self._path, self._what = path, what
        self.position = 0
        try:
            self._f = path.open("wb")
        except OSError as e:
            raise self._error(e) from None

    def _error(self, e: OSError) -> LocalIOError:
        return LocalIOError(f"{self._what}: cannot stage package files under {self._path.parent} ({e.strerror or e});"
                            " free space there or set TMPDIR to a larger file system")

    def write(self, data: bytes) -> int:
        try:
            n = self._f.write(data)
        except OSError as e:
            raise self._error(e) from None
        self.position += n
        return n

    def close(self) -> None:
        try:
            self._f.close()
        except OSError as e:
            raise self._error(e) from None


def _stage_data(stream: BinaryIO, stage: Path, what: str, stop: Callable[[], bool] | None = None
                ) -> list[DataFile]:
    out: list[DataFile] = []
    try:
        stage.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LocalIOError(f"cannot create staging directory {stage} ({e.strerror or e})") from None
    inline_budget = _INLINE_BUDGET
    spool_path = stage / "spool"  # a name of ours, never the package's own paths: no way out of `stage`
    spool: _StageFile | None = None
    kinds: dict[str, str] = {}  # path -> kind of the members read so far
    try:
        with TarStream(stream) as tar:
            for m in tar:
                if stop is not None and stop():
                    raise Stopped(what)
                path = clean_path(m.name, f"{what}: member")
                if not path:
                    continue
                if "\n" in path:
                    # dpkg refuses these too: its .list database is one path a line.
                    raise UnsafePathError(f"{what}: member {m.name!r} has a newline in its name; refusing it")
                seen = kinds.get(path)
                if seen is not None and not (seen == "dir" and m.isdir()):
                    raise UnsafePathError(f"{what}: member {path!r} appears twice in the data archive; refusing "
                                          "an ambiguous package")
                staged = None
                inline = None
                offset = 0
                kind = "file"
                linkname = m.linkname
                if m.isreg():
                    src = tar.extractfile(m)
                    if m.size <= _INLINE_MAX and inline_budget >= m.size:
                        inline = src.read() if src is not None else b""
                        inline_budget -= m.size
                    else:
                        if spool is None:
                            spool = _StageFile(spool_path, what)
                        staged, offset = spool_path, spool.position
                        if src is not None:
                            shutil.copyfileobj(src, spool, 1 << 20)
                elif m.isdir():
                    kind = "dir"
                elif m.issym():
                    kind = "symlink"
                elif m.islnk():
                    kind = "hardlink"
                    linkname = clean_path(m.linkname, f"{what}: hardlink target")
                    if kinds.get(linkname) not in ("file", "hardlink"):
                        # As dpkg: a hard link names a file unpacked earlier from this package, never one of the
                        # image's (its content would surface under a new name) and never nothing.
                        raise UnsafePathError(f"{what}: member {path!r} is a hard link to {linkname!r}, which is "
                                              "not a file earlier in the package; refusing it")
                else:
                    raise UnsafePathError(f"{what}: member {m.name!r} is a device or fifo; refusing it")
                kinds[path] = kind
                out.append(DataFile(path, kind, m.mode, m.uid, m.gid, m.uname, m.gname, m.size,
                                    int(m.mtime), linkname, staged, inline, offset))
    except _CORRUPT as e:
        raise BadDeb(f"{what}: data archive is corrupt ({e})") from None
    except OSError as e:
        raise LocalIOError(f"{what}: cannot read the downloaded package ({e})") from None
    finally:
        if spool is not None:
            spool.close()
    return out


def check_identity(control: bytes, name: str, version: str, architecture: str, what: str) -> None:
    """The package's own control must name what the index entry that selected it names: otherwise the status
    database would record another package (or version) than the plan chose, and dpkg installs what the control says."""
    fields: dict[str, str] = {}
    for line in control.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition(":")
        if sep and key[:1] not in (" ", "\t"):
            fields.setdefault(key.strip().lower(), value.strip())
    for field, expected in (("package", name), ("version", version), ("architecture", architecture)):
        got = fields.get(field, "")
        if got != expected:
            raise BadDeb(f"{what}: its control says {field.capitalize()}: {got or '(none)'} but the repository "
                         f"index lists {expected}; the repository serves a wrong or tampered package")
