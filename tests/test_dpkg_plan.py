"""copa.pkg.dpkg.plan.resolve as tables: installed packages + report + repository -> what gets installed.

Pure logic, so the records are small frozen dataclasses; versions compare with copa's dpkg version order (itself
checked against `dpkg --compare-versions` in test_dpkg_status.py). Each row says what apt-get would do.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from copa.pkg.base import SkipReason, UpdateKind
from copa.pkg.dpkg.plan import Installed, Resolution, Wanted, resolve
from copa.pkg.dpkg.relations import parse_provides
from copa.pkg.dpkg.version import compare_versions


@dataclass(frozen=True, slots=True)
class Rec:
    package: str
    version: str
    depends: str = ""
    pre_depends: str = ""
    breaks: str = ""
    provides: str = ""
    source_name: str = ""
    architecture: str = "amd64"
    conflicts: str = ""
    recommends: str = ""
    source_version: str = ""
    multi_arch: str = "no"

    def __post_init__(self) -> None:
        if not self.source_name:
            object.__setattr__(self, "source_name", self.package)
        if not self.source_version:
            object.__setattr__(self, "source_version", self.version)


def inst(name: str, version: str, depends: str = "", *, source: str = "", held: bool = False,
         provides: str = "", arch: str = "amd64") -> Installed:
    return Installed(name, arch, version, held, source or name, depends, "", provides)


def run(installed: Sequence[Installed], repo: Sequence[Rec], wanted: Sequence[Wanted]) -> Resolution:
    by_name: dict[str, list[Rec]] = {}
    for r in repo:
        by_name.setdefault(r.package, []).append(r)

    def providers(name: str) -> list[Rec]:
        return [r for r in repo if any(p.name == name for p in parse_provides(r.provides))]

    return resolve({i.name: i for i in installed}, wanted, lambda n: by_name.get(n, []), "amd64", compare_versions,
                   providers)


def picked(res: Resolution) -> dict[str, tuple[str, str]]:
    """name -> (version, kind) of every chosen package."""
    return {c.record.package: (c.record.version, c.kind.value) for c in res.chosen}


def W(name: str, fixed: str | None, *cves: str) -> Wanted:
    return Wanted(name, fixed, tuple(cves))


REPORTED, SIBLING, DEP, NEW, CO = (k.value for k in (UpdateKind.REPORTED, UpdateKind.SIBLING, UpdateKind.DEPENDENCY,
                                                      UpdateKind.NEW, UpdateKind.CO_UPGRADE))

CASES = {
    "newest at or above fixed": (
        [inst("a", "1.0-1")],
        [Rec("a", "1.0-1"), Rec("a", "1.0-2"), Rec("a", "1.0-3")],
        [W("a", "1.0-2")],
        {"a": ("1.0-3", REPORTED)}, {}, {},
    ),
    "stale report: fixed version gone, newer one taken": (
        [inst("a", "1.0-1")],
        [Rec("a", "1.0-1"), Rec("a", "1.2-1")],
        [W("a", "1.0-2")],
        {"a": ("1.2-1", REPORTED)}, {}, {},
    ),
    "epoch and tilde ordering": (
        [inst("a", "1:1.0-1")],
        [Rec("a", "2.0-1"), Rec("a", "1:1.1~rc1-1"), Rec("a", "1:1.1-1")],
        [W("a", "1:1.1~rc1-1")],
        {"a": ("1:1.1-1", REPORTED)}, {}, {},
    ),
    "other architectures ignored": (
        [inst("a", "1.0")],
        [Rec("a", "2.0"), Rec("a", "3.0", architecture="arm64")],
        [W("a", "2.0")],
        {"a": ("2.0", REPORTED)}, {}, {},
    ),
    "only an older version available": (
        [inst("a", "1.0")],
        [Rec("a", "1.0"), Rec("a", "1.5")],
        [W("a", "2.0")],
        {}, {}, {"a": SkipReason.NO_FIX_AVAILABLE},
    ),
    "skips: not installed, no fixed version, already fixed, held": (
        [inst("b", "1.0"), inst("c", "2.0"), inst("d", "1.0", held=True)],
        [Rec("b", "2.0"), Rec("c", "3.0"), Rec("d", "2.0")],
        [W("x", "1.0"), W("b", None), W("c", "2.0"), W("d", "2.0")],
        {},
        {"x": SkipReason.NOT_INSTALLED, "b": SkipReason.NO_FIXED_VERSION, "c": SkipReason.ALREADY_FIXED,
         "d": SkipReason.HELD},
        {},
    ),
    "new dependency installed, existing one upgraded": (
        [inst("a", "1.0"), inst("b", "1.0")],
        [Rec("a", "2.0", depends="b (>= 2.0), n"), Rec("b", "2.0"), Rec("b", "3.0"), Rec("n", "1.0")],
        [W("a", "2.0")],
        {"a": ("2.0", REPORTED), "b": ("3.0", DEP), "n": ("1.0", NEW)}, {}, {},
    ),
    "dependency already satisfied: nothing else moves": (
        [inst("a", "1.0"), inst("b", "1.5")],
        [Rec("a", "2.0", depends="b (>= 1.0)"), Rec("b", "3.0")],
        [W("a", "2.0")],
        {"a": ("2.0", REPORTED)}, {}, {},
    ),
    "pre-depends closed like depends": (
        [inst("a", "1.0")],
        [Rec("a", "2.0", pre_depends="p (>= 1)"), Rec("p", "1")],
        [W("a", "2.0")],
        {"a": ("2.0", REPORTED), "p": ("1", NEW)}, {}, {},
    ),
    "apt takes only candidates: a pinned sibling whose candidate does not fit would be removed": (
        [inst("libfoo1", "1.0", source="foo"), inst("foo-tools", "1.0", "libfoo1 (= 1.0)", source="foo")],
        [Rec("libfoo1", "2.0", source_name="foo"),
         Rec("foo-tools", "2.0", depends="libfoo1 (= 2.0)", source_name="foo"),
         Rec("foo-tools", "3.0", depends="libfoo1 (= 3.0)", source_name="foo")],
        [W("libfoo1", "2.0")],
        {}, {}, {"libfoo1": SkipReason.UNRESOLVABLE},
    ),
    "an installed package pinning the old version is co-upgraded, transitively": (
        [inst("libpy", "1.0", source="py"), inst("py", "1.0", "libpy (= 1.0)", source="py"),
         inst("app", "1.0", "py (<< 1.1)")],
        [Rec("libpy", "1.1", source_name="py"), Rec("py", "1.1", depends="libpy (= 1.1)", source_name="py"),
         Rec("app", "2.0", depends="py (>= 1.1)")],
        [W("libpy", "1.1")],
        {"libpy": ("1.1", REPORTED), "py": ("1.1", SIBLING), "app": ("2.0", CO)}, {}, {},
    ),
    "upper bound against another source: co-upgraded, not a sibling": (
        [inst("lib", "1.0"), inst("tool", "1.0", "lib (<< 1.1)")],
        [Rec("lib", "1.1"), Rec("tool", "1.1", depends="lib (>= 1.1)")],
        [W("lib", "1.1")],
        {"lib": ("1.1", REPORTED), "tool": ("1.1", CO)}, {}, {},
    ),
    "upgrade by source: every installed binary of the same source version moves": (
        [inst("libssl3", "3.0.1", source="openssl"), inst("openssl", "3.0.1", "libssl3 (>= 3.0.0)")],
        [Rec("libssl3", "3.0.2", source_name="openssl"), Rec("openssl", "3.0.2", depends="libssl3 (>= 3.0.2)")],
        [W("libssl3", "3.0.2")],
        {"libssl3": ("3.0.2", REPORTED), "openssl": ("3.0.2", SIBLING)}, {}, {},
    ),
    "a new Recommends is installed, an old unmet one is not": (
        [inst("a", "1.0")],
        [Rec("a", "2.0", recommends="newrec"), Rec("newrec", "1.0")],
        [W("a", "2.0")],
        {"a": ("2.0", REPORTED), "newrec": ("1.0", NEW)}, {}, {},
    ),
    "conflicts with an installed package that cannot move: apt would remove it": (
        [inst("a", "1.0"), inst("old", "1.0")],
        [Rec("a", "2.0", conflicts="old"), Rec("old", "1.0")],
        [W("a", "2.0")],
        {}, {}, {"a": SkipReason.UNRESOLVABLE},
    ),
    "sibling with no fitting version fails its root": (
        [inst("libfoo1", "1.0", source="foo"), inst("foo-tools", "1.0", "libfoo1 (= 1.0)", source="foo")],
        [Rec("libfoo1", "2.0", source_name="foo")],
        [W("libfoo1", "2.0")],
        {}, {}, {"libfoo1": SkipReason.UNRESOLVABLE},
    ),
    "virtual package provided by an installed package": (
        [inst("a", "1.0"), inst("postfix", "3.0", provides="mail-transport-agent")],
        [Rec("a", "2.0", depends="mail-transport-agent"), Rec("exim4", "4.0", provides="mail-transport-agent")],
        [W("a", "2.0")],
        {"a": ("2.0", REPORTED)}, {}, {},
    ),
    "versioned virtual: the installed provider is upgraded to a versioned provide": (
        [inst("a", "1.0"), inst("impl", "1.0", provides="abi (= 1)")],
        [Rec("a", "2.0", depends="abi (>= 2)"), Rec("impl", "2.0", provides="abi (= 2)")],
        [W("a", "2.0")],
        {"a": ("2.0", REPORTED), "impl": ("2.0", DEP)}, {}, {},
    ),
    "virtual package only the repository provides: a provider is installed": (
        [inst("a", "1.0")],
        [Rec("a", "2.0", depends="virt"), Rec("impl", "1.0", provides="virt")],
        [W("a", "2.0")],
        {"a": ("2.0", REPORTED), "impl": ("1.0", NEW)}, {}, {},
    ),
    "alternatives: an installed alternative satisfies": (
        [inst("a", "1.0"), inst("c", "1.0")],
        [Rec("a", "2.0", depends="b | c"), Rec("b", "1.0")],
        [W("a", "2.0")],
        {"a": ("2.0", REPORTED)}, {}, {},
    ),
    "alternatives: upgrading an installed one beats installing the first": (
        [inst("a", "1.0"), inst("c", "1.0")],
        [Rec("a", "2.0", depends="b | c (>= 2)"), Rec("b", "1.0"), Rec("c", "2.0")],
        [W("a", "2.0")],
        {"a": ("2.0", REPORTED), "c": ("2.0", DEP)}, {}, {},
    ),
    "alternatives: none installed, the first available is installed": (
        [inst("a", "1.0")],
        [Rec("a", "2.0", depends="missing | b | c"), Rec("b", "1.0"), Rec("c", "1.0")],
        [W("a", "2.0")],
        {"a": ("2.0", REPORTED), "b": ("1.0", NEW)}, {}, {},
    ),
    "breaks: the broken installed package is upgraded": (
        [inst("a", "1.0"), inst("b", "1.0")],
        [Rec("a", "2.0", breaks="b (<< 2.0)"), Rec("b", "2.0")],
        [W("a", "2.0")],
        {"a": ("2.0", REPORTED), "b": ("2.0", CO)}, {}, {},
    ),
    "breaks that cannot be resolved fail the root": (
        [inst("a", "1.0"), inst("b", "1.0")],
        [Rec("a", "2.0", breaks="b (<< 2.0)"), Rec("b", "1.0")],
        [W("a", "2.0")],
        {}, {}, {"a": SkipReason.UNRESOLVABLE},
    ),
    "breaks against a package not installed are ignored": (
        [inst("a", "1.0")],
        [Rec("a", "2.0", breaks="zzz (<< 9)"), Rec("zzz", "1.0")],
        [W("a", "2.0")],
        {"a": ("2.0", REPORTED)}, {}, {},
    ),
    "distroless: a relation the image already failed is not repaired": (
        [inst("a", "1.0", "dpkg (>= 1.19), libc6"), inst("libc6", "2.36")],
        [Rec("a", "2.0", depends="dpkg (>= 1.21), libc6 (>= 2.36)"), Rec("dpkg", "1.21"), Rec("libc6", "2.37")],
        [W("a", "2.0")],
        {"a": ("2.0", REPORTED)}, {}, {},
    ),
    "distroless: an installed package's broken relation is not a reason to move it": (
        [inst("a", "1.0"), inst("b", "1.0", "gone")],
        [Rec("a", "2.0"), Rec("b", "2.0")],
        [W("a", "2.0")],
        {"a": ("2.0", REPORTED)}, {}, {},
    ),
    "one root failing does not block the others": (
        [inst("a", "1.0"), inst("b", "1.0"), inst("c", "1.0")],
        [Rec("a", "2.0", depends="nowhere"), Rec("b", "2.0", depends="n"), Rec("n", "1"), Rec("c", "1.0")],
        [W("a", "2.0"), W("b", "2.0"), W("c", "2.0")],
        {"b": ("2.0", REPORTED), "n": ("1", NEW)}, {},
        {"a": SkipReason.UNRESOLVABLE, "c": SkipReason.NO_FIX_AVAILABLE},
    ),
    "a failing dependency chain is charged to the root that pulled it": (
        [inst("a", "1.0"), inst("b", "1.0")],
        [Rec("a", "2.0", depends="m"), Rec("m", "1", depends="nowhere"), Rec("b", "2.0")],
        [W("a", "2.0"), W("b", "2.0")],
        {"b": ("2.0", REPORTED)}, {}, {"a": SkipReason.UNRESOLVABLE},
    ),
    "reported twice (one line per CVE): the higher fix, CVEs merged": (
        [inst("a", "1.0")],
        [Rec("a", "1.1"), Rec("a", "1.2")],
        [W("a", "1.1", "CVE-1"), W("a", "1.2", "CVE-2")],
        {"a": ("1.2", REPORTED)}, {}, {},
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_resolve(case: tuple[list[Installed], list[Rec], list[Wanted], dict[str, tuple[str, str]],
                              dict[str, SkipReason], dict[str, SkipReason]]) -> None:
    installed, repo, wanted, want_chosen, want_skipped, want_failed = case
    res = run(installed, repo, wanted)
    assert picked(res) == want_chosen
    assert {s.name: s.reason for s in res.skipped} == want_skipped
    assert {s.name: s.reason for s in res.failures} == want_failed
    for f in res.failures:
        assert f.detail and "\n" not in f.detail  # becomes part of a one-line error message


def test_cves_merged_and_unpack_order_puts_dependencies_first() -> None:
    res = run(
        [inst("a", "1.0"), inst("z", "1.0")],
        [Rec("a", "2.0", depends="z (>= 2), n"), Rec("z", "2.0", depends="n"), Rec("n", "1")],
        [W("a", "2.0", "CVE-2"), W("a", "2.0", "CVE-1")],
    )
    order = [c.record.package for c in res.chosen]
    assert order.index("n") < order.index("z") < order.index("a")
    a = next(c for c in res.chosen if c.record.package == "a")
    assert a.vulnerabilities == ("CVE-1", "CVE-2")
    assert a.installed is not None and a.installed.version == "1.0"
    new = next(c for c in res.chosen if c.record.package == "n")
    assert new.installed is None and new.kind is UpdateKind.NEW


def test_dependency_cycle_between_siblings_terminates() -> None:
    res = run(
        [inst("x", "1", "y (= 1)", source="s"), inst("y", "1", "x (= 1)", source="s")],
        [Rec("x", "2", depends="y (= 2)", source_name="s"), Rec("y", "2", depends="x (= 2)", source_name="s")],
        [W("x", "2")],
    )
    assert picked(res) == {"x": ("2", REPORTED), "y": ("2", SIBLING)}


def test_removal_only_with_allow_remove_and_never_essential() -> None:
    installed = [inst("a", "1.0"), inst("old", "1.0"), inst("user", "1.0", "old")]
    repo = [Rec("a", "2.0", conflicts="old"), Rec("old", "1.0"), Rec("user", "1.0")]
    by_name: dict[str, list[Rec]] = {}
    for r in repo:
        by_name.setdefault(r.package, []).append(r)
    res = resolve({i.name: i for i in installed}, [W("a", "2.0")], lambda n: by_name.get(n, []), "amd64",
                  compare_versions, allow_remove=True)
    assert picked(res) == {"a": ("2.0", REPORTED)}
    # the conflict removes old; user depends on old and cannot move: apt's problem resolver removes it too
    assert {r.installed.name for r in res.removals} == {"old", "user"}
    refused = run(installed, repo, [W("a", "2.0")])
    assert "--allow-remove" in refused.failures[0].detail and "old" in refused.failures[0].detail
    essential = Installed("old", "amd64", "1.0", False, "old", essential=True)
    res = resolve({"a": installed[0], "old": essential}, [W("a", "2.0")], lambda n: by_name.get(n, []), "amd64",
                  compare_versions, allow_remove=True)
    assert not res.chosen and "Essential" in res.failures[0].detail


def test_multi_arch_same_instances_move_in_step() -> None:
    """libfoo is installed for amd64 and i386 (Multi-Arch: same): the i386 instance goes to the same version, or
    the root fails when no repository has that version for i386."""
    native = Installed("libfoo", "amd64", "1.0", False, "foo", multi_arch="same")
    other = Installed("libfoo", "i386", "1.0", False, "foo", multi_arch="same")
    repo = {"libfoo": [Rec("libfoo", "1.1", source_name="foo")]}
    twins = {"i386": [Rec("libfoo", "1.1", source_name="foo", architecture="i386")]}
    res = resolve({"libfoo": native}, [W("libfoo", "1.1")], lambda n: repo.get(n, []), "amd64", compare_versions,
                  foreign={"libfoo": (other,)}, foreign_versions_of=lambda _n, arch: twins.get(arch, []))
    assert sorted((c.record.package, c.record.architecture, c.record.version) for c in res.chosen) == [
        ("libfoo", "amd64", "1.1"), ("libfoo", "i386", "1.1")]
    res = resolve({"libfoo": native}, [W("libfoo", "1.1")], lambda n: repo.get(n, []), "amd64", compare_versions,
                  foreign={"libfoo": (other,)}, foreign_versions_of=lambda _n, _arch: [])
    assert not res.chosen and "i386" in res.failures[0].detail


@pytest.mark.parametrize("seed", range(40))
def test_acyclic_unpack_order_is_networkx_order(seed: int) -> None:
    # oracle: networkx's condensation + lexicographical topological sort, which orders every plan with a cycle
    import networkx as nx

    from copa.pkg.dpkg.plan import _acyclic_order

    rng = random.Random(seed)
    names = [f"p{rng.randrange(1000):03d}" for _ in range(rng.randint(1, 30))]
    after: dict[str, set[str]] = {n: set() for n in names}
    ranked = sorted(set(names), key=lambda n: rng.random())
    for i, a in enumerate(ranked):
        for b in ranked[i + 1:]:
            if rng.random() < 0.15:
                after[a].add(b)  # edges follow one ranking: acyclic
    cyclic = seed % 3 == 0 and len(ranked) > 1
    if cyclic:
        after[ranked[0]].add(ranked[-1])
        after[ranked[-1]].add(ranked[0])  # a two-package cycle
    graph: nx.DiGraph = nx.DiGraph()
    graph.add_nodes_from(after)
    graph.add_edges_from((a, b) for a, bs in after.items() for b in bs)
    condensed = nx.condensation(graph)
    expected = [name for c in nx.lexicographical_topological_sort(
        condensed, key=lambda c: min(condensed.nodes[c]["members"])) for name in sorted(condensed.nodes[c]["members"])]
    got = _acyclic_order(after)
    if cyclic:
        assert got is None
    else:
        assert got == expected
