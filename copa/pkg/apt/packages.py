"""Packages indexes: choose, download and verify them against the signed Release, parse them, look packages up.

bookworm's main index is ~66k paragraphs (45 MB once decompressed) and a patch run needs a few hundred of them.
So an index is decompressed once into the cache (keyed by the verified sha256 of what was downloaded; the cache
dir is trusted as much as the cached .debs in it are), and each pass over it finds paragraphs by their
`Package:` line with one regex over the raw bytes, parsing only the paragraphs of the names asked for. A pass
costs ~0.2 s; parsing every paragraph cost ~2 s.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, cast

from isal import igzip

from copa.errors import CopaError, IntegrityError, NotFoundError
from copa.oci.image import CORRUPT_STREAM
from copa.pkg.apt.openpgp import unverified_cleartext, verify_clearsigned, verify_detached
from copa.pkg.apt.release import IndexFile, Release, ReleaseInfo
from copa.pkg.apt.sources import AptSource
from copa.pkg.cache import Cache
from copa.pkg.fetch import Fetcher, FetchItem, default_fetcher
from copa.pkg.openpgp import Keyring
from copa.pkg.streams import xz_reader

log = logging.getLogger(__name__)

_PARSER_VERSION = 3  # 3: Recommends
_TEXT_PREFIX = "packages-text-"  # a decompressed index in the cache, by the sha256 of the download
_WANTED = (
    "Package",
    "Version",
    "Architecture",
    "Multi-Arch",
    "Source",
    "Depends",
    "Pre-Depends",
    "Breaks",
    "Conflicts",
    "Provides",
    "Replaces",
    "Essential",
    "Filename",
    "Size",
    "SHA256",
    "Recommends",
)
_FIELD_RE = re.compile(r"^(" + "|".join(_WANTED) + r"):[ \t]*(.*(?:\n[ \t].*)*)", re.M)
_SOURCE_RE = re.compile(r"^(\S+)(?:\s*\((\S+)\))?$")


@dataclass(frozen=True, slots=True)
class PackageRecord:
    """One binary package paragraph. Relationship fields are kept as their raw strings."""

    package: str
    version: str
    architecture: str
    multi_arch: str
    source_name: str
    source_version: str
    depends: str
    pre_depends: str
    breaks: str
    conflicts: str
    provides: str
    replaces: str
    essential: bool
    filename: str
    size: int
    sha256: str
    recommends: str  # apt installs a new version's new Recommends (APT::Install-Recommends, on by default)
    repository: str  # the source URI the Filename is relative to
    suite: str
    component: str
    # Every release publishing this very version (the first is where it is downloaded from); apt's policy gives
    # the version the highest priority of them.
    releases: tuple[ReleaseInfo, ...] = ()

    @property
    def url(self) -> str:
        return f"{self.repository}/{self.filename}"


# The cached tuple excludes the per-source values, so one parsed index serves every mirror that publishes it.
# The paragraph text itself is not kept: the .deb's own control file is what gets installed, and keeping
# ~60k paragraphs doubled a patch run's peak memory.
_Row = tuple[str, str, str, str, str, str, str, str, str, str, str, str, bool, str, int, str, str]


def _row(paragraph: str, what: str) -> _Row | None:
    d = dict(_FIELD_RE.findall(paragraph))
    name = d.get("Package")
    version = d.get("Version")
    if not name or not version:
        log.warning("%s: skipping a paragraph without Package/Version", what)
        return None
    source = d.get("Source", "")
    m = _SOURCE_RE.match(source.strip()) if source else None
    src_name = m.group(1) if m else name
    src_version = (m.group(2) if m and m.group(2) else None) or version
    size = d.get("Size", "0").strip()
    return (
        name.strip(),
        version.strip(),
        d.get("Architecture", "").strip(),
        d.get("Multi-Arch", "no").strip() or "no",
        src_name,
        src_version,
        d.get("Depends", "").strip(),
        d.get("Pre-Depends", "").strip(),
        d.get("Breaks", "").strip(),
        d.get("Conflicts", "").strip(),
        d.get("Provides", "").strip(),
        d.get("Replaces", "").strip(),
        d.get("Essential", "no").strip().lower() == "yes",
        d.get("Filename", "").strip(),
        int(size) if size.isdigit() else 0,
        d.get("SHA256", "").strip().lower(),
        d.get("Recommends", "").strip(),
    )


_PACKAGE_LINE = re.compile(rb"^Package:[ \t]*(\S+)", re.M)
# The same line found after a newline: a literal to search for, ~8 times faster than a multi-line ^ on 50 MB.
_PACKAGE_AFTER_NEWLINE = re.compile(rb"\nPackage:[ \t]*(\S+)")
_PROVIDES_FIELD = re.compile(rb"^Provides:[ \t]*(.*(?:\n[ \t].*)*)", re.M)
_BLOCK = 2 << 20  # bytes of index text scanned at once: whole paragraphs, a bounded slice of the file


class IndexText:
    """One decompressed Packages file (a cached file, or bytes) that is scanned, never parsed whole."""

    def __init__(self, what: str, path: Path | None = None, data: bytes | None = None, cache: Cache | None = None
                 ) -> None:
        self.what = what
        self._path = path
        self._data = data
        self._provides: list[tuple[str, str]] | None = None
        self._provided_by: dict[str, list[str]] | None = None
        # With the cache (and a cached text), the Provides pairs are kept beside the text: they take a full pass to
        # find, and every later run on the same index (and the prefetch, ahead of the plan) can skip it.
        self._cache = cache if path is not None and path.name.startswith(_TEXT_PREFIX) else None
        # Where each package's paragraphs start (offsets in the text), from the first pass that looked for names:
        # a later look-up (the plan's, after the prefetch's) reads just those paragraphs instead of passing over
        # the ~50 MB again. None until made, and for good when a Package line does not start its paragraph.
        self._where: dict[bytes, int | list[int]] | None = None
        self._unindexed = False

    def _blocks(self) -> Iterator[bytes]:
        """The text in blocks that each end at a paragraph boundary."""
        for _offset, block in self._blocks_at():
            yield block

    def _blocks_at(self) -> Iterator[tuple[int, bytes]]:
        """The blocks with the offset in the text each starts at."""
        if self._data is not None:
            yield 0, self._data
            return
        assert self._path is not None
        pending = b""
        offset = 0  # of `pending` in the text
        with self._path.open("rb") as f:
            while chunk := f.read(_BLOCK):
                pending += chunk
                cut = pending.rfind(b"\n\n")
                if cut < 0:
                    continue
                yield offset, pending[: cut + 1]
                pending = pending[cut + 2 :]
                offset += cut + 2
        if pending.strip():
            yield offset, pending

    def rows(self, want: Callable[[str], bool] | AbstractSet[str] | None = None) -> Iterator[_Row]:
        """Parsed rows, in file order, of the paragraphs whose Package `want` accepts (all without it). A set
        is checked on the raw name bytes, without decoding each of the ~60k names."""
        if isinstance(want, AbstractSet):
            yield from self._rows_named({n.encode("utf-8") for n in want})
            return
        for para in self._paragraphs():
            name = _package_name(para)
            if name is None:
                continue
            if want is not None and not want(name.decode("utf-8", "replace")):
                continue
            row = _row(para.decode("utf-8", "replace"), self.what)
            if row is not None:
                yield row

    def _rows_named(self, wanted: AbstractSet[bytes]) -> Iterator[_Row]:
        """The rows of the paragraphs whose Package is in `wanted`. A patch wants a few dozen of ~60k names: the
        Package lines are found with one regex pass over each block, and only the wanted paragraphs are cut out
        (splitting every paragraph took twice as long). That pass notes where every name's paragraphs start, and
        later look-ups read only those."""
        where = self._where
        if where is not None:
            yield from self._rows_at(sorted(at for n in wanted if (found := where.get(n)) is not None
                                            for at in (found if isinstance(found, list) else (found,))))
            return
        where_new: dict[bytes, int | list[int]] | None = None if self._unindexed else {}
        for offset, block in self._blocks_at():
            if where_new is not None and not _lines_start_paragraphs(block):
                where_new = None
            last = -1
            first = _PACKAGE_LINE.match(block)  # the block's first line; every other one follows a newline
            for m in itertools.chain((first,) if first is not None else (), _PACKAGE_AFTER_NEWLINE.finditer(block)):
                name = m.group(1)
                if where_new is not None:  # the paragraph's start: the line's, after the newline found before it
                    at = offset + m.start() + (m.re is _PACKAGE_AFTER_NEWLINE)
                    known = where_new.get(name)
                    where_new[name] = at if known is None else [*(known if isinstance(known, list) else (known,)), at]
                if name not in wanted:
                    continue
                start, end = _paragraph_around(block, m.start() + (block[m.start()] == 0x0A))
                if start == last:
                    continue  # a second Package line in one paragraph: the first one names it, as _package_name
                last = start
                para = block[start:end]
                if _package_name(para) != name:
                    continue  # (that first line named another package)
                row = _row(para.decode("utf-8", "replace"), self.what)
                if row is not None:
                    yield row
        if where_new is None:
            self._unindexed = True
        else:
            self._where = where_new  # (one assignment: a look-up on another thread sees none or all of it)

    def _rows_at(self, starts: Sequence[int]) -> Iterator[_Row]:
        """The rows of the paragraphs that start at `starts` (ascending)."""
        if not starts:
            return
        if self._data is not None:
            data = self._data
            for start in starts:
                end = data.find(b"\n\n", start)
                yield from self._row_of(data[start:len(data) if end < 0 else end])
            return
        assert self._path is not None
        with self._path.open("rb") as f:
            for start in starts:
                f.seek(start)
                para = b""
                while (end := para.find(b"\n\n")) < 0 and (more := f.read(1 << 14)):
                    para += more
                yield from self._row_of(para if end < 0 else para[:end])

    def _row_of(self, para: bytes) -> Iterator[_Row]:
        row = _row(para.decode("utf-8", "replace"), self.what)
        if row is not None:
            yield row

    def _paragraphs(self) -> Iterator[bytes]:
        for block in self._blocks():
            yield from block.split(b"\n\n")

    def provides(self) -> list[tuple[str, str]]:
        """(package, Provides field) of every paragraph with a Provides: what virtual names resolve through."""
        if self._provides is None and self._cache is not None:
            self._provides = self._cached_provides(self._cache)
        if self._provides is None:
            self._provides = self._find_provides()
            if self._cache is not None:
                data = json.dumps(self._provides, separators=(",", ":")).encode()
                self._cache.write_named(self._provides_name(), lambda out: out.write(data))
        return self._provides

    def provided_by(self) -> dict[str, list[str]]:
        """Virtual name -> the packages that provide it, in index order (from `provides`, made once: the prefetch
        makes it while the image is read, and the plan merges it)."""
        if self._provided_by is None:
            by: dict[str, list[str]] = {}
            for package, provides in self.provides():
                _note_provides(by, package, provides)
            self._provided_by = by
        return self._provided_by

    def _provides_name(self) -> str:
        assert self._path is not None
        return f"packages-provides-v{_PARSER_VERSION}-" + self._path.name[len(_TEXT_PREFIX):]

    def _cached_provides(self, cache: Cache) -> list[tuple[str, str]] | None:
        path = cache.named(self._provides_name())  # its sum is checked: a damaged entry is dropped and redone
        try:
            pairs = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 and
                                                  all(isinstance(x, str) for x in p) for p in pairs):
            return None
        return [(p[0], p[1]) for p in pairs]

    def _find_provides(self) -> list[tuple[str, str]]:
        """Only the paragraphs with a Provides line are cut out (~1 in 6): each is found from that line."""
        found = []
        for block in self._blocks():
            at = 0 if block.startswith(b"Provides:") else block.find(b"\nProvides:")
            while at >= 0:
                start, end = _paragraph_around(block, at + (block[at] == 0x0A))
                at = block.find(b"\nProvides:", max(at + 1, end))  # the next paragraph's: one pass per paragraph
                para = block[start:end]
                m = _PROVIDES_FIELD.search(para)
                name = _package_name(para)
                if m is None or name is None:
                    continue
                value = m.group(1).decode("utf-8", "replace").strip()
                if value:
                    found.append((name.decode("utf-8", "replace"), value))
        return found


def _lines_start_paragraphs(block: bytes) -> bool:
    """Whether every Package line of `block` starts its paragraph (deb822 allows it elsewhere; no index has it):
    only then can a name's paragraph be found again from where its line is. A line after a newline starts one when
    a blank line comes before it, or when it follows the blank lines this block was cut after; a line at the
    block's start does (blocks are cut at blank lines)."""
    return block.count(b"\n\nPackage:") == block.count(b"\nPackage:") - block.startswith(b"\nPackage:")


