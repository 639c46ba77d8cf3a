"""The CLI in a shell pipeline: a reader that goes away early (`copa patch ... --json | head -c 20`) or a
closed stderr must not turn a finished patch into an error, and the result must still be written. Also
`copa --version`, which names each package-manager format.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from copa.oci.layout import LayoutSource
from copa.oci.model import Manifest
from copa.pkg.detect import FAMILIES
from tests.support import images
from tests.support.trivy import dpkg_versions, fixed_packages, write_report

pytestmark = [pytest.mark.live]

ROOT = Path(__file__).resolve().parents[1]
PREFERRED = ("libexpat1", "libssh2-1", "liblzma5", "libpcre2-8-0")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    fixes = fixed_packages(dpkg_versions(images.debian_rootfs()), dpkg_versions(images.oracle_rootfs()))
    name = next((n for n in PREFERRED if n in fixes), next(iter(fixes), None))
    assert name is not None, "the fixture image has nothing to fix"
    return write_report(tmp_path_factory.mktemp("pipes") / "trivy.json", {name: fixes[name]})


def shell(command: str) -> subprocess.CompletedProcess[str]:
    # bash, so `2>&-` really closes the descriptor and `| head` really closes the pipe early.
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1704067200"}
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=False)


def copa_cmd(*args: str | Path) -> str:
    return " ".join(shlex.quote(str(a)) for a in (sys.executable, "-m", "copa", *args))


def test_stdout_closed_early_still_writes_the_image(report: Path, tmp_path: Path) -> None:
    layout, name = images.debian_layout()
    out = tmp_path / "out"
    # --json is several KB; head keeps 20 bytes and exits, so copa's write meets a closed pipe.
    proc = shell(copa_cmd("patch", "-i", f"oci:{layout}:{name}", "-r", report, "--oci-dir", out, "-t", "p",
                          "--json", "--progress", "quiet") + " | head -c 20")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("{") and len(proc.stdout) == 20
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert proc.stderr == ""
    # The image is there, whole: the layout's ref resolves and the patched manifest has one more layer.
    source = LayoutSource(out, "p")
    original = LayoutSource(layout, name)
    root, before = source.root(), original.root()
    assert isinstance(root, Manifest) and isinstance(before, Manifest)
    assert root.layers[:-1] == before.layers and len(root.layers) == len(before.layers) + 1


def test_stderr_closed_runs_to_the_end(report: Path, tmp_path: Path) -> None:
    layout, name = images.debian_layout()
    out = tmp_path / "out"
    proc = shell(copa_cmd("patch", "-i", f"oci:{layout}:{name}", "-r", report, "--oci-dir", out, "-t", "p",
                          "--json", "--progress", "plain") + " 2>&-")
    assert proc.returncode == 0
    result = json.loads(proc.stdout)
    assert result["outputs"] and result["outputs"][0]["kind"] == "oci-dir"
    assert LayoutSource(out, "p").root().digest.hex in result["outputs"][0]["digest"]


def test_error_with_stderr_closed_keeps_its_exit_code(tmp_path: Path) -> None:
    proc = shell(copa_cmd("patch", "-i", f"oci:{tmp_path / 'missing'}:x", "--oci-dir", tmp_path / "o") + " 2>&-")
    assert proc.returncode == 8, (proc.returncode, proc.stdout)
    assert proc.stdout == ""


def test_version_names_each_package_format() -> None:
    proc = shell(copa_cmd("--version"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("copa ")
    for family in FAMILIES:
        assert any(line.strip().startswith(f"{family}: ") for line in lines), proc.stdout
    # Closed early too: no traceback.
    closed = shell(copa_cmd("--version") + " | head -c 1")
    assert closed.returncode == 0 and "Traceback" not in closed.stderr and closed.stderr == ""
