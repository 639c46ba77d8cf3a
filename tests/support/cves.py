"""The real vulnerability identifiers behind a Debian package update, read from the fixed package's own changelog.

Debian's security tracker (which Trivy's database is built from) is not reachable from the test machines, only the
archive is. But every security upload names what it fixes in its changelog entry ("CVE-2025-9230: ..."), so the
identifiers of an upgrade from INSTALLED to FIXED are the ones named in the changelog entries after INSTALLED, as
`dpkg-parsechangelog --since INSTALLED` selects them. The changelog is read from the fixed .deb itself, downloaded
from the archive through copa's own verified apt indexes (InRelease signature, then the index's SHA-256 of the
.deb), and found in it the way dpkg would install it: /usr/share/doc/PKG may be a symlink into another binary
package's doc directory (libstdc++6 -> gcc-12-base), which is then read from that package's .deb.

An entry naming no CVE yields the DSA/DLA advisory it names, else nothing: an identifier is never made up.
"""

from __future__ import annotations

import functools
import gzip
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from debian.changelog import ChangeBlock, Changelog
from debian.debfile import DebFile
from debian.debian_support import version_compare

from copa.errors import CopaError
from copa.pkg.apt.debs import fetch_deb
from copa.pkg.apt.openpgp import keyring_for_source
from copa.pkg.apt.packages import PackageRecord, RepositoryIndex, load_indexes
from copa.pkg.apt.sources import AptSource
from copa.pkg.cache import Cache
from copa.pkg.fetch import Fetcher
from tests.support.mirror import SECURITY_SUITE, SUITE, debian_mirror, security_mirror

DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
UPDATES_SUITE = f"{SUITE}-updates"
CACHE = Path.home() / ".cache" / "copa-tests" / "apt-cache"  # shared with the live apt tests: indexes are big

_CVE = re.compile(r"\bCVE-\d{4}-\d{4,}\b")
# Security advisories as changelogs spell them: "DSA-5678-1", "DSA 5678-1", "DLA-3456-2".
_ADVISORY = re.compile(r"\b(DSA|DLA)[- ](\d+-\d+)\b")
_SYMLINK_HOPS = 16  # dpkg's path resolution gives up on loops too; a doc dir never needs more


class ChangelogError(CopaError):
    """A fixed package's changelog could not be found or read."""


@dataclass(frozen=True, slots=True)
class ChangelogFile:
    """A Debian changelog as installed by a .deb: the text, and where it came from (after symlinks)."""

    package: str  # binary package whose .deb holds the file (the doc-dir symlink's target package, if any)
    version: str
    path: str  # path in that package, e.g. usr/share/doc/gcc-12-base/changelog.Debian.gz
    text: str


@dataclass(frozen=True, slots=True)
class FixIds:
    """What the changelog says an upgrade of one binary package fixes."""

    package: str
    installed: str
    fixed: str
    cves: tuple[str, ...]  # in changelog order, deduplicated
    advisories: tuple[str, ...]  # DSA-/DLA- identifiers the same entries name
    changelog: str  # "PKG VERSION:/PATH" of the changelog read, "" when there was none to read
    note: str = ""  # why there was none

    @property
    def ids(self) -> tuple[str, ...]:
        """The identifiers a scanner would list: the CVEs, else the advisories, else none."""
        return self.cves or self.advisories


# ----------------------------------------------------------------------------------------------- changelog text


