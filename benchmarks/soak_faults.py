#!/usr/bin/env python3
"""Fault soak: `copa patch` run RUNS times through fault proxies that fail RATE of all requests, on the pull (manifest,
config, layer), the package repository (Release, Packages, .debs) and the push (blob uploads, mounts, manifests).

Faults, drawn at random per request: connection reset (dropped without an answer), 500, 503, 429 with Retry-After,
a body cut in half after the full Content-Length was announced, and a stall held past copa's --timeout. Each run
is the real CLI patching the hermetic Debian image (tests/support/debimage.py) from Debian's docker-registry into a
new tag of it, with a cold cache of its own. After every run, whatever its exit:
  * every tag of the target repository copies whole (`skopeo copy`, which checks every blob's digest), and one
    that exists is the image an undisturbed run makes (same digest): a partial tag is one that fails this;
  * every cache entry hashes to its name (derived ones to their recorded sum): a corrupt entry fails this;
  * a failed run ended with one `copa: error:` line, an exit code of copa's, and no traceback.
The last line prints the figures; the target is >= 95% of runs succeeding at a 10% fault rate.

    .venv/bin/python benchmarks/soak_faults.py [--runs 100] [--rate 0.1] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import debimage  # noqa: E402
from tests.support.aptrepo import RepoServer  # noqa: E402
from tests.support.faultproxy import Fault, FaultProxy  # noqa: E402
from tests.support.registry import RunningRegistry, start_registry  # noqa: E402
from tests.support.trivy import write_report  # noqa: E402

RUNS = 100
RATE = 0.10
TARGET_SUCCESS = 0.95
TIMEOUT = 2.0  # copa's --timeout (per network operation) in the soak: a stall is held STALL seconds, past it
STALL = TIMEOUT + 1.0
KINDS = ("drop", "500", "503", "429", "truncate", "stall")
SRC = "soak/src"
COPA_EXIT_CODES = frozenset(range(2, 13))
RUN_ENV = {**os.environ, "COPA_DEBUG": "", "SOURCE_DATE_EPOCH": "1700000000"}


class RandomFaults(FaultProxy):
    """A fault proxy failing each request with probability `rate`, the kind drawn at random."""

    def __init__(self, upstream: str, rate: float, rng: random.Random, stall: float = STALL) -> None:
        super().__init__(upstream)
        self.rate = rate
        self.stall = stall
        self.rng = rng
        self.injected: dict[str, int] = {}
        self.requests = 0
        self._rng_lock = threading.Lock()

    def start(self) -> RandomFaults:
        super().start()
        assert self._server is not None
        # A client that gives up on a stalled or cut answer makes the handler's write fail: expected here, not news.
        self._server.handle_error = lambda *args: None  # type: ignore[method-assign]
        return self

    def _take(self, method: str, path: str) -> Fault | None:
        with self._rng_lock:
            self.requests += 1
            if self.rng.random() >= self.rate:
                return None
            kind = self.rng.choice(KINDS)
            self.injected[kind] = self.injected.get(kind, 0) + 1
        # The proxy answers "500"/"429" itself; a 503 is the same path with another status.
        if kind == "503":
            return Fault("500", path, method)
        return Fault(kind, path, method, retry_after=1, hold=self.stall if kind == "stall" else 0.0)


@dataclass
class Outcome:
    ok: int = 0
    failed: dict[int, int] = field(default_factory=dict)  # exit code -> runs
    partial_tags: int = 0
    corrupt_cache: int = 0
    bad_errors: list[str] = field(default_factory=list)  # failures that were not one clean line
    errors: list[str] = field(default_factory=list)  # every failed run's error line
    seconds: float = 0.0

    @property
    def runs(self) -> int:
        return self.ok + sum(self.failed.values())


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def corrupt_cache_entries(cache: Path) -> list[str]:
    """Cache entries that do not hash to their name (blobs) or to their recorded sum (derived entries)."""
    bad = []
    for path in sorted(cache.glob("sha256/*/*")):
        if path.is_file() and not path.name.startswith(".tmp-") and _sha256(path) != path.name:
            bad.append(str(path))
    for path in sorted(cache.glob("derived/**/*")):
        if not path.is_file() or path.name.startswith(".tmp-"):
            continue
        sum_path = cache / "derived-sums" / path.relative_to(cache / "derived")
        if not sum_path.exists() or _sha256(path) != sum_path.read_text().strip():
            bad.append(str(path))
    return bad


def partial_tags(registry: RunningRegistry, repository: str, digest: str, scratch: Path) -> list[str]:
    """Tags of `repository` that do not copy whole, or that hold another image than `digest`."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{registry.url}/v2/{repository}/tags/list", timeout=10) as resp:
            tags = list(json.load(resp).get("tags") or [])
    except urllib.error.HTTPError:
        return []
    bad = []
    for tag in tags:
        ref = f"docker://{registry.host}/{repository}:{tag}"
        dest = scratch / f"copy-{tag}"
        copied = subprocess.run(["skopeo", "copy", "--src-tls-verify=false", ref, f"dir:{dest}"],
                                capture_output=True, text=True, check=False)
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", ref], capture_output=True,
                             check=False).stdout
        import hashlib

        if copied.returncode != 0 or "sha256:" + hashlib.sha256(raw).hexdigest() != digest:
            bad.append(f"{repository}:{tag}")
        shutil.rmtree(dest, ignore_errors=True)
    return bad


