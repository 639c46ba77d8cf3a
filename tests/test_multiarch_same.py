"""Multi-Arch: same packages installed for two architectures (amd64 + i386) are upgraded on both, in step, as apt
does, with what each architecture's new version needs on its own architecture.

A signed repository has amd64 and i386 packages; a small image where the real dpkg has `--add-architecture i386`
holds libfoo:amd64 and libfoo:i386 1.0 (Multi-Arch: same; a doc file identical in both, a library under each
architecture's own path, a shared file the new version drops) and their Multi-Arch: same dependency libfoo-dep on
both architectures. libfoo 1.1 needs libfoo-dep >= 1.1 (so each twin moves its own architecture's libfoo-dep), a
new Multi-Arch: same library libbar (new on both architectures) and a Multi-Arch: foreign tool at >= 1.1 (amd64
only: the i386 twin is satisfied by the amd64 tool).

(a) copa's plan equals `apt-get -s install --only-upgrade libfoo` by the host's apt with APT::Architectures
amd64,i386 on the image's status; (b) the patched image's files and dpkg database equal the real dpkg installing
the same .debs (`dpkg --root R -i ...`), and `dpkg --audit` on it is clean.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from copa.api import PatchOptions, patch
from copa.pkg.base import RepositoryOptions, UpdateKind
from tests.support import debimage, images
from tests.support.aptoracle import apt, simulated_installs
from tests.support.aptrepo import DebSpec, RepoServer, SigningKey, build_deb, build_repo, make_key
from tests.support.trivy import write_report

pytestmark = pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt on the host as the oracle")

ROOT = Path(__file__).resolve().parents[1]
REF = "multiarch"
ARCHES = ("amd64", "i386")
TRIPLET = {"amd64": "x86_64-linux-gnu", "i386": "i386-linux-gnu"}


def _libfoo(version: str, arch: str) -> DebSpec:
    files: dict[str, str] = {
        "usr/share/doc/libfoo/copyright": f"libfoo {version}: shared by every architecture\n",
        f"usr/lib/{TRIPLET[arch]}/libfoo.so.1": f"libfoo {version} for {arch}\n",
    }
    control = {"Multi-Arch": "same", "Source": "foo"}
    if version == "1.0":
        files["usr/share/doc/libfoo/old-notes"] = "dropped by 1.1\n"
        control["Depends"] = "libfoo-dep (>= 1.0)"
    else:
        control["Depends"] = "libfoo-dep (>= 1.1), libbar, foo-tool (>= 1.1)"
    return DebSpec("libfoo", version, arch=arch, files=files, control=control)


def _same(name: str, version: str, arch: str) -> DebSpec:
    return DebSpec(name, version, arch=arch, control={"Multi-Arch": "same"},
                   files={f"usr/share/doc/{name}/copyright": f"{name}\n",
                          f"usr/lib/{TRIPLET[arch]}/{name}.so": f"{name} {version} {arch}\n"})


def _tool(version: str) -> DebSpec:
    return DebSpec("foo-tool", version, control={"Multi-Arch": "foreign"},
                   files={"usr/bin/foo-tool": f"#!/bin/sh\necho {version}\n"})


PACKAGES: list[DebSpec] = [
    *(_libfoo(v, a) for v in ("1.0", "1.1") for a in ARCHES),
    *(_same("libfoo-dep", v, a) for v in ("1.0", "1.1") for a in ARCHES),
    *(_same("libbar", "1.0", a) for a in ARCHES),
    _tool("1.0"), _tool("1.1"),
]
INSTALLED = [s for s in PACKAGES if s.version == "1.0" and s.name != "libbar"]


@dataclass(frozen=True)
class World:
    key: SigningKey
    root: Path
    layout: Path
    lists: Path
    debs: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("multiarch")
    key = make_key(tmp / "key")
    build_repo(tmp / "srv/stable", PACKAGES, key=key, suite="stable", codename="bookworm", architectures=ARCHES)
    with RepoServer(tmp / "srv") as server:
        root = tmp / "rootfs"
        for d in ("usr/lib", "etc/apt/apt.conf.d", "etc/apt/preferences.d", "var/lib/dpkg/info",
                  "var/lib/dpkg/updates", "var/lib/dpkg/triggers"):
            (root / d).mkdir(parents=True)
        (root / "usr/lib/os-release").write_text(debimage.OS_RELEASE)
        (root / "etc/os-release").symlink_to("../usr/lib/os-release")
        (root / "var/lib/dpkg/status").write_bytes(b"")
        (root / "etc/apt/sources.list").write_text(f"deb [signed-by={key.keyring}] {server.url}/stable stable main\n")
        debimage.run(["dpkg", f"--root={root}", "--add-architecture", "i386"], "dpkg --add-architecture")
        debimage.dpkg_install(root, [build_deb(s, tmp / "debs") for s in INSTALLED])
        for lock in ("lock", "lock-frontend"):
            (root / "var/lib/dpkg" / lock).unlink(missing_ok=True)
        state = tmp / "apt-update"
        apt(state, root, None, "apt-get", "update", architectures=ARCHES, refuse_warnings=True)
        images.builder.make_oci_layout(root, tmp / "layout", REF, cmd=None)
        yield World(key, root, tmp / "layout", state / "var/lib/apt/lists", tmp / "debs")


def _apt_plan(world: World, tmp: Path) -> frozenset[tuple[str, str]]:
    sim = apt(tmp / "apt", world.root, world.lists, "apt-get", "-s", "install", "--only-upgrade", "libfoo",
              architectures=ARCHES, refuse_warnings=True)
    return simulated_installs(sim.stdout)


def _copa_plan(world: World, tmp: Path, subset: tuple[str, ...]) -> frozenset[tuple[str, str]]:
    """copa's dry-run plan, named as apt prints it (a foreign-architecture package as name:arch)."""
    report = write_report(tmp / "report.json", dict.fromkeys(subset, ("1.0", "1.1")))
    result = patch(PatchOptions(image=f"oci:{world.layout}:{REF}", report=str(report), dry_run=True,
                                repos=RepositoryOptions(keyrings=(world.key.keyring,)), cache_dir=str(tmp / "cache")))
    return frozenset((u.name if u.architecture in ("amd64", "all") else f"{u.name}:{u.architecture}", u.new_version)
                     for u in result.updates if u.kind is not UpdateKind.REMOVED)


