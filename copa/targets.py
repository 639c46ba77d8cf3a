"""Which images of a source to patch, each with its report: Copacetic's rules for single images, multi-platform
indexes, --platform lists and report directories, and its name for each patched platform."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from copa.errors import ReportError, UnsupportedImageError
from copa.oci.model import Descriptor, Index, Manifest, Platform
from copa.report.directory import load_reports
from copa.report.load import load_report
from copa.report.model import Report

if TYPE_CHECKING:
    from copa.oci.transport import Opened

DEFAULT_PLATFORM = Platform("linux", "amd64")


@dataclass(frozen=True)
class Reports:
    """The report(s) given with -r: one file (for the one platform patched) or a directory of one per platform."""

    single: Report | None = None
    per_platform: tuple[Report, ...] = ()
    directory: str | None = None


def read_reports(path: str | None, scanner: str | None, timeout: float) -> Reports:
    """-r: nothing, one report file, or a directory of one report per platform (-s: their format or plugin)."""
    if not path:
        return Reports()
    if Path(path).is_dir():
        return Reports(per_platform=load_reports(path, scanner, plugin_timeout=timeout), directory=path)
    return Reports(single=load_report(path, scanner, plugin_timeout=timeout))


@dataclass(frozen=True)
class Target:
    platform: Platform | None  # None: a single image, not an entry of an index
    manifest: Manifest
    report: Report | None
    explicit: bool  # named by --platform or a report: failing to patch it is an error, not a note


def select(opened: Opened, root: Manifest | Index, platforms: Sequence[str], reports: Reports) -> list[Target]:
    """Which images of `root` to patch (`platforms`: --platform's OS/ARCH[/VARIANT] texts), with the report for
    each."""
    # Here, not at the top: reading the reports comes before the first registry request, which must not wait for
    # the layer codecs copa.oci.image imports.
    from copa.oci.image import platform_entries, resolve_platform

    wanted = tuple(dict.fromkeys(Platform.parse(t) for t in platforms))
    if isinstance(root, Manifest):
        report = reports.single
        if reports.per_platform:
            report = _report_for_single(root, opened, reports)
        return [Target(None, root, report, True)]
    entries = [(p, d) for p, d in platform_entries(opened.source, root) if p.os not in _NOT_PATCHABLE_OS]
    if reports.per_platform:
        targets = []
        for report in reports.per_platform:
            rp = report.platform
            assert rp is not None  # load_reports refuses a report without a platform
            if wanted and not any(w.matches(rp) for w in wanted):
                continue
            entry = _entry_for(entries, rp)
            if entry is None:
                available = ", ".join(str(p) for p, _ in entries) or "none"
                raise ReportError(f"{report.source}: report is for {rp} but {opened.name} has no such platform "
                                  f"(platforms: {available}); remove that report or scan the right image")
            targets.append(Target(entry[0], _manifest(opened, entry[1]), report, True))
        return _unique(targets)
    if wanted:
        targets = []
        for w in wanted:
            manifest, found = resolve_platform(opened.source, root, w)
            targets.append(Target(found or w, manifest, reports.single, True))
        return _unique(targets)
    if reports.single is not None:
        # One report file speaks for one platform: the one it names (else linux/amd64), as before.
        wanted_one = reports.single.platform or DEFAULT_PLATFORM
        manifest, found = resolve_platform(opened.source, root, wanted_one)
        return [Target(found or wanted_one, manifest, reports.single, True)]
    # No report and no --platform: every platform of the index, as Copacetic does.
    return _unique([Target(p, _manifest(opened, d), None, False) for p, d in entries])


# Entries that are not runnable images of an OS we could patch: buildx attestations ("unknown/unknown") and
# Windows images are kept by digest.
_NOT_PATCHABLE_OS = frozenset({"unknown", "windows"})


def _entry_for(entries: list[tuple[Platform, Descriptor]], wanted: Platform) -> tuple[Platform, Descriptor] | None:
    exact = [e for e in entries if e[0] == wanted]
    if exact:
        return exact[0]
    usual = [e for e in entries if wanted.matches(e[0])]
    return usual[0] if usual else None


def _manifest(opened: Opened, desc: Descriptor) -> Manifest:
    doc = opened.source.fetch_manifest(desc)
    if not isinstance(doc, Manifest):
        raise UnsupportedImageError(f"{opened.name}: entry {desc.digest} is not an image manifest")
    return doc


def _unique(targets: list[Target]) -> list[Target]:
    seen: set[object] = set()
    out = []
    for t in targets:
        if t.manifest.digest not in seen:
            seen.add(t.manifest.digest)
            out.append(t)
    return out


def _report_for_single(root: Manifest, opened: Opened, reports: Reports) -> Report:
    if len(reports.per_platform) == 1:
        return reports.per_platform[0]
    raise ReportError(f"{reports.directory}: {len(reports.per_platform)} reports for {opened.name}, which is a "
                      "single-platform image; pass the one report file for it")


def platform_tag(tag: str, platform: Platform) -> str:
    """Copacetic's name for one platform's patched image: TAG-ARCH[-VARIANT], the variant normalised as
    containerd does (arm64/v8 is plain arm64)."""
    variant = "" if platform.architecture == "arm64" and platform.variant in ("v8", "8") else platform.variant
    return "-".join(x for x in (tag, platform.architecture, variant) if x)