def _paragraph_around(block: bytes, pos: int) -> tuple[int, int]:
    """The bounds of the paragraph holding the line that starts at `pos`: as splitting the block on blank lines
    cuts it, give or take the extra newlines of a run of blank lines (which no field parser sees)."""
    start = block.rfind(b"\n\n", 0, pos)
    end = block.find(b"\n\n", pos)
    return (0 if start < 0 else start + 2), (len(block) if end < 0 else end)


def _package_name(para: bytes) -> bytes | None:
    """The Package field's value of a paragraph; indexes put it first, but deb822 does not require that."""
    if para.startswith(b"Package:"):
        end = para.find(b"\n")
        name = para[8:end if end >= 0 else len(para)].strip()
    else:
        m = _PACKAGE_LINE.search(para)
        if m is None:
            return None
        name = m.group(1)
    return name.split()[0] if name else None


def _open_compressed(path: Path, name: str) -> BinaryIO:
    if name.endswith(".xz"):
        return xz_reader(path.open("rb"))
    if name.endswith(".gz"):
        return cast(BinaryIO, igzip.open(path, "rb"))  # type: ignore[no-untyped-call]
    return path.open("rb")


def _decompress(path: Path, name: str, out: BinaryIO, what: str) -> None:
    """Copy the index at `path` into `out`, decompressed as its `name` says."""
    try:
        with _open_compressed(path, name) as src:
            # Lines end in LF from here on: paragraphs are found by b"\n\n", which a CRLF index never has.
            carry = b""
            while chunk := src.read(1 << 20):
                chunk = carry + chunk
                carry = b"\r" if chunk.endswith(b"\r") else b""
                if carry:
                    chunk = chunk[:-1]
                # A CR is looked for first (memchr): real indexes have none, and replace's search for the pair
                # over bookworm's 50 MB main index cost ~50 ms of the prefetch's CPU.
                if b"\r" in chunk:
                    chunk = chunk.replace(b"\r\n", b"\n")
                out.write(chunk)
            out.write(carry)
    except CORRUPT_STREAM as e:
        raise IntegrityError(f"{what}: cannot decompress {name}: {e}; the index is corrupt") from e


