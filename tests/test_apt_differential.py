"""copa's dpkg plan against real apt, on many generated cases.

A hermetic signed repository holds new versions of packages whose relations exercise what apt does beyond upgrading
the named packages: exact pins between binaries of one source, upper bounds (`<<`, `<=`) from other sources,
Breaks and Conflicts (settled by an upgrade, or by a removal when the hit package cannot move), versioned virtual
packages, alternatives, new Depends and new Recommends, binaries of one source without pins (apt >= 2.5.2 moves them
together). A small image has the old versions installed by the real dpkg.

For a few dozen random subsets (fixed seed) of the packages a full report names, copa plans `--dry-run` and the
host's apt simulates `apt-get -s install --only-upgrade SUBSET` on the very same status file, sources and apt
configuration (the image's apt.conf.d is apt's Dir::Etc::parts). The set of (package, version) installed and the set
of packages removed must be equal; where apt cannot solve a subset, copa must fail with exit 7 (resolution). Each
image configuration is checked: apt's defaults, Upgrade-By-Source-Package off (apt before 2.5.2, or set off), and an
APT::Default-Release naming a second suite. A disagreement prints both plans.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from copa.api import PatchOptions, patch
from copa.errors import ResolutionError
from copa.pkg.base import RepositoryOptions, UpdateKind
from tests.support import debimage, images
from tests.support.aptoracle import apt
from tests.support.aptrepo import DebSpec, RepoServer, SigningKey, build_deb, build_repo, make_key
from tests.support.trivy import write_report

pytestmark = pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt on the host as the oracle")

ROOT = Path(__file__).resolve().parents[1]
REF = "differential"
SUBSETS = 30
SEED = 20261130


def _deb(name: str, version: str, **control: str) -> DebSpec:
    return DebSpec(name, version, files={f"usr/share/{name}/{version}": f"{name} {version}\n"}, control=control)


def _pair(name: str, old: dict[str, str], new: dict[str, str], new_version: str = "1.1") -> list[DebSpec]:
    return [_deb(name, "1.0", **old), _deb(name, new_version, **new)]


# Installed at 1.0 (every 1.0 is published too, as a point release keeps them); the new versions beside them.
STABLE: list[DebSpec] = [
    # One source, binaries pinning each other with `=`; an app from another source bounds py from above.
    *_pair("libpy", {"Source": "py"}, {"Source": "py"}),
    *_pair("py", {"Source": "py", "Depends": "libpy (= 1.0)"}, {"Source": "py", "Depends": "libpy (= 1.1)"}),
    *_pair("py-dev", {"Source": "py", "Depends": "py (= 1.0)"}, {"Source": "py", "Depends": "py (= 1.1)"}),
    *_pair("pyapp", {"Depends": "py (<< 1.1)"}, {"Depends": "py (>= 1.1)"}),
    # One source, no pins: only Upgrade-By-Source-Package moves the tool with the library.
    *_pair("libssl", {"Source": "ssl"}, {"Source": "ssl"}),
    *_pair("ssl-tool", {"Source": "ssl", "Depends": "libssl (>= 1.0)"},
           {"Source": "ssl", "Depends": "libssl (>= 1.0)"}),
    # An upper bound `<=` from another source.
    *_pair("libu", {}, {}),
    *_pair("user-u", {"Depends": "libu (<= 1.0)"}, {"Depends": "libu (<= 1.1)"}),
    # Breaks settled by upgrading the broken package; Breaks that only a removal settles.
    *_pair("liba", {}, {"Breaks": "user-a (<< 1.1)"}),
    *_pair("user-a", {}, {}),
    *_pair("libb", {}, {"Breaks": "user-b (<< 2.0)"}),
    _deb("user-b", "1.0"),
    # Conflicts with a package that cannot move, on which another installed package depends.
    *_pair("libc", {}, {"Conflicts": "old-c"}),
    _deb("old-c", "1.0"),
    _deb("needs-old-c", "1.0", Depends="old-c"),
    # New relations of the new versions.
    *_pair("rec", {}, {"Recommends": "newrec"}),
    _deb("newrec", "1.0"),
    *_pair("needs-new", {}, {"Depends": "brandnew (>= 1.0)"}),
    _deb("brandnew", "1.0"),
    *_pair("virt-user", {"Depends": "virt-abi (>= 1)"}, {"Depends": "virt-abi (>= 2)"}),
    *_pair("impl", {"Provides": "virt-abi (= 1)"}, {"Provides": "virt-abi (= 2)"}),
    *_pair("alt", {"Depends": "missing-pkg | altb"}, {"Depends": "missing-pkg | altb (>= 1.1)"}),
    *_pair("altb", {}, {}),
    # A package whose new version needs what no repository has: apt cannot install it.
    *_pair("stuck", {}, {"Depends": "nowhere-to-be-found"}),
]
# A second suite with newer builds of a few packages: apt takes them (both suites at 500) unless
# APT::Default-Release "stable" raises stable to 990.
TESTING: list[DebSpec] = [
    _deb("libssl", "2.0", Source="ssl"), _deb("ssl-tool", "2.0", Source="ssl", Depends="libssl (>= 2.0)"),
    _deb("libu", "2.0"),
]
INSTALLED = sorted({s.name for s in STABLE if s.version == "1.0"} - {"newrec", "brandnew"})
REPORTABLE = sorted({s.name for s in STABLE if s.version != "1.0"})

CONFIGS: dict[str, str] = {
    "apt-defaults": "",
    "by-source-off": 'APT::Get::Upgrade-By-Source-Package "false";\n',
    "default-release": 'APT::Default-Release "stable";\n',
    "no-recommends": 'APT { Install-Recommends "0"; };\n',
}


@dataclass(frozen=True)
class World:
    key: SigningKey
    server: RepoServer
    base: Path  # the image's rootfs with apt configuration of none of the CONFIGS
    lists: Path  # apt's lists after one `apt-get update`
    sources_list: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("differential")
    key = make_key(tmp / "key")
    build_repo(tmp / "srv/stable", STABLE, key=key, suite="stable", codename="bookworm")
    build_repo(tmp / "srv/testing", TESTING, key=key, suite="testing", codename="trixie")
    with RepoServer(tmp / "srv") as server:
        sources = "".join(f"deb [signed-by={key.keyring}] {server.url}/{s} {s} main\n" for s in ("stable", "testing"))
        root = tmp / "rootfs"
        for d in ("usr/lib", "etc/apt/apt.conf.d", "etc/apt/preferences.d", "var/lib/dpkg/info",
                  "var/lib/dpkg/updates", "var/lib/dpkg/triggers"):
            (root / d).mkdir(parents=True)
        (root / "usr/lib/os-release").write_text(debimage.OS_RELEASE)
        (root / "etc/os-release").symlink_to("../usr/lib/os-release")
        (root / "var/lib/dpkg/status").write_bytes(b"")
        (root / "etc/apt/sources.list").write_text(sources)
        debs = [build_deb(s, tmp / "debs") for s in STABLE if s.version == "1.0" and s.name in INSTALLED]
        debimage.dpkg_install(root, debs)
        for lock in ("lock", "lock-frontend"):
            (root / "var/lib/dpkg" / lock).unlink(missing_ok=True)
        state = tmp / "apt-update"
        apt(state, root, None, "apt-get", "update")
        yield World(key, server, root, state / "var/lib/apt/lists", sources)


@dataclass(frozen=True)
class Outcome:
    installs: frozenset[tuple[str, str]]
    removals: frozenset[str]
    failed: bool

    def show(self) -> str:
        if self.failed:
            return "fails"
        return f"install {sorted(self.installs)}; remove {sorted(self.removals)}"


def apt_plan(sim: subprocess.CompletedProcess[str]) -> Outcome:
    if sim.returncode != 0:
        return Outcome(frozenset(), frozenset(), True)
    installs = frozenset((m[1], m[2]) for m in re.finditer(r"^Inst (\S+) (?:\[\S+\] )?\((\S+) ", sim.stdout, re.M))
    removals = frozenset(m[1] for m in re.finditer(r"^Remv (\S+)", sim.stdout, re.M))
    return Outcome(installs, removals, False)


def copa_plan(layout: Path, report: Path, key: SigningKey, cache: Path) -> Outcome:
    try:
        result = patch(PatchOptions(image=f"oci:{layout}:{REF}", report=str(report), dry_run=True, allow_remove=True,
                                    repos=RepositoryOptions(keyrings=(key.keyring,)), cache_dir=str(cache)))
    except ResolutionError:
        return Outcome(frozenset(), frozenset(), True)
    installs = frozenset((u.name, u.new_version) for u in result.updates if u.kind is not UpdateKind.REMOVED)
    removals = frozenset(u.name for u in result.updates if u.kind is UpdateKind.REMOVED)
    return Outcome(installs, removals, False)


def subsets() -> list[tuple[str, ...]]:
    rng = random.Random(SEED)
    out: list[tuple[str, ...]] = [(name,) for name in REPORTABLE]  # every single package once
    while len(out) < len(REPORTABLE) + SUBSETS:
        out.append(tuple(sorted(rng.sample(REPORTABLE, rng.randint(2, 6)))))
    return out


def make_image(world: World, dest: Path, conf: str) -> tuple[Path, Path]:
    dest.mkdir(parents=True)
    root = debimage.copy_rootfs(world.base, dest / "rootfs")
    if conf:
        (root / "etc/apt/apt.conf.d/99copa-test").write_text(conf)
    images.builder.make_oci_layout(root, dest / "layout", REF, cmd=None)
    return root, dest / "layout"


@pytest.mark.parametrize("config", list(CONFIGS))
def test_copa_plans_what_apt_does(world: World, config: str, tmp_path: Path) -> None:
    root, layout = make_image(world, tmp_path / "image", CONFIGS[config])
    cache = tmp_path / "cache"
    disagreements = []
    seen_kinds: set[str] = set()
    for i, subset in enumerate(subsets()):
        report = write_report(tmp_path / f"report-{i}.json", dict.fromkeys(subset, ("1.0", "1.1")))
        want = apt_plan(apt(tmp_path / "apt", root, world.lists, "apt-get", "-s", "install", "--only-upgrade",
                            *subset, check=False))
        got = copa_plan(layout, report, world.key, cache)
        seen_kinds.add("fails" if want.failed else "removes" if want.removals else "installs")
        if got != want:
            disagreements.append(f"{' '.join(subset)}:\n    apt:  {want.show()}\n    copa: {got.show()}")
    assert not disagreements, f"{len(disagreements)} subsets differ ({config}):\n" + "\n".join(disagreements)
    # The generated cases cover what they are for: plain upgrades, removals and failures.
    assert seen_kinds == {"fails", "removes", "installs"}, seen_kinds


def test_configs_change_apts_answer(world: World, tmp_path: Path) -> None:
    """The oracle can tell the configurations apart: each changes apt's plan for some package."""
    answers: dict[str, Mapping[str, Outcome]] = {}
    for config, conf in CONFIGS.items():
        root, _ = make_image(world, tmp_path / config, conf)
        answers[config] = {name: apt_plan(apt(tmp_path / f"apt-{config}", root, world.lists, "apt-get", "-s",
                                              "install", "--only-upgrade", name, check=False))
                           for name in ("libssl", "rec")}
    assert answers["by-source-off"]["libssl"] != answers["apt-defaults"]["libssl"]
    assert answers["default-release"]["libssl"] != answers["apt-defaults"]["libssl"]
    assert answers["no-recommends"]["rec"] != answers["apt-defaults"]["rec"]


