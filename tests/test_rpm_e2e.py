"""RPM images end to end: copa patches a root rpm built, and the result equals what real rpm -U does.

The image: old packages installed by the real rpm 4.18 into a root (rpmdb.sqlite, as UBI 9 has it), an
/etc/os-release and a .repo file as UBI 9 carries them (gpgcheck=1 with the key in /etc/pki/rpm-gpg), a config file
the admin edited (%config(noreplace): kept, new one as .rpmnew) and another (%config: replaced, old as .rpmsave).
The repository: newer builds signed by a test key, served on 127.0.0.1 by createrepo_c metadata. The oracle: a copy
of the root upgraded by `rpm -U --nodeps --noscripts` with the same packages. Files (content, mode, owner, links)
and `rpm -qa` must be equal; `rpm -V` and `rpmdb --verifydb` must accept copa's root.
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
from tests.support.rpmtools import (
    GpgKey,
    RpmFile,
    RpmSpec,
    build_rpm,
    init_root,
    make_gpg_key,
    rpm_root_args,
    sign_rpms,
)
from tests.support.trivy import write_report

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("rpmbuild") is None, reason="needs rpm tools")]

ROOT = Path(__file__).resolve().parents[1]
REF = "ubi"
OS_RELEASE = 'NAME="Red Hat Enterprise Linux"\nVERSION="9.4 (Plow)"\nID="rhel"\nID_LIKE="fedora"\n' \
             'VERSION_ID="9.4"\nPRETTY_NAME="Red Hat Enterprise Linux 9.4 (Plow)"\n'


def _lib(version: str, release: str, payload: str, extra: tuple[RpmFile, ...] = ()) -> RpmSpec:
    files = (
        RpmFile("/usr/lib64/libfoo.so.1", f"libfoo {version}\n".encode(), 0o755),
        RpmFile("/usr/lib64/libfoo.so", kind="symlink", target="libfoo.so.1"),
        RpmFile("/etc/foo.conf", f"setting={version}\n".encode(), attr="%config(noreplace)"),
        RpmFile("/etc/foo-plain.conf", f"plain={version}\n".encode(), attr="%config"),
        RpmFile("/usr/share/foo", kind="dir"),
        RpmFile("/usr/share/foo/data", f"data {version}\n".encode()),
        RpmFile("/usr/share/foo/link", kind="hardlink", target="/usr/share/foo/data"),
        RpmFile("/var/log/foo.log", b"", attr="%ghost"),
        RpmFile("/usr/bin/foo-setuid", b"#!/bin/true\n", 0o4755),
        *extra,
    )
    return RpmSpec("libfoo", version, release, arch="x86_64", files=files, payload=payload,
                   provides=("libfoo.so.1()(64bit)",))


OLD = [
    _lib("1.0", "1.el9", "gzip", (RpmFile("/usr/share/foo/dropped", b"gone in 1.1\n"),)),
    RpmSpec("foo-tools", "1.0", "1.el9", files=(RpmFile("/usr/bin/foo", b"#!/bin/true\n", 0o755),),
            requires=("libfoo = 1.0-1.el9",)),
    RpmSpec("bystander", "2.0", "1.el9", files=(RpmFile("/usr/share/bystander/x", b"x\n"),)),
]
NEW = [
    _lib("1.1", "1.el9", "xz"),
    RpmSpec("foo-tools", "1.1", "1.el9", files=(RpmFile("/usr/bin/foo", b"#!/bin/true\n# 1.1\n", 0o755),),
            requires=("libfoo = 1.1-1.el9", "newdep"), payload="zstd"),
    RpmSpec("newdep", "3.0", "2.el9", files=(RpmFile("/usr/share/newdep/README", b"new\n"),), payload="bzip2"),
]


@dataclass(frozen=True)
class World:
    root: Path
    layout: Path
    repo: Path
    key: GpgKey
    server_url: str
    new_rpms: tuple[Path, ...]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("rpm-e2e")
    key = make_gpg_key(tmp / "gpg", "rsa3072")
    old = [build_rpm(s, tmp / "old") for s in OLD]
    repo = tmp / "repo"
    new = [build_rpm(s, repo) for s in NEW]
    sign_rpms(new, key)
    createrepo(repo)
    root = tmp / "root"
    init_root(root, old)
    (root / "etc/yum.repos.d").mkdir(parents=True)
    (root / "etc/pki/rpm-gpg").mkdir(parents=True)
    shutil.copy(key.public, root / "etc/pki/rpm-gpg/RPM-GPG-KEY-copa-test")
    (root / "etc/os-release").write_text(OS_RELEASE)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "etc/foo.conf").write_text("setting=edited by the admin\n")
    (root / "etc/foo-plain.conf").write_text("plain=edited by the admin\n")
    with RepoServer(repo) as server:
        (root / "etc/yum.repos.d/copa-test.repo").write_text(
            f"[copa-test]\nname=copa test\nbaseurl={server.url}/\nenabled=1\ngpgcheck=1\n"
            "gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-copa-test\n")
        images.builder.make_oci_layout(root, tmp / "layout", REF, cmd=None)
        yield World(root, tmp / "layout", repo, key, server.url, tuple(new))


def copa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "copa", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "SOURCE_DATE_EPOCH": "1704067200", "COPA_DEBUG": ""})


def rpm_q(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*rpm_root_args(root), *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def patched(world: World, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    tmp = tmp_path_factory.mktemp("rpm-patched")
    report = write_report(tmp / "trivy.json", {"libfoo": ("1.0-1.el9", "1.1-1.el9")}, os_version="9.4",
                          family="redhat")
    proc = copa("patch", "-i", f"oci:{world.layout}:{REF}", "-r", str(report), "--oci-dir", str(tmp / "out"),
                "-t", "patched", "--json")
    assert proc.returncode == 0, proc.stderr
    return debimage.unpack_layout(tmp / "out", "patched", tmp / "bundle"), json.loads(proc.stdout)


@pytest.fixture(scope="module")
def oracle(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = debimage.copy_rootfs(world.root, tmp_path_factory.mktemp("rpm-oracle") / "root")
    proc = rpm_q(root, "-U", "--nodeps", "--noscripts", "--notriggers", *map(str, world.new_rpms))
    assert proc.returncode == 0, proc.stderr
    return root


def test_plan_is_dnfs(patched: tuple[Path, dict[str, object]]) -> None:
    _, result = patched
    updates = {u["name"]: (u["to"], u["kind"]) for u in result["updates"]}  # type: ignore[union-attr, index]
    assert updates == {"libfoo": ("1.1-1.el9", "reported"), "foo-tools": ("1.1-1.el9", "co-upgraded"),
                       "newdep": ("3.0-2.el9", "new")}


def test_files_equal_rpm_upgrade(patched: tuple[Path, dict[str, object]], oracle: Path) -> None:
    root, _ = patched
    skip = frozenset({"var/lib/rpm/rpmdb.sqlite", "var/lib/rpm/rpmdb.sqlite-shm", "var/lib/rpm/rpmdb.sqlite-wal",
                      "var/lib/rpm/.rpm.lock"})
    diff = debimage.tree_diff(debimage.tree(root, skip), debimage.tree(oracle, skip))
    assert not diff, "\n".join(diff)
    assert (root / "etc/foo.conf").read_text() == "setting=edited by the admin\n"
    assert (root / "etc/foo.conf.rpmnew").read_text() == "setting=1.1\n"
    assert (root / "etc/foo-plain.conf.rpmsave").read_text() == "plain=edited by the admin\n"
    assert not (root / "usr/share/foo/dropped").exists()


def test_rpm_accepts_the_database(patched: tuple[Path, dict[str, object]], oracle: Path) -> None:
    root, _ = patched
    fmt = "%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE} %{ARCH}\\n"
    got, want = rpm_q(root, "-qa", "--qf", fmt), rpm_q(oracle, "-qa", "--qf", fmt)
    assert got.returncode == 0 and sorted(got.stdout.splitlines()) == sorted(want.stdout.splitlines())
    verify = rpm_q(root, "-V", "libfoo", "foo-tools", "newdep", "bystander")
    want_verify = rpm_q(oracle, "-V", "libfoo", "foo-tools", "newdep", "bystander")
    # The edited config files differ from the package in both (S, 5); their mtimes (T) depend on when the test
    # edited them and on the layout builder's clamping, not on copa.
    def masked(out: str) -> list[str]:
        return [line[:7] + "." + line[8:] if len(line) > 8 else line for line in out.splitlines()]

    assert masked(verify.stdout) == masked(want_verify.stdout), verify.stdout + verify.stderr
    assert rpm_q(root, "-qf", "/usr/lib64/libfoo.so.1", "--qf", "%{NAME}-%{VERSION}").stdout == "libfoo-1.1"
    assert rpm_q(root, "-q", "--whatprovides", "libfoo.so.1()(64bit)", "--qf", "%{NAME}").stdout == "libfoo"
    check = subprocess.run(["rpmdb", "--root", str(root), "--dbpath", "/var/lib/rpm", "--verifydb"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_unsigned_package_refused(world: World, tmp_path: Path) -> None:
    """A repository whose packages carry no signature while gpgcheck=1: exit 5, nothing written."""
    unsigned = tmp_path / "repo"
    for s in NEW:
        build_rpm(s, unsigned)
    createrepo(unsigned)
    report = write_report(tmp_path / "trivy.json", {"libfoo": ("1.0-1.el9", "1.1-1.el9")}, os_version="9.4",
                          family="redhat")
    with RepoServer(unsigned) as server:
        proc = copa("patch", "-i", f"oci:{world.layout}:{REF}", "-r", str(report), "--oci-dir",
                    str(tmp_path / "out"), "--mirror", f"{world.server_url}={server.url}")
    assert proc.returncode == 5, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("copa: error: ")]
    assert "Traceback" not in proc.stderr and len(errors) == 1 and "not signed" in errors[0], proc.stderr
    assert not (tmp_path / "out" / "index.json").exists()
