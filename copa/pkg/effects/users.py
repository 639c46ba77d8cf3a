"""System users and groups a Debian maintainer script creates with adduser 3.x (`adduser --system [--group]
[--ingroup G] [--home H] [--shell S] [--no-create-home] [--gecos C] NAME`, `addgroup --system NAME`), reproduced as
adduser does it (/usr/sbin/adduser, bookworm): nothing when the name exists; the uid the first one free from
FIRST_SYSTEM_UID (100) up to LAST_SYSTEM_UID (999), with --group the gid the first free from FIRST_SYSTEM_GID
(independently), else the group nogroup; home /nonexistent and shell /usr/sbin/nologin unless given. Then what
groupadd/useradd -r write: `name:x:gid:` in /etc/group and `name:!::` in /etc/gshadow, `name:x:uid:gid::home:shell`
in /etc/passwd (a --gecos goes in through chfn -f, which adds `,,,`) and `name:!:DAY::::::` in /etc/shadow (DAY:
days since the epoch of the layer's time, as shadow's tools take SOURCE_DATE_EPOCH), each only when the file exists,
each rewrite leaving the previous content as `FILE-` (shadow's backup: the file's owner, its mode masked by 0664).
A home other than /nonexistent is made 0755 and owned by the user (SYS_DIR_MODE) unless --no-create-home or present.

Alpine's busybox (`addgroup -S NAME`, `adduser -S -D [-H] [-h HOME] [-s SHELL] [-G GROUP] [-g GECOS] NAME`, checked
against busybox 1.37 in a chroot): the first free gid / uid from 100 upward; a user without -G joins nogroup; the
user is added to its group's member list; home /home/NAME and shell /sbin/nologin by default; `name:!:DAY:0:99999:7:::`
in /etc/shadow; the home, unless -H or present, made 02755 and owned by the user. Backups `FILE-` as above.

shadow's `groupadd -r NAME` and `useradd -r [-g G] [-d H] [-s S] [-c C] [-M] NAME` (bookworm's shadow 4.13): ids from
SYS_UID_MAX / SYS_GID_MAX (999, or login.defs) downward, the first free; without -g a group of the user's name, with
the uid as gid when that is free; home /home/NAME (not created) and the shell of /etc/default/useradd (/bin/sh).

Left as not reproduced, like any call with a word the shell would expand: an option not listed here (--uid, --gid,
useradd -m, a --gecos with commas, busybox adduser without -D)."""

from __future__ import annotations

import dataclasses
import posixpath
import re
from collections.abc import Callable, Sequence

from copa.oci.layer import Entry, Kind
from copa.pkg.effects.merged import Merged
from copa.pkg.effects.scripts import Command

COMMANDS = {"adduser", "addgroup", "useradd", "groupadd"}
_NAME = re.compile(r"^[a-z_][a-z0-9_.-]*\$?$")
_FLAGS = {f: f for f in ("--system", "--group", "--no-create-home", "--quiet", "--disabled-password",
                          "--disabled-login", "--force-badname", "--allow-badname")}
_VALUED = {v: v for v in ("--home", "--shell", "--ingroup", "--gecos", "--comment", "--uid", "--gid")}

def _conf(text: str | None) -> dict[str, int]:
    out = {"FIRST_SYSTEM_UID": 100, "LAST_SYSTEM_UID": 999, "FIRST_SYSTEM_GID": 100, "LAST_SYSTEM_GID": 999}
    for line in (text or "").splitlines():
        m = re.match(r"^\s*([A-Z_]+)\s*=\s*\"?(\d+)\"?\s*$", line)
        if m and m.group(1) in out:
            out[m.group(1)] = int(m.group(2))
    return out


