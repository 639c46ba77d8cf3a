"""What the rpm prefetch prepared for the plan and the build while the image was still being read.

`metadata`: the repomd.xml and repomd.xml.asc bodies it downloaded, by URL; the plan verifies these (signature,
metalink hashes) exactly as it verifies what it downloads, instead of asking the mirror again: one round trip per
repository less on the plan's path. `primaries`: the primaries it parsed, by checksum; the plan's index of a
primary its verified repomd names by the same checksum starts from that parse instead of loading it back from the
cache.

Packages read ahead: the build takes one (copa.pkg.rpm.adapter) only for a file whose sha256 its verified plan
names, and runs its own header check (the package's identity, the repository's keys) on it before using it; a
read that failed, or did not start before the build asked, is done again by the build itself.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from copa.pkg.rpm.repomd import ParsedPrimary
from copa.pkg.rpm.rpmfile import HeaderCheck, RpmContents, read_rpm

log = logging.getLogger(__name__)


class ReadAhead:
    def __init__(self, stage: Path | None) -> None:
        self._stage = stage
        self.metadata: dict[str, bytes] = {}  # URL -> body, written by the prefetch before its metadata is joined
        self.primaries: dict[str, ParsedPrimary] = {}  # the primaries it parsed (RepoIndex.parsed), likewise
        self._reads: dict[str, Future[RpmContents]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._stages = itertools.count()  # one staging directory per read, never reused

    @property
    def reads(self) -> bool:
        """Whether packages can be read ahead at all (a staging directory was given)."""
        return self._stage is not None

    def submit(self, download: Callable[[], Path], sha256: str, name: str, check: HeaderCheck | None) -> None:
        """Read the package `download` returns (it waits for the file: an ahead download, or the cache)."""
        with self._lock:
            if self._closed or self._stage is None or sha256 in self._reads:
                return
            if self._pool is None:
                # One reader: the layer scan keeps the other core busy, and the build's own readers use them all.
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="copa-rpm-read-ahead")
            stage = self._stage / f"{next(self._stages):04d}"
            self._reads[sha256] = self._pool.submit(lambda: read_rpm(download(), stage, name, check))

    def keep_only(self, wanted: AbstractSet[str]) -> None:
        """The plan is made: reads of files it does not name are cancelled before they start."""
        with self._lock:
            for sha256 in [s for s in self._reads if s not in wanted]:
                if self._reads[sha256].cancel():
                    del self._reads[sha256]

    def take(self, sha256: str) -> RpmContents | None:
        """The package read ahead for this file, once read; None if it was not read ahead, had not started, or
        failed (the build then reads it itself and reports what goes wrong as it always does)."""
        with self._lock:
            future = self._reads.pop(sha256, None)
        if future is None or future.cancel():
            return None
        try:
            return future.result()
        except Exception as e:  # any failure: the build reads the file again and reports what it finds
            log.debug("read ahead: %s", e)
            return None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
