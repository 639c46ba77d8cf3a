"""Turn read .rpm packages into layer entries the way `rpm -U` leaves the filesystem (no scriptlets run).

What rpm does that we reproduce: files land where the image's directory symlinks lead (a package's /lib/x goes to
usr/lib/x when /lib -> usr/lib); modes from FILEMODES and owners from FILEUSERNAME/FILEGROUPNAME (mapped to the
image's /etc/passwd and /etc/group ids, root when unknown, as rpm does); symlinks from FILELINKTOS; hard links;
directories the image lacks; %ghost files are not written; files the old version owned and the new one dropped
are removed (unless another installed package still owns them); %config files follow rpm's rules (rpmfiDecideFate):
an unmodified one is replaced, a modified one is kept with the new one beside it as `.rpmnew`
(%config(noreplace)) or moved aside as `.rpmsave` with the new one installed (%config), and left alone when the
package did not change it.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from copa.oci.layer import Entry, Kind
from copa.oci.rootfs import View
from copa.pkg.rpm.header import Header
from copa.pkg.rpm.rpmfile import RpmContents, RpmFile
from copa.pkg.rpm.tags import FileFlag, Tag

# FILEDIGESTALGO (OpenPGP hash ids) -> hashlib names; a header without it uses MD5 (rpm < 4.6 packages).
_DIGESTS = {1: "md5", 2: "sha1", 8: "sha256", 9: "sha384", 10: "sha512", 11: "sha224"}


@dataclass(frozen=True, slots=True)
class OwnedFile:
    """A file an installed version owns, from its header."""

    path: str  # normalised, no leading slash
    flags: int
    digest: str
    mode: int


def owned_files(h: Header) -> tuple[OwnedFile, ...]:
    names = h.strings(Tag.BASENAMES)
    dirs = h.strings(Tag.DIRNAMES)
    index = h.ints(Tag.DIRINDEXES)
    flags = h.ints(Tag.FILEFLAGS)
    digests = h.strings(Tag.FILEDIGESTS)
    modes = h.ints(Tag.FILEMODES)
    out = []
    for i, base in enumerate(names):
        d = dirs[index[i]] if i < len(index) and index[i] < len(dirs) else "/"
        out.append(OwnedFile(posixpath.normpath(d + base).lstrip("/"), flags[i] if i < len(flags) else 0,
                             digests[i] if i < len(digests) else "", modes[i] & 0xFFFF if i < len(modes) else 0))
    return tuple(out)


def digest_algorithm(h: Header) -> str:
    return _DIGESTS.get(h.integer(Tag.FILEDIGESTALGO) or 1, "md5")


def _ids(content: bytes | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (content or b"").decode("utf-8", "replace").splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            out.setdefault(parts[0], int(parts[2]))
    return out


@dataclass
class LayerPlan:
    """The entries of the patch layer, keyed by real path."""

    view: View
    mtime: int
    entries: dict[str, Entry] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, view: View, mtime: int) -> LayerPlan:
        return cls(view, mtime, users=_ids(view.read("etc/passwd")), groups=_ids(view.read("etc/group")))

    def real(self, path: str) -> str:
        """Where rpm writes a package path: through the image's directory symlinks, never through the last part."""
        parent, base = posixpath.split(path)
        return posixpath.join(self.view.resolve(parent), base) if parent else base

    def add(self, entry: Entry) -> None:
        self.entries[entry.path] = entry

    def remove(self, path: str) -> None:
        if self.view.get(path) is not None:
            self.entries[path] = Entry.whiteout(path)
        else:
            self.entries.pop(path, None)

    def file_entry(self, f: RpmFile, path: str) -> Entry:
        uid, gid = self.users.get(f.user, 0), self.groups.get(f.group, 0)
        mode = f.mode & 0o7777
        if f.kind == "dir":
            return Entry(path, Kind.DIR, mode, uid, gid, mtime=f.mtime)
        if f.kind == "symlink":
            return Entry(path, Kind.SYMLINK, 0o777, uid, gid, linkname=f.linkname, mtime=f.mtime)
        if f.kind == "hardlink":
            return Entry(path, Kind.HARDLINK, mode, uid, gid, linkname=self.real(f.linkname), mtime=f.mtime)
        return Entry(path, Kind.FILE, mode, uid, gid, f.size, f.open, mtime=f.mtime)


