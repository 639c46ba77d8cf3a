"""Turn unpacked .debs into layer entries the way `dpkg --unpack` + `--configure` leave the filesystem.

What dpkg does that we reproduce: files land where the image's directory symlinks lead (merged /usr), or where
a diversion sends them; files the image's path-exclude filters name are not unpacked (but still listed);
existing directories are left alone; files the old version owned and the new one dropped are removed
(whiteouts); a conffile the image changed is kept and the new one lands as `<path>.dpkg-dist` (confold);
the status database and info/ files are rewritten as dpkg writes them. What we do not: run maintainer
scripts or triggers (the summary names the packages whose scripts do real work).
"""

from __future__ import annotations

import bisect
import hashlib
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

from copa.oci.layer import Entry, Kind, ParentCheck
from copa.oci.rootfs import View
from copa.pkg.dpkg.config import DpkgConfig
from copa.pkg.dpkg.database import INFO, STATUS, STATUS_D, DpkgDatabase, info_name
from copa.pkg.dpkg.debfile import DataFile, DebContents
from copa.pkg.dpkg.status import StatusEntry, format_entry, merge_status

SCRIPTS = ("preinst", "postinst", "prerm", "postrm", "config")
_DELETED = "deleted"  # stands for the md5 of a conffile that is gone; never equal to a real md5


@dataclass(frozen=True)
class Unpacked:
    """One package to install: its new contents and what the image had of it before."""

    package: str  # the name being installed: a diversion set up by this package does not apply to its files
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


class LayerPlan:
    """Accumulates entries; later packages' files replace earlier ones at the same path."""

    def __init__(self, view: View, mtime: int, config: DpkgConfig | None = None) -> None:
        self.view = view
        self.mtime = mtime
        self.config = config or DpkgConfig()
        self.entries: dict[str, Entry] = {}
        self._check_parents = ParentCheck(self._kind)  # (the image's kinds, which the build never changes)
        self.written: set[str] = set()
        self.kept_dirs: set[str] = set()  # real paths of directories an updated package's new version ships
        # real path -> (package path, package) of directories an old version owned and its new one does not ship
        self.dropped_dirs: dict[str, tuple[str, str]] = {}
        # real path -> packages whose new version lists the directory but does not unpack it (a path filter):
        # dpkg still lists it, so to the other packages' removals it is a shared directory and stays.
        self.filtered_dirs: dict[str, set[str]] = {}
        self._parents: dict[str, str] = {}  # package directory -> its real path in the image (see `real`)

    def real(self, package_path: str) -> str:
        """Where dpkg would put `package_path`: parent directories resolved through the image's symlinks."""
        parent, _, base = package_path.rpartition("/")
        if base in ("", ".", "..") or not parent:
            return self.view.resolve(package_path, follow_last=False)
        # A package's thousands of files share a few hundred directories: each is resolved once.
        real_parent = self._parents.get(parent)
        if real_parent is None:
            real_parent = self._parents[parent] = self.view.resolve(parent)
        return f"{real_parent}/{base}" if real_parent else base

    def target(self, package_path: str, package: str) -> str:
        """Where dpkg puts `package`'s file `package_path`: through diversions, then the image's symlinks."""
        return self.real(self.config.target(package_path, package))

    def add(self, entry: Entry) -> None:
        self.entries[entry.path] = entry
        self.written.add(entry.path)

    def _kind(self, path: str) -> str | None:
        node = self.view.get(path)
        return node.kind if node is not None else None

    def add_file(self, f: DataFile, path: str, package: str) -> None:
        self._check_parents(path, f"{package}'s file")
        kind = {"file": Kind.FILE, "symlink": Kind.SYMLINK, "hardlink": Kind.HARDLINK}[f.kind]
        # A hard link's target goes through diversions too (tarobject: namenodetouse on the link name).
        linkname = self.target(f.linkname, package) if f.kind == "hardlink" else f.linkname
        self.add(Entry(path, kind, f.mode, f.uid, f.gid, f.size if f.has_content else 0,
                       f.open if f.has_content else None, linkname, f.mtime, f.uname, f.gname))

    def add_dir(self, f: DataFile, path: str) -> None:
        self._check_parents(path, "a package directory")
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

    def remove_dropped_dirs(self, other_owned: set[str]) -> None:
        """Remove the directories old versions owned and new ones dropped, where dpkg's rmdir would succeed: no
        other package lists them (`other_owned`: package paths with a leading slash) and they end up empty."""
        candidates = [(real, p) for real, (p, package) in self.dropped_dirs.items()
                      if real not in self.kept_dirs and not self.filtered_dirs.get(real, set()) - {package}
                      and "/" + p not in other_owned and "/" + real not in other_owned]
        if not candidates:
            return
        paths = sorted(self.view.nodes)
        # Deepest first, as dpkg walks its list backwards: a parent may become empty once its children are gone.
        for real, _ in sorted(candidates, key=lambda rp: rp[0].count("/"), reverse=True):
            node = self.view.get(real)
            if node is None or node.kind != "dir" or real in self.entries:
                continue
            prefix = real + "/"
            start = bisect.bisect_left(paths, prefix)
            children = []
            for child in paths[start:]:
                if not child.startswith(prefix):
                    break
                children.append(child)
            if any(not self._gone(c) for c in children):
                continue
            if any(e.startswith(prefix) and entry.kind != Kind.WHITEOUT for e, entry in self.entries.items()):
                continue
            for c in children:  # the directory's whiteout hides them all
                self.entries.pop(c, None)
            self.entries[real] = Entry.whiteout(real)

    def _gone(self, path: str) -> bool:
        entry = self.entries.get(path)
        if entry is not None and entry.kind == Kind.WHITEOUT:
            return True
        # beneath a directory already whited out
        return any(self.entries.get(a) is not None and self.entries[a].kind == Kind.WHITEOUT
                   for a in _ancestors(path))


