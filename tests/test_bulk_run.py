"""copa bulk's runner on a real fleet: local worker processes and a real Dask cluster give the images that
`copa patch` gives for each image alone.

A real registry (docker-registry) holds a small fleet: the hermetic Debian image (tests/support/debimage.py) under
several repositories and tags, each with its own application layer (tests/support/fleet.py). The hermetic signed
repository upgrades every image. The oracle is `copa patch` run alone, once per image, as a separate process; its
pushed digests (SOURCE_DATE_EPOCH fixed, so the patch is reproducible) are what every sweep must push. Tags are read
back with skopeo, and skopeo copies every blob of every tag a sweep wrote (a tag pointing at a missing blob fails).
The Dask cluster is `dask scheduler` and two `dask worker` processes on 127.0.0.1, sharing one --cache-dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from copa.api import PatchOptions
from copa.bulk.job import Job
from copa.bulk.output import exit_code
from copa.bulk.runner import DaskExecutor, Event, LocalExecutor, Started, run
from copa.bulk.worker import CANCELLED, FAILED, PATCHED, SKIPPED, TIMEOUT_CODE, JobResult
from copa.pkg.base import RepositoryOptions
from tests.support import debimage, fleet
from tests.support.aptrepo import AptRepo, RepoServer
from tests.support.registry import RunningRegistry

ROOT = Path(__file__).resolve().parents[1]
EPOCH = "1700000000"
APPS = (("app-a", "1.0"), ("app-a", "1.1"), ("app-b", "2.0"), ("app-c", "3.0"))
PACKAGES = 5  # app, libnew (new), conf, libfoo1, foo-tools: what the hermetic repository upgrades without a report


@pytest.fixture(scope="module", autouse=True)
def reproducible() -> Iterator[None]:
    """One creation time for every patch, in this process and every process it starts."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", EPOCH)
        yield


@pytest.fixture(scope="module")
def images(anon_registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> list[fleet.FleetImage]:
    return fleet.push_fleet(anon_registry.host, "bulkrun", APPS, tmp_path_factory.mktemp("fleet"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared-cache")


@pytest.fixture(scope="module")
def template(server: RepoServer, repo: AptRepo, cache: Path) -> PatchOptions:
    assert repo.key is not None
    return PatchOptions(image="", push=True, ignore_errors=True, timeout=120, cache_dir=str(cache),
                        repos=RepositoryOptions(mirrors=((debimage.REPO_URL, server.url),),
                                                keyrings=(repo.key.keyring,)))


def copa(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "copa", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "COPA_DEBUG": "", **(env or {})})


@pytest.fixture(scope="module")
def oracle(images: list[fleet.FleetImage], server: RepoServer, repo: AptRepo, cache: Path) -> dict[str, str]:
    """source reference -> the digest `copa patch` alone pushes for it."""
    out = {}
    for image in images:
        proc = copa("patch", "-i", image.reference, "-t", image.target("single"), "--push", "--json",
                    "--cache-dir", str(cache), *fleet.patch_flags(server.url, repo))
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert len(doc["updates"]) == PACKAGES
        assert fleet.skopeo_digest(image.target("single")) == doc["digest"]
        out[image.reference] = doc["digest"]
    assert len(set(out.values())) == len(images)  # each app layer makes its own image: the check can tell them apart
    return out


def jobs_for(images: list[fleet.FleetImage], suffix: str) -> list[Job]:
    return [Job(i.repository, i.reference, i.target(suffix)) for i in images]


def missing_job(images: list[fleet.FleetImage], suffix: str) -> Job:
    host = images[0].host
    return Job("bulkrun/gone", f"{host}/bulkrun/gone:1.0", f"{host}/bulkrun/gone:1.0-{suffix}")


def check_against_oracle(results: list[JobResult], oracle: dict[str, str], tmp: Path) -> None:
    """Every patched job pushed the oracle's digest; its tag holds it, whole (skopeo copies every blob)."""
    for r in results:
        if r.result != PATCHED:
            continue
        assert r.updates == PACKAGES, r
        assert r.digest == oracle[r.job.source], r
        assert fleet.skopeo_digest(r.job.target) == r.digest
        fleet.skopeo_pull_all(r.job.target, tmp / r.job.target.rsplit("/", 1)[1].replace(":", "_"))


# ------------------------------------------------------------------------------------------------ Dask cluster


@dataclass
class Cluster:
    address: str
    scheduler: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]]


