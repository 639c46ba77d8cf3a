#!/usr/bin/env python3
"""Run every coverage-guided fuzz target (benchmarks/fuzz/target.py) for a bounded time each; the last line prints
the figures (targets, executions, coverage, crashes). Crashing inputs are kept under the work directory printed.

    .venv/bin/python benchmarks/fuzz/run.py [--seconds 30] [--only NAME ...] [--rss-mb 2048]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.test_fuzz_parsers import TARGETS  # noqa: E402

SECONDS = 30  # per target
RSS_MB = 2048  # libFuzzer's -rss_limit_mb: an input that makes a parser hold more is a crash too
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_COV = re.compile(r"cov: (\d+) ft: (\d+)")


def run_target(name: str, seconds: int, rss_mb: int, work: Path) -> tuple[int, int, int, list[Path]]:
    """(executions, coverage edges, features, crash files) of one target."""
    corpus = work / name / "corpus"
    artifacts = work / name / "artifacts"
    corpus.mkdir(parents=True)
    artifacts.mkdir()
    for i, seed in enumerate(TARGETS[name][1]):
        (corpus / f"seed{i}").write_bytes(seed)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("target.py")), name, f"-max_total_time={seconds}",
         f"-rss_limit_mb={rss_mb}", "-timeout=10", f"-artifact_prefix={artifacts}/", "-print_final_stats=1",
         str(corpus)],
        cwd=ROOT, capture_output=True, text=True, timeout=seconds + 120, check=False)
    done = _DONE.findall(proc.stderr)
    cov = _COV.findall(proc.stderr)
    crashes = sorted(artifacts.iterdir())
    if proc.returncode != 0 and not crashes:
        print(f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return (int(done[-1][0]) if done else 0, int(cov[-1][0]) if cov else 0, int(cov[-1][1]) if cov else 0,
            crashes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=SECONDS)
    parser.add_argument("--only", nargs="*", default=sorted(TARGETS))
    parser.add_argument("--rss-mb", type=int, default=RSS_MB)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="copa-fuzz-"))
    total_runs = 0
    crashed: list[str] = []
    for name in args.only:
        runs, cov, ft, crashes = run_target(name, args.seconds, args.rss_mb, work)
        total_runs += runs
        print(f"{name}: {runs} executions, cov {cov}, ft {ft}, crashes {len(crashes)}"
              + "".join(f"\n  {c}" for c in crashes))
        if crashes:
            crashed.append(name)
    print(f"fuzz: {len(args.only)} targets x {args.seconds} s, {total_runs} executions, crashing targets "
          f"{len(crashed)} ({', '.join(crashed) or 'none'}); inputs under {work}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
