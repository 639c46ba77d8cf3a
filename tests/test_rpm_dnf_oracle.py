"""copa's rpm plan against real dnf, on many generated cases.

Packages built by rpmbuild exercise what dnf does beyond upgrading the named packages: binaries of one source
pinning each other with `= %{version}-%{release}`, an upper bound from another package, Conflicts settled by an
upgrade, Obsoletes, a new Requires on a package not installed, a versioned virtual provide, a file dependency,
rich dependencies, weak dependencies, epochs, a repository of higher priority holding an older build, and a
package whose new version needs what no repository has. A root has the old versions installed by the real rpm.

For a few dozen random subsets (fixed seed) of the reportable packages, copa's plan (package data read by the real
rpm from the root and the .rpm files, so this checks the resolver only) must equal the transaction of
`dnf upgrade SUBSET --assumeno` in that root; where dnf cannot solve a subset, copa must fail it.
"""

from __future__ import annotations

import functools
import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from copa.pkg.base import UpdateKind
from copa.pkg.rpm.deps import Dep, compare_evr
from copa.pkg.rpm.plan import Installed, Wanted, resolve
from copa.pkg.rpm.version import rpmvercmp
from tests.support.rpmrepo import createrepo
from tests.support.rpmtools import RpmFile, RpmSpec, build_rpm, init_root, rpm_root_args

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("dnf") is None or shutil.which("rpmbuild") is None,
                                 reason="needs dnf and rpmbuild as the oracle")]

SEED = 20261130
LAST_OUTPUT: list[str] = []  # dnf's last output, shown with a disagreement
SUBSETS = 25


def _spec(name: str, version: str, release: str = "1", **kw: object) -> RpmSpec:
    kw.setdefault("files", (RpmFile(f"/usr/share/{name}/{version}-{release}", f"{name}\n".encode()),))
    return RpmSpec(name, version, release, **kw)  # type: ignore[arg-type]


OLD: list[RpmSpec] = [
    _spec("libpy", "3.9.1"), _spec("py", "3.9.1", requires=("libpy = 3.9.1-1",)),
    _spec("py-devel", "3.9.1", requires=("py = 3.9.1-1",)),
    _spec("pyapp", "1.0", requires=("py < 3.9.2",)),
    _spec("ssl-libs", "1.1", epoch=1), _spec("ssl", "1.1", epoch=1, requires=("ssl-libs = 1:1.1-1",)),
    _spec("liba", "1.0"), _spec("user-a", "1.0"),
    _spec("core", "1.0"), _spec("core-plugin-old", "1.0"),
    _spec("needs-new", "1.0"),
    _spec("impl", "1.0", provides=("virt-abi = 1",)), _spec("virt-user", "1.0", requires=("virt-abi >= 1",)),
    _spec("shell", "1.0", files=(RpmFile("/usr/bin/copa-sh", b"#!/bin/true\n", 0o755),)),
    _spec("scripted", "1.0"),
    _spec("richy", "1.0"), _spec("altb", "1.0"),
    _spec("rec", "1.0"),
    _spec("prio", "1.0"),
    _spec("stuck", "1.0"),
]
NEW: list[RpmSpec] = [
    _spec("libpy", "3.9.2"), _spec("py", "3.9.2", requires=("libpy = 3.9.2-1",)),
    _spec("py-devel", "3.9.2", requires=("py = 3.9.2-1",)),
    _spec("pyapp", "1.1", requires=("py >= 3.9.2",)),
    _spec("ssl-libs", "1.1", "9", epoch=1), _spec("ssl", "1.1", "9", epoch=1, requires=("ssl-libs = 1:1.1-9",)),
    _spec("liba", "1.1", conflicts=("user-a < 1.1",)), _spec("user-a", "1.1"),
    _spec("core", "2.0", obsoletes=("core-plugin-old < 2",)),
    _spec("needs-new", "1.1", requires=("brandnew >= 1",)), _spec("brandnew", "1.0"),
    _spec("impl", "2.0", provides=("virt-abi = 2",)), _spec("virt-user", "2.0", requires=("virt-abi >= 2",)),
    _spec("scripted", "1.1", requires=("/usr/bin/copa-sh",)),
    _spec("richy", "1.1", requires=("(missing-thing or altb >= 1.1)",)), _spec("altb", "1.1"),
    _spec("rec", "1.1", recommends=("newrec",)), _spec("newrec", "1.0"),
    _spec("prio", "1.2"),  # in the default-priority repository
    _spec("stuck", "1.1", requires=("nowhere-to-be-found",)),
]
HIGH_PRIORITY: list[RpmSpec] = [_spec("prio", "1.1")]  # priority=10: wins over 1.2
REPORTABLE = sorted({s.name for s in NEW} & {s.name for s in OLD})


