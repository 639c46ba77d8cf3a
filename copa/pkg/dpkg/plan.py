"""The dpkg plan, pure: installed packages + reported fixes + repository versions -> what to install.

Like `apt-get install --only-upgrade <reported>`: each reported package goes to its apt candidate (the
newest version of the highest priority: NotAutomatic releases such as backports, and apt preferences, count)
if that is at or above its fixed version, and fails otherwise; then the new versions' Depends/Pre-Depends
are closed transitively (upgrading or newly installing what they need), installed packages whose own
dependencies the upgrade would break (binary packages of one source pinning each other with `=`) move
along, and Breaks against installed versions are resolved by upgrading the broken package.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import networkx as nx

from copa.pkg.base import Skip, SkipReason, UpdateKind
from copa.pkg.dpkg.relations import Clause, Relation, parse_provides, parse_relations

Compare = Callable[[str, str], int]


class Candidate(Protocol):
    @property
    def package(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def architecture(self) -> str: ...
    @property
    def source_name(self) -> str: ...
    @property
    def source_version(self) -> str: ...
    @property
    def multi_arch(self) -> str: ...
    @property
    def depends(self) -> str: ...
    @property
    def pre_depends(self) -> str: ...
    @property
    def breaks(self) -> str: ...
    @property
    def provides(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Installed:
    name: str
    architecture: str
    version: str
    held: bool
    source: str
    depends: str = ""
    pre_depends: str = ""
    provides: str = ""
    source_version: str = ""  # "" when equal to version


@dataclass(frozen=True, slots=True)
class Wanted:
    name: str
    fixed_version: str | None
    vulnerabilities: tuple[str, ...] = ()
    # The report named the source package: fixed_version is a source version, compared with the installed
    # binary's and the candidates' source versions (they differ from binary versions for binNMUs and for
    # sources such as gcc whose binaries carry their own versions).
    by_source: bool = False


class Policy(Protocol):
    """apt's version priorities (see copa.pkg.apt.preferences)."""

    def priority(self, candidate: Candidate) -> int: ...

    def installed_priority(self, installed: Installed, same: Sequence[Candidate]) -> int:
        """The installed version's priority; `same` are the repository records of that very version."""
        ...


class DefaultPolicy:
    """No preferences and every release automatic: each available version 500, the installed one 100."""

    def priority(self, candidate: Candidate) -> int:
        return 500

    def installed_priority(self, installed: Installed, same: Sequence[Candidate]) -> int:
        return max([100, *(self.priority(c) for c in same)])


@dataclass(frozen=True, slots=True)
class Chosen:
    record: Candidate
    installed: Installed | None
    kind: UpdateKind
    vulnerabilities: tuple[str, ...]


@dataclass(frozen=True)
class Resolution:
    chosen: tuple[Chosen, ...]  # in unpack order: dependencies first
    skipped: tuple[Skip, ...]
    failures: tuple[Skip, ...]  # reported packages that cannot be fixed (an error unless --ignore-errors)


class _World:
    """Installed versions with the chosen ones laid over them: what dpkg's database would say afterwards."""

    def __init__(self, installed: Mapping[str, Installed], chosen: Mapping[str, Chosen], compare: Compare) -> None:
        self.compare = compare
        self.version: dict[str, str] = {n: i.version for n, i in installed.items()}
        self.provides: dict[str, list[str]] = {}
        for name, inst in installed.items():
            if name not in chosen:
                self._add_provides(name, inst.provides)
        for name, ch in chosen.items():
            self.version[name] = ch.record.version
            self._add_provides(name, ch.record.provides)

    def _add_provides(self, name: str, text: str) -> None:
        for p in parse_provides(text):
            self.provides.setdefault(p.name, []).append(p.version)

    def satisfies(self, rel: Relation) -> bool:
        version = self.version.get(rel.name)
        if version is not None and rel.version_ok(version, self.compare):
            return True
        # Virtual packages: unversioned relations accept any provider, versioned ones a versioned provide.
        return any(
            (not rel.op) or (v and rel.version_ok(v, self.compare)) for v in self.provides.get(rel.name, [])
        )

    def clause_ok(self, clause: Clause) -> bool:
        return any(self.satisfies(rel) for rel in clause)


