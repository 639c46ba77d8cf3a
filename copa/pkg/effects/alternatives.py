"""update-alternatives (dpkg): what a postinst's literal `--install LINK NAME PATH PRIO [--slave LINK NAME PATH]...`
and `--remove NAME PATH` change: the administrative file /var/lib/dpkg/alternatives/NAME (mode, master link, slaves,
a blank line, then per choice its path, priority and slave paths, a blank line), the /etc/alternatives/NAME and slave
symlinks (auto mode: the highest priority wins, the first of equals in the file's order, new choices last; manual
mode keeps its choice unless it was removed, then falls back to auto), and the LINK symlinks when they are missing or
symlinks already; a slave whose file is missing loses its links. A call with a word the shell would expand (`$VAR`,
a backquote, a glob) is not reproduced."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field

from copa.oci.layer import Entry, Kind
from copa.pkg.effects.merged import Merged

ADMINDIR = "var/lib/dpkg/alternatives"
ALTDIR = "etc/alternatives"
_OPTIONS = {"--quiet", "--verbose", "--debug", "--force", "--skip-auto"}


@dataclass
class Choice:
    path: str
    priority: int
    slaves: dict[str, str] = field(default_factory=dict)  # slave name -> path


@dataclass
class Group:
    name: str
    mode: str
    link: str
    slaves: list[tuple[str, str]]  # (name, link), in the file's order
    choices: list[Choice]


def parse(name: str, text: str) -> Group | None:
    lines = text.split("\n")
    try:
        mode, link = lines[0], lines[1]
        i = 2
        slaves = []
        while lines[i] != "":
            slaves.append((lines[i], lines[i + 1]))
            i += 2
        i += 1
        choices = []
        while lines[i] != "":
            choice = Choice(lines[i], int(lines[i + 1]))
            for k, (sname, _) in enumerate(slaves):
                if lines[i + 2 + k]:
                    choice.slaves[sname] = lines[i + 2 + k]
            choices.append(choice)
            i += 2 + len(slaves)
    except (IndexError, ValueError):
        return None
    if mode not in ("auto", "manual"):
        return None
    return Group(name, mode, link, slaves, choices)


def _sort(group: Group) -> None:
    """update-alternatives keeps slaves and choices sorted by name (strcmp) in the file."""
    group.slaves.sort(key=lambda s: s[0].encode("utf-8", "surrogateescape"))
    group.choices.sort(key=lambda c: c.path.encode("utf-8", "surrogateescape"))


def render(group: Group) -> bytes:
    _sort(group)
    out = [group.mode, group.link]
    for sname, slink in group.slaves:
        out += [sname, slink]
    out.append("")
    for c in group.choices:
        out += [c.path, str(c.priority)]
        out += [c.slaves.get(sname, "") for sname, _ in group.slaves]
    out += ["", ""]
    return "\n".join(out).encode()


@dataclass(frozen=True)
class Call:
    action: str  # "install" or "remove"
    name: str
    path: str
    link: str = ""
    priority: int = 0
    slaves: tuple[tuple[str, str, str], ...] = ()  # (link, name, path)


def parse_call(argv: Sequence[str]) -> Call | None:
    """One update-alternatives command line, or None when it is not a literal --install/--remove."""
    if any(ch in a for a in argv for ch in "$`*?[~"):
        return None
    args = [a for a in argv if a not in _OPTIONS]
    if not args:
        return None
    try:
        if args[0] == "--install" and len(args) >= 5:
            link, name, path, prio = args[1:5]
            rest = args[5:]
            slaves = []
            while rest:
                if rest[0] != "--slave" or len(rest) < 4:
                    return None
                slaves.append((rest[1], rest[2], rest[3]))
                rest = rest[4:]
            return Call("install", name, path, link, int(prio), tuple(slaves))
        if args[0] == "--remove" and len(args) == 3:
            return Call("remove", args[1], args[2])
    except ValueError:
        return None
    return None


def _best(group: Group) -> Choice | None:
    best: Choice | None = None
    for c in group.choices:
        if best is None or c.priority > best.priority:
            best = c
    return best


class Alternatives:
    """The calls of one upgrade, applied in order on the merged result; `entries()` gives what changed."""

    def __init__(self, merged: Merged, mtime: int | None) -> None:
        self.merged = merged
        self.mtime = mtime
        self.out: dict[str, Entry] = {}

    def _put(self, entry: Entry) -> None:
        self.out[entry.path] = entry
        self.merged.add([entry])

    def _symlink(self, path: str, target: str) -> None:
        if self.merged.kind(path) == "symlink" and self.merged.linkname(path) == target:
            return
        self._put(Entry(path, Kind.SYMLINK, 0o777, linkname=target, mtime=self.mtime))

    def _unlink(self, path: str) -> None:
        if self.merged.kind(path) == "symlink":
            self._put(Entry.whiteout(path))

    def _exists(self, path: str) -> bool:
        return self.merged.target_kind(path.lstrip("/")) is not None

    def load(self, name: str) -> Group | None:
        text = self.merged.read(posixpath.join(ADMINDIR, name))
        return None if text is None else parse(name, text.decode("utf-8", "surrogateescape"))

    def apply(self, call: Call) -> bool:
        """Apply one call; False when update-alternatives would have refused it (or copa cannot tell)."""
        admin = posixpath.join(ADMINDIR, call.name)
        group = self.load(call.name)
        if group is None and self.merged.exists(admin):
            return False  # an administrative file copa cannot read
        current = self.merged.linkname(posixpath.join(ALTDIR, call.name))
        if call.action == "install":
            if not self._exists(call.path):
                return False  # "alternative path ... doesn't exist": update-alternatives fails
            if group is None:
                group = Group(call.name, "auto", call.link, [], [])
            group.link = call.link
            for slink, sname, _ in call.slaves:
                known = [i for i, (n, _) in enumerate(group.slaves) if n == sname]
                if known:
                    group.slaves[known[0]] = (sname, slink)
                else:
                    group.slaves.append((sname, slink))
            choice = Choice(call.path, call.priority, {sname: spath for _, sname, spath in call.slaves})
            same = [i for i, c in enumerate(group.choices) if c.path == call.path]
            if same:
                group.choices[same[0]] = choice
            else:
                group.choices.append(choice)
        else:
            if group is None or not any(c.path == call.path for c in group.choices):
                return True  # "alternative ... for ... not registered; not removing": nothing changes
            group.choices = [c for c in group.choices if c.path != call.path]
            if current == call.path and group.mode == "manual":
                group.mode = "auto"
        if not group.choices:
            self._put(Entry.whiteout(admin))
            self._unlink(posixpath.join(ALTDIR, group.name))
            self._unlink(group.link.lstrip("/"))
            for sname, slink in group.slaves:
                self._unlink(posixpath.join(ALTDIR, sname))
                self._unlink(slink.lstrip("/"))
            return True
        chosen = None  # the best in the file's order with new choices last (sorted only when saved)
        if group.mode == "manual":
            chosen = next((c for c in group.choices if c.path == current), None)
            if chosen is None:
                group.mode = "auto"
        if chosen is None:
            chosen = _best(group)
        assert chosen is not None
        # Slaves no choice provides any more are dropped from the group, as update-alternatives does.
        used = {s for c in group.choices for s in c.slaves}
        gone = [(n, link) for n, link in group.slaves if n not in used]
        group.slaves = [(n, link) for n, link in group.slaves if n in used]
        for sname, slink in gone:
            self._unlink(posixpath.join(ALTDIR, sname))
            self._unlink(slink.lstrip("/"))
        mode = self.merged.mode(admin) or 0o644
        new = render(group)
        if self.merged.read(admin) != new:
            self._put(Entry.file(admin, new, mode & 0o7777, mtime=self.mtime))
        self._link(group.link, posixpath.join("/", ALTDIR, group.name))
        self._symlink(posixpath.join(ALTDIR, group.name), chosen.path)
        for sname, slink in group.slaves:
            spath = chosen.slaves.get(sname)
            if spath and self._exists(spath):
                self._link(slink, posixpath.join("/", ALTDIR, sname))
                self._symlink(posixpath.join(ALTDIR, sname), spath)
            else:
                self._unlink(posixpath.join(ALTDIR, sname))
                self._unlink(slink.lstrip("/"))
        return True

    def _link(self, link: str, target: str) -> None:
        """The public link: made when missing, replaced when a symlink, a real file left alone (no --force)."""
        path = link.lstrip("/")
        kind = self.merged.kind(path)
        if kind is None or kind == "symlink":
            self._symlink(path, target)

    def entries(self) -> list[Entry]:
        return [self.out[k] for k in sorted(self.out)]
