"""BerkeleyDB images end to end (UBI 8 / RHEL 8, Amazon Linux 2): copa writes the rpmdb in BerkeleyDB, and the
result equals what real rpm -U does.

The image: old packages installed by the real rpm 4.18 (which writes sqlite), the database then converted to the
BerkeleyDB files RHEL 8 has (tests/test_rpmdb_bdb.py's to_bdb: the Packages hash and index btrees made by
db5.3_load), plus the stale __db.* environment rpm 4.14 leaves. Each image carries its distribution's
os-release and repository file: UBI 8's ubi.repo (baseurl, gpgcheck=1, RPM-GPG-KEY-redhat-release); Amazon Linux
2's amzn2-core.repo (a mirrorlist built from /etc/yum/vars, priority=10, RPM-GPG-KEY-amazon-linux-2), reached
through --mirror as an air-gapped user would. The repository holds newer builds signed by a test key.

The oracle: a copy of the image converted to sqlite by `rpmdb --rebuilddb` (Debian's rpm cannot write
BerkeleyDB) and upgraded by `rpm -U --nodeps --noscripts`. Files must be equal; `rpm -qa` read from copa's
BerkeleyDB (`_db_backend bdb_ro`) must equal the oracle's; `rpm -V` through bdb_ro must accept copa's root;
db5.3_verify every database file; syft must list the new versions from the Berkeley Packages file.
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
from tests.support.rpmtools import RpmFile, RpmSpec, build_rpm, init_root, make_gpg_key, sign_rpms
from tests.support.trivy import write_report
from tests.test_rpmdb_bdb import to_bdb

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("db5.3_load") is None or shutil.which("rpmbuild") is None,
                                 reason="needs db5.3-util, rpm and rpmbuild")]

ROOT = Path(__file__).resolve().parents[1]
REF = "img"
DB = "var/lib/rpm"


def _lib(version: str, dist: str, extra: tuple[RpmFile, ...] = ()) -> RpmSpec:
    files = (
        RpmFile("/usr/lib64/libfoo.so.1", f"libfoo {version}\n".encode(), 0o755),
        RpmFile("/usr/lib64/libfoo.so", kind="symlink", target="libfoo.so.1"),
        RpmFile("/etc/foo.conf", f"setting={version}\n".encode(), attr="%config(noreplace)"),
        RpmFile("/usr/share/foo", kind="dir"),
        RpmFile("/usr/share/foo/data", f"data {version}\n".encode()),
        *extra,
    )
    return RpmSpec("libfoo", version, f"1.{dist}", arch="x86_64", files=files, provides=("libfoo.so.1()(64bit)",))


def _specs(dist: str) -> tuple[list[RpmSpec], list[RpmSpec]]:
    old = [
        _lib("1.0", dist, (RpmFile("/usr/share/foo/dropped", b"gone in 1.1\n"),)),
        RpmSpec("foo-tools", "1.0", f"1.{dist}", files=(RpmFile("/usr/bin/foo", b"#!/bin/true\n", 0o755),),
                requires=(f"libfoo = 1.0-1.{dist}",)),
        RpmSpec("bystander", "2.0", f"1.{dist}", files=(RpmFile("/usr/share/bystander/x", b"x\n"),)),
    ]
    new = [
        _lib("1.1", dist),
        RpmSpec("foo-tools", "1.1", f"1.{dist}", files=(RpmFile("/usr/bin/foo", b"#!/bin/true\n# 1.1\n", 0o755),),
                requires=(f"libfoo = 1.1-1.{dist}", "newdep"), payload="xz"),
        RpmSpec("newdep", "3.0", f"2.{dist}", files=(RpmFile("/usr/share/newdep/README", b"new\n"),)),
    ]
    return old, new


@dataclass(frozen=True)
class Distro:
    name: str
    dist: str
    os_release: str
    family: str  # Trivy's Metadata.OS
    os_name: str
    key_file: str
    vars: tuple[tuple[str, str], ...] = ()


UBI8 = Distro("ubi8", "el8", 'NAME="Red Hat Enterprise Linux"\nVERSION="8.10 (Ootpa)"\nID="rhel"\nID_LIKE="fedora"\n'
              'VERSION_ID="8.10"\nPLATFORM_ID="platform:el8"\nPRETTY_NAME="Red Hat Enterprise Linux 8.10 (Ootpa)"\n',
              "redhat", "8.10", "RPM-GPG-KEY-redhat-release")
AL2 = Distro("amzn2", "amzn2", 'NAME="Amazon Linux"\nVERSION="2"\nID="amzn"\nID_LIKE="centos rhel fedora"\n'
             'VERSION_ID="2"\nPRETTY_NAME="Amazon Linux 2"\nANSI_COLOR="0;33"\n'
             'CPE_NAME="cpe:2.3:o:amazon:amazon_linux:2"\n',
             "amazon", "2 (Karoo)", "RPM-GPG-KEY-amazon-linux-2",
             (("amazonlinux", "amazonlinux"), ("awsdomain", "amazonaws.com"), ("awsproto", "https"),
              ("awsregion", "us-east-1"), ("product", "core"), ("target", "latest")))
AL2_MIRROR = "https://amazonlinux.us-east-1.amazonaws.com"
AL2_CDN = "https://cdn.amazonlinux.com"


@dataclass(frozen=True)
class World:
    distro: Distro
    root: Path  # the BerkeleyDB image root
    layout: Path
    new_rpms: tuple[Path, ...]
    copa_args: tuple[str, ...]  # --mirror for Amazon Linux 2


@pytest.fixture(scope="module", params=[UBI8, AL2], ids=lambda d: d.name)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    distro: Distro = request.param
    tmp = tmp_path_factory.mktemp(f"rpm-bdb-{distro.name}")
    old_specs, new_specs = _specs(distro.dist)
    key = make_gpg_key(tmp / "gpg")
    old = [build_rpm(s, tmp / "old") for s in old_specs]
    served = tmp / "served"
    # Amazon Linux 2: the mirrorlist at $awsproto://$amazonlinux.$awsregion.$awsdomain/$releasever/$product/
    # $target/$basearch/mirror.list names the CDN's versioned directory, as the real one does.
    repo = served / "2/core/2.0/x86_64/0123abcd" if distro is AL2 else served / "ubi8/appstream"
    new = [build_rpm(s, repo) for s in new_specs]
    sign_rpms(new, key)
    createrepo(repo)
    root = tmp / "root"
    init_root(root, old)
    for d in ("etc/yum.repos.d", "etc/pki/rpm-gpg", "etc/yum/vars"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(key.public, root / "etc/pki/rpm-gpg" / distro.key_file)
    (root / "etc/os-release").write_text(distro.os_release)
    (root / "etc/foo.conf").write_text("setting=edited by the admin\n")
    for name, value in distro.vars:
        (root / "etc/yum/vars" / name).write_text(value + "\n")
    to_bdb(root)
    (root / DB / "__db.001").write_bytes(b"\0" * 8192)  # rpm 4.14's environment, stale in an image
    (root / DB / "__db.002").write_bytes(b"\0" * 8192)
    with RepoServer(served) as server:
        if distro is AL2:
            (served / "2/core/latest/x86_64").mkdir(parents=True)
            (served / "2/core/latest/x86_64/mirror.list").write_text(f"{AL2_CDN}/2/core/2.0/x86_64/0123abcd\n")
            (root / "etc/yum.conf").write_text(
                "[main]\ncachedir=/var/cache/yum/$basearch/$releasever\nkeepcache=0\ndebuglevel=2\n"
                "logfile=/var/log/yum.log\nexactarch=1\nobsoletes=1\ngpgcheck=1\nplugins=1\ninstallonly_limit=3\n"
                "distroverpkg=system-release\ntimeout=5\nretries=7\n")
            (root / "etc/yum.repos.d/amzn2-core.repo").write_text(
                "[amzn2-core]\nname=Amazon Linux 2 core repository\nmirrorlist=$awsproto://$amazonlinux.$awsregion."
                "$awsdomain/$releasever/$product/$target/$basearch/mirror.list\npriority=10\ngpgcheck=1\n"
                "gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-amazon-linux-2\nenabled=1\nmetadata_expire=300\n"
                "mirrorlist_expire=300\nreport_instanceid=yes\n\n"
                "[amzn2-core-source]\nname=Amazon Linux 2 core repository - source packages\n"
                "mirrorlist=$awsproto://$amazonlinux.$awsregion.$awsdomain/$releasever/$product/$target/SRPMS/"
                "mirror.list\npriority=10\ngpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-amazon-linux-2\nenabled=0\n"
                "metadata_expire=300\nmirrorlist_expire=300\nreport_instanceid=yes\n")
            args: tuple[str, ...] = ("--mirror", f"{AL2_MIRROR}={server.url}", "--mirror", f"{AL2_CDN}={server.url}")
        else:
            (root / "etc/yum.repos.d/ubi.repo").write_text(
                f"[ubi-8-appstream-rpms]\nname = Red Hat Universal Base Image 8 (RPMs) - AppStream\n"
                f"baseurl = {server.url}/ubi8/appstream\nenabled = 1\n"
                "gpgkey = file:///etc/pki/rpm-gpg/RPM-GPG-KEY-redhat-release\ngpgcheck = 1\n\n"
                "[ubi-8-appstream-source]\nname = Red Hat Universal Base Image 8 (Source RPMs) - AppStream\n"
                f"baseurl = {server.url}/ubi8/appstream-source\nenabled = 0\n"
                "gpgkey = file:///etc/pki/rpm-gpg/RPM-GPG-KEY-redhat-release\ngpgcheck = 1\n")
            args = ()
        images.builder.make_oci_layout(root, tmp / "layout", REF, cmd=None)
        yield World(distro, root, tmp / "layout", tuple(new), args)


def copa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "copa", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "SOURCE_DATE_EPOCH": "1704067200", "COPA_DEBUG": ""})


def rpm(root: Path, backend: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rpm", "--root", str(root), "--dbpath", "/" + DB, "--define", f"_db_backend {backend}",
                           *args], capture_output=True, text=True)


@dataclass(frozen=True)
class Patched:
    root: Path
    layout: Path
    result: dict[str, object]


@pytest.fixture(scope="module")
def patched(world: World, tmp_path_factory: pytest.TempPathFactory) -> Patched:
    tmp = tmp_path_factory.mktemp("rpm-bdb-patched")
    d = world.distro
    report = write_report(tmp / "trivy.json", {"libfoo": (f"1.0-1.{d.dist}", f"1.1-1.{d.dist}")},
                          os_version=d.os_name, family=d.family)
    proc = copa("patch", "-i", f"oci:{world.layout}:{REF}", "-r", str(report), "--oci-dir", str(tmp / "out"),
                "-t", "patched", "--json", *world.copa_args)
    assert proc.returncode == 0, proc.stderr
    return Patched(debimage.unpack_layout(tmp / "out", "patched", tmp / "bundle"), tmp / "out", json.loads(proc.stdout))


@pytest.fixture(scope="module")
def oracle(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = debimage.copy_rootfs(world.root, tmp_path_factory.mktemp("rpm-bdb-oracle") / "root")
    for stale in root.joinpath(DB).glob("__db.*"):
        stale.unlink()
    rebuilt = subprocess.run(["rpmdb", "--root", str(root), "--dbpath", "/" + DB, "--define", "_db_backend sqlite",
                              "--rebuilddb"], capture_output=True, text=True)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (root / DB / "rpmdb.sqlite").is_file() and not (root / DB / "Packages").exists()
    proc = rpm(root, "sqlite", "-U", "--nodeps", "--noscripts", "--notriggers", *map(str, world.new_rpms))
    assert proc.returncode == 0, proc.stderr
    return root


def test_plan(world: World, patched: Patched) -> None:
    d = world.distro.dist
    updates = {u["name"]: (u["to"], u["kind"]) for u in patched.result["updates"]}  # type: ignore[attr-defined]
    assert updates == {"libfoo": (f"1.1-1.{d}", "reported"), "foo-tools": (f"1.1-1.{d}", "co-upgraded"),
                       "newdep": (f"3.0-2.{d}", "new")}


def test_files_equal_rpm_upgrade(patched: Patched, oracle: Path) -> None:
    skip = frozenset(str(p.relative_to(root)) for root in (patched.root, oracle)
                     for p in (root / DB).iterdir())  # the databases: compared through rpm below
    diff = debimage.tree_diff(debimage.tree(patched.root, skip), debimage.tree(oracle, skip))
    assert not diff, "\n".join(diff)
    assert (patched.root / "etc/foo.conf").read_text() == "setting=edited by the admin\n"
    assert (patched.root / "etc/foo.conf.rpmnew").read_text() == "setting=1.1\n"
    assert not (patched.root / "usr/share/foo/dropped").exists()


def test_database_stays_berkeley(patched: Patched, oracle: Path) -> None:
    files = sorted(p.name for p in (patched.root / DB).iterdir())
    assert "Packages" in files and not any(f.startswith(("__db.", "rpmdb.sqlite")) for f in files), files
    for name in (f for f in files if not f.startswith(".")):  # .rpm.lock: rpm's empty lock file
        proc = subprocess.run(["db5.3_verify", "-q", str(patched.root / DB / name)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
    fmt = "%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE} %{ARCH}\\n"
    got, want = rpm(patched.root, "bdb_ro", "-qa", "--qf", fmt), rpm(oracle, "sqlite", "-qa", "--qf", fmt)
    assert got.returncode == 0 and "sqlite" not in got.stderr, got.stderr
    assert sorted(got.stdout.splitlines()) == sorted(want.stdout.splitlines())
    names = ("libfoo", "foo-tools", "newdep", "bystander")
    verify, want_verify = rpm(patched.root, "bdb_ro", "-V", *names), rpm(oracle, "sqlite", "-V", *names)

    def masked(out: str) -> list[str]:  # the edited config's mtime (T) is the test's, not copa's
        return [line[:7] + "." + line[8:] if len(line) > 8 else line for line in out.splitlines()]

    assert masked(verify.stdout) == masked(want_verify.stdout), verify.stdout + verify.stderr
    assert rpm(patched.root, "bdb_ro", "-qf", "/usr/bin/foo", "--qf", "%{NAME}-%{VERSION}").stdout == "foo-tools-1.1"
    assert rpm(patched.root, "bdb_ro", "-q", "--whatprovides", "libfoo.so.1()(64bit)",
               "--qf", "%{VERSION}").stdout == "1.1"


def test_syft_reads_the_berkeley_packages(patched: Patched) -> None:
    syft = shutil.which("syft") or str(Path(sys.executable).parent / "syft")
    out = subprocess.run([syft, "scan", f"oci-dir:{patched.layout}", "-o", "json", "-q"], capture_output=True,
                         text=True, env={**os.environ, "SYFT_CHECK_FOR_APP_UPDATE": "false"})
    assert out.returncode == 0, out.stderr
    found = {(a["name"], a["version"]) for a in json.loads(out.stdout)["artifacts"] if a["type"] == "rpm"}
    for u in patched.result["updates"]:  # type: ignore[attr-defined]
        assert (u["name"], u["to"]) in found, f"syft does not see {u['name']} {u['to']}: {sorted(found)}"
    assert not any(n == "libfoo" and v.startswith("1.0") for n, v in found)
