"""The rpm plan, pure: installed packages + reported fixes + repository packages -> what dnf would install.

What `dnf upgrade <reported>` does (libsolv's update job, `best=True` as RHEL's dnf.conf sets it): each reported
package goes to the best candidate of its name and architecture (a noarch <-> arch change allowed) — the newest
version among the repositories of the best priority (the lowest `priority=` number) — if that is at or above its
fixed version, and fails otherwise; every installed architecture of the name moves (multilib kept in step). Then,
as libsolv's solution for that job:

* unmet Requires of the new versions (versioned capabilities, file paths, rich `(a or b)` / `(a if b)`
  dependencies) are met by upgrading an installed provider first, else by installing the best new provider;
* installed packages whose Requires the upgrade breaks (`foo = 1.2-3` pins between the binaries of one source
  RPM, upper bounds) move to their best candidates ("co-upgraded"), transitively;
* Conflicts both ways are settled by upgrading the other side; Obsoletes of a new version replace what they name
  (an erasure dnf always performs); other erasures need `--allowerasing` in dnf, so copa fails instead;
* new weak dependencies (Recommends the old version did not have) are installed when they can be
  (install_weak_deps), and never fail the plan.

A marking that fails is undone as a whole, and the reported package fails with the blocker named.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from copa.pkg.base import Skip, SkipReason, UpdateKind
from copa.pkg.rpm.deps import Compare, Dep, compare_evr, overlaps, parse_rich, rich_ok

NOARCH = "noarch"
Key = tuple[str, str]  # (name, arch)


class Candidate(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def arch(self) -> str: ...
    @property
    def evr(self) -> str: ...
    @property
    def provides(self) -> tuple[Dep, ...]: ...
    @property
    def requires(self) -> tuple[Dep, ...]: ...
    @property
    def conflicts(self) -> tuple[Dep, ...]: ...
    @property
    def obsoletes(self) -> tuple[Dep, ...]: ...
    @property
    def recommends(self) -> tuple[Dep, ...]: ...
    @property
    def files(self) -> tuple[str, ...]: ...
    @property
    def priority(self) -> int: ...
    @property
    def sourcerpm(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Installed:
    name: str
    arch: str
    evr: str
    provides: tuple[Dep, ...] = ()
    requires: tuple[Dep, ...] = ()
    conflicts: tuple[Dep, ...] = ()
    obsoletes: tuple[Dep, ...] = ()
    recommends: tuple[Dep, ...] = ()
    sourcerpm: str = ""

    @property
    def key(self) -> Key:
        return (self.name, self.arch)


@dataclass(frozen=True, slots=True)
class Wanted:
    name: str
    fixed_version: str | None  # "[epoch:]version-release", as Trivy writes it
    vulnerabilities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Chosen:
    record: Candidate
    installed: Installed | None
    kind: UpdateKind
    vulnerabilities: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Erased:
    installed: Installed
    reason: str


@dataclass(frozen=True)
class Resolution:
    chosen: tuple[Chosen, ...]  # sorted by (name, arch)
    skipped: tuple[Skip, ...]
    failures: tuple[Skip, ...]
    erased: tuple[Erased, ...] = ()  # replaced through Obsoletes


@dataclass(frozen=True)
class Policy:
    """The parts of the image's dnf configuration that change the answer."""

    excludes: tuple[str, ...] = ()  # globs on package names ([main] exclude=; per-repo excludes filter the index)
    install_weak_deps: bool = True