@dataclass(frozen=True)
class RepoPkg:
    name: str
    arch: str
    evr: str
    provides: tuple[Dep, ...]
    requires: tuple[Dep, ...]
    conflicts: tuple[Dep, ...]
    obsoletes: tuple[Dep, ...]
    recommends: tuple[Dep, ...]
    files: tuple[str, ...]
    priority: int
    sourcerpm: str = ""


_QF = ("%{NAME}\\t%{ARCH}\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\t"
       "[%{PROVIDENEVRS},]\\t[%{REQUIRENEVRS},]\\t[%{CONFLICTNEVRS},]\\t[%{OBSOLETENEVRS},]\\t"
       "[%{RECOMMENDNEVRS},]\\t[%{FILENAMES},]\\n")


def _deps(text: str) -> tuple[Dep, ...]:
    return tuple(Dep.parse(d) for d in text.split(",") if d and not d.startswith("rpmlib("))


def _evr(evr: str) -> str:
    return evr[2:] if evr.startswith("0:") else evr


def _records(output: str, priority: int) -> list[RepoPkg]:
    out = []
    for line in output.splitlines():
        name, arch, evr, prov, req, conf, obs, rec, files = line.split("\t")
        out.append(RepoPkg(name, arch, _evr(evr), _deps(prov), _deps(req), _deps(conf), _deps(obs), _deps(rec),
                           tuple(f for f in files.split(",") if f), priority))
    return out


@dataclass(frozen=True)
class World:
    root: Path  # the installed root (never changed: dnf only simulates)
    repos: dict[str, Path]  # repo id -> directory
    home: Path  # HOME with .rpmmacros for dnf
    installed: list[Installed]
    candidates: list[RepoPkg]


def make_world(tmp: Path, old: Sequence[RpmSpec], repos: Mapping[str, tuple[Sequence[RpmSpec], int]]) -> World:
    """`old` built and installed by the real rpm into a root, and each repository (id -> its packages and dnf
    priority) built and indexed by createrepo_c; the installed packages and the candidates as rpm reads them."""
    installed_rpms = [build_rpm(s, tmp / "old") for s in old]
    directories = {repo_id: tmp / f"repo-{repo_id}" for repo_id in repos}
    for repo_id, (specs, _priority) in repos.items():
        for s in specs:
            build_rpm(s, directories[repo_id])
    for d in directories.values():
        createrepo(d)
    root = tmp / "root"
    init_root(root, installed_rpms)
    home = tmp / "home"
    home.mkdir()
    (home / ".rpmmacros").write_text("%_dbpath /var/lib/rpm\n%_db_backend sqlite\n")
    query = subprocess.run([*rpm_root_args(root), "-qa", "--qf", _QF], capture_output=True, text=True, check=True)
    installed = [Installed(r.name, r.arch, r.evr, r.provides, r.requires, r.conflicts, r.obsoletes, r.recommends)
                 for r in _records(query.stdout, 0)]
    candidates: list[RepoPkg] = []
    for repo_id, directory in directories.items():
        rpms = sorted(str(p) for p in directory.glob("*.rpm"))
        q = subprocess.run(["rpm", "-qp", "--qf", _QF, *rpms], capture_output=True, text=True, check=True)
        candidates += _records(q.stdout, repos[repo_id][1])
    return World(root, directories, home, installed, candidates)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield make_world(tmp_path_factory.mktemp("rpm-dnf"), OLD, {"main": (NEW, 99), "high": (HIGH_PRIORITY, 10)})


