"""Modular repositories (RHEL 8 AppStream) end to end: copa's plan is dnf's.

The image is UBI 8-like (os-release with PLATFORM_ID="platform:el8", rpmdb by the real rpm) with nodejs:14
enabled in /etc/dnf/modules.d. Its AppStream-like repository (createrepo_c + modifyrepo_c modules.yaml) has two
streams of nodejs: 14 (a newer build of the installed version) and 16 (newer still, and the module's default
stream), plus an ursine (non-modular) nodejs newer than both that modular filtering hides. A second repository
with module_hotfixes=1 holds a non-modular npm build that dnf offers only because of that flag.

The oracle is `dnf --installroot IMAGE upgrade [NAMES] --assumeno` reading the same .repo files; copa's
`patch --dry-run --json` must name the same packages and versions, with and without a report, and for other
module states of the same image: none (the default stream), disabled, stream 16 enabled, and a default from the
image's /etc/dnf/modules.defaults.d, and an enabled stream 20 whose modulemd requires platform el9 (the image is
el8 by its os-release PLATFORM_ID).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import debimage, images
from tests.support.aptrepo import RepoServer
from tests.support.rpmrepo import createrepo
from tests.support.rpmtools import RpmFile, RpmSpec, build_rpm, init_root, rpm_root_args
from tests.support.trivy import write_report

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("dnf") is None or shutil.which("modifyrepo_c") is None
                                 or shutil.which("rpmbuild") is None, reason="needs dnf, createrepo_c, rpmbuild")]

ROOT = Path(__file__).resolve().parents[1]
REF = "ubi8"
OS_RELEASE = ('NAME="Red Hat Enterprise Linux"\nVERSION="8.10 (Ootpa)"\nID="rhel"\nID_LIKE="fedora"\n'
              'VERSION_ID="8.10"\nPLATFORM_ID="platform:el8"\nPRETTY_NAME="Red Hat Enterprise Linux 8.10 (Ootpa)"\n')
M = ".module+el8.10.0+1000+abcdef12"


def _spec(name: str, version: str, release: str, **kw: object) -> RpmSpec:
    files = (RpmFile(f"/usr/share/{name}/{version}-{release}", f"{name} {version}\n".encode()),)
    return RpmSpec(name, version, release, epoch=1, arch="x86_64", files=files, **kw)  # type: ignore[arg-type]


OLD = [_spec("nodejs", "14.16.0", "1" + M), _spec("npm", "6.14.10", "1" + M, requires=("nodejs",)),
       RpmSpec("bystander", "1.0", "1.el8")]
APPSTREAM = [
    _spec("nodejs", "14.16.0", "2" + M),  # stream 14
    _spec("npm", "6.14.11", "1" + M, requires=("nodejs >= 1:14.16.0-2",)),  # stream 14
    _spec("nodejs", "16.14.0", "1" + M.replace("abcdef12", "16161616")),  # stream 16: newer
    _spec("npm", "8.3.1", "1" + M.replace("abcdef12", "16161616")),  # stream 16
    _spec("nodejs", "18.0.0", "1.el8"),  # ursine: hidden while a nodejs stream is active
    _spec("nodejs", "20.1.0", "1" + M.replace("abcdef12", "20202020")),  # stream 20: for el9 only
]
HOTFIX = [_spec("npm", "6.14.12", "1.hotfix.el8")]  # not a module artifact; offered by module_hotfixes=1


def _nevra(s: RpmSpec) -> str:
    return f"{s.name}-{s.epoch}:{s.version}-{s.release}.{s.arch}"


MODULES = f"""\
---
document: modulemd
version: 2
data:
  name: nodejs
  stream: "14"
  version: 8100020240101000000
  context: abcdef12
  arch: x86_64
  summary: Javascript runtime
  description: Node.js 14
  license: {{module: [MIT]}}
  dependencies:
  - buildrequires: {{platform: [el8.10.0]}}
    requires: {{platform: [el8]}}
  profiles:
    common: {{rpms: [nodejs, npm]}}
  artifacts:
    rpms: [{_nevra(APPSTREAM[0])}, {_nevra(APPSTREAM[1])}]
