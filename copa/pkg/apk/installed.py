"""/lib/apk/db/installed, read and written as apk-tools' apk_db_fdb_write writes it.

Per package: the index header (C P V A S I T U L o m t c k D p i), then g: r: q: s: f:, then for each
directory of the package `F:dir` (+ `M:uid:gid:mode` when not root:root 0755), each of its files `R:name`
(+ `a:uid:gid:mode` when not root:root 0644) and `Z:Q1<sha1>`; a blank line ends the package.
Packages not being changed are written back exactly as read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from copa.errors import UnsupportedImageError
from copa.pkg.apk.apkfile import ApkContents, DataFile
from copa.pkg.apk.index import ApkRecord, encode_hash, record_from_lines, split_records

INSTALLED_PATHS = ("lib/apk/db/installed", "usr/lib/apk/db/installed")
# The header fields in the order apk_pkg_write_index_header writes them.
HEADER_ORDER = ("C", "P", "V", "A", "S", "I", "T", "U", "L", "o", "m", "t", "c", "k", "D", "p", "i")
_DEFAULT_DIR = (0, 0, 0o755)
_DEFAULT_FILE = (0, 0, 0o644)


@dataclass(frozen=True, slots=True)
class InstalledFile:
    name: str
    acl: str  # raw a: value, "" for the default
    digest: str  # raw Z: value, "" when none


@dataclass(frozen=True, slots=True)
class InstalledDir:
    path: str  # "usr/bin" ("" for the root)
    acl: str  # raw M: value, "" for the default
    files: tuple[InstalledFile, ...]


@dataclass(frozen=True, slots=True)
class InstalledPackage:
    header: tuple[tuple[str, str], ...]  # every line before the first F:, in order
    dirs: tuple[InstalledDir, ...]

    @property
    def record(self) -> ApkRecord:
        return record_from_lines(list(self.header))

    @property
    def name(self) -> str:
        return self.field("P")

    @property
    def version(self) -> str:
        return self.field("V")

    def field(self, key: str) -> str:
        return next((v for k, v in self.header if k == key), "")

    def paths(self) -> list[str]:
        """Every file path the package owns (not directories)."""
        return [f"{d.path}/{f.name}" if d.path else f.name for d in self.dirs for f in d.files]


def parse_installed(text: str, what: str = "/lib/apk/db/installed") -> list[InstalledPackage]:
    return [_package(block, what) for block in split_records(text)]


def _package(block: list[tuple[str, str]], what: str) -> InstalledPackage:
    header: list[tuple[str, str]] = []
    dirs: list[tuple[str, str, list[InstalledFile]]] = []  # path, M:, files
    for key, value in block:
        if key == "F":
            dirs.append((value, "", []))
        elif not dirs:
            header.append((key, value))
        elif key == "M":
            dirs[-1] = (dirs[-1][0], value, dirs[-1][2])
        elif key == "R":
            dirs[-1][2].append(InstalledFile(value, "", ""))
        elif key in ("a", "Z") and dirs[-1][2]:
            files = dirs[-1][2]
            last = files[-1]
            files[-1] = InstalledFile(last.name, value, last.digest) if key == "a" else InstalledFile(
                last.name, last.acl, value)
        else:
            raise UnsupportedImageError(f"{what}: unexpected '{key}:' line among file entries; "
                                        "the apk database is damaged")
    pkg = InstalledPackage(tuple(header), tuple(InstalledDir(p, m, tuple(f)) for p, m, f in dirs))
    if not pkg.name or not pkg.version:
        raise UnsupportedImageError(f"{what}: a package record has no P: or V:; the apk database is damaged")
    return pkg


def format_package(pkg: InstalledPackage) -> str:
    out = [f"{k}:{v}\n" for k, v in pkg.header]
    for d in pkg.dirs:
        out.append(f"F:{d.path}\n")
        if d.acl:
            out.append(f"M:{d.acl}\n")
        for f in d.files:
            out.append(f"R:{f.name}\n")
            if f.acl:
                out.append(f"a:{f.acl}\n")
            if f.digest:
                out.append(f"Z:{f.digest}\n")
    out.append("\n")
    return "".join(out)


def format_installed(packages: Sequence[InstalledPackage]) -> bytes:
    return "".join(format_package(p) for p in packages).encode()


def _acl(uid: int, gid: int, mode: int, default: tuple[int, int, int]) -> str:
    if (uid, gid, mode & 0o7777) == default:
        return ""
    return f"{uid}:{gid}:{mode & 0o7777:o}"


def new_header(record: ApkRecord, contents: ApkContents, old: InstalledPackage | None) -> tuple[tuple[str, str], ...]:
    """The header apk writes for `record` installed from `contents` (replacing `old`)."""
    raw = {k: v for k, v in reversed(record.lines)}
    lines = [(k, raw[k]) for k in HEADER_ORDER if raw.get(k)]
    replaces = " ".join(contents.pkginfo.get("replaces", ()))
    if replaces:
        lines.append(("r", replaces))
    priority = contents.info("replaces_priority")
    if priority and priority != "0":
        lines.append(("q", priority))
    tag = old.field("s") if old is not None else ""
    if tag:
        lines.append(("s", tag))
    return tuple(lines)


def new_dirs(files: Sequence[DataFile], ids: Mapping[str, tuple[int, int]]) -> tuple[InstalledDir, ...]:
    """F:/R: entries for the data files, in archive order as apk records them.

    `ids` maps a file's path to its resolved (uid, gid) (apk resolves tar user names in the image)."""
    order: list[str] = []
    acls: dict[str, str] = {}
    entries: dict[str, list[InstalledFile]] = {}
    digests: dict[str, bytes] = {}
    for f in files:
        uid, gid = ids.get(f.path, (f.uid, f.gid))
        if f.kind == "dir":
            if f.path not in entries:
                order.append(f.path)
                entries[f.path] = []
            acls[f.path] = _acl(uid, gid, f.mode, _DEFAULT_DIR)
            continue
        parent, _, base = f.path.rpartition("/")
        if parent not in entries:
            order.append(parent)
            entries[parent] = []
        digest = f.sha1
        if f.kind == "hardlink":
            digest = digests.get(f.linkname.lstrip("/"), digest)
        if digest is not None:
            digests[f.path] = digest
        acl = _acl(uid, gid, f.mode, _DEFAULT_FILE)
        entries[parent].append(InstalledFile(base, acl, encode_hash(digest) if digest is not None else ""))
    return tuple(InstalledDir(d, acls.get(d, ""), tuple(entries[d])) for d in order)


def replace_packages(packages: Sequence[InstalledPackage], new: Sequence[InstalledPackage]) -> list[InstalledPackage]:
    """The database after installing `new` (replacing packages of the same names).

    apk-tools 3 writes packages sorted by name; apk-tools 2 in installation order, so there an upgraded
    package moves to the end. Which one wrote the database shows in whether it is sorted."""
    names = [p.name for p in packages]
    by_name = {p.name: p for p in new}
    if names == sorted(names, key=display_key):
        merged = {p.name: p for p in packages} | by_name
        return [merged[n] for n in sorted(merged, key=display_key)]
    return [p for p in packages if p.name not in by_name] + list(new)


def display_key(name: str) -> tuple[bytes, bytes]:
    """apk_name_cmp_display: strcasecmp, then strcmp (ASCII case folding only, as the C locale does)."""
    raw = name.encode()
    return raw.lower(), raw
