"""Kill-anywhere safety: `copa patch` SIGKILLed in every phase of a run leaves nothing that points at missing or
partial content, a cache that serves only verified entries, and a next run that succeeds with the same digest.

The run is the real CLI patching the hermetic Debian image (tests/support/debimage.py) pulled from a real registry
(Debian's docker-registry) through the fault proxy, with its packages from the local signed repository (also behind
a fault proxy), writing all three outputs: --push, --oci-dir and --output-tar, with its own --cache-dir.

Kill points are found deterministically, not by timing: a proxy fault that fires mid-phase (a body cut in half and
held open, a request held unanswered, a request forwarded whose answer is held) sets an event, or a `--progress
json` event line appears on the pipe; the process is SIGKILLed right then. The oracles afterwards are real tools:
`skopeo copy` of every tag of the target repository, of every image named in the layout's index.json and of the
output tar (each verifies every blob's digest), and sha256 of every cache file against its name (the cache's
contract: `sha256/<2>/<hex>` holds the bytes hashing to <hex>; `derived/<name>` hashes to `derived-sums/<name>`).

CI runs SAMPLE (three kill points, about 25 s); `-m sweep` runs every point and timed kills across a whole run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import debimage
from tests.support.aptrepo import AptRepo, RepoServer
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.registry import RunningRegistry
from tests.support.trivy import write_report

ROOT = Path(__file__).resolve().parents[1]
KILL_WAIT = 30.0  # seconds a kill point may take to be reached before the test fails
HOLD = 60.0  # seconds a faulted request is held open: longer than any test, the kill comes first
SRC_REPO = "crash/src"
# Same inputs, same digest: the patched image's timestamps come from here, not the clock.
RUN_ENV = {**os.environ, "COPA_DEBUG": "", "SOURCE_DATE_EPOCH": "1700000000"}


@dataclass
class Env:
    registry: RunningRegistry
    reg_proxy: FaultProxy
    repo_proxy: FaultProxy
    repo: AptRepo
    report: Path
    reference_digest: str  # the patched image's digest from an undisturbed run
    layer_digest: str  # the source image's (only) layer


@dataclass
class Kill:
    """One kill point: `faults` are armed on the registry/repository proxies (the first one to fire triggers the
    kill), or `event` picks a --progress json line."""

    name: str
    registry_faults: list[Fault] = field(default_factory=list)
    repo_faults: list[Fault] = field(default_factory=list)
    event: Callable[[dict[str, object]], bool] | None = None
    midway: str = ""  # a glob (under the work directory) that must match right after the kill: proof it landed


def _skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, check=False, timeout=120)


def _argv(env: Env, work: Path, target: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "copa", "patch", "-i", f"{env.reg_proxy.host}/{SRC_REPO}:1", "-r", str(env.report),
            "-t", f"{env.reg_proxy.host}/{target}:1", "--push", "--oci-dir", str(work / "out"),
            "--output-tar", str(work / "out.tar"), "--cache-dir", str(work / "cache"), "--ignore-errors",
            "--json", "--mirror", f"{debimage.REPO_URL}=http://{env.repo_proxy.host}", "--keyring",
            str(env.repo.key.keyring) if env.repo.key else "", *extra]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=RUN_ENV)


@pytest.fixture(scope="module")
def env(anon_registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    repo = debimage.hermetic_repo()
    base = debimage.base_image()
    copied = _skopeo("copy", "--dest-tls-verify=false", f"oci:{base.layout}:{base.ref}",
                     f"docker://{anon_registry.host}/{SRC_REPO}:1")
    assert copied.returncode == 0, copied.stderr
    manifest = json.loads((base.layout / "blobs/sha256" / _root_digest(base.layout, base.ref)).read_text())
    report = write_report(tmp_path_factory.mktemp("crash-report") / "trivy.json", debimage.FIXES)
    with RepoServer(repo.root) as server:
        repo_proxy = FaultProxy(server.url.removeprefix("http://")).start()
        reg_proxy = FaultProxy(anon_registry.host).start()
        try:
            e = Env(anon_registry, reg_proxy, repo_proxy, repo, report, "", manifest["layers"][0]["digest"])
            work = tmp_path_factory.mktemp("crash-reference")
            proc = _run(_argv(e, work, "crash/reference"))
            assert proc.returncode == 0, proc.stderr
            e.reference_digest = json.loads(proc.stdout)["digest"]
            yield e
        finally:
            reg_proxy.stop()
            repo_proxy.stop()


def _root_digest(layout: Path, ref: str) -> str:
    index = json.loads((layout / "index.json").read_text())
    entry = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == ref)
    return str(entry["digest"]).split(":")[1]


def _kill_at(env: Env, kill: Kill, argv: list[str], work: Path) -> str:
    """Start copa, SIGKILL it at the kill point; returns what the process printed (for failure messages). With
    `midway`, the kill waits for its file too: a fault fires as its answer starts, a moment before copa opens the
    file it writes the held body into (and copa cannot get past the held body)."""
    for f in kill.registry_faults:
        env.reg_proxy.add(f)
    for f in kill.repo_faults:
        env.repo_proxy.add(f)
    # The killed process's temporary directory (which nothing can remove after a SIGKILL) goes beside the test's
    # own, not into the machine's /tmp.
    tmp = Path(tempfile.mkdtemp(prefix="killed-tmp-", dir=work.parent))
    proc = subprocess.Popen([*argv, "--progress", "json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**RUN_ENV, "TMPDIR": str(tmp)})
    hit = threading.Event()
    lines: list[str] = []
    labels: dict[object, object] = {}  # task id -> label: a "done" event names its task only by id

    def watch() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if kill.event is None or not line.startswith("{"):
                continue
            event = json.loads(line)
            event.setdefault("label", labels.get(event.get("id"), ""))
            labels.setdefault(event.get("id"), event["label"])
            if kill.event(event):
                hit.set()
        hit.set()  # stream ended: the process is gone (a missed kill point is caught below)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    # A "pass" fault only lets a first matching request through untouched, so the next one is the kill point.
    faults = [f for f in (*kill.registry_faults, *kill.repo_faults) if f.kind != "pass"]
    deadline = time.monotonic() + KILL_WAIT
    try:
        while time.monotonic() < deadline:
            reached = any(f.fired.is_set() for f in faults) or hit.is_set()
            if reached and (not kill.midway or list(work.glob(kill.midway)) or proc.poll() is not None):
                break
            time.sleep(0.005)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        for f in (*kill.registry_faults, *kill.repo_faults):
            f.count = 0  # disarm what did not fire, so the next run is not faulted
        if proc.stdout is not None:
            proc.stdout.close()
        watcher.join(5)
    assert alive, f"{kill.name}: copa ended before its kill point:\n{''.join(lines)}"
    assert any(f.fired.is_set() for f in faults) or kill.event is not None, f"{kill.name}: no fault fired"
    return "".join(lines)


# --------------------------------------------------------------------------------------------- the oracles


def _registry_tags(registry: RunningRegistry, repository: str) -> list[str]:
    try:
        with urllib.request.urlopen(f"{registry.url}/v2/{repository}/tags/list", timeout=10) as resp:
            return list(json.load(resp).get("tags") or [])
    except urllib.error.HTTPError as e:
        assert e.code == 404, e
        return []


def check_registry(registry: RunningRegistry, repository: str, scratch: Path) -> list[str]:
    """Every tag of `repository` copies whole (skopeo verifies each blob against its digest)."""
    tags = _registry_tags(registry, repository)
    for tag in tags:
        dest = scratch / f"reg-{tag}"
        proc = _skopeo("copy", "--src-tls-verify=false", f"docker://{registry.host}/{repository}:{tag}", f"dir:{dest}")
        assert proc.returncode == 0, f"tag {repository}:{tag} points at missing or corrupt content: {proc.stderr}"
    return tags


def check_layout(layout: Path, scratch: Path) -> list[str]:
    """Every index.json entry copies whole; index.json itself is valid JSON (written atomically)."""
    index_path = layout / "index.json"
    if not index_path.exists():
        return []
    index = json.loads(index_path.read_text())
    names = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    for name in names:
        proc = _skopeo("copy", f"oci:{layout}:{name}", f"dir:{scratch / ('oci-' + name)}")
        assert proc.returncode == 0, f"layout entry {name} points at missing or corrupt content: {proc.stderr}"
    # umoci gc walks every file under blobs/<algorithm>/ as a digest: a stray temporary file there breaks it.
    copy = scratch / "gc-layout"
    shutil.copytree(layout, copy, symlinks=True)
    gc = subprocess.run(["umoci", "gc", "--layout", str(copy)], capture_output=True, text=True, check=False)
    assert gc.returncode == 0, f"umoci gc refuses the layout left behind: {gc.stderr}"
    return names


def check_tar(tar: Path, scratch: Path) -> bool:
    if not tar.exists():
        return False
    proc = _skopeo("copy", f"docker-archive:{tar}", f"dir:{scratch / 'tar'}")
    assert proc.returncode == 0, f"output tar {tar} is partial or corrupt: {proc.stderr}"
    return True


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def check_cache(cache: Path) -> int:
    """The cache's contract: an entry outside a `.tmp-` file is whole. Returns the number of entries checked."""
    checked = 0
    for path in sorted((cache / "sha256").rglob("*")) if (cache / "sha256").exists() else []:
        if path.is_file() and not path.name.startswith(".tmp-"):
            assert _sha256(path) == path.name, f"cache entry {path} does not hash to its name"
            checked += 1
    for path in sorted((cache / "derived").rglob("*")) if (cache / "derived").exists() else []:
        if path.is_file() and not path.name.startswith(".tmp-"):
            sum_path = cache / "derived-sums" / path.relative_to(cache / "derived")
            assert sum_path.exists(), f"derived cache entry {path} has no sum: nothing can verify it"
            assert _sha256(path) == sum_path.read_text().strip(), f"derived cache entry {path} is not what was summed"
            checked += 1
    return checked


