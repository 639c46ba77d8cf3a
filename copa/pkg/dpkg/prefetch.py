"""Start downloading an image's apt indexes while the image is still being read.

A cold patch spends a good part of a second downloading, decompressing and scanning bookworm's main index, and
about a second reading the image's base layer, which is CPU work: overlapping the two hides most of the first.
The base layer's members come in path order, so its /etc is complete well before the layer ends (usr/ and var/
come later).
The prefetch only fills the download cache, content-addressed and unverified; the plan then loads the indexes
as always, verifying the Release and finding each index in the cache by the hash the verified Release names.

With a report, it also reads ahead: for each package the report names, the newest version the indexes offer for
the image's architecture is downloaded and unpacked (copa.pkg.dpkg.debfile.read_deb) while the base layer is still
being read, on the core the layer scan leaves idle; only from indexes whose Release the keys read so far verify.
The adapter takes what was read ahead only for a .deb its verified plan names with the same sha256, so a guess
gone wrong (pins, the image's own state) costs time, never correctness.
"""

from __future__ import annotations

import logging
import posixpath
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from copa.errors import CopaError
from copa.pkg.apt.openpgp import default_keyrings
from copa.pkg.apt.packages import IndexText, prefetch_indexes
from copa.pkg.apt.sources import AptSource, apply_mirrors
from copa.pkg.base import PrefetchHints, RepositoryOptions
from copa.pkg.dpkg.arch import deb_architecture
from copa.pkg.dpkg.debfile import DebContents, read_deb
from copa.pkg.dpkg.repos import (
    SOURCES_DIR,
    SOURCES_LIST,
    image_auth,
    key_root,
    keyrings_for_sources,
    sources_in,
    user_sources,
)
from copa.pkg.dpkg.version import compare_versions
from copa.pkg.fetch import Fetcher, FetchItem
from copa.pkg.openpgp import Keyring
from copa.pkg.readahead import Reads

log = logging.getLogger(__name__)


class ReadAhead(Reads[DebContents]):
    """.debs read ahead, by the sha256 of the file: `take` hands one over (or None) to the adapter's build."""

    def __init__(self, stage: Path) -> None:
        super().__init__(stage, "copa-ahead")
        # The InRelease bodies the prefetch downloaded, by URL: the plan verifies these instead of downloading them
        # again (one round trip per repository, on its critical path, against a distant mirror).
        self.releases: dict[str, bytes] = {}

    def submit_deb(self, fetcher: Fetcher, item: FetchItem, name: str) -> None:
        # The download starts now, with the others; the read takes the file from the cache once it is there.
        self.submit(item.sha256, lambda stage: read_deb(fetcher.fetch(item), stage, name, stop=self.stopped),
                    fetch=lambda: fetcher.fetch(item))


