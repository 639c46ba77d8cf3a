"""copa.pkg.rpm.plan.resolve as tables: installed packages + report + repository -> what dnf would install.

Pure logic on small records; versions compare with copa's rpmvercmp (itself checked against rpm in
test_rpm_version.py). The differential test against dnf itself is test_rpm_dnf_oracle.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from copa.pkg.base import SkipReason, UpdateKind
from copa.pkg.rpm.deps import Dep, overlaps
from copa.pkg.rpm.plan import Installed, Policy, Resolution, Wanted, resolve
from copa.pkg.rpm.version import rpmvercmp


@dataclass(frozen=True)
class Pkg:
    name: str
    evr: str
    arch: str = "x86_64"
    provides: tuple[Dep, ...] = ()
    requires: tuple[Dep, ...] = ()
    conflicts: tuple[Dep, ...] = ()
    obsoletes: tuple[Dep, ...] = ()
    recommends: tuple[Dep, ...] = ()
    files: tuple[str, ...] = ()
    priority: int = 99
    sourcerpm: str = field(default="")


def deps(*texts: str) -> tuple[Dep, ...]:
    return tuple(Dep.parse(t) for t in texts)


def inst(name: str, evr: str, *requires: str, arch: str = "x86_64", provides: Sequence[str] = (),
         conflicts: Sequence[str] = ()) -> Installed:
    return Installed(name, arch, evr, deps(*provides), deps(*requires), deps(*conflicts))


def run(installed: Sequence[Installed], repo: Sequence[Pkg], wanted: Sequence[Wanted],
        files: frozenset[str] = frozenset(), policy: Policy | None = None) -> Resolution:
    def providers(cap: str) -> list[Pkg]:
        return [p for p in repo if p.name == cap or cap in p.files or any(d.name == cap for d in p.provides)]

    return resolve(installed, wanted, lambda n: [p for p in repo if p.name == n], providers, rpmvercmp,
                   files.__contains__, policy or Policy())


def picked(res: Resolution) -> dict[str, tuple[str, str]]:
    return {f"{c.record.name}.{c.record.arch}": (c.record.evr, c.kind.value) for c in res.chosen}


def W(name: str, fixed: str | None) -> Wanted:
    return Wanted(name, fixed, ("CVE-1",))


R, SIB, DEP, NEW, CO = (k.value for k in (UpdateKind.REPORTED, UpdateKind.SIBLING, UpdateKind.DEPENDENCY,
                                            UpdateKind.NEW, UpdateKind.CO_UPGRADE))

CASES = {
    "newest of the fix's name, epoch counts": (
        [inst("openssl", "1:1.1.1k-4.el8")],
        [Pkg("openssl", "1:1.1.1k-4.el8"), Pkg("openssl", "1:1.1.1k-9.el8"), Pkg("openssl", "1.1.1z-1.el8")],
        [W("openssl", "1:1.1.1k-6.el8")],
        {"openssl.x86_64": ("1:1.1.1k-9.el8", R)}, {}, {},
    ),
    "priority beats version": (
        [inst("curl", "7.61.1-22.el8")],
        [Pkg("curl", "7.61.1-30.el8", priority=10), Pkg("curl", "7.61.1-34.el8", priority=99)],
        [W("curl", "7.61.1-25.el8")],
        {"curl.x86_64": ("7.61.1-30.el8", R)}, {}, {},
    ),
    "best candidate below the fix fails": (
        [inst("curl", "7.61.1-22.el8")],
        [Pkg("curl", "7.61.1-23.el8")],
        [W("curl", "7.61.1-25.el8")],
        {}, {}, {"curl": SkipReason.NO_FIX_AVAILABLE},
    ),
    "sibling pinned by = release moves (co-upgraded)": (
        [inst("openssl-libs", "1:1.1.1k-4.el8"), inst("openssl", "1:1.1.1k-4.el8", "openssl-libs = 1:1.1.1k-4.el8")],
        [Pkg("openssl-libs", "1:1.1.1k-9.el8"),
         Pkg("openssl", "1:1.1.1k-9.el8", requires=deps("openssl-libs = 1:1.1.1k-9.el8"))],
        [W("openssl-libs", "1:1.1.1k-9.el8")],
        {"openssl-libs.x86_64": ("1:1.1.1k-9.el8", R), "openssl.x86_64": ("1:1.1.1k-9.el8", CO)}, {}, {},
    ),
    "new dependency installed, installed provider upgraded first": (
        [inst("a", "1-1"), inst("libx", "1-1", provides=["libx.so.1()(64bit)"])],
        [Pkg("a", "2-1", requires=deps("libx.so.1()(64bit)", "libx >= 2", "newdep")),
         Pkg("libx", "2-1", provides=deps("libx.so.1()(64bit)")), Pkg("newdep", "1-1")],
        [W("a", "2-1")],
        {"a.x86_64": ("2-1", R), "libx.x86_64": ("2-1", DEP), "newdep.x86_64": ("1-1", NEW)}, {}, {},
    ),
    "file dependency met by the image": (
        [inst("a", "1-1")],
        [Pkg("a", "2-1", requires=deps("/bin/sh"))],
        [W("a", "2-1")],
        {"a.x86_64": ("2-1", R)}, {}, {},
    ),
    "rich dependency: an alternative already installed": (
        [inst("a", "1-1"), inst("b", "1-1")],
        [Pkg("a", "2-1", requires=deps("(c or b)")), Pkg("c", "1-1")],
        [W("a", "2-1")],
        {"a.x86_64": ("2-1", R)}, {}, {},
    ),
    "multilib kept in step": (
        [inst("glibc", "2.28-225.el8"), inst("glibc", "2.28-225.el8", arch="i686")],
        [Pkg("glibc", "2.28-236.el8"), Pkg("glibc", "2.28-236.el8", arch="i686")],
        [W("glibc", "2.28-230.el8")],
        {"glibc.x86_64": ("2.28-236.el8", R), "glibc.i686": ("2.28-236.el8", R)}, {}, {},
    ),
    "an installed package whose pin cannot move fails the root": (
        [inst("lib", "1-1"), inst("tool", "1-1", "lib = 1-1")],
        [Pkg("lib", "2-1")],
        [W("lib", "2-1")],
        {}, {}, {"lib": SkipReason.UNRESOLVABLE},
    ),
    "obsoletes replace the old package": (
        [inst("a", "1-1"), inst("old-a-plugin", "1-1")],
        [Pkg("a", "2-1", obsoletes=deps("old-a-plugin < 2"))],
        [W("a", "2-1")],
        {"a.x86_64": ("2-1", R)}, {}, {},
    ),
    "excluded by dnf.conf": (
        [inst("a", "1-1")],
        [Pkg("a", "2-1")],
        [W("a", "2-1")],
        {}, {}, {"a": SkipReason.NO_FIX_AVAILABLE},
    ),
    "skips": (
        [inst("a", "2-1")],
        [Pkg("a", "3-1")],
        [W("a", "2-1"), W("zz", "1-1"), W("a", None)],
        {}, {"a": SkipReason.NO_FIXED_VERSION, "zz": SkipReason.NOT_INSTALLED}, {},
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_resolve(case: tuple[list[Installed], list[Pkg], list[Wanted], dict[str, tuple[str, str]],
                              dict[str, SkipReason], dict[str, SkipReason]], request: pytest.FixtureRequest) -> None:
    installed, repo, wanted, want_chosen, want_skipped, want_failed = case
    policy = Policy(excludes=("a",)) if "excluded" in request.node.callspec.id else Policy()
    res = run(installed, repo, wanted, frozenset({"/bin/sh"}), policy)
    assert picked(res) == want_chosen
    skipped = {s.name: s.reason for s in res.skipped}
    if "skips" in request.node.callspec.id:
        assert SkipReason.ALREADY_FIXED in skipped.values() or skipped.get("a") is SkipReason.NO_FIXED_VERSION
        skipped = {k: v for k, v in skipped.items() if v is not SkipReason.ALREADY_FIXED}
    assert skipped == want_skipped
    assert {s.name: s.reason for s in res.failures} == want_failed
    for f in res.failures:
        assert f.detail and "\n" not in f.detail


def test_obsoleted_package_is_erased() -> None:
    res = run([inst("a", "1-1"), inst("old-a-plugin", "1-1")],
              [Pkg("a", "2-1", obsoletes=deps("old-a-plugin < 2"))], [W("a", "2-1")])
    assert [e.installed.name for e in res.erased] == ["old-a-plugin"]


@pytest.mark.parametrize(("provide", "require", "ok"), [
    ("foo = 1.2-3", "foo >= 1.2", True),
    ("foo = 1.2-3", "foo > 1.2", False),  # a require without release ignores the provide's release
    ("foo = 1.2-3", "foo < 1.2-4", True),
    ("foo = 1:1.0-1", "foo >= 2.0", True),  # epoch 1 beats the missing (0) epoch
    ("foo", "foo >= 9", True),  # an unversioned provide meets any require
    ("foo >= 2", "foo < 1", False),
    ("foo >= 2", "foo < 3", True),
])
def test_rpmds_overlap(provide: str, require: str, ok: bool) -> None:
    assert overlaps(Dep.parse(provide), Dep.parse(require), rpmvercmp) is ok
