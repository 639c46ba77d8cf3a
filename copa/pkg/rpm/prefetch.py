"""Start downloading an rpm image's repository metadata while the image is still being read.

The rpm family's Prefetcher (copa.pkg.base): once the base layer has gone past etc/, the captured dnf/yum
configuration names the repositories; their repomd.xml and primary are fetched into the checksum-addressed
cache. primary lands under the checksum the repomd fetched here names, so a forged repomd can only waste a
download: the plan verifies the same repomd.xml (and repomd.xml.asc) bodies as configured (ReadAhead.metadata)
and finds primary in the cache by the checksum the verified repomd names. primary is also parsed into the parse
cache here, the slow part of a cold run, when the plan will trust this repomd: a repository without
repo_gpgcheck, or one whose repomd.xml.asc verifies with the keys read so far (--keyring, else the repository's
gpgkey files in the image's /etc); any other repository's metadata is not decompressed before the plan has
verified it.

With a report (PrefetchHints.packages), the newest version of each named package that such a parsed primary offers
for the image's architecture is downloaded too, into the same cache, and read (decompressed, verified, staged) on
one thread while the image is still being read, when the indexes offer every reported fix (or with
--ignore-errors): a plan that fails for a missing fix needs nothing. The build takes a package read ahead only for
a file its verified plan names by the same sha256, and runs its own header check on it; a wrong guess (an excluded
version, another repository's priority, a module stream) costs a download and a read, nothing else.
"""

from __future__ import annotations

import functools
import importlib
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from copa.errors import CopaError
from copa.pkg.base import OSRelease, PrefetchHints, RepositoryOptions
from copa.pkg.fetch import Fetcher, FetchItem
from copa.pkg.openpgp import Keyring
from copa.pkg.rpm.readahead import ReadAhead
from copa.pkg.rpm.repomd import RepoIndex, RpmPackage, prefetch_repository
from copa.pkg.rpm.repos import RepoSetup, RpmRepository, Tree, read_setup, repository_auth, repository_keyring
from copa.pkg.rpm.rpmfile import HeaderCheck, expect_identity
from copa.pkg.rpm.signature import checker
from copa.pkg.rpm.version import compare_versions

log = logging.getLogger(__name__)

_OS_RELEASE = ("etc/os-release", "usr/lib/os-release")


