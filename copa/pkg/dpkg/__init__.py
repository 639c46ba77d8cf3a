"""dpkg database types: versions and the status file."""

from copa.pkg.dpkg.status import (
    Conffile,
    StatusEntry,
    StatusParseError,
    entry_from_control,
    format_entry,
    format_status,
    merge_status,
    parse_status,
    sort_entries,
)
from copa.pkg.dpkg.version import DpkgVersion, InvalidVersionError, compare_versions, normalize_version

__all__ = [
    "Conffile",
    "DpkgVersion",
    "InvalidVersionError",
    "StatusEntry",
    "StatusParseError",
    "compare_versions",
    "entry_from_control",
    "format_entry",
    "format_status",
    "merge_status",
    "normalize_version",
    "parse_status",
    "sort_entries",
]
