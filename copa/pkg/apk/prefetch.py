"""apk's early download (issue 13): while the layer scan goes on, the image's repository indexes are downloaded into
memory, so that the plan does not wait for them (one round trip to the mirror per repository, or more for a large
index, off the plan's path; with an 80 ms mirror a cold patch took 1.46 -> 1.23 s, median of 10). It does no CPU
work beyond the downloads: importing the adapter here as well (as the rpm prefetch does) cost a warm run more CPU
than it saved, its scan being a replay with little wait to overlap.

Started from the scan thread once /etc has been read (copa.pkg.detect.EarlyDownloads), it does its work in a thread
of its own: the scan is not held up. Only the untagged repositories are fetched (a tagged one serves only packages
pinned to it, which the installed database, read later, names), and none whose line carries a login (its
credentials are the adapter's to send). Nothing fetched here is trusted: `copa.pkg.apk.repos.load_indexes` takes a
body from `ApkAhead` in place of downloading it again and verifies its signature with the plan's keys, exactly as
it verifies a body it downloads. A failed download is left to the plan, which fetches it again and reports it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from copa.errors import CopaError

if TYPE_CHECKING:
    from copa.pkg.base import PrefetchHints, RepositoryOptions
    from copa.pkg.fetch import Fetcher


@dataclass(frozen=True)
class ApkAhead:
    """Index bodies as the repositories served them (unverified), by index URL."""

    indexes: Mapping[str, bytes]


class IndexPrefetch:
    def __init__(self, repos: RepositoryOptions, oci_arch: str, oci_variant: str, fetcher: Fetcher,
                 hints: PrefetchHints) -> None:
        self._repos, self._arch, self._variant, self._fetcher = repos, oci_arch, oci_variant, fetcher
        self._bodies: dict[str, bytes] = {}
        self._thread: threading.Thread | None = None

    def start(self, captured: Mapping[str, bytes]) -> None:
        # A snapshot: the scan goes on adding to `captured` while the thread reads it.
        etc = {path: data for path, data in captured.items() if path.startswith("etc/apk/")}
        if not etc:
            return  # not an apk image (the user's --repository lines start every family's early download)
        self._thread = threading.Thread(target=self._run, args=(etc,), name="copa-prefetch", daemon=True)
        self._thread.start()

    def _run(self, etc: Mapping[str, bytes]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        urls = index_urls(etc, self._repos, self._arch, self._variant)
        if not urls:
            return
        with ThreadPoolExecutor(max_workers=max(1, min(len(urls), self._fetcher.workers)),
                                thread_name_prefix="copa-prefetch") as pool:
            futures = {url: pool.submit(self._fetcher.get_bytes, url, f"apk index {url}") for url in urls}
        for url, future in futures.items():
            try:
                self._bodies[url] = future.result()
            except (CopaError, OSError):  # copa.web's exceptions are OSErrors
                continue  # the plan downloads it again and reports what fails

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def ahead(self) -> object:
        return ApkAhead(dict(self._bodies)) if self._bodies else None

    def close(self) -> None:
        self.join()


def index_urls(etc: Mapping[str, bytes], repos: RepositoryOptions, oci_arch: str, oci_variant: str) -> list[str]:
    """The index URLs of the repositories the plan will read for sure, as `select_repositories` names them: the
    user's --repository lines, else the image's /etc/apk/repositories{,.d/*}; untagged ones without a login."""
    from copa.pkg.apk.repos import (
        ARCH_FILE,
        REPOSITORIES,
        REPOSITORIES_DIR,
        apply_mirrors,
        arch_for,
        parse_repositories,
    )
    from copa.pkg.repoauth import strip_userinfo

    words = etc.get(ARCH_FILE, b"").decode("utf-8", "replace").split()
    arch = words[0] if words else arch_for(oci_arch, oci_variant)
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
    out = []
    for r in parse_repositories(text, arch):
        url, login = strip_userinfo(apply_mirrors(r.index_url, repos.mirrors))
        base_login = strip_userinfo(apply_mirrors(r.url, repos.mirrors))[1]
        # http(s) only: a local path is the plan's to read, and a line meant for another family (the user's
        # --repository lines reach every family) is no URL at all.
        if (not r.tag and login is None and base_login is None and url.startswith(("http://", "https://"))
                and url not in out):
            out.append(url)
    return out
