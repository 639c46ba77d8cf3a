"""The rpm image's packages after the patch (the rpm database's headers with the plan applied), and their purls
as Syft writes them: pkg:rpm/<vendor>/<name>@<version>-<release>?arch=..&epoch=..&distro=<ID>-<VERSION_ID>&upstream=..
(the source rpm's file name)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from copa.pkg.base import OSRelease
from copa.pkg.inventory import InstalledPackage, sorted_inventory
from copa.pkg.purl import build, distro_qualifier
from copa.pkg.rpm.header import Header
from copa.pkg.rpm.tags import Tag

# os-release IDs whose purl vendor is spelled otherwise (Red Hat's own purls say pkg:rpm/redhat/...).
_VENDOR = {"rhel": "redhat"}
_PSEUDO = frozenset({"gpg-pubkey"})  # keys imported into the rpmdb, not packages


@dataclass(frozen=True, slots=True)
class RpmIdentity:
    name: str
    epoch: str  # "" or "0" when none
    version: str
    release: str
    arch: str
    sourcerpm: str = ""
    license: str = ""

    @property
    def evr(self) -> str:
        prefix = f"{self.epoch}:" if self.epoch and self.epoch != "0" else ""
        return f"{prefix}{self.version}-{self.release}"


def split_evr(evr: str) -> tuple[str, str, str]:
    """'1:3.0.7-27.el9' -> ('1', '3.0.7', '27.el9'); the release is what follows the last '-'."""
    epoch, _, rest = evr.rpartition(":") if ":" in evr else ("", "", evr)
    version, _, release = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return epoch, version, release


def rpm_purl(os_release: OSRelease, name: str, evr: str, architecture: str, sourcerpm: str = "") -> str:
    epoch, version, release = split_evr(evr)
    return build("rpm", name, _VENDOR.get(os_release.id, os_release.id) or "rpm",
                 f"{version}-{release}" if release else version, {
                     "arch": architecture,
                     "epoch": epoch if epoch and epoch != "0" else "",
                     "distro": distro_qualifier(os_release.id, os_release.version_id),
                     "upstream": sourcerpm,
                 })


def rpm_scanner_purl(vendor: str, os_version: str, name: str, evr: str, architecture: str) -> str:
    """A package as Trivy names it in its reports and matches VEX statements against: version-release, the epoch
    as a qualifier, distro `<vendor>-<the scanned OS version>` (redhat-9.4)."""
    epoch, version, release = split_evr(evr)
    return build("rpm", name, vendor, f"{version}-{release}" if release else version, {
        "arch": architecture, "epoch": epoch if epoch and epoch != "0" else "",
        "distro": f"{vendor}-{os_version}" if os_version else ""})


# Trivy's OS family names where they are not the os-release ID.
_SCANNER_FAMILY = {"rhel": "redhat", "almalinux": "alma", "ol": "oracle", "amzn": "amazon"}


def scanner_vendor(os_id: str) -> str:
    """The family name Trivy gives an image when no report names it (rhel -> redhat)."""
    return _SCANNER_FAMILY.get(os_id, os_id)


def of_header(h: Header) -> RpmIdentity:
    epoch = h.integer(Tag.EPOCH)
    return RpmIdentity(h.string(Tag.NAME) or "", str(epoch) if epoch is not None else "", h.string(Tag.VERSION) or "",
                       h.string(Tag.RELEASE) or "", h.string(Tag.ARCH) or "noarch", h.string(Tag.SOURCERPM) or "",
                       h.string(Tag.LICENSE) or "")


def rpm_inventory(os_release: OSRelease, kept: Iterable[Header],
                  chosen: Sequence[RpmIdentity]) -> tuple[InstalledPackage, ...]:
    """The headers the plan keeps (neither replaced nor erased) and the chosen packages."""
    out = [_package(os_release, i) for i in map(of_header, kept) if i.name not in _PSEUDO]
    out += [_package(os_release, c) for c in chosen]
    return sorted_inventory(out)


def source_of(sourcerpm: str) -> tuple[str, str]:
    """(name, version-release) of a source rpm's file name: 'openssl-3.0.7-27.el9.src.rpm' -> ('openssl',
    '3.0.7-27.el9'); ('', '') when it is not one."""
    stem = sourcerpm.removesuffix(".rpm").rsplit(".", 1)[0] if sourcerpm.endswith(".rpm") else ""
    name_version, _, release = stem.rpartition("-")
    name, _, version = name_version.rpartition("-")
    return (name, f"{version}-{release}") if name and version and release else ("", "")


def _package(os_release: OSRelease, i: RpmIdentity) -> InstalledPackage:
    source, source_vr = source_of(i.sourcerpm)
    # A source rpm's file name carries no epoch; the binary's is the build's (what rpm-based scanners assume too).
    source_version = f"{i.epoch}:{source_vr}" if source_vr and i.epoch and i.epoch != "0" else source_vr
    return InstalledPackage(
        name=i.name, version=i.evr, architecture=i.arch,
        purl=rpm_purl(os_release, i.name, i.evr, i.arch, i.sourcerpm),
        source=source if source != i.name or source_version != i.evr else "",
        source_version=source_version if source_version != i.evr else "",
        licenses=(i.license,) if i.license else (),
    )
