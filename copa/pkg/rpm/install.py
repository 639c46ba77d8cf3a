"""Turn read .rpm packages into layer entries the way `rpm -U` leaves the filesystem (no scriptlets run).

What rpm does that we reproduce: files land where the image's directory symlinks lead (a package's /lib/x goes to
usr/lib/x when /lib -> usr/lib); modes from FILEMODES and owners from FILEUSERNAME/FILEGROUPNAME (mapped to the
image's /etc/passwd and /etc/group ids, root when unknown, as rpm does); symlinks from FILELINKTOS; hard links;
directories the image lacks; %caps as the security.capability xattr (caps.py; a PAX record in the layer); %ghost
files are not written; files the old version owned and the new one dropped are removed (unless another installed
package still owns them); %config files follow rpm's rules (rpmfiDecideFate): an unmodified one is replaced, a
modified one is kept with the new one beside it as `.rpmnew` (%config(noreplace)) or moved aside as `.rpmsave` with
the new one installed (%config), and left alone when the package did not change it.

The image's rpm macros (macros.py: %_excludedocs, %_install_langs, %_netsharedpath, dnf's tsflags=nodocs) keep
files out as rpm's skipInstallFiles does: such a file is not written (an older version's copy of it is erased, an
emptied directory too), and the installed header records it as NOTINSTALLED or NETSHARED (`LayerPlan.states`).
"""

from __future__ import annotations

import bisect
import hashlib
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from copa.oci.layer import Entry, Kind, ParentCheck
from copa.oci.rootfs import View
from copa.pkg.effects.model import Package
from copa.pkg.rpm import caps
from copa.pkg.rpm.header import Header
from copa.pkg.rpm.macros import InstallPolicy, read_policy
from copa.pkg.rpm.rpmfile import RpmContents, RpmFile
from copa.pkg.rpm.tags import FileFlag, FileState, Tag

# FILEDIGESTALGO (OpenPGP hash ids) -> hashlib names; a header without it uses MD5 (rpm < 4.6 packages).
_DIGESTS = {1: "md5", 2: "sha1", 8: "sha256", 9: "sha384", 10: "sha512", 11: "sha224"}


@dataclass(frozen=True, slots=True)
class OwnedFile:
    """A file an installed version owns, from its header."""

    path: str  # normalised, no leading slash
    flags: int
    digest: str
    mode: int
    state: int = FileState.NORMAL  # FILESTATES of an installed header: NOTINSTALLED/NETSHARED ones are not on disk


def owned_files(h: Header) -> tuple[OwnedFile, ...]:
    paths = owned_paths(h)
    flags = h.ints(Tag.FILEFLAGS)
    digests = h.strings(Tag.FILEDIGESTS)
    modes = h.ints(Tag.FILEMODES)
    states = h.ints(Tag.FILESTATES)
    return tuple(OwnedFile(path, flags[i] if i < len(flags) else 0, digests[i] if i < len(digests) else "",
                           modes[i] & 0xFFFF if i < len(modes) else 0,
                           _signed_char(states[i]) if i < len(states) else FileState.NORMAL)
                 for i, path in enumerate(paths))


def owned_paths(h: Header) -> tuple[str, ...]:
    """The paths of the files an installed header lists (normalised, no leading slash), in its order: what the
    plan and the build need of every installed package (an image's headers list tens of thousands of files;
    OwnedFile records are made only for the headers being replaced)."""
    names = h.strings(Tag.BASENAMES)
    dirs = h.strings(Tag.DIRNAMES)
    index = h.ints(Tag.DIRINDEXES)
    prefixes: dict[int, str | None] = {}
    out = []
    for i, base in enumerate(names):
        d = index[i] if i < len(index) and index[i] < len(dirs) else -1
        try:
            prefix = prefixes[d]
        except KeyError:
            prefix = prefixes[d] = _dir_prefix(dirs[d] if d >= 0 else "/")
        if prefix is None or "/" in base or base in ("", ".", ".."):
            out.append(posixpath.normpath((dirs[d] if d >= 0 else "/") + base).lstrip("/"))
        else:
            out.append(prefix + base)
    return tuple(out)


