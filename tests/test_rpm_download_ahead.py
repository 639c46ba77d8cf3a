"""Downloading rpm packages ahead (copa/pkg/rpm/prefetch.py): while the image is read, the newest versions of the
reported packages go into the checksum-addressed cache. It may change how fast a patch is, never what it produces:
the patch layer is byte for byte the one built without it, a name no repository has costs nothing, and a signed
repository's (repo_gpgcheck=1) metadata is still not decompressed before the plan has verified it. The patched tree
itself is checked against the real rpm -U in tests/test_rpm_e2e.py (whose repository is unsigned: the download
ahead runs there)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

import copa.pkg.rpm.prefetch as prefetch
from copa.cli import main
from copa.pkg.base import PrefetchHints, RepositoryOptions
from copa.pkg.cache import Cache
from copa.pkg.fetch import make_fetcher
from tests.support.trivy import write_report
from tests.test_rpm_e2e import REF, World
from tests.test_rpm_e2e import world as world  # the module-scoped image and repository (a fixture)

pytestmark = pytest.mark.skipif(not os.access("/usr/bin/rpmbuild", os.X_OK), reason="needs rpm and rpmbuild")


def _captured(root: Path) -> dict[str, bytes]:
    """The image's /etc as the layer scan hands it to a prefetcher."""
    return {str(p.relative_to(root)): p.read_bytes() for p in (root / "etc").rglob("*") if p.is_file()}


def _new_rpm(world: World, name: str) -> Path:
    return next(p for p in world.new_rpms if p.name.startswith(f"{name}-1.1-") or p.name.startswith(f"{name}-3.0-"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _prefetch(world: World, cache: Path, names: tuple[str, ...], monkeypatch: pytest.MonkeyPatch,
              repo_text: str | None = None, wait_for: tuple[Path, ...] = ()) -> tuple[Cache, list[Any], list[str]]:
    """One prefetch of the image's /etc; returns the cache, what `_download_ahead` was given (the parsed indexes)
    and the packages it fetched. `wait_for`: packages to see in the cache before closing it (close() cancels the
    downloads not started yet: the patch that asked for them is over)."""
    captured = _captured(world.root)
    if repo_text is not None:
        captured["etc/yum.repos.d/copa-test.repo"] = repo_text.encode()
    indexes: list[Any] = []
    fetched: list[str] = []
    real_ahead, real_fetch = prefetch.MetadataPrefetch._download_ahead, prefetch.MetadataPrefetch._fetch_quietly

    def ahead(self: prefetch.MetadataPrefetch, ix: list[Any], *rest: Any) -> None:
        indexes.extend(ix)
        real_ahead(self, ix, *rest)

    def fetch(f: Any, item: Any) -> None:
        fetched.append(item.what)
        real_fetch(f, item)

    monkeypatch.setattr(prefetch.MetadataPrefetch, "_download_ahead", ahead)
    monkeypatch.setattr(prefetch.MetadataPrefetch, "_fetch_quietly", staticmethod(fetch))
    store = Cache(cache)
    part = prefetch.MetadataPrefetch(RepositoryOptions(), "amd64", "", make_fetcher(cache, 30.0, None),
                                     PrefetchHints(names, None))
    part.start(captured)
    part.join()
    deadline = time.monotonic() + 30
    while any(store.lookup(_sha256(p), p.stat().st_size) is None for p in wait_for) and time.monotonic() < deadline:
        time.sleep(0.05)
    part.close()
    return store, indexes, fetched


def test_the_reported_packages_are_in_the_cache(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    wanted = (_new_rpm(world, "libfoo"), _new_rpm(world, "newdep"))
    cache, indexes, fetched = _prefetch(world, tmp_path / "cache", ("libfoo", "newdep", "no-such-package"),
                                        monkeypatch, wait_for=wanted)
    for rpm in wanted:
        # The oracle: the file the repository serves, by its own sha256.
        assert cache.lookup(_sha256(rpm), rpm.stat().st_size) is not None, rpm.name
    assert len(indexes) == 1
    assert sorted(fetched) == sorted(p.name for p in wanted)  # foo-tools is not named: not fetched


def test_a_repository_whose_signature_cannot_be_checked_is_not_read_ahead(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # repo_gpgcheck=1 and no repomd.xml.asc here: nothing verifies it before the plan (a signed repository whose
    # signature verifies with the keys read so far is read ahead: tests/test_rpm_read_ahead.py)
    text = (world.root / "etc/yum.repos.d/copa-test.repo").read_text() + "repo_gpgcheck=1\n"
    _, indexes, fetched = _prefetch(world, tmp_path / "cache", ("libfoo",), monkeypatch, text)
    assert indexes == [] and fetched == []  # its primary is not decompressed before the plan verifies repomd
    assert not list((tmp_path / "cache" / "derived").glob("rpm-primary-*.rows"))


def _patch_layer(world: World, tmp: Path, capsys: pytest.CaptureFixture[str]) -> str:
    tmp.mkdir(parents=True)
    report = write_report(tmp / "trivy.json", {"libfoo": ("1.0-1.el9", "1.1-1.el9")}, os_version="9.4",
                          family="redhat")
    os.environ["COPA_CACHE_DIR"] = str(tmp / "cache")
    os.environ["SOURCE_DATE_EPOCH"] = "1704067200"
    try:
        code = main(["patch", "-i", f"oci:{world.layout}:{REF}", "-r", str(report), "--oci-dir", str(tmp / "out"),
                     "-t", "patched", "--json", "--progress", "quiet"])
    finally:
        del os.environ["COPA_CACHE_DIR"], os.environ["SOURCE_DATE_EPOCH"]
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    index = json.loads((tmp / "out/index.json").read_text())
    manifest = json.loads((tmp / "out/blobs/sha256" / index["manifests"][0]["digest"].split(":")[1]).read_text())
    return str(manifest["layers"][-1]["digest"])


def test_layer_is_the_same_with_and_without_downloading_ahead(world: World, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    fetched: list[str] = []
    real = prefetch.MetadataPrefetch._fetch_quietly

    def fetch(f: Any, item: Any) -> None:
        fetched.append(item.what)
        real(f, item)

    monkeypatch.setattr(prefetch.MetadataPrefetch, "_fetch_quietly", staticmethod(fetch))
    ahead = _patch_layer(world, tmp_path / "ahead", capsys)
    assert fetched == ["libfoo-1.1-1.el9.x86_64.rpm"]

    def nothing(*_: Any) -> None:
        return None

    monkeypatch.setattr(prefetch.MetadataPrefetch, "_download_ahead", nothing)
    assert _patch_layer(world, tmp_path / "plain", capsys) == ahead