class IndexPrefetch:
    """The apt family's Prefetcher (copa.pkg.base). It needs etc/apt's files and is started once the base layer
    has gone past all of etc/ (copa.pkg.detect.PREFETCH_WATCH), which holds in both orders build tools write
    (directory walk, or plain path sort) unless a root entry sorts between etc and etc/ (etc-x): then it just
    starts early, with fewer sources."""

    def __init__(self, repos: RepositoryOptions, oci_arch: str, oci_variant: str, fetcher: Fetcher,
                 hints: PrefetchHints | None = None) -> None:
        self._repos = repos
        self._arch = deb_architecture(oci_arch, oci_variant)
        self._fetcher = fetcher
        self._hints = hints or PrefetchHints()
        self._thread: threading.Thread | None = None
        self._indexes_done = threading.Event()
        self._ahead = ReadAhead(self._hints.workdir / "ahead") if self._hints.workdir is not None else None

    def start(self, captured: Mapping[str, bytes]) -> None:
        try:
            sources = user_sources(self._repos) or sources_in(
                captured.get(SOURCES_LIST),
                {p: c for p, c in captured.items() if p.startswith(SOURCES_DIR + "/")},
            )
        except CopaError as e:  # a bad --repository line or sources file: the plan reports it
            log.debug("prefetch: %s", e)
            return
        if not sources:
            return  # not an apt image (or one without sources): nothing to warm up
        sources = apply_mirrors(sources, self._repos.mirrors)
        fetcher = self._fetcher.with_auth(image_auth(captured))
        self._thread = threading.Thread(target=self._run, args=(sources, fetcher, captured), name="copa-prefetch",
                                        daemon=True)
        self._thread.start()

    def _run(self, sources: Sequence[AptSource], fetcher: Fetcher, captured: Mapping[str, bytes]) -> None:
        try:
            keyrings_for = None
            if self._ahead is not None and self._hints.packages and self._hints.workdir is not None:
                # Packages are read ahead only from indexes whose Release the keys read so far verify (the image's
                # /etc/apt keys, or --keyring): nothing an unverified index names is downloaded.
                keyrings_for = self._keys(sources, captured, self._hints.workdir / "apt-keys-ahead")
            releases = self._ahead.releases if self._ahead is not None else None
            texts = prefetch_indexes(sources, self._arch, fetcher, keyrings_for, self._repos.allow_unsigned,
                                     releases)
            if self._ahead is not None and self._hints.packages:
                try:
                    trusted = [(source, text) for source, text, ok in texts if ok]
                    newest = _newest(trusted, set(self._hints.packages), self._arch)
                    if self._hints.ignore_errors or _fixes_available(newest, self._hints.fixed):
                        for _package, _version, item, name in newest:
                            self._ahead.submit_deb(fetcher, item, name)
                except (CopaError, OSError, ValueError) as e:  # a guess gone wrong: the plan does the real work
                    log.debug("read ahead: %s", e)
            # The indexes' Provides pairs take a pass over each index: found here, the plan finds them cached (it
            # waits for this, rather than doing the same pass at the same time).
            for _source, text, _trusted in texts:
                try:
                    text.provided_by()
                except (CopaError, OSError, ValueError) as e:
                    log.debug("prefetch: %s", e)
        finally:
            self._indexes_done.set()

    def _keys(self, sources: Sequence[AptSource], captured: Mapping[str, bytes], root: Path
              ) -> Callable[[AptSource], Keyring]:
        """Keys to verify a Release with before reading ahead: as the plan chooses them (--keyring, else the
        source's Signed-By) when the files are at hand; a Signed-By file under usr/ is not read yet when this runs,
        and then the keys the image trusts for every source (etc/apt/trusted.gpg{,.d}) stand in. Only which
        packages are read ahead depends on this: the plan verifies every Release with exactly the keys apt would."""
        made: list[Path] = []
        lock = threading.Lock()  # the Releases are fetched in threads: one writes the keys, the others wait

        def image_root() -> Path:
            with lock:
                if not made:
                    made.append(key_root(captured.get, lambda d: {p: c for p, c in captured.items()
                                                                 if p.startswith(d + "/")}, sources, root))
                return made[0]

        exact = keyrings_for_sources(self._repos, image_root)

        def keys(source: AptSource) -> Keyring:
            try:
                return exact(source)
            except (CopaError, OSError, ValueError):
                return Keyring.merge(default_keyrings(image_root()))

        return keys

    def join(self) -> None:
        # The plan needs the indexes; reading ahead goes on while it resolves.
        if self._thread is not None:
            self._indexes_done.wait()

    def ahead(self) -> object:
        return self._ahead

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._ahead is not None:
            self._ahead.close()


def _newest(texts: Sequence[tuple[AptSource, IndexText]], names: set[str], arch: str
            ) -> list[tuple[str, str, FetchItem, str]]:
    """For each wanted name, the newest version the indexes offer for `arch` (or all): what apt's candidate is
    unless pins or the image's own state say otherwise. (package, version, the file, its name), biggest first, as
    the adapter reads them."""
    best: dict[str, tuple[str, str, FetchItem, int]] = {}
    for source, text in texts:
        for row in text.rows(names):
            package, version, architecture, filename, size, sha256 = row[0], row[1], row[2], row[13], row[14], row[15]
            if architecture not in (arch, "all") or not sha256 or not filename:
                continue
            seen = best.get(package)
            if seen is None or compare_versions(version, seen[0]) > 0:
                name = posixpath.basename(filename)
                best[package] = (version, name, FetchItem(f"{source.uri}/{filename}", sha256, size, name), size)
    ordered = sorted(best.items(), key=lambda kv: -kv[1][3])
    return [(package, version, item, name) for package, (version, name, item, _) in ordered]


def _fixes_available(newest: Sequence[tuple[str, str, FetchItem, str]], fixed: Sequence[tuple[str, str]]) -> bool:
    """Whether the indexes offer every reported fix: if one is missing, the plan fails (without --ignore-errors)
    before anything is installed, and reading ahead would only download packages nobody unpacks."""
    versions = {package: version for package, version, _item, _name in newest}
    return all(name in versions and compare_versions(versions[name], version) >= 0 for name, version in fixed)