def _dir_prefix(directory: str) -> str | None:
    """What normalising DIRNAME + BASENAME puts before a plain basename (no "/", not "." or ".."), computed once a
    directory: for a DIRNAME ending in "/" (as rpm writes them), normpath of the two joined is normpath of the
    directory, then the name. None for any other DIRNAME: each of its files is normalised whole."""
    if not directory.endswith("/"):
        return None
    head = posixpath.normpath(directory).lstrip("/")
    return "" if head == "." or not head else head + "/"


def _signed_char(value: int) -> int:
    return value - 256 if value > 127 else value


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
    policy: InstallPolicy = field(default_factory=InstallPolicy)
    states: dict[str, list[int]] = field(default_factory=dict)  # per package (NEVRA): FILESTATES to record
    _sorted: list[str] | None = field(default=None, repr=False)
    _check_parents: ParentCheck = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._check_parents = ParentCheck(self._kind)  # (the image's kinds, which the build never changes)

    @classmethod
    def of(cls, view: View, mtime: int, arch: str = "x86_64") -> LayerPlan:
        return cls(view, mtime, users=_ids(view.read("etc/passwd")), groups=_ids(view.read("etc/group")),
                   policy=read_policy(view.read, lambda d: _listdir(view, d), arch))

    def sorted_paths(self) -> list[str]:
        """The image's paths in order (computed once: directories emptied by skipped files look them up)."""
        if self._sorted is None:
            self._sorted = sorted(self.view.nodes)
        return self._sorted

    def file_states(self, contents: RpmContents) -> list[int] | None:
        """The FILESTATES of the installed header for a package `install_package` placed (None: all NORMAL)."""
        return self.states.get(contents.headers.nevra)

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
        self._check_parents(path, "package file")
        uid, gid = self.users.get(f.user, 0), self.groups.get(f.group, 0)
        mode = f.mode & 0o7777
        if f.kind == "dir":
            return Entry(path, Kind.DIR, mode, uid, gid, mtime=f.mtime)
        if f.kind == "symlink":
            return Entry(path, Kind.SYMLINK, 0o777, uid, gid, linkname=f.linkname, mtime=f.mtime)
        if f.kind == "hardlink":
            return Entry(path, Kind.HARDLINK, mode, uid, gid, linkname=self.real(f.linkname), mtime=f.mtime)
        return Entry(path, Kind.FILE, mode, uid, gid, f.size, f.open, mtime=f.mtime, pax=self.caps_pax(f))

    def _kind(self, path: str) -> str | None:
        node = self.view.get(path)
        return node.kind if node is not None else None

    def caps_pax(self, f: RpmFile) -> dict[str, str]:
        """%caps: the security.capability xattr rpm sets (cap_set_file), as the PAX record runtimes apply."""
        if not f.caps:
            return {}
        try:
            raw = caps.vfs_cap_data(f.caps)
        except caps.CapsError as e:
            raw = None
            self.notes.append(f"/{f.path}: capabilities {f.caps!r} not understood ({e}): not set")
        return {caps.PAX_KEY: caps.pax_value(raw)} if raw is not None else {}


def _listdir(view: View, directory: str) -> list[str]:
    try:
        real = view.resolve(directory)
    except Exception:  # a symlink loop
        return []
    if not real:  # (the root: every top-level path)
        return sorted(p for p in view.nodes if "/" not in p)
    # A range of the view's sorted paths (bisection), not a test of every path: an image holds tens of thousands.
    cut = len(real) + 1
    return [p[cut:] for p in view.paths_below(real) if "/" not in p[cut:]]


def _lang_skipped(langs: tuple[str, ...], flangs: str) -> bool:
    """skipInstallFiles: a file is kept when one of its '|'-separated languages is a prefix (strncmp over the
    file language's length) of one installed language."""
    return not any(lang[:len(fl)] == fl for lang in langs for fl in flangs.split("|") if fl)


def _netshared(paths: tuple[str, ...], dn: str, bn: str) -> bool:
    """matchNetsharedpath: `dn` with its trailing slash; a directory or a complete file path matches."""
    for nsp in paths:
        if len(dn) >= len(nsp):
            if dn.startswith(nsp) and (len(dn) == len(nsp) or dn[len(nsp)] == "/"):
                return True
        elif len(nsp) >= len(dn) + len(bn) and nsp.startswith(dn):
            rest = nsp[len(dn):]
            slash = rest.find("/")
            if slash != -1 and slash + 1 < len(rest):
                continue
            if rest.startswith(bn) and rest[len(bn):] in ("", "/"):
                return True
    return False


