"""What is installed in an image after the patch, in terms every family shares: the input of an SBOM.

Each family builds these from the package database its adapter read in plan() with the plan's updates applied
(copa/pkg/<family>/inventory.py); nothing here knows a package manager.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from copa.pkg.base import Update, UpdateKind


@dataclass(frozen=True, slots=True)
class InstalledPackage:
    name: str
    version: str  # the family's full version string (dpkg's, apk's, rpm's [epoch:]version-release)
    architecture: str  # the package's own (amd64, all, x86_64, noarch), not the image's
    purl: str
    source: str = ""  # the source package's name; "" when it is the package's own
    source_version: str = ""  # the source package's full version; "" when it is the package's own
    licenses: tuple[str, ...] = ()  # as the database declares them (apk L:, rpm LICENSE); dpkg's are not there
    supplier: str = ""  # maintainer / packager, as recorded


def changed(updates: Iterable[Update]) -> tuple[dict[tuple[str, str], Update], set[tuple[str, str]]]:
    """The plan's effect on the database, by (name, architecture): the new versions (installed or newly
    installed) and the removed packages."""
    new: dict[tuple[str, str], Update] = {}
    removed: set[tuple[str, str]] = set()
    for u in updates:
        if u.kind is UpdateKind.REMOVED:
            removed.add((u.name, u.architecture))
        else:
            new[(u.name, u.architecture)] = u
    return new, removed


def sorted_inventory(packages: Iterable[InstalledPackage]) -> tuple[InstalledPackage, ...]:
    """One order for every family, so an SBOM is the same bytes for the same image."""
    return tuple(sorted(packages, key=lambda p: (p.name, p.architecture, p.version)))