def _dask(*args: str, log: Path) -> subprocess.Popen[bytes]:
    # The workers import copa from this checkout (what "only copa installed" means here), with this environment.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("ab") as out:
        return subprocess.Popen([str(Path(sys.executable).parent / "dask"), *args], stdout=out, stderr=out, env=env,
                                cwd=log.parent)


@contextmanager
def dask_cluster(work: Path, workers: int = 2) -> Iterator[Cluster]:
    """`dask scheduler` on a free loopback port and `workers` single-threaded `dask worker` processes (no nanny:
    each worker is the process a test can kill)."""
    work.mkdir(parents=True, exist_ok=True)
    info = work / "scheduler.json"
    scheduler = _dask("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file",
                      str(info), log=work / "scheduler.log")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        deadline = time.monotonic() + 60
        while not info.exists() or not info.read_text().strip():
            assert scheduler.poll() is None, (work / "scheduler.log").read_text()
            assert time.monotonic() < deadline, "dask scheduler did not start"
            time.sleep(0.1)
        address = json.loads(info.read_text())["address"]
        for n in range(workers):
            procs.append(_dask("worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard", "--name",
                               f"w{n}", "--local-directory", str(work / f"w{n}"), log=work / f"worker{n}.log"))
        _wait_for_workers(address, workers)
        yield Cluster(address, scheduler, procs)
    finally:
        # Workers first, then the scheduler (a worker whose scheduler is gone keeps trying to reconnect).
        for proc in [*procs, scheduler]:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_for_workers(address: str, count: int) -> None:
    from distributed import Client

    with Client(address, timeout=30) as client:
        client.wait_for_workers(count, timeout=60)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, images: list[fleet.FleetImage]) -> Iterator[Cluster]:
    with dask_cluster(tmp_path_factory.mktemp("dask")) as c:
        yield c


# ------------------------------------------------------------------------------------------------ local and Dask


@pytest.fixture(scope="module")
def local_results(images: list[fleet.FleetImage], template: PatchOptions, oracle: dict[str, str]
                  ) -> list[JobResult]:
    return run([*jobs_for(images, "local"), missing_job(images, "local")], template, LocalExecutor(2))


def test_local_sweep_pushes_what_copa_patch_pushes_alone(local_results: list[JobResult], oracle: dict[str, str],
                                                         tmp_path: Path) -> None:
    assert [r.result for r in local_results] == [PATCHED] * len(APPS) + [FAILED]
    check_against_oracle(local_results, oracle, tmp_path)
    # Two worker processes shared the jobs.
    assert len({r.worker for r in local_results}) == 2


def test_a_missing_tag_fails_its_job_alone(local_results: list[JobResult]) -> None:
    gone = local_results[-1]
    assert gone.exit_code == 4 and "has no tag 1.0 in repository bulkrun/gone" in gone.error
    assert "\n" not in gone.error
    assert fleet.skopeo_digest(gone.job.target) is None
    assert exit_code(local_results) == 11


def test_dask_sweep_pushes_what_copa_patch_pushes_alone(cluster: Cluster, images: list[fleet.FleetImage],
                                                        template: PatchOptions, oracle: dict[str, str],
                                                        tmp_path: Path) -> None:
    results = run([*jobs_for(images, "dask"), missing_job(images, "dask")], template, DaskExecutor(cluster.address))
    assert [r.result for r in results] == [PATCHED] * len(APPS) + [FAILED]
    check_against_oracle(results, oracle, tmp_path)
    assert results[-1].exit_code == 4
    # The jobs ran in the cluster's two worker processes, not here.
    pids = {r.worker.rsplit(":", 1)[1] for r in results}
    assert len(pids) == 2 and str(os.getpid()) not in pids


