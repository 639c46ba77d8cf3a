"""copa plans what apt does on the live archive: the bookworm fixture image and the packages the oracle image
(bookworm-security enabled) has newer are the full report; for subsets of it (every binary of a multi-binary source
alone, the whole report, and random subsets with a fixed seed) copa's `--dry-run` set of (package, version) and its
removals equal what the host's apt simulates, `apt-get -s install --only-upgrade SUBSET`, on the image's status file
and apt.conf.d with a sources.list of the same bookworm, bookworm-updates and bookworm-security lines (one shared
`apt-get update`). Where apt cannot solve a subset, copa must fail with a resolution error. A disagreement prints
both plans.

The comparison can fail: `test_oracle_tells_by_source_apart` runs the same oracle with
APT::Get::Upgrade-By-Source-Package off (apt before 2.5.2) and requires it to disagree with copa for some binary of
a multi-binary source."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from copa.api import PatchOptions, patch
from copa.errors import ResolutionError
from copa.pkg.base import RepositoryOptions, UpdateKind
from tests.support import images
from tests.support.aptoracle import apt, simulated_installs
from tests.support.mirror import debian_mirror, security_mirror
from tests.support.trivy import dpkg_versions, fixed_packages, write_report

pytestmark = [pytest.mark.live, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt on the host as the oracle")]

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
RANDOM_SUBSETS = 10
SEED = 20261130


@dataclass(frozen=True)
class Plan:
    installs: frozenset[tuple[str, str]]
    removals: frozenset[str]
    failed: bool

    def show(self) -> str:
        return "fails" if self.failed else f"install {sorted(self.installs)}; remove {sorted(self.removals)}"


@dataclass(frozen=True)
class World:
    rootfs: Path
    layout: Path
    ref: str
    fixes: dict[str, tuple[str, str]]
    sources: Path  # the apt sources.list of the same lines as copa's --repository
    lines: tuple[str, ...]
    lists: Path
    cache: Path  # copa's shared --cache-dir


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("live-differential")
    rootfs = images.debian_rootfs()
    layout, ref = images.debian_layout()
    fixes = fixed_packages(dpkg_versions(rootfs), dpkg_versions(images.oracle_rootfs()))
    assert fixes, "the oracle image has nothing newer than the base image"
    main, security = debian_mirror(), security_mirror()
    lines = (f"deb {main} bookworm main", f"deb {main} bookworm-updates main",
             f"deb {security} bookworm-security main")
    sources = tmp / "sources.list"
    sources.write_text("".join(line.replace("deb ", f"deb [signed-by={KEYRING}] ", 1) + "\n" for line in lines))
    apt(tmp / "apt-update", rootfs, None, "apt-get", "update", sources_list=sources, refuse_warnings=True)
    yield World(rootfs, layout, ref, fixes, sources, lines, tmp / "apt-update/var/lib/apt/lists", tmp / "cache")


def sources_of(rootfs: Path) -> dict[str, str]:
    out = subprocess.run(["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W", "-f",
                          "${Package} ${source:Package}\n"], check=True, capture_output=True, text=True).stdout
    return {parts[0]: parts[1] for line in out.splitlines() if len(parts := line.split()) == 2}


def subsets(world: World, sweep: bool = True) -> list[tuple[str, ...]]:
    """Every binary of a shared source alone, the whole report, and random subsets; without `sweep` (the default
    suite, which must stay short: each copa dry run reads the image and the archive's indexes) one binary per
    shared source and two random subsets."""
    names = sorted(world.fixes)
    src = sources_of(world.rootfs)
    per_source = Counter(src[n] for n in names)
    shared = [n for n in names if per_source[src[n]] > 1]
    if not sweep:
        shared = [n for i, n in enumerate(shared) if src[n] not in {src[m] for m in shared[:i]}]
    out: list[tuple[str, ...]] = [(n,) for n in shared]
    out.append(tuple(names))
    rng = random.Random(SEED)
    randoms = RANDOM_SUBSETS if sweep else 2
    while len(out) < len(shared) + 1 + randoms:
        out.append(tuple(sorted(rng.sample(names, rng.randint(2, min(8, len(names)))))))
    return out


def apt_plan(world: World, state: Path, subset: tuple[str, ...], *options: str) -> Plan:
    sim = apt(state, world.rootfs, world.lists, "apt-get", "-s", *options, "install", "--only-upgrade", *subset,
              sources_list=world.sources, check=False)
    if sim.returncode != 0:
        return Plan(frozenset(), frozenset(), True)
    removals = frozenset(m[1] for m in re.finditer(r"^Remv (\S+)", sim.stdout, re.M))
    return Plan(simulated_installs(sim.stdout), removals, False)


def copa_plan(world: World, report: Path) -> Plan:
    try:
        result = patch(PatchOptions(image=f"oci:{world.layout}:{world.ref}", report=str(report), dry_run=True,
                                    allow_remove=True, cache_dir=str(world.cache),
                                    repos=RepositoryOptions(repositories=world.lines, keyrings=(KEYRING,))))
    except ResolutionError:
        return Plan(frozenset(), frozenset(), True)
    installs = frozenset((u.name, u.new_version) for u in result.updates if u.kind is not UpdateKind.REMOVED)
    removals = frozenset(u.name for u in result.updates if u.kind is UpdateKind.REMOVED)
    return Plan(installs, removals, False)


def _report(world: World, tmp: Path, i: int, subset: tuple[str, ...]) -> Path:
    return write_report(tmp / f"report-{i}.json", {n: world.fixes[n] for n in subset})


def test_copa_plans_what_apt_does_live(world: World, tmp_path: Path) -> None:
    _differential(world, tmp_path, subsets(world, sweep=False))


@pytest.mark.sweep
def test_copa_plans_what_apt_does_live_sweep(world: World, tmp_path: Path) -> None:
    """The same over every binary of every shared source and more random subsets (`bash scripts/test -m sweep`)."""
    _differential(world, tmp_path, subsets(world))


def _differential(world: World, tmp_path: Path, cases: list[tuple[str, ...]]) -> None:
    assert any(len(c) == 1 for c in cases), "no multi-binary source in the report: the fixture image changed"
    disagreements = []
    for i, subset in enumerate(cases):
        want = apt_plan(world, tmp_path / "apt", subset)
        got = copa_plan(world, _report(world, tmp_path, i, subset))
        assert want.failed or want.installs, f"apt does nothing for {subset}: the report is stale"
        if got != want:
            disagreements.append(f"{' '.join(subset)}:\n    apt:  {want.show()}\n    copa: {got.show()}")
    assert not disagreements, f"{len(disagreements)} of {len(cases)} subsets differ:\n" + "\n".join(disagreements)


def test_oracle_tells_by_source_apart(world: World, tmp_path: Path) -> None:
    """The check above can fail: apt without Upgrade-By-Source-Package plans differently from copa (which
    follows the image's apt 2.6, where it is on) for some binary of a multi-binary source."""
    singles = [s for s in subsets(world, sweep=False) if len(s) == 1]
    # The first single that differs is enough (each copa dry run costs seconds).
    differ = next((s for i, s in enumerate(singles)
                   if apt_plan(world, tmp_path / "apt", s, "-o", "APT::Get::Upgrade-By-Source-Package=false")
                   != copa_plan(world, _report(world, tmp_path, i, s))), None)
    assert differ, "apt with Upgrade-By-Source-Package off agrees with copa on every single: the oracle is blind"