_RATIO_LIMIT = 64  # xz packs a Packages index ~6:1; no real index inflates 64 times


class _Limited:
    """A writer that fails once more than `limit` bytes went through it."""

    def __init__(self, out: BinaryIO, limit: int, what: str) -> None:
        self._out, self._left, self._what = out, limit, what

    def write(self, data: bytes) -> int:
        self._left -= len(data)
        if self._left < 0:
            raise IntegrityError(f"{self._what}: the index decompresses to more than its Release says; refusing it")
        return self._out.write(data)


def parse_packages_file(path: Path, name: str, what: str) -> Iterator[_Row]:
    """Every row of a (possibly compressed, as told by `name`) Packages file."""
    buffer = io.BytesIO()
    _decompress(path, name, buffer, what)
    return IndexText(what, data=buffer.getvalue()).rows()


def _note_provides(by: dict[str, list[str]], package: str, provides: str) -> None:
    """Add `package` to the providers of each virtual name its Provides field names, once, in order."""
    for virtual in _provided_names(provides):
        names = by.setdefault(virtual, [])
        if package not in names:
            names.append(package)


def _provided_names(provides: str) -> Iterator[str]:
    for item in provides.split(","):
        virtual = item.split("(", 1)[0].strip().split(":", 1)[0]
        if virtual:
            yield virtual


