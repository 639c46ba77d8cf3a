"""Start downloading an image's apt indexes while the image is still being read.

A cold patch spends about a second downloading and decompressing bookworm's main index, and about as long
reading the image's base layer, which is CPU work: overlapping the two hides one of them. The base layer's
members come in path order, so its /etc is complete well before the layer ends (usr/ and var/ come later).
The prefetch only fills the download cache, content-addressed and unverified; the plan then loads the indexes
as always, verifying the Release and finding each index in the cache by the hash the verified Release names.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from copa.errors import CopaError
from copa.pkg.apt.packages import prefetch_indexes
from copa.pkg.apt.sources import apply_mirrors
from copa.pkg.base import RepositoryOptions
from copa.pkg.dpkg.arch import deb_architecture
from copa.pkg.dpkg.repos import SOURCES_DIR, SOURCES_LIST, image_auth, sources_in, user_sources
from copa.pkg.fetch import Fetcher

log = logging.getLogger(__name__)

class IndexPrefetch:
    """The apt family's Prefetcher (copa.pkg.base). It needs etc/apt's files and is started once the base layer
    has gone past all of etc/ (copa.pkg.detect.PREFETCH_WATCH), which holds in both orders build tools write
    (directory walk, or plain path sort) unless a root entry sorts between etc and etc/ (etc-x): then it just
    starts early, with fewer sources."""

    def __init__(self, repos: RepositoryOptions, oci_arch: str, oci_variant: str, fetcher: Fetcher) -> None:
        self._repos = repos
        self._arch = deb_architecture(oci_arch, oci_variant)
        self._fetcher = fetcher
        self._thread: threading.Thread | None = None

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
        self._thread = threading.Thread(target=prefetch_indexes, args=(sources, self._arch, fetcher),
                                        name="copa-prefetch", daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