def test_rerun_skips_what_is_patched_and_repatches_a_stale_target(local_results: list[JobResult],
                                                                  images: list[fleet.FleetImage],
                                                                  template: PatchOptions,
                                                                  oracle: dict[str, str], tmp_path: Path) -> None:
    """A second sweep skips every target that already is the patch of its source; a target tag holding another
    image (here app-a's patch copied over app-b's target) is patched again."""
    stale = images[2].target("local")
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
                    f"docker://{images[0].target('local')}", f"docker://{stale}"], check=True, capture_output=True)
    assert fleet.skopeo_digest(stale) == oracle[images[0].reference]
    results = run(jobs_for(images, "local"), template, LocalExecutor(2))
    assert [r.result for r in results] == [SKIPPED, SKIPPED, PATCHED, SKIPPED]
    assert "nothing left to fix" in results[0].error
    check_against_oracle(results, oracle, tmp_path)
    for image in images:  # the skipped targets still hold what copa patch alone makes of their source
        assert fleet.skopeo_digest(image.target("local")) == oracle[image.reference]


def test_without_ignore_errors_the_first_failure_stops_the_sweep(images: list[fleet.FleetImage],
                                                                 template: PatchOptions) -> None:
    jobs = [missing_job(images, "stop"), *jobs_for(images[:2], "stop")]
    results = run(jobs, replace(template, ignore_errors=False), LocalExecutor(1))
    assert [r.result for r in results] == [FAILED, CANCELLED, CANCELLED]
    assert exit_code(results) == 12
    assert all(fleet.skopeo_digest(j.target) is None for j in jobs)


@contextmanager
def silent_registry() -> Iterator[str]:
    """A port that accepts connections and never answers: a registry that hangs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"127.0.0.1:{s.getsockname()[1]}"


def test_a_job_past_its_timeout_is_killed_and_its_worker_replaced(images: list[fleet.FleetImage],
                                                                  template: PatchOptions,
                                                                  oracle: dict[str, str], tmp_path: Path) -> None:
    with silent_registry() as host:
        hung = Job("hung", f"{host}/app:1.0", f"{host}/app:1.0-patched")
        jobs = [hung, *jobs_for(images[:1], "timeout"), *jobs_for(images[1:2], "timeout")]
        started = time.monotonic()
        results = run(jobs, replace(template, timeout=6), LocalExecutor(2))
        took = time.monotonic() - started
    assert results[0].result == FAILED and results[0].exit_code == TIMEOUT_CODE, results[0]
    assert "ran longer than --timeout (6s)" in results[0].error
    assert [r.result for r in results[1:]] == [PATCHED, PATCHED]
    check_against_oracle(results, oracle, tmp_path)
    assert took < 6 + 2 + 10  # killed at its deadline and grace, not at the end of its retries


def _cache_entries(cache: Path) -> list[Path]:
    return [p for p in (cache / "sha256").glob("*/*") if len(p.name) == 64]


def test_dask_worker_killed_mid_sweep(images: list[fleet.FleetImage], template: PatchOptions,
                                      oracle: dict[str, str], tmp_path: Path,
                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    """SIGKILL of a worker while it runs a job: the scheduler runs that job on the other worker; every tag is the
    oracle's and whole, and every cache entry is intact."""
    from distributed import Client

    with dask_cluster(tmp_path_factory.mktemp("dask-kill")) as c, Client(c.address, timeout=30) as watcher:
        pids = {pid: addr for addr, pid in watcher.run(os.getpid).items()}
        assert set(pids) == {w.pid for w in c.workers}  # each worker is one of the processes started here
        results: list[JobResult] = []
        started = threading.Event()

        def on_event(event: Event) -> None:
            if isinstance(event, Started):
                started.set()

        sweep = threading.Thread(target=lambda: results.extend(
            run(jobs_for(images, "kill"), template, DaskExecutor(c.address), on_event=on_event)))
        sweep.start()
        assert started.wait(60)
        victim = _busy_worker(watcher, pids)
        os.kill(victim, signal.SIGKILL)
        sweep.join(300)
        assert not sweep.is_alive()
    assert [r.result for r in results] == [PATCHED] * len(APPS), [r.error for r in results]
    assert all(not r.worker.endswith(f":{victim}") for r in results)  # it never finished a job: killed mid-job
    check_against_oracle(results, oracle, tmp_path)
    entries = _cache_entries(Path(template.cache_dir or ""))
    assert entries
    for entry in entries:
        assert hashlib.sha256(entry.read_bytes()).hexdigest() == entry.name, entry