@dataclass(frozen=True, slots=True)
class LoadedSource:
    source: AptSource
    release: Release
    verified: bool  # False only for trusted=yes / insecure sources


# A row not yet turned into a PackageRecord: building ~60k frozen dataclasses costs over a second, and a patch
# run looks at a few hundred, so records are materialized per name on first lookup. The list collects the
# releases that publish the same version.
_Pending = tuple[_Row, AptSource, str, list[ReleaseInfo]]

_NO_RELEASE = ReleaseInfo()
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9+.-]*")


def _related_names(row: _Row) -> Iterator[str]:
    """Package names in a row's Depends, Pre-Depends and Provides: the names a resolver asks about next."""
    for text in (row[6], row[7], row[10], row[16]):
        for alt in re.split(r"[,|]", text):
            m = _NAME_RE.match(alt.strip())
            if m:
                yield m.group(0)


class RepositoryIndex:
    """Every package version across the loaded sources, looked up by name (in source order).

    With `keep`, only the rows of names it accepts are parsed and held (a whole distribution's index is ~60k
    rows; a patch looks at a few hundred); any other name is read from the index text on first lookup, so
    answers are the same, only time and memory differ."""

    def __init__(self, records: Iterable[PackageRecord] = (), sources: Sequence[LoadedSource] = (),
                 keep: Callable[[str], bool] | AbstractSet[str] | None = None) -> None:
        self.sources = tuple(sources)
        self._by_name: dict[str, list[PackageRecord | _Pending]] = {}
        self._seen: dict[tuple[str, str, str, str], list[ReleaseInfo] | None] = {}
        self._provides: dict[str, list[str]] = {}
        # A set is matched on raw bytes by IndexText.rows (cheaper than a call per paragraph).
        self._keep_rows = keep
        self._keep = keep.__contains__ if isinstance(keep, AbstractSet) else keep
        self._loaders: list[tuple[IndexText, AptSource, str, ReleaseInfo]] = []
        self.passes = 0  # full reads of the loaded indexes after the first one (tests check misses are batched)
        self._complete: set[str] = set()
        for rec in records:
            _note_provides(self._provides, rec.package, rec.provides)
            self._add(rec.package, (rec.package, rec.version, rec.architecture, rec.sha256), rec)

    def _add(self, name: str, key: tuple[str, str, str, str], entry: PackageRecord | _Pending) -> None:
        if key in self._seen:
            # e.g. a package published unchanged in two suites: download from the first source, but remember the
            # other release too (its priority may be higher, e.g. bookworm's 500 over a NotAutomatic suite's 1).
            releases = self._seen[key]
            if releases is not None and not isinstance(entry, PackageRecord):
                releases.extend(r for r in entry[3] if r not in releases)
            return
        self._seen[key] = None if isinstance(entry, PackageRecord) else entry[3]
        self._by_name.setdefault(name, []).append(entry)

    def _add_rows(self, text: IndexText, source: AptSource, component: str, release: ReleaseInfo = _NO_RELEASE
                  ) -> None:
        self._loaders.append((text, source, component, release))
        for virtual, packages in text.provided_by().items():
            names = self._provides.setdefault(virtual, [])
            if not names:
                names.extend(packages)
            else:
                names.extend(p for p in packages if p not in names)
        for r in text.rows(self._keep_rows):
            self._add(r[0], (r[0], r[1], r[2], r[15]), (r, source, component, [release]))

    def _fetch_name(self, name: str) -> None:
        """Read the rows of a name `keep` turned away. Each read is a pass over every index, so one pass also
        takes every other name the rows held so far relate to (Depends, Pre-Depends, Provides): those are
        what a resolver asks about next."""
        if self._keep is None or self._keep(name):
            self._complete.add(name)
            return
        keep = self._keep
        wanted = {name}
        for entries in self._by_name.values():
            for entry in entries:
                row = entry[0] if not isinstance(entry, PackageRecord) else _record_row(entry)
                wanted.update(n for n in _related_names(row) if n not in self._complete and not keep(n))
        self._complete.update(wanted)
        self.passes += 1
        for text, source, component, release in self._loaders:
            for r in text.rows(wanted):
                self._add(r[0], (r[0], r[1], r[2], r[15]), (r, source, component, [release]))

    def versions(self, name: str) -> tuple[PackageRecord, ...]:
        if name not in self._complete:
            self._fetch_name(name)
        entries = self._by_name.get(name)
        if not entries:
            return ()
        for i, entry in enumerate(entries):
            if not isinstance(entry, PackageRecord):
                r, source, component, releases = entry
                entries[i] = PackageRecord(*r, source.uri, source.suite, component, tuple(releases))
                self._seen[(r[0], r[1], r[2], r[15])] = None  # frozen now: later duplicates are dropped
        return tuple(e for e in entries if isinstance(e, PackageRecord))

    def providers(self, name: str) -> tuple[PackageRecord, ...]:
        """Records whose Provides names `name` (versioned provides included)."""
        return tuple(
            rec
            for pkg in self._provides.get(name, ())
            for rec in self.versions(pkg)
            if name in _provided_names(rec.provides)
        )

    def names(self) -> Iterator[str]:
        return iter(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[PackageRecord]:
        for name in list(self._by_name):
            yield from self.versions(name)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_name.values())