def _scan(c: Command, flags: dict[str, str], valued: dict[str, str],
          split: Callable[[str], list[str] | None] = lambda a: None) -> dict[str, str] | None:
    """The options of an account command under the names `flags` and `valued` give them, with "cmd" and the account's
    "name"; None for an unknown option, a word the shell would expand, or a call not --system naming one valid
    account. `split` may turn a word into several, read in its place."""
    opts: dict[str, str] = {"cmd": c.name}
    args = list(c.argv)
    names = []
    while args:
        a = args.pop(0)
        words = split(a)
        if words is not None:
            args[:0] = words
            continue
        if a in flags:
            opts[flags[a]] = ""
        elif a in valued and args:
            opts[valued[a]] = args.pop(0)
        elif a.startswith("-"):
            return None
        else:
            names.append(a)
    if any(ch in v for v in [*opts.values(), *names] for ch in "$`*?"):
        return None
    if "--system" not in opts or len(names) != 1 or not _NAME.match(names[0]):
        return None
    opts["name"] = names[0]
    return opts


_BB_FLAGS = {"-S": "--system", "-D": "-D", "-H": "--no-create-home"}
_BB_VALUED = {"-h": "--home", "-s": "--shell", "-G": "--ingroup", "-g": "--gecos"}


def _bb_split(a: str) -> list[str] | None:
    if a.startswith("-") and len(a) > 2 and all(f"-{ch}" in _BB_FLAGS for ch in a[1:]):
        return [f"-{ch}" for ch in a[1:]]  # -SDH
    return None


def _parse_busybox(c: Command) -> dict[str, str] | None:
    opts = _scan(c, _BB_FLAGS, _BB_VALUED, _bb_split)
    if opts is None:
        return None
    if c.name == "adduser" and "-D" not in opts:
        return None  # busybox would ask for a password
    if c.name == "addgroup" and set(opts) - {"cmd", "name", "--system"}:
        return None
    return opts


_SHADOW_FLAGS = {"-r": "--system", "--system": "--system", "-M": "-M", "--no-create-home": "-M"}
_SHADOW_VALUED = {"-g": "--ingroup", "--gid": "--ingroup", "-d": "--home", "--home-dir": "--home", "-s": "--shell",
                  "--shell": "--shell", "-c": "--gecos", "--comment": "--gecos"}
_GROUPADD_FLAGS = {**_SHADOW_FLAGS, "-f": "-f", "--force": "-f"}
_GROUPADD_VALUED = {**_SHADOW_VALUED, "-g": "--gid", "--gid": "--gid"}
_USERADD_VALUED = {**_SHADOW_VALUED, "-u": "--uid", "--uid": "--uid"}


def _parse_shadow(c: Command) -> dict[str, str] | None:
    if c.name == "groupadd":
        opts = _scan(c, _GROUPADD_FLAGS, _GROUPADD_VALUED)
    else:
        opts = _scan(c, _SHADOW_FLAGS, _USERADD_VALUED if c.name == "useradd" else _SHADOW_VALUED)
    if opts is None:
        return None
    if c.name == "groupadd" and set(opts) - {"cmd", "name", "--system", "--gid", "-f"}:
        return None
    if any(not opts[k].isdigit() for k in ("--uid", "--gid") if k in opts):
        return None
    return opts


def _split_value(a: str) -> list[str] | None:
    """--home=H as --home H."""
    return a.split("=", 1) if "=" in a and a.split("=", 1)[0] in _VALUED else None


def _parse(c: Command) -> dict[str, str] | None:
    opts = _scan(c, _FLAGS, _VALUED, _split_value)
    if opts is None:
        return None
    if c.name == "addgroup" and set(opts) - {"cmd", "name", "--system", "--quiet", "--gid"}:
        return None
    if "--gecos" in opts and "," in opts["--gecos"]:
        return None  # chfn's room/phone fields: not reproduced
    if "--uid" in opts or "--gid" in opts:
        return None
    return opts


def _used(table: list[list[str]]) -> set[int]:
    """The ids (third field) a passwd or group table holds."""
    return {int(f[2]) for f in table if len(f) > 2 and f[2].isdigit()}