def _busy_worker(watcher: Any, pids: dict[int, str]) -> int:
    """The pid of a worker running a job, as soon as the scheduler says one is."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        processing = watcher.processing()
        for pid, addr in pids.items():
            if processing.get(addr):
                # Killed at once: a job on this image takes well under a second, and one that got as far as its
                # push before the kill leaves a re-run nothing to do (reported "skipped", not "patched").
                return pid
        time.sleep(0.05)
    raise AssertionError("no worker ever ran a job")


# ------------------------------------------------------------------------------------------------ the command


CONFIG = """apiVersion: copa.sh/v1alpha1
kind: PatchConfig
target:
  tag: "{{{{ .SourceTag }}}}-{suffix}"
images:
  - name: app-a
    image: {host}/bulkrun/app-a
    tags:
      strategy: list
      list: ["1.0", "1.1", "9.9"]
  - name: app-b
    image: {host}/bulkrun/app-b
    tags:
      strategy: latest
  - name: app-c
    image: {host}/bulkrun/app-c
    tags:
      strategy: pattern
      pattern: "^3\\\\.0$"
"""
BROKEN = """  - name: nothere
    image: {host}/bulkrun/nothere
    tags:
      strategy: latest
"""


def write_config(path: Path, host: str, suffix: str, broken: bool = False) -> Path:
    path.write_text(CONFIG.format(host=host, suffix=suffix) + (BROKEN.format(host=host) if broken else ""))
    return path


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("copa: error: "), proc.stderr
    return lines[-1]


def test_copa_bulk_json_and_then_copa_patch_config_skips(images: list[fleet.FleetImage], server: RepoServer,
                                                           repo: AptRepo, cache: Path, oracle: dict[str, str],
                                                           tmp_path: Path) -> None:
    host = images[0].host
    flags = ["--cache-dir", str(cache), *fleet.patch_flags(server.url, repo)]
    config = write_config(tmp_path / "broken.yaml", host, "cli", broken=True)
    proc = copa("bulk", str(config), "--push", "--ignore-errors", "--json", "--workers", "2", "--progress", "plain",
                *flags)
    assert proc.returncode == 11, proc.stderr
    assert error_line(proc) == "copa: error: 1 of 5 jobs failed (see the summary); the others ran"
    assert "app-a: tag 9.9 is not in the registry; skipped" in proc.stderr
    done = [line for line in proc.stderr.splitlines() if line.startswith("copa: [")]
    assert len(done) == 4 and done[-1].startswith("copa: [4/4] ")
    doc = json.loads(proc.stdout)
    jobs = {j["source"]: j for j in doc["jobs"]}
    assert doc["counts"]["patched"] == 4 and doc["counts"]["failed"] == 1 and doc["exitCode"] == 11
    for image in images:
        job = jobs[image.reference]
        want = ("patched", image.target("cli"), oracle[image.reference])
        assert (job["result"], job["target"], job["digest"]) == want
        assert fleet.skopeo_digest(image.target("cli")) == oracle[image.reference]
    failed = next(j for j in doc["jobs"] if j["result"] == "failed")
    assert failed["name"] == "nothere" and failed["exitCode"] == 4 and "bulkrun/nothere" in failed["error"]

    # Again, as `copa patch --config` without the broken image: every target is already its source's patch.
    config = write_config(tmp_path / "fleet.yaml", host, "cli")
    proc = copa("patch", "--config", str(config), "--push", "--progress", "quiet", *flags)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert rows[0] == ["IMAGE", "PLATFORMS", "UPDATED", "RESULT", "SECONDS"]
    assert sorted(r[0] for r in rows[1:5]) == sorted(f"{i.repository}:{i.tag}" for i in images)
    assert all(r[3] == "skipped" for r in rows[1:5]) and rows[5] == ["4", "skipped"]


def test_copa_bulk_writes_one_layout_for_the_fleet(images: list[fleet.FleetImage], server: RepoServer,
                                                    repo: AptRepo, cache: Path, oracle: dict[str, str],
                                                    tmp_path: Path) -> None:
    """--oci-dir: every image in one layout, named by its full target reference; umoci checks each one."""
    config = write_config(tmp_path / "fleet.yaml", images[0].host, "oci")
    out = tmp_path / "out"
    proc = copa("bulk", str(config), "--oci-dir", str(out), "--json", "--progress", "quiet", "--cache-dir",
                str(cache), *fleet.patch_flags(server.url, repo))
    assert proc.returncode == 0, proc.stderr
    index = json.loads((out / "index.json").read_text())
    names = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in index["manifests"]}
    assert names == {i.target("oci"): oracle[i.reference] for i in images}
    for n, name in enumerate(names):
        subprocess.run(["umoci", "stat", "--image", f"{out}:{name}"], check=True, capture_output=True)
        debimage.unpack_layout(out, name, tmp_path / f"bundle{n}")
    assert not list(tmp_path.glob(".out.job-*"))  # the per-job staging layouts are gone


@pytest.mark.parametrize(("args", "message"), [
    ((), "copa patch needs -i IMAGE, or --config FILE to patch the images a PatchConfig names"),
    (("-i", "x/y:1", "--scheduler", "tcp://127.0.0.1:1"),
     "--scheduler runs the jobs of a PatchConfig: pass --config FILE, or drop --scheduler"),
])
def test_patch_usage_errors(args: tuple[str, ...], message: str) -> None:
    proc = copa("patch", *args)
    assert proc.returncode == 2 and error_line(proc) == f"copa: error: {message}"


def test_bulk_usage_errors(tmp_path: Path, images: list[fleet.FleetImage]) -> None:
    config = write_config(tmp_path / "fleet.yaml", images[0].host, "usage")
    proc = copa("bulk", str(config))
    assert proc.returncode == 2
    assert error_line(proc).startswith("copa: error: a sweep writes with --push")
    proc = copa("bulk", str(config), "--push", "-i", images[0].reference)
    assert proc.returncode == 2 and "-i names one image" in error_line(proc)
    proc = copa("bulk", str(config), "--push", "--scheduler", "tcp://127.0.0.1:9", "--progress", "quiet",
                env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"})
    assert proc.returncode == 2 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in error_line(proc)
    proc = copa("bulk", str(config), "--push", "--progress", "quiet",  # the scheduler named by the environment
                env={"DASK_SCHEDULER_ADDRESS": "tcp://127.0.0.1:9", "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"})
    assert proc.returncode == 2 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in error_line(proc)
    assert all(fleet.skopeo_digest(i.target("usage")) is None for i in images)


def test_dry_run_plans_every_image_and_writes_nothing(images: list[fleet.FleetImage], server: RepoServer,
                                                      repo: AptRepo, cache: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "fleet.yaml", images[0].host, "dry")
    proc = copa("bulk", str(config), "--dry-run", "--json", "--progress", "json", "--workers", "1",
                "--cache-dir", str(cache), *fleet.patch_flags(server.url, repo))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [(j["result"], j["updates"], j["digest"]) for j in doc["jobs"]] == [("planned", PACKAGES, None)] * 4
    # --progress json: a job-start and a job-done object per job on stderr, the done ones as --json's records.
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    done = [{k: v for k, v in e.items() if k != "event"} for e in events if e["event"] == "job-done"]
    assert sum(e["event"] == "job-start" for e in events) == 4
    assert done == doc["jobs"]
    assert all(fleet.skopeo_digest(i.target("dry")) is None for i in images)


def test_a_local_worker_killed_mid_job_fails_that_job_alone(images: list[fleet.FleetImage], template: PatchOptions,
                                                            oracle: dict[str, str], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL of the local worker while copa patch runs in it (its temporary directory exists): that job is
    reported failed with the signal, the worker is replaced, the other jobs are patched, no tag is left behind
    for the killed job and its temporary files are gone."""
    import tempfile

    # The workers' temporary directories in a directory of this test's own: another copa run on the machine
    # (another test session) must not be taken for this worker.
    own = tmp_path / "tmp"
    own.mkdir()
    monkeypatch.setenv("TMPDIR", str(own))
    monkeypatch.setattr(tempfile, "tempdir", None)
    killed: list[Path] = []

    def on_event(event: Event) -> None:
        if isinstance(event, Started) and not killed:
            killed.append(_kill_worker_in_patch())

    results = run(jobs_for(images[:3], "lkill"), template, LocalExecutor(1), on_event=on_event)
    assert [r.result for r in results] == [FAILED, PATCHED, PATCHED]
    assert results[0].exit_code == 128 + signal.SIGKILL and "was killed by signal 9" in results[0].error
    assert fleet.skopeo_digest(results[0].job.target) is None
    check_against_oracle(results, oracle, tmp_path)
    assert not killed[0].exists()


