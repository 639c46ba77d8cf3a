"""The apk image's packages after the patch (/lib/apk/db/installed with the plan applied), and their purls as Syft
writes them: pkg:apk/<os-release ID>/<name>@<version>?arch=..&distro=<ID>-<VERSION_ID>&upstream=<origin>."""

from __future__ import annotations

from collections.abc import Sequence

from copa.pkg.apk.index import ApkRecord
from copa.pkg.base import OSRelease, Update
from copa.pkg.inventory import InstalledPackage, changed, sorted_inventory
from copa.pkg.purl import build, distro_qualifier


def apk_purl(os_release: OSRelease, name: str, version: str, architecture: str, origin: str = "") -> str:
    """`upstream` is the origin (source) package when it is not the package's own name."""
    return build("apk", name, os_release.id or "alpine", version, {
        "arch": architecture,
        "distro": distro_qualifier(os_release.id, os_release.version_id),
        "upstream": origin if origin != name else "",
    })


def apk_scanner_purl(vendor: str, os_version: str, name: str, version: str, architecture: str) -> str:
    """A package as Trivy names it in its reports and matches VEX statements against: distro is the scanned OS
    version alone (3.20.3: Trivy reads /etc/alpine-release)."""
    return build("apk", name, vendor, version, {"arch": architecture, "distro": os_version})


def apk_inventory(os_release: OSRelease, installed: Sequence[ApkRecord], updates: Sequence[Update],
                  chosen: Sequence[ApkRecord], default_arch: str) -> tuple[InstalledPackage, ...]:
    """Every installed record with the chosen records (new versions and new packages) in their place; apk keeps
    one version of a name, so names are the keys."""
    new, removed = changed(updates)
    new_names = {name for name, _ in new}
    removed_names = {name for name, _ in removed}
    out = [_package(os_release, r, default_arch) for r in installed
           if r.name not in new_names and r.name not in removed_names]
    out += [_package(os_release, r, default_arch) for r in chosen if r.name in new_names]
    return sorted_inventory(out)


def _package(os_release: OSRelease, r: ApkRecord, default_arch: str) -> InstalledPackage:
    arch = r.arch or default_arch
    return InstalledPackage(
        name=r.name, version=r.version, architecture=arch,
        purl=apk_purl(os_release, r.name, r.version, arch, r.origin),
        source=r.origin if r.origin != r.name else "",
        licenses=(r.license,) if r.license else (),
    )