def install_package(
    plan: LayerPlan, pkg: Unpacked, current_conffiles: dict[str, bytes | None]
) -> list[tuple[str, str]]:
    """Add one package's files to `plan`; returns its conffiles as (path, md5 as shipped) for the status."""
    old_md5 = {c.path: c.md5 for c in (pkg.old.conffiles if pkg.old else ())}
    conffiles = set(conffile_paths(pkg.contents))
    recorded: list[tuple[str, str]] = []
    new_paths = set()
    for f in pkg.contents.files:
        if plan.config.excluded(f.path, f.kind in ("dir", "symlink")):
            # Not unpacked, and (as in dpkg, which clears its in-archive flag) not protecting the old file either.
            if f.kind == "dir":
                plan.filtered_dirs.setdefault(plan.target(f.path, pkg.package), set()).add(pkg.package)
            continue
        new_paths.add(f.path)
        path = plan.target(f.path, pkg.package)
        if f.kind == "dir":
            plan.kept_dirs.add(path)
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
                        plan.add_file(f, path + ".dpkg-dist", pkg.package)
                    continue
        plan.add_file(f, path, pkg.package)
    # Keep recorded conffiles in the order of the package's conffiles list, as dpkg does.
    order = {p: i for i, p in enumerate(conffile_paths(pkg.contents))}
    recorded.sort(key=lambda pm: order.get(pm[0], 0))
    for old_path in pkg.old_files:
        if old_path not in new_paths and "/" + old_path not in old_md5:
            # Shared ownership does not save a file: dpkg removes it even if another package still lists it.
            real = plan.target(old_path, pkg.package)
            node = plan.view.get(real)
            if node is not None and node.kind == "dir":
                plan.dropped_dirs[real] = (old_path, pkg.package)
            else:
                plan.remove(real)
    return recorded


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def md5sums(contents: DebContents, config: DpkgConfig | None = None) -> bytes | None:
    """info/<pkg>.md5sums: the package's own, or (as dpkg does for a package shipping none) one computed
    over its regular files and hard links that were unpacked (path filters apply), in archive order. None for
    a package with no such files."""
    shipped = contents.control_files.get("md5sums")
    if shipped is not None:
        return shipped
    sums: dict[str, str] = {}
    lines = []
    for f in contents.files:
        if config is not None and config.excluded(f.path, False):
            continue
        if f.kind == "file" and f.has_content:
            sums[f.path] = f.md5()
        elif f.kind == "hardlink" and f.linkname in sums:
            sums[f.path] = sums[f.linkname]
        else:
            continue
        lines.append(f"{sums[f.path]}  {f.path}\n")
    # A name that is not UTF-8 was read with surrogateescape: dpkg writes its bytes back as they were.
    return "".join(lines).encode("utf-8", "surrogateescape") if lines else None