def _kill_worker_in_patch() -> Path:
    """Wait until the local worker's patch has made its temporary directory, then SIGKILL that worker (with one
    worker there is one spawned child running jobs)."""
    import tempfile

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for work in Path(tempfile.gettempdir()).glob("copa-bulk-worker-*/copa-*"):
            workers = _spawned_children()
            assert len(workers) == 1, workers
            os.kill(workers[0], signal.SIGKILL)
            return work.parent
        time.sleep(0.02)
    raise AssertionError("no worker started patching")


def _spawned_children() -> list[int]:
    """This process's children started by multiprocessing's spawn (not its resource tracker)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"spawn_main" in cmdline:
            out.append(int(proc.name))
    return out


def test_sweep_through_registry_faults_pushes_what_a_clean_patch_pushes(
        anon_registry: RunningRegistry, images: list[fleet.FleetImage], server: RepoServer, repo: AptRepo,
        cache: Path, template: PatchOptions, tmp_path: Path) -> None:
    """The fault proxy in front of the registry during a sweep: a dropped connection, 500s and a 429 on the
    reads, a dropped manifest push. The registry client's retries absorb them: each image is
    what `copa patch` alone pushes through the same proxy without faults (the image names the proxy's host in its
    BaseImage label, so the oracle is taken through it too), and every tag is whole."""
    from tests.support.faultproxy import Fault, FaultProxy

    proxy = FaultProxy(anon_registry.host).start()
    try:
        via = [replace(i, host=proxy.host) for i in images[:2]]
        clean = {}
        for image in via:
            proc = copa("patch", "-i", image.reference, "-t", image.target("clean"), "--push", "--json",
                        "--cache-dir", str(cache), *fleet.patch_flags(server.url, repo))
            assert proc.returncode == 0, proc.stderr
            clean[image.reference] = json.loads(proc.stdout)["digest"]
        faults = [Fault("drop", r"/manifests/1\.[01]$", "GET"), Fault("500", r"/blobs/sha256:", "GET", count=2),
                  Fault("429", r"/manifests/", "HEAD"), Fault("drop", r"/manifests/1\.[01]-faults$", "PUT")]
        for fault in faults:
            proxy.add(fault)
        results = run(jobs_for(via, "faults"), template, LocalExecutor(2))
        assert [f.kind for f in faults if not f.fired.is_set()] == []
        assert [r.result for r in results] == [PATCHED, PATCHED], [r.error for r in results]
    finally:
        proxy.stop()
    # Read back from the registry itself: the proxy keeps one of skopeo's repeated Accept headers, and the
    # registry answers an OCI manifest asked without its media type with 404.
    direct = [replace(r, job=replace(r.job, target=r.job.target.replace(via[0].host, anon_registry.host)))
              for r in results]
    check_against_oracle(direct, clean, tmp_path)
