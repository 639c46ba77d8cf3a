"""`-r DIR`: one report per platform of a multi-platform image, as Copacetic takes them.

Copacetic (pkg/buildkit DiscoverPlatformsFromReport) reads every file of the directory that is not a directory and
takes each report's architecture and variant as the platform it patches. We do the same, stricter: hidden files
(editor and OS droppings such as .DS_Store) are skipped, and a report naming no architecture, two reports for one
platform, or a directory with no report at all are errors rather than something silently patched or left out.
"""

from __future__ import annotations

import os
from pathlib import Path

from copa.errors import ReportError
from copa.report.load import load_report
from copa.report.model import Report
from copa.report.plugin import DEFAULT_TIMEOUT

_WHERE_ARCH = ("Trivy's Metadata.ImageConfig.architecture, Grype's source.target.architecture, "
               "a manifest's metadata.config.arch")


def report_files(directory: Path) -> tuple[Path, ...]:
    """The report files of `directory`, sorted by name: regular files (or links to them), not hidden, not in
    subdirectories."""
    source = str(directory)
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except PermissionError:
        raise ReportError(f"{source}: report directory is not readable (permission denied)") from None
    except OSError as e:
        raise ReportError(f"{source}: cannot list report directory: {e.strerror or e}") from None
    files: list[Path] = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = directory / entry.name
        try:
            if entry.is_dir():
                continue  # Copacetic skips subdirectories too; reports are not searched recursively
            if not entry.is_file():
                what = "a link to nothing" if entry.is_symlink() and not path.exists() else "not a regular file"
                raise ReportError(f"{path}: is {what}: a report directory holds report files only (hidden files "
                                  f"and subdirectories are skipped)")
        except OSError as e:
            raise ReportError(f"{path}: cannot read report file: {e.strerror or e}") from None
        files.append(path)
    if not files:
        raise ReportError(f"{source}: report directory has no report files: put one report per platform in it "
                          f"(hidden files and subdirectories are skipped)")
    return tuple(files)


def load_reports(path: str | Path, scanner: str | None = None, *,
                 plugin_timeout: float = DEFAULT_TIMEOUT) -> tuple[Report, ...]:
    """The reports `-r` names: a directory's reports sorted by file name, one per platform, each naming its platform
    (Report.platform); a file gives its one report, which need not name a platform. A plugin (-s NAME) runs once per
    file. Errors are ReportError naming the file."""
    p = Path(path)
    if not p.is_dir():
        return (load_report(p, scanner, plugin_timeout=plugin_timeout),)
    reports: list[Report] = []
    for file in report_files(p):
        report = load_report(file, scanner, plugin_timeout=plugin_timeout)
        platform = report.platform
        if platform is None:
            raise ReportError(f"{file}: report names no architecture; each report in a directory must name its "
                              f"platform ({_WHERE_ARCH}): regenerate it from the image, or pass it alone with -r "
                              f"FILE --platform OS/ARCH")
        # Platform.matches, not equality: a variant-less linux/arm report would also be taken for linux/arm/v7.
        other = next((r for r in reports if r.platform is not None and r.platform.matches(platform)), None)
        if other is not None:
            raise ReportError(f"{other.source} and {file} are both reports for {platform}: keep one report per "
                              f"platform in {p}")
        reports.append(report)
    return tuple(reports)
