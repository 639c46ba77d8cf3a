"""Downloading .deb files named by a verified Packages index."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from copa.pkg.apt.packages import PackageRecord
from copa.pkg.fetch import Fetcher, FetchItem, default_fetcher


def deb_item(record: PackageRecord) -> FetchItem:
    return FetchItem(
        url=f"{record.repository}/{record.filename}",
        sha256=record.sha256,
        size=record.size,
        what=f"{record.package}_{record.version}_{record.architecture}.deb",
    )


def fetch_deb(record: PackageRecord, fetcher: Fetcher | None = None) -> Path:
    """The .deb of `record` in the cache, verified against the signature-verified index's sha256 and size."""
    return (fetcher or default_fetcher()).fetch(deb_item(record))


def fetch_debs(records: Sequence[PackageRecord], fetcher: Fetcher | None = None) -> list[Path]:
    return (fetcher or default_fetcher()).fetch_all([deb_item(r) for r in records])
