"""Read and write dpkg's status database (/var/lib/dpkg/status) the way dpkg itself does.

An entry keeps every field in its original order and exact text, so an unchanged database formats back
byte-identically. New entries made from a .deb's control file follow dpkg's writer (lib/dpkg/dump.c): known
fields in the order of `fieldinfos` in lib/dpkg/parse.c, dependency fields and the version normalised,
then the package's other fields in control-file order. The whole file is sorted by package name, then
architecture (pkg_sorter_by_nonambig_name_arch), every paragraph followed by one blank line.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from copa.errors import UnsupportedImageError
from copa.pkg.dpkg.version import InvalidVersionError, normalize_version


class StatusParseError(UnsupportedImageError):
    """The status database (or a control file) is not in dpkg's format. A damaged database makes the image
    unsupported (exit 6); the adapter turns one raised for a downloaded .deb's control file into BadDeb."""


# lib/dpkg/parse.c `fieldinfos`, dpkg 1.21 (Protected came in 1.20). dpkg writes the known fields in
# exactly this order, then the others ("arbitrary" fields such as Homepage) in the order it read them.
FIELD_ORDER: tuple[str, ...] = (
    "Package", "Essential", "Protected", "Status", "Priority", "Section", "Installed-Size", "Origin",
    "Maintainer", "Bugs", "Architecture", "Multi-Arch", "Source", "Version", "Config-Version",
    "Replaces", "Provides", "Depends", "Pre-Depends", "Recommends", "Suggests", "Breaks", "Conflicts",
    "Enhances", "Conffiles", "Filename", "Size", "MD5sum", "MSDOS-Filename", "Description",
    "Triggers-Pending", "Triggers-Awaited",
)
_KNOWN = {name.lower(): name for name in FIELD_ORDER}
# parse.c `nicknames`: old spellings dpkg accepts and writes under their canonical name.
_NICKNAMES = {"recommended": "Recommends", "optional": "Suggests", "class": "Priority"}
# Package-Revision / Revision are merged into Version by dpkg and never written.
_DROPPED = {"revision", "package-revision", "package_revision"}
DEPENDENCY_FIELDS = ("Replaces", "Provides", "Depends", "Pre-Depends", "Recommends", "Suggests", "Breaks",
                     "Conflicts", "Enhances")
# Fields of the archive's Packages index (w_filecharf) and runtime state: never copied from a control file.
_NOT_FROM_CONTROL = {"Status", "Config-Version", "Conffiles", "Filename", "Size", "MD5sum", "MSDOS-Filename",
                     "Triggers-Pending", "Triggers-Awaited"}

Field = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Conffile:
    path: str
    md5: str  # 32 hex digits, or dpkg's placeholder "newconffile"
    obsolete: bool = False
    remove_on_upgrade: bool = False

    def format(self) -> str:
        flags = (" obsolete" if self.obsolete else "") + (" remove-on-upgrade" if self.remove_on_upgrade else "")
        return f" {self.path} {self.md5}{flags}"


@dataclass(frozen=True, slots=True)
class StatusEntry:
    """One paragraph of the status file. `fields` is the truth; the attributes are views of it.

    A value is the text after "Name:" with the leading blanks removed, continuation lines included
    verbatim ("first line\\n second line"); the final newline is not part of it.
    """

    fields: tuple[Field, ...]

    def get(self, name: str, default: str | None = None) -> str | None:
        low = name.lower()
        for key, value in self.fields:
            if key.lower() == low:
                return value
        return default

    def _req(self, name: str) -> str:
        value = self.get(name)
        return "" if value is None else value.strip()

    @property
    def package(self) -> str:
        return self._req("Package")

    @property
    def architecture(self) -> str:
        return self._req("Architecture")

    @property
    def version(self) -> str:
        return self._req("Version")

    @property
    def status(self) -> tuple[str, str, str]:
        """(want, flag, state), e.g. ("install", "ok", "installed")."""
        parts = self._req("Status").split()
        if len(parts) != 3:
            return ("unknown", "ok", "not-installed")
        return (parts[0], parts[1], parts[2])

    @property
    def installed(self) -> bool:
        return self.status[2] not in ("not-installed", "config-files")

    @property
    def multi_arch(self) -> str:
        return self._req("Multi-Arch") or "no"

    @property
    def source(self) -> tuple[str, str]:
        """(source name, source version); dpkg's defaults are the binary's own name and version."""
        raw = self._req("Source")
        if not raw:
            return (self.package, self.version)
        m = re.fullmatch(r"(\S+)\s*(?:\((.*)\))?", raw)
        if m is None:
            return (raw, self.version)
        return (m.group(1), (m.group(2) or "").strip() or self.version)

    @property
    def depends(self) -> str:
        return self._req("Depends")

    @property
    def pre_depends(self) -> str:
        return self._req("Pre-Depends")

    @property
    def conffiles(self) -> tuple[Conffile, ...]:
        raw = self.get("Conffiles")
        if not raw:
            return ()
        return tuple(_parse_conffile(line) for line in raw.split("\n") if line.strip())

    @property
    def key(self) -> tuple[str, str]:
        return (self.package, self.architecture)