def _assert_safe_then_rerun(env: Env, kill: Kill, work: Path, target: str, printed: str) -> None:
    scratch = work / "scratch"
    scratch.mkdir()
    tags = check_registry(env.registry, target, scratch)
    names = check_layout(work / "out", scratch)
    check_tar(work / "out.tar", scratch)
    check_cache(work / "cache")
    for tag in tags:  # a tag that exists must be the finished image, nothing else
        proc = _skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{env.registry.host}/{target}:{tag}")
        assert "sha256:" + hashlib.sha256(proc.stdout.encode()).hexdigest() == env.reference_digest, kill.name
    assert names in ([], ["1"]), (kill.name, names)
    shutil.rmtree(scratch)
    # The next run, on what the killed one left (its cache, half-written layout and tar), succeeds identically.
    proc = _run(_argv(env, work, target))
    assert proc.returncode == 0, f"{kill.name}: the run after the kill failed: {proc.stderr}\nkilled run:\n{printed}"
    assert json.loads(proc.stdout)["digest"] == env.reference_digest, kill.name
    scratch.mkdir()
    assert check_registry(env.registry, target, scratch) == ["1"]
    assert check_layout(work / "out", scratch) == ["1"]
    assert check_tar(work / "out.tar", scratch)
    assert check_cache(work / "cache") > 0
    leftovers = [p.name for p in work.iterdir() if p.name not in ("out", "out.tar", "cache", "scratch")]
    assert not leftovers, f"{kill.name}: files left beside the outputs: {leftovers}"