class Accounts:
    def __init__(self, merged: Merged, family: str, mtime: int | None) -> None:
        self.merged = merged
        self.family = family
        self.mtime = mtime
        self.out: dict[str, Entry] = {}
        self.conf = _conf((merged.read("etc/adduser.conf") or b"").decode("utf-8", "replace"))

    def _table(self, path: str) -> list[list[str]] | None:
        data = self.merged.read(path)
        if data is None:
            return None
        return [line.split(":") for line in data.decode("utf-8", "surrogateescape").splitlines() if line]

    def _user_tables(self, name: str) -> tuple[list[list[str]], list[list[str]]] | bool:
        """/etc/passwd and /etc/group to add user `name` to; instead False when either is missing (copa cannot
        tell), True when the user exists (every tool leaves it be or fails, which scripts allow for)."""
        users = self._table("etc/passwd")
        groups = self._table("etc/group")
        if users is None or groups is None:
            return False
        if any(u[0] == name for u in users):
            return True
        return users, groups

    def _add_group(self, name: str, gid: int) -> None:
        self._append("etc/group", f"{name}:x:{gid}:")
        self._append("etc/gshadow", f"{name}:!::")

    def _append(self, path: str, line: str) -> None:
        data = self.merged.read(path)
        if data is None:
            return
        if data and not data.endswith(b"\n"):
            data += b"\n"
        self._write(path, data, data + line.encode() + b"\n")

    def _write(self, path: str, old: bytes, new: bytes) -> None:
        """The file rewritten as shadow's tools do: the previous content kept as `path-` (their backup, with the
        file's owner and its mode masked by 0664)."""
        uid, gid = self.merged.owner(path)
        mode = (self.merged.mode(path) or 0o644) & 0o7777
        for p, data, m in ((path + "-", old, mode & 0o664), (path, new, mode)):
            entry = dataclasses.replace(Entry.file(p, data, m, mtime=self.mtime), uid=uid, gid=gid)
            self.out[p] = entry
            self.merged.add([entry])

    def _free(self, table: list[list[str]], first: int, last: int) -> int | None:
        used = _used(table)
        return next((i for i in range(first, last + 1) if i not in used), None)

    def _busybox_user(self, o: dict[str, str]) -> bool:
        name = o["name"]
        tables = self._user_tables(name)
        if isinstance(tables, bool):
            return tables  # True for an existing user: busybox fails ("in use"), which scripts ignore
        users, groups = tables
        group = o.get("--ingroup", "nogroup")
        line = next((g for g in groups if g[0] == group and len(g) > 3 and g[2].isdigit()), None)
        uid = self._free(users, 100, 999)
        if line is None or uid is None:
            return False
        gid = int(line[2])
        home = o.get("--home", f"/home/{name}")
        shell = o.get("--shell", "/sbin/nologin")
        self._append("etc/passwd", f"{name}:x:{uid}:{gid}:{o.get('--gecos', '')}:{home}:{shell}")
        day = (self.mtime or 0) // 86400
        self._append("etc/shadow", f"{name}:!:{day}:0:99999:7:::")
        old = self.merged.read("etc/group") or b""
        lines = old.decode("utf-8", "surrogateescape").split("\n")
        for i, text in enumerate(lines):
            fields = text.split(":")
            if fields[0] == group and len(fields) > 3:
                fields[3] = ",".join([m for m in fields[3].split(",") if m] + [name])
                lines[i] = ":".join(fields)
                break
        self._write("etc/group", old, "\n".join(lines).encode("utf-8", "surrogateescape"))
        path = home.strip("/")
        if "--no-create-home" not in o and not self.merged.exists(path):
            if self.merged.target_kind(posixpath.dirname(path) or ".") != "dir" and posixpath.dirname(path):
                return False
            self._dir(Entry(path, Kind.DIR, 0o2755, uid, gid, mtime=self.mtime))
        return True

    def _login_defs(self, key: str, default: int) -> int:
        text = (self.merged.read("etc/login.defs") or b"").decode("utf-8", "replace")
        m = re.search(rf"^\s*{key}\s+(\d+)\s*$", text, re.M)
        return int(m.group(1)) if m else default

    def _down(self, table: list[list[str]], key: str, low: int) -> int | None:
        """The first free id from SYS_*_MAX down to SYS_*_MIN (login.defs; RHEL's are 999 and 201)."""
        used = _used(table)
        low = self._login_defs(key.replace("_MAX", "_MIN"), low)
        return next((i for i in range(self._login_defs(key, 999), low - 1, -1) if i not in used), None)

    def _shadow_group(self, name: str, prefer: int | None = None, wanted: int | None = None,
                      force: bool = False) -> int | None:
        """groupadd -r [-g GID [-f]]: None when groupadd fails (or, with -f, there is nothing to do: `force`
        callers check the group themselves)."""
        groups = self._table("etc/group")
        if groups is None:
            return None
        if any(g[0] == name for g in groups):
            return None  # groupadd fails: the group exists (with -f it succeeds doing nothing)
        used = _used(groups)
        if wanted is not None and wanted in used and not force:
            return None  # "GID is not unique"
        if wanted is not None and wanted not in used:
            gid: int | None = wanted
        else:
            gid = prefer if prefer is not None and prefer not in used else self._down(groups, "SYS_GID_MAX", 101)
        if gid is None:
            return None
        self._add_group(name, gid)
        return gid

    def _shadow_user(self, o: dict[str, str]) -> bool:
        name = o["name"]
        tables = self._user_tables(name)
        if isinstance(tables, bool):
            return tables  # True for an existing user: useradd fails ("already exists"), scripts guard it
        users, groups = tables
        if "--uid" in o:
            uid: int | None = int(o["--uid"])
            if any(len(u) > 2 and u[2] == o["--uid"] for u in users):
                return False  # "UID is not unique"
        else:
            uid = self._down(users, "SYS_UID_MAX", 101)
        if uid is None:
            return False
        if "--ingroup" in o:
            group = o["--ingroup"]
            gid = next((int(g[2]) for g in groups if (g[0] == group or g[2] == group) and g[2].isdigit()), None)
        else:
            gid = self._shadow_group(name, uid)
        if gid is None:
            return False
        default = (self.merged.read("etc/default/useradd") or b"").decode("utf-8", "replace")
        m = re.search(r"^SHELL=(\S+)\s*$", default, re.M)
        shell = o.get("--shell", m.group(1) if m else "/bin/sh")
        home = o.get("--home", f"/home/{name}")
        self._append("etc/passwd", f"{name}:x:{uid}:{gid}:{o.get('--gecos', '')}:{home}:{shell}")
        # Red Hat's shadow-utils locks a new account with "!!" (upstream and Debian write "!").
        locked = "!!" if self.family == "rpm" else "!"
        self._append("etc/shadow", f"{name}:{locked}:{(self.mtime or 0) // 86400}::::::")
        return True

    def _group(self, name: str) -> int | None:
        """The gid of an existing or new system group (None: copa cannot tell)."""
        groups = self._table("etc/group")
        if groups is None:
            return None
        for g in groups:
            if g[0] == name and len(g) > 2 and g[2].isdigit():
                return int(g[2])
        gid = self._free(groups, self.conf["FIRST_SYSTEM_GID"], self.conf["LAST_SYSTEM_GID"])
        if gid is None:
            return None
        self._add_group(name, gid)
        return gid

    def _user(self, o: dict[str, str]) -> bool:
        name = o["name"]
        tables = self._user_tables(name)
        if isinstance(tables, bool):
            return tables  # True for an existing user: adduser --system leaves it alone
        users, groups = tables
        uid = self._free(users, self.conf["FIRST_SYSTEM_UID"], self.conf["LAST_SYSTEM_UID"])
        if uid is None:
            return False
        if "--group" in o and "--ingroup" not in o:
            gid = self._group(name)
        else:
            group = o.get("--ingroup", "nogroup")
            gid = next((int(g[2]) for g in groups if g[0] == group and len(g) > 2 and g[2].isdigit()),
                       65534 if group == "nogroup" else None)
        if gid is None:
            return False
        home = o.get("--home", "/nonexistent")
        shell = o.get("--shell", "/usr/sbin/nologin")
        gecos = o.get("--gecos", o.get("--comment"))
        gecos = "" if gecos is None else gecos + ",,,"  # chfn -f writes the other three fields empty
        self._append("etc/passwd", f"{name}:x:{uid}:{gid}::{home}:{shell}")
        if gecos:  # chfn rewrites the file (and its backup) after useradd
            old = self.merged.read("etc/passwd") or b""
            new = old[:-1].rsplit(b"\n", 1)
            last = f"{name}:x:{uid}:{gid}:{gecos}:{home}:{shell}\n".encode()
            self._write("etc/passwd", old, (new[0] + b"\n" if len(new) == 2 else b"") + last)
        day = (self.mtime or 0) // 86400
        self._append("etc/shadow", f"{name}:!:{day}::::::")
        path = home.strip("/")
        if not re.match(r"^nonexistent(/|$)", path) and "--no-create-home" not in o and not self.merged.exists(path):
            parents = []
            parent = posixpath.dirname(path)
            while parent and not self.merged.exists(parent):
                parents.append(parent)
                parent = posixpath.dirname(parent)
            for p in reversed(parents):
                self._dir(Entry(p, Kind.DIR, 0o755, mtime=self.mtime))
            self._dir(Entry(path, Kind.DIR, 0o755, uid, gid, mtime=self.mtime))
        return True

    def _dir(self, entry: Entry) -> None:
        self.out[entry.path] = entry
        self.merged.add([entry])

    def run(self, cmds: Sequence[Command]) -> list[str] | None:
        """Apply a script's account commands; None when it has some copa does not reproduce (or none at all)."""
        calls = [c for c in cmds if c.name in COMMANDS]
        if self.family not in ("dpkg", "apk", "rpm") or not calls:
            return None
        if self.family == "rpm" and any(c.name in ("adduser", "addgroup") for c in calls):
            return None  # RHEL's adduser is useradd under another name: its options are not Debian's
        busybox = self.family == "apk"
        parsed = [_parse_shadow(c) if c.name in ("useradd", "groupadd") else
                  (_parse_busybox if busybox else _parse)(c) for c in calls]
        if any(p is None for p in parsed):
            return None
        done = []
        for c, o in zip(calls, parsed, strict=True):
            assert o is not None
            if o["cmd"] in ("useradd", "groupadd"):
                if o["cmd"] == "useradd":
                    ok = self._shadow_user(o)
                elif ("-f" in o or "getent" in c.line or "||" in c.line) and \
                        any(g[0] == o["name"] for g in self._table("etc/group") or []):
                    ok = True  # the group exists: `groupadd -f` succeeds, a guarded groupadd does not run
                else:
                    ok = self._shadow_group(o["name"], None, int(o["--gid"]) if "--gid" in o else None,
                                            "-f" in o) is not None
                if not ok:
                    return None
                done.append(f"{o['cmd']} -r {o['name']}")
                continue
            if o["cmd"] == "addgroup":
                ok = self._group(o["name"]) is not None
            else:
                ok = self._busybox_user(o) if busybox else self._user(o)
            if not ok:
                return None
            done.append(f"{o['cmd']} {'-S' if busybox else '--system'} {o['name']}")
        return done

    def entries(self) -> list[Entry]:
        return [self.out[k] for k in sorted(self.out)]