def resolve(
    installed: Iterable[Installed],
    wanted: Sequence[Wanted],
    versions_of: Callable[[str], Sequence[Candidate]],
    providers_of: Callable[[str], Sequence[Candidate]],
    compare: Compare,
    installed_file: Callable[[str], bool] = lambda _path: False,
    policy: Policy = Policy(),
) -> Resolution:
    """`versions_of(name)`: every repository package of that name; `providers_of(capability)`: every repository
    package providing it (file paths included where the metadata lists them); `installed_file(path)`: whether an
    installed package owns the path."""
    solver = _Solver(tuple(installed), versions_of, providers_of, compare, installed_file, policy)
    skipped: list[Skip] = []
    failures: list[Skip] = []
    vulns: dict[Key, set[str]] = {}
    reported: set[Key] = set()
    for want in wanted:
        instances = solver.by_name.get(want.name, [])
        if not instances:
            skipped.append(Skip(want.name, SkipReason.NOT_INSTALLED))
            continue
        if want.fixed_version is None:
            skipped.append(Skip(want.name, SkipReason.NO_FIXED_VERSION))
            continue
        fixed = want.fixed_version
        if all(compare_evr(i.evr, fixed, compare) >= 0 for i in instances):
            have = ", ".join(sorted({i.evr for i in instances}))
            skipped.append(Skip(want.name, SkipReason.ALREADY_FIXED, f"{have} >= {fixed}"))
            continue
        snapshot = solver.snapshot()
        error = None
        for inst in instances:
            if compare_evr(inst.evr, fixed, compare) >= 0:
                continue
            if inst.key in solver.chosen:  # moved already with another architecture of the name
                reported.add(inst.key)
                vulns.setdefault(inst.key, set()).update(want.vulnerabilities)
                continue
            best = solver.best(inst.name, inst.arch)
            replacement = solver.obsoleter(inst)
            if replacement is not None and best is not None and compare_evr(best.evr, inst.evr, compare) > 0 \
                    and not any(o.name == best.name and overlaps(Dep(best.name, 8, best.evr), o, compare)
                                for o in replacement.obsoletes):
                replacement = None
            if replacement is not None:
                # `dnf upgrade NAME` takes the package that obsoletes it when NAME has no newer build the
                # obsoleter does not obsolete too (libsolv's update candidates include obsoleters, and prune
                # those another candidate obsoletes); _entail erases the installed one.
                new_key = (replacement.name, replacement.arch)
                why = solver.mark(new_key, replacement, UpdateKind.REPORTED, f"obsoletes {inst.name}-{inst.evr}", 0)
                if why is not None:
                    error = (SkipReason.UNRESOLVABLE, why)
                    break
                reported.add(new_key)
                vulns.setdefault(new_key, set()).update(want.vulnerabilities)
                continue
            if best is None or compare_evr(best.evr, inst.evr, compare) <= 0:
                error = (SkipReason.NO_FIX_AVAILABLE, f"needs >= {fixed}; the best available is the installed "
                         f"{inst.evr}" if best is None or not solver.versions(inst.name) else
                         f"needs >= {fixed}; dnf's best candidate is {best.evr}")
                if not solver.versions(inst.name):
                    error = (SkipReason.NO_FIX_AVAILABLE, f"needs >= {fixed}; no enabled repository has it")
                break
            if compare_evr(best.evr, fixed, compare) < 0:
                error = (SkipReason.NO_FIX_AVAILABLE, f"needs >= {fixed}; dnf's best candidate is {best.evr}")
                break
            why = solver.mark(inst.key, best, UpdateKind.REPORTED, "", 0)
            if why is not None:
                error = (SkipReason.UNRESOLVABLE, why)
                break
            reported.add(inst.key)
            vulns.setdefault(inst.key, set()).update(want.vulnerabilities)
        if error is None:
            why = solver.fix_broken()
            if why is not None:
                error = (SkipReason.UNRESOLVABLE, why)
        if error is not None:
            solver.restore(snapshot)
            for inst in instances:
                reported.discard(inst.key)
            failures.append(Skip(want.name, error[0], error[1]))
    chosen = []
    for key, ch in sorted(solver.chosen.items()):
        if key in reported:
            ch = Chosen(ch.record, ch.installed, UpdateKind.REPORTED, tuple(sorted(vulns.get(key, ()))))
        chosen.append(ch)
    erased = tuple(Erased(solver.installed[k], why) for k, why in sorted(solver.erased.items()))
    return Resolution(tuple(chosen), tuple(skipped), tuple(failures), erased)


_MAX_DEPTH = 64

_Snapshot = tuple[dict[Key, Chosen], dict[Key, str]]


