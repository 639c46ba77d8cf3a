"""Running `copa` on hostile input and checking how it refuses (issue 12): one place for the rules every CLI case of
tests/test_hostile_*.py is held to.

`run_copa` runs `python -m copa ARGS` in a work directory and measures the process itself: its wall time, and its
peak RSS. The peak is the kernel's high-water mark of the process's own memory (VmHWM in /proc/PID/status), read
every few milliseconds while it runs: wait4's ru_maxrss would not do, since Linux carries the forking parent's mark
(this pytest process, hundreds of MB) over fork and exec into the child. `refused` asserts the
outcome: the exit code, exactly one line on stderr saying `copa: error: ...` with the expected words, no traceback,
nothing on stdout, within the time and memory bounds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss: int  # bytes


def run_copa(args: Sequence[str], cwd: Path, logs: Path, *, kill_after: float = 120.0,
             env: dict[str, str] | None = None) -> Run:
    """`python -m copa ARGS` in `cwd`, its output kept in `logs` (a directory outside `cwd`, so that `cwd` shows
    only what copa wrote)."""
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / "stdout", logs / "stderr"
    start = time.monotonic()
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "copa", *args], cwd=cwd, stdout=out, stderr=err,
                                env={**os.environ, "COPA_DEBUG": "", "PYTHONPATH": str(ROOT), **(env or {})})
        peak = [0]
        done = threading.Event()
        sampler = threading.Thread(target=_sample_peak, args=(proc.pid, peak, done), daemon=True)
        sampler.start()
        try:
            proc.wait(kill_after)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        finally:
            done.set()
            sampler.join()
    return Run(proc.returncode, out_path.read_text(), err_path.read_text(), time.monotonic() - start, peak[0])


def _sample_peak(pid: int, peak: list[int], done: threading.Event) -> None:
    """Keep peak[0] at the process's VmHWM (bytes) until `done`. The mark only grows, so the last reading before
    the process exits is its peak, short of what it added in its last few milliseconds."""
    status = Path(f"/proc/{pid}/status")
    while not done.is_set():
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak[0] = max(peak[0], int(line.split()[1]) * 1024)
        except (OSError, ValueError, IndexError):
            pass  # gone (or a zombie without memory): the last reading stands
        done.wait(0.005)


def refused(run: Run, code: int, words: Sequence[str], *, seconds: float, peak_rss: int) -> str:
    """Assert that copa refused with exit `code` and one line naming `words`, within the bounds; the line."""
    assert run.code == code, f"exit {run.code}, wanted {code}: {run.stderr}"
    assert "Traceback" not in run.stderr and "internal error" not in run.stderr, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("copa: error: "), run.stderr
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]
    assert run.stdout == ""
    assert run.seconds < seconds, (run.seconds, lines[0])
    assert run.peak_rss < peak_rss, (run.peak_rss, lines[0])
    return lines[0]