def test_allow_remove_leaves_what_dpkg_leaves(world: World, tmp_path: Path) -> None:
    """libc 1.1 conflicts with old-c, on which needs-old-c depends: apt removes both. With --allow-remove, copa's
    image equals the real dpkg's `--remove old-c needs-old-c` then `-i libc_1.1`; without it, the patch fails
    with exit 7, naming them."""
    root, layout = make_image(world, tmp_path / "image", "")
    conffile = DebSpec("old-c", "1.0", files={"etc/old-c.conf": "keep me\n", "usr/share/old-c/data": "x\n"},
                       conffiles=("/etc/old-c.conf",))
    # Reinstall old-c with a conffile, so the removal has one to keep (dpkg: `deinstall ok config-files`).
    debimage.dpkg_install(root, [build_deb(conffile, tmp_path / "debs")])
    images.builder.make_oci_layout(root, tmp_path / "layout2", REF, cmd=None)
    layout = tmp_path / "layout2"
    report = write_report(tmp_path / "report.json", {"libc": ("1.0", "1.1")})
    refused = subprocess.run([sys.executable, "-m", "copa", "patch", "-i", f"oci:{layout}:{REF}", "-r", str(report),
                              "--keyring", str(world.key.keyring), "--oci-dir", str(tmp_path / "refused")],
                             capture_output=True, text=True, cwd=ROOT)
    assert refused.returncode == 7, refused.stderr
    assert "old-c" in refused.stderr and "--allow-remove" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "refused" / "index.json").exists()

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "copa", "patch", "-i", f"oci:{layout}:{REF}", "-r", str(report),
                           "--keyring", str(world.key.keyring), "--oci-dir", str(out), "--allow-remove", "--json",
                           "-t", "patched"], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "SOURCE_DATE_EPOCH": "1704067200"})
    assert proc.returncode == 0, proc.stderr
    patched = debimage.unpack_layout(out, "patched", tmp_path / "bundle")

    oracle = debimage.copy_rootfs(root, tmp_path / "oracle")
    debimage.run(["dpkg", f"--root={oracle}", "--remove", "needs-old-c", "old-c"], "dpkg --remove")
    new_libc = next(s for s in STABLE if s.name == "libc" and s.version == "1.1")
    debimage.dpkg_install(oracle, [build_deb(new_libc, tmp_path / "debs")])
    for lock in ("lock", "lock-frontend"):
        (oracle / "var/lib/dpkg" / lock).unlink(missing_ok=True)
    diff = debimage.tree_diff(debimage.tree(patched), debimage.tree(oracle))
    assert not diff, "\n".join(diff)
