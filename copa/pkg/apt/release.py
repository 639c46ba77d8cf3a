"""The (already signature-verified) Release file of a suite: metadata and the SHA256 of every index file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from copa.errors import IntegrityError


@dataclass(frozen=True, slots=True)
class IndexFile:
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class ReleaseInfo:
    """What apt's preferences can match a package file on (apt_preferences(5) `Pin: release` keys), and the
    Release flags that set its default priority. Small and hashable: every PackageRecord carries one."""

    origin: str = ""  # o=
    label: str = ""  # l=
    archive: str = ""  # a= (the Suite field)
    codename: str = ""  # n=
    version: str = ""  # v=
    component: str = ""  # c= (set per index by the loader)
    architecture: str = ""  # b= (the Packages index's architecture, e.g. amd64 or all; set per index by the loader)
    site: str = ""  # `Pin: origin` host (set per source by the loader)
    not_automatic: bool = False
    but_automatic_upgrades: bool = False

    @property
    def default_priority(self) -> int:
        """apt's priority for a version from this release when no preference matches: 1 for NotAutomatic
        (experimental, backports), 100 when it also says ButAutomaticUpgrades, else 500."""
        if self.not_automatic:
            return 100 if self.but_automatic_upgrades else 1
        return 500


@dataclass(frozen=True, slots=True)
class Release:
    suite: str
    codename: str
    components: tuple[str, ...]
    architectures: tuple[str, ...]
    date: datetime | None
    valid_until: datetime | None
    acquire_by_hash: bool
    files: Mapping[str, IndexFile] = field(default_factory=dict)
    fields: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, what: str) -> Release:
        fields: dict[str, str] = {}
        key = ""
        for line in text.splitlines():
            if not line.strip():
                continue  # Release files are a single paragraph; tolerate stray blank lines
            if line[0] in " \t":
                if not key:
                    raise IntegrityError(f"{what}: Release starts with a continuation line; the file is malformed")
                fields[key] += "\n" + line.strip()
                continue
            k, sep, v = line.partition(":")
            if not sep:
                raise IntegrityError(f"{what}: malformed Release line {line[:60]!r}")
            key = k.strip()
            fields[key] = v.strip()
        files: dict[str, IndexFile] = {}
        for entry in fields.get("SHA256", "").splitlines():
            parts = entry.split()
            if not parts:
                continue
            if len(parts) != 3 or len(parts[0]) != 64 or not parts[1].isdigit():
                raise IntegrityError(f"{what}: malformed SHA256 entry {entry[:80]!r} in Release")
            files[parts[2]] = IndexFile(parts[0].lower(), int(parts[1]))
        if not files:
            raise IntegrityError(f"{what}: Release lists no SHA256 checksums; the repository cannot be verified")
        return cls(
            suite=fields.get("Suite", ""),
            codename=fields.get("Codename", ""),
            components=tuple(fields.get("Components", "").split()),
            architectures=tuple(fields.get("Architectures", "").split()),
            date=_date(fields.get("Date"), what),
            valid_until=_date(fields.get("Valid-Until"), what),
            acquire_by_hash=fields.get("Acquire-By-Hash", "no").lower() == "yes",
            files=files,
            fields=fields,
        )

    @property
    def info(self) -> ReleaseInfo:
        yes = {k for k in ("NotAutomatic", "ButAutomaticUpgrades") if self.fields.get(k, "").lower() == "yes"}
        return ReleaseInfo(
            origin=self.fields.get("Origin", ""),
            label=self.fields.get("Label", ""),
            archive=self.suite,
            codename=self.codename,
            version=self.fields.get("Version", ""),
            not_automatic="NotAutomatic" in yes,
            # apt ignores ButAutomaticUpgrades without NotAutomatic
            but_automatic_upgrades="NotAutomatic" in yes and "ButAutomaticUpgrades" in yes,
        )

    def check_valid_until(self, what: str, now: datetime | None = None) -> None:
        """apt refuses an expired Release: it protects against a mirror replaying an old, vulnerable suite."""
        if self.valid_until is None:
            return
        current = now or datetime.now(UTC)
        if current > self.valid_until:
            raise IntegrityError(
                f"{what}: Release expired on {self.valid_until:%Y-%m-%d %H:%M} UTC; use an up-to-date mirror, or "
                "add [check-valid-until=no] to the source for a snapshot mirror"
            )


def _date(value: str | None, what: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError) as e:  # OverflowError: a year past what C's time_t holds
        raise IntegrityError(f"{what}: unparseable date {value!r} in Release") from e
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