def _kind(kind: str, event: str = "start", label: str = "") -> Callable[[dict[str, object]], bool]:
    return lambda e: e.get("event") == event and e.get("kind") == kind and label in str(e.get("label", ""))


def _step(text: str) -> Callable[[dict[str, object]], bool]:
    return lambda e: e.get("event") == "step" and text in str(e.get("message", ""))


def kills(layer: str) -> list[Kill]:
    blob_put = r"/blobs/uploads/.*digest="
    return [
        Kill("pull-manifest", registry_faults=[Fault("stall", rf"/v2/{SRC_REPO}/manifests/", "GET", hold=HOLD)]),
        Kill("pull-layer", registry_faults=[Fault("truncate", rf"/v2/{SRC_REPO}/blobs/{layer}", "GET", hold=HOLD)]),
        Kill("index-download", repo_faults=[Fault("truncate", r"Packages", "GET", hold=HOLD)]),
        Kill("index-release", repo_faults=[Fault("stall", r"InRelease", "GET", hold=HOLD)]),
        Kill("package-download", repo_faults=[Fault("truncate", r"/app_2\.0_amd64\.deb", "GET", hold=HOLD)],
             midway="cache/sha256/*/.tmp-*"),
        Kill("cache-write-index", event=_kind("download", "done", "Packages")),
        Kill("cache-write-package", event=_kind("download", "done", ".deb")),
        Kill("layer-write", event=_kind("layer-write")),
        Kill("outputs", event=_step("writing ")),
        # The base layer read a second time, by the layout writer copying it (the first read was the scan).
        Kill("layout-blob-copy", registry_faults=[Fault("pass", rf"/v2/{SRC_REPO}/blobs/{layer}", "GET"),
                                                  Fault("truncate", rf"/v2/{SRC_REPO}/blobs/{layer}", "GET",
                                                        hold=HOLD)], midway="out/blobs/.tmp-*"),
        # Its third read, by the docker-archive writer (after the layout's).
        Kill("tar-layer-copy", registry_faults=[Fault("pass", rf"/v2/{SRC_REPO}/blobs/{layer}", "GET", count=2),
                                                Fault("truncate", rf"/v2/{SRC_REPO}/blobs/{layer}", "GET",
                                                      hold=HOLD)], midway="*out.tar*tmp*"),
        Kill("blob-upload-start", registry_faults=[Fault("stall", r"/blobs/uploads/", "POST", hold=HOLD)]),
        Kill("blob-upload", registry_faults=[Fault("stall", blob_put, "PUT", hold=HOLD)]),
        Kill("blob-upload-committed", registry_faults=[Fault("truncate", blob_put, "PUT", hold=HOLD)]),
        Kill("manifest-push", registry_faults=[Fault("stall", r"/manifests/1$", "PUT", hold=HOLD)]),
        Kill("manifest-push-committed", registry_faults=[Fault("truncate", r"/manifests/1$", "PUT", hold=HOLD)]),
    ]