def skipped_files(contents: RpmContents, policy: InstallPolicy) -> list[int]:
    """FILESTATES for a package as lib/transaction.c skipInstallFiles leaves them: NETSHARED for a net shared
    path, NOTINSTALLED for a language not installed or (with %_excludedocs) a %doc file, then NOTINSTALLED for a
    listed directory all of whose files were skipped (deepest first, the parent counting it as skipped)."""
    h = contents.header
    n = len(contents.files)
    states = [int(FileState.NORMAL)] * n
    if not policy.filters or not n:
        return states
    dirnames = list(h.strings(Tag.DIRNAMES))
    dirindexes = h.ints(Tag.DIRINDEXES)
    if len(dirindexes) != n:  # OLDFILENAMES headers: directories from the paths
        dirnames = sorted({posixpath.dirname("/" + f.path).rstrip("/") + "/" for f in contents.files})
        dirindexes = tuple(dirnames.index(posixpath.dirname("/" + f.path).rstrip("/") + "/") for f in contents.files)
    count = [0] * len(dirnames)
    emptied = [False] * len(dirnames)
    for i, f in enumerate(contents.files):
        ix = dirindexes[i]
        count[ix] += 1
        state = None
        if policy.netshared and _netshared(policy.netshared, dirnames[ix], posixpath.basename(f.path)):
            state = FileState.NETSHARED
        elif ((policy.install_langs is not None and f.lang and _lang_skipped(policy.install_langs, f.lang))
              or (policy.excludedocs and f.flags & FileFlag.DOC)):
            state = FileState.NOTINSTALLED  # a language not installed, or %doc with %_excludedocs
        if state is not None:
            states[i] = int(state)
            count[ix] -= 1
            emptied[ix] = True
    for j in range(len(dirnames) - 1, -1, -1):
        if count[j] or not emptied[j]:
            continue
        want = dirnames[j].rstrip("/")
        for i, f in enumerate(contents.files):
            if states[i] == FileState.NORMAL and f.kind == "dir" and "/" + f.path == want:
                states[i] = int(FileState.NOTINSTALLED)
                count[dirindexes[i]] -= 1
                emptied[dirindexes[i]] = True
                break
    return states


def install_package(plan: LayerPlan, new: RpmContents, old: Header | None, other_owned: set[str]) -> list[str]:
    """Add one package's files to `plan`; returns what is worth noting (.rpmnew/.rpmsave made, files the image's
    rpm configuration keeps out)."""
    notes: list[str] = []
    before = {f.path: f for f in owned_files(old)} if old is not None else {}
    algo = digest_algorithm(new.header)
    old_algo = digest_algorithm(old) if old is not None else algo
    kept: set[str] = set()
    states = skipped_files(new, plan.policy)
    if any(states):
        plan.states[new.headers.nevra] = states
        notes.append(f"{sum(1 for s in states if s)} files not installed (the image's rpm macros: "
                     f"{_policy_text(plan.policy)})")
    skipped_dirs: list[str] = []
    for f, state in zip(new.files, states, strict=True):
        kept.add(f.path)
        if state != FileState.NORMAL:
            # Skipped as rpm skips it: not written; what the old version installed there is erased.
            was = before.get(f.path)
            if was is not None and was.state == FileState.NORMAL and "/" + f.path not in other_owned:
                real = plan.real(f.path)
                node = plan.view.get(real)
                if node is not None and node.kind == "dir":
                    skipped_dirs.append(real)
                elif node is not None:
                    plan.remove(real)
            continue
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
        if gone.path in kept or "/" + gone.path in other_owned or gone.state != FileState.NORMAL:
            continue  # (rpm erases only the files an installed header says it installed)
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
    for real in sorted(skipped_dirs, reverse=True):  # deepest first: rpm erases a directory once it is empty
        if _empty_after(plan, real):
            plan.remove(real)
    notes.extend(plan.notes)
    plan.notes.clear()
    return notes