def _parse_conffile(line: str) -> Conffile:
    # Parse from the right like dpkg's f_conffiles: a path may contain spaces, the hash and flags cannot.
    words = line.strip().split(" ")
    obsolete = remove = False
    while len(words) > 2 and words[-1] in ("obsolete", "remove-on-upgrade"):
        if words.pop() == "obsolete":
            obsolete = True
        else:
            remove = True
    if len(words) < 2:
        raise StatusParseError(f"conffile line {line!r} has no hash: expected ' /path md5'")
    md5 = words.pop()
    return Conffile(" ".join(words), md5, obsolete, remove)


# --- reading -----------------------------------------------------------------------------------------


def _decode(data: bytes) -> str:
    # surrogateescape: a stray non-UTF-8 byte survives a read/write cycle unchanged.
    return data.decode("utf-8", "surrogateescape")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def parse_paragraphs(data: bytes, path: str) -> list[tuple[int, tuple[Field, ...]]]:
    """Split deb822 text into paragraphs of (name, value) fields, with each paragraph's first line number."""
    text = _decode(data)
    if text.startswith("\ufeff"):
        raise StatusParseError(f"{path}:1: starts with a byte-order mark: dpkg files are plain UTF-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline ending the last line; a missing one is accepted
    paragraphs: list[tuple[int, tuple[Field, ...]]] = []
    current: list[list[str]] = []
    start = 0
    seen: set[str] = set()

    def close() -> None:
        if current:
            paragraphs.append((start, tuple((n, v) for n, v in current)))
        current.clear()
        seen.clear()

    for lineno, line in enumerate(lines, start=1):
        if line == "":
            close()
            continue
        if line[0] in " \t":
            if not current:
                raise StatusParseError(f"{path}:{lineno}: continuation line outside a field: {line.strip()[:40]!r}")
            current[-1][1] += "\n" + line
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or any(c.isspace() for c in name):
            raise StatusParseError(f"{path}:{lineno}: field name {name[:40]!r} must be followed by a colon")
        if name.lower() in seen:
            raise StatusParseError(f"{path}:{lineno}: duplicate value for field {name!r}")
        if not current:
            start = lineno
        seen.add(name.lower())
        current.append([name, value.lstrip(" \t")])
    close()
    return paragraphs


def parse_status(data: bytes, path: str) -> tuple[StatusEntry, ...]:
    """All entries of a status file, in file order. Errors name the file and line."""
    entries = []
    for lineno, fields in parse_paragraphs(data, path):
        entry = StatusEntry(fields)
        if not entry.package:
            raise StatusParseError(f"{path}:{lineno}: paragraph has no Package field")
        entries.append(entry)
    return tuple(entries)


# --- writing -----------------------------------------------------------------------------------------


def _format_field(name: str, value: str) -> str:
    # dpkg writes "Name: value"; a value that starts on the next line (Conffiles) gets no space.
    if value.startswith("\n") or value == "":
        return f"{name}:{value}\n"
    return f"{name}: {value}\n"


def format_entry(entry: StatusEntry) -> bytes:
    return _encode("".join(_format_field(n, v) for n, v in entry.fields))


def format_status(entries: Iterable[StatusEntry]) -> bytes:
    """The status file for these entries, in the order given; each paragraph ends with one blank line."""
    return b"".join(format_entry(e) + b"\n" for e in entries)


# --- new entries from a control file -----------------------------------------------------------------


_DEP_RE = re.compile(r"^([^\s(:]+)(?::(\S+))?\s*(?:\(\s*(<<|<=|>=|>>|=|<|>)\s*([^)\s]+)\s*\))?$")
_RELATIONS = {"<": "<=", ">": ">="}  # obsolete spellings; dpkg reads them as <= and >= and writes those


def normalize_dependency_field(name: str, value: str, path: str = "control") -> str:
    """A dependency field as dpkg writes it: ", " between groups, " | " between alternatives,
    "pkg[:arch] (op version)" with the version normalised."""
    groups = []
    for group in value.split(","):
        if not group.strip():
            # dpkg tolerates a trailing comma only; anything else it refuses.
            continue
        alts = []
        for alt in group.split("|"):
            m = _DEP_RE.match(alt.strip())
            if m is None:
                raise StatusParseError(f"{path}: field {name}: cannot parse dependency {alt.strip()!r}")
            pkg, arch, op, ver = m.groups()
            # dpkg keys packages by lower-cased name and writes that name back (pkg_db_find_set).
            text = pkg.lower() + (f":{arch}" if arch else "")
            if op:
                try:
                    text += f" ({_RELATIONS.get(op, op)} {normalize_version(ver)})"
                except InvalidVersionError as e:
                    raise StatusParseError(f"{path}: field {name}: {e}") from None
            alts.append(text)
        groups.append(" | ".join(alts))
    return ", ".join(groups)


def entry_from_control(control: bytes, conffiles: Sequence[tuple[str, str]],
                       status: str = "install ok installed", path: str = "control") -> StatusEntry:
    """The status entry dpkg writes after installing a package with this control file.

    `conffiles` are (absolute path, md5 hex of the file as shipped), in the order of the package's
    DEBIAN/conffiles.
    """
    paragraphs = parse_paragraphs(control, path)
    if len(paragraphs) != 1:
        raise StatusParseError(f"{path}: a control file holds exactly one paragraph, found {len(paragraphs)}")
    known: dict[str, str] = {}
    others: list[Field] = []
    for name, raw in paragraphs[0][1]:
        low = name.lower()
        value = raw.rstrip()  # dpkg trims trailing blanks of every value
        if low in _DROPPED:
            continue
        canon = _NICKNAMES.get(low) or _KNOWN.get(low)
        if canon is None:
            others.append((name, value))
        elif canon in DEPENDENCY_FIELDS and canon in known:
            # an old nickname next to its canonical field (Optional + Suggests): dpkg joins the two lists
            known[canon] = f"{known[canon]}, {value}"
        elif canon not in _NOT_FROM_CONTROL:
            known[canon] = value
    if not known.get("Package"):
        raise StatusParseError(f"{path}: control file has no Package field")
    if not known.get("Version"):
        raise StatusParseError(f"{path}: control file of {known['Package']} has no Version field")
    known["Package"] = known["Package"].lower()  # as dpkg stores it
    try:
        known["Version"] = normalize_version(known["Version"])
    except InvalidVersionError as e:
        raise StatusParseError(f"{path}: {e}") from None
    for dep in DEPENDENCY_FIELDS:
        if dep in known:
            known[dep] = normalize_dependency_field(dep, known[dep], path)
            if not known[dep]:
                del known[dep]
    # w_booleandefno / w_multiarch write nothing for the default value.
    for flag in ("Essential", "Protected"):
        if flag in known and known[flag].lower() != "yes":
            del known[flag]
        elif flag in known:
            known[flag] = "yes"
    if known.get("Multi-Arch", "no") == "no":
        known.pop("Multi-Arch", None)
    known["Status"] = status
    if conffiles:
        known["Conffiles"] = "".join("\n" + Conffile(p, md5).format() for p, md5 in conffiles)
    fields = [(name, known[name]) for name in FIELD_ORDER if name in known]
    return StatusEntry(tuple(fields) + tuple(others))


# --- merging -----------------------------------------------------------------------------------------


def _native_arch(entries: Iterable[StatusEntry]) -> str:
    counts = Counter(e.architecture for e in entries if e.architecture not in ("", "all"))
    return counts.most_common(1)[0][0] if counts else ""


def sort_entries(entries: Iterable[StatusEntry], native_arch: str | None = None) -> list[StatusEntry]:
    """dpkg's order: package name (bytewise), then instances not needing ":arch" first, then by arch name."""
    items = list(entries)
    native = _native_arch(items) if native_arch is None else native_arch

    def needs_arch(e: StatusEntry) -> bool:
        # pkgbin_name_needs_arch(pnaw_nonambig)
        if e.architecture == "":
            return False
        if e.multi_arch == "same":
            return True
        return e.architecture not in (native, "all")

    def key(e: StatusEntry) -> tuple[bytes, int, bytes]:
        needs = needs_arch(e)
        return (_encode(e.package), int(needs), _encode(e.architecture) if needs else b"")

    return sorted(items, key=key)


def merge_status(old_entries: Iterable[StatusEntry], new_entries: Iterable[StatusEntry],
                 native_arch: str | None = None) -> bytes:
    """The status file after installing `new_entries` over `old_entries`.

    A new entry replaces the old one of the same (package, architecture). As in dpkg, a package that is
    not Multi-Arch: same has one instance only, so it also replaces an installed instance of another
    architecture (an all <-> amd64 change between versions is common).
    """
    olds = list(old_entries)
    news = list(new_entries)
    native = _native_arch(olds + news) if native_arch is None else native_arch
    result: dict[tuple[str, str], StatusEntry] = {e.key: e for e in olds}
    for new in news:
        if new.multi_arch != "same":
            for key in [k for k, e in result.items() if k[0] == new.package and e.multi_arch != "same"]:
                del result[key]
        result[new.key] = new
    return format_status(sort_entries(result.values(), native))