def _record_row(rec: PackageRecord) -> _Row:
    return (rec.package, rec.version, rec.architecture, rec.multi_arch, rec.source_name, rec.source_version,
            rec.depends, rec.pre_depends, rec.breaks, rec.conflicts, rec.provides, rec.replaces, rec.essential,
            rec.filename, rec.size, rec.sha256, rec.recommends)


KeyringsFor = Callable[[AptSource], Keyring]


def fetch_release(
    source: AptSource, keyrings_for: KeyringsFor, allow_insecure: bool, fetcher: Fetcher,
    fetched: dict[str, bytes] | None = None,
) -> tuple[Release, bool]:
    """The parsed Release of `source`, verified unless the source is trusted=yes or insecure mode is on.
    `fetched`: InRelease bodies by URL, filled with what is downloaded here and used instead of downloading again
    (the prefetch's copy, seconds old, for the plan: it is verified here all the same)."""
    what = f"repository {source.description}"
    insecure = allow_insecure or source.trusted
    base = source.dist_url
    url = f"{base}/InRelease"
    data = fetched.get(url) if fetched is not None else None
    if data is None:
        try:
            data = fetcher.get_bytes(url, what)
        except NotFoundError:
            data = None
        if data is not None and fetched is not None:
            fetched[url] = data
    if data is not None:
        text = unverified_cleartext(data, what) if insecure else verify_clearsigned(data, keyrings_for(source), what)
    else:
        try:
            release = fetcher.get_bytes(f"{base}/Release", what)
        except NotFoundError as e:
            raise NotFoundError(
                f"{what}: neither InRelease nor Release exists under {base}; check the URI and suite"
            ) from e
        if insecure:
            text = release
        else:
            try:
                signature = fetcher.get_bytes(f"{base}/Release.gpg", what)
            except NotFoundError as e:
                raise IntegrityError(
                    f"{what}: the repository is not signed (no InRelease or Release.gpg); mark it [trusted=yes] "
                    "or pass --allow-unsigned-repositories if you trust it"
                ) from e
            text = verify_detached(release, signature, keyrings_for(source), what)
    return Release.parse(text.decode("utf-8", errors="replace"), what), not insecure


