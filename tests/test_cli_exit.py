"""copa.cli.run: the command leaves its process without Python's teardown of every module, but only after what
that exit does that anyone can see: atexit functions, the standard streams' flush, threads still running, the exit
code. Each case runs the entry point in a fresh interpreter with a stand-in for main()."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(main_body: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    program = "\n".join([
        "import atexit, sys, threading, time",
        "import copa.cli",
        "def main():",
        *(f"    {line}" for line in main_body.splitlines()),
        "copa.cli.main = main",
        "copa.cli.run()",
    ])
    return subprocess.run([sys.executable, "-c", program, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          check=False, timeout=60)


def test_exit_code_buffered_output_and_atexit_functions_survive(tmp_path: Path) -> None:
    # stdout to a pipe is block-buffered: 200 kB not yet written when main returns, an atexit function after it.
    proc = _run("sys.stdout.write('x' * 200_000)\n"
                "sys.stderr.write('progress line\\n')\n"
                "atexit.register(lambda: open(sys.argv[1] + '/atexit', 'w').write('ran'))\n"
                "return 3", tmp_path)
    assert proc.returncode == 3
    assert proc.stdout == "x" * 200_000
    assert proc.stderr == "progress line\n"
    assert (tmp_path / "atexit").read_text() == "ran"


def test_the_interpreter_is_not_torn_down(tmp_path: Path) -> None:
    # A module global's finalizer runs when Python's exit clears the modules; leaving with os._exit skips it.
    proc = _run("class Noisy:\n"
                "    def __del__(self):\n"
                "        sys.stdout.write('torn down')\n"
                "sys.modules['copa.cli'].noisy = Noisy()\n"
                "return 0", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "torn down" not in proc.stdout


def test_a_thread_still_running_is_waited_for(tmp_path: Path) -> None:
    proc = _run("def later():\n"
                "    time.sleep(0.5)\n"
                "    open(sys.argv[1] + '/thread', 'w').write('done')\n"
                "threading.Thread(target=later).start()\n"
                "return 0", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "thread").read_text() == "done"


def test_an_exit_inside_main_is_pythons(tmp_path: Path) -> None:
    # argparse's --help and usage errors leave through SystemExit, before run() gets a code.
    proc = _run("sys.stdout.write('usage')\nsys.exit(2)", tmp_path)
    assert (proc.returncode, proc.stdout) == (2, "usage")
