"""The image's dpkg state: /var/lib/dpkg/status (or distroless status.d/), as read from its layers."""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass

from copa.errors import UnsupportedImageError
from copa.oci.rootfs import Files
from copa.pkg.dpkg.arch import deb_architecture
from copa.pkg.dpkg.plan import Installed
from copa.pkg.dpkg.status import StatusEntry, parse_status

STATUS = "var/lib/dpkg/status"
STATUS_D = "var/lib/dpkg/status.d"
INFO = "var/lib/dpkg/info"



@dataclass(frozen=True)
class DpkgDatabase:
    entries: tuple[StatusEntry, ...]
    status_raw: bytes | None  # None for distroless images
    status_d: dict[str, StatusEntry]  # status.d file name -> its entry (distroless only)
    md5sums_d: dict[str, bytes]  # status.d/<name>.md5sums contents (distroless only)
    architecture: str

    @property
    def distroless(self) -> bool:
        return self.status_raw is None

    def installed(self) -> dict[str, Installed]:
        """Installed packages by name; where a name is installed for several architectures, the native one
        (the others are in `foreign()`)."""
        out: dict[str, Installed] = {}
        for e in self.entries:
            if not e.installed:
                continue
            if e.package in out and e.architecture not in (self.architecture, "all"):
                continue
            out[e.package] = _installed(e)
        return out

    def foreign(self) -> dict[str, tuple[Installed, ...]]:
        """Instances that `installed()` leaves out: Multi-Arch: same packages also installed for another
        architecture, by name (dpkg requires them all at one version)."""
        kept = self.installed()
        out: dict[str, list[Installed]] = {}
        for e in self.entries:
            inst = kept.get(e.package)
            if e.installed and inst is not None and e.architecture != inst.architecture:
                out.setdefault(e.package, []).append(_installed(e))
        return {name: tuple(v) for name, v in out.items()}

    @functools.cached_property
    def _installed_by_name(self) -> dict[str, list[StatusEntry]]:
        by_name: dict[str, list[StatusEntry]] = {}
        for e in self.entries:
            if e.installed:
                by_name.setdefault(e.package, []).append(e)
        return by_name

    def entry(self, name: str, architecture: str | None = None) -> StatusEntry | None:
        found = self._installed_by_name.get(name, [])  # database order, as a scan of the entries gives
        if architecture is not None:
            return next((e for e in found if e.architecture == architecture), None)
        native = [e for e in found if e.architecture in (self.architecture, "all")]
        best = native or found
        return best[0] if best else None

    def status_d_name(self, name: str) -> str | None:
        for file_name, entry in self.status_d.items():
            if entry.package == name:
                return file_name
        return None


def _installed(e: StatusEntry) -> Installed:
    source, source_version = e.source
    return Installed(
        name=e.package,
        architecture=e.architecture,
        version=e.version,
        held=e.status[0] == "hold",
        source=source,
        depends=e.depends,
        pre_depends=e.pre_depends,
        provides=e.get("Provides", "") or "",
        source_version=source_version if source_version != e.version else "",
        recommends=e.get("Recommends", "") or "",
        breaks=e.get("Breaks", "") or "",
        conflicts=e.get("Conflicts", "") or "",
        essential=(e.get("Essential", "") or "").strip().lower() == "yes",
        multi_arch=e.multi_arch or "no",
    )


def read_database(files: Files, oci_arch: str, oci_variant: str) -> DpkgDatabase:
    raw = files.get(STATUS)
    status_d: dict[str, StatusEntry] = {}
    md5sums: dict[str, bytes] = {}
    if raw is not None:
        entries = parse_status(raw, "/" + STATUS)
    else:
        found = files.under(STATUS_D)
        if not found:
            raise UnsupportedImageError("image has neither /var/lib/dpkg/status nor /var/lib/dpkg/status.d/")
        collected: list[StatusEntry] = []
        for path, content in found.items():
            name = path[len(STATUS_D) + 1:]
            if "/" in name:
                continue
            if name.endswith(".md5sums"):
                md5sums[name] = content
                continue
            parsed = parse_status(content, "/" + path)
            if len(parsed) == 1:
                status_d[name] = parsed[0]
            collected.extend(parsed)
        entries = tuple(collected)
    arch = _native_architecture(entries, deb_architecture(oci_arch, oci_variant))
    return DpkgDatabase(entries, raw, status_d, md5sums, arch)


def _native_architecture(entries: tuple[StatusEntry, ...], platform_arch: str) -> str:
    """dpkg's native architecture: the one the installed dpkg was built for (`dpkg --print-architecture` is
    compiled in); without dpkg (distroless), the image platform's, if packages of it are installed; else the most
    common one. A majority alone could pick a foreign architecture with more Multi-Arch libraries."""
    dpkg = next((e.architecture for e in entries if e.package == "dpkg" and e.architecture not in ("", "all")), None)
    if dpkg:
        return dpkg
    counts = Counter(e.architecture for e in entries if e.architecture not in ("", "all"))
    if platform_arch in counts or not counts:
        return platform_arch
    return counts.most_common(1)[0][0]


def info_name(entry_package: str, multi_arch: str, architecture: str) -> str:
    """dpkg's file name stem in info/: `libssl3:amd64` for Multi-Arch: same packages, else the name."""
    return f"{entry_package}:{architecture}" if multi_arch == "same" else entry_package
