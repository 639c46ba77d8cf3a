"""What a package-manager adapter is, and the values it shares with the rest of copa."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from copa.errors import ResolutionError
from copa.pkg.options import RepositoryOptions as RepositoryOptions  # re-exported: the adapters import it from here

if TYPE_CHECKING:
    # Types only: copa.api imports this module before its first registry request, which must not wait for the
    # layer codecs (zstandard, isal) that these modules import.
    from copa.oci.image import Image
    from copa.oci.layer import Entry
    from copa.oci.rootfs import Files, View
    from copa.pkg.fetch import Fetcher
    from copa.pkg.inventory import InstalledPackage
    from copa.report.model import OSInfo, Report


@dataclass(frozen=True, slots=True)
class OSRelease:
    id: str
    id_like: tuple[str, ...]
    version_id: str
    version_codename: str
    pretty_name: str

    @classmethod
    def parse(cls, text: str) -> OSRelease:
        values: dict[str, str] = {}
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.partition("=")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            values[key.strip()] = value
        return cls(
            id=values.get("ID", "").lower(),
            id_like=tuple(values.get("ID_LIKE", "").lower().split()),
            version_id=values.get("VERSION_ID", ""),
            version_codename=values.get("VERSION_CODENAME", ""),
            pretty_name=values.get("PRETTY_NAME", values.get("ID", "")),
        )

    @property
    def families(self) -> tuple[str, ...]:
        return (self.id, *self.id_like)


@dataclass(frozen=True)
class ImageContext:
    """The image being patched, as an adapter sees it."""

    image: Image
    layers: int  # the original layers; a previous patch layer above them is ignored
    os_release: OSRelease
    architecture: str  # the image's (GOARCH-style) architecture, e.g. amd64, arm64
    variant: str
    workdir: Path
    repos: RepositoryOptions
    files: Files  # what detection already read: os-release and the package database files
    root: View  # every path of the original layers, with the contents under detect.CAPTURE
    ignore_errors: bool = False
    allow_remove: bool = False  # --allow-remove: packages the package manager would remove may be removed
    cache_dir: Path | None = None
    timeout: float = 300.0  # --timeout, for package downloads as for the registry
    ca_bundle: str | None = None  # --ca-bundle: CA certificates for HTTPS package repositories too
    # What this family's Prefetcher prepared beyond the cache while the image was read (Prefetcher.ahead), for
    # the adapter to take if it matches its plan; opaque to the orchestrator.
    ahead: object = None


class UpdateKind(enum.Enum):
    REPORTED = "reported"  # named by the report
    SIBLING = "sibling"  # same source package: moves with it (apt's Upgrade-By-Source-Package, or an exact pin)
    CO_UPGRADE = "co-upgraded"  # installed package whose relations the new versions would break: moves along
    DEPENDENCY = "dependency"  # needed by a new version's dependencies
    NEW = "new"  # newly installed, needed by a new version
    REMOVED = "removed"  # removed as the package manager would (only with --allow-remove); new_version is ""


class SkipReason(enum.Enum):
    NOT_INSTALLED = "not installed in the image"
    NO_FIX_AVAILABLE = "no repository has the fixed version"
    ALREADY_FIXED = "installed version already fixed"
    HELD = "held by the image's package manager"
    NO_FIXED_VERSION = "the report names no fixed version"
    UNRESOLVABLE = "dependencies cannot be satisfied"


@dataclass(frozen=True, slots=True)
class Update:
    name: str
    architecture: str
    old_version: str  # "" for a newly installed package
    new_version: str
    kind: UpdateKind
    vulnerabilities: tuple[str, ...] = ()
    scripts_note: str = ""  # what the package's maintainer scripts do that the layer does not reproduce
    reason: str = ""  # why a package the report did not name moves, e.g. "python3.11 pins libpython3.11 (= 1.2)"


@dataclass(frozen=True, slots=True)
class Skip:
    name: str
    reason: SkipReason
    detail: str = ""


def check_failures(failures: tuple[Skip, ...], ignore_errors: bool) -> None:
    """Reported packages that cannot be fixed stop the patch, unless --ignore-errors says to go on without them."""
    if failures and not ignore_errors:
        first = failures[0]
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise ResolutionError(
            f"cannot fix {first.name}: {first.detail}{more}; check the repositories or pass --ignore-errors"
        )


@dataclass(frozen=True)
class Plan:
    updates: tuple[Update, ...]
    skipped: tuple[Skip, ...] = ()
    # Adapter-specific data carried from planning to layer building (resolved package records).
    payload: object = None


@dataclass(frozen=True)
class LayerContent:
    entries: tuple[Entry, ...]
    is_base_symlink: Callable[[str], bool]
    updates: tuple[Update, ...] = ()
    notes: Mapping[str, str] = field(default_factory=dict)
    default_mtime: int = 0


@dataclass(frozen=True)
class PrefetchHints:
    """What the run knows before the image is read: the names of the packages the report asks to fix, and a
    directory (removed with the run) where a prefetcher may stage what it reads ahead."""

    packages: tuple[str, ...] = ()
    workdir: Path | None = None
    # (name, fixed version) of each reported package, and --ignore-errors: a plan that will fail for want of a fix
    # needs nothing read ahead.
    fixed: tuple[tuple[str, str], ...] = ()
    ignore_errors: bool = False


class Prefetcher(Protocol):
    """An adapter's early download: built before the image's kind is known, started (from a thread of the layer
    scan) with the files captured under /etc so far, and joined before planning. It may only warm the
    checksum-addressed cache, and read ahead what the plan will most likely want: nothing it fetches is trusted
    until the plan verifies it, and what it read ahead is used only for packages the verified plan names by the
    same checksum."""

    def __init__(self, repos: RepositoryOptions, oci_arch: str, oci_variant: str, fetcher: Fetcher,
                 hints: PrefetchHints) -> None: ...

    def start(self, captured: Mapping[str, bytes]) -> None: ...

    def join(self) -> None:
        """Wait for the downloads the plan needs first (indexes); reading ahead may go on."""

    def ahead(self) -> object:
        """What was prepared beyond the cache, for the adapter (ImageContext.ahead); None if nothing."""

    def close(self) -> None:
        """Stop reading ahead and wait for what is running: the patch is done, or failed."""


class PackageManager(Protocol):
    name: str

    def plan(self, ctx: ImageContext, report: Report | None) -> Plan: ...

    def build(self, ctx: ImageContext, plan: Plan) -> LayerContent: ...

    def inventory(self, ctx: ImageContext, plan: Plan) -> tuple[InstalledPackage, ...]:
        """Every OS package installed once `plan` is applied (what the patched image's database lists), from what
        plan() read: the input of an SBOM."""
        ...

    def purl(self, ctx: ImageContext, name: str, version: str, architecture: str,
             scanned_os: OSInfo | None = None) -> str:
        """The package URL a VEX statement names one of this family's packages by: as the scanner (Trivy) names it
        in its report, so that its qualifiers match (arch, epoch, distro from `scanned_os`, the report's OS, else
        the image's os-release)."""
        ...
