"""Turn verified .apk contents into layer entries the way `apk upgrade` leaves the filesystem.

What apk does that we reproduce: files land where the image's directory symlinks lead; existing
directories are left alone; files the old version owned and the new one dropped are removed (whiteouts);
a protected file under /etc that the image changed is kept and the new one lands as `<path>.apk-new`;
tar user and group names are resolved in the image's /etc/passwd and /etc/group; the installed database,
the scripts archive and the triggers file are rewritten as apk writes them. What we do not: run the
package scripts or triggers (the summary names them).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from copa.errors import IntegrityError
from copa.oci.layer import Entry, Kind, ParentCheck
from copa.oci.rootfs import View
from copa.pkg.apk.apkfile import ApkContents, DataFile
from copa.pkg.apk.index import ApkRecord, decode_hash
from copa.pkg.apk.installed import InstalledPackage, format_installed, new_dirs, new_header, replace_packages

DB_DIRS = ("lib/apk/db", "usr/lib/apk/db")
# apk-tools' script type names, in the order apk_db_scriptdb_write writes them.
SCRIPT_TYPES = ("pre-install", "post-install", "pre-deinstall", "post-deinstall", "pre-upgrade", "post-upgrade",
                "trigger")


@dataclass(frozen=True)
class Installing:
    """One package to install: its index record, verified contents, and the installed record it replaces."""

    record: ApkRecord
    contents: ApkContents
    old: InstalledPackage | None


def _ids(text: bytes | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (text or b"").decode("utf-8", "replace").splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            out.setdefault(parts[0], int(parts[2]))
    return out


class Owners:
    """uname/gname -> ids as the image defines them (apk resolves tar names in the target root)."""

    def __init__(self, view: View) -> None:
        self.users = _ids(view.read("etc/passwd"))
        self.groups = _ids(view.read("etc/group"))

    def of(self, f: DataFile) -> tuple[int, int]:
        return self.users.get(f.uname, f.uid), self.groups.get(f.gname, f.gid)


def sha1_z(data: bytes) -> bytes:
    return hashlib.sha1(data, usedforsecurity=False).digest()


class LayerPlan:
    def __init__(self, view: View, mtime: int) -> None:
        self.view = view
        self.mtime = mtime
        self.entries: dict[str, Entry] = {}
        self.owners = Owners(view)
        self._check_parents = ParentCheck(self._kind)  # (the image's kinds, which the build never changes)

    def real(self, path: str) -> str:
        return self.view.resolve(path, follow_last=False)

    def add(self, entry: Entry) -> None:
        self.entries[entry.path] = entry

    def _kind(self, path: str) -> str | None:
        node = self.view.get(path)
        return node.kind if node is not None else None

    def add_data(self, f: DataFile, path: str) -> None:
        self._check_parents(path, "package path")
        uid, gid = self.owners.of(f)
        if f.kind == "dir":
            if self.view.get(path) is None and path not in self.entries:
                self.add(Entry(path, Kind.DIR, f.mode, uid, gid, mtime=f.mtime, uname=f.uname, gname=f.gname))
            return
        kind = {"file": Kind.FILE, "symlink": Kind.SYMLINK, "hardlink": Kind.HARDLINK}[f.kind]
        linkname = self.real(f.linkname) if f.kind == "hardlink" else f.linkname
        self.add(Entry(path, kind, f.mode, uid, gid, f.size if f.has_content else 0,
                       f.open if f.has_content else None, linkname, f.mtime, f.uname, f.gname))

    def remove(self, path: str) -> None:
        node = self.view.get(path)
        if node is None or node.kind == "dir" or path in self.entries:
            return
        self.entries[path] = Entry.whiteout(path)


def _protected(path: str) -> bool:
    # apk's default protected paths: /etc, except /etc/apk and the init.d symlinks.
    return path.startswith("etc/") and not path.startswith(("etc/apk/", "etc/init.d/"))


def check_identity(pkg: Installing) -> None:
    """The package's .PKGINFO must name what the index record that selected it names (the signed index vouches for
    the control segment's checksum, not for the two agreeing): else the database would record another package."""
    if not pkg.contents.pkginfo:
        return  # a virtual (I:0) package: nothing of it was read
    for key, label, expected in (("pkgname", "name", pkg.record.name), ("pkgver", "version", pkg.record.version),
                                 ("arch", "architecture", pkg.record.arch)):
        got = pkg.contents.info(key)
        if expected and got != expected:
            raise IntegrityError(f"{pkg.record.name}-{pkg.record.version}.apk: its .PKGINFO says {key} = "
                                 f"{got or '(none)'} but the index lists {label} {expected}; the repository serves a "
                                 "wrong or tampered package")


