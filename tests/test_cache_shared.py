"""One cache directory shared by many copa processes (copa/pkg/cache.py), with real `copa patch` processes.

The hermetic Debian image (tests/support/debimage.py) is patched from its signed local repository. The oracle of a
patch is a run alone with a private cache (same SOURCE_DATE_EPOCH: same bytes, same digest); the oracle of the
cache's entries is `sha256sum`, the coreutils tool, over every file under its final name.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from copa.pkg.cache import Cache
from tests.support import debimage
from tests.support.aptrepo import AptRepo, RepoServer
from tests.support.trivy import write_report

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "COPA_DEBUG": "", "SOURCE_DATE_EPOCH": "1700000000"}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(tmp_path_factory.mktemp("report") / "trivy.json", debimage.FIXES)


def _argv(report: Path, out: Path, cache: Path, url: str, repo: AptRepo) -> list[str]:
    return [sys.executable, "-m", "copa", "patch", "-i", debimage.base_image().image_ref, "-r", str(report),
            "--oci-dir", str(out), "-t", "patched", "--ignore-errors", "--json", "--cache-dir", str(cache),
            *debimage.copa_args(url, repo)]


def _patch(report: Path, out: Path, cache: Path, url: str, repo: AptRepo,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_argv(report, out, cache, url, repo), cwd=ROOT, capture_output=True, text=True,
                          env=env or ENV, timeout=300)


def _digest(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    digest = doc["digest"]
    assert isinstance(digest, str)
    return digest


@pytest.fixture(scope="module")
def alone(report: Path, repo: AptRepo, server: RepoServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The digest of the patch made by one process with a cache of its own."""
    work = tmp_path_factory.mktemp("alone")
    return _digest(_patch(report, work / "out", work / "cache", server.url, repo))


def _check_entries(cache: Path) -> None:
    """No temporary file left, and every entry is what its name (or its derived sum) says, by sha256sum."""
    assert not [p for p in cache.rglob(".tmp-*")], "a temporary file was left behind"
    blobs = sorted((cache / "sha256").rglob("*"))
    blobs = [p for p in blobs if p.is_file()]
    assert blobs
    proc = subprocess.run(["sha256sum", *map(str, blobs)], capture_output=True, text=True, check=True)
    for line in proc.stdout.splitlines():
        digest, name = line.split(maxsplit=1)
        assert Path(name).name == digest, f"{name} holds {digest}"
    for entry in (p for p in (cache / "derived").rglob("*") if p.is_file()):
        name = entry.relative_to(cache / "derived")
        want = (cache / "derived-sums" / name).read_text().strip()
        got = subprocess.run(["sha256sum", str(entry)], capture_output=True, text=True, check=True).stdout.split()[0]
        assert got == want, f"derived entry {name} does not match its sum"


