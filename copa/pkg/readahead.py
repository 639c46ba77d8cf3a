"""Packages read ahead, by the sha256 of the file, on one thread while the image is still being read: the
mechanism the families' prefetchers share (copa.pkg.dpkg.prefetch, copa.pkg.rpm.readahead).

A family's build takes a read (`take`) only for a file whose sha256 its verified plan names, so a guess gone wrong
costs time, never correctness; reads of files the plan does not name are cancelled before they start
(`keep_only`), and one under way is asked to stop at its next member (`stopped`) once the patch ends.

A read can name its download (`fetch`): downloads then run a few at once, from the moment they are submitted, and
each read waits only for its own. Fetched inside the read, on the one reader thread, each download was a wait that
left the core idle (libperl's 4 MB on a near mirror: 75 ms), and on a slow link the reads barely started.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# Downloads at once for the reads ahead: enough to keep the reader fed on a slow link, few enough to leave most of
# the bandwidth to the image's own layers, which are read at the same time.
_DOWNLOADS = 3


class Reads(Generic[T]):
    """The reads under way or done, by sha256; each gets a staging directory of its own under `stage` (without
    one, nothing is read ahead)."""

    def __init__(self, stage: Path | None, thread_name: str) -> None:
        self._stage = stage
        self._thread_name = thread_name
        self._reads: dict[str, Future[T]] = {}
        self._fetches: dict[str, Future[object]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._downloads: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()  # set by close(): a read under way stops at its next member
        self._stages = itertools.count()  # one staging directory per read, never reused

    @property
    def reads(self) -> bool:
        """Whether packages can be read ahead at all (a staging directory was given)."""
        return self._stage is not None

    def stopped(self) -> bool:
        return self._stop.is_set()

    def submit(self, sha256: str, read: Callable[[Path], T], fetch: Callable[[], object] | None = None) -> None:
        """Run `read(staging directory)` for this file, unless it is read already or the reads are closed. `fetch`,
        if given, downloads the file into the cache `read` takes it from: it starts at once, and `read` starts
        once it has ended (a failed download is left to `read`, which fetches again and reports as usual)."""
        with self._lock:
            if self._closed or self._stage is None or sha256 in self._reads:
                return
            if self._pool is None:
                # One reader: the layer scan keeps the other core busy (and the build's own readers use them all).
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._thread_name)
            stage = self._stage / f"{next(self._stages):04d}"
            if fetch is None:
                self._reads[sha256] = self._pool.submit(read, stage)
                return
            if self._downloads is None:
                self._downloads = ThreadPoolExecutor(max_workers=_DOWNLOADS,
                                                     thread_name_prefix=f"{self._thread_name}-get")
            fetched = self._fetches[sha256] = self._downloads.submit(fetch)
            self._reads[sha256] = self._pool.submit(_after, fetched, read, stage)

    def keep_only(self, wanted: AbstractSet[str]) -> None:
        """The plan is made: reads of files it does not name are cancelled before they start (a report can name
        packages the image does not have, or versions its pins hold back)."""
        with self._lock:
            for sha256 in [s for s in self._reads if s not in wanted]:
                if self._reads[sha256].cancel():
                    del self._reads[sha256]
            for sha256 in [s for s in self._fetches if s not in wanted]:
                self._fetches.pop(sha256).cancel()

    def take(self, sha256: str) -> T | None:
        """What was read for this file, once read; None if it was not read ahead, had not started, or failed (the
        build then reads it itself, and reports what goes wrong as it always does)."""
        with self._lock:
            future = self._reads.pop(sha256, None)
        if future is None or future.cancel():
            return None
        try:
            return future.result()
        except Exception as e:  # any failure: the ordinary path reads the file again
            log.debug("read ahead: %s", e)
            return None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._stop.set()
            pool, self._pool = self._pool, None
            downloads, self._downloads = self._downloads, None
        # Downloads first: a read waiting for one that is cancelled then ends at once (_after).
        for waiting in (downloads, pool):
            if waiting is not None:
                waiting.shutdown(wait=True, cancel_futures=True)


def _after(download: Future[object], read: Callable[[Path], T], stage: Path) -> T:
    """`read(stage)` once `download` has ended. A failed download is read anyway (the read fetches again and
    reports what goes wrong); a cancelled one (a file the plan does not name, or the end of the patch) raises
    CancelledError here, so that the read does not download it itself."""
    download.exception()
    return read(stage)
