"""Run a sweep's jobs: on local worker processes by default, or on a Dask distributed cluster.

Where it runs:

* Default: a pool of plain local processes (`LocalExecutor`), not a Dask LocalCluster. A LocalCluster costs about
  1.5 s before the first job here (0.5 s importing distributed, 1.2 s starting two nanny-supervised workers on
  this machine), doubles the process count (a nanny per worker) and opens scheduler and worker ports; and Dask is
  an optional extra, so `copa patch --config` must work without it. A user running a sweep on one machine expects
  it to start as `copa patch` does. Plain processes also allow what Dask's worker threads cannot: a job past its
  --timeout is killed outright (its process, and its temporary directory with it) and a fresh worker takes its
  place. concurrent.futures' ProcessPoolExecutor is not used for the same reason: killing one of its workers
  breaks the whole pool.
* `--scheduler tcp://HOST:8786` (or DASK_SCHEDULER_ADDRESS): `DaskExecutor` submits the same `run_job` with the
  same picklable arguments to an existing cluster. Its workers need only copa installed. A worker lost mid-job
  makes the scheduler run the job again elsewhere (distributed's allowed-failures); a job that keeps killing
  workers ends as failed. A job past its deadline stops at its next step on its own (see copa.bulk.worker); the
  scheduler side gives up on it a little later still, in case the worker hangs.

Without --ignore-errors the first failed job stops the sweep: no new job starts, those running finish (stopping
them mid-push would gain nothing: a tag is written last, never half), and the rest are reported as cancelled.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any, Protocol

from copa.api import PatchOptions
from copa.bulk.job import Job
from copa.bulk.worker import CANCELLED, FAILED, SIGNAL_BASE, TIMEOUT_CODE, JobResult, run_job
from copa.errors import UsageError
from copa.memory import limit_malloc_arenas

SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
# How long past a job's deadline the scheduler side waits for it to stop on its own before killing (local) or
# abandoning (Dask) it.
GRACE = 2.0
_POLL = 0.5


@dataclass(frozen=True, slots=True)
class Started:
    job: Job


@dataclass(frozen=True, slots=True)
class Finished:
    result: JobResult


Event = Started | Finished


class Executor(Protocol):
    """Where jobs run. `collect` returns the jobs (by index) that ended within `timeout` seconds, killing or
    abandoning those past their deadline."""

    def __enter__(self) -> Executor: ...

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def free(self) -> int: ...

    def busy(self) -> int: ...

    def submit(self, index: int, job: Job, template: PatchOptions) -> None: ...

    def collect(self, timeout: float) -> list[tuple[int, JobResult]]: ...


def run(jobs: Sequence[Job], template: PatchOptions, executor: Executor | None = None,
        on_event: Callable[[Event], None] = lambda _e: None) -> list[JobResult]:
    """Run every job with the sweep's options (`template`; see copa.bulk.worker.run_job), in the jobs' order.
    `template.ignore_errors`: a failed job does not stop the others. Returns one result per job, in order."""
    executor = executor if executor is not None else LocalExecutor(default_workers())
    results: dict[int, JobResult] = {}
    pending = deque(enumerate(jobs))
    stopped = False
    with executor:
        while (pending and not stopped) or executor.busy():
            while pending and not stopped and executor.free() > 0:
                index, job = pending.popleft()
                executor.submit(index, job, template)
                on_event(Started(job))
            for index, result in executor.collect(_POLL):
                results[index] = result
                on_event(Finished(result))
                if result.result == FAILED and not template.ignore_errors:
                    stopped = True
    for index, job in pending:
        results[index] = JobResult(job, CANCELLED, error="not run: an earlier job failed (no --ignore-errors)")
        on_event(Finished(results[index]))
    return [results[i] for i in range(len(jobs))]


def default_workers() -> int:
    """One worker per core: a job is half I/O (registry, repositories) and half CPU (inflating, compressing), and
    each one holds an image's package database in memory."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _timed_out(job: Job, timeout: float, how: str) -> JobResult:
    return JobResult(job, FAILED, error=f"{job.source}: the job ran longer than --timeout ({timeout:g}s) and was "
                     f"{how}", exit_code=TIMEOUT_CODE, seconds=timeout)


