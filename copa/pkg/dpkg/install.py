"""Turn unpacked .debs into layer entries the way `dpkg --unpack` + `--configure` leave the filesystem.

What dpkg does that we reproduce: files land where the image's directory symlinks lead (merged /usr);
existing directories are left alone; files the old version owned and the new one dropped are removed
(whiteouts); a conffile the image changed is kept and the new one lands as `<path>.dpkg-dist` (confold);
the status database and info/ files are rewritten as dpkg writes them. What we do not: run maintainer
scripts or triggers (the summary names the packages whose scripts do real work).
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass

from copa.oci.rootfs import View
from copa.pkg.dpkg.database import INFO, STATUS, STATUS_D, DpkgDatabase, info_name
from copa.pkg.dpkg.debfile import DataFile, DebContents
from copa.pkg.dpkg.status import StatusEntry, format_entry, merge_status
from copa.pkg.layer import Entry, Kind

SCRIPTS = ("preinst", "postinst", "prerm", "postrm", "config")
_TRIVIAL = re.compile(r"^\s*(#.*|set -e|set -eu|exit 0|)\s*$")
_DELETED = "deleted"  # stands for the md5 of a conffile that is gone; never equal to a real md5


@dataclass(frozen=True)
class Unpacked:
    """One package to install: its new contents and what the image had of it before."""

    contents: DebContents
    old: StatusEntry | None
    old_files: tuple[str, ...]  # package paths the old version owned (from info/*.list or status.d md5sums)
    old_info: tuple[str, ...]  # info/ file names of the old version


def conffile_paths(contents: DebContents) -> list[str]:
    """Paths listed in the package's conffiles (without the remove-on-upgrade ones)."""
    out = []
    for line in contents.control_files.get("conffiles", b"").decode("utf-8", "replace").splitlines():
        parts = line.split()
        if parts and "remove-on-upgrade" not in parts[1:]:
            out.append(parts[0])
    return out


def scripts_note(contents: DebContents) -> str:
    """Which maintainer scripts do something beyond boilerplate: those are not run by copa."""
    busy = []
    for name in SCRIPTS:
        script = contents.control_files.get(name)
        if script is None:
            continue
        lines = script.decode("utf-8", "replace").splitlines()
        if any(not _TRIVIAL.match(line) for line in lines[1:]):
            busy.append(name)
    return f"{', '.join(busy)} not run" if busy else ""


class LayerPlan:
    """Accumulates entries; later packages' files replace earlier ones at the same path."""

    def __init__(self, view: View, mtime: int) -> None:
        self.view = view
        self.mtime = mtime
        self.entries: dict[str, Entry] = {}
        self.written: set[str] = set()

    def real(self, package_path: str) -> str:
        """Where dpkg would put `package_path`: parent directories resolved through the image's symlinks."""
        return self.view.resolve(package_path, follow_last=False)

    def add(self, entry: Entry) -> None:
        self.entries[entry.path] = entry
        self.written.add(entry.path)

    def add_file(self, f: DataFile, path: str) -> None:
        kind = {"file": Kind.FILE, "symlink": Kind.SYMLINK, "hardlink": Kind.HARDLINK}[f.kind]
        linkname = self.real(f.linkname) if f.kind == "hardlink" else f.linkname
        self.add(Entry(path, kind, f.mode, f.uid, f.gid, f.size if f.has_content else 0,
                       f.open if f.has_content else None, linkname, f.mtime, f.uname, f.gname))

    def add_dir(self, f: DataFile, path: str) -> None:
        node = self.view.get(path)
        # dpkg leaves an existing directory (or a symlink standing in for one) as it is.
        if node is not None or path in self.entries:
            return
        self.add(Entry(path, Kind.DIR, f.mode, f.uid, f.gid, mtime=f.mtime, uname=f.uname, gname=f.gname))

    def remove(self, path: str) -> None:
        node = self.view.get(path)
        if node is None or node.kind == "dir" or path in self.written:
            return
        self.entries[path] = Entry.whiteout(path)


