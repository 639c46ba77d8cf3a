"""Review findings 9, 11 and 14 through the real CLI: one digest per sink (checked with skopeo), reports for
another distribution or release refused (exit 3), and bad tags refused before any work (exit 2)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from copa.oci.model import MediaType
from tests.support import images
from tests.support.registry import RunningRegistry
from tests.support.trivy import dpkg_versions, fixed_packages, write_report
from tests.test_engine_e2e import PREFERRED, copa, error_lines, run

pytestmark = [pytest.mark.live, pytest.mark.slow]


@pytest.fixture(scope="module")
def fix() -> tuple[str, str, str]:
    fixes = fixed_packages(dpkg_versions(images.debian_rootfs()), dpkg_versions(images.oracle_rootfs()))
    name = next((n for n in PREFERRED if n in fixes), None) or sorted(fixes)[0]
    return name, *fixes[name]


def _report(path: Path, fix: tuple[str, str, str], **kw: str) -> Path:
    name, old, new = fix
    return write_report(path, {name: (old, new)}, **kw)


def test_each_sink_reports_its_own_digest(anon_registry: RunningRegistry, fix: tuple[str, str, str],
                                          tmp_path: Path) -> None:
    """A Docker v2s2 source: the registry keeps v2s2, the layout gets OCI manifests (another digest)."""
    src, ref = images.debian_layout()
    images.push_layout(src, ref, anon_registry.host, "outputs/v2s2:1", fmt="v2s2")
    report = _report(tmp_path / "r.json", fix)
    layout, tar = tmp_path / "out", tmp_path / "out.tar"
    proc = copa("patch", "-i", f"{anon_registry.host}/outputs/v2s2:1", "-r", str(report), "--push",
                "--oci-dir", str(layout), "--output-tar", str(tar), "--json")
    result = json.loads(proc.stdout)
    by_kind = {o["kind"]: o for o in result["outputs"]}
    assert set(by_kind) == {"registry", "oci-dir", "output-tar"}
    pushed = json.loads(run("skopeo", "inspect", "--tls-verify=false",
                            f"docker://{anon_registry.host}/outputs/v2s2:1-patched"))
    assert by_kind["registry"]["digest"] == pushed["Digest"] == result["digest"]
    in_layout = json.loads(run("skopeo", "inspect", f"oci:{layout}:1-patched"))
    assert by_kind["oci-dir"]["digest"] == in_layout["Digest"] != pushed["Digest"]
    raw = json.loads(run("skopeo", "inspect", "--raw", f"oci:{layout}:1-patched"))
    assert raw["mediaType"] == MediaType.OCI_MANIFEST
    # The archive's identity is the image ID: its config digest, as skopeo reports it.
    manifest_raw = run("skopeo", "inspect", "--raw", f"docker-archive:{tar}")
    archived = json.loads(manifest_raw)
    assert by_kind["output-tar"]["digest"] == archived["config"]["digest"]
    # The text summary names every sink.
    text = copa("patch", "-i", f"{anon_registry.host}/outputs/v2s2:1", "-r", str(report), "--oci-dir",
                str(tmp_path / "again"), "-t", "t2").stdout
    assert f"oci:{tmp_path / 'again'}:t2 (digest sha256:" in text


@pytest.mark.parametrize(
    ("family", "version", "needle"),
    [("ubuntu", "22.04", "ubuntu 22.04"), ("debian", "11.9", "debian 11.9"), ("alpine", "3.19.1", "alpine")],
)
def test_report_for_another_os_or_release_is_exit_3(fix: tuple[str, str, str], tmp_path: Path, family: str,
                                                    version: str, needle: str) -> None:
    src, ref = images.debian_layout()
    report = _report(tmp_path / "r.json", fix, family=family, os_version=version)
    proc = copa("patch", "-i", f"oci:{src}:{ref}", "-r", str(report), "--oci-dir", str(tmp_path / "o"), check=False)
    assert proc.returncode == 3, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and needle in lines[0] and "Debian" in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_matching_release_passes_the_check(fix: tuple[str, str, str], tmp_path: Path) -> None:
    src, ref = images.debian_layout()
    report = _report(tmp_path / "r.json", fix, os_version="12.99")
    proc = copa("patch", "-i", f"oci:{src}:{ref}", "-r", str(report), "--dry-run")
    assert fix[0] in proc.stdout


@pytest.mark.parametrize("flags", [("-t", "v1 patched"), ("-t", "-x"), ("--tag-suffix", "p/q"),
                                   ("--tag-suffix", "x" * 130)])
def test_bad_tag_is_a_usage_error_before_any_work(fix: tuple[str, str, str], tmp_path: Path,
                                                  flags: tuple[str, str]) -> None:
    src, ref = images.debian_layout()
    report = _report(tmp_path / "r.json", fix)
    started = time.monotonic()
    proc = copa("patch", "-i", f"oci:{src}:{ref}", "-r", str(report), "--oci-dir", str(tmp_path / "o"), *flags,
                check=False)
    assert proc.returncode == 2, proc.stderr
    assert len(error_lines(proc.stderr)) == 1
    assert "reading the image's files" not in proc.stderr
    assert time.monotonic() - started < 10


def test_name_colon_tag_names_a_layout_image(fix: tuple[str, str, str], tmp_path: Path) -> None:
    """-t NAME:TAG for an image from a layout still names the docker-archive's RepoTag."""
    src, ref = images.debian_layout()
    report = _report(tmp_path / "r.json", fix)
    tar = tmp_path / "o.tar"
    copa("patch", "-i", f"oci:{src}:{ref}", "-r", str(report), "--output-tar", str(tar), "-t", "team/app:7")
    run("skopeo", "inspect", f"docker-archive:{tar}:team/app:7")
