"""copa's apk plan against real apk's solver, on many generated cases.

A hermetic repository holds newer builds of most of the Alpine fixture's packages, with the relations that make a
solver work: exact pins between packages of one origin (libssl3 -> libcrypto3, curl -> libcurl, apk-tools ->
libapk, busybox-binsh -> busybox, ssl_client's install_if), a pin across origins (libpsl -> libidn2, added to the
installed database so the installed libpsl pins it too), a fuzzy `~` pin, upper bounds (`c-ares<1.35`,
`libunistring<1.5`) next to a newer upstream version, two new releases of one package, a world constraint
(`zlib<1.3.2-r2`) and a package that cannot move (alpine-baselayout-data, pinned by an alpine-baselayout that has
no newer build). For a few dozen random subsets of the full report (fixed seed; each fix one of the package's
newer versions), copa's planned (name, version) set must be what `apk upgrade --simulate` plans on the same root
(see tests/support/apkoracle.py for why that command), and where apk fails copa must refuse too.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from copa.pkg.apk.index import ApkRecord, Dependency, parse_dependency, parse_index
from copa.pkg.apk.installed import parse_installed
from copa.pkg.apk.plan import Installed, Resolution, Wanted, resolve
from copa.pkg.apk.version import compare_versions
from copa.pkg.base import SkipReason, UpdateKind
from tests.support import alpine, apkrepo
from tests.support.apkoracle import OraclePlan, simulate_upgrade
from tests.support.apkrepo import PackageUpdate

pytestmark = pytest.mark.slow

LIBC = "so:libc.musl-x86_64.so.1"
WORLD_EXTRA = ("zlib<1.3.2-r2",)
# The installed libpsl pins libidn2 exactly (a pin across origins; Alpine's own does not).
PSL_PIN = "libidn2=2.3.8-r0"

UPDATES = (
    PackageUpdate("libcrypto3"), PackageUpdate("libcrypto3", bump=2),
    PackageUpdate("libssl3"),  # pins libcrypto3=3.5.8-r1 (abuild's pin follows the first rebuild)
    PackageUpdate("libssl3", bump=2, depends=("libcrypto3=3.5.8-r2", LIBC, "so:libcrypto.so.3")),
    PackageUpdate("libcurl"),
    PackageUpdate("curl", depends=("libcurl~8.22", LIBC, "so:libcurl.so.4", "so:libz.so.1")),
    PackageUpdate("c-ares"), PackageUpdate("c-ares", version="1.35.0-r0"),
    PackageUpdate("nghttp2-libs", depends=("c-ares<1.35", LIBC)),
    PackageUpdate("zlib"), PackageUpdate("zlib", bump=2),
    PackageUpdate("busybox"), PackageUpdate("busybox-binsh"), PackageUpdate("ssl_client"),
    PackageUpdate("alpine-baselayout-data"),
    PackageUpdate("ca-certificates", dirs={"etc/ca-certificates": (0o750, 0, 0)}),
    PackageUpdate("ca-certificates-bundle"),
    PackageUpdate("libidn2", add_depends=("libunistring<1.5",)),
    PackageUpdate("libpsl", depends=("libidn2>=2.3.8-r1", LIBC, "so:libidn2.so.0", "so:libunistring.so.5")),
    PackageUpdate("libunistring"), PackageUpdate("libunistring", version="1.5.0-r0"),
    PackageUpdate("libapk"), PackageUpdate("apk-tools"),
    PackageUpdate("musl"), PackageUpdate("zstd-libs"), PackageUpdate("brotli-libs"),
)  # fmt: skip
CASES = 40
SEED = 20260101


@dataclass(frozen=True)
class Universe:
    root: Path  # writable: the oracle's world file is rewritten per case
    repo: apkrepo.ApkRepo
    keys: Path
    base_world: tuple[str, ...]
    installed: dict[str, Installed]
    available: tuple[ApkRecord, ...]
    world: tuple[Dependency, ...]

    def newer(self) -> dict[str, list[str]]:
        """name -> its newer versions in the repository, oldest first (the "full report")."""
        out: dict[str, list[str]] = {}
        for r in self.available:
            if r.name in self.installed and compare_versions(r.version, self.installed[r.name].version) > 0:
                out.setdefault(r.name, []).append(r.version)
        return {n: sorted(set(v), key=_version_key) for n, v in sorted(out.items())}


def _version_key(v: str) -> object:
    return functools.cmp_to_key(compare_versions)(v)


def pin_libpsl(root: Path) -> None:
    db = root / "lib/apk/db/installed"
    text = db.read_text()
    old = "P:libpsl\n"
    assert old in text
    blocks = text.split("\n\n")
    for i, block in enumerate(blocks):
        if block.startswith("C:") and old in block + "\n":
            blocks[i] = "\n".join(f"{ln} {PSL_PIN}" if ln.startswith("D:") else ln for ln in block.splitlines())
    db.write_text("\n\n".join(blocks))


@pytest.fixture(scope="module")
def universe(tmp_path_factory: pytest.TempPathFactory) -> Universe:
    work = tmp_path_factory.mktemp("solver")
    root = alpine.copy_rootfs(alpine.alpine_rootfs(), work / "root")
    pin_libpsl(root)
    repo = apkrepo.build_repo(root, UPDATES, work / "repo")
    keys = work / "keys"
    repo.key.write_public(keys)
    base_world = tuple((root / "etc/apk/world").read_text().split()) + WORLD_EXTRA
    packages = parse_installed((root / "lib/apk/db/installed").read_text())
    installed = {p.name: Installed(p.name, p.version, p.record.origin, p.record.depends, p.record.provides,
                                   p.record.install_if) for p in packages}
    available = tuple(parse_index("\n".join(p.index_record for p in repo.packages), "file://" + str(repo.directory)))
    return Universe(root, repo, keys, base_world, installed, available,
                    tuple(parse_dependency(w) for w in base_world))


def copa_plan(u: Universe, fixes: dict[str, str]) -> Resolution:
    return resolve(u.installed, [Wanted(n, v) for n, v in sorted(fixes.items())], u.available, u.world)


def oracle(u: Universe, fixes: dict[str, str]) -> OraclePlan:
    return simulate_upgrade(u.root, u.repo.directory, u.keys, fixes, u.base_world)


def compare(u: Universe, fixes: dict[str, str]) -> tuple[str | None, Resolution, OraclePlan]:
    """A description of the disagreement between copa and apk for these fixes, or None."""
    mine, theirs = copa_plan(u, fixes), oracle(u, fixes)
    planned = {c.record.name: c.record.version for c in mine.chosen}
    if theirs.ok and not mine.failures and planned == theirs.versions():
        return None, mine, theirs
    if not theirs.ok and mine.failures:
        return None, mine, theirs
    lines = [f"fixes {fixes}",
             f"  copa: {sorted(planned.items())} failures {[(f.name, f.detail) for f in mine.failures]}",
             f"  apk (exit {'0' if theirs.ok else 'non-zero'}): {sorted(theirs.versions().items())}",
             *("    | " + ln for ln in theirs.output.strip().splitlines()[-8:])]
    return "\n".join(lines), mine, theirs


def test_generated_subsets_plan_what_apk_plans(universe: Universe) -> None:
    full = universe.newer()
    assert len(full) >= 20, full
    rng = random.Random(SEED)
    names = sorted(full)
    disagreements = []
    outcomes = {"apk failed": 0, "co-upgrade": 0, "sibling": 0, "older than newest": 0, "agreed": 0}
    for i in range(CASES):
        # Mostly small subsets (a report names a few packages), some large ones, and the full report last.
        size = len(names) if i == CASES - 1 else rng.choice([1, 1, 2, 2, 3, 4, 6, 10, len(names) // 2])
        subset = rng.sample(names, size)
        fixes = {n: rng.choice(full[n]) for n in subset}
        problem, mine, theirs = compare(universe, fixes)
        if problem is not None:
            disagreements.append(problem)
            continue
        outcomes["agreed"] += 1
        outcomes["apk failed"] += not theirs.ok
        kinds = {c.kind for c in mine.chosen}
        outcomes["co-upgrade"] += UpdateKind.CO_UPGRADE in kinds
        outcomes["sibling"] += UpdateKind.SIBLING in kinds
        outcomes["older than newest"] += any(c.record.version != full[c.record.name][-1] for c in mine.chosen
                                             if c.record.name in full)
    assert not disagreements, f"{len(disagreements)} of {CASES} cases differ from apk:\n" + "\n".join(disagreements)
    # The cases exercised what they are for (so the comparison cannot pass on trivial plans alone).
    assert all(outcomes.values()), outcomes


@pytest.mark.parametrize(("fixes", "expected"), [
    # The new libcrypto3 breaks the installed libssl3's exact pin: libssl3 moves to the build that pins it.
    ({"libcrypto3": "3.5.8-r2"}, {"libcrypto3": "3.5.8-r2", "libssl3": "3.5.8-r2"}),
    # The new libssl3 pins a libcrypto3 the image does not have: libcrypto3 moves to exactly that.
    ({"libssl3": "3.5.8-r2"}, {"libcrypto3": "3.5.8-r2", "libssl3": "3.5.8-r2"}),
    # `~8.22` still holds for the installed libcurl: curl moves alone.
    ({"curl": "8.22.0-r1"}, {"curl": "8.22.0-r1"}),
    # nghttp2-libs' new build wants c-ares<1.35: c-ares takes its newest version below that.
    ({"c-ares": "1.34.8-r1", "nghttp2-libs": "1.69.0-r1"}, {"c-ares": "1.34.8-r1", "nghttp2-libs": "1.69.0-r1"}),
    ({"c-ares": "1.34.8-r1"}, {"c-ares": "1.35.0-r0"}),
    # The world's zlib<1.3.2-r2 caps the upgrade.
    ({"zlib": "1.3.2-r1"}, {"zlib": "1.3.2-r1"}),
    # Across origins: the installed libpsl pins libidn2, so it moves with it (co-upgraded), and libidn2's new
    # upper bound keeps libunistring.
    ({"libidn2": "2.3.8-r1"}, {"libidn2": "2.3.8-r1", "libpsl": "0.21.5-r4"}),
])  # fmt: skip
def test_relations_move_packages_as_apk_does(universe: Universe, fixes: dict[str, str],
                                             expected: dict[str, str]) -> None:
    problem, mine, theirs = compare(universe, fixes)
    assert problem is None, problem
    assert theirs.versions() == expected == {c.record.name: c.record.version for c in mine.chosen}


def test_co_upgrades_say_why(universe: Universe) -> None:
    res = copa_plan(universe, {"libidn2": "2.3.8-r1"})
    psl = next(c for c in res.chosen if c.record.name == "libpsl")
    assert psl.kind is UpdateKind.CO_UPGRADE
    assert psl.reason == f"libpsl-0.21.5-r3 pins {PSL_PIN}, which moves to 2.3.8-r1"
    res = copa_plan(universe, {"libpsl": "0.21.5-r4"})
    idn = next(c for c in res.chosen if c.record.name == "libidn2")
    assert idn.kind is UpdateKind.CO_UPGRADE and idn.reason == "libpsl-0.21.5-r4 needs libidn2>=2.3.8-r1"
    res = copa_plan(universe, {"libcrypto3": "3.5.8-r2"})
    ssl = next(c for c in res.chosen if c.record.name == "libssl3")
    assert ssl.kind is UpdateKind.SIBLING and "libcrypto3=3.5.8-r0" in ssl.reason


@pytest.mark.parametrize(("fixes", "reason", "blocker"), [
    ({"alpine-baselayout-data": "3.7.2-r1"}, SkipReason.UNRESOLVABLE,
     "installed alpine-baselayout-3.7.2-r0 needs alpine-baselayout-data=3.7.2-r0, which has no newer version"),
    ({"zlib": "1.3.2-r2"}, SkipReason.HELD, "/etc/apk/world holds it at zlib<1.3.2-r2"),
    ({"c-ares": "1.35.0-r0", "nghttp2-libs": "1.69.0-r1"}, SkipReason.UNRESOLVABLE,
     "nghttp2-libs-1.69.0-r1 needs c-ares<1.35"),
])  # fmt: skip
def test_what_cannot_move_fails_naming_the_blocker(universe: Universe, fixes: dict[str, str], reason: SkipReason,
                                                   blocker: str) -> None:
    problem, mine, theirs = compare(universe, fixes)
    assert problem is None, problem
    assert not theirs.ok and len(mine.failures) == 1
    assert mine.failures[0].reason is reason and blocker in mine.failures[0].detail, mine.failures


def test_no_report_upgrades_what_apk_upgrade_does(universe: Universe) -> None:
    """Without a report copa asks for every package's newest version the world allows, like a bare `apk upgrade`:
    the same plan, except that what apk silently keeps (alpine-baselayout-data, pinned by an installed package
    with no newer build) copa names as unfixable."""
    from copa.pkg.apk.adapter import _wanted

    wanted = _wanted(None, universe.installed, universe.available, universe.world)
    # Each package's least newer version the world allows; the plan takes the newest that fits.
    assert {w.name: w.fixed_version for w in wanted}["c-ares"] == "1.34.8-r1"
    mine = resolve(universe.installed, wanted, universe.available, universe.world)
    theirs = simulate_upgrade(universe.root, universe.repo.directory, universe.keys, {}, universe.base_world)
    assert theirs.ok, theirs.output
    assert {c.record.name: c.record.version for c in mine.chosen} == theirs.versions()
    assert [(f.name, f.reason) for f in mine.failures] == [("alpine-baselayout-data", SkipReason.UNRESOLVABLE)]
