"""The dpkg adapter on cases the live archive cannot give on demand, with real dpkg as the oracle.

A tiny Debian image (tests/support/debimage.py) has 1.0 of a few packages installed by real dpkg; a local signed
repository has their 2.0. copa patches the image through the real CLI; the same 2.0 .debs are installed into a copy
of the image's rootfs by `dpkg --force-confold -i`; the patched image, unpacked by umoci (which checks every digest),
must be the same tree as dpkg's: files, modes, links, the status file, info/*.list, *.md5sums and *.conffiles.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.support import debimage
from tests.support.aptrepo import AptRepo, RepoServer
from tests.support.trivy import dpkg_versions, write_report

ROOT = Path(__file__).resolve().parents[1]


def copa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "copa", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "COPA_DEBUG": ""})


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one error line; every other stderr line must be a progress line."""
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in lines if line.startswith("copa: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    return errors[0]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(tmp_path_factory.mktemp("report") / "trivy.json", debimage.FIXES)


@pytest.fixture(scope="module")
def patched(base: debimage.BaseImage, repo: AptRepo, server: RepoServer, report: Path,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("patched")
    out = work / "layout"
    proc = copa("patch", "-i", base.image_ref, "-r", str(report), "--oci-dir", str(out), "-t", "patched",
                "--ignore-errors", "--json", *debimage.copa_args(server.url, repo))
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    result["layout"] = out
    result["rootfs"] = debimage.unpack_layout(out, "patched", work / "bundle")
    return result


@pytest.fixture(scope="module")
def oracle(base: debimage.BaseImage, repo: AptRepo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    debs = [repo.deb(name, version) for name, version in debimage.ORACLE_DEBS]
    return debimage.dpkg_oracle(base.rootfs, tmp_path_factory.mktemp("oracle") / "rootfs", debs)


def updates(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {u["name"]: u for u in result["updates"]}


def last_layer_names(layout: Path, ref: str) -> list[str]:
    index = json.loads((layout / "index.json").read_text())
    desc = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == ref)
    manifest = json.loads((layout / "blobs" / "sha256" / desc["digest"].split(":")[1]).read_text())
    blob = layout / "blobs" / "sha256" / manifest["layers"][-1]["digest"].split(":")[1]
    with tarfile.open(blob, "r:*") as tar:
        return tar.getnames()


# --------------------------------------------------------------------------------------------- the whole tree


def test_patched_tree_equals_dpkg(patched: dict[str, Any], oracle: Path) -> None:
    """Every path, mode, owner, link and byte (the dpkg database included) is what dpkg itself leaves."""
    diff = debimage.tree_diff(debimage.tree(patched["rootfs"]), debimage.tree(oracle))
    assert not diff, "patched image differs from dpkg's result:\n" + "\n".join(diff)


def test_dpkg_audits_and_verifies_like_the_oracle(patched: dict[str, Any], oracle: Path) -> None:
    """dpkg finds the database consistent, and --verify flags exactly what it flags on its own result."""
    for root in (patched["rootfs"], oracle):
        audit = subprocess.run(["dpkg", f"--root={root}", "--audit"], capture_output=True, text=True)
        assert audit.returncode == 0 and audit.stdout == "", audit.stdout + audit.stderr
    verify = [subprocess.run(["dpkg", f"--root={root}", "--verify"], capture_output=True, text=True).stdout
              for root in (patched["rootfs"], oracle)]
    assert verify[0] == verify[1]
    assert debimage.CONF_EDITED in verify[1]  # the oracle does notice the admin's edit: the check can fail


# --------------------------------------------------------------------------------------------- case 1: new dep


def test_new_dependency_is_installed(patched: dict[str, Any], base: debimage.BaseImage) -> None:
    got = updates(patched)
    assert got["app"]["kind"] == "reported" and got["app"]["to"] == "2.0"
    assert got["libnew"] == {**got["libnew"], "kind": "new", "from": "", "to": "2.0", "vulnerabilities": []}
    names = [u["name"] for u in patched["updates"]]
    assert names.index("libnew") < names.index("app")  # unpack order: dependencies first
    assert "libnew" not in dpkg_versions(base.rootfs)
    assert dpkg_versions(patched["rootfs"])["libnew"] == "2.0"


# --------------------------------------------------------------------------------------------- case 2: dropped


def test_dropped_file_is_whited_out(patched: dict[str, Any], base: debimage.BaseImage) -> None:
    assert (base.rootfs / "usr/share/app/old.txt").is_file()
    assert not (patched["rootfs"] / "usr/share/app/old.txt").exists()
    names = last_layer_names(patched["layout"], "patched")
    assert "usr/share/app/.wh.old.txt" in names
    # Files land where dpkg puts them: bin/app through the image's bin -> usr/bin link, never over the link.
    assert "usr/bin/app" in names and not any(n == "bin" or n.startswith("bin/") for n in names)
    assert (patched["rootfs"] / "bin").is_symlink()


# --------------------------------------------------------------------------------------------- case 3: conffiles


@pytest.mark.parametrize(
    ("conffile", "content", "dist"),
    [
        (debimage.CONF_EDITED, debimage.ADMIN_EDIT, True),  # edited + changed upstream: kept, new one beside it
        (debimage.CONF_SAME, debimage.ADMIN_EDIT, False),  # edited, unchanged upstream: kept, nothing beside it
        (debimage.CONF_PRISTINE, "2.0", False),  # untouched: replaced
        (debimage.CONF_DELETED, None, True),  # deleted + changed upstream: stays deleted, new one beside it
    ],
)
def test_conffiles_as_dpkg_confold(patched: dict[str, Any], oracle: Path, conffile: str, content: str | None,
                                   dist: bool) -> None:
    def state(root: Path) -> tuple[str | None, str | None]:
        path = root / conffile.lstrip("/")
        dist_path = path.with_name(path.name + ".dpkg-dist")
        return (path.read_text() if path.exists() else None,
                dist_path.read_text() if dist_path.exists() else None)

    mine, theirs = state(patched["rootfs"]), state(oracle)
    assert mine == theirs
    if content is None:
        assert mine[0] is None
    else:
        assert mine[0] is not None and content in mine[0]
    assert (mine[1] is not None) == dist
    if dist:
        assert "conf 2.0" in (mine[1] or "")


# --------------------------------------------------------------------------------------------- case 4: siblings


def test_pinned_sibling_moves_along(patched: dict[str, Any]) -> None:
    got = updates(patched)
    assert "foo-tools" not in debimage.FIXES
    assert got["libfoo1"]["kind"] == "reported"
    assert got["foo-tools"]["kind"] == "sibling" and got["foo-tools"]["to"] == "2.0"
    versions = dpkg_versions(patched["rootfs"])
    assert versions["libfoo1"] == versions["foo-tools"] == "2.0"
    # Multi-Arch: same packages keep their arch-qualified info files.
    assert (patched["rootfs"] / "var/lib/dpkg/info/libfoo1:amd64.list").is_file()


# --------------------------------------------------------------------------------------------- case 5: no fix


def test_missing_fix_is_skipped_with_ignore_errors(patched: dict[str, Any]) -> None:
    skipped = {s["name"]: s for s in patched["skipped"]}
    assert skipped[debimage.MISSING_FIX]["reason"] == "no repository has the fixed version"
    assert "9.0" in skipped[debimage.MISSING_FIX]["detail"]
    assert debimage.MISSING_FIX not in updates(patched)
    assert dpkg_versions(patched["rootfs"])[debimage.MISSING_FIX] == "1.0"


def test_missing_fix_fails_and_writes_nothing(base: debimage.BaseImage, repo: AptRepo, server: RepoServer,
                                              report: Path, tmp_path: Path) -> None:
    out, tar = tmp_path / "layout", tmp_path / "out.tar"
    fetched = len(server.requests)
    proc = copa("patch", "-i", base.image_ref, "-r", str(report), "--oci-dir", str(out), "--output-tar", str(tar),
                *debimage.copa_args(server.url, repo))
    assert proc.returncode == 7, proc.stderr
    line = error_line(proc)
    assert debimage.MISSING_FIX in line and "--ignore-errors" in line
    assert not out.exists() and not tar.exists()
    assert not [p for p in server.requests[fetched:] if p.endswith(".deb")]


# --------------------------------------------------------------------------------------------- case 6: held


def test_held_package_is_reported_and_left_alone(patched: dict[str, Any]) -> None:
    skipped = {s["name"]: s for s in patched["skipped"]}
    assert skipped[debimage.HELD]["reason"] == "held by the image's package manager"
    assert debimage.HELD not in updates(patched)
    status = subprocess.run(["dpkg-query", f"--admindir={patched['rootfs']}/var/lib/dpkg", "-W", "-f",
                             "${Version} ${db:Status-Want}", debimage.HELD], capture_output=True, text=True,
                            check=True).stdout
    assert status == "1.0 hold"
    assert (patched["rootfs"] / "usr/share/held/version").read_text() == "1.0\n"


# --------------------------------------------------------------------------------------------- case 7: up to date


def test_nothing_to_update_writes_nothing(base: debimage.BaseImage, repo: AptRepo, server: RepoServer,
                                          tmp_path: Path) -> None:
    report = write_report(tmp_path / "r.json", {"app": ("1.0", "1.0"), "conf": ("1.0", "1.0~rc1")})
    out = tmp_path / "layout"
    proc = copa("patch", "-i", base.image_ref, "-r", str(report), "--oci-dir", str(out),
                *debimage.copa_args(server.url, repo))
    assert proc.returncode == 0, proc.stderr
    assert "already up to date" in proc.stdout
    assert not out.exists()


# --------------------------------------------------------------------------------------------- case 8: dry run


def test_dry_run_prints_the_plan_and_writes_nothing(base: debimage.BaseImage, repo: AptRepo, server: RepoServer,
                                                    report: Path, tmp_path: Path) -> None:
    out = tmp_path / "layout"
    fetched = len(server.requests)
    proc = copa("patch", "-i", base.image_ref, "-r", str(report), "--oci-dir", str(out), "--dry-run",
                "--ignore-errors", *debimage.copa_args(server.url, repo))
    assert proc.returncode == 0, proc.stderr
    assert "would update 5 packages" in proc.stdout
    for name in ("app", "libnew", "conf", "libfoo1", "foo-tools"):
        assert f"  {name} " in proc.stdout
    assert f"not fixed: {debimage.HELD}" in proc.stdout and f"not fixed: {debimage.MISSING_FIX}" in proc.stdout
    assert not out.exists()
    assert not [p for p in server.requests[fetched:] if p.endswith(".deb")]  # planning needs indexes only
