"""The code stays ruff- and mypy-clean: checked with the suite so CI catches it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff() -> None:
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "copa", "tests", "benchmarks", "fixtures"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy() -> None:
    proc = subprocess.run([sys.executable, "-m", "mypy", "copa"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_orchestrator_engine_and_reports_know_no_package_manager() -> None:
    """copa/api.py, the engine (copa/oci) and the report types import no adapter: everything family-specific is
    behind copa.pkg.detect's families and the adapter protocol (copa.pkg.base)."""
    import re

    adapters = re.compile(r"^\s*(?:from|import)\s+copa\.pkg\.(?:dpkg|apk|apt|rpm|effects)\b", re.M)
    files = [ROOT / "copa/api.py", *sorted((ROOT / "copa/oci").glob("*.py")),
             *sorted((ROOT / "copa/report").glob("*.py"))]
    offenders = [str(f.relative_to(ROOT)) for f in files if adapters.search(f.read_text())]
    assert not offenders, offenders