def _relations(text: str, pre: str) -> tuple[Clause, ...]:
    return parse_relations(pre) + parse_relations(text)


class Candidates:
    """The versions apt could pick for a name, newest first: its candidate (the newest version of the highest
    priority; an older one than installed only at >= 1000, which we never want) and the other versions of that
    priority or above. Versions of lower priority (a NotAutomatic suite's 1 under bookworm's 500) are not
    usable, as for apt without an explicit version or release request. Cached per name."""

    def __init__(self, installed: Mapping[str, Installed], versions_of: Callable[[str], Sequence[Candidate]],
                 architecture: str, compare: Compare, policy: Policy | None = None) -> None:
        self.installed = installed
        self.versions_of = versions_of
        self.architecture = architecture
        self.compare = compare
        self.policy = policy or DefaultPolicy()
        self.cache: dict[str, list[Candidate]] = {}
        self.hidden: dict[str, list[tuple[Candidate, int]]] = {}  # the versions left out, with their priority

    def __call__(self, name: str) -> list[Candidate]:
        if name in self.cache:
            return self.cache[name]
        compare, architecture = self.compare, self.architecture
        inst = self.installed.get(name)
        # An installed package keeps its architecture (a foreign-arch-only package is not cross-graded to the
        # native one); "all" <-> native changes between versions are normal. A new package: native or all.
        if inst is None or inst.architecture in (architecture, "all"):
            arches = {architecture, "all"}
        else:
            arches = {inst.architecture, "all"}
        found = sorted((c for c in self.versions_of(name) if c.architecture in arches), key=_sort_key(compare),
                       reverse=True)
        prio = [self.policy.priority(c) for c in found]
        # apt's walk, newest first: a version becomes the candidate when its priority beats every newer one's.
        best = 0  # apt skips versions of priority <= 0
        candidate: Candidate | None = None
        for c, p in zip(found, prio, strict=True):
            if p > best and (inst is None or compare(c.version, inst.version) > 0):
                best, candidate = p, c
        if inst is not None:
            # The installed version comes next in the walk (an older one wins only at >= 1000: a downgrade).
            same = [c for c in found if compare(c.version, inst.version) == 0]
            if self.policy.installed_priority(inst, same) > best:
                candidate = None
        out = [] if candidate is None else [c for c, p in zip(found, prio, strict=True) if p >= best]
        self.cache[name] = out
        self.hidden[name] = [(c, p) for c, p in zip(found, prio, strict=True) if c not in out]
        return out


