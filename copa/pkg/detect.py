"""Which package manager an image uses: /etc/os-release plus which package database exists."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from copa.errors import UnsupportedImageError

if TYPE_CHECKING:  # `copa --version` reads FAMILIES: it need not import the engine (its HTTP client, isal, zstandard)
    from copa.oci.rootfs import View
    from copa.pkg.base import OSRelease, PackageManager, Prefetcher, PrefetchHints, RepositoryOptions
    from copa.pkg.fetch import Fetcher
    from copa.report.model import Compare

OS_RELEASE_PATHS = ("etc/os-release", "usr/lib/os-release")
# What adapters read from an image (databases, repository configuration, keys, conffiles): captured in the one
# full pass over the layers, so nothing needs a layer read twice.
# Databases kept whole even when large (an rpm database can be tens of MB); still bounded by rootfs._MAX_FILE.
CAPTURE_LARGE = ("var/lib/rpm", "usr/lib/sysimage/rpm")
CAPTURE = ("etc", "usr/lib/os-release", "var/lib/dpkg", "usr/share/keyrings", "lib/apk/db", "usr/lib/apk/db",
           "var/lib/rpm", "usr/lib/sysimage/rpm", "usr/lib/rpm/macros.d",  # rpm: macros that filter installs
           "usr/share/pki/ca-trust-source",  # for copa/pkg/effects/catrust.py: RHEL's CA trust sources
           # for copa/pkg/effects: the certificates update-ca-certificates bundles, and debconf's answers
           "usr/share/ca-certificates", "usr/local/share/ca-certificates", "var/cache/debconf/config.dat")


@dataclass(frozen=True, slots=True)
class Kind:
    """A package manager family: the database paths that prove it and the OS ids that use it."""

    name: str
    databases: tuple[str, ...]
    database_dirs: tuple[str, ...]
    os_ids: tuple[str, ...]


KINDS = (
    Kind("dpkg", ("var/lib/dpkg/status",), ("var/lib/dpkg/status.d",), ("debian", "ubuntu")),
    Kind("apk", ("lib/apk/db/installed",), (), ("alpine", "wolfi", "chainguard")),
    Kind(
        "rpm",
        ("var/lib/rpm/rpmdb.sqlite", "var/lib/rpm/Packages", "usr/lib/sysimage/rpm/rpmdb.sqlite"),
        ("var/lib/rpmmanifest",),
        ("rhel", "centos", "fedora", "rocky", "almalinux", "amzn", "mariner", "azurelinux", "ol", "sles", "opensuse"),
    ),
)

def _dpkg() -> PackageManager:
    from copa.pkg.dpkg.adapter import DpkgAdapter

    return DpkgAdapter()


def _apk() -> PackageManager:
    from copa.pkg.apk.adapter import ApkAdapter

    return ApkAdapter()


def _rpm() -> PackageManager:
    from copa.pkg.rpm.adapter import RpmAdapter

    return RpmAdapter()


def _dpkg_order() -> Compare:
    from copa.pkg.dpkg.version import compare_versions

    return compare_versions


def _apk_order() -> Compare:
    from copa.pkg.apk.version import compare_versions

    return compare_versions


def _rpm_order() -> Compare:
    from copa.pkg.rpm.version import compare_versions

    return compare_versions


def _rpm_prefetch() -> type[Prefetcher]:
    from copa.pkg.rpm.prefetch import MetadataPrefetch

    return MetadataPrefetch


def _apk_prefetch() -> type[Prefetcher]:
    from copa.pkg.apk.prefetch import IndexPrefetch

    return IndexPrefetch


def _apt_prefetch() -> type[Prefetcher]:
    from copa.pkg.dpkg.prefetch import IndexPrefetch

    return IndexPrefetch


@dataclass(frozen=True)
class Family:
    """What an adapter contributes before it is chosen, each part imported only when used: the adapter itself,
    the version order of the report OS families it serves, and an optional early download (Prefetcher)."""

    adapter: Callable[[], PackageManager]
    report_families: tuple[str, ...]
    version_order: Callable[[], Compare]
    prefetch: Callable[[], type[Prefetcher]] | None = None
    # The captured files under /etc (a name ending in "/": any file below it) that configure this family's
    # repositories. Without one of them, and without --repository/--repositories-file, its Prefetcher would find
    # nothing to do: it is not imported (an Alpine image does not load the apt and rpm-md machinery).
    prefetch_config: tuple[str, ...] = ()
    formats: str = ""  # the package formats (and their versions) the adapter reads and writes: `copa --version`


# Adapters by kind name; a kind without one is detected but not yet supported.
FAMILIES: dict[str, Family] = {
    "dpkg": Family(_dpkg, ("debian", "ubuntu"), _dpkg_order, _apt_prefetch,
                   ("etc/apt/sources.list", "etc/apt/sources.list.d/"),
                   "deb 2.0 packages (gzip, xz, zstd members); dpkg status database 1.x incl. distroless "
                   "status.d; apt InRelease/Release and Packages indexes, sources.list and deb822 .sources"),
    "apk": Family(_apk, ("alpine", "wolfi", "chainguard"), _apk_order, _apk_prefetch,
                  ("etc/apk/repositories", "etc/apk/repositories.d/"),
                  "apk v2 packages and signed APKINDEX.tar.gz; installed database of apk-tools 2 and 3"),
    "rpm": Family(_rpm, ("redhat", "centos", "rocky", "alma", "oracle", "amazon", "fedora"), _rpm_order,
                  _rpm_prefetch,
                  ("etc/yum.repos.d/", "etc/yum/repos.d/", "etc/distro.repos.d/", "etc/dnf/dnf.conf", "etc/yum.conf"),
                  "rpm v4 packages (header v3/v4 signatures); rpmdb sqlite, Berkeley DB (hash/btree) and ndb; "
                  "rpm-md repositories (repomd.xml), modular metadata"),
}


def supported_formats() -> dict[str, str]:
    """Each package-manager family copa patches, with the formats it reads and writes."""
    return {name: family.formats for name, family in FAMILIES.items()}


def version_order(report_family: str) -> Compare | None:
    """The version order for a report's OS family (Trivy's `Metadata.OS.Family`), None if no adapter serves it."""
    low = report_family.lower()
    for family in FAMILIES.values():
        if low in family.report_families:
            return family.version_order()
    return None


# Every family's early download starts once the base layer's stream has gone past etc/ (repository configuration
# lives there); each one decides from the captured files whether the image is its kind.
PREFETCH_WATCH = "etc"


class EarlyDownloads:
    """The families' Prefetchers together: `start` is a rootfs.scan early hook, `join` waits for what the plans
    need first, `ahead(kind)` is what the detected family read ahead, `close` stops them all. A family's Prefetcher
    is imported and built in `start`, only when the captured files (or the user's repositories) give it something
    to do; `start` runs in the thread that scans the image, as the adapter's import does later."""

    def __init__(self, repos: RepositoryOptions, oci_arch: str, oci_variant: str, fetcher: Fetcher,
                 hints: PrefetchHints | None = None) -> None:
        self._repos, self._arch, self._variant = repos, oci_arch, oci_variant
        self._fetcher, self._hints = fetcher, hints
        self._parts: dict[str, Prefetcher] = {}

    def start(self, captured: Mapping[str, bytes]) -> None:
        from copa.pkg.base import PrefetchHints

        given = self._hints if self._hints is not None else PrefetchHints()
        for name in prefetch_families(captured, self._repos):
            make = FAMILIES[name].prefetch
            assert make is not None  # prefetch_families names only families with one
            part = self._parts[name] = make()(self._repos, self._arch, self._variant, self._fetcher, given)
            part.start(captured)

    def join(self) -> None:
        for part in self._parts.values():
            part.join()

    def ahead(self, kind: str) -> object:
        part = self._parts.get(kind)
        return part.ahead() if part is not None else None

    def close(self) -> None:
        for part in self._parts.values():
            part.close()


def prefetch_families(captured: Mapping[str, bytes], repos: RepositoryOptions) -> tuple[str, ...]:
    """The families whose early download may have something to do: those whose repository configuration was
    captured, or every one when the user names repositories (each family reads those lines its own way)."""
    user = bool(repos.repositories) or repos.repositories_file is not None
    return tuple(name for name, f in FAMILIES.items() if f.prefetch is not None and (user or any(
        path.startswith(c) if c.endswith("/") else path == c for c in f.prefetch_config for path in captured)))


@dataclass(frozen=True)
class Detected:
    kind: Kind
    os_release: OSRelease


def detect(root: View) -> Detected:
    """Detect from the merged view (os-release is usually a symlink into usr/lib; the view resolves it)."""
    from copa.pkg.base import OSRelease

    text = root.read(OS_RELEASE_PATHS[0]) or root.read(OS_RELEASE_PATHS[1]) or b""
    os_release = OSRelease.parse(text.decode("utf-8", "replace"))
    present = [k for k in KINDS if any(root.get(db) is not None for db in k.databases)
               or any(root.under(d) for d in k.database_dirs)]
    if not present:
        name = os_release.pretty_name or "unknown OS"
        raise UnsupportedImageError(
            f"image ({name}) has no dpkg, apk or rpm package database; there is nothing copa can patch"
        )
    # Prefer the kind the OS names itself as; else the one whose database exists.
    kind = next((k for k in present if set(k.os_ids) & set(os_release.families)), present[0])
    return Detected(kind, os_release)


def adapter_for(detected: Detected) -> PackageManager:
    family = FAMILIES.get(detected.kind.name)
    if family is None:
        name = detected.os_release.pretty_name or detected.kind.name
        raise UnsupportedImageError(
            f"{name} images ({detected.kind.name} packages) are not yet supported by this copa; "
            "supported: " + (", ".join(sorted(FAMILIES)) or "none yet")
        )
    return family.adapter()