def dnf_plan(world: World, tmp: Path, names: Sequence[str]) -> frozenset[tuple[str, str, str]] | None:
    """The packages dnf's transaction installs or upgrades, (name, evr, arch); None when dnf cannot solve it."""
    repo_args = []
    for repo_id, directory in world.repos.items():
        repo_args += [f"--repofrompath={repo_id},file://{directory}",
                      f"--setopt={repo_id}.priority={10 if repo_id == 'high' else 99}",
                      f"--setopt={repo_id}.gpgcheck=0"]
    argv = ["dnf", "--installroot", str(world.root), "--setopt=reposdir=/nonexistent", "--disablerepo=*",
            *repo_args, *(f"--enablerepo={r}" for r in world.repos), f"--setopt=cachedir={tmp}/cache",
            "--setopt=install_weak_deps=True", "--setopt=best=True", "--nogpgcheck", "--releasever=9", "--assumeno",
            "upgrade", *names]
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "HOME": str(world.home),
                                                                     "LC_ALL": "C"})
    text = proc.stdout + proc.stderr
    LAST_OUTPUT[:] = [text]
    if "Operation aborted" not in text and "Nothing to do" not in text:
        return None  # dnf could not solve it (Error: Problem: ...)
    out = set()
    section = ""
    for line in text.splitlines():
        if re.match(r"^(Upgrading|Installing|Installing dependencies|Installing weak dependencies|"
                    r"Removing|Downgrading|Obsoleting)", line):
            section = line.split(":")[0]
            continue
        m = re.match(r"^ (\S+)\s+(\S+)\s+(\S+)\s+\S+", line)
        if m and section in ("Upgrading", "Installing", "Installing dependencies", "Installing weak dependencies"):
            out.add((m[1], _evr(m[3]), m[2]))
    return frozenset(out)


def copa_plan(world: World, names: Sequence[str]) -> frozenset[tuple[str, str, str]] | None:
    def versions(name: str) -> list[RepoPkg]:
        return [c for c in world.candidates if c.name == name]

    def providers(cap: str) -> list[RepoPkg]:
        return [c for c in world.candidates
                if c.name == cap or cap in c.files or any(p.name == cap for p in c.provides)]

    files = {"/usr/bin/copa-sh"}
    # `dnf upgrade NAME` takes any newer version: the report's fixed version is the first newer one the
    # repositories have
    installed = {i.name: i.evr for i in world.installed}
    wanted = [Wanted(n, min((c.evr for c in world.candidates
                             if c.name == n and compare_evr(c.evr, installed[n], rpmvercmp) > 0),
                            key=functools.cmp_to_key(lambda a, b: compare_evr(a, b, rpmvercmp))), ())
              for n in names]
    res = resolve(world.installed, wanted, versions, providers, rpmvercmp, files.__contains__)
    if res.failures:
        return None
    return frozenset((c.record.name, c.record.evr, c.record.arch) for c in res.chosen
                     if c.kind is not UpdateKind.REMOVED)


def subsets() -> list[tuple[str, ...]]:
    rng = random.Random(SEED)
    out = [(n,) for n in REPORTABLE]
    while len(out) < len(REPORTABLE) + SUBSETS:
        out.append(tuple(sorted(rng.sample(REPORTABLE, rng.randint(2, 5)))))
    return out


def test_dnf_output_is_read(world: World, tmp_path: Path) -> None:
    """The oracle's parser sees dnf's transaction: upgrading py-devel moves the pinned py and libpy, and pyapp,
    whose `py < 3.9.2` the new py breaks."""
    plan = dnf_plan(world, tmp_path, ["py-devel"])
    assert plan == {("py-devel", "3.9.2-1", "noarch"), ("py", "3.9.2-1", "noarch"),
                    ("libpy", "3.9.2-1", "noarch"), ("pyapp", "1.1-1", "noarch")}, LAST_OUTPUT


def test_copa_plans_what_dnf_does(world: World, tmp_path: Path) -> None:
    disagreements = []
    kinds = set()
    for subset in subsets():
        want = dnf_plan(world, tmp_path, subset)
        got = copa_plan(world, subset)
        kinds.add("fails" if want is None else "moves" if len(want) > len(subset) else "plain")
        if got != want:
            disagreements.append(f"{' '.join(subset)}:\n    dnf:  {'fails' if want is None else sorted(want)}\n"
                                 f"    copa: {'fails' if got is None else sorted(got)}\n"
                                 + "".join(f"      | {line}\n" for line in LAST_OUTPUT[0].splitlines()[-8:]))
    assert not disagreements, f"{len(disagreements)} subsets differ:\n" + "\n".join(disagreements)
    assert kinds == {"fails", "moves", "plain"}, kinds
