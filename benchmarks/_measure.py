"""Shared helpers of the benchmarks: run a command under GNU time, keep registries alive, print a table.

Peak RSS comes from GNU time's %M, i.e. wait4()'s ru_maxrss: the largest resident set of the command or of any
descendant it waited for (the biggest single process of the tree, not their sum). Wall time is time's %e; CPU time
is %U + %S (user + system seconds of the command and every descendant it waited for, all threads): on a machine
shared with other work, CPU time moves less with the load than wall time does.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `.venv/bin/python benchmarks/x.py`: make copa and tests.support importable
    sys.path.insert(0, str(REPO))

from tests.support.registry import RunningRegistry, start_registry  # noqa: E402

GNU_TIME = "/usr/bin/time"
BENCH_CACHE = Path.home() / ".cache" / "copa-tests" / "bench"


class MeasureError(RuntimeError):
    """A measured command failed: the benchmark's numbers would be meaningless."""


@dataclass(frozen=True, slots=True)
class Measurement:
    label: str
    seconds: float
    peak_rss_kib: int
    note: str = ""
    cpu_seconds: float | None = None  # user + system; None where the figure was not measured by GNU time


    @property
    def peak_rss_mib(self) -> float:
        return self.peak_rss_kib / 1024


def ensure_gnu_time() -> str:
    """GNU time (Debian package `time`); installed here if missing, as the tests install what they need."""
    if not os.access(GNU_TIME, os.X_OK):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", "time"], check=True, capture_output=True, env=env)
    return GNU_TIME


def measure(
    label: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None, note: str = ""
) -> Measurement:
    """Run `argv` once under GNU time; raise MeasureError with the output's tail if it fails."""
    with tempfile.NamedTemporaryFile("r", prefix="bench-time-", suffix=".txt") as out:
        proc = subprocess.run(
            [ensure_gnu_time(), "-f", "%e %U %S %M", "-o", out.name, *argv],
            env=dict(env) if env is not None else None,
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
            raise MeasureError(f"{label}: {' '.join(argv[:4])} ... exited {proc.returncode}: {tail}")
        # The format's fields are the last line's: GNU time may write a note line before it.
        seconds, user, system, rss = out.read().split()[-4:]
    return Measurement(label, float(seconds), int(rss), note, float(user) + float(system))


def median(label: str, runs: Sequence[Measurement], note: str = "") -> Measurement:
    """One row for repeated runs: the median wall time, the median CPU time (when every run has one) and the
    highest peak RSS seen."""
    cpus = [r.cpu_seconds for r in runs if r.cpu_seconds is not None]
    return Measurement(
        label,
        statistics.median(r.seconds for r in runs),
        max(r.peak_rss_kib for r in runs),
        note or (f"median of {len(runs)}" if len(runs) > 1 else ""),
        statistics.median(cpus) if len(cpus) == len(runs) else None,
    )


@contextmanager
def registry(prefix: str) -> Iterator[RunningRegistry]:
    """A fresh docker-registry on 127.0.0.1 with its storage in a temporary directory, stopped afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{prefix}-"))
    running = start_registry(workdir)
    try:
        yield running
    finally:
        running.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def print_table(title: str, rows: Sequence[Measurement], extra: Mapping[str, str] | None = None) -> None:
    """A plain-text table; `extra` adds a column (keyed by row label), e.g. a ratio to a baseline."""
    headers = ["", "wall s", "cpu s", "peak RSS MiB", *(["vs"] if extra else []), "note"]
    body = [
        [
            r.label,
            f"{r.seconds:.2f}",
            "-" if r.cpu_seconds is None else f"{r.cpu_seconds:.2f}",
            f"{r.peak_rss_mib:.1f}",
            *([extra.get(r.label, "")] if extra else []),
            r.note,
        ]
        for r in rows
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *body, strict=True)]
    print(f"\n{title}")
    for line in [headers, ["-" * w for w in widths], *body]:
        print("  ".join(cell.ljust(w) if i in (0, len(line) - 1) else cell.rjust(w) for i, (cell, w) in
                        enumerate(zip(line, widths, strict=True))).rstrip())