def install_package(plan: LayerPlan, pkg: Installing) -> None:
    check_identity(pkg)
    old_digest: dict[str, str] = {}
    if pkg.old is not None:
        for d in pkg.old.dirs:
            for owned in d.files:
                old_digest[f"{d.path}/{owned.name}" if d.path else owned.name] = owned.digest
    new_paths: set[str] = set()
    for f in pkg.contents.files:
        new_paths.add(f.path)
        path = plan.real(f.path)
        if f.kind == "file" and _protected(f.path) and f.path in old_digest and f.has_content:
            current = plan.view.read(path)
            was = old_digest[f.path]
            changed = current is None or not was or decode_hash(was) != sha1_z(current)
            if changed:
                # Modified in the image: keep it, and ship the new one beside it unless they are equal.
                if current is None or f.sha1 != sha1_z(current):
                    plan.add_data(f, path + ".apk-new")
                continue
        plan.add_data(f, path)
    for old_path in old_digest:
        if old_path not in new_paths:
            plan.remove(plan.real(old_path))


def db_dir(view: View) -> str:
    for d in DB_DIRS:
        if view.get(view.resolve(f"{d}/installed")) is not None:
            return d
    return DB_DIRS[0]


def installed_package(pkg: Installing, owners: Owners) -> InstalledPackage:
    ids = {f.path: owners.of(f) for f in pkg.contents.files}
    return InstalledPackage(new_header(pkg.record, pkg.contents, pkg.old), new_dirs(pkg.contents.files, ids))


def database_entries(plan: LayerPlan, packages: Sequence[InstalledPackage], installing: Sequence[Installing]) -> None:
    """installed, scripts.tar(.gz) and triggers for the new packages."""
    directory = db_dir(plan.view)
    new = [installed_package(p, plan.owners) for p in installing]
    result = replace_packages(packages, new)
    plan.add(Entry.file(plan.real(f"{directory}/installed"), format_installed(result), mtime=plan.mtime))
    old_ids = {decode_hash(p.old.field("C")).hex() for p in installing if p.old is not None}
    _scripts(plan, directory, result, installing, old_ids)
    _triggers(plan, directory, result, installing, old_ids)


def _script_ident(identity: bytes, apk3: bool) -> str:
    """How the scripts archive names a package: apk-tools 3 (scripts.tar.gz) writes apk_blob_push_hash_hex,
    'X1' + hex of the sha1 identity; apk-tools 2 (plain scripts.tar) writes the bare hex."""
    if apk3:
        return ("X1" if len(identity) == 20 else "X2") + identity.hex()
    return identity.hex()


def _parse_ident(text: str) -> bytes | None:
    if text[:2] in ("X1", "X2"):
        text = text[2:]
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def _script_entries(pkg: Installing, ident: str) -> list[tuple[str, bytes, int]]:
    out = []
    for kind in SCRIPT_TYPES:
        script = pkg.contents.scripts.get("." + kind)
        if script is not None:
            out.append((f"{pkg.record.name}-{pkg.record.version}.{ident}.{kind}", script, pkg.record.build_time))
    return out


