"""apk's early download (issue 13): while the layer scan goes on, the image's repository indexes are downloaded into
memory, so that the plan does not wait for them (one round trip to the mirror per repository, or more for a large
index, off the plan's path; with an 80 ms mirror a cold patch took 1.46 -> 1.23 s, median of 10).

Started from the scan thread once /etc has been read (copa.pkg.detect.EarlyDownloads), it does its work in a thread
of its own: the scan is not held up. Only the untagged repositories are fetched (a tagged one serves only packages
pinned to it, which the installed database, read later, names), and none whose line carries a login (its
credentials are the adapter's to send). A failed download is left to the plan, which fetches it again and reports
it.

Then, on the same thread, each index is verified and parsed with the keys the image holds in /etc/apk/keys (or the
--keyring files): the plan takes that parse (`ApkAhead.parsed`) only when its own keys are the very same and the
body is the one it verifies, and parses it itself otherwise. With a report, the newest build of each reported
package with a fixed version that such a verified index offers for the image's architecture is downloaded into
the cache too (when the indexes offer every reported fix, or with --ignore-errors), three at a time: the build's
`fetch_apk` then finds it there, or waits for the download under way. The build still verifies every package
against the identity its own plan names (C:); a wrong guess (a pin, the world's constraints) costs a download,
nothing else. Nothing is read ahead (decompressed, staged): a run whose patch layer is in the cache would throw
that work away.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from copa.errors import CopaError

if TYPE_CHECKING:
    from copa.pkg.apk.index import ApkRecord, RepositoryIndex
    from copa.pkg.apk.repos import Repository
    from copa.pkg.apk.signing import Keys
    from copa.pkg.base import PrefetchHints, RepositoryOptions
    from copa.pkg.fetch import Fetcher

log = logging.getLogger(__name__)

# Downloads at once ahead of the plan: the image's layers are still being read from the registry meanwhile.
_DOWNLOADS = 3


@dataclass(frozen=True)
class ApkAhead:
    """Index bodies as the repositories served them (unverified), by index URL; and the indexes verified and parsed
    with `keys`, by index URL (taken by a plan whose keys are the same)."""

    indexes: Mapping[str, bytes]
    parsed: Mapping[str, RepositoryIndex] = field(default_factory=dict)
    keys: Keys | None = None


class IndexPrefetch:
    def __init__(self, repos: RepositoryOptions, oci_arch: str, oci_variant: str, fetcher: Fetcher,
                 hints: PrefetchHints) -> None:
        self._repos, self._arch, self._variant, self._fetcher = repos, oci_arch, oci_variant, fetcher
        self._hints = hints
        self._bodies: dict[str, bytes] = {}
        self._parsed: dict[str, RepositoryIndex] = {}
        self._keys: Keys | None = None
        self._thread: threading.Thread | None = None
        self._indexes = threading.Event()  # set once the indexes are downloaded and parsed (or failed)
        self._lock = threading.Lock()
        self._closed = False
        self._downloads: ThreadPoolExecutor | None = None

    def start(self, captured: Mapping[str, bytes]) -> None:
        # A snapshot: the scan goes on adding to `captured` while the thread reads it.
        etc = {path: data for path, data in captured.items() if path.startswith("etc/apk/")}
        if not etc:
            return  # not an apk image (the user's --repository lines start every family's early download)
        self._indexes = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(etc, self._indexes), name="copa-prefetch",
                                        daemon=True)
        self._thread.start()

    def _run(self, etc: Mapping[str, bytes], indexes: threading.Event) -> None:
        try:
            repos = ahead_repositories(etc, self._repos, self._arch, self._variant)
            if not repos:
                return
            with ThreadPoolExecutor(max_workers=max(1, min(len(repos), self._fetcher.workers)),
                                    thread_name_prefix="copa-prefetch") as pool:
                futures = {r.index_url: pool.submit(self._fetcher.get_bytes, r.index_url, f"apk index {r.index_url}")
                           for r in repos}
            for url, future in futures.items():
                try:
                    self._bodies[url] = future.result()
                except (CopaError, OSError):  # copa.web's exceptions are OSErrors
                    continue  # the plan downloads it again and reports what fails
            self._parse(etc, repos)
        finally:
            indexes.set()
        if self._hints.fixed and self._parsed:
            try:
                self._download_ahead(etc, repos)
            except (CopaError, OSError, ValueError) as e:  # a guess gone wrong: the build does the real work
                log.debug("download ahead: %s", e)

    def _parse(self, etc: Mapping[str, bytes], repos: Sequence[Repository]) -> None:
        """Each downloaded index verified (a signature by a trusted key, nothing less) and parsed."""
        from copa.pkg.apk.index import read_apkindex
        from copa.pkg.apk.signing import KEYS_DIR, Keys

        try:
            keys = (Keys.from_files(self._repos.keyrings) if self._repos.keyrings else
                    Keys.from_image({p: d for p, d in etc.items() if p.startswith(KEYS_DIR + "/")}))
        except CopaError as e:  # an unreadable --keyring: the plan reports it
            log.debug("prefetch: %s", e)
            return
        for repo in repos:
            body = self._bodies.get(repo.index_url)
            if body is None:
                continue
            try:
                index = read_apkindex(body, keys, False, repo.url, f"apk index {repo.index_url}")
            except (CopaError, ValueError) as e:  # unsigned, untrusted, damaged: the plan decides and reports
                log.debug("prefetch: %s", e)
                continue
            if index.signed_by:
                self._parsed[repo.index_url] = index
        self._keys = keys

    def _download_ahead(self, etc: Mapping[str, bytes], repos: Sequence[Repository]) -> None:
        """The newest build of each reported name in the verified indexes, for the image's architecture."""
        from copa.pkg.apk.version import compare_versions

        arch = _apk_arch(etc, self._arch, self._variant)
        if arch is None:
            return
        # (A reported package with no fixed version yet is not upgraded: nothing to fetch for it.)
        wanted = {name for name, _ in self._hints.fixed}
        best: dict[str, tuple[ApkRecord, Repository]] = {}
        for repo in repos:
            index = self._parsed.get(repo.index_url)
            for r in index.records if index is not None else ():
                if r.name in wanted and r.arch in (arch, "noarch", "") and r.installed_size != 0 and (
                        r.name not in best or compare_versions(r.version, best[r.name][0].version) > 0):
                    best[r.name] = (r, repo)
        if not self._hints.ignore_errors and not all(
                name in best and compare_versions(best[name][0].version, fixed) >= 0
                for name, fixed in self._hints.fixed):
            return  # the plan fails for a missing fix before anything is installed
        with self._lock:
            if self._closed:
                return
            pool = self._downloads = ThreadPoolExecutor(max_workers=_DOWNLOADS, thread_name_prefix="copa-apk-ahead")
        for record, repo in sorted(best.values(), key=lambda p: -p[0].size):
            url = repo.package_url(arch, record.filename)
            try:
                pool.submit(_quietly, self._fetcher, url, record)
            except RuntimeError:  # closed meanwhile (the pool no longer takes work)
                return

    def join(self) -> None:
        # The plan needs the indexes; the packages may go on downloading while it resolves.
        if self._thread is not None:
            self._indexes.wait()

    def ahead(self) -> object:
        if not self._bodies:
            return None
        return ApkAhead(dict(self._bodies), dict(self._parsed), self._keys)

    def close(self) -> None:
        if self._thread is not None:
            self._indexes.wait()
        with self._lock:
            self._closed = True
            pool = self._downloads
        if pool is not None:
            # Downloads under way finish (a file half-written into the cache is not published); queued ones do not
            # start: the patch that asked for them is over.
            pool.shutdown(wait=True, cancel_futures=True)
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def _quietly(fetcher: Fetcher, url: str, record: ApkRecord) -> None:
    from copa.pkg.apk.adapter import fetch_apk, package_what

    try:
        fetch_apk(fetcher, url, record, package_what(record))
    except (CopaError, OSError, ValueError) as e:  # the build's own download reports what matters
        log.debug("download ahead: %s", e)


