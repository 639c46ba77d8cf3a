"""apt's version priorities (NotAutomatic, ButAutomaticUpgrades, /etc/apt/preferences.d pins), with real apt as the
oracle.

Three hermetic signed suites are served from one local server, as a Debian image would list them:

    stable            a normal suite (priority 500)
    experimental      NotAutomatic: yes (priority 1: never chosen over anything else)
    stable-backports  NotAutomatic: yes, ButAutomaticUpgrades: yes (priority 100: upgrades what came from it)

A small image has 1.0 of every package installed by the real dpkg. For each scenario (a set of files in the image's
/etc/apt/preferences{,.d}), copa plans `--dry-run --json` against the image, and the host's apt (simulating only,
with its configuration, lists and caches in a private directory: the host's own apt setup is neither read nor
touched) reads the very same sources.list, preferences files and dpkg status file: the versions copa plans must be
what `apt-get -s install --only-upgrade` installs, and each reported package's candidate what `apt-cache policy`
says. Each scenario's expected answer is written down too, so a change in apt's behaviour shows as such.

Package names are lowercase (dpkg refuses "pkgA"); pkga is the brief's pkgA.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import debimage, images
from tests.support.aptoracle import apt
from tests.support.aptrepo import AptRepo, DebSpec, RepoServer, SigningKey, build_deb, build_repo, make_key
from tests.support.trivy import dpkg_versions, write_report

ROOT = Path(__file__).resolve().parents[1]
REF = "pinning"
STABLE, EXPERIMENTAL, BACKPORTS = "stable", "experimental", "stable-backports"
FIXED = "1.0.1"  # the fixed version every reported package gets: anything newer than the installed 1.0 fixes it

pytestmark = pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt on the host as the oracle")


def _deb(name: str, version: str, **control: str) -> DebSpec:
    return DebSpec(name, version, files={f"usr/share/{name}/version": f"{version}\n"}, control=control)


# What each suite publishes. Every package is installed at 1.0; where that 1.0 comes from matters to apt: the
# installed version has the priority of the best release still publishing it (100 for the status file alone).
SUITES: dict[str, tuple[dict[str, str], tuple[DebSpec, ...]]] = {
    STABLE: ({"Codename": "bookworm"}, (
        _deb("pkga", "1.0"), _deb("pkga", "1.1"),  # + experimental 2.0: 1.1, the newest is not the candidate
        _deb("pkgb", "1.0"),  # + experimental 2.0: nothing (a fix only in experimental needs a pin)
        _deb("pkgd", "1.0"),  # + backports 2.0: nothing, stable's 500 on the installed 1.0 beats backports' 100
        _deb("pkge", "1.0"), _deb("pkge", "1.1"),  # + backports 2.0: 1.1
        _deb("pkgg", "1.0"), _deb("pkgg", "1.1", Depends="libdep (>= 1.0)"),  # 1.1 newly needs libdep
        _deb("libdep", "1.0"),  # + experimental 2.0: a new dependency comes from stable too
    )),
    EXPERIMENTAL: ({"NotAutomatic": "yes", "Label": "copa-experimental"}, (
        _deb("pkga", "2.0"), _deb("pkgb", "2.0"), _deb("libdep", "2.0"),
        _deb("pkgh", "1.0"), _deb("pkgh", "2.0"),  # installed from experimental: still not upgraded (1 < 100)
        # pkgf 1.1: the very same .deb as in backports (copied there), see below
    )),
    BACKPORTS: ({"NotAutomatic": "yes", "ButAutomaticUpgrades": "yes", "Label": "copa-backports"}, (
        _deb("pkgc", "1.0"), _deb("pkgc", "2.0"),  # installed from backports: upgraded (100 vs the installed 100)
        _deb("pkgd", "2.0"), _deb("pkge", "2.0"),
    )),
}
# pkgf 1.0 is installed but published nowhere (status file only: 100); 1.1 is published, byte for byte, in
# experimental (1) and in backports (100), listed in that order: apt takes the best of both releases, so 1.1 wins.
SHARED = _deb("pkgf", "1.1")
LOCAL_ONLY = _deb("pkgf", "1.0")
REPORTED = ("pkga", "pkgb", "pkgc", "pkgd", "pkge", "pkgf", "pkgg", "pkgh")
INSTALLED = tuple(_deb(name, "1.0") for name in REPORTED)
PKGA_TO_EXPERIMENTAL = f"Package: pkga\nPin: release a={EXPERIMENTAL}\nPin-Priority: 500\n"


@dataclass(frozen=True)
class Scenario:
    id: str
    preferences: Mapping[str, str]  # file name in /etc/apt/preferences.d -> content
    expected: Mapping[str, str]  # what apt installs (name -> version): written down so the oracle is checked too
    main: str | None = None  # /etc/apt/preferences


SCENARIOS = (
    Scenario("release-defaults", {}, {"pkga": "1.1", "pkgc": "2.0", "pkge": "1.1", "pkgf": "1.1", "pkgg": "1.1",
                                      "libdep": "1.0"}),
    Scenario("pin-package-to-experimental", {"pkga": PKGA_TO_EXPERIMENTAL,
                                             "pkgb.pref": f"Package: /^pkgb$/\nPin: release n={EXPERIMENTAL}, "
                                                          "l=copa-experimental\nPin-Priority: 990\n",
                                             # apt reads only files with no extension or .pref: this one changes
                                             # nothing, though it would make pkgh 2.0 the candidate
                                             "pkgh.disabled": "Package: pkgh\nPin: version *\nPin-Priority: 900\n"},
             {"pkga": "2.0", "pkgb": "2.0", "pkgc": "2.0", "pkge": "1.1", "pkgf": "1.1", "pkgg": "1.1",
              "libdep": "1.0"}),
    Scenario("experimental-as-default", {"all": f"Package: *\nPin: release a={EXPERIMENTAL}\nPin-Priority: 500\n"},
             {"pkga": "2.0", "pkgb": "2.0", "pkgc": "2.0", "pkge": "1.1", "pkgf": "1.1", "pkgg": "1.1",
              "libdep": "2.0", "pkgh": "2.0"}),
    Scenario("backports-by-label", {"backports": "Package: *\nPin: release o=copa-tests,l=copa-backports\n"
                                                 "Pin-Priority: 990\n"},
             {"pkga": "1.1", "pkgc": "2.0", "pkgd": "2.0", "pkge": "2.0", "pkgf": "1.1", "pkgg": "1.1",
              "libdep": "1.0"}),
    Scenario("version-pins", {"10-versions": "Package: pkge\nPin: version 2.*\nPin-Priority: 600\n\n"
                                             "Package: pkga\nPin: version 1.0\nPin-Priority: 1001\n"},
             {"pkgc": "2.0", "pkge": "2.0", "pkgf": "1.1", "pkgg": "1.1", "libdep": "1.0"}),
    # A general pin below 100 leaves the installed version at the status file's 100: stable's upgrades stop, and
    # backports' 100 now upgrades the 1.0 stable published.
    Scenario("stable-pinned-down", {"stable": "Package: *\nPin: release a=stable\nPin-Priority: 50\n"},
             {"pkgc": "2.0", "pkgd": "2.0", "pkge": "2.0", "pkgf": "1.1"}),
    # A specific pin below 100 is another matter: it covers the installed 1.0 too (stable publishes it), so the
    # installed version loses the status file's 100 and stable's 1.1 (50) beats it.
    Scenario("package-pinned-down", {"stable": "Package: pkga pkge\nPin: release a=stable\nPin-Priority: 50\n"},
             {"pkga": "1.1", "pkgc": "2.0", "pkge": "2.0", "pkgf": "1.1", "pkgg": "1.1", "libdep": "1.0"}),
    # Stanzas are matched per version, the first matching one wins: pkge 1.1 is -1, 2.0 is 50, 1.0 stays at 500.
    Scenario("two-stanzas-one-package", {"pkge": f"Package: pkge\nPin: release a={BACKPORTS}\nPin-Priority: 50\n\n"
                                                 "Package: pkge\nPin: version 1.1\nPin-Priority: -1\n"},
             {"pkga": "1.1", "pkgc": "2.0", "pkgf": "1.1", "pkgg": "1.1", "libdep": "1.0"}),
    # The status file is the release "a=now": a general pin raises every installed version to 400 (only stable's
    # 500 still upgrades), a specific one holds pkge.
    Scenario("installed-pinned-as-now", {"now": "Package: pkge\nPin: release a=now\nPin-Priority: 600\n\n"
                                                "Package: *\nPin: release a=now\nPin-Priority: 400\n"},
             {"pkga": "1.1", "pkgg": "1.1", "libdep": "1.0"}),
    Scenario("origin-pin-in-main-file", {}, {"pkga": "1.1", "pkgb": "2.0", "pkgc": "2.0", "pkge": "1.1",
                                             "pkgf": "1.1", "pkgg": "1.1", "libdep": "1.0"},
             main="Package: pkgb\nPin: origin 127.0.0.1\nPin-Priority: 500\n\n"
                  # the status file has no site: `origin ""` (local files) does not raise the installed pkga
                  'Package: pkga\nPin: origin ""\nPin-Priority: 1001\n'),
)

# Where copa and apt still disagree, with the reason (strict: the test fails once copa gets it right).
KNOWN_DISAGREEMENTS: dict[str, str] = {}


def _copa_params() -> list[Any]:
    return [pytest.param(s, id=s.id, marks=[pytest.mark.xfail(strict=True, reason=KNOWN_DISAGREEMENTS[s.id])]
                         if s.id in KNOWN_DISAGREEMENTS else []) for s in SCENARIOS]


def _newest(name: str) -> str:
    """The newest version any suite has: what copa would pick with no notion of priorities."""
    versions = [s.version for _, specs in SUITES.values() for s in specs if s.name == name]
    if name == SHARED.name:
        versions.append(SHARED.version)
    return max(versions, key=lambda v: tuple(int(p) for p in v.split(".")))


# --------------------------------------------------------------------------------------------- fixtures


def copa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "copa", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "COPA_DEBUG": ""})


@dataclass(frozen=True)
class Repos:
    root: Path  # served by the server: ROOT/<suite>/dists/<suite>...
    key: SigningKey
    suites: Mapping[str, AptRepo]


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Repos:
    tmp = tmp_path_factory.mktemp("pinning-repos")
    key = make_key(tmp / "key")
    shared = build_deb(SHARED, tmp / "shared")
    built = {}
    for suite, (fields, specs) in SUITES.items():
        dest = tmp / "srv" / suite
        if suite in (EXPERIMENTAL, BACKPORTS):  # dpkg-scanpackages indexes whatever is in the pool
            (dest / "pool/main/pkgf").mkdir(parents=True)
            shutil.copy2(shared, dest / "pool/main/pkgf" / shared.name)
        built[suite] = build_repo(dest, specs, key=key, suite=suite, release_fields=fields)
    return Repos(tmp / "srv", key, built)


@pytest.fixture(scope="module")
def server(repos: Repos) -> Iterator[RepoServer]:
    with RepoServer(repos.root) as s:
        yield s


@pytest.fixture(scope="module")
def sources_list(repos: Repos, server: RepoServer) -> str:
    # The same text is the image's /etc/apt/sources.list and apt's: the suites are listed in this order, so copa
    # meets pkgf 1.1 in experimental (priority 1) before backports (100).
    return "".join(repos.suites[s].line(f"{server.url}/{s}") + "\n" for s in (STABLE, EXPERIMENTAL, BACKPORTS))


@pytest.fixture(scope="module")
def base_rootfs(repos: Repos, sources_list: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's rootfs without preferences: every package at 1.0, installed by the real dpkg."""
    root = tmp_path_factory.mktemp("pinning-image") / "rootfs"
    for d in ("usr/bin", "usr/lib", "etc/apt/preferences.d", "var/lib/dpkg/info", "var/lib/dpkg/updates",
              "var/lib/dpkg/triggers"):
        (root / d).mkdir(parents=True)
    (root / "usr/lib/os-release").write_text(debimage.OS_RELEASE)
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    (root / "var/lib/dpkg/status").write_bytes(b"")
    (root / "etc/apt/sources.list").write_text(sources_list)
    debs = [build_deb(spec, root.parent / "debs") for spec in INSTALLED]
    debimage.dpkg_install(root, debs)
    for lock in ("lock", "lock-frontend"):
        (root / "var/lib/dpkg" / lock).unlink(missing_ok=True)
    assert dpkg_versions(root) == dict.fromkeys(REPORTED, "1.0")
    return root