...
---
document: modulemd
version: 2
data:
  name: nodejs
  stream: "16"
  version: 8100020240201000000
  context: "16161616"
  arch: x86_64
  summary: Javascript runtime
  description: Node.js 16
  license: {{module: [MIT]}}
  dependencies:
  - buildrequires: {{platform: [el8.10.0]}}
    requires: {{platform: [el8]}}
  profiles:
    common: {{rpms: [nodejs, npm]}}
  artifacts:
    rpms: [{_nevra(APPSTREAM[2])}, {_nevra(APPSTREAM[3])}]
...
---
document: modulemd
version: 2
data:
  name: nodejs
  stream: "20"
  version: 9040020240301000000
  context: "20202020"
  arch: x86_64
  summary: Javascript runtime
  description: Node.js 20, built for el9 only
  license: {{module: [MIT]}}
  dependencies:
  - buildrequires: {{platform: [el9.4.0]}}
    requires: {{platform: [el9]}}
  artifacts:
    rpms: [{_nevra(APPSTREAM[5])}]
...
---
document: modulemd-defaults
version: 1
data:
  module: nodejs
  stream: "16"
  profiles: {{"16": [common]}}
...
"""


@dataclass(frozen=True)
class World:
    root: Path
    layout: Path
    home: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("rpm-modular")
    old = [build_rpm(s, tmp / "old") for s in OLD]
    appstream, hotfix = tmp / "appstream", tmp / "hotfix"
    for s in APPSTREAM:
        build_rpm(s, appstream)
    for s in HOTFIX:
        build_rpm(s, hotfix)
    createrepo(appstream)
    createrepo(hotfix)
    (tmp / "modules.yaml").write_text(MODULES)
    subprocess.run(["modifyrepo_c", "--mdtype=modules", str(tmp / "modules.yaml"),
                    str(appstream / "repodata")], check=True, capture_output=True)
    root = tmp / "root"
    init_root(root, old)
    (root / "etc/dnf/modules.d").mkdir(parents=True)
    (root / "etc/os-release").write_text(OS_RELEASE)
    (root / "etc/dnf/modules.d/nodejs.module").write_text(
        "[nodejs]\nname=nodejs\nstream=14\nprofiles=\nstate=enabled\n")
    (root / "etc/yum.repos.d").mkdir(parents=True)
    home = tmp / "home"
    home.mkdir()
    (home / ".rpmmacros").write_text("%_dbpath /var/lib/rpm\n")
    with RepoServer(appstream) as a, RepoServer(hotfix) as h:
        (root / "etc/yum.repos.d/ubi.repo").write_text(
            f"[ubi-8-appstream-rpms]\nname=AppStream\nbaseurl={a.url}/\nenabled=1\ngpgcheck=0\n\n"
            f"[hotfixes]\nname=hotfixes\nbaseurl={h.url}/\nenabled=1\ngpgcheck=0\nmodule_hotfixes=1\n")
        images.builder.make_oci_layout(root, tmp / "layout", REF, cmd=None)
        yield World(root, tmp / "layout", home)


def dnf_upgrade(world: World, tmp: Path, names: Sequence[str]) -> set[tuple[str, str]]:
    """(name, evr) of what `dnf upgrade NAMES --assumeno` would upgrade or install in the image (a copy: dnf
    writes its cache, logs and state into the installroot even then)."""
    root = tmp / "dnf-assumeno-root"
    shutil.copytree(world.root, root, symlinks=True)
    proc = subprocess.run(
        ["dnf", "--installroot", str(root), "--setopt=cachedir=/var/cache/dnf", "--releasever=8",
         "--disableplugin=*", "--setopt=install_weak_deps=True", "--assumeno", "upgrade", *names],
        capture_output=True, text=True, env={**os.environ, "HOME": str(world.home), "LC_ALL": "C"})
    text = proc.stdout + proc.stderr
    assert "Operation aborted" in text or "Nothing to do" in text, text
    out, section = set(), ""
    for line in text.splitlines():
        if re.match(r"^(Upgrading|Installing|Removing|Downgrading|Enabling|Obsoleting)", line):
            section = line.split(":")[0]
            continue
        m = re.match(r"^ (\S+)\s+(\S+)\s+(\S+)\s+\S+", line)
        if m and section.startswith(("Upgrading", "Installing")):
            out.add((m[1], m[3]))
    return out


def copa_plan(world: World, tmp: Path, report: dict[str, tuple[str, str]] | None) -> set[tuple[str, str]]:
    args = ["patch", "-i", f"oci:{world.layout}:{REF}", "--dry-run", "--json"]
    if report is not None:
        args += ["-r", str(write_report(tmp / "trivy.json", report, os_version="8.10", family="redhat"))]
    proc = subprocess.run([sys.executable, "-m", "copa", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "COPA_CACHE_DIR": str(tmp / "copa-cache"), "COPA_DEBUG": ""})
    assert proc.returncode == 0, proc.stderr
    return {(u["name"], u["to"]) for u in json.loads(proc.stdout)["updates"]}


def test_enabled_stream_not_the_newer_one(world: World, tmp_path: Path) -> None:
    want = dnf_upgrade(world, tmp_path, ["nodejs"])
    assert want == {("nodejs", "1:14.16.0-2" + M)}, want  # the oracle sees the streams as the test means
    got = copa_plan(world, tmp_path, {"nodejs": ("1:14.16.0-1" + M, "1:14.16.0-2" + M)})
    assert got == want


def test_hotfix_repository_is_not_filtered(world: World, tmp_path: Path) -> None:
    want = dnf_upgrade(world, tmp_path, ["npm"])
    assert ("npm", "1:6.14.12-1.hotfix.el8") in want, want
    got = copa_plan(world, tmp_path, {"npm": ("1:6.14.10-1" + M, "1:6.14.11-1" + M)})
    assert got == want


def test_upgrade_everything(world: World, tmp_path: Path) -> None:
    """No report: every installed package with a newer visible version, as `dnf upgrade`."""
    want = dnf_upgrade(world, tmp_path, [])
    assert copa_plan(world, tmp_path, None) == want


DEFAULTS_14 = """\
---
document: modulemd-defaults
version: 1
data:
  module: nodejs
  stream: "14"