@dataclass
class Soak:
    registry: RunningRegistry
    reg_proxy: RandomFaults
    repo_proxy: RandomFaults
    work: Path
    report: Path
    keyring: str
    reference: str = ""
    timeout: float = TIMEOUT

    def argv(self, n: int) -> list[str]:
        return [sys.executable, "-m", "copa", "patch", "-i", f"{self.reg_proxy.host}/{SRC}:1", "-r", str(self.report),
                "-t", f"{self.reg_proxy.host}/soak/run{n}:1", "--push", "--cache-dir", str(self.work / f"cache{n}"),
                "--ignore-errors", "--json", "--progress", "quiet", "--timeout", str(self.timeout), "--mirror",
                f"{debimage.REPO_URL}=http://{self.repo_proxy.host}", "--keyring", self.keyring]

    def one(self, n: int, outcome: Outcome) -> None:
        proc = subprocess.run(self.argv(n), cwd=ROOT, capture_output=True, text=True, env=RUN_ENV, timeout=600)
        if proc.returncode == 0:
            outcome.ok += 1
            if json.loads(proc.stdout)["digest"] != self.reference:
                outcome.partial_tags += 1
        else:
            outcome.failed[proc.returncode] = outcome.failed.get(proc.returncode, 0) + 1
            lines = proc.stderr.strip().splitlines()
            outcome.errors.append(f"run {n}: exit {proc.returncode}: {lines[-1] if lines else ''}")
            if (proc.returncode not in COPA_EXIT_CODES or "Traceback" in proc.stderr or not lines
                    or not lines[-1].startswith("copa: error: ")):
                outcome.bad_errors.append(f"run {n}: exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
        outcome.partial_tags += len(partial_tags(self.registry, f"soak/run{n}", self.reference, self.work))
        cache = self.work / f"cache{n}"
        outcome.corrupt_cache += len(corrupt_cache_entries(cache))
        shutil.rmtree(cache, ignore_errors=True)


def run_soak(registry: RunningRegistry, work: Path, runs: int, rate: float, seed: int,
             timeout: float = TIMEOUT) -> tuple[Outcome, Soak]:
    """`runs` patch runs at fault rate `rate` (pushed to `registry`, under `work`), copa's --timeout `timeout` (a
    stall is held half as long again). The source image is pushed and a reference digest taken by a run without
    faults first."""
    repo = debimage.hermetic_repo()
    base = debimage.base_image()
    copied = subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{base.layout}:{base.ref}",
                             f"docker://{registry.host}/{SRC}:1"], capture_output=True, text=True, check=False)
    if copied.returncode != 0:
        raise RuntimeError(f"pushing the source image failed: {copied.stderr}")
    report = write_report(work / "trivy.json", debimage.FIXES)
    rng = random.Random(seed)
    outcome = Outcome()
    with RepoServer(repo.root) as server:
        reg_proxy = RandomFaults(registry.host, 0.0, rng, timeout * 1.5).start()
        repo_proxy = RandomFaults(server.url.removeprefix("http://"), 0.0, rng, timeout * 1.5).start()
        soak = Soak(registry, reg_proxy, repo_proxy, work, report, str(repo.key.keyring) if repo.key else "",
                    timeout=timeout)
        try:
            proc = subprocess.run(soak.argv(0), cwd=ROOT, capture_output=True, text=True, env=RUN_ENV, timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"the run without faults failed: {proc.stderr}")
            soak.reference = json.loads(proc.stdout)["digest"]
            reg_proxy.rate = repo_proxy.rate = rate
            start = time.monotonic()
            for n in range(1, runs + 1):
                soak.one(n, outcome)
            outcome.seconds = time.monotonic() - start
        finally:
            reg_proxy.stop()
            repo_proxy.stop()
    return outcome, soak


def summary(outcome: Outcome, soak: Soak, rate: float) -> str:
    injected: dict[str, int] = {}
    for proxy in (soak.reg_proxy, soak.repo_proxy):
        for kind, n in proxy.injected.items():
            injected[kind] = injected.get(kind, 0) + n
    requests = soak.reg_proxy.requests + soak.repo_proxy.requests
    faults = ", ".join(f"{k} {v}" for k, v in sorted(injected.items()))
    failed = ", ".join(f"exit {k}: {v}" for k, v in sorted(outcome.failed.items())) or "none"
    share = outcome.ok / outcome.runs if outcome.runs else 0.0
    return (f"soak: {outcome.runs} runs at {rate:.0%} faults ({sum(injected.values())} of {requests} requests: "
            f"{faults}); failed runs: {failed}; partial tags {outcome.partial_tags}, corrupt cache entries "
            f"{outcome.corrupt_cache}, unclean errors {len(outcome.bad_errors)}; {outcome.seconds:.0f} s; "
            f"succeeded {outcome.ok}/{outcome.runs} = {share:.1%} (target >= {TARGET_SUCCESS:.0%})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--rate", type=float, default=RATE)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="copa-soak-"))
    registry = start_registry(work / "registry")
    try:
        outcome, soak = run_soak(registry, work, args.runs, args.rate, args.seed)
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    for line in [*outcome.errors, *outcome.bad_errors]:
        print(line)
    print(summary(outcome, soak, args.rate))
    clean = not outcome.partial_tags and not outcome.corrupt_cache and not outcome.bad_errors
    return 0 if clean and outcome.ok >= TARGET_SUCCESS * outcome.runs else 1


if __name__ == "__main__":
    sys.exit(main())