# layout-blob-copy found the one fix this file forced (temporary files out of blobs/sha256/): it stays in CI.
SAMPLE = ("package-download", "manifest-push-committed", "layout-blob-copy")
ALL = tuple(k.name for k in kills("x"))


def _one(env: Env, name: str, tmp_path: Path) -> None:
    kill = next(k for k in kills(env.layer_digest) if k.name == name)
    target = f"crash/{name}"
    printed = _kill_at(env, kill, _argv(env, tmp_path, target), tmp_path)
    if kill.midway:
        assert list(tmp_path.glob(kill.midway)), f"{name}: nothing matches {kill.midway}: the kill missed its phase"
    _assert_safe_then_rerun(env, kill, tmp_path, target, printed)


@pytest.mark.parametrize("name", SAMPLE)
def test_killed_at(env: Env, name: str, tmp_path: Path) -> None:
    _one(env, name, tmp_path)


@pytest.mark.sweep
@pytest.mark.parametrize("name", [n for n in ALL if n not in SAMPLE])
def test_killed_at_every_point(env: Env, name: str, tmp_path: Path) -> None:
    _one(env, name, tmp_path)


TIMED_KILLS = 24  # evenly spaced SIGKILLs across an undisturbed run, in the sweep


@pytest.mark.sweep
def test_killed_at_timed_points(env: Env, tmp_path: Path) -> None:
    """Kills spread over a whole run by time (what a scheduler's OOM-kill or node loss does), one cache, layout and
    tar directory reused throughout as a retried job would reuse them."""
    start = time.monotonic()
    _run(_argv(env, tmp_path / "timing", "crash/timing"))
    span = time.monotonic() - start
    for i in range(TIMED_KILLS):
        work = tmp_path / f"t{i}"
        work.mkdir()
        target = f"crash/timed{i}"
        proc = subprocess.Popen(_argv(env, work, target), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=RUN_ENV)
        time.sleep(span * i / TIMED_KILLS)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _assert_safe_then_rerun(env, Kill(f"timed {i}/{TIMED_KILLS}"), work, target, "")


