"""What a sweep shows: live progress on stderr, the summary table and the --json document on stdout, the exit code.

The live view follows copa.progress's modes: tty (a rich status bar of jobs done/failed/running that vanishes at
the end, with one line printed above it per finished job), plain (one line per finished job), json (one JSON object
per line per job started and finished), quiet (nothing); auto picks tty on a terminal, else plain.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from copa.bulk.runner import Event, Finished, Started
from copa.bulk.worker import CANCELLED, FAILED, PATCHED, PLANNED, RESULTS, SKIPPED, UP_TO_DATE, JobResult
from copa.errors import BulkError, BulkStoppedError, UsageError
from copa.progress import MODES, is_terminal


def _short(image: str) -> str:
    # The summary names an image by repository:tag; the registry host is the same for most of a fleet.
    host, sep, rest = image.partition("/")
    return rest if sep and ("." in host or ":" in host or host == "localhost") else image


def _line(result: JobResult) -> str:
    job = result.job
    if result.result == PATCHED:
        what = f"patched {result.updates} packages -> {job.target}"
    elif result.result == PLANNED:
        what = f"would update {result.updates} packages"
    elif result.result == UP_TO_DATE:
        what = "already up to date"
    elif result.result == SKIPPED:
        what = f"skipped: {result.error}"
    else:
        what = f"{result.result}: {result.error}"
    return f"{_short(job.source)}: {what} ({result.seconds:.1f}s)"


class SweepView:
    """Receives the runner's events (from the scheduling thread only). The base class shows nothing (quiet)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.running = 0
        self.done = 0
        self.failed = 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, Started):
            self.running += 1
            self.started(event)
        elif isinstance(event, Finished):
            if event.result.result != CANCELLED:
                self.running -= 1
            self.done += 1
            self.failed += event.result.result in (FAILED, CANCELLED)
            self.finished(event.result)

    def started(self, event: Started) -> None:
        pass

    def finished(self, result: JobResult) -> None:
        pass

    def close(self) -> None:
        pass


class _Lines(SweepView):
    def __init__(self, total: int, stream: TextIO) -> None:
        super().__init__(total)
        self._stream = stream
        self._broken = False

    def _write(self, line: str) -> None:
        if self._broken:
            return
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            self._broken = True  # a closed stderr ends the progress, not the sweep


class PlainView(_Lines):
    def finished(self, result: JobResult) -> None:
        self._write(f"copa: [{self.done}/{self.total}] {_line(result)}")


class JsonView(_Lines):
    def started(self, event: Started) -> None:
        self._write(json.dumps({"event": "job-start", "source": event.job.source, "target": event.job.target},
                               separators=(",", ":")))

    def finished(self, result: JobResult) -> None:
        self._write(json.dumps({"event": "job-done", **job_json(result)}, separators=(",", ":")))


class TtyView(SweepView):
    """A bar of jobs finished, with the counts beside it; each finished job printed above as a line."""

    def __init__(self, total: int, stream: TextIO) -> None:
        super().__init__(total)
        self._console = Console(file=stream, force_terminal=True, highlight=False)
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=self._console, transient=True, refresh_per_second=4)
        self._task = self._progress.add_task(self._counts(), total=total)
        self._lock = threading.Lock()
        self._closed = False
        self._progress.start()

    def _counts(self) -> str:
        return f"jobs: {self.done - self.failed} done, {self.failed} failed, {self.running} running"

    def started(self, event: Started) -> None:
        self._progress.update(self._task, description=self._counts())

    def finished(self, result: JobResult) -> None:
        with self._lock:
            if self._closed:
                return
            mark = "✗" if result.result in (FAILED, CANCELLED) else "✓"
            self._progress.console.print(f"{mark} {_line(result)}", markup=False)
            self._progress.update(self._task, completed=self.done, description=self._counts())

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._progress.stop()


def make_view(mode: str, total: int, stream: TextIO | None) -> SweepView:
    if stream is None or mode == "quiet":
        return SweepView(total)
    if mode == "auto":
        mode = "tty" if is_terminal(stream) else "plain"
    if mode == "tty":
        return TtyView(total, stream)
    if mode == "plain":
        return PlainView(total, stream)
    if mode == "json":
        return JsonView(total, stream)
    raise UsageError(f"unknown --progress {mode!r}: use one of {', '.join(MODES)}")


# ------------------------------------------------------------------------------------------------ end of sweep


def job_json(result: JobResult) -> dict[str, Any]:
    job = result.job
    return {"name": job.name, "source": job.source, "target": job.target, "report": job.report,
            "result": result.result, "platforms": list(result.platforms), "updates": result.updates,
            "digest": result.digest, "seconds": round(result.seconds, 3), "error": result.error or None,
            "exitCode": result.exit_code, "worker": result.worker or None}


def counts(results: Sequence[JobResult]) -> dict[str, int]:
    return {name: sum(1 for r in results if r.result == name) for name in RESULTS}


def sweep_json(results: Sequence[JobResult]) -> dict[str, Any]:
    return {"jobs": [job_json(r) for r in results], "counts": counts(results), "exitCode": exit_code(results)}


def print_summary(results: Sequence[JobResult], out: TextIO) -> None:
    """A table (image:tag, platforms, packages updated, result, seconds), then one line per failed job."""
    rows = [("IMAGE", "PLATFORMS", "UPDATED", "RESULT", "SECONDS")]
    for r in results:
        platforms = ",".join(r.platforms) if r.platforms else ("-" if r.result in (FAILED, CANCELLED) else "1")
        rows.append((_short(r.job.source), platforms, str(r.updates), r.result, f"{r.seconds:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [c.ljust(w) if i in (0, 1, 3) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells).rstrip(), file=out)
    for r in results:
        if r.result == FAILED:
            print(f"failed: {r.error} (exit {r.exit_code})", file=out)
    tally = counts(results)
    print(", ".join(f"{n} {name}" for name, n in tally.items() if n) or "no jobs", file=out)


def exit_code(results: Sequence[JobResult]) -> int:
    if any(r.result == CANCELLED for r in results):
        return BulkStoppedError.exit_code
    if any(r.result == FAILED for r in results):
        return BulkError.exit_code
    return 0


def sweep_error(results: Sequence[JobResult]) -> BulkError | None:
    """The sweep's one-line error, when any job failed."""
    failed = sum(1 for r in results if r.result == FAILED)
    cancelled = sum(1 for r in results if r.result == CANCELLED)
    if cancelled:
        return BulkStoppedError(f"{failed} of {len(results)} jobs failed and the sweep stopped; {cancelled} jobs "
                                "were not run: fix the failure, or pass --ignore-errors to run every job")
    if failed:
        return BulkError(f"{failed} of {len(results)} jobs failed (see the summary); the others ran")
    return None