def _empty_after(plan: LayerPlan, directory: str) -> bool:
    """Whether nothing is left in `directory` once the layer's whiteouts and files are applied."""
    prefix = directory + "/"
    for path, entry in plan.entries.items():
        if path.startswith(prefix) and entry.kind is not Kind.WHITEOUT:
            return False
    gone = [p for p, e in plan.entries.items() if e.kind is Kind.WHITEOUT and p.startswith(prefix)]
    paths = plan.sorted_paths()
    i = bisect.bisect_left(paths, prefix)
    while i < len(paths) and paths[i].startswith(prefix):
        path = paths[i]
        if not any(path == g or path.startswith(g + "/") for g in gone):
            return False
        i += 1
    return True


def _policy_text(policy: InstallPolicy) -> str:
    parts = []
    if policy.excludedocs:
        parts.append("%_excludedocs")
    if policy.install_langs is not None:
        parts.append("%_install_langs " + ":".join(policy.install_langs))
    if policy.netshared:
        parts.append("%_netsharedpath " + ":".join(policy.netshared))
    return ", ".join(parts)


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


def other_owned(owned: Mapping[int, Sequence[str]], updated: Iterable[int]) -> set[str]:
    """Every path (leading slash) an installed header not being replaced owns; `owned` is each header's
    owned_paths by hnum (read once per plan: an image's headers list tens of thousands of files)."""
    skip = set(updated)
    out: set[str] = set()
    for hnum, paths in owned.items():
        if hnum not in skip:
            out.update("/" + p for p in paths)
    return out


_SHELLS = {"/bin/sh", "/usr/bin/sh", "/bin/bash", "/usr/bin/bash"}
_TRANSFILETRIGGERSCRIPTS = 5076  # RPMTAG_TRANSFILETRIGGERSCRIPTS
_SCRIPTLETS = ((Tag.PRETRANS, Tag.PRETRANSPROG, "%pretrans"), (Tag.PREIN, Tag.PREINPROG, "%pre"),
               (Tag.POSTIN, Tag.POSTINPROG, "%post"), (Tag.POSTTRANS, Tag.POSTTRANSPROG, "%posttrans"))


def _scriptlet(h: Header, body_tag: int, prog_tag: int, label: str) -> tuple[str, bytes] | None:
    """(key, text) of one scriptlet as copa.pkg.effects reads it: shell text under its label; `-p /sbin/ldconfig`
    (no body) as the command it runs; any other interpreter under "LABEL <PROGRAM>" (only noted)."""
    body = h.string(body_tag)
    progs = h.strings(prog_tag)
    prog = progs[0] if progs else "/bin/sh"
    if body is None and not progs:
        return None
    if prog in _SHELLS:
        return label, (body or "").encode()
    if posixpath.basename(prog) == "ldconfig" and not body:
        return label, f"{prog}\n".encode()
    return f"{label} {prog}" if prog.startswith("<") else f"{label} <{prog}>", (body or "").encode()


# Installed packages' triggers (rpmtag numbers): (names, indexes, scripts, programs, flags) for name triggers,
# file triggers and transaction file triggers.
_TRIGGER_TAGS = ((Tag.TRIGGERNAME, Tag.TRIGGERINDEX, Tag.TRIGGERSCRIPTS, Tag.TRIGGERSCRIPTPROG, Tag.TRIGGERFLAGS,
                  "trigger"),
                 (5069, 5070, 5066, 5067, 5072, "file trigger"), (5079, 5080, 5076, 5077, 5082, "file trigger"))
_TRIGGERIN = 1 << 16  # RPMSENSE_TRIGGERIN


@dataclass(frozen=True, slots=True)
class _Trigger:
    """One %triggerin-type entry of an installed package: what fires it and the script it runs (None for an
    ldconfig one, left to the libraries effect; it still counts as fired, so its other targets are skipped)."""

    who: str
    kind: str  # "trigger" (a package name) or "file trigger" (a path prefix)
    target: str
    index: int  # the script's index: a script fires once per package whatever the number of targets it has
    text: str | None


