"""What maintainer scripts and triggers would have done, reproduced without running anything from the image.

copa unpacks packages but runs none of their scripts. `reproduce` takes the image's merged view and the patch
layer's entries and returns the extra entries that make the result look as if the scripts and triggers had run
(the CA bundle and its links, ldconfig's links and cache, stale bytecode gone, /etc/shells, alternatives, system
users and groups), plus per package a note of what its scripts do that is still not reproduced. Each effect works on
the merged result of the upgrade, so it does not matter which package or trigger asked for it.

Families: "dpkg", "apk" and "rpm" (scripts keyed %pretrans/%pre/%post/%posttrans as the new version's header
holds them, a non-shell scriptlet under "%post <lua>" or "%post </usr/bin/lua>", the old version's erase
scriptlets under "old %preun"/"old %postun", its triggers under "%triggers"/"%filetriggers", the installed
packages' triggers it fires under "%installed triggers")."""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping, Sequence

from copa.oci.layer import Entry, clean_path
from copa.oci.rootfs import View
from copa.pkg.effects import alternatives, bytecode, catrust, certificates, libraries, scripts, shells, users
from copa.pkg.effects.merged import Merged
from copa.pkg.effects.model import Outcome, Package

__all__ = ["Outcome", "Package", "apply", "reproduce"]

# The scripts that run when a package is upgraded or installed, by family (the new version's).
_RUN = {"dpkg": ("preinst", "postinst", "config"), "apk": (".pre-install", ".post-install", ".pre-upgrade",
                                                             ".post-upgrade", ".trigger"),
        "rpm": ("%pretrans", "%pre", "%post", "%posttrans")}
# rpm: what else an upgrade runs, only noted: the old version's %preun/%postun (with $1 = 1), the new version's
# triggers, and scriptlets in another language than the shell (keys "%post <lua>": the program in the key).
_RPM_NOTED = ("old %preun", "old %postun", "%triggers", "%filetriggers", "%installed triggers")
_LDCONFIG = {"ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"}
_APK_SKIPPED = {False: (".pre-upgrade", ".post-upgrade"), True: (".pre-install", ".post-install")}
# Commands whose work has no meaning in a container image: services and boot-time state.
_NO_EFFECT = {"systemctl", "deb-systemd-helper", "deb-systemd-invoke", "invoke-rc.d", "update-rc.d", "service",
              "rc-update", "rc-service", "update-menus", "udevadm", "systemd-tmpfiles", "systemd-sysusers",
              "start-stop-daemon",
              # the same called by path, as RHEL's %systemd_* scriptlets do
              "/usr/bin/systemctl", "/bin/systemctl", "/usr/lib/systemd/systemd-update-helper",
              "/usr/bin/systemd-tmpfiles", "/bin/systemd-tmpfiles"}
_CERTS = {"debconf", "update-ca-certificates", "/usr/sbin/update-ca-certificates", "dpkg-trigger", "mkdir", "chgrp",
          "chmod", "chown", "dpkg-statoverride", "mv", "rm"}
_PYTHON = {"py3compile", "py3clean", "pycompile", "pyclean", "pypy3compile", "pypy3clean"}