def test_eight_processes_share_one_cache(report: Path, repo: AptRepo, server: RepoServer, alone: str,
                                         tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    procs = [subprocess.Popen(_argv(report, tmp_path / f"out{i}", cache, server.url, repo), cwd=ROOT, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(8)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    assert [_digest(r) for r in results] == [alone] * 8
    _check_entries(cache)


class _StallingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the repository; the first .deb asked for gets half its body, then the connection hangs until the test
    releases it (by then the client has been killed)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        server: Any = self.server
        path = self.path.split("?", 1)[0]
        if not path.endswith(".deb") or server.stalled.is_set():
            super().do_GET()
            return
        data = Path(self.translate_path(path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        server.stalled_path = path
        server.stalled.set()
        server.release.wait(120)


@pytest.fixture
def stalling(repo: AptRepo) -> Iterator[Any]:
    httpd: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_StallingHandler, directory=str(repo.root)))
    httpd.daemon_threads = True
    httpd.stalled = threading.Event()
    httpd.release = threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.release.set()
        httpd.shutdown()
        httpd.server_close()


def test_a_process_killed_mid_download_leaves_nothing_served(report: Path, repo: AptRepo, server: RepoServer,
                                                              stalling: Any, alone: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    url = f"http://127.0.0.1:{stalling.server_address[1]}"
    proc = subprocess.Popen(_argv(report, tmp_path / "killed", cache, url, repo), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert stalling.stalled.wait(120), "copa never asked for a package"
        # copa opened its temporary file and is reading the body the server holds back (the half sent is in
        # copa's read buffer: it reads a MiB at a time and these packages are small): kill it there.
        deadline = time.monotonic() + 30
        while not list((cache / "sha256").rglob(".tmp-*")):
            assert time.monotonic() < deadline, "no partial download in the cache"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    stalled = repo.root / stalling.stalled_path.lstrip("/")
    sha = hashlib.sha256(stalled.read_bytes()).hexdigest()
    partial_files = list((cache / "sha256").rglob(".tmp-*"))
    assert partial_files, "the killed download left no temporary file (was the kill mid-transfer?)"
    # (the kill may also land while another of its threads writes a derived entry: that file is left too)
    left = list(cache.rglob(".tmp-*"))
    assert Cache(cache).lookup(sha, stalled.stat().st_size) is None, "a partial package is served"
    # The next run, against the healthy server, succeeds with the same image and publishes the package whole.
    assert _digest(_patch(report, tmp_path / "next", cache, server.url, repo)) == alone
    assert Cache(cache).lookup(sha, stalled.stat().st_size) is not None
    # The dead process's temporary file goes once it is old enough to be nobody's.
    assert all(p.exists() for p in left)
    old = time.time() - 2 * 3600
    for p in left:
        os.utime(p, (old, old))
    usage = Cache(cache).evict()
    assert usage is not None and usage.stale_tmp == len(left)
    assert not list(cache.rglob(".tmp-*"))
    _check_entries(cache)


def test_a_corrupt_entry_is_fetched_again(report: Path, repo: AptRepo, server: RepoServer, alone: str,
                                          tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert _digest(_patch(report, tmp_path / "first", cache, server.url, repo)) == alone
    deb = repo.deb("app", "2.0")
    sha = hashlib.sha256(deb.read_bytes()).hexdigest()
    entry = Cache(cache).path_for(sha)
    derived = next((cache / "derived").glob("packages-text-*"))
    derived_text = derived.read_bytes()
    for damaged in (entry, derived):
        data = bytearray(damaged.read_bytes())
        data[len(data) // 2] ^= 0x01  # one bit, same size: only a content check sees it
        damaged.write_bytes(bytes(data))
    # The stored patch layer would spare the second run the package altogether: forget it, so the .deb is needed.
    shutil.rmtree(cache / "derived" / "patch-layers")
    before = len(server.requests)
    assert _digest(_patch(report, tmp_path / "second", cache, server.url, repo)) == alone
    fetched = server.requests[before:]
    assert any(p.endswith("/app_2.0_amd64.deb") for p in fetched), "the damaged package was not fetched again"
    assert derived.read_bytes() == derived_text, "the damaged index text was not rebuilt from its download"
    _check_entries(cache)


def test_eviction_keeps_the_cache_under_its_bound(tmp_path: Path) -> None:
    """Least recently used first; entries used within the grace period stay; the sweep leaves <= 90% of the bound."""
    filling = Cache(tmp_path / "c", max_bytes=1 << 30)
    day = time.time() - 86400
    names = []
    for i in range(20):
        data = bytes([i]) * 4096
        sha = hashlib.sha256(data).hexdigest()
        path = filling.store_stream(io.BytesIO(data), sha, len(data), f"entry {i}")
        os.utime(path, (day + i, day + i))  # entry i last used i seconds after the oldest
        names.append((sha, path))
    filling.write_named("parsed/x", lambda out: out.write(b"y" * 4096))
    cache = Cache(tmp_path / "c", max_bytes=10 * 4096)
    os.utime(cache.named("parsed/x"), (day - 10, day - 10))  # the oldest of all
    # Entry 3 is used now: it becomes the most recent.
    old = time.time() - 3600
    os.utime(names[3][1], (old, old))
    assert cache.lookup(names[3][0], 4096) is not None
    usage = cache.evict()
    assert usage is not None
    total = sum(p.stat().st_size for p in (tmp_path / "c" / "sha256").rglob("*") if p.is_file())
    total += sum(p.stat().st_size for p in (tmp_path / "c" / "derived").rglob("*") if p.is_file())
    assert total == usage.bytes <= 9 * 4096
    kept = [i for i, (_, p) in enumerate(names) if p.exists()]
    assert kept == [3, *range(20 - len(kept) + 1, 20)], kept
    assert not cache.named("parsed/x").exists() and not (tmp_path / "c" / "derived-sums" / "parsed/x").exists()
    # Nothing is removed while it is in use (within the grace period), even beyond the bound.
    fresh = Cache(tmp_path / "d", max_bytes=4096)
    for i in range(4):
        data = bytes([i]) * 4096
        fresh.store_stream(io.BytesIO(data), hashlib.sha256(data).hexdigest(), 4096, "fresh")
    usage = fresh.evict()
    assert usage is not None and usage.removed == 0 and usage.bytes == 4 * 4096


def test_the_bound_comes_from_the_environment(report: Path, repo: AptRepo, server: RepoServer, alone: str,
                                              tmp_path: Path) -> None:
    proc = _patch(report, tmp_path / "bad", tmp_path / "cache", server.url, repo,
                  env={**ENV, "COPA_CACHE_MAX_BYTES": "lots"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("copa: error: COPA_CACHE_MAX_BYTES='lots' is not a size")
    assert not (tmp_path / "bad").exists()
    # A tiny bound still patches: what the run uses is within its grace period and stays.
    proc = _patch(report, tmp_path / "tiny", tmp_path / "cache", server.url, repo,
                  env={**ENV, "COPA_CACHE_MAX_BYTES": "1K"})
    assert _digest(proc) == alone
