"""Reading APT repositories: sources, signed Release files, Packages indexes, cached .deb downloads."""

from copa.pkg.apt.debs import fetch_deb, fetch_debs
from copa.pkg.apt.openpgp import keyring_for_source, verify_clearsigned, verify_detached
from copa.pkg.apt.packages import LoadedSource, PackageRecord, RepositoryIndex, fetch_release, load_indexes
from copa.pkg.apt.release import IndexFile, Release
from copa.pkg.apt.sources import (
    AptSource,
    apply_mirrors,
    parse_deb822,
    parse_file,
    parse_list,
    parse_repository_line,
)

__all__ = [
    "AptSource",
    "IndexFile",
    "LoadedSource",
    "PackageRecord",
    "Release",
    "RepositoryIndex",
    "apply_mirrors",
    "fetch_deb",
    "fetch_debs",
    "fetch_release",
    "keyring_for_source",
    "load_indexes",
    "parse_deb822",
    "parse_file",
    "parse_list",
    "parse_repository_line",
    "verify_clearsigned",
    "verify_detached",
]