def test_image_has_both_architectures(world: World) -> None:
    status = (world.root / "var/lib/dpkg/status").read_text()
    assert "Package: libfoo\n" in status and "Architecture: i386" in status
    assert (world.root / "var/lib/dpkg/info/libfoo:i386.list").is_file()
    assert (world.root / "var/lib/dpkg/info/libfoo:amd64.list").is_file()
    assert (world.root / "var/lib/dpkg/arch").read_text().split() == ["amd64", "i386"]


def test_plan_equals_apt(world: World, tmp_path: Path) -> None:
    want = _apt_plan(world, tmp_path)
    # apt moves both twins, each with its own architecture's dependencies; the M-A: foreign tool once.
    assert want == {("libfoo", "1.1"), ("libfoo:i386", "1.1"), ("libfoo-dep", "1.1"), ("libfoo-dep:i386", "1.1"),
                    ("libbar", "1.0"), ("libbar:i386", "1.0"), ("foo-tool", "1.1")}, sorted(want)
    got = _copa_plan(world, tmp_path, ("libfoo",))
    assert got == want, f"\n    apt:  {sorted(want)}\n    copa: {sorted(got)}"


@pytest.mark.parametrize("subset", [("libfoo-dep",), ("foo-tool",), ("libfoo-dep", "foo-tool"),
                                    ("libfoo", "libfoo-dep", "foo-tool")])
def test_other_reports_plan_what_apt_does(world: World, tmp_path: Path, subset: tuple[str, ...]) -> None:
    sim = apt(tmp_path / "apt", world.root, world.lists, "apt-get", "-s", "install", "--only-upgrade", *subset,
              architectures=ARCHES, refuse_warnings=True)
    want = simulated_installs(sim.stdout)
    got = _copa_plan(world, tmp_path, subset)
    assert got == want, f"\n    apt:  {sorted(want)}\n    copa: {sorted(got)}"


def test_patched_image_equals_dpkg(world: World, tmp_path: Path) -> None:
    report = write_report(tmp_path / "report.json", {"libfoo": ("1.0", "1.1")})
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "copa", "patch", "-i", f"oci:{world.layout}:{REF}", "-r",
                           str(report), "--keyring", str(world.key.keyring), "--oci-dir", str(out), "-t", "patched"],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "SOURCE_DATE_EPOCH": "1704067200"})
    assert proc.returncode == 0, proc.stderr
    patched = debimage.unpack_layout(out, "patched", tmp_path / "bundle")

    new = [s for s in PACKAGES if s.version == "1.1" or s.name == "libbar"]
    oracle = debimage.dpkg_oracle(world.root, tmp_path / "oracle", [build_deb(s, tmp_path / "debs") for s in new])
    for lock in ("lock", "lock-frontend"):
        (oracle / "var/lib/dpkg" / lock).unlink(missing_ok=True)
    assert not (oracle / "usr/share/doc/libfoo/old-notes").exists()
    diff = debimage.tree_diff(debimage.tree(patched), debimage.tree(oracle))
    assert not diff, "\n".join(diff)
    audit = subprocess.run(["dpkg", f"--root={patched}", "--audit"], capture_output=True, text=True)
    assert audit.returncode == 0 and not audit.stdout.strip(), audit.stdout + audit.stderr
