"""Start downloading an rpm image's repository metadata while the image is still being read.

The rpm family's Prefetcher (copa.pkg.base): once the base layer has gone past etc/, the captured dnf/yum
configuration names the repositories; their repomd.xml and primary are fetched into the checksum-addressed
cache. primary lands under the checksum the repomd fetched here names, so a forged repomd can only waste a
download: the plan fetches repomd again, verifies it as configured and finds primary in the cache by the
checksum the verified repomd names. For a repository without repo_gpgcheck (the plan trusts its repomd as it
comes, as dnf does) primary is also parsed into the parse cache here, the slow part of a cold run; a signed
repository's metadata is not decompressed before the plan has verified it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from copa.errors import CopaError
from copa.pkg.base import OSRelease, PrefetchHints, RepositoryOptions
from copa.pkg.fetch import Fetcher
from copa.pkg.rpm.repomd import prefetch_repository
from copa.pkg.rpm.repos import RepoSetup, Tree, read_setup, repository_auth

log = logging.getLogger(__name__)

_OS_RELEASE = ("etc/os-release", "usr/lib/os-release")


class MetadataPrefetch:
    def __init__(self, repos: RepositoryOptions, oci_arch: str, oci_variant: str, fetcher: Fetcher,
                 hints: PrefetchHints | None = None) -> None:
        self._repos = repos
        self._arch = oci_arch
        self._variant = oci_variant
        self._fetcher = fetcher
        self._thread: threading.Thread | None = None

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
        self._thread = threading.Thread(target=self._run, args=(setup, tree), name="copa-rpm-prefetch",
                                        daemon=True)
        self._thread.start()

    def _run(self, setup: RepoSetup, tree: Tree) -> None:
        fetcher = self._fetcher.with_auth(repository_auth(setup, tree, None))

        def one(repo_index: int) -> None:
            prefetch_repository(setup.repos[repo_index], fetcher, setup.variables, self._repos.mirrors)

        with ThreadPoolExecutor(max_workers=self._fetcher.workers, thread_name_prefix="copa-prefetch") as pool:
            futures = [pool.submit(one, i) for i in range(len(setup.repos))]
        for fut in futures:
            try:
                fut.result()
            except (CopaError, OSError, ValueError) as e:  # the real, verified load reports what matters
                log.debug("prefetch: %s", e)

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def ahead(self) -> object:
        return None  # only the cache is warmed

    def close(self) -> None:
        self.join()