class _Solver:
    def __init__(self, installed: tuple[Installed, ...], versions_of: Callable[[str], Sequence[Candidate]],
                 providers_of: Callable[[str], Sequence[Candidate]], compare: Compare,
                 installed_file: Callable[[str], bool], policy: Policy) -> None:
        self.installed: dict[Key, Installed] = {i.key: i for i in installed}
        self.by_name: dict[str, list[Installed]] = {}
        for inst in installed:
            self.by_name.setdefault(inst.name, []).append(inst)
        self._versions_of = versions_of
        self._providers_of = providers_of
        self.compare = compare
        self.installed_file = installed_file
        self.policy = policy
        self.chosen: dict[Key, Chosen] = {}
        self.erased: dict[Key, str] = {}
        # Installed provides, by capability name: rebuilt views are cheap enough for the few hundred packages of
        # an image, and a plan marks tens of packages at most.
        self.installed_provides: dict[str, list[tuple[Key, Dep]]] = {}
        for inst in installed:
            for dep in _self_provide(inst.name, inst.evr, inst.provides):
                self.installed_provides.setdefault(dep.name, []).append((inst.key, dep))
        self.rdeps: dict[str, list[tuple[Key, Dep]]] = {}
        for inst in installed:
            for dep in inst.requires:
                for leaf in _leaves(dep):
                    self.rdeps.setdefault(leaf.name, []).append((inst.key, dep))

    # ------------------------------------------------------------------ candidates

    def versions(self, name: str) -> list[Candidate]:
        if any(fnmatch.fnmatchcase(name, g) for g in self.policy.excludes):
            return []
        return list(self._versions_of(name))

    def best(self, name: str, arch: str) -> Candidate | None:
        """dnf's candidate for an installed (name, arch): the newest of the best-priority repositories that have
        the name for a compatible architecture."""
        found = [c for c in self.versions(name) if _arch_ok(arch, c.arch)]
        if not found:
            return None
        top = min(c.priority for c in found)
        return _newest([c for c in found if c.priority == top], self.compare)

    def obsoleter(self, inst: Installed) -> Candidate | None:
        """The package dnf would replace `inst` with when its name has no update: one whose Obsoletes names it
        (found among the providers of its name, as packaging guidelines pair Obsoletes with a Provides), from the
        best-priority repository, newest first."""
        found = [c for c in self._providers_of(inst.name)
                 if c.name != inst.name and _arch_ok(inst.arch, c.arch)
                 and not any(fnmatch.fnmatchcase(c.name, g) for g in self.policy.excludes)
                 and any(o.name == inst.name and overlaps(Dep(inst.name, 8, inst.evr), o, self.compare)
                         for o in c.obsoletes)]
        if not found:
            return None
        top = min(c.priority for c in found)
        return _newest([c for c in found if c.priority == top], self.compare)

    # ------------------------------------------------------------------ the world after the transaction

    def _present(self) -> Iterable[tuple[Key, str, tuple[Dep, ...]]]:
        for key, inst in self.installed.items():
            if key not in self.chosen and key not in self.erased:
                yield key, inst.evr, inst.provides
        for key, ch in self.chosen.items():
            yield key, ch.record.evr, ch.record.provides

    def provided(self, dep: Dep) -> bool:
        if dep.rich:
            try:
                return rich_ok(parse_rich(dep.name), self.provided)
            except ValueError:
                return False
        if dep.name.startswith("/") and self._file_present(dep.name):
            return True
        for key, provide in self.installed_provides.get(dep.name, ()):
            if key not in self.chosen and key not in self.erased and overlaps(provide, dep, self.compare):
                return True
        for ch in self.chosen.values():
            if ch.record.name == dep.name and overlaps(Dep(ch.record.name, 8, ch.record.evr), dep, self.compare):
                return True
            if any(p.name == dep.name and overlaps(p, dep, self.compare) for p in ch.record.provides):
                return True
        return False

    def _file_present(self, path: str) -> bool:
        if any(path in ch.record.files for ch in self.chosen.values()):
            return True
        return self.installed_file(path)

    def snapshot(self) -> _Snapshot:
        return dict(self.chosen), dict(self.erased)

    def restore(self, snap: _Snapshot) -> None:
        self.chosen, self.erased = dict(snap[0]), dict(snap[1])

    # ------------------------------------------------------------------ marking

    def mark(self, key: Key, cand: Candidate, kind: UpdateKind, reason: str, depth: int) -> str | None:
        if key in self.chosen:
            return None
        if depth > _MAX_DEPTH:
            return f"dependency chain through {key[0]} is too deep"
        snap = self.snapshot()
        inst = self.installed.get(key)
        self.chosen[key] = Chosen(cand, inst, kind, (), reason)
        error = self._entail(key, cand, inst, depth)
        if error is not None:
            self.restore(snap)
        return error

    def _entail(self, key: Key, cand: Candidate, inst: Installed | None, depth: int) -> str | None:
        label = f"{cand.name}-{cand.evr}.{cand.arch}"
        # Multilib: every installed architecture of the name moves with it.
        for other in self.by_name.get(cand.name, ()):
            if other.key == key or other.key in self.chosen or other.arch == NOARCH:
                continue
            twin = self.best(other.name, other.arch)
            if twin is not None and compare_evr(twin.evr, other.evr, self.compare) > 0:
                error = self.mark(other.key, twin, UpdateKind.SIBLING, f"{other.arch} kept in step with {label}",
                                  depth + 1)
                if error is not None:
                    return error
        # Obsoletes replace what they name.
        for obs in cand.obsoletes:
            for other in self.by_name.get(obs.name, ()):
                if other.name != cand.name and other.key not in self.chosen and \
                        overlaps(Dep(other.name, 8, other.evr), obs, self.compare):
                    self.erased[other.key] = f"obsoleted by {label}"
        # Conflicts of the new version against what stays.
        for conflict in cand.conflicts:
            for other_key, other_evr in self._matching(conflict):
                if other_key == key:
                    continue
                error = self._move_away(other_key, conflict, f"{label} conflicts with {other_key[0]}-{other_evr}",
                                        depth)
                if error is not None:
                    return error
        # Installed packages whose Requires the old version met and the new one does not; and whose
        # Conflicts hit the new version.
        error = self._dependents(key, cand, inst, label, depth)
        if error is not None:
            return error
        # What the new version needs.
        for dep in cand.requires:
            if dep.name.startswith("rpmlib(") or self.provided(dep):
                continue
            if not self._satisfy(dep, label, depth):
                return f"{label} needs {dep}, which no enabled repository provides in an installable version"
        if self.policy.install_weak_deps:
            old = {d.name for d in inst.recommends} if inst is not None else set()
            for dep in cand.recommends:
                if dep.name not in old and not self.provided(dep):
                    self._satisfy(dep, label, depth)  # weak: a failure is not an error
        return None

    def _dependents(self, key: Key, cand: Candidate, inst: Installed | None, label: str, depth: int) -> str | None:
        if inst is None:
            return None
        names = {cand.name, *(p.name for p in cand.provides), *(p.name for p in inst.provides)}
        for name in sorted(names):
            for dependent, dep in self.rdeps.get(name, ()):
                if dependent in self.chosen or dependent in self.erased or dependent == key:
                    continue
                if self.provided(dep):
                    continue
                other = self.installed[dependent]
                why = f"{other.name}-{other.evr} requires {dep}"
                best = self.best(other.name, other.arch)
                if best is None or compare_evr(best.evr, other.evr, self.compare) <= 0:
                    return f"{why}, and no enabled repository has a newer {other.name}"
                error = self.mark(dependent, best, UpdateKind.CO_UPGRADE, why, depth + 1)
                if error is not None:
                    return f"{why}, and {other.name} cannot move: {error}"
        for other_key, other in self.installed.items():
            if other_key in self.chosen or other_key in self.erased or other_key == key:
                continue
            for conflict in other.conflicts:
                if conflict.name in names and self._hits(conflict, key, cand):
                    error = self._move_away(other_key, conflict, f"{other.name}-{other.evr} conflicts with {label}",
                                            depth)
                    if error is not None:
                        return error
        return None

    def _hits(self, conflict: Dep, key: Key, cand: Candidate) -> bool:
        provides = _self_provide(cand.name, cand.evr, cand.provides)
        return any(p.name == conflict.name and overlaps(p, conflict, self.compare) for p in provides)

    def _matching(self, conflict: Dep) -> list[tuple[Key, str]]:
        out = []
        for key, evr, provides in list(self._present()):
            if any(p.name == conflict.name and overlaps(p, conflict, self.compare)
                   for p in _self_provide(key[0], evr, provides)):
                out.append((key, evr))
        return out

    def _move_away(self, other: Key, conflict: Dep, why: str, depth: int) -> str | None:
        if other in self.chosen:
            return f"{why}, which is to be installed too"
        inst = self.installed.get(other)
        if inst is None:
            return why
        best = self.best(inst.name, inst.arch)
        if best is None or compare_evr(best.evr, inst.evr, self.compare) <= 0 or \
                any(p.name == conflict.name and overlaps(p, conflict, self.compare)
                    for p in _self_provide(best.name, best.evr, best.provides)):
            return f"{why}, and only erasing it would help (dnf --allowerasing); copa does not erase packages"
        return self.mark(other, best, UpdateKind.CO_UPGRADE, why, depth + 1)

    def _satisfy(self, dep: Dep, label: str, depth: int) -> bool:
        leaves = _leaves(dep) if dep.rich else [dep]
        for leaf in leaves:
            if self.provided(leaf):
                continue
            for key, cand, kind in self._solutions(leaf):
                if self.mark(key, cand, kind, f"{label} needs {dep}", depth + 1) is None:
                    if self.provided(dep):
                        return True
                    break
        return self.provided(dep)

    def _solutions(self, dep: Dep) -> list[tuple[Key, Candidate, UpdateKind]]:
        """Candidates providing `dep`: upgrades of installed packages first, then new packages; within each, the
        package named like the capability first, then the best priority and the newest version."""
        upgrades: list[tuple[Key, Candidate, UpdateKind]] = []
        new: list[tuple[Key, Candidate, UpdateKind]] = []
        seen: set[Key] = set()
        for cand in self._providers_of(dep.name):
            if any(fnmatch.fnmatchcase(cand.name, g) for g in self.policy.excludes):
                continue
            if not self._provides(cand, dep):
                continue
            instances = self.by_name.get(cand.name, [])
            match = next((i for i in instances if _arch_ok(i.arch, cand.arch)), None)
            if match is not None:
                best = self.best(match.name, match.arch)
                if best is None or (best is not cand and (best.evr != cand.evr or best.arch != cand.arch)):
                    continue  # dnf moves an installed package only to its best candidate
                if compare_evr(cand.evr, match.evr, self.compare) <= 0 or match.key in seen:
                    continue
                seen.add(match.key)
                upgrades.append((match.key, cand, UpdateKind.DEPENDENCY))
            else:
                key = (cand.name, cand.arch)
                if key in seen:
                    continue
                same = [c for c in self.versions(cand.name) if c.arch == cand.arch and self._provides(c, dep)]
                top = min(c.priority for c in same)
                newest = _newest([c for c in same if c.priority == top], self.compare)
                if newest is not cand and (newest.evr != cand.evr):
                    continue
                seen.add(key)
                new.append((key, cand, UpdateKind.NEW))
        new.sort(key=lambda t: (t[1].name != dep.name, t[1].priority, len(t[1].name), t[1].name))
        return upgrades + new

    def _provides(self, cand: Candidate, dep: Dep) -> bool:
        if dep.name.startswith("/") and dep.name in cand.files:
            return True
        return any(p.name == dep.name and overlaps(p, dep, self.compare)
                   for p in _self_provide(cand.name, cand.evr, cand.provides))

    def fix_broken(self) -> str | None:
        """Installed packages left with an unmet Requires (through an erasure by Obsoletes): dnf would refuse."""
        if not self.erased:  # nothing erased: no requirement can have lost its provider that way
            return None
        for key, inst in sorted(self.installed.items()):
            if key in self.chosen or key in self.erased:
                continue
            for dep in inst.requires:
                if dep.name.startswith("rpmlib(") or self.provided(dep):
                    continue
                if any(k in self.erased for k, _ in self.installed_provides.get(dep.name, ())):
                    return (f"{inst.name}-{inst.evr} requires {dep}, which an obsoleted package provided; dnf "
                            "would need --allowerasing")
        return None


def _newest(cands: Sequence[Candidate], compare: Compare) -> Candidate:
    best = cands[0]
    for c in cands[1:]:
        if compare_evr(c.evr, best.evr, compare) > 0:
            best = c
    return best


def _self_provide(name: str, evr: str, provides: tuple[Dep, ...]) -> tuple[Dep, ...]:
    """rpm gives every package a `name = evr` provide; metadata and headers normally list it already."""
    if any(p.name == name and p.flags == 8 for p in provides):
        return provides
    return (*provides, Dep(name, 8, evr))


def _leaves(dep: Dep) -> list[Dep]:
    if not dep.rich:
        return [dep]
    try:
        return parse_rich(dep.name).leaves()
    except ValueError:
        return []


def _arch_ok(installed_arch: str, candidate_arch: str) -> bool:
    """An installed package keeps its architecture; a change to or from noarch is an ordinary upgrade."""
    return candidate_arch == installed_arch or NOARCH in (candidate_arch, installed_arch)
