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