@dataclass(frozen=True)
class InstalledTriggers:
    """The installed packages' %triggerin, %filetriggerin and %transfiletriggerin entries, read from their headers
    once: each package an upgrade installs is matched against this list, not against every installed header."""

    groups: tuple[tuple[str, tuple[_Trigger, ...]], ...]  # per installed header and trigger kind, in order

    @classmethod
    def of(cls, installed: Iterable[Header]) -> InstalledTriggers:
        groups: list[tuple[str, tuple[_Trigger, ...]]] = []
        for h in installed:
            if not any(t[0] in h for t in _TRIGGER_TAGS):
                continue
            who = h.string(Tag.NAME) or ""
            for names_tag, index_tag, scripts_tag, progs_tag, flags_tag, kind in _TRIGGER_TAGS:
                names, indexes, bodies = h.strings(names_tag), h.ints(index_tag), h.strings(scripts_tag)
                progs, flags = h.strings(progs_tag), h.ints(flags_tag)
                found = []
                for i, target in enumerate(names):
                    if i >= len(indexes) or i >= len(flags) or not flags[i] & _TRIGGERIN:
                        continue
                    j = indexes[i]
                    prog = progs[j] if j < len(progs) else "/bin/sh"
                    body = bodies[j] if j < len(bodies) else ""
                    text = None if posixpath.basename(prog) == "ldconfig" and not body.strip() else \
                        body if prog in _SHELLS else f"{prog}\n"
                    found.append(_Trigger(who, kind, target, j, text))
                if found:
                    groups.append((who, tuple(found)))
        return cls(tuple(groups))

    def fired_by(self, new: RpmContents) -> list[str]:
        """The scriptlets this package's installation fires (its name, or a path under the prefix), as
        "# who\nscript" texts."""
        name = new.header.string(Tag.NAME) or ""
        paths = ["/" + f.path for f in new.files]
        out: list[str] = []
        for who, triggers in self.groups:
            if who == name:
                continue
            fired: set[int] = set()
            for t in triggers:
                if t.index in fired:
                    continue
                if not (t.target == name if t.kind == "trigger" else any(p.startswith(t.target) for p in paths)):
                    continue
                fired.add(t.index)
                if t.text is not None:
                    out.append(f"# {who}'s {t.kind} on {t.target}\n{t.text}")
        return out


def effects_package(new: RpmContents, old: Header | None,
                    installed: Iterable[Header] | InstalledTriggers = ()) -> Package:
    """The copa.pkg.effects view of one package an upgrade installs: the new version's %pretrans, %pre, %post and
    %posttrans, the old version's %preun/%postun, the new version's triggers and the installed packages' triggers
    it fires (these last three only noted)."""
    h = new.header
    scripts: dict[str, bytes] = {}
    for body_tag, prog_tag, label in _SCRIPTLETS:
        found = _scriptlet(h, body_tag, prog_tag, label)
        if found is not None:
            scripts[found[0]] = found[1]
    if old is not None:
        for body_tag, prog_tag, label in ((Tag.PREUN, Tag.PREUNPROG, "%preun"), (Tag.POSTUN, Tag.POSTUNPROG,
                                                                                 "%postun")):
            found = _scriptlet(old, body_tag, prog_tag, label)
            if found is not None:
                scripts["old " + found[0]] = found[1]
    triggers = h.strings(Tag.TRIGGERSCRIPTS)
    if triggers:
        scripts["%triggers"] = "\n".join(triggers).encode()
    files = [*h.strings(Tag.FILETRIGGERSCRIPTS), *h.strings(_TRANSFILETRIGGERSCRIPTS)]
    if files:
        scripts["%filetriggers"] = "\n".join(files).encode()
    table = installed if isinstance(installed, InstalledTriggers) else InstalledTriggers.of(installed)
    fired = table.fired_by(new)
    if fired:
        scripts["%installed triggers"] = "\n".join(fired).encode()
    return Package(h.string(Tag.NAME) or "", _evr(old) if old is not None else "", _evr(h), scripts)


def _evr(h: Header) -> str:
    epoch = h.integer(Tag.EPOCH)
    return f"{epoch}:" * (epoch is not None) + f"{h.string(Tag.VERSION) or ''}-{h.string(Tag.RELEASE) or ''}"