def list_file(contents: DebContents) -> bytes:
    """info/<pkg>.list: '/.' then every path of the data archive, in archive order."""
    lines = ["/."]
    for f in contents.files:
        lines.append("/" + f.path)
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def remove_package(plan: LayerPlan, entry: StatusEntry, files: Iterable[str], info: Iterable[str],
                   other_owned: set[str]) -> None:
    """What `dpkg --remove` does to the filesystem (checked against dpkg): every file the package owns is
    removed, except its conffiles (kept until a purge) and paths another package lists; directories it owned
    go when nothing is left in them. Its info/ files go, except the .list (cut down to the conffiles and their
    directories) and the postrm of a package that keeps conffiles."""
    conffiles = {c.path.lstrip("/") for c in entry.conffiles}
    keep_dirs = {d for c in conffiles for d in _ancestors(c)}
    for path in sorted(files, reverse=True):  # children before their directories
        if path in conffiles or path in keep_dirs or "/" + path in other_owned:
            continue
        real = plan.target(path, entry.package)
        node = plan.view.get(real)
        if node is not None and node.kind == "dir":
            plan.dropped_dirs[real] = (path, entry.package)
        else:
            plan.remove(real)
    stem = info_name(entry.package, entry.multi_arch, entry.architecture)
    for name in info:
        if conffiles and name in (f"{stem}.list", f"{stem}.postrm"):
            continue
        plan.remove(posixpath.join(INFO, name))
    if conffiles:
        kept = [p for p in ("/" + f for f in files) if p.lstrip("/") in conffiles | keep_dirs]
        plan.add(Entry.file(f"{INFO}/{stem}.list", ("\n".join(kept) + "\n").encode(), mtime=plan.mtime))


def removed_entry(entry: StatusEntry) -> StatusEntry | None:
    """The status paragraph dpkg leaves after --remove: none, or `deinstall ok config-files` with a
    Config-Version when conffiles stay behind."""
    if not entry.conffiles:
        return None
    fields: list[tuple[str, str]] = []
    for name, value in entry.fields:
        if name.lower() == "config-version":
            continue
        fields.append(("Status", "deinstall ok config-files") if name.lower() == "status" else (name, value))
        if name.lower() == "version":
            fields.append(("Config-Version", value))
    return StatusEntry(tuple(fields))


def database_entries(
    plan: LayerPlan,
    db: DpkgDatabase,
    packages: Iterable[tuple[Unpacked, StatusEntry]],
    removed: Iterable[StatusEntry] = (),
) -> None:
    """The dpkg database files for the new packages (and those removed)."""
    items = list(packages)
    gone = list(removed)
    if db.distroless:
        for entry in gone:
            name = db.status_d_name(entry.package) or entry.package
            plan.remove(f"{STATUS_D}/{name}")
            if f"{name}.md5sums" in db.md5sums_d:
                plan.remove(f"{STATUS_D}/{name}.md5sums")
        for pkg, entry in items:
            name = db.status_d_name(entry.package) or entry.package
            plan.add(Entry.file(f"{STATUS_D}/{name}", format_entry(entry), mtime=plan.mtime))
            sums = md5sums(pkg.contents, plan.config)
            if sums is not None:
                plan.add(Entry.file(f"{STATUS_D}/{name}.md5sums", sums, mtime=plan.mtime))
        return
    assert db.status_raw is not None
    gone_keys = {e.key for e in gone}
    kept = [e for e in db.entries if e.key not in gone_keys]
    kept += [r for e in gone if (r := removed_entry(e)) is not None]
    new_status = merge_status(kept, [e for _, e in items], db.architecture)
    plan.add(Entry.file(STATUS, new_status, mtime=plan.mtime))
    plan.add(Entry.file(STATUS + "-old", db.status_raw, mtime=plan.mtime))
    for pkg, entry in items:
        stem = info_name(entry.package, entry.multi_arch, entry.architecture)
        written = {f"{stem}.list"}
        plan.add(Entry.file(f"{INFO}/{stem}.list", list_file(pkg.contents), mtime=plan.mtime))
        members = dict(pkg.contents.control_files)
        sums = md5sums(pkg.contents, plan.config)
        if sums is not None:
            members["md5sums"] = sums
        for member, data in sorted(members.items()):
            mode = 0o755 if member in SCRIPTS else 0o644
            written.add(f"{stem}.{member}")
            plan.add(Entry.file(f"{INFO}/{stem}.{member}", data, mode, mtime=plan.mtime))
        for old in pkg.old_info:
            if old not in written:
                plan.remove(posixpath.join(INFO, old))