class MetadataPrefetch:
    def __init__(self, repos: RepositoryOptions, oci_arch: str, oci_variant: str, fetcher: Fetcher,
                 hints: PrefetchHints | None = None) -> None:
        self._repos = repos
        self._arch = oci_arch
        self._variant = oci_variant
        self._fetcher = fetcher
        self._hints = hints or PrefetchHints()
        self._wanted = frozenset(self._hints.packages)
        self._thread: threading.Thread | None = None
        self._metadata = threading.Event()  # set once the repositories' metadata is in the cache (or failed)
        self._closed = False
        self._lock = threading.Lock()
        self._downloads: ThreadPoolExecutor | None = None
        workdir = self._hints.workdir
        self._ahead = ReadAhead(workdir / "rpm-ahead" if workdir is not None else None)

    def setup(self, captured: Mapping[str, bytes]) -> RepoSetup | None:
        """The repositories the captured files configure, or None when they are no rpm image's."""
        text = next((captured[p] for p in _OS_RELEASE if p in captured), b"")
        tree = Tree.of_mapping(captured)
        if not self._repos.repositories and self._repos.repositories_file is None and not any(
            p.startswith(("etc/yum.repos.d/", "etc/yum/repos.d/", "etc/distro.repos.d/")) or
            p in ("etc/dnf/dnf.conf", "etc/yum.conf") for p in captured
        ):
            return None  # not an rpm image (or one without repositories): nothing to warm up
        try:
            return read_setup(tree, OSRelease.parse(text.decode("utf-8", "replace")), self._arch, self._variant,
                              self._repos)
        except CopaError as e:  # a bad --repository or repositories file: the plan reports it
            log.debug("prefetch: %s", e)
            return None

    def start(self, captured: Mapping[str, bytes]) -> None:
        setup = self.setup(captured)
        if setup is None or not setup.repos:
            return
        tree = Tree.of_mapping(captured)
        metadata = self._metadata = threading.Event()  # (a new one: `join` waits for this start's metadata)
        self._thread = threading.Thread(target=self._run, args=(setup, tree, metadata), name="copa-rpm-prefetch",
                                        daemon=True)
        self._thread.start()

    def _run(self, setup: RepoSetup, tree: Tree, metadata: threading.Event) -> None:
        indexes: list[RepoIndex] = []
        keys = self._keys(tree)
        try:  # (`join` waits for `metadata`: it is set whatever happens here)
            fetcher = self._fetcher.with_auth(repository_auth(setup, tree, None))

            def one(repo_index: int) -> RepoIndex | None:
                return prefetch_repository(setup.repos[repo_index], fetcher, setup.variables, self._repos.mirrors,
                                           self._wanted, keys, self._ahead.metadata)

            with ThreadPoolExecutor(max_workers=self._fetcher.workers, thread_name_prefix="copa-prefetch") as pool:
                futures = [pool.submit(one, i) for i in range(len(setup.repos))]
                # While those download: the adapter's modules (the resolver, the build, the database writers,
                # copa.pkg.effects), which the main thread would otherwise import after the scan (~40 ms on the
                # plan's path). Before `metadata` is set, so the main thread is not importing them meanwhile.
                importlib.import_module("copa.pkg.rpm.adapter")
            for fut in futures:
                try:
                    found = fut.result()
                except (CopaError, OSError, ValueError) as e:  # the real, verified load reports what matters
                    log.debug("prefetch: %s", e)
                    continue
                if found is not None:
                    indexes.append(found)
                    parsed = found.parsed_primary()
                    self._ahead.primaries[parsed.key] = parsed
        except (CopaError, OSError, ValueError) as e:  # (the image's repository credentials): the plan reports it
            log.debug("prefetch: %s", e)
            return
        finally:
            metadata.set()
        if self._wanted and indexes:
            try:
                self._download_ahead(indexes, setup.variables.get("basearch", ""), fetcher, keys)
            except (CopaError, OSError, ValueError) as e:  # a guess gone wrong: the plan does the real work
                log.debug("download ahead: %s", e)

    def _keys(self, tree: Tree) -> Callable[[RpmRepository], Keyring]:
        """The keys read so far that vouch for a repository, as the plan chooses them (--keyring, else its gpgkey
        files, from the captured /etc); one the image does not hold there (an http(s) gpgkey) raises: such a
        repository is not read ahead."""
        rings: dict[str, Keyring] = {}
        lock = threading.Lock()

        def keys(repo: RpmRepository) -> Keyring:
            with lock:
                if repo.id not in rings:
                    rings[repo.id] = repository_keyring(repo, tree, self._repos, None)
                return rings[repo.id]

        return keys

    def _download_ahead(self, indexes: list[RepoIndex], basearch: str, fetcher: Fetcher,
                        keys: Callable[[RpmRepository], Keyring]) -> None:
        """The newest version of each wanted name for the image's architecture (or noarch), biggest first."""
        best: dict[str, RpmPackage] = {}
        repos: dict[str, RpmRepository] = {}
        for index in indexes:
            repos[index.repo.id] = index.repo
            for name in self._wanted:
                for pkg in index.versions(name):
                    if pkg.arch not in (basearch, "noarch") or pkg.checksum.type != "sha256":
                        continue
                    key = f"{name}.{pkg.arch}"
                    if key not in best or compare_versions(pkg.evr, best[key].evr) > 0:
                        best[key] = pkg
        if not self._hints.ignore_errors and not _fixes_available(best.values(), self._hints.fixed):
            return
        with self._lock:
            if self._closed:
                return
            pool = self._downloads = ThreadPoolExecutor(max_workers=self._fetcher.workers,
                                                        thread_name_prefix="copa-rpm-ahead")
        checks: dict[str, HeaderCheck | None] = {}
        for pkg in sorted(best.values(), key=lambda p: -p.size):
            item = FetchItem(url=pkg.url, sha256=pkg.checksum.value, size=pkg.size, what=f"{pkg.nevra}.rpm")
            try:
                pool.submit(self._fetch_quietly, fetcher, item)
            except RuntimeError:  # closed meanwhile (the pool no longer takes work)
                return
            if not self._ahead.reads:
                continue
            repo = repos[pkg.repo_id]
            if repo.id not in checks:
                try:
                    checks[repo.id] = checker(keys(repo)) if repo.gpgcheck else None
                except (CopaError, OSError, ValueError) as e:  # no key at hand: downloaded, not read, ahead
                    log.debug("read ahead: %s", e)
                    continue
            check = expect_identity(pkg.name, pkg.epoch, pkg.version, pkg.release, pkg.arch, checks[repo.id])
            self._ahead.submit_rpm(functools.partial(fetcher.fetch, item), item.sha256, item.what, check)

    @staticmethod
    def _fetch_quietly(fetcher: Fetcher, item: FetchItem) -> None:
        try:
            fetcher.fetch(item)
        except (CopaError, OSError, ValueError) as e:  # the adapter's own download reports what matters
            log.debug("download ahead: %s", e)

    def join(self) -> None:
        # The plan needs the metadata; the packages may go on downloading while it resolves.
        if self._thread is not None:
            self._metadata.wait()

    def ahead(self) -> object:
        return self._ahead

    def close(self) -> None:
        if self._thread is not None:
            self._metadata.wait()
        with self._lock:
            self._closed = True
            pool = self._downloads
        self._ahead.close()
        if pool is not None:
            # Downloads under way finish (a file half-written into the cache is not published); queued ones do not
            # start: the patch that asked for them is over.
            pool.shutdown(wait=True, cancel_futures=True)
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def _fixes_available(best: Iterable[RpmPackage], fixed: Sequence[tuple[str, str]]) -> bool:
    """Whether the indexes offer every reported fix: if one is missing, the plan fails (without --ignore-errors)
    before anything is installed, and reading ahead would only fetch packages nobody installs."""
    newest: dict[str, str] = {}
    for pkg in best:
        if pkg.name not in newest or compare_versions(pkg.evr, newest[pkg.name]) > 0:
            newest[pkg.name] = pkg.evr
    return all(name in newest and compare_versions(newest[name], version) >= 0 for name, version in fixed)