def _apk_arch(etc: Mapping[str, bytes], oci_arch: str, oci_variant: str) -> str | None:
    from copa.pkg.apk.repos import ARCH_FILE, arch_for

    words = etc.get(ARCH_FILE, b"").decode("utf-8", "replace").split()
    return words[0] if words else arch_for(oci_arch, oci_variant)


def index_urls(etc: Mapping[str, bytes], repos: RepositoryOptions, oci_arch: str, oci_variant: str) -> list[str]:
    """The index URLs of the repositories the plan will read for sure (see ahead_repositories)."""
    return [r.index_url for r in ahead_repositories(etc, repos, oci_arch, oci_variant)]


def ahead_repositories(etc: Mapping[str, bytes], repos: RepositoryOptions, oci_arch: str, oci_variant: str
                       ) -> list[Repository]:
    """The repositories the plan will read for sure, as `select_repositories` names them: the user's --repository
    lines, else the image's /etc/apk/repositories{,.d/*}; untagged ones without a login."""
    from copa.pkg.apk.repos import REPOSITORIES, REPOSITORIES_DIR, Repository, apply_mirrors, parse_repositories
    from copa.pkg.repoauth import strip_userinfo

    arch = _apk_arch(etc, oci_arch, oci_variant)
    if arch is None:
        return []
    if repos.repositories_file is not None:
        return []  # read by the plan, which reports a file it cannot read
    if repos.repositories:
        text = "\n".join(repos.repositories)
    else:
        texts = [etc.get(REPOSITORIES, b""), *(data for path, data in sorted(etc.items())
                                               if path.startswith(REPOSITORIES_DIR + "/"))]
        text = "\n".join(t.decode("utf-8", "replace") for t in texts)
    out: list[Repository] = []
    for r in parse_repositories(text, arch):
        url, login = strip_userinfo(apply_mirrors(r.index_url, repos.mirrors))
        base, base_login = strip_userinfo(apply_mirrors(r.url, repos.mirrors))
        # http(s) only: a local path is the plan's to read, and a line meant for another family (the user's
        # --repository lines reach every family) is no URL at all.
        if (not r.tag and login is None and base_login is None and url.startswith(("http://", "https://"))
                and all(o.index_url != url for o in out)):
            out.append(Repository(base, "", url))
    return out
