"""Scanner plugins (`-s NAME` runs `copa-NAME REPORT` from PATH, Copacetic's protocol) and what -s trivy, grype and
native mean. The plugins are real executables the tests write into a directory put first on PATH."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

import copa.api
import copa.report.plugin
from copa.errors import ReportError, UsageError
from copa.report import load_report

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures" / "reports"
TRIVY = FIXTURES / "trivy-debian-mixed.json"
GRYPE = FIXTURES / "grype" / "grype-debian-mixed.json"
V1ALPHA1 = FIXTURES / "v1alpha1-debian.json"
V1ALPHA2 = FIXTURES / "v1alpha2-debian.json"

# A plugin in the spirit of copa-grype: reads a Trivy report (the file copa passes) and prints a v1alpha2 manifest.
CONVERTER = f"""#!{sys.executable}
import json, sys
doc = json.load(open(sys.argv[1]))
updates = [{{"name": v["PkgName"], "installedVersion": v["InstalledVersion"], "fixedVersion": v.get("FixedVersion", ""),
            "vulnerabilityID": v["VulnerabilityID"], "type": r.get("Type", ""), "class": r["Class"]}}
           for r in doc["Results"] if r.get("Class") == "os-pkgs" for v in r.get("Vulnerabilities") or []]
print("converting", sys.argv[1], file=sys.stderr)  # log lines on stderr must not matter
meta = doc["Metadata"]
os_info = {{"type": meta["OS"]["Family"], "version": meta["OS"]["Name"]}}
config = {{"arch": meta["ImageConfig"]["architecture"]}}
json.dump({{"apiVersion": "v1alpha2", "metadata": {{"os": os_info, "config": config}}, "osupdates": updates,
           "langupdates": []}}, sys.stdout)