def resolve(
    installed: Mapping[str, Installed],
    wanted: Sequence[Wanted],
    versions_of: Callable[[str], Sequence[Candidate]],
    architecture: str,
    compare: Compare,
    providers_of: Callable[[str], Sequence[Candidate]] = lambda _name: (),
    *,
    policy: Policy | None = None,
    foreign: Mapping[str, Sequence[Installed]] | None = None,
) -> Resolution:
    """`installed` holds one instance per name (the native one); `foreign` the other architectures' instances
    of Multi-Arch: same packages, by name."""
    usable = Candidates(installed, versions_of, architecture, compare, policy)
    hidden = usable.hidden
    others = foreign or {}

    def usable_providers(name: str) -> list[Candidate]:
        return [c for c in providers_of(name) if c in usable(c.package)]

    chosen: dict[str, Chosen] = {}
    skipped: list[Skip] = []
    failures: list[Skip] = []

    for want in wanted:
        inst = installed.get(want.name)
        if inst is None:
            skipped.append(Skip(want.name, SkipReason.NOT_INSTALLED))
            continue
        if want.fixed_version is None:
            skipped.append(Skip(want.name, SkipReason.NO_FIXED_VERSION))
            continue
        have = (inst.source_version or inst.version) if want.by_source else inst.version
        if compare(have, want.fixed_version) >= 0:
            skipped.append(Skip(want.name, SkipReason.ALREADY_FIXED, f"{have} >= {want.fixed_version}"))
            continue
        if inst.held:
            skipped.append(Skip(want.name, SkipReason.HELD, f"{inst.version} is on hold"))
            continue
        fixed = want.fixed_version

        def fixes(c: Candidate, fixed: str = fixed, by_source: bool = want.by_source) -> bool:
            return compare(c.source_version if by_source else c.version, fixed) >= 0

        # The candidate is the first usable version; apt would install it or nothing (--only-upgrade).
        best = next(iter(usable(want.name)), None)
        if best is None or not fixes(best):
            seen = f"apt's candidate is {best.version}" if best else f"apt's candidate is the installed {inst.version}"
            lower = next((f"; {c.version} has apt priority {p} (a NotAutomatic release such as backports, or "
                          "pinned): pin it in /etc/apt/preferences.d to use it"
                          for c, p in hidden.get(want.name, []) if fixes(c)), "")
            if best is None and not lower and not versions_of(want.name):
                seen = "no repository has the package"
            failures.append(Skip(want.name, SkipReason.NO_FIX_AVAILABLE, f"needs >= {fixed}; {seen}{lower}"))
            continue
        previous = chosen.get(want.name)
        vulns = tuple(sorted({*want.vulnerabilities, *(previous.vulnerabilities if previous else ())}))
        if previous is not None and compare(previous.record.version, best.version) > 0:
            best = previous.record
        chosen[want.name] = Chosen(best, inst, UpdateKind.REPORTED, vulns)

    # Close the dependencies; a reported package whose closure cannot be met fails alone, and the
    # closure is recomputed without it so the others still go through.
    roots = dict(chosen)
    # What the image already lacked stays lacking: distroless images drop dpkg and friends on purpose,
    # and apt would not be asked to repair that either.
    original = _World(installed, {}, compare)
    while True:
        chosen = dict(roots)
        cause: dict[str, str] = {}
        failed: tuple[str, Skip] | None = None
        for _ in range(10_000):  # each round adds one package; the bound only guards against bugs
            world = _World(installed, chosen, compare)
            step = _next_fix(installed, chosen, world, original, usable, compare, usable_providers, others)
            if step is None:
                break
            trigger, action = step
            if isinstance(action, Skip):
                failed = (trigger, action)
                break
            chosen[action.record.package] = action
            cause.setdefault(action.record.package, trigger)
        if failed is None:
            break
        root = failed[0]
        while root not in roots and root in cause:
            root = cause[root]
        if root not in roots:
            root = min(roots)
        failures.append(Skip(root, SkipReason.UNRESOLVABLE, failed[1].detail))
        del roots[root]
    return Resolution(tuple(_unpack_order(chosen)), tuple(skipped), tuple(failures))


def _sort_key(compare: Compare) -> Callable[[Candidate], Any]:
    return functools.cmp_to_key(lambda a, b: compare(a.version, b.version))


def _next_fix(
    installed: Mapping[str, Installed],
    chosen: Mapping[str, Chosen],
    world: _World,
    original: _World,
    usable: Callable[[str], list[Candidate]],
    compare: Compare,
    providers: Callable[[str], list[Candidate]],
    foreign: Mapping[str, Sequence[Installed]],
) -> tuple[str, Chosen | Skip] | None:
    """The first unmet relation, as (the package whose relation it is, the change that meets it or why
    none can); None when everything holds."""
    # 0. dpkg needs a Multi-Arch: same package at one version on every architecture it is installed for.
    for name, ch in sorted(chosen.items()):
        for other in foreign.get(name, ()):
            if other.version != ch.record.version:
                return name, Skip(name, SkipReason.UNRESOLVABLE,
                                  f"{name}:{other.architecture} {other.version} is also installed and Multi-Arch: "
                                  f"same needs it at {ch.record.version} too; copa does not yet upgrade "
                                  "foreign-architecture packages")
    # 1. What the new versions need.
    for name, ch in sorted(chosen.items()):
        already_unmet = _unmet_names(ch.installed, original)
        for clause in _relations(ch.record.depends, ch.record.pre_depends):
            if world.clause_ok(clause) or {r.name for r in clause} & already_unmet:
                continue
            fix = _satisfy(clause, installed, usable, compare, ch.record.source_name, providers)
            if fix is None:
                return name, Skip(name, SkipReason.UNRESOLVABLE,
                                  f"{name} {ch.record.version} needs {' | '.join(map(str, clause))}, "
                                  "which no repository has")
            return name, fix
    # 2. Installed packages the new versions would break (exact pins between binaries of one source).
    for name, inst in sorted(installed.items()):
        if name in chosen:
            continue
        for clause in _relations(inst.depends, inst.pre_depends):
            if world.clause_ok(clause) or not original.clause_ok(clause):
                continue
            # The chosen package that broke this relation is the one it names.
            trigger = next((r.name for r in clause if r.name in chosen), name)
            upgraded = _upgrade_to_fit(inst, world, usable, compare)
            if upgraded is None:
                return trigger, Skip(name, SkipReason.UNRESOLVABLE,
                                     f"installed {name} {inst.version} needs {' | '.join(map(str, clause))}")
            return trigger, upgraded
    # 3. Breaks declared by the new versions against what stays installed.
    for name, ch in sorted(chosen.items()):
        for clause in parse_relations(ch.record.breaks):
            for rel in clause:
                broken = installed.get(rel.name)
                if broken is None or rel.name in chosen or not rel.version_ok(broken.version, compare):
                    continue
                best = next((c for c in usable(rel.name) if not rel.version_ok(c.version, compare)), None)
                if best is None:
                    return name, Skip(name, SkipReason.UNRESOLVABLE,
                                      f"{name} breaks installed {rel.name} {broken.version}")
                return name, Chosen(best, broken, _kind(broken, best, ch.record.source_name), ())
    return None


