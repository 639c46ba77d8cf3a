"""apt's version priorities: Release flags (NotAutomatic, ButAutomaticUpgrades) and /etc/apt/preferences{,.d/*}.

Supported, as apt_preferences(5) describes them: `Package:` names, globs, /regex/ and src:NAME; `Pin: release`
with a=, n=, v=, o=, l=, c= (values may be globs or /regex/; a bare value is a release version), `Pin: version`
(glob) and `Pin: origin` (the repository's host name). A stanza naming packages is a specific pin (it decides the
priority of the versions it matches); `Package: *` with a release or origin pin sets the priority of whole
releases. The first matching stanza wins, as in apt.
`Pin: release b=` matches the Packages index's architecture. APT::Default-Release (apt.conf) is a general release
pin of priority 990 placed before every stanza, as apt's policy creates it. A bare `Pin: release` value is a
release version when it starts with a digit, else an archive or codename, as apt's version matcher reads it.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from copa.pkg.apt.release import ReleaseInfo

log = logging.getLogger(__name__)

PREFERENCES = "etc/apt/preferences"
PREFERENCES_DIR = "etc/apt/preferences.d"
INSTALLED_PRIORITY = 100  # apt's priority of the installed version (the dpkg status "release")
# The dpkg status file as apt's preferences see it: a release with Archive "now" and nothing else (`apt-cache
# policy` lists it as "release a=now"). `Pin: release a=now` stanzas match installed versions, a general one sets
# the status file's priority instead of 100 (checked against apt 2.6: tests/test_apt_pinning.py).
STATUS_RELEASE = ReleaseInfo(archive="now")
_FILE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_RELEASE_KEYS = {"a": "archive", "n": "codename", "v": "version", "o": "origin", "l": "label", "c": "component",
                 "b": "architecture"}
DEFAULT_RELEASE_PRIORITY = 990


@dataclass(frozen=True, slots=True)
class Pin:
    packages: tuple[str, ...]  # patterns; ("*",) for a general pin
    kind: str  # "release" | "version" | "origin"
    value: str
    priority: int

    @property
    def general(self) -> bool:
        return self.packages == ("*",)

    def matches_package(self, name: str, source: str) -> bool:
        return any(_match(p[4:], source) if p.startswith("src:") else _match(p, name) for p in self.packages)

    def matches_release(self, release: ReleaseInfo) -> bool:
        if self.kind == "origin":
            if release is STATUS_RELEASE:
                return False  # the status file has no site: apt's `Pin: origin ""` (local files) leaves it alone
            return _match(self.value, release.site) if self.value else not release.site
        if self.kind != "release":
            return False
        if self.value == "*":
            return True  # apt: every package file, the status file too
        for term in (t.strip() for t in self.value.split(",")):
            if not term:
                continue
            key, sep, value = term.partition("=")
            if not sep:
                if not term[0].isdigit():
                    # apt: a bare name is a release name, matching the archive (suite) or the codename
                    if not any(_match(term, v) for v in (release.archive, release.codename) if v):
                        return False
                    continue
                key, value = "v", term
            attr = _RELEASE_KEYS.get(key.strip())
            if attr is None:
                return False  # unknown keys: never match rather than over-match
            actual = str(getattr(release, attr))
            # apt: a term on a field the release lacks never matches (`l=*` leaves the status file alone)
            if not actual or not _match(value.strip(), actual):
                return False
        return True


def _match(pattern: str, value: str) -> bool:
    if len(pattern) > 1 and pattern.startswith("/") and pattern.endswith("/"):
        return re.search(pattern[1:-1], value) is not None
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(value, pattern)
    return pattern == value


def parse_preferences(text: str, what: str) -> list[Pin]:
    """The stanzas of one preferences file; malformed stanzas are skipped with a warning, as apt does."""
    pins = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip().lower()] = value.strip()
        if not fields or set(fields) == {"explanation"}:
            continue
        package, pin, priority = fields.get("package"), fields.get("pin"), fields.get("pin-priority")
        if not package or not pin or priority is None or not re.fullmatch(r"[+-]?\d+", priority):
            log.warning("%s: ignoring a stanza without Package, Pin and a numeric Pin-Priority", what)
            continue
        kind, _, value = pin.partition(" ")
        if kind not in ("release", "version", "origin"):
            log.warning("%s: ignoring unknown pin type %r", what, kind)
            continue
        pins.append(Pin(tuple(package.split()), kind, value.strip().strip('"'), int(priority)))
    return pins


@dataclass(frozen=True, slots=True)
class Preferences:
    pins: tuple[Pin, ...] = ()

    @classmethod
    def from_files(cls, main: bytes | None, directory: Mapping[str, bytes], default_release: str = "") -> Preferences:
        """/etc/apt/preferences, then preferences.d/ files in name order; like apt, only files with no extension
        or `.pref` and a plain name are read. `default_release` is APT::Default-Release: its pin comes first."""
        texts: list[tuple[str, bytes]] = [("/" + PREFERENCES, main)] if main is not None else []
        for path in sorted(directory):
            name = path.rsplit("/", 1)[-1]
            if "/" in path[len(PREFERENCES_DIR) + 1:] or not _FILE_NAME.fullmatch(name):
                continue
            if "." in name and not name.endswith(".pref"):
                continue
            texts.append(("/" + path, directory[path]))
        pins = [p for what, content in texts for p in parse_preferences(content.decode("utf-8", "replace"), what)]
        if default_release.strip():
            pins.insert(0, Pin(("*",), "release", default_release.strip(), DEFAULT_RELEASE_PRIORITY))
        return cls(tuple(pins))

    def release_priority(self, release: ReleaseInfo) -> int:
        for pin in self.pins:
            if pin.general and pin.kind != "version" and pin.matches_release(release):
                return pin.priority
        return release.default_priority

    def specific(self, package: str, source: str, version: str, releases: Sequence[ReleaseInfo]) -> int | None:
        """The priority a stanza naming this package gives this version, if any."""
        for pin in self.pins:
            if pin.general or not pin.matches_package(package, source):
                continue
            if pin.kind == "version":
                if _match(pin.value, version):
                    return pin.priority
            elif any(pin.matches_release(r) for r in releases):
                return pin.priority
        return None

    def priority(self, package: str, source: str, version: str, releases: Sequence[ReleaseInfo]) -> int:
        """apt's priority of one available version: a specific pin, else the highest of its releases'."""
        pinned = self.specific(package, source, version, releases)
        if pinned is not None:
            return pinned
        return max((self.release_priority(r) for r in releases), default=ReleaseInfo().default_priority)

    def installed_priority(self, package: str, source: str, version: str,
                           releases: Sequence[ReleaseInfo] = ()) -> int:
        """The installed version's priority. To apt it is one version found in the status file (STATUS_RELEASE,
        which is what makes `Pin: release a=now` count) and in every repository still publishing it
        (`releases`): a pin naming the package and matching any of them decides, else the highest of the status
        file's priority (100) and those releases' priorities."""
        pinned = self.specific(package, source, version, (STATUS_RELEASE, *releases))
        if pinned is not None:
            return pinned
        status = next((pin.priority for pin in self.pins
                       if pin.general and pin.kind == "release" and pin.matches_release(STATUS_RELEASE)),
                      INSTALLED_PRIORITY)
        return max([status, *(self.release_priority(r) for r in releases)])
