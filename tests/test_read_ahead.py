"""Reading packages ahead (copa/pkg/dpkg/prefetch.py): while the image is read, the newest versions of the reported
packages are downloaded and unpacked. It may change how fast a patch is, never what it produces: the patch layer
is byte for byte the one built without reading ahead, and a read-ahead of other files than the verified plan picks
is not used. The patched tree itself is checked against real dpkg in tests/test_dpkg_hermetic.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import copa.pkg.dpkg.prefetch as prefetch
import copa.pkg.dpkg.version
from copa.cli import main
from copa.pkg.fetch import FetchItem
from tests.support import debimage
from tests.support.aptrepo import AptRepo, RepoServer
from tests.support.trivy import write_report


def _patch_layer(base: debimage.BaseImage, repo: AptRepo, server: RepoServer, tmp: Path) -> str:
    tmp.mkdir(parents=True, exist_ok=True)
    out = tmp / "layout"
    report = write_report(tmp / "trivy.json", debimage.FIXES)
    code = main(["patch", "-i", base.image_ref, "-r", str(report), "--oci-dir", str(out), "-t", "patched",
                 "--ignore-errors", "--progress", "quiet", *debimage.copa_args(server.url, repo)])
    assert code == 0
    index = json.loads((out / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((out / "blobs/sha256" / digest).read_text())
    return str(manifest["layers"][-1]["digest"])


def _record_takes(monkeypatch: pytest.MonkeyPatch, wait: bool) -> list[bool]:
    """Every take() and whether it handed contents over; with `wait`, the plan waits for the reads ahead to end,
    so that they are all there to take (on a busy machine they may otherwise still be queued)."""
    taken: list[bool] = []
    original_take = prefetch.ReadAhead.take
    original_join = prefetch.IndexPrefetch.join

    def take(self: prefetch.ReadAhead, sha256: str) -> object:
        got = original_take(self, sha256)
        taken.append(got is not None)
        return got

    def join(self: prefetch.IndexPrefetch) -> None:
        original_join(self)
        if wait and self._thread is not None:
            self._thread.join()
            ahead = self.ahead()
            assert isinstance(ahead, prefetch.ReadAhead)
            for future in list(ahead._reads.values()):
                future.exception()

    monkeypatch.setattr(prefetch.ReadAhead, "take", take)
    monkeypatch.setattr(prefetch.IndexPrefetch, "join", join)
    return taken


def test_layer_is_the_same_with_and_without_reading_ahead(base: debimage.BaseImage, repo: AptRepo,
                                                          server: RepoServer, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPA_CACHE_DIR", str(tmp_path / "cache-a"))
    taken = _record_takes(monkeypatch, wait=True)
    ahead = _patch_layer(base, repo, server, tmp_path / "a")
    assert taken and any(taken), "nothing was read ahead"
    monkeypatch.setattr(prefetch.ReadAhead, "submit", lambda *_a, **_k: None)
    monkeypatch.setenv("COPA_CACHE_DIR", str(tmp_path / "cache-b"))
    plain = _patch_layer(base, repo, server, tmp_path / "b")
    assert ahead == plain


def test_files_the_plan_does_not_pick_are_not_used(base: debimage.BaseImage, repo: AptRepo, server: RepoServer,
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What was read ahead is not what the verified plan picks (here the oldest versions the repository holds, as
    an index that changed in between or a guess gone wrong would give): it is read, none of it is taken, and the
    layer is what it is without reading ahead."""
    monkeypatch.setattr(prefetch, "compare_versions", lambda a, b: -copa.pkg.dpkg.version.compare_versions(a, b))
    monkeypatch.setenv("COPA_CACHE_DIR", str(tmp_path / "cache-a"))
    taken = _record_takes(monkeypatch, wait=True)
    guessed_wrong = _patch_layer(base, repo, server, tmp_path / "a")
    assert taken and not any(taken)
    monkeypatch.setattr(prefetch.ReadAhead, "submit", lambda *_a, **_k: None)
    monkeypatch.setenv("COPA_CACHE_DIR", str(tmp_path / "cache-b"))
    assert _patch_layer(base, repo, server, tmp_path / "b") == guessed_wrong


