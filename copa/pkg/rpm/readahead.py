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

from collections.abc import Callable
from pathlib import Path

from copa.pkg.readahead import Reads
from copa.pkg.rpm.repomd import ParsedPrimary
from copa.pkg.rpm.rpmfile import HeaderCheck, RpmContents, read_rpm


class ReadAhead(Reads[RpmContents]):
    def __init__(self, stage: Path | None) -> None:
        super().__init__(stage, "copa-rpm-read-ahead")
        self.metadata: dict[str, bytes] = {}  # URL -> body, written by the prefetch before its metadata is joined
        self.primaries: dict[str, ParsedPrimary] = {}  # the primaries it parsed (RepoIndex.parsed), likewise

    def submit_rpm(self, download: Callable[[], Path], sha256: str, name: str, check: HeaderCheck | None) -> None:
        """Read the package `download` returns (it waits for the file: an ahead download, or the cache)."""
        self.submit(sha256, lambda stage: read_rpm(download(), stage, name, check))
