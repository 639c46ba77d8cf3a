"""What a scanner report tells us: the image's OS and the OS packages that have fixes.

Parsers produce `Finding`s (one per package per vulnerability, as scanners list them); `build_packages`
merges them into one `ReportedPackage` per (name, installed version). Choosing the fixed version needs
the OS family's version order, so comparators are looked up in a small registry that package-manager
adapters extend (`register_comparator`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from copa.errors import CopaError, ReportError
from copa.oci.model import Platform
from copa.report.platform import normalise_platform

Compare = Callable[[str, str], int]


@dataclass(frozen=True, slots=True)
class OSInfo:
    family: str  # lower case, as Trivy names it: "debian", "ubuntu", "alpine", "cbl-mariner", ...
    version: str


@dataclass(frozen=True, slots=True)
class Vulnerability:
    id: str


@dataclass(frozen=True, slots=True)
class ReportedPackage:
    name: str  # binary package name
    installed_version: str
    fixed_version: str | None  # None in Report.unfixed
    vulnerability_ids: tuple[str, ...]  # deduplicated, sorted

    @property
    def vulnerabilities(self) -> tuple[Vulnerability, ...]:
        return tuple(Vulnerability(v) for v in self.vulnerability_ids)


@dataclass(frozen=True, slots=True)
class Report:
    source: str  # path of the report file
    format: str  # "trivy" | "grype" | "v1alpha1" | "v1alpha2" (a scanner plugin's output is one of the last two)
    os: OSInfo
    arch: str | None  # as the report writes it (Trivy ImageConfig.architecture, Grype source.target.architecture...)
    packages: tuple[ReportedPackage, ...]  # sorted by name; each with a fixed_version
    # Vulnerabilities without a fix, per package (fixed_version None). They are counted and skipped; a
    # package can be in both lists when only some of its vulnerabilities are fixed.
    unfixed: tuple[ReportedPackage, ...]
    variant: str | None = None  # the architecture variant as the report writes it ("v8", "v7"), if it names one
    image_os: str | None = None  # the image config's os ("linux") when the report carries it
    # The image the report was made of, as the scanner names it (Trivy ArtifactName, Grype source.target.userInput),
    # and its REPO@DIGEST names (Trivy Metadata.RepoDigests, Grype source.target.repoDigests): `copa bulk -r DIR`
    # matches reports to images by them.
    artifact: str | None = None
    repo_digests: tuple[str, ...] = ()

    @property
    def unfixed_count(self) -> int:
        return sum(len(p.vulnerability_ids) for p in self.unfixed)

    @property
    def platform(self) -> Platform | None:
        """The OCI platform the report was made for (os defaults to linux; x86_64 -> amd64, aarch64 -> arm64,
        arm64's v8 dropped), or None when the report names no architecture. Match it with Platform.matches."""
        return normalise_platform(self.arch, self.variant, self.image_os)


@dataclass(frozen=True, slots=True)
class Finding:
    """One (package, vulnerability) row as a scanner lists it. fixed is the raw text ("" when none)."""

    name: str
    installed: str
    fixed: str
    vulnerability_id: str


# --- version order per OS family ---------------------------------------------------------------------


def simple_compare(a: str, b: str) -> int:
    """A family-neutral order: dpkg's verrevcmp over the whole string (digit runs numerically, other runs
    by character with '~' before everything). Right for "3.3.2-r5" < "3.3.3-r0" and "2.35-5.cm2" <
    "2.35-7.cm2"; adapters register an exact comparator for their family."""

    def order(c: str) -> int:
        if c == "~":
            return -1
        if c.isalpha():
            return ord(c)
        return ord(c) + 256

    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            bc = order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ac != bc:
                return -1 if ac < bc else 1
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return -1 if first_diff < 0 else 1
    return 0


_COMPARATORS: dict[str, Compare] = {}


def register_comparator(families: Iterable[str], compare: Compare) -> None:
    """Make `compare` the version order for these OS families (lower-case Trivy family names)."""
    for family in families:
        _COMPARATORS[family.lower()] = compare


def comparator_for(family: str) -> Compare:
    """The version order of a report's OS family: one registered here, else the one the package-manager family
    serving it declares (copa.pkg.detect, which loads only that adapter's version module), else simple_compare."""
    found = _COMPARATORS.get(family.lower())
    if found is not None:
        return found
    from copa.pkg.detect import version_order  # deferred: the package families sit above the report types

    return version_order(family) or simple_compare


# --- merging findings --------------------------------------------------------------------------------


def _choose_fixed(raw: str, installed: str, cmp: Compare) -> str | None:
    """One fixed version from Trivy's text, which may list several ("1.2.3-1, 1.2.4-1", one per branch).

    We take the lowest one above the installed version: it is the smallest upgrade that fixes the
    vulnerability on the installed branch. If none is above (odd, but seen), the highest listed.
    """
    candidates = [c.strip() for c in raw.split(",") if c.strip()]
    if not candidates:
        return None
    above = [c for c in candidates if cmp(c, installed) > 0]
    pool = above or candidates
    best = pool[0]
    for c in pool[1:]:
        if (cmp(c, best) < 0) if above else (cmp(c, best) > 0):
            best = c
    return best


def build_packages(findings: Iterable[Finding], cmp: Compare, source: str
                   ) -> tuple[tuple[ReportedPackage, ...], tuple[ReportedPackage, ...]]:
    """(packages with a fix, packages' unfixed vulnerabilities), both sorted by name and version.

    When a package's vulnerabilities are fixed in different versions, the highest one fixes them all.
    """
    fixed: dict[tuple[str, str], tuple[str, set[str]]] = {}
    unfixed: dict[tuple[str, str], set[str]] = {}
    for f in findings:
        key = (f.name, f.installed)
        try:
            version = _choose_fixed(f.fixed, f.installed, cmp)
            if version is None:
                unfixed.setdefault(key, set()).add(f.vulnerability_id)
                continue
            if key in fixed:
                best, ids = fixed[key]
                if cmp(version, best) > 0:
                    best = version
                fixed[key] = (best, ids | {f.vulnerability_id})
            else:
                fixed[key] = (version, {f.vulnerability_id})
        except (CopaError, ValueError) as e:
            raise ReportError(f"{source}: package {f.name} {f.installed}, {f.vulnerability_id}: bad version "
                              f"in report ({e}); fix or regenerate the report") from None
    packages = tuple(ReportedPackage(n, i, v, tuple(sorted(ids))) for (n, i), (v, ids) in sorted(fixed.items()))
    skipped = tuple(ReportedPackage(n, i, None, tuple(sorted(ids))) for (n, i), ids in sorted(unfixed.items()))
    return packages, skipped