def reproduce(view: View, entries: Iterable[Entry], packages: Sequence[Package], family: str,
              architecture: str, mtime: int | None = None) -> Outcome:
    merged = Merged(view, entries)
    out: dict[str, Entry] = {}
    done: dict[str, list[str]] = {p.name: [] for p in packages}
    notes: dict[str, list[str]] = {p.name: [] for p in packages}
    handled: dict[str, set[str]] = {p.name: set(_LDCONFIG) for p in packages}

    def take(new: Iterable[Entry]) -> None:
        items = list(new)
        merged.add(items)
        for e in items:
            out[clean_path(e.path)] = e

    store = catrust.reproduce(merged, packages, mtime) if family == "rpm" else \
        certificates.reproduce(merged, packages, family, mtime)
    for name, result in store.items():
        take(result.entries)
        done.setdefault(name, []).extend(result.done)
        notes.setdefault(name, []).extend(result.notes)
        handled.setdefault(name, set()).update(_CERTS | catrust.COMMANDS)

    for name, lib in libraries.reproduce(merged, packages, architecture, mtime, family).items():
        take(lib.entries)
        done.setdefault(name, []).extend(lib.done)
        notes.setdefault(name, []).extend(lib.notes)

    pyc, modules = bytecode.stale(merged)
    take(pyc)
    for p in packages:
        handled[p.name].update(_PYTHON)
    if modules:
        # The layer does not say which package wrote which module: the note goes to the packages that byte-compile
        # in their scripts (Debian's python3-* call py3compile), else to the first package.
        compilers = [p for p in packages if any(c in s.decode("utf-8", "replace") for s in p.scripts.values()
                                                for c in ("py3compile", "pycompile"))] or list(packages[:1])
        for p in compilers:
            done[p.name].append(f"{len(pyc)} stale .pyc of changed modules removed (not recompiled: Python writes "
                                "them on import)")

    alt = alternatives.Alternatives(merged, mtime)
    accounts = users.Accounts(merged, family, mtime)
    for p in packages:
        for script in _RUN.get(family, ()):
            if family == "apk" and script in _APK_SKIPPED[bool(p.old_version)]:
                continue  # apk runs .pre/.post-install on a new install only, .pre/.post-upgrade on an upgrade only
            cmds = scripts.commands(p.scripts.get(script, b"").decode("utf-8", "replace"))
            if family == "dpkg" and script in ("preinst", "postinst"):
                calls = [alternatives.parse_call(c.argv) for c in cmds if c.name == "update-alternatives"]
                if calls and all(c is not None for c in calls):
                    applied = [c for c in calls if c is not None and alt.apply(c)]
                    done[p.name].extend(f"update-alternatives --{c.action} {c.name} {c.path}" for c in applied)
                    handled[p.name].add("update-alternatives")
            made = accounts.run(cmds)
            if made is not None:
                done[p.name].extend(made)
                handled[p.name].update(users.COMMANDS)
    take(alt.entries())
    take(accounts.entries())

    for p in packages:
        text = "\n".join(p.scripts.get(s, b"").decode("utf-8", "replace") for s in _RUN.get(family, ()))
        adds = [a for c in scripts.commands(text) if c.name == "add-shell" for a in c.argv if a.startswith("/")]
        removes = [a for c in scripts.commands(text) if c.name == "remove-shell" for a in c.argv
                   if a.startswith("/")]
        if adds:
            entry = shells.add_shells(merged, adds, mtime)
            if entry is not None:
                take([entry])
            done[p.name].append("add-shell " + " ".join(adds))
            handled[p.name].add("add-shell")
        if removes and family == "dpkg":
            handled[p.name].add("remove-shell")  # in a postinst only for shells the new version no longer has
            entry = shells.remove_shells(merged, removes, mtime)
            if entry is not None:
                take([entry])
        for script in _RUN.get(family, ()):
            if family == "apk" and script in _APK_SKIPPED[bool(p.old_version)]:
                continue  # not run by this upgrade (or install): nothing of it is left undone
            body = p.scripts.get(script)
            if body is not None:
                notes[p.name].extend(_script_notes(script.lstrip("."), body.decode("utf-8", "replace"),
                                                   handled[p.name]))
        if family == "rpm":
            notes[p.name].extend(_rpm_notes(p, handled[p.name]))
    return Outcome(tuple(out[k] for k in sorted(out)),
                   {k: tuple(v) for k, v in notes.items() if v}, {k: tuple(v) for k, v in done.items() if v})


def _script_notes(script: str, text: str, handled: set[str]) -> list[str]:
    """What one script does that stays undone: the commands no effect reproduces, the ones that mean nothing in a
    container, or (for a script that does more than boilerplate yet changes no file) that it was not run."""
    names = {c.name for c in scripts.commands(text)}
    if "debconf" in handled and any(n.startswith("db_") for n in names):
        handled = handled | {n for n in names if n.startswith("db_")}  # the answers the effect applied
    left = scripts.unhandled(text, handled | _NO_EFFECT)
    idle = sorted(names & _NO_EFFECT)
    out = []
    if left:
        out.append(f"{script}: not reproduced: {', '.join(left)}")
    if idle:
        out.append(f"{script}: no effect in a container: {', '.join(idle)}")
    if not left and not idle and not names & handled and scripts.busy(text):
        out.append(f"{script} not run (it changes no files)")
    return out


def _rpm_notes(p: Package, handled: set[str]) -> list[str]:
    """What else of an rpm upgrade's scriptlets stays undone: other languages, the old version's erase scriptlets,
    triggers (an ldconfig one is the libraries effect's)."""
    out = []
    for key, body in sorted(p.scripts.items()):
        text = body.decode("utf-8", "replace")
        if "<" in key:
            label, program = key.split(" <", 1)
            out.append(f"{label} not run ({program.rstrip('>')} scriptlet)")
        elif key in _RPM_NOTED[:2]:
            out.extend(_script_notes(key, text, handled))
        elif key in _RPM_NOTED[2:] and scripts.busy("#!\n" + text):
            left = scripts.unhandled(text, handled | _NO_EFFECT)
            if left:
                out.append(f"{key[1:]}: not reproduced: {', '.join(left)}")
    return out


def note(outcome: Outcome, package: str) -> str:
    """The summary line for one package: what was reproduced, and what was not."""
    parts = []
    if outcome.done.get(package):
        parts.append("reproduced: " + "; ".join(outcome.done[package]))
    parts.extend(outcome.notes.get(package, ()))
    return "; ".join(parts)


def apply(layer: MutableMapping[str, Entry], view: View, packages: Sequence[Package], family: str,
          architecture: str, mtime: int | None = None) -> Outcome:
    """Run the effects on an adapter's entries keyed by path, the effects' entries replacing any at the same path
    (a whiteout and a file at one path are one key: the effect's wins, never both)."""
    outcome = reproduce(view, list(layer.values()), packages, family, architecture, mtime)
    for e in outcome.entries:
        key = clean_path(e.path)
        layer.pop(e.path, None)
        layer[key] = e
    return outcome