# ------------------------------------------------------------------------------------------------ local processes


def _worker_main(conn: Connection, tmpdir: str) -> None:
    """A local worker: runs jobs sent down `conn` until told to stop. Its temporary files go under `tmpdir`, which
    the parent removes when the worker ends, killed or not."""
    limit_malloc_arenas()  # a spawned worker is a process of its own (copa/memory.py)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    os.environ["TMPDIR"] = tmpdir
    tempfile.tempdir = tmpdir
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        job, template = message
        conn.send(run_job(job, template))


@dataclass
class _Slot:
    process: BaseProcess
    conn: Connection
    tmpdir: str
    index: int | None = None
    job: Job | None = None
    deadline: float = 0.0
    timeout: float = 0.0


class LocalExecutor:
    """`workers` long-lived local processes (spawned: nothing of the parent's threads or display is inherited),
    each running one job at a time and reused across jobs (its registry connections with it)."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise UsageError(f"--workers {workers}: at least one worker is needed")
        self.workers = workers
        self._context = multiprocessing.get_context("spawn")
        self._slots: list[_Slot] = []

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for slot in self._slots:
            if slot.index is not None or kind is not None:
                slot.process.kill()  # interrupted: a running job stops now (its tag, written last, is not written)
            else:
                with contextlib.suppress(OSError):
                    slot.conn.send(None)
        for slot in self._slots:
            self._end(slot)
        self._slots.clear()

    def _start(self) -> _Slot:
        tmpdir = tempfile.mkdtemp(prefix="copa-bulk-worker-")
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_worker_main, args=(child, tmpdir), daemon=True,
                                        name="copa-bulk-worker")
        process.start()
        child.close()
        slot = _Slot(process, parent, tmpdir)
        self._slots.append(slot)
        return slot

    def _end(self, slot: _Slot) -> None:
        slot.process.join(5)
        if slot.process.is_alive():
            slot.process.kill()
            slot.process.join()
        slot.conn.close()
        shutil.rmtree(slot.tmpdir, ignore_errors=True)

    def _replace(self, slot: _Slot) -> None:
        if slot.process.is_alive():
            slot.process.kill()
        self._end(slot)
        self._slots.remove(slot)

    def free(self) -> int:
        return self.workers - self.busy()

    def busy(self) -> int:
        return sum(1 for s in self._slots if s.index is not None)

    def submit(self, index: int, job: Job, template: PatchOptions) -> None:
        slot = next((s for s in self._slots if s.index is None), None) or self._start()
        slot.index, slot.job = index, job
        slot.timeout = template.timeout
        slot.deadline = time.monotonic() + template.timeout + GRACE
        slot.conn.send((job, template))

    def collect(self, timeout: float) -> list[tuple[int, JobResult]]:
        running = [s for s in self._slots if s.index is not None]
        if not running:
            return []
        now = time.monotonic()
        wait = max(0.0, min(timeout, *(s.deadline - now for s in running)))
        ready = multiprocessing.connection.wait([x for s in running for x in (s.conn, s.process.sentinel)], wait)
        out: list[tuple[int, JobResult]] = []
        for slot in running:
            assert slot.index is not None and slot.job is not None
            index, job = slot.index, slot.job
            result: JobResult | None = None
            if slot.conn in ready:
                try:
                    result = slot.conn.recv()
                except (EOFError, OSError):
                    result = None
            if result is not None:
                slot.index, slot.job = None, None
                out.append((index, result))
            elif slot.process.sentinel in ready or slot.conn in ready:
                slot.process.join(1)  # its pipe closes just before it exits: wait for the status
                code = slot.process.exitcode
                died = (f"was killed by signal {-code}" if code is not None and code < 0
                        else f"exited with status {code}")
                out.append((index, JobResult(job, FAILED, error=f"{job.source}: the worker process running it "
                                             f"{died}; nothing was tagged by it after that",
                                             exit_code=SIGNAL_BASE - code if code is not None and code < 0 else 1)))
                self._replace(slot)
            elif time.monotonic() > slot.deadline:
                out.append((index, _timed_out(job, slot.timeout, "killed")))
                self._replace(slot)
        return out


# ------------------------------------------------------------------------------------------------ Dask


class DaskExecutor:
    """Jobs submitted to the existing Dask distributed cluster whose scheduler is at `address`."""

    def __init__(self, address: str, *, connect_timeout: float | None = None) -> None:
        self.address = address
        # None: Dask's own setting (distributed.comm.timeouts.connect, 30 s unless configured, e.g. by
        # DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT), as every Dask client reads it.
        self.connect_timeout = connect_timeout
        self._client: Any = None
        self._capacity = 0
        self._futures: dict[Any, tuple[int, Job, float, float]] = {}  # future -> (index, job, deadline, timeout)

    def __enter__(self) -> DaskExecutor:
        try:
            dask = _distributed()
        except ImportError:
            raise UsageError("running on Dask needs the fleet extra: pip install 'copa[fleet]' (dask, distributed)"
                             ) from None
        try:
            self._client = dask.Client(self.address, timeout=self.connect_timeout
                                       if self.connect_timeout is not None else _dask_connect_timeout())
        except (OSError, TimeoutError) as e:
            raise UsageError(f"cannot reach the Dask scheduler at {self.address}: {e}; check --scheduler or "
                             f"{SCHEDULER_ENV}") from None
        threads = self._client.nthreads()
        self._capacity = sum(threads.values()) if threads else 1
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for future in self._futures:
            future.cancel()
        self._futures.clear()
        if self._client is not None:
            self._client.close()
            self._client = None

    def free(self) -> int:
        # Workers may join or leave a running cluster: ask again when the window looks full.
        if len(self._futures) >= self._capacity and self._client is not None:
            threads = self._client.nthreads()
            self._capacity = max(1, sum(threads.values()) if threads else 1)
        return self._capacity - len(self._futures)

    def busy(self) -> int:
        return len(self._futures)

    def submit(self, index: int, job: Job, template: PatchOptions) -> None:
        # pure=False: the same job twice (a second sweep in the same session) must run again, not be looked up.
        future = self._client.submit(run_job, job, template, pure=False, key=f"copa-job-{index}-{os.urandom(4).hex()}")
        self._futures[future] = (index, job, time.monotonic() + template.timeout + GRACE, template.timeout)

    def collect(self, timeout: float) -> list[tuple[int, JobResult]]:
        if not self._futures:
            return []
        with contextlib.suppress(TimeoutError):
            _distributed().wait(list(self._futures), timeout=timeout, return_when="FIRST_COMPLETED")
        out: list[tuple[int, JobResult]] = []
        now = time.monotonic()
        for future, (index, job, deadline, job_timeout) in list(self._futures.items()):
            if future.done():
                del self._futures[future]
                out.append((index, self._result(future, job)))
            elif now > deadline:
                del self._futures[future]
                future.cancel()
                out.append((index, _timed_out(job, job_timeout, "abandoned by the scheduler side")))
        return out

    @staticmethod
    def _result(future: Any, job: Job) -> JobResult:
        if future.status == "finished":
            result = future.result()
            assert isinstance(result, JobResult)
            return result
        if future.status == "cancelled":
            return JobResult(job, FAILED, error=f"{job.source}: the Dask cluster cancelled the job", exit_code=1)
        error = future.exception()
        what = type(error).__name__
        detail = "every worker that ran it died" if what == "KilledWorker" else f"{what}: {error}"
        return JobResult(job, FAILED, error=f"{job.source}: on the Dask cluster, {detail}", exit_code=1)


def _dask_connect_timeout() -> float:
    config = importlib.import_module("dask.config")
    utils = importlib.import_module("dask.utils")
    return float(utils.parse_timedelta(config.get("distributed.comm.timeouts.connect"), default="seconds"))


def _distributed() -> Any:
    # distributed has no type hints; imported here, when a Dask executor is asked for, as the optional extra it is.
    return importlib.import_module("distributed")


def make_executor(scheduler: str | None, workers: int | None) -> Executor:
    """The executor the flags ask for: --scheduler (or DASK_SCHEDULER_ADDRESS) names a cluster; otherwise local
    worker processes."""
    address = scheduler or os.environ.get(SCHEDULER_ENV) or None
    if address is not None:
        return DaskExecutor(address)
    return LocalExecutor(workers or default_workers())