def entries_since(text: str, since: str) -> tuple[ChangeBlock, ...]:
    """The entries `dpkg-parsechangelog --since SINCE` selects: from the top down to SINCE, exclusive.

    As dpkg does, a SINCE the changelog does not list (a binNMU version such as 1.10.0-3+b1, whose entry lives in
    the per-architecture changelog) stands for the newest entry older than it; if there is none, every entry.
    """
    blocks = list(Changelog(text, strict=False))
    versions = [str(b.version) for b in blocks]
    stop = since
    if since not in versions:
        stop = next((v for v in versions if version_compare(v, since) < 0), "")
    out = []
    for block, version in zip(blocks, versions, strict=True):
        if stop and version == stop:
            break
        out.append(block)
    return tuple(out)


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def ids_in(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(CVE ids, DSA/DLA ids) named in `text`, in order of appearance, without repeats."""
    cves = _unique(m.group(0) for m in _CVE.finditer(text))
    advisories = _unique(f"{m.group(1)}-{m.group(2)}" for m in _ADVISORY.finditer(text))
    return cves, advisories


def changes_text(blocks: Iterable[ChangeBlock]) -> str:
    return "\n".join(line for block in blocks for line in block.changes())


# ----------------------------------------------------------------------------------------------- .deb contents


def _is_native(version: str) -> bool:
    return "-" not in version.rpartition(":")[2]


def changelog_names(package: str, version: str) -> tuple[str, ...]:
    """Where Debian policy puts the Debian changelog: changelog.Debian.gz, or changelog.gz in a native package."""
    doc = f"usr/share/doc/{package}"
    return (f"{doc}/changelog.Debian.gz", f"{doc}/changelog.gz") if _is_native(version) else (
        f"{doc}/changelog.Debian.gz",)


@dataclass(frozen=True, slots=True)
class _Member:
    kind: str  # "file" | "dir" | "link"
    target: str  # symlink target as stored


def _member_path(name: str) -> str:
    """A data.tar member name ("./usr/share/doc/x", "usr/share/doc/x/") as a plain relative path; "" for the root."""
    path = posixpath.normpath("/" + name).lstrip("/")
    return "" if path == "." else path


class _Tree:
    """The paths of one or more .debs' data members, for resolving a path as dpkg would have installed it."""

    def __init__(self) -> None:
        self.members: dict[str, _Member] = {}
        self.owner: dict[str, Path] = {}

    def add(self, deb: Path) -> None:
        with DebFile(str(deb)) as df:
            tar = df.data.tgz()
            for info in tar.getmembers():
                name = _member_path(info.name)
                if not name:
                    continue
                kind = "link" if info.issym() else "dir" if info.isdir() else "file" if info.isfile() else "other"
                self.members[name] = _Member(kind, info.linkname)
                self.owner[name] = deb

    def resolve(self, path: str) -> str:
        """`path` with every symlink among its components followed (relative and absolute targets)."""
        parts = path.split("/")
        done: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            candidate = "/".join([*done, part])
            member = self.members.get(candidate)
            if member is not None and member.kind == "link":
                hops += 1
                if hops > _SYMLINK_HOPS:
                    raise ChangelogError(f"too many symlinks resolving /{path}")
                target = member.target
                base: list[str] = [] if target.startswith("/") else list(done)
                parts = [*target.strip("/").split("/"), *parts]
                done = base
                continue
            done.append(part)
        return "/".join(done)

    def read(self, path: str) -> bytes | None:
        deb = self.owner.get(path)
        if deb is None or self.members[path].kind != "file":
            return None
        with DebFile(str(deb)) as df:
            tar = df.data.tgz()
            for info in tar.getmembers():
                if _member_path(info.name) == path:
                    extracted = tar.extractfile(info)
                    return extracted.read() if extracted is not None else None
        return None


def _doc_package(path: str) -> str:
    """The package a path under usr/share/doc/PKG/ belongs to by policy ("" elsewhere)."""
    parts = path.split("/")
    return parts[3] if len(parts) > 4 and parts[:3] == ["usr", "share", "doc"] else ""


def deb_changelog(deb: Path, package: str, version: str, deb_of: Callable[[str], Path | None]) -> ChangelogFile:
    """The Debian changelog that installing `deb` (PACKAGE VERSION) puts in /usr/share/doc/PACKAGE.

    When the path leads through a symlink into another package's doc directory, that package's .deb (found with
    `deb_of(name)`, same source version) is read too, as the file dpkg would leave there comes from it.
    """
    tree = _Tree()
    tree.add(deb)
    loaded = {package}
    for name in changelog_names(package, version):
        for _ in range(_SYMLINK_HOPS):
            resolved = tree.resolve(name)
            data = tree.read(resolved)
            if data is not None:
                owner = _doc_package(resolved) or package
                try:
                    text = gzip.decompress(data).decode("utf-8", errors="replace")
                except (OSError, EOFError) as e:
                    raise ChangelogError(f"{deb.name}: /{resolved} is not a gzip file ({e})") from None
                return ChangelogFile(owner, version, resolved, text)
            other = _doc_package(resolved)
            if not other or other in loaded:
                break
            other_deb = deb_of(other)
            if other_deb is None:
                break
            tree.add(other_deb)
            loaded.add(other)
    raise ChangelogError(f"{deb.name}: no Debian changelog at /{changelog_names(package, version)[0]} "
                         "(nor through its doc-dir symlink)")


# ----------------------------------------------------------------------------------------------- the archive


@functools.cache
def _fetcher() -> Fetcher:
    return Fetcher(Cache(CACHE))


@functools.cache
def archive_index(arch: str = "amd64") -> RepositoryIndex:
    """bookworm, bookworm-updates and bookworm-security main for `arch`, verified with Debian's archive keyring.

    The mirrors are this machine's (tests/support/mirror.py). Valid-Until is not checked: the mirror may be a
    frozen snapshot, which the fixture builds accept too.
    """
    main, security = debian_mirror(), security_mirror()
    sources = [AptSource(main, SUITE, ("main",), signed_by=(DEBIAN_KEYRING,)),
               AptSource(main, UPDATES_SUITE, ("main",), signed_by=(DEBIAN_KEYRING,)),
               AptSource(security, SECURITY_SUITE, ("main",), signed_by=(DEBIAN_KEYRING,))]
    return load_indexes(sources, arch, keyring_for_source, fetcher=_fetcher(), check_valid_until=False)


def _record(index: RepositoryIndex, name: str, version: str) -> PackageRecord | None:
    return next((r for r in index.versions(name) if r.version == version), None)


def _compare_records(a: PackageRecord, b: PackageRecord) -> int:
    return version_compare(a.version, b.version)


_by_version = functools.cmp_to_key(_compare_records)


def _same_source(index: RepositoryIndex, record: PackageRecord) -> Callable[[str], Path | None]:
    def deb_of(name: str) -> Path | None:
        # A doc-dir symlink points into a package of the same source (policy), installed at the same version; a
        # target from elsewhere is taken at its newest version, as the upgraded system would have it.
        versions = index.versions(name)
        same = [r for r in versions
                if r.source_name == record.source_name and r.source_version == record.source_version]
        newest = max(versions, key=_by_version, default=None)
        chosen = same[0] if same else newest
        return fetch_deb(chosen, _fetcher()) if chosen is not None else None

    return deb_of


def fixed_changelog(name: str, version: str, arch: str = "amd64") -> ChangelogFile | None:
    """The changelog in the archive's .deb of NAME VERSION for `arch`; None when the archive has no such .deb."""
    index = archive_index(arch)
    record = _record(index, name, version)
    if record is None:
        return None
    return deb_changelog(fetch_deb(record, _fetcher()), name, version, _same_source(index, record))


def fix_ids(fixes: Mapping[str, tuple[str, str]], arch: str = "amd64") -> dict[str, FixIds]:
    """For each binary package NAME -> (installed, fixed), the identifiers its fixed changelog names since
    `installed`. Packages built from one source share its changelog, so each source version is read once (from
    the smallest of its .debs the fixes name)."""
    index = archive_index(arch)
    records = {name: _record(index, name, fixed) for name, (_, fixed) in fixes.items()}
    by_source: dict[tuple[str, str], list[PackageRecord]] = {}
    for record in records.values():
        if record is not None:
            by_source.setdefault((record.source_name, record.source_version), []).append(record)
    changelogs: dict[tuple[str, str], ChangelogFile | str] = {}
    for key, group in by_source.items():
        smallest = min(group, key=lambda r: (r.size, r.package))
        try:
            changelogs[key] = deb_changelog(fetch_deb(smallest, _fetcher()), smallest.package, smallest.version,
                                            _same_source(index, smallest))
        except ChangelogError as e:  # a package without a Debian changelog names nothing: no ids, and why
            changelogs[key] = e.message
    out: dict[str, FixIds] = {}
    for name, (installed, fixed) in sorted(fixes.items()):
        record = records[name]
        if record is None:
            out[name] = FixIds(name, installed, fixed, (), (), "",
                               f"the archive's {arch} indexes have no {name} {fixed}")
            continue
        changelog = changelogs[(record.source_name, record.source_version)]
        if isinstance(changelog, str):
            out[name] = FixIds(name, installed, fixed, (), (), "", changelog)
            continue
        cves, advisories = ids_in(changes_text(entries_since(changelog.text, installed)))
        out[name] = FixIds(name, installed, fixed, cves, advisories,
                           f"{changelog.package} {changelog.version}:/{changelog.path}")
    return out