...
"""


@pytest.mark.parametrize(("module_file", "defaults_file", "nodejs"), [
    (None, None, "16.14.0"),  # no state: the repository's default stream (16) is active
    ("[nodejs]\nname=nodejs\nstream=\nprofiles=\nstate=disabled\n", None, "18.0.0"),  # no stream: ursine
    ("[nodejs]\nname=nodejs\nstream=16\nprofiles=\nstate=enabled\n", None, "16.14.0"),  # switched to 16
    (None, DEFAULTS_14, "14.16.0"),  # the image's modules.defaults.d over the repository's default
    # stream 20 needs platform el9, the image is el8 (PLATFORM_ID): no active stream, the ursine build
    ("[nodejs]\nname=nodejs\nstream=20\nprofiles=\nstate=enabled\n", None, "18.0.0"),
], ids=["default-stream", "disabled", "enabled-16", "local-default", "enabled-20-other-platform"])
def test_module_states_as_dnf(world: World, tmp_path: Path, module_file: str | None, defaults_file: str | None,
                              nodejs: str) -> None:
    root = tmp_path / "root"
    shutil.copytree(world.root, root, symlinks=True)
    (root / "etc/dnf/modules.d/nodejs.module").unlink()
    if module_file is not None:
        (root / "etc/dnf/modules.d/nodejs.module").write_text(module_file)
    if defaults_file is not None:
        (root / "etc/dnf/modules.defaults.d").mkdir(parents=True)
        (root / "etc/dnf/modules.defaults.d/nodejs.yaml").write_text(defaults_file)
    images.builder.make_oci_layout(root, tmp_path / "layout", REF, cmd=None)
    variant = World(root, tmp_path / "layout", world.home)
    want = dnf_upgrade(variant, tmp_path, [])
    assert any(n == "nodejs" and evr.startswith(f"1:{nodejs}-") for n, evr in want), want
    assert copa_plan(variant, tmp_path, None) == want


def test_patch_equals_dnf_upgrade(world: World, tmp_path: Path) -> None:
    """The whole patch (no report) against `dnf -y upgrade` on a copy: the same files and rpm -qa."""
    theirs = tmp_path / "dnf-root"
    shutil.copytree(world.root, theirs, symlinks=True)
    proc = subprocess.run(
        ["dnf", "--installroot", str(theirs), "--setopt=cachedir=/var/cache/dnf", "--releasever=8",
         "--disableplugin=*", "--setopt=tsflags=noscripts", "-y", "upgrade"],
        capture_output=True, text=True, env={**os.environ, "HOME": str(world.home), "LC_ALL": "C"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = subprocess.run([sys.executable, "-m", "copa", "patch", "-i", f"oci:{world.layout}:{REF}", "--oci-dir",
                          str(tmp_path / "out"), "-t", "patched"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "COPA_CACHE_DIR": str(tmp_path / "copa-cache"), "COPA_DEBUG": ""})
    assert out.returncode == 0, out.stderr
    ours = debimage.unpack_layout(tmp_path / "out", "patched", tmp_path / "bundle")

    def skip(root: Path) -> frozenset[str]:  # dnf's own state, cache and logs; the rpmdb: compared by rpm -qa
        found = {str(p.relative_to(root)) for d in ("var/lib/dnf", "var/cache", "var/log", "var/lib/rpm")
                 for p in [root / d, *(root / d).rglob("*")] if p.exists()}
        return frozenset(found)

    diff = debimage.tree_diff(debimage.tree(ours, skip(ours)), debimage.tree(theirs, skip(theirs)))
    assert not diff, "\n".join(diff)
    fmt = "%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE} %{ARCH}\\n"
    got, want = (subprocess.run([*rpm_root_args(r), "-qa", "--qf", fmt], capture_output=True, text=True).stdout
                 for r in (ours, theirs))
    assert sorted(got.splitlines()) == sorted(want.splitlines())
    assert "nodejs 1:14.16.0-2" + M + " x86_64" in got.splitlines()


def test_fix_only_in_another_stream_fails(world: World, tmp_path: Path) -> None:
    """A report whose fixed version only the other stream has: dnf would not switch streams, so copa fails it
    (exit 7, one line naming the enabled stream's best build and the stream that has the fix) instead of
    installing nodejs 16."""
    report = write_report(tmp_path / "trivy.json", {"nodejs": ("1:14.16.0-1" + M, "1:16.14.0-1" + M)},
                          os_version="8.10", family="redhat")
    proc = subprocess.run([sys.executable, "-m", "copa", "patch", "-i", f"oci:{world.layout}:{REF}", "-r",
                           str(report), "--oci-dir", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "COPA_CACHE_DIR": str(tmp_path / "c"), "COPA_DEBUG": ""})
    errors = [line for line in proc.stderr.splitlines() if line.startswith("copa: error: ")]
    assert proc.returncode == 7 and len(errors) == 1 and "14.16.0-2" in errors[0], proc.stderr
    assert "module streams nodejs:16, nodejs:20 ship nodejs" in errors[0], errors[0]
    assert "active streams are nodejs:14 " in errors[0], errors[0]
    assert not (tmp_path / "out/index.json").exists()
