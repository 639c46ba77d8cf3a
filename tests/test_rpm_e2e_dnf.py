"""dnf itself as the oracle for a whole patch: `copa patch` against `dnf --installroot COPY upgrade PKGS -y`.

The image (UBI 9-like, rpmdb.sqlite by the real rpm) reads two repositories from /etc/yum.repos.d: `baseos`
(default priority) and `appstream` (priority=10). The report names three packages:
* libfoo: a plain upgrade whose new build breaks foo-tools' `= 1.0` pin (co-upgraded) and has an edited
  %config(noreplace) file;
* app: its new version needs libdep >= 2, which baseos has as 2.5 and the higher-priority appstream as 2.0: dnf
  takes 2.0 (priority before version);
* legacy: replaced by `modern`, which Obsoletes legacy < 2 and Provides legacy = 2.0 (the installed legacy
  build is still in the repository);
* oldb: has a newer build, which newb obsoletes as well: dnf replaces oldb by newb;
* keepc: has a newer build 2.5 that newc (Obsoletes keepc < 2) does not obsolete: dnf upgrades keepc.

The oracle runs dnf in a copy of the image (HOME/.rpmmacros pointing rpm at /var/lib/rpm, scripts off). copa's
patched root must have the same files (less what dnf itself writes: its history database, cache and logs) and
`rpm -qa` must list the same packages and EVRs. syft must read the new versions from the patched layout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import debimage, images
from tests.support.aptrepo import RepoServer
from tests.support.rpmrepo import createrepo
from tests.support.rpmtools import RpmFile, RpmSpec, build_rpm, init_root, rpm_root_args
from tests.support.trivy import write_report

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("dnf") is None or shutil.which("rpmbuild") is None,
                                 reason="needs dnf and rpmbuild as the oracle")]

ROOT = Path(__file__).resolve().parents[1]
REF = "ubi9"
OS_RELEASE = ('NAME="Red Hat Enterprise Linux"\nVERSION="9.4 (Plow)"\nID="rhel"\nID_LIKE="fedora"\nVERSION_ID="9.4"\n'
              'PLATFORM_ID="platform:el9"\nPRETTY_NAME="Red Hat Enterprise Linux 9.4 (Plow)"\n')
# What dnf itself writes into the installroot: its history database and state, its cache (cachedir is taken
# inside the installroot), its logs (and var/log, absent from the image), and an empty /etc/dnf/modules.d.
DNF_OWN = ("var/lib/dnf", "var/cache", "var/log", "etc/dnf")


def _pkg(name: str, version: str, **kw: object) -> RpmSpec:
    kw.setdefault("files", (RpmFile(f"/usr/share/{name}/VERSION", f"{name} {version}\n".encode()),))
    return RpmSpec(name, version, "1.el9", **kw)  # type: ignore[arg-type]


def _lib(version: str) -> RpmSpec:
    return _pkg("libfoo", version, arch="x86_64", provides=("libfoo.so.1()(64bit)",), files=(
        RpmFile("/usr/lib64/libfoo.so.1", f"libfoo {version}\n".encode(), 0o755),
        RpmFile("/usr/lib64/libfoo.so", kind="symlink", target="libfoo.so.1"),
        RpmFile("/etc/foo.conf", f"setting={version}\n".encode(), attr="%config(noreplace)"),
        RpmFile("/usr/share/foo", kind="dir"),
        RpmFile("/usr/share/foo/data", f"data {version}\n".encode()),
    ))


OLD = [
    _lib("1.0"),
    _pkg("foo-tools", "1.0", requires=("libfoo = 1.0-1.el9",)),
    _pkg("app", "1.0", requires=("libdep >= 1",)),
    _pkg("libdep", "1.0"),
    _pkg("legacy", "1.0", files=(RpmFile("/usr/share/legacy/data", b"legacy\n"),
                                 RpmFile("/usr/bin/legacy", b"#!/bin/true\n", 0o755))),
    _pkg("bystander", "1.0"),
    _pkg("oldb", "1.0"), _pkg("keepc", "1.0"),
]
BASEOS = [
    _lib("1.1"),
    _pkg("foo-tools", "1.1", requires=("libfoo = 1.1-1.el9",)),
    _pkg("app", "1.1", requires=("libdep >= 2",)),
    _pkg("libdep", "2.5"),  # newer, but in the lower-priority repository
    OLD[4],  # the installed legacy build is still in the repository, as repositories keep old builds
    # A newer oldb that newb obsoletes too: dnf takes newb. A newer keepc that newc does not obsolete: dnf
    # takes keepc 2.5.
    _pkg("oldb", "1.1"), _pkg("newb", "2.0", obsoletes=("oldb < 2",), provides=("oldb = 2.0",)),
    _pkg("keepc", "2.5"), _pkg("newc", "2.0", obsoletes=("keepc < 2",), provides=("keepc = 2.0",)),
    _pkg("modern", "2.0", obsoletes=("legacy < 2",), provides=("legacy = 2.0",),
         files=(RpmFile("/usr/share/modern/data", b"modern\n"), RpmFile("/usr/bin/legacy", b"#!/bin/true\n# 2\n",
                                                                         0o755))),
]
APPSTREAM = [_pkg("libdep", "2.0")]  # priority=10


@dataclass(frozen=True)
class World:
    root: Path
    layout: Path
    home: Path
    cache: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("rpm-dnf-e2e")
    old = [build_rpm(s, tmp / "old") for s in OLD]
    served = tmp / "served"
    for specs, sub in ((BASEOS, "baseos"), (APPSTREAM, "appstream")):
        for s in specs:
            build_rpm(s, served / sub)
        createrepo(served / sub)
    root = tmp / "root"
    init_root(root, old)
    (root / "etc/yum.repos.d").mkdir(parents=True)
    (root / "etc/os-release").write_text(OS_RELEASE)
    (root / "etc/foo.conf").write_text("setting=edited by the admin\n")
    home = tmp / "home"
    home.mkdir()
    (home / ".rpmmacros").write_text("%_dbpath /var/lib/rpm\n")
    with RepoServer(served) as server:
        (root / "etc/yum.repos.d/ubi.repo").write_text(
            f"[baseos]\nname=BaseOS\nbaseurl={server.url}/baseos\nenabled=1\ngpgcheck=0\n\n"
            f"[appstream]\nname=AppStream\nbaseurl={server.url}/appstream\nenabled=1\ngpgcheck=0\npriority=10\n")
        images.builder.make_oci_layout(root, tmp / "layout", REF, cmd=None)
        yield World(root, tmp / "layout", home, tmp / "dnf-cache")


REPORT = {"libfoo": ("1.0-1.el9", "1.1-1.el9"), "app": ("1.0-1.el9", "1.1-1.el9"),
          "legacy": ("1.0-1.el9", "2.0-1.el9"), "oldb": ("1.0-1.el9", "1.1-1.el9"), "keepc": ("1.0-1.el9", "2.5-1.el9")}


@dataclass(frozen=True)
class Patched:
    root: Path
    layout: Path
    result: dict[str, object]


@pytest.fixture(scope="module")
def patched(world: World, tmp_path_factory: pytest.TempPathFactory) -> Patched:
    tmp = tmp_path_factory.mktemp("rpm-dnf-patched")
    report = write_report(tmp / "trivy.json", REPORT, os_version="9.4", family="redhat")
    proc = subprocess.run([sys.executable, "-m", "copa", "patch", "-i", f"oci:{world.layout}:{REF}", "-r",
                           str(report), "--oci-dir", str(tmp / "out"), "-t", "patched", "--json"],
                          cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "SOURCE_DATE_EPOCH": "1704067200", "COPA_DEBUG": ""})
    assert proc.returncode == 0, proc.stderr
    return Patched(debimage.unpack_layout(tmp / "out", "patched", tmp / "bundle"), tmp / "out", json.loads(proc.stdout))


@pytest.fixture(scope="module")
def oracle(world: World, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = debimage.copy_rootfs(world.root, tmp_path_factory.mktemp("rpm-dnf-oracle") / "root")
    proc = subprocess.run(
        ["dnf", "--installroot", str(root), "--setopt=cachedir=/var/cache/dnf", "--releasever=9",
         "--disableplugin=*", "--setopt=tsflags=noscripts", "-y", "upgrade", *REPORT],
        capture_output=True, text=True, env={**os.environ, "HOME": str(world.home), "LC_ALL": "C"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root, proc.stdout


def test_dnf_did_what_the_test_means(oracle: tuple[Path, str]) -> None:
    _, out = oracle
    rows = {line.split()[0]: line.split()[2] for line in out.splitlines()
            if line.startswith(" ") and len(line.split()) >= 5}
    assert rows["libdep"] == "2.0-1.el9" and rows["keepc"] == "2.5-1.el9" and "oldb" not in rows, out
    assert "replacing  legacy.noarch" in out and "replacing  oldb.noarch" in out, out


def test_files_equal_dnf(patched: Patched, oracle: tuple[Path, str]) -> None:
    theirs, _ = oracle

    def skip(root: Path) -> frozenset[str]:
        out = {str(p.relative_to(root)) for p in (root / "var/lib/rpm").iterdir()}  # compared through rpm below
        for own in DNF_OWN:
            base = root / own
            if base.exists():
                out.add(own)
                out |= {str(p.relative_to(root)) for p in base.rglob("*")}
        return frozenset(out)

    diff = debimage.tree_diff(debimage.tree(patched.root, skip(patched.root)), debimage.tree(theirs, skip(theirs)))
    assert not diff, "\n".join(diff)
    assert (patched.root / "etc/foo.conf.rpmnew").read_text() == "setting=1.1\n"
    assert not (patched.root / "usr/share/legacy/data").exists()  # the directory is unowned: rpm leaves it too
    assert (patched.root / "usr/bin/legacy").read_text() == "#!/bin/true\n# 2\n"  # modern owns it now


def test_rpm_qa_equal_dnf(patched: Patched, oracle: tuple[Path, str]) -> None:
    theirs, _ = oracle
    fmt = "%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE} %{ARCH}\\n"
    got = subprocess.run([*rpm_root_args(patched.root), "-qa", "--qf", fmt], capture_output=True, text=True)
    want = subprocess.run([*rpm_root_args(theirs), "-qa", "--qf", fmt], capture_output=True, text=True)
    assert got.returncode == 0 and sorted(got.stdout.splitlines()) == sorted(want.stdout.splitlines())
    check = subprocess.run(["rpmdb", "--root", str(patched.root), "--dbpath", "/var/lib/rpm", "--verifydb"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_syft_reads_the_sqlite_rpmdb(patched: Patched) -> None:
    syft = shutil.which("syft") or str(Path(sys.executable).parent / "syft")
    out = subprocess.run([syft, "scan", f"oci-dir:{patched.layout}", "-o", "json", "-q"], capture_output=True,
                         text=True, env={**os.environ, "SYFT_CHECK_FOR_APP_UPDATE": "false"})
    assert out.returncode == 0, out.stderr
    found = {(a["name"], a["version"]) for a in json.loads(out.stdout)["artifacts"] if a["type"] == "rpm"}
    for u in patched.result["updates"]:  # type: ignore[attr-defined]
        if u["kind"] != "removed":
            assert (u["name"], u["to"]) in found, f"syft does not see {u['name']} {u['to']}: {sorted(found)}"
    assert not {n for n, _ in found} & {"legacy"}, found


def test_plan_names_the_replacement(patched: Patched) -> None:
    updates = {u["name"]: (u["from"], u["to"], u["kind"]) for u in patched.result["updates"]}  # type: ignore[attr-defined]
    assert updates == {
        "libfoo": ("1.0-1.el9", "1.1-1.el9", "reported"), "foo-tools": ("1.0-1.el9", "1.1-1.el9", "co-upgraded"),
        "app": ("1.0-1.el9", "1.1-1.el9", "reported"), "libdep": ("1.0-1.el9", "2.0-1.el9", "dependency"),
        "modern": ("", "2.0-1.el9", "reported"), "legacy": ("1.0-1.el9", "", "removed"),
        "newb": ("", "2.0-1.el9", "reported"), "oldb": ("1.0-1.el9", "", "removed"),
        "keepc": ("1.0-1.el9", "2.5-1.el9", "reported")}, updates


def test_no_report_plans_dnf_upgrade(world: World, tmp_path: Path) -> None:
    """Without a report: `dnf upgrade` of everything (the obsoleted package replaced too)."""
    root = debimage.copy_rootfs(world.root, tmp_path / "root")  # dnf writes its state even with --assumeno
    proc = subprocess.run(
        ["dnf", "--installroot", str(root), "--setopt=cachedir=/var/cache/dnf", "--releasever=9",
         "--disableplugin=*", "--assumeno", "upgrade"],
        capture_output=True, text=True, env={**os.environ, "HOME": str(world.home), "LC_ALL": "C"})
    text = proc.stdout + proc.stderr
    assert "Operation aborted" in text, text
    want, section = set(), ""
    for line in text.splitlines():
        if line and not line.startswith(" "):
            section = line.split(":")[0]
            continue
        m = line.split()
        if len(m) >= 4 and section.startswith(("Upgrading", "Installing")):
            want.add((m[0], m[2]))
    got = subprocess.run([sys.executable, "-m", "copa", "patch", "-i", f"oci:{world.layout}:{REF}", "--dry-run",
                          "--json"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "COPA_CACHE_DIR": str(tmp_path / "copa-cache"), "COPA_DEBUG": ""})
    assert got.returncode == 0, got.stderr
    plan = {(u["name"], u["to"]) for u in json.loads(got.stdout)["updates"] if u["kind"] != "removed"}
    assert plan == want, text
