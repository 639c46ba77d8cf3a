"""The dpkg image's packages after the patch (status or distroless status.d, with the plan applied), and their
purls as Syft writes them: pkg:deb/<os-release ID>/<name>@<version>?arch=..&distro=<ID>-<VERSION_ID>&upstream=..."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from copa.pkg.apt.packages import PackageRecord
from copa.pkg.base import OSRelease
from copa.pkg.dpkg.database import DpkgDatabase
from copa.pkg.inventory import InstalledPackage, sorted_inventory
from copa.pkg.purl import build, distro_qualifier, split_epoch


def deb_purl(os_release: OSRelease, name: str, version: str, architecture: str, source: str = "",
             source_version: str = "") -> str:
    """`upstream` names the source package when it is not the binary's own name and version: `openssl` for
    libssl3, `bash@5.2.15-2` for bash 5.2.15-2+b13 (a binNMU), as Syft qualifies them."""
    upstream = ""
    if source and source_version and source_version != version:
        upstream = f"{source}@{source_version}"
    elif source and source != name:
        upstream = source
    return build("deb", name, os_release.id or "debian", version, {
        "arch": architecture,
        "distro": distro_qualifier(os_release.id, os_release.version_id),
        "upstream": upstream,
    })


def deb_scanner_purl(vendor: str, os_version: str, name: str, version: str, architecture: str) -> str:
    """A package as Trivy names it in its reports and matches VEX statements against: the epoch as a qualifier,
    distro `<vendor>-<the scanned OS version>` (debian-12.15: Trivy reads /etc/debian_version)."""
    epoch, rest = split_epoch(version)
    return build("deb", name, vendor, rest, {
        "arch": architecture, "epoch": epoch, "distro": f"{vendor}-{os_version}" if os_version else ""})


def dpkg_inventory(os_release: OSRelease, db: DpkgDatabase, gone: Collection[tuple[str, str]],
                   records: Sequence[PackageRecord]) -> tuple[InstalledPackage, ...]:
    """Every installed package of `db` (config-files and not-installed entries are not installed) but the `gone`
    instances, by (name, architecture): those the plan replaces or removes; and the chosen versions' index
    `records` (an upgrade may change the architecture, all <-> amd64, so the old instance is named apart)."""
    out: list[InstalledPackage] = []
    seen: set[tuple[str, str]] = set()
    for e in db.entries:
        key = (e.package, e.architecture)
        if not e.installed or key in gone or key in seen:
            continue
        seen.add(key)
        source, source_version = e.source
        out.append(_package(os_release, e.package, e.version, e.architecture, source, source_version))
    out += [_package(os_release, r.package, r.version, r.architecture, r.source_name, r.source_version)
            for r in records]
    return sorted_inventory(out)


def _package(os_release: OSRelease, name: str, version: str, architecture: str, source: str,
             source_version: str) -> InstalledPackage:
    return InstalledPackage(
        name=name, version=version, architecture=architecture,
        purl=deb_purl(os_release, name, version, architecture, source, source_version),
        source=source if source != name or source_version != version else "",
        source_version=source_version if source_version != version else "",
    )