# The compressions of an index, in the order they are fetched. gzip comes first where the Release lists it: the
# text is the same (every variant is checked against the signed Release), and inflating bookworm's 50 MB main index
# takes ~0.1 s where xz takes ~0.7 s of CPU, for a download ~3 MB larger (12 MB against 9 MB). The other variants
# are fallbacks for a mirror that does not serve every file its Release lists.
_INDEX_EXTENSIONS = (".gz", ".xz", "")

# One index to read: its component and the variants the Release lists (path relative to dist_url, expected hash),
# in the order they are tried.
_IndexChoice = tuple[str, tuple[tuple[str, IndexFile], ...]]


def _select(release: Release, prefix: str) -> tuple[tuple[str, IndexFile], ...]:
    return tuple((prefix + ext, release.files[prefix + ext]) for ext in _INDEX_EXTENSIONS
                 if prefix + ext in release.files)


def _index_paths(source: AptSource, release: Release, arch: str) -> list[_IndexChoice]:
    """(component, the variants of the index) for every index to read."""
    archs = [arch]
    # Repositories that split out Architecture: all publish binary-all; Debian publishes it too but marks (with
    # this field) that its per-arch indexes still carry the arch:all packages, so apt skips binary-all there.
    split_all = release.fields.get("No-Support-for-Architecture-all", "") != "Packages"
    if "all" in release.architectures and arch != "all" and split_all:
        archs.append("all")
    out: list[_IndexChoice] = []
    if source.flat:
        picked = _select(release, "Packages")
        if not picked:
            raise IntegrityError(f"repository {source.description}: Release lists no Packages index")
        return [("", picked)]
    for comp in source.components:
        found = False
        for a in archs:
            picked = _select(release, f"{comp}/binary-{a}/Packages")
            if picked:
                out.append((comp, picked))
                found = True
        if not found:
            log.warning("repository %s: no %s index for %s in Release; skipped", source.description, comp, arch)
    return out


