"""Whether a report speaks of the image at hand: the same distribution (by the report's OS family and the image's
os-release) and the same release. A Debian report applied to Ubuntu, or a bookworm report to bullseye, names
versions from another package world."""

from __future__ import annotations

import re
from typing import Protocol

from copa.errors import ReportError
from copa.report.model import Report


class OSIdentity(Protocol):
    """What of an image's os-release the check reads (copa.pkg.base.OSRelease has it)."""

    @property
    def id(self) -> str: ...

    @property
    def version_id(self) -> str: ...

    @property
    def pretty_name(self) -> str: ...

    @property
    def families(self) -> tuple[str, ...]: ...


# Report OS families that name the same package world as an image's os-release ID.
FAMILY_ALIASES = {
    "debian": {"debian"},
    "ubuntu": {"ubuntu"},
    "alpine": {"alpine"},
    "wolfi": {"wolfi", "chainguard"},
    "chainguard": {"wolfi", "chainguard"},
    "cbl-mariner": {"mariner", "cbl-mariner"},
    "azurelinux": {"azurelinux"},
    # Trivy's RPM families: "redhat" is RHEL and UBI only (CentOS, Rocky, Alma... are reported as themselves).
    "redhat": {"rhel"},
    "centos": {"centos"},
    "rocky": {"rocky"},
    "alma": {"almalinux"},
    "oracle": {"ol"},
    "amazon": {"amzn"},
    "fedora": {"fedora"},
}


_KNOWN_IDS = frozenset(i for ids in FAMILY_ALIASES.values() for i in ids)
# Families whose VERSION_ID names a release by major.minor (alpine 3.21, ubuntu 22.04); others by the major alone.
_MINOR_MATTERS = frozenset({"alpine", "ubuntu"})
# Rolling distributions: the version is a date or build number, not a release.
_ROLLING = frozenset({"wolfi", "chainguard"})


def _release(version: str, parts: int) -> str | None:
    """'12.5' -> '12', '3.21.0' -> '3.21' (parts=2), '2 (Karoo)' -> '2'; None when the version does not start
    with a number. Trivy names Amazon Linux 1 "AMI release 2018.03": the words before the number go."""
    m = re.match(r"\d+(?:\.\d+)*", version.strip().removeprefix("AMI release "))
    if m is None:
        return None
    return ".".join(m.group(0).split(".")[:parts])


def check_report(report: Report, os_release: OSIdentity) -> None:
    """The report must be for this image's distribution and release: a Debian report applied to Ubuntu, or a
    bookworm report to bullseye, names versions from another package world."""
    family = report.os.family.lower()
    accepted = FAMILY_ALIASES.get(family, {family})
    # ID_LIKE only speaks for a derivative we do not know by its own ID (ubuntu is ID_LIKE=debian, but not Debian).
    ids = {os_release.id} if os_release.id in _KNOWN_IDS else set(os_release.families)
    if not accepted & ids:
        raise ReportError(
            f"report is for {report.os.family} {report.os.version} but the image is "
            f"{os_release.pretty_name}; scan this image and pass that report"
        )
    if family in _ROLLING or os_release.id not in accepted:
        return
    parts = 2 if family in _MINOR_MATTERS else 1
    wanted, actual = _release(report.os.version, parts), _release(os_release.version_id, parts)
    if wanted is not None and actual is not None and wanted != actual:
        raise ReportError(
            f"report is for {report.os.family} {report.os.version} but the image is {os_release.pretty_name} "
            f"(VERSION_ID {os_release.version_id}); scan this image and pass that report"
        )