def _read_tar(data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for m in tar:
            if m.isreg():
                f = tar.extractfile(m)
                out.append((m, f.read() if f is not None else b""))
    return out


def _octal(value: int, width: int, terminated: bool) -> bytes:
    digits = width - 1 if terminated else width
    return f"{value:0{digits}o}".encode() + (b"\0" if terminated else b"")


def apk_tar_member(name: str, data: bytes, mode: int, mtime: int) -> bytes:
    """One entry as apk-tools' apk_tar_write_entry writes it: GNU 'ustar  ' magic, root/root names, size and
    mtime in all 12 octal digits without a terminator, data padded to 512 bytes."""
    header = bytearray(512)
    raw = name.encode()[:99]  # apk strlcpy()s the name into the 100-byte field: longer names are cut
    header[0:len(raw)] = raw
    header[100:108] = _octal(mode & 0o7777, 8, True)
    header[108:116] = _octal(0, 8, True)
    header[116:124] = _octal(0, 8, True)
    header[124:136] = _octal(len(data), 12, False)
    header[136:148] = _octal(mtime, 12, False)
    header[148:156] = b" " * 8
    header[156:157] = b"0"
    header[257:265] = b"ustar  \0"
    header[265:269] = b"root"
    header[297:301] = b"root"
    header[148:155] = _octal(sum(header), 7, True)
    return bytes(header) + data + b"\0" * (-len(data) % 512)


def apk_gzip(data: bytes) -> bytes:
    """gzip as apk-tools' zlib ostream writes it (level 9, no name, mtime 0): the same bytes apk would."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    return z.compress(data) + z.flush()


def _scripts(plan: LayerPlan, directory: str, result: Sequence[InstalledPackage], installing: Sequence[Installing],
             old_ids: set[str]) -> None:
    """Rewrite the scripts archive: the replaced packages' scripts out, the new ones in, in database order.

    apk_db_scriptdb_write walks the installed packages in database order and writes each one's scripts in
    script-type order, named <name>-<version>.<identity>.<type>."""
    plain = plan.view.read(f"{directory}/scripts.tar")
    packed = plan.view.read(f"{directory}/scripts.tar.gz") if plain is None else None
    existing = _read_tar(plain if plain is not None else gzip.decompress(packed) if packed is not None else b"")
    new_scripts = [s for p in installing for s in _script_entries(p, "")]
    apk3 = plain is None  # with no archive yet, write what apk-tools 3 writes
    old_raw = {bytes.fromhex(i) for i in old_ids}
    by_id: dict[bytes, list[tuple[str, bytes, int]]] = {}
    unknown: list[tuple[str, bytes, int]] = []
    dropped = False
    for m, data in existing:
        parts = m.name.rsplit(".", 2)
        ident = _parse_ident(parts[1]) if len(parts) == 3 else None
        if ident is None:
            unknown.append((m.name, data, int(m.mtime)))
        elif ident in old_raw:
            dropped = True
        else:
            by_id.setdefault(ident, []).append((m.name, data, int(m.mtime)))
    if not new_scripts and not dropped:
        return
    for p in installing:
        by_id[p.contents.identity] = _script_entries(p, _script_ident(p.contents.identity, apk3))
    order = [decode_hash(p.field("C")) for p in result if p.field("C")]
    entries = [e for ident in order for e in by_id.pop(ident, [])]
    entries += [e for rest in by_id.values() for e in rest] + unknown  # scripts of unknown packages stay, at the end
    raw = b"".join(apk_tar_member(name, data, 0o755, mtime) for name, data, mtime in entries) + b"\0" * 1024
    if not apk3:
        plan.add(Entry.file(plan.real(f"{directory}/scripts.tar"), raw, mtime=plan.mtime))
    else:
        plan.add(Entry.file(plan.real(f"{directory}/scripts.tar.gz"), apk_gzip(raw), mtime=plan.mtime))


def _triggers(plan: LayerPlan, directory: str, result: Sequence[InstalledPackage],
              installing: Sequence[Installing], old_ids: set[str]) -> None:
    path = f"{directory}/triggers"
    current = plan.view.read(path)
    lines: dict[str, str] = {}
    for line in (current or b"").decode("utf-8", "replace").splitlines():
        ident, _, rest = line.partition(" ")
        if ident and decode_hash(ident).hex() not in old_ids:
            lines[ident] = rest
    new_lines = {p.record.checksum: " ".join(t for v in p.contents.pkginfo.get("triggers", ()) for t in v.split())
                 for p in installing}
    lines.update({k: v for k, v in new_lines.items() if v})
    if current is None and not any(new_lines.values()):
        return
    order = [p.field("C") for p in result]
    text = "".join(f"{c} {lines[c]}\n" for c in order if c in lines)
    plan.add(Entry.file(plan.real(path), text.encode(), mtime=plan.mtime))
