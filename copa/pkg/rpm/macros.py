"""The rpm macros of the image that change what `rpm -U` installs, read as rpm 4.18 reads its macro files (never
expanded by running anything): `%_excludedocs` (files flagged %doc are not installed), `%_install_langs` (files
whose %lang matches none of the listed languages are not installed; ubi-minimal sets `C.utf8`) and
`%_netsharedpath` (paths rpm leaves to a network share). dnf's `tsflags=nodocs` (dnf.conf [main]) has the effect
of `%_excludedocs 1` on the transactions dnf runs.

The macro path (`rpm --showrc`: "Macro path"): /usr/lib/rpm/macros, /usr/lib/rpm/macros.d/macros.*,
/usr/lib/rpm/platform/%{_target}/macros, /etc/rpm/macros.*, /etc/rpm/macros, /etc/rpm/%{_target}/macros; globs in
sorted order, files ending in `~`, `.rpmnew`, `.rpmorig` or `.rpmsave` skipped; a later definition wins. In a file
only lines starting with `%` define a macro (`%name body`; a trailing backslash continues the body), the rest is
ignored. Values are expanded for `%{nil}`, `%%`, and `%name` / `%{name}` / `%{?name}` of other macros read;
anything else (`%(...)`, `%{lua:...}`, conditionals) leaves the macro unread and is noted.

How rpm applies them is lib/transaction.c skipInstallFiles (see install.skipped_files)."""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

_SKIP_SUFFIXES = ("~", ".rpmnew", ".rpmorig", ".rpmsave")
_WANTED = ("_excludedocs", "_install_langs", "_netsharedpath")
_DEFINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(\([^)]*\))?(?:[ \t]+(.*))?$", re.S)
_REF = re.compile(r"%%|%\{(\??)([A-Za-z_][A-Za-z0-9_]*)\}|%(\??)([A-Za-z_][A-Za-z0-9_]*)|%[{(\[]")


@dataclass(frozen=True)
class InstallPolicy:
    """What the image's rpm configuration says not to install."""

    excludedocs: bool = False
    install_langs: tuple[str, ...] | None = None  # None: every language ("all", rpm's default)
    netshared: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())  # macros copa could not read

    @property
    def filters(self) -> bool:
        return self.excludedocs or self.install_langs is not None or bool(self.netshared)


def macro_files(listdir: Callable[[str], list[str]], target: str) -> list[str]:
    """The image's macro files in rpm's reading order (paths without a leading slash)."""
    def glob(directory: str, pattern: str) -> list[str]:
        return [posixpath.join(directory, n) for n in sorted(listdir(directory)) if fnmatch.fnmatchcase(n, pattern)]

    out = ["usr/lib/rpm/macros", *glob("usr/lib/rpm/macros.d", "macros.*"),
           f"usr/lib/rpm/platform/{target}/macros", *glob("etc/rpm", "macros.*"), "etc/rpm/macros",
           f"etc/rpm/{target}/macros"]
    return [p for p in out if not p.endswith(_SKIP_SUFFIXES)]


def parse_macros(text: str) -> dict[str, str]:
    """The `%name body` definitions of one macro file, unexpanded (parametric macros are read as any other)."""
    out: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + "\n" + lines[i]
            i += 1
        stripped = line.lstrip(" \t")
        if not stripped.startswith("%"):
            continue
        m = _DEFINE.match(stripped[1:])
        if m is None:
            continue
        out[m.group(1)] = (m.group(3) or "").strip()
    return out


def expand(name: str, macros: Mapping[str, str], depth: int = 0) -> str | None:
    """A macro's value with %{nil}, %% and other macros' references expanded; None if it needs more than that."""
    if depth > 16:
        return None
    body = macros.get(name)
    if body is None:
        return None
    failed = False

    def sub(m: re.Match[str]) -> str:
        nonlocal failed
        if m.group(0) == "%%":
            return "%"
        ref = m.group(2) or m.group(4)
        optional = bool(m.group(1) or m.group(3))
        if ref is None:
            failed = True
            return ""
        if ref == "nil":
            return ""
        if ref not in macros:
            if optional:
                return ""
            failed = True
            return ""
        value = expand(ref, macros, depth + 1)
        if value is None:
            failed = True
            return ""
        return value

    value = _REF.sub(sub, body)
    return None if failed else value.strip()


def _numeric(value: str) -> int:
    """rpmExpandNumeric: Y/y is 1, N/n is 0, else the leading integer (0 if none)."""
    if value[:1] in ("Y", "y"):
        return 1
    if value[:1] in ("N", "n"):
        return 0
    m = re.match(r"^\s*[-+]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", value)
    return int(m.group(1), 0) if m else 0


def _tsflags(read: Callable[[str], bytes | None]) -> list[str]:
    """dnf.conf's [main] tsflags (yum.conf's on yum images)."""
    for path in ("etc/dnf/dnf.conf", "etc/yum.conf"):
        data = read(path)
        if data is None:
            continue
        section = ""
        flags: list[str] = []
        for raw in data.decode("utf-8", "replace").splitlines():
            line = raw.strip()
            if line.startswith("["):
                section = line.strip("[]").strip()
            elif section == "main" and "=" in line and not line.startswith(("#", ";")):
                key, value = (s.strip() for s in line.split("=", 1))
                if key == "tsflags":
                    flags = [f for f in re.split(r"[\s,]+", value) if f]
        return flags
    return []


def read_policy(read: Callable[[str], bytes | None], listdir: Callable[[str], list[str]],
                arch: str = "x86_64") -> InstallPolicy:
    """The install policy of the image whose files `read` returns (None when absent) and `listdir` lists."""
    macros: dict[str, str] = {}
    for path in macro_files(listdir, f"{arch}-linux"):
        data = read(path)
        if data is not None:
            macros.update(parse_macros(data.decode("utf-8", "replace")))
    values: dict[str, str] = {}
    notes: list[str] = []
    for name in _WANTED:
        if name in macros:
            value = expand(name, macros)
            if value is None:
                notes.append(f"%{name} ({macros[name]!r}) not understood: ignored")
            else:
                values[name] = value
    excludedocs = bool(_numeric(values.get("_excludedocs", "0"))) or "nodocs" in _tsflags(read)
    langs: tuple[str, ...] | None = None
    if "_install_langs" in values:  # rpmtsCreate: split at ':' (empty fields dropped), "all" means no filter
        parts = tuple(p for p in values["_install_langs"].split(":") if p)
        langs = None if "all" in parts else parts
    netshared = tuple(p for p in values.get("_netsharedpath", "").split(":") if p)
    return InstallPolicy(excludedocs, langs, netshared, tuple(notes))