def test_each_release_file_is_downloaded_once(base: debimage.BaseImage, repo: AptRepo, server: RepoServer,
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan verifies the InRelease the prefetch downloaded instead of asking the mirror for it again."""
    monkeypatch.setenv("COPA_CACHE_DIR", str(tmp_path / "cache"))
    before = len(server.requests)
    _patch_layer(base, repo, server, tmp_path / "a")
    asked = [r for r in server.requests[before:] if r.endswith("/InRelease")]
    assert asked and len(asked) == len(set(asked)), asked


def test_reads_the_plan_does_not_name_are_cancelled(repo: AptRepo, tmp_path: Path) -> None:
    """Once the plan is made, queued reads of files it does not name never start (a report may name packages the
    image lacks); the ones it names are still taken. (Their downloads started at once, a few in parallel: each
    file is fetched once by its download and once more, from the cache, by its read.)"""
    import threading

    debs = {name: repo.deb(name, "2.0") for name in ("app", "conf", "libfoo1")}
    release = threading.Event()
    fetched: list[str] = []

    class Fetcher:
        def fetch(self, item: FetchItem) -> Path:
            fetched.append(item.what)
            if item.what == "app":
                release.wait(30)  # the one reader is busy with the first file while the plan is made
            return debs[item.what]

    ahead = prefetch.ReadAhead(tmp_path / "ahead")
    try:
        items = _submit_all(ahead, Fetcher(), debs)
        ahead.keep_only({items["app"].sha256, items["libfoo1"].sha256})
        release.set()
        # The one reader goes through its queue in order: once libfoo1 (queued after conf) is read, conf has been
        # skipped or read.
        ahead._reads[items["libfoo1"].sha256].result(30)
        assert sorted(fetched) == ["app", "app", "conf", "libfoo1", "libfoo1"]  # conf: its download, no read
        got = ahead.take(items["app"].sha256)
        assert got is not None and b"Package: app" in got.control
        assert ahead.take(items["conf"].sha256) is None
    finally:
        release.set()
        ahead.close()


def test_downloads_do_not_wait_for_the_reader(repo: AptRepo, tmp_path: Path) -> None:
    """The downloads of the files read ahead run from the moment they are submitted, not one by one on the reader
    thread: here the first file's download finishes only once the last one's has started (fetched inside the
    read, as before, the last download waited for the first read and this one timed out)."""
    import threading

    debs = {name: repo.deb(name, "2.0") for name in ("app", "conf", "libfoo1")}
    last_started = threading.Event()
    waited: list[bool] = []

    class Fetcher:
        def fetch(self, item: FetchItem) -> Path:
            if item.what == "libfoo1":
                last_started.set()
            if item.what == "app" and not waited:
                waited.append(last_started.wait(10))
            return debs[item.what]

    ahead = prefetch.ReadAhead(tmp_path / "ahead")
    try:
        items = _submit_all(ahead, Fetcher(), debs)
        got = ahead.take(items["app"].sha256)
        assert waited == [True]
        assert got is not None and b"Package: app" in got.control
    finally:
        ahead.close()


def _submit_all(ahead: prefetch.ReadAhead, fetcher: object, debs: dict[str, Path]) -> dict[str, FetchItem]:
    """Every .deb of `debs` submitted to `ahead`, in order, fetched by `fetcher`; their FetchItems by name."""
    items = {name: FetchItem(f"http://x/{name}", f"{i:064x}", None, name) for i, name in enumerate(debs)}
    for name, item in items.items():
        ahead.submit_deb(fetcher, item, name)  # type: ignore[arg-type]
    return items