# --------------------------------------------------------------------------------------------- the fault soak

SOAK_RUNS = 2  # CI's share of benchmarks/soak_faults.py (100 runs at 10%): fewer runs, a higher fault rate
SOAK_RATE = 0.25
SOAK_TIMEOUT = 1.0  # copa's --timeout in CI's soak: stalls cost 1.5 s each instead of 3


def _soak_module() -> Any:
    spec = importlib.util.spec_from_file_location("soak_faults", ROOT / "benchmarks" / "soak_faults.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_fault_soak_leaves_no_partial_tag_or_corrupt_cache(anon_registry: RunningRegistry, tmp_path: Path) -> None:
    """Random resets, 5xx, 429s, cut bodies and stalls on pull, package download and push: whatever each run's
    outcome, no tag is partial, no cache entry corrupt, and a failure is one clean line. (The success share is the
    benchmark's figure: two runs are too few to judge it.)"""
    soak = _soak_module()
    outcome, run = soak.run_soak(anon_registry, tmp_path, SOAK_RUNS, SOAK_RATE, seed=7, timeout=SOAK_TIMEOUT)
    print("\n".join([*outcome.errors, soak.summary(outcome, run, SOAK_RATE)]))
    assert sum(run.reg_proxy.injected.values()) + sum(run.repo_proxy.injected.values()) > 0, "no fault was injected"
    assert outcome.runs == SOAK_RUNS
    assert outcome.partial_tags == 0
    assert outcome.corrupt_cache == 0
    assert not outcome.bad_errors, outcome.bad_errors


def test_layer_body_cut_midway_is_resumed(env: Env, tmp_path: Path) -> None:
    """A reset inside the base layer's body (the answer announced its whole length) is resumed with a Range request
    where it stopped, and the run gives the undisturbed digest. (Before, the soak found it failing the run: the
    layer's reader cannot restart what the tar reader has already consumed.)"""
    cut = Fault("truncate", rf"/v2/{SRC_REPO}/blobs/{env.layer_digest}", "GET")
    env.reg_proxy.add(cut)
    proc = _run(_argv(env, tmp_path, "crash/resumed"))
    cut.count = 0
    assert cut.fired.is_set()
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["digest"] == env.reference_digest
    layer_gets = [status for method, path, status in env.reg_proxy.log
                  if method == "GET" and path.endswith(f"/blobs/{env.layer_digest}")]
    assert 206 in layer_gets, layer_gets  # the registry was asked for the rest, not the whole blob again


def test_cut_inrelease_is_fetched_again(env: Env, tmp_path: Path) -> None:
    """An InRelease whose body stops half-way (its full length announced) is a transient fault, fetched again; the
    soak found it read as whole and refused as tampered with (exit 5). Both fetches are cut: the warm-up's and the
    plan's."""
    cut = Fault("truncate", r"/InRelease$", "GET", count=2)
    env.repo_proxy.add(cut)
    proc = _run(_argv(env, tmp_path, "crash/inrelease"))
    remaining, cut.count = cut.count, 0
    assert remaining == 0 and cut.fired.is_set()
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["digest"] == env.reference_digest
