"""copa.memory: the command line caps glibc's malloc arenas (what MALLOC_ARENA_MAX=2 does) unless the user chose."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(env: dict[str, str]) -> dict[str, object]:
    code = "import json, copa.memory as m; print(json.dumps({'done': m.limit_malloc_arenas()}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                          check=True)
    return dict(json.loads(proc.stdout))


def test_arenas_capped_unless_the_user_set_them() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert _run(env)["done"] is True  # glibc here: mallopt takes it
    assert _run({**env, "MALLOC_ARENA_MAX": "8"})["done"] is False


def test_the_command_line_collects_less_often(tmp_path: Path) -> None:
    # The CLI sets the thresholds (a library caller keeps its own): read back in a child that runs copa's main
    # (`copa patch` without an image: a usage error, after the settings).
    code = ("import gc, json, copa.cli, copa.memory as m; before = gc.get_threshold(); copa.cli.main(['patch']); "
            "print(json.dumps({'before': before, 'after': gc.get_threshold(), 'want': m.GC_THRESHOLDS}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["before"] == [700, 10, 10]  # CPython's default: importing copa changes nothing
    assert got["after"] == list(got["want"])