def _fetch_item(source: AptSource, release: Release, path: str, entry: IndexFile) -> tuple[FetchItem, FetchItem]:
    what = f"repository {source.description}: {path}"
    plain = FetchItem(f"{source.dist_url}/{path}", entry.sha256, entry.size, what)
    directory = path.rsplit("/", 1)[0] if "/" in path else ""
    by_hash_path = (f"{directory}/" if directory else "") + f"by-hash/SHA256/{entry.sha256}"
    # by-hash avoids a race with a mirror update between reading InRelease and the index
    by_hash = FetchItem(f"{source.dist_url}/{by_hash_path}", entry.sha256, entry.size, what)
    return (by_hash if release.acquire_by_hash else plain), plain


def _fetch_variant(fetcher: Fetcher, source: AptSource, release: Release,
                   variants: Sequence[tuple[str, IndexFile]]) -> tuple[Path, str]:
    """The first variant of an index the mirror serves (by-hash, then its plain path): (downloaded file, its path
    in the Release, which names its compression)."""
    for i, (name, entry) in enumerate(variants):
        item, plain = _fetch_item(source, release, name, entry)
        for candidate in (item, plain) if plain != item else (item,):
            try:
                return fetcher.fetch(candidate), name
            except NotFoundError:
                if i == len(variants) - 1 and candidate == plain:
                    raise
    raise AssertionError("an index has at least one variant")  # _select returns none empty


def _load_rows(fetcher: Fetcher, source: AptSource, release: Release, variants: Sequence[tuple[str, IndexFile]],
               use_cache: bool, limit: int | None = None) -> IndexText:
    """The index's text: decompressed once into the cache (named by the sha256 of its first variant: every
    variant holds the same text), or held in memory without the cache. `limit`: the most bytes it may decompress
    to (an index whose Release is not verified yet)."""
    first, entry = variants[0]
    what = f"repository {source.description}: {first}"
    cached = fetcher.cache.named(f"{_TEXT_PREFIX}{entry.sha256}")
    if use_cache and cached.is_file():
        return _text_at(what, cached, fetcher.cache)
    path, name = _fetch_variant(fetcher, source, release, variants)

    def write(out: BinaryIO) -> None:
        _decompress(path, name, out if limit is None else cast(BinaryIO, _Limited(out, limit, what)), what)

    if not use_cache:
        buffer = io.BytesIO()
        write(buffer)
        return IndexText(what, data=buffer.getvalue())
    fetcher.cache.write_named(cached.name, write)
    return _text_at(what, cached, fetcher.cache)


# The index texts this process has opened, by cache file: the file is named by the sha256 of what it was made from
# and never changes, so the prefetch's object (with the Provides pairs and virtual names it found while the image
# was being read) is the plan's too, and a sweep's later images reuse them.
_TEXTS: dict[tuple[Path, str], IndexText] = {}
_TEXTS_LOCK = threading.Lock()


def _text_at(what: str, path: Path, cache: Cache) -> IndexText:
    with _TEXTS_LOCK:
        text = _TEXTS.get((path, what))
        if text is None:
            text = _TEXTS[(path, what)] = IndexText(what, path=path, cache=cache)
        return text