def install_package(plan: LayerPlan, new: RpmContents, old: Header | None, other_owned: set[str]) -> list[str]:
    """Add one package's files to `plan`; returns what is worth noting (.rpmnew/.rpmsave made)."""
    notes: list[str] = []
    before = {f.path: f for f in owned_files(old)} if old is not None else {}
    algo = digest_algorithm(new.header)
    old_algo = digest_algorithm(old) if old is not None else algo
    kept: set[str] = set()
    for f in new.files:
        kept.add(f.path)
        if f.ghost or f.kind in ("chardev", "blockdev", "fifo"):
            continue  # %ghost: recorded in the database, never written; device nodes cannot live in a layer
        path = plan.real(f.path)
        if f.kind == "dir":
            node = plan.view.get(path)
            if node is None or node.kind != "dir":
                plan.add(plan.file_entry(f, path))
            continue
        if f.config and f.kind == "file":
            fate = _config_fate(plan, f, path, before.get(f.path), algo, old_algo)
            if fate == "keep":
                continue
            if fate == "rpmnew":
                plan.add(plan.file_entry(f, path + ".rpmnew"))
                notes.append(f"/{path} kept (modified), new version as .rpmnew")
                continue
            if fate == "rpmsave":
                current = plan.view.read(path)
                if current is not None:
                    node = plan.view.get(path)
                    plan.add(Entry.file(path + ".rpmsave", current, node.mode & 0o7777 if node else 0o644,
                                        mtime=plan.mtime))
                    notes.append(f"/{path} replaced, the modified one saved as .rpmsave")
        plan.add(plan.file_entry(f, path))
    for gone in before.values():
        if gone.path in kept or "/" + gone.path in other_owned:
            continue
        real = plan.real(gone.path)
        node = plan.view.get(real)
        if node is None or node.kind == "dir":
            continue  # rpm removes a directory only when empty; an image's directory stays
        if gone.flags & FileFlag.CONFIG and _modified(plan, real, gone, old_algo):
            content = plan.view.read(real)
            if content is not None:
                plan.add(Entry.file(real + ".rpmsave", content, node.mode & 0o7777, mtime=plan.mtime))
                notes.append(f"/{real} (modified, no longer shipped) saved as .rpmsave")
        plan.remove(real)
    return notes


def _digest(data: bytes, algo: str) -> str:
    return hashlib.new(algo, data, usedforsecurity=False).hexdigest()


def _modified(plan: LayerPlan, path: str, old: OwnedFile, algo: str) -> bool:
    current = plan.view.read(path)
    if current is None:
        return plan.view.get(path) is not None  # not captured: we cannot tell, treat as modified (keep it)
    return bool(old.digest) and _digest(current, algo) != old.digest


def _config_fate(plan: LayerPlan, f: RpmFile, path: str, old: OwnedFile | None, algo: str, old_algo: str) -> str:
    """rpm's decision for a %config file: "write", "keep", "rpmnew" (keep + new beside) or "rpmsave"."""
    node = plan.view.get(path)
    if node is None or old is None:
        return "write" if node is None else ("rpmnew" if f.noreplace else "rpmsave")
    current = plan.view.read(path)
    if current is None:
        return "keep" if f.noreplace else "write"  # outside the captured paths: rpm's view is unknown to us
    current_old = _digest(current, old_algo)
    if old.digest and current_old == old.digest:
        return "write"  # unmodified
    if _digest(current, algo) == f.digest:
        return "keep"  # already the new content
    if old.digest and old.digest == f.digest and algo == old_algo:
        return "keep"  # modified, but the package did not change it
    return "rpmnew" if f.noreplace else "rpmsave"


def other_owned(headers: Mapping[int, Header], updated: Iterable[int]) -> set[str]:
    """Every path (leading slash) a header not being replaced owns."""
    skip = set(updated)
    out: set[str] = set()
    for hnum, h in headers.items():
        if hnum not in skip:
            out.update("/" + f.path for f in owned_files(h))
    return out


def scripts_note(h: Header) -> str:
    """The scriptlets copa did not run."""
    names = [(Tag.PREIN, "%pre"), (Tag.POSTIN, "%post"), (Tag.PREUN, "%preun"), (Tag.POSTUN, "%postun")]
    present = [label for tag, label in names if h.string(tag)]
    if h.strings(Tag.TRIGGERSCRIPTS):
        present.append("triggers")
    return f"not run: {', '.join(present)}" if present else ""


def database_files(entries: Sequence[Entry], plan: LayerPlan) -> None:
    for e in entries:
        plan.entries[e.path] = e