@pytest.fixture(scope="module")
def apt_lists(base_rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `apt-get update` for every scenario: preferences only matter when apt builds its policy."""
    state = tmp_path_factory.mktemp("apt-update")
    apt(state, base_rootfs, None, "apt-get", "update", image_conf=False, refuse_warnings=True)
    return state / "var/lib/apt/lists"


@dataclass(frozen=True)
class Image:
    rootfs: Path
    layout: Path

    @property
    def ref(self) -> str:
        return f"oci:{self.layout}:{REF}"


def make_image(base: Path, dest: Path, scenario: Scenario) -> Image:
    dest.mkdir(parents=True)
    root = debimage.copy_rootfs(base, dest / "rootfs")
    for name, text in scenario.preferences.items():
        (root / "etc/apt/preferences.d" / name).write_text(text)
    if scenario.main is not None:
        (root / "etc/apt/preferences").write_text(scenario.main)
    images.builder.make_oci_layout(root, dest / "layout", REF, cmd=None)
    return Image(root, dest / "layout")


@dataclass(frozen=True)
class Outcome:
    scenario: Scenario
    image: Image
    copa: dict[str, Any]  # copa's --json result
    apt_installs: dict[str, str]  # `apt-get -s install --only-upgrade REPORTED`: name -> version
    apt_candidates: dict[str, str]  # `apt-cache policy`: name -> candidate


def apt_oracle(state: Path, rootfs: Path, lists: Path) -> tuple[dict[str, str], dict[str, str]]:
    sim = apt(state, rootfs, lists, "apt-get", "-s", "install", "--only-upgrade", *REPORTED, image_conf=False,
              refuse_warnings=True).stdout
    installs = {m[1]: m[2] for m in re.finditer(r"^Inst (\S+) (?:\[\S+\] )?\((\S+) ", sim, re.M)}
    policy = apt(state, rootfs, lists, "apt-cache", "policy", *REPORTED, "libdep", image_conf=False,
                 refuse_warnings=True).stdout
    candidates = {m[1]: m[2] for m in re.finditer(r"^(\S+):\n(?:  .*\n)*?  Candidate: (\S+)", policy, re.M)}
    assert set(candidates) == {*REPORTED, "libdep"}, policy
    return installs, candidates


@pytest.fixture(scope="module")
def outcomes(base_rootfs: Path, apt_lists: Path, repos: Repos, server: RepoServer,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    work = tmp_path_factory.mktemp("pinning-scenarios")
    report = write_report(work / "trivy.json", dict.fromkeys(REPORTED, ("1.0", FIXED)))
    out = {}
    for scenario in SCENARIOS:
        image = make_image(base_rootfs, work / scenario.id, scenario)
        proc = copa("patch", "-i", image.ref, "-r", str(report), "--dry-run", "--json", "--ignore-errors",
                    "--keyring", str(repos.key.keyring))
        assert proc.returncode == 0, f"{scenario.id}: {proc.stderr}"
        installs, candidates = apt_oracle(work / scenario.id / "apt", image.rootfs, apt_lists)
        out[scenario.id] = Outcome(scenario, image, json.loads(proc.stdout), installs, candidates)
    return out


# --------------------------------------------------------------------------------------------- copa == apt


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_apt_installs_what_the_scenario_expects(outcomes: dict[str, Outcome], scenario: Scenario) -> None:
    """The oracle itself, against what each scenario's comment says apt does."""
    got = outcomes[scenario.id]
    assert got.apt_installs == dict(scenario.expected)
    for name in REPORTED:
        assert got.apt_candidates[name] == scenario.expected.get(name, "1.0"), name


@pytest.mark.parametrize("scenario", _copa_params())
def test_copa_plans_what_apt_installs(outcomes: dict[str, Outcome], scenario: Scenario) -> None:
    got = outcomes[scenario.id]
    planned = {u["name"]: u["to"] for u in got.copa["updates"]}
    assert planned == got.apt_installs
    kinds = {u["name"]: u["kind"] for u in got.copa["updates"]}
    assert all(kinds[n] == ("new" if n == "libdep" else "reported") for n in planned)


@pytest.mark.parametrize("scenario", _copa_params())
def test_copa_candidates_are_apts(outcomes: dict[str, Outcome], scenario: Scenario) -> None:
    """Each reported package: copa upgrades it to apt's candidate, or reports that apt's candidate is the installed
    version (the fix cannot come from anywhere apt would take it)."""
    got = outcomes[scenario.id]
    planned = {u["name"]: u["to"] for u in got.copa["updates"]}
    skipped = {s["name"]: s for s in got.copa["skipped"]}
    for name in REPORTED:
        candidate = got.apt_candidates[name]
        if candidate == "1.0":
            assert name not in planned, name
            assert "apt's candidate is the installed 1.0" in skipped[name]["detail"], skipped[name]
        else:
            assert planned.get(name) == candidate, name
    assert set(skipped) == {n for n in REPORTED if got.apt_candidates[n] == "1.0"}


def test_priorities_change_the_answer(outcomes: dict[str, Outcome]) -> None:
    """The scenarios can fail: picking the newest version, as with no notion of apt's priorities, disagrees with
    apt in every scenario, and the preferences change apt's answer."""
    for got in outcomes.values():
        naive = {name: _newest(name) for name in REPORTED}
        assert naive != {n: got.apt_candidates[n] for n in REPORTED}, got.scenario.id
    defaults = outcomes["release-defaults"]
    assert defaults.apt_candidates["pkga"] == "1.1" != _newest("pkga")
    assert defaults.apt_candidates["pkgb"] == "1.0" != _newest("pkgb")
    assert defaults.apt_candidates["libdep"] == "1.0" != _newest("libdep")
    for got in outcomes.values():
        if got.scenario.preferences or got.scenario.main:
            assert got.apt_installs != defaults.apt_installs, got.scenario.id


# --------------------------------------------------------------------------------------------- fixes needing a pin


@pytest.mark.parametrize("name", ["pkga", "pkgb"])
def test_fix_only_in_not_automatic_suite_needs_a_pin(outcomes: dict[str, Outcome], repos: Repos,
                                                     server: RepoServer, tmp_path: Path, name: str) -> None:
    """A fix only experimental has (2.0) fails with exit 7 and says why; once the image pins the package to
    experimental, the same report plans 2.0, as apt would install."""
    report = write_report(tmp_path / "trivy.json", {name: ("1.0", "2.0")})
    keyring = ["--keyring", str(repos.key.keyring)]
    unpinned = outcomes["release-defaults"]
    proc = copa("patch", "-i", unpinned.image.ref, "-r", str(report), "--dry-run", "--json", *keyring)
    assert proc.returncode == 7, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("copa: error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"cannot fix {name}: needs >= 2.0" in errors[0]
    assert "2.0 has apt priority 1" in errors[0] and "/etc/apt/preferences.d" in errors[0], errors[0]
    assert unpinned.apt_candidates[name] != "2.0"

    pinned = outcomes["pin-package-to-experimental"]
    proc = copa("patch", "-i", pinned.image.ref, "-r", str(report), "--dry-run", "--json", *keyring)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert [(u["name"], u["to"]) for u in result["updates"]] == [(name, "2.0")]
    assert pinned.apt_candidates[name] == "2.0"
    assert (pinned.image.rootfs / "etc/apt/preferences.d/pkga").read_text() == PKGA_TO_EXPERIMENTAL