def load_indexes(
    sources: Sequence[AptSource],
    arch: str,
    keyrings_for: KeyringsFor,
    allow_insecure: bool = False,
    *,
    fetcher: Fetcher | None = None,
    check_valid_until: bool = True,
    now: datetime | None = None,
    use_parsed_cache: bool = True,
    keep: Callable[[str], bool] | AbstractSet[str] | None = None,
    fetched: dict[str, bytes] | None = None,
) -> RepositoryIndex:
    """Verify each source's Release, fetch and check its Packages indexes for `arch`, and index every record."""
    f = fetcher or default_fetcher()
    loaded: list[LoadedSource] = []
    jobs: list[tuple[LoadedSource, str, tuple[tuple[str, IndexFile], ...]]] = []
    wanted = [s for s in sources if not s.architectures or arch in s.architectures]
    with ThreadPoolExecutor(max_workers=f.workers, thread_name_prefix="copa-release") as pool:
        release_futures = [pool.submit(fetch_release, s, keyrings_for, allow_insecure, f, fetched) for s in wanted]
    for source, release_future in zip(wanted, release_futures, strict=True):
        release, verified = release_future.result()
        if check_valid_until and source.check_valid_until:
            release.check_valid_until(f"repository {source.description}", now)
        loaded.append(LoadedSource(source, release, verified))
        for comp, variants in _index_paths(source, release, arch):
            jobs.append((loaded[-1], comp, variants))
    # Downloads and decompression (which releases the GIL) overlap.
    with ThreadPoolExecutor(max_workers=f.workers, thread_name_prefix="copa-index") as pool:
        futures = [pool.submit(_load_rows, f, src.source, src.release, variants, use_parsed_cache)
                   for src, _, variants in jobs]
    index = RepositoryIndex(sources=loaded, keep=keep)
    for (src, comp, variants), fut in zip(jobs, futures, strict=True):
        info = dataclasses.replace(src.release.info, component=comp, site=src.source.site,
                                   architecture=_index_architecture(variants[0][0], arch))
        index._add_rows(fut.result(), src.source, comp, info)
    return index


def _index_architecture(path: str, arch: str) -> str:
    """`main/binary-all/Packages.xz` -> all (apt's `b=`); a flat repository's index counts as the asked one."""
    m = re.search(r"(?:^|/)binary-([^/]+)/", path)
    return m.group(1) if m else arch


def prefetch_indexes(sources: Sequence[AptSource], arch: str, fetcher: Fetcher,
                     keyrings_for: KeyringsFor | None = None, allow_insecure: bool = False,
                     fetched: dict[str, bytes] | None = None) -> list[tuple[AptSource, IndexText, bool]]:
    """Download the sources' Packages indexes into the cache, a warm-up while the image is still being read. The
    Release is verified with `keyrings_for` if the keys known so far can; if not, it is used unverified for the
    warm-up only: files land in the cache under the sha256 that Release names, checked against it, decompressed
    within bounds, and `load_indexes` verifies the Release and finds them by the hashes the verified one names.
    Returns the index texts it has, each with whether its Release was verified (or is trusted as the plan trusts
    it: trusted=yes, --allow-unsigned-repositories): only those may guide reading packages ahead. `fetched`
    collects the InRelease bodies it downloads, for the plan to verify rather than download again."""
    def release_of(source: AptSource) -> tuple[Release, bool]:
        if keyrings_for is not None:
            try:
                return fetch_release(source, keyrings_for, allow_insecure, fetcher, fetched)[0], True
            except (CopaError, OSError, ValueError) as e:  # keys not read yet, or a bad signature: the plan decides
                log.debug("prefetch: %s", e)
        return fetch_release(source, lambda _s: Keyring.merge(()), True, fetcher, fetched)[0], False

    def one(source: AptSource) -> list[tuple[AptSource, IndexText, bool]]:
        release, trusted = release_of(source)
        texts = []
        for _comp, variants in _index_paths(source, release, arch):
            path = variants[0][0]
            # Decompressing here too takes it off the plan's path (the decompressor releases the GIL, so it overlaps
            # reading the image). The text is a function of the downloaded bytes alone, and `load_indexes` uses it
            # only under the sha256 the verified Release names for them; until then it is bounded like a bomb: by
            # the size the Release names for the uncompressed index, else a ratio no index reaches.
            plain_entry = release.files.get(path.rsplit(".", 1)[0]) if path.endswith((".xz", ".gz")) else None
            limit = (plain_entry.size if plain_entry is not None
                     else max(e.size for _, e in variants) * _RATIO_LIMIT + (1 << 20))
            texts.append((source, _load_rows(fetcher, source, release, variants, True, limit), trusted))
        return texts

    wanted = [s for s in sources if not s.architectures or arch in s.architectures]
    with ThreadPoolExecutor(max_workers=fetcher.workers, thread_name_prefix="copa-prefetch") as pool:
        futures = [pool.submit(one, s) for s in wanted]
    found: list[tuple[AptSource, IndexText, bool]] = []
    for fut in futures:
        try:
            found.extend(fut.result())
        except (CopaError, OSError, ValueError) as e:  # the real, verified load reports what matters
            log.debug("prefetch: %s", e)
    return found