def _unmet_names(inst: Installed | None, original: _World) -> set[str]:
    """Names in the installed version's relations that the image already failed to satisfy."""
    if inst is None:
        return set()
    return {r.name for clause in _relations(inst.depends, inst.pre_depends) if not original.clause_ok(clause)
            for r in clause}


def _kind(inst: Installed | None, record: Candidate, source: str) -> UpdateKind:
    if inst is None:
        return UpdateKind.NEW
    return UpdateKind.SIBLING if record.source_name == source else UpdateKind.DEPENDENCY


def _satisfy(
    clause: Clause,
    installed: Mapping[str, Installed],
    usable: Callable[[str], list[Candidate]],
    compare: Compare,
    source: str,
    providers: Callable[[str], list[Candidate]] = lambda _name: [],
) -> Chosen | None:
    # Prefer upgrading something installed over installing something new, as apt does.
    for prefer_installed in (True, False):
        for rel in clause:
            inst = installed.get(rel.name)
            if (inst is not None) != prefer_installed:
                continue
            for cand in usable(rel.name):
                if rel.version_ok(cand.version, compare) and (inst is None or compare(cand.version, inst.version) > 0):
                    return Chosen(cand, inst, _kind(inst, cand, source), ())
    # Then a virtual package: the newest provider whose Provides meets the relation (an unversioned relation
    # accepts any provide, a versioned one only a versioned provide), upgrading an installed provider first.
    for prefer_installed in (True, False):
        for rel in clause:
            for cand in providers(rel.name):
                inst = installed.get(cand.package)
                if (inst is not None) != prefer_installed or cand.package == rel.name:
                    continue
                if inst is not None and compare(cand.version, inst.version) <= 0:
                    continue
                if any(p.name == rel.name and (not rel.op or (p.version and rel.version_ok(p.version, compare)))
                       for p in parse_provides(cand.provides)):
                    return Chosen(cand, inst, _kind(inst, cand, source), ())
    return None


def _upgrade_to_fit(
    inst: Installed, world: _World, usable: Callable[[str], list[Candidate]], compare: Compare
) -> Chosen | None:
    for cand in usable(inst.name):
        if compare(cand.version, inst.version) <= 0:
            continue
        if all(world.clause_ok(c) for c in _relations(cand.depends, cand.pre_depends)):
            return Chosen(cand, inst, UpdateKind.SIBLING, ())
    return None


def _unpack_order(chosen: Mapping[str, Chosen]) -> Iterable[Chosen]:
    """Dependencies before their dependents; cycles (common between sibling libraries) kept together."""
    graph: nx.DiGraph = nx.DiGraph()
    graph.add_nodes_from(chosen)
    for name, ch in chosen.items():
        for clause in _relations(ch.record.depends, ch.record.pre_depends):
            for rel in clause:
                if rel.name in chosen and rel.name != name:
                    graph.add_edge(rel.name, name)
    condensed = nx.condensation(graph)
    for component in nx.lexicographical_topological_sort(condensed, key=lambda c: min(condensed.nodes[c]["members"])):
        for name in sorted(condensed.nodes[component]["members"]):
            yield chosen[name]