"""

PLUGINS = {
    "v1": f'#!/bin/sh\necho "$1" > "$(dirname "$0")/v1.arg"\nexec cat {V1ALPHA1}\n',
    "v2": f"#!/bin/sh\nexec cat {V1ALPHA2}\n",
    "convert": CONVERTER,
    "fails": "#!/bin/sh\necho 'boom: cannot parse the report' >&2\necho 'second line' >&2\nexit 3\n",
    "quiet-fail": "#!/bin/sh\nexit 1\n",
    "killed": "#!/bin/sh\nkill -9 $$\n",
    "junk": "#!/bin/sh\necho 'this is not JSON'\n",
    "nothing": "#!/bin/sh\nexit 0\n",
    "trivy-out": f"#!/bin/sh\nexec cat {TRIVY}\n",
    "array": "#!/bin/sh\necho '[1, 2]'\n",
    "bad-manifest": "#!/bin/sh\necho '{\"apiVersion\": \"v1alpha1\", \"metadata\": {}}'\n",
    "flood": "#!/bin/sh\nexec yes copa\n",
    # a child that outlives the plugin's deadline, holding stdout open: both must be gone after the timeout
    "hangs": '#!/bin/sh\nsleep 60 &\necho $! > "$(dirname "$0")/hangs.pid"\nwait\n',
    "noisy": f"#!/bin/sh\nhead -c 3000000 /dev/zero | tr '\\0' x >&2\nexec cat {V1ALPHA1}\n",
    "no-shebang": "echo hi\n",
}


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("plugins")
    for name, text in PLUGINS.items():
        p = d / f"copa-{name}"
        p.write_text(text)
        p.chmod(0o755)
    (d / "copa-not-executable").write_text(PLUGINS["v1"])
    return d


@pytest.fixture
def on_path(plugin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("PATH", f"{plugin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    yield plugin_dir


def test_v1alpha1_plugin(on_path: Path) -> None:
    report = load_report(TRIVY, "v1")
    assert (on_path / "v1.arg").read_text().strip() == str(TRIVY)  # the report path is the one argument
    # what the plugin printed, read as copa reads the same manifest from a file; the source is the user's report
    assert report == replace(load_report(V1ALPHA1), source=str(TRIVY))
    assert report.format == "v1alpha1"


def test_v1alpha2_plugin(on_path: Path) -> None:
    report = load_report(TRIVY, "v2")
    assert report == replace(load_report(V1ALPHA2), source=str(TRIVY))
    assert report.platform is not None and str(report.platform) == "linux/arm64"


def test_converting_plugin_agrees_with_reading_the_report(on_path: Path) -> None:
    """Differential: a plugin turning the Trivy report into v1alpha2 gives what copa reads from the report itself."""
    via_plugin, direct = load_report(TRIVY, "convert"), load_report(TRIVY)
    assert via_plugin.packages == direct.packages and via_plugin.packages
    assert via_plugin.unfixed == direct.unfixed
    assert via_plugin.os == direct.os and via_plugin.platform == direct.platform


def test_stderr_noise_does_not_stall_or_corrupt(on_path: Path) -> None:
    # 3 MB on stderr before stdout: a reader waiting on stdout alone would deadlock on the full stderr pipe
    assert load_report(TRIVY, "noisy").packages == load_report(V1ALPHA1).packages


ERRORS = [
    ("fails", "scanner plugin copa-fails exited with status 3 on {report}: boom: cannot parse the report"),
    ("quiet-fail", "scanner plugin copa-quiet-fail exited with status 1 on {report} (nothing on stderr)"),
    ("killed", "scanner plugin copa-killed was killed by signal 9 on {report}"),
    ("junk", "copa-junk's output for {report}: not valid JSON at line 1 column 1"),
    ("nothing", "copa-nothing's output for {report}: the plugin printed nothing"),
    ("trivy-out", "copa-trivy-out's output for {report}: Trivy JSON: a scanner plugin must print a manifest with "
                  "apiVersion v1alpha1 or v1alpha2"),
    ("array", "copa-array's output for {report}: report must be a JSON object, not list"),
    ("bad-manifest", "copa-bad-manifest's output for {report}: missing field metadata.os"),
    ("absent", "scanner plugin copa-absent not found on PATH: install it as an executable named copa-absent in a "
               "PATH directory, or use -s trivy, grype, native"),
    ("not-executable", "scanner plugin copa-not-executable not found on PATH"),
    ("no-shebang", "cannot be run: Exec format error"),
]


@pytest.mark.parametrize(("name", "message"), ERRORS, ids=[e[0] for e in ERRORS])
def test_plugin_errors(on_path: Path, name: str, message: str) -> None:
    with pytest.raises(ReportError) as info:
        load_report(TRIVY, name)
    text = str(info.value)
    assert info.value.exit_code == 3
    assert message.format(report=TRIVY) in text, text
    assert "\n" not in text and "second line" not in text


def test_flood_is_cut(on_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copa.report.plugin, "MAX_OUTPUT_BYTES", 1 << 20)
    started = time.monotonic()
    with pytest.raises(ReportError, match=r"copa-flood printed more than 1048576 bytes, too much for an update"):
        load_report(TRIVY, "flood")
    assert time.monotonic() - started < 10


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_timeout_kills_the_plugin_and_its_children(on_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ReportError, match=r"scanner plugin copa-hangs timed out after 0.5 s on "):
        load_report(TRIVY, "hangs", plugin_timeout=0.5)
    assert time.monotonic() - started < 5
    child = int((on_path / "hangs.pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the plugin's child survived the timeout"


def test_missing_report_is_named_before_running(on_path: Path, tmp_path: Path) -> None:
    (on_path / "v1.arg").unlink(missing_ok=True)
    with pytest.raises(ReportError, match="report file does not exist"):
        load_report(tmp_path / "absent.json", "v1")
    assert not (on_path / "v1.arg").exists()


@pytest.mark.parametrize("name", ["../evil", "a b", "-x", ""])
def test_invalid_scanner_names_are_usage_errors(name: str) -> None:
    with pytest.raises(UsageError, match="invalid scanner name") as info:
        load_report(TRIVY, name)
    assert info.value.exit_code == 2


# -- built-in scanner names ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("scanner", "path"), [
    (None, TRIVY), (None, GRYPE), (None, V1ALPHA1), (None, V1ALPHA2),
    ("trivy", TRIVY), ("grype", GRYPE), ("native", V1ALPHA1), ("native", V1ALPHA2),
])
def test_builtin_scanner_reads_its_format(scanner: str | None, path: Path) -> None:
    assert load_report(path, scanner) == load_report(path)


@pytest.mark.parametrize(("scanner", "path", "message"), [
    ("trivy", GRYPE, "is Grype JSON, but -s trivy expects Trivy JSON: pass -s grype, or leave -s out"),
    ("grype", TRIVY, "is Trivy JSON, but -s grype expects Grype JSON: pass -s trivy"),
    ("native", TRIVY, "is Trivy JSON, but -s native expects a copa/Copacetic v1alpha1/v1alpha2 manifest: "
                      "pass -s trivy"),
    ("trivy", V1ALPHA2, "is a copa/Copacetic v1alpha1/v1alpha2 manifest, but -s trivy expects Trivy JSON: "
                        "pass -s native"),
    ("grype", V1ALPHA1, "but -s grype expects Grype JSON: pass -s native"),
])
def test_builtin_scanner_names_the_mismatch(scanner: str, path: Path, message: str) -> None:
    with pytest.raises(ReportError) as info:
        load_report(path, scanner)
    assert message in str(info.value) and str(path) in str(info.value)


def _wired() -> bool:
    # The orchestrator passes -s to the report loader (the lead wires load_report/load_reports into copa.api.patch).
    return "options.scanner" in inspect.getsource(copa.api)


@pytest.mark.skipif(not _wired(), reason="copa.api.patch does not pass options.scanner to the report loader yet")
def test_cli_plugin_failure_is_one_line_exit_3(plugin_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{plugin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "copa", "patch", "-i", f"oci:{tmp_path}/none:app", "-r", str(TRIVY),
                           "-s", "fails", "--dry-run"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip() == (f"copa: error: scanner plugin copa-fails exited with status 3 on {TRIVY}: "
                                   f"boom: cannot parse the report")
    assert proc.stdout == ""