def install_package(
    plan: LayerPlan, pkg: Unpacked, current_conffiles: dict[str, bytes | None]
) -> list[tuple[str, str]]:
    """Add one package's files to `plan`; returns its conffiles as (path, md5 as shipped) for the status."""
    old_md5 = {c.path: c.md5 for c in (pkg.old.conffiles if pkg.old else ())}
    conffiles = set(conffile_paths(pkg.contents))
    recorded: list[tuple[str, str]] = []
    new_paths = set()
    for f in pkg.contents.files:
        new_paths.add(f.path)
        path = plan.real(f.path)
        if f.kind == "dir":
            plan.add_dir(f, path)
            continue
        slash_path = "/" + f.path
        if slash_path in conffiles and f.has_content:
            shipped = f.md5()
            recorded.append((slash_path, shipped))
            current = current_conffiles.get(slash_path)
            before = old_md5.get(slash_path)
            if pkg.old is not None and before is not None:
                # A conffile the admin deleted counts as changed: dpkg does not bring it back, but (like
                # for an edited one) ships a new version beside it as .dpkg-dist.
                current_md5 = (_DELETED if current is None
                               else hashlib.md5(current, usedforsecurity=False).hexdigest())
                if current_md5 != before:
                    # Changed in the image: keep it (confold); ship the new one beside it if it changed too.
                    if shipped != before and shipped != current_md5:
                        plan.add_file(f, path + ".dpkg-dist")
                    continue
        plan.add_file(f, path)
    # Keep recorded conffiles in the order of the package's conffiles list, as dpkg does.
    order = {p: i for i, p in enumerate(conffile_paths(pkg.contents))}
    recorded.sort(key=lambda pm: order.get(pm[0], 0))
    for old_path in pkg.old_files:
        if old_path not in new_paths and "/" + old_path not in old_md5:
            plan.remove(plan.real(old_path))
    return recorded


def md5sums(contents: DebContents) -> bytes | None:
    """info/<pkg>.md5sums: the package's own, or (as dpkg does for a package shipping none) one computed
    over its regular files and hard links, in archive order. None for a package with no such files."""
    shipped = contents.control_files.get("md5sums")
    if shipped is not None:
        return shipped
    sums: dict[str, str] = {}
    lines = []
    for f in contents.files:
        if f.kind == "file" and f.has_content:
            sums[f.path] = f.md5()
        elif f.kind == "hardlink" and f.linkname in sums:
            sums[f.path] = sums[f.linkname]
        else:
            continue
        lines.append(f"{sums[f.path]}  {f.path}\n")
    return "".join(lines).encode() if lines else None


def list_file(contents: DebContents) -> bytes:
    """info/<pkg>.list: '/.' then every path of the data archive, in archive order."""
    lines = ["/."]
    for f in contents.files:
        lines.append("/" + f.path)
    return ("\n".join(lines) + "\n").encode()


def database_entries(
    plan: LayerPlan,
    db: DpkgDatabase,
    packages: Iterable[tuple[Unpacked, StatusEntry]],
) -> None:
    """The dpkg database files for the new packages."""
    items = list(packages)
    if db.distroless:
        for pkg, entry in items:
            name = db.status_d_name(entry.package) or entry.package
            plan.add(Entry.file(f"{STATUS_D}/{name}", format_entry(entry), mtime=plan.mtime))
            sums = md5sums(pkg.contents)
            if sums is not None:
                plan.add(Entry.file(f"{STATUS_D}/{name}.md5sums", sums, mtime=plan.mtime))
        return
    assert db.status_raw is not None
    new_status = merge_status(db.entries, [e for _, e in items], db.architecture)
    plan.add(Entry.file(STATUS, new_status, mtime=plan.mtime))
    plan.add(Entry.file(STATUS + "-old", db.status_raw, mtime=plan.mtime))
    for pkg, entry in items:
        stem = info_name(entry.package, entry.multi_arch, entry.architecture)
        written = {f"{stem}.list"}
        plan.add(Entry.file(f"{INFO}/{stem}.list", list_file(pkg.contents), mtime=plan.mtime))
        members = dict(pkg.contents.control_files)
        sums = md5sums(pkg.contents)
        if sums is not None:
            members["md5sums"] = sums
        for member, data in sorted(members.items()):
            mode = 0o755 if member in SCRIPTS else 0o644
            written.add(f"{stem}.{member}")
            plan.add(Entry.file(f"{INFO}/{stem}.{member}", data, mode, mtime=plan.mtime))
        for old in pkg.old_info:
            if old not in written:
                plan.remove(posixpath.join(INFO, old))
