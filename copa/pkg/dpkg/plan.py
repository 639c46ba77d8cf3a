"""The dpkg plan, pure: installed packages + reported fixes + repository versions -> what to install.

What `apt-get install --only-upgrade <reported>` does, following apt's own marking (pkgDepCache::MarkInstall and the
problem resolver that runs after it): each reported package goes to its apt candidate (the newest version of the
highest priority: NotAutomatic releases such as backports, APT::Default-Release and apt preferences count) if that
is at or above its fixed version, and fails otherwise. Marking a package for its candidate then, as apt does:

* Breaks/Conflicts of the new version against what stays installed: the hit package moves to its candidate when
  that escapes the relation, else it would be removed;
* installed packages whose Depends/Pre-Depends (or Recommends) the old version met and the new one does not (an
  exact `=` pin, an upper bound `<<`/`<=`) move to their candidates ("co-upgraded"); one that cannot move would be
  removed;
* with APT::Get::Upgrade-By-Source-Package (apt >= 2.5.2, on by default) every installed binary whose candidate
  comes from the same source version moves too;
* the new version's unmet Depends/Pre-Depends are installed or upgraded (installed alternatives first), and its
  new Recommends when APT::Install-Recommends is on (a failing Recommends is not an error).

A marking that fails is undone as a whole. apt removes packages to settle conflicts; copa only plans removals with
--allow-remove (`allow_remove`), else the reported package that would cause them fails, naming them. Only
candidates are ever installed, as with apt without an explicit version request.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

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
    @property
    def conflicts(self) -> str: ...
    @property
    def recommends(self) -> str: ...


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
    recommends: str = ""
    breaks: str = ""
    conflicts: str = ""
    essential: bool = False
    multi_arch: str = "no"


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
    reason: str = ""  # why a package the report did not name moves


@dataclass(frozen=True, slots=True)
class Removal:
    installed: Installed
    reason: str


@dataclass(frozen=True)
class Resolution:
    chosen: tuple[Chosen, ...]  # in unpack order: dependencies first
    skipped: tuple[Skip, ...]
    failures: tuple[Skip, ...]  # reported packages that cannot be fixed (an error unless --ignore-errors)
    removals: tuple[Removal, ...] = ()  # only with allow_remove


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
    foreign_versions_of: Callable[[str, str], Sequence[Candidate]] | None = None,
    by_source: bool = True,
    install_recommends: bool = True,
    allow_remove: bool = False,
) -> Resolution:
    """`installed` holds one instance per name (the native one); `foreign` the other architectures' instances
    of Multi-Arch: same packages, by name, and `foreign_versions_of(name, arch)` their repository versions."""
    usable = Candidates(installed, versions_of, architecture, compare, policy)
    solver = _Solver(installed, usable, compare, providers_of, by_source, install_recommends)
    others = foreign or {}
    skipped: list[Skip] = []
    failures: list[Skip] = []
    vulns: dict[str, set[str]] = {}
    reported: list[str] = []

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

        def fixes(c: Candidate, fixed: str = fixed, by_src: bool = want.by_source) -> bool:
            return compare(c.source_version if by_src else c.version, fixed) >= 0

        # The candidate is the first usable version; apt would install it or nothing (--only-upgrade).
        best = next(iter(usable(want.name)), None)
        if best is None or not fixes(best):
            seen = f"apt's candidate is {best.version}" if best else f"apt's candidate is the installed {inst.version}"
            lower = next((f"; {c.version} has apt priority {p} (a NotAutomatic release such as backports, or "
                          "pinned): pin it in /etc/apt/preferences.d to use it"
                          for c, p in usable.hidden.get(want.name, []) if fixes(c)), "")
            if best is None and not lower and not versions_of(want.name):
                seen = "no repository has the package"
            failures.append(Skip(want.name, SkipReason.NO_FIX_AVAILABLE, f"needs >= {fixed}; {seen}{lower}"))
            continue
        vulns.setdefault(want.name, set()).update(want.vulnerabilities)
        if want.name in solver.chosen:  # reported twice, or already moved along with an earlier one
            reported.append(want.name)
            continue
        snapshot = solver.snapshot()
        removed_before = set(solver.removed)
        error = solver.mark_install(want.name, UpdateKind.REPORTED, "", 0, from_user=True)
        if error is None:
            error = solver.fix_broken()
        if error is None:
            error = solver.multi_arch_same(others, foreign_versions_of)
        if error is None and not allow_remove and set(solver.removed) - removed_before:
            gone = sorted(set(solver.removed) - removed_before)
            first = gone[0]
            error = (f"apt would remove {', '.join(gone)} to upgrade it ({first}: {solver.removed[first]}); pass "
                     "--allow-remove to let copa remove them as apt does")
        if error is not None:
            solver.restore(snapshot)
            failures.append(Skip(want.name, SkipReason.UNRESOLVABLE, error))
            continue
        reported.append(want.name)

    chosen = dict(solver.chosen)
    for name in reported:
        ch = chosen[name]
        chosen[name] = Chosen(ch.record, ch.installed, UpdateKind.REPORTED, tuple(sorted(vulns.get(name, ()))))
    removals = tuple(Removal(installed[n], why) for n, why in sorted(solver.removed.items()))
    return Resolution(tuple(_unpack_order(chosen)), tuple(skipped), tuple(failures), removals)


_MAX_DEPTH = 64  # apt's marking recursion on real archives stays far below this; it only guards against loops

# A state: chosen, removed, world versions, world provides (virtual -> provider -> provided version or "").
_Snapshot = tuple[dict[str, Chosen], dict[str, str], dict[str, str], dict[str, dict[str, str]]]


class _Solver:
    """The state apt's depcache would be in: installed versions with the marked ones laid over them."""

    def __init__(self, installed: Mapping[str, Installed], usable: Candidates, compare: Compare,
                 providers_of: Callable[[str], Sequence[Candidate]], by_source: bool, recommends: bool) -> None:
        self.installed = installed
        self.usable = usable
        self.compare = compare
        self.providers_of = providers_of
        self.by_source = by_source
        self.recommends = recommends
        self.chosen: dict[str, Chosen] = {}
        self.removed: dict[str, str] = {}  # name -> why apt would remove it
        self.protected: set[str] = set()  # what the user asked for: never removed, never kept back
        self.version: dict[str, str] = {n: i.version for n, i in installed.items()}
        self.provides: dict[str, dict[str, str]] = {}
        for name, inst in installed.items():
            self._add_provides(name, inst.provides)
        # The image as it is: what it already failed to satisfy is not ours to repair (distroless images drop
        # dpkg and friends on purpose, and apt would not be asked to repair that either).
        self.original_version = dict(self.version)
        self.original_provides = {k: dict(v) for k, v in self.provides.items()}
        self.rdeps: dict[str, list[tuple[str, Relation]]] = {}
        self.binaries: dict[str, list[str]] = {}
        for name, inst in sorted(installed.items()):
            for clause in _relations(inst.depends, inst.pre_depends) + parse_relations(inst.recommends):
                for rel in clause:
                    self.rdeps.setdefault(rel.name, []).append((name, rel))
            self.binaries.setdefault(inst.source, []).append(name)

    # ------------------------------------------------------------------ the world

    def _add_provides(self, name: str, text: str) -> None:
        for p in parse_provides(text):
            self.provides.setdefault(p.name, {})[name] = p.version

    def _set(self, name: str, record: Candidate | None) -> None:
        for providers in self.provides.values():
            providers.pop(name, None)
        if record is None:
            self.version.pop(name, None)
        else:
            self.version[name] = record.version
            self._add_provides(name, record.provides)

    def satisfies(self, rel: Relation, original: bool = False) -> bool:
        versions = self.original_version if original else self.version
        provides = self.original_provides if original else self.provides
        version = versions.get(rel.name)
        if version is not None and rel.version_ok(version, self.compare):
            return True
        # Virtual packages: unversioned relations accept any provider, versioned ones a versioned provide.
        return any((not rel.op) or (v and rel.version_ok(v, self.compare))
                   for v in provides.get(rel.name, {}).values())

    def clause_ok(self, clause: Clause, original: bool = False) -> bool:
        return any(self.satisfies(rel, original) for rel in clause)

    def snapshot(self) -> _Snapshot:
        return (dict(self.chosen), dict(self.removed), dict(self.version),
                {k: dict(v) for k, v in self.provides.items()})

    def restore(self, snap: _Snapshot) -> None:
        chosen, removed, version, provides = snap
        self.chosen, self.removed, self.version = dict(chosen), dict(removed), dict(version)
        self.provides = {k: dict(v) for k, v in provides.items()}

    def candidate(self, name: str) -> Candidate | None:
        return next(iter(self.usable(name)), None)

    # ------------------------------------------------------------------ apt's marking

    def mark_install(self, name: str, kind: UpdateKind, reason: str, depth: int, from_user: bool = False
                     ) -> str | None:
        """Mark `name` for its candidate with everything that entails; None on success, else why not (and the
        state is as before). An installed package whose candidate is its installed version is left alone."""
        if name in self.chosen:
            return None
        if name in self.removed:
            return f"{name} would have to be removed ({self.removed[name]})"
        if depth > _MAX_DEPTH:
            return f"dependency chain through {name} is too deep"
        inst = self.installed.get(name)
        cand = self.candidate(name)
        if cand is None:
            return None if inst is not None else f"no repository has {name}"
        if inst is not None and inst.held and not from_user:
            return f"{name} {inst.version} is on hold"
        snap = self.snapshot()
        self.chosen[name] = Chosen(cand, inst, kind, (), reason)
        self._set(name, cand)
        if from_user:
            self.protected.add(name)
        error = self._entail(name, cand, inst, depth)
        if error is not None:
            self.restore(snap)
            if from_user:
                self.protected.discard(name)
        return error

    def _entail(self, name: str, cand: Candidate, inst: Installed | None, depth: int) -> str | None:
        to_upgrade: list[tuple[str, str]] = []
        # 1. The new version's Breaks/Conflicts against what stays installed.
        for field, conflicts in ((cand.breaks, False), (cand.conflicts, True)):
            for clause in parse_relations(field):
                for rel in clause:
                    for victim, version in self._hit(rel, conflicts):
                        if victim == name:
                            continue
                        why = f"{name} {cand.version} {'conflicts with' if conflicts else 'breaks'} {victim} {version}"
                        if victim in self.chosen:
                            return why + ", which is to be installed"
                        victim_cand = self.candidate(victim)
                        if victim_cand is not None and not rel.version_ok(victim_cand.version, self.compare):
                            to_upgrade.append((victim, why))
                        else:
                            error = self.mark_delete(victim, why)
                            if error is not None:
                                return error
        # 2. Installed packages whose relations the old version met and the new one does not.
        if inst is not None:
            for dependent, rel in self.rdeps.get(name, ()):
                if dependent in self.chosen or dependent in self.removed or dependent == name:
                    continue
                if rel.version_ok(inst.version, self.compare) and not rel.version_ok(cand.version, self.compare):
                    to_upgrade.append((dependent, f"{dependent} {self.installed[dependent].version} needs {rel}"))
        # 3. Binaries of the same source at the same source version (apt >= 2.5.2).
        if self.by_source:
            siblings = []
            for other in self.binaries.get(cand.source_name, ()):
                if other == name or other in self.chosen or other in self.removed:
                    continue
                other_cand = self.candidate(other)
                if (other_cand is not None and other_cand.source_name == cand.source_name
                        and other_cand.source_version == cand.source_version):
                    siblings.append(other)
            for other in siblings:
                # apt ignores a sibling that cannot move: it is an extra, not a requirement
                self.mark_install(other, UpdateKind.SIBLING,
                                  f"built from {cand.source_name} {cand.source_version} like {name}", depth + 1)
        for other, why in to_upgrade:
            if other in self.chosen:
                continue
            error = self.mark_install(other, UpdateKind.CO_UPGRADE, why, depth + 1)
            if error is not None:
                error = self.mark_delete(other, f"{why}, and it cannot be upgraded ({error})")
                if error is not None:
                    return error
        # 4. What the new version needs.
        return self._install_dependencies(name, cand, inst, depth)

    def _install_dependencies(self, name: str, cand: Candidate, inst: Installed | None, depth: int) -> str | None:
        already_unmet = _unmet_names(inst, self)
        clauses = [(c, True) for c in _relations(cand.depends, cand.pre_depends)]
        if self.recommends:
            clauses += [(c, False) for c in parse_relations(cand.recommends)]
        for clause, critical in clauses:
            if self.clause_ok(clause):
                continue
            if critical and {r.name for r in clause} & already_unmet:
                continue
            if not critical and inst is not None and not self._new_or_previously_met(clause, inst):
                continue  # apt: an old Recommends the image did without stays without
            found = False
            for solution, kind in self._solutions(clause, cand.source_name):
                if self.mark_install(solution, kind, f"{name} {cand.version} needs {' | '.join(map(str, clause))}",
                                     depth + 1) is None and solution in self.chosen:
                    found = True
                    break
            if not found and critical:
                return f"{name} {cand.version} needs {' | '.join(map(str, clause))}, which no repository has " \
                       "in an installable version"
        return None

    def _new_or_previously_met(self, clause: Clause, inst: Installed) -> bool:
        target = clause[0].name
        old = [c for c in parse_relations(inst.recommends) if any(r.name == target for r in c)]
        return not old or any(self.clause_ok(c, original=True) for c in old)

    def _solutions(self, clause: Clause, source: str) -> list[tuple[str, UpdateKind]]:
        """Packages whose candidate meets one of the alternatives, installed ones (to upgrade) before new ones,
        as apt orders them."""
        upgrades: list[tuple[str, UpdateKind]] = []
        new: list[tuple[str, UpdateKind]] = []
        for rel in clause:
            names = [rel.name] + [c.package for c in self.providers_of(rel.name) if c.package != rel.name]
            for pkg in dict.fromkeys(names):
                if pkg in self.removed:
                    continue
                cand = self.candidate(pkg)
                if cand is None or not self._meets(cand, rel):
                    continue
                inst = self.installed.get(pkg)
                if inst is not None and self.compare(cand.version, inst.version) <= 0:
                    continue
                kind = _kind(inst, cand, source)
                (upgrades if inst is not None else new).append((pkg, kind))
        return list(dict.fromkeys(upgrades + new))

    def _meets(self, cand: Candidate, rel: Relation) -> bool:
        if cand.package == rel.name and rel.version_ok(cand.version, self.compare):
            return True
        return any(p.name == rel.name and (not rel.op or (p.version and rel.version_ok(p.version, self.compare)))
                   for p in parse_provides(cand.provides))

    def _hit(self, rel: Relation, conflicts: bool) -> list[tuple[str, str]]:
        """Packages present in the world that a Breaks/Conflicts relation matches, with their version."""
        out = []
        version = self.version.get(rel.name)
        if version is not None and rel.version_ok(version, self.compare):
            out.append((rel.name, version))
        if conflicts and not rel.op:
            # An unversioned Conflicts on a virtual package hits every provider of it.
            out.extend((p, self.version.get(p, "")) for p in self.provides.get(rel.name, {}) if p != rel.name)
        return out

    def mark_delete(self, name: str, why: str) -> str | None:
        if name in self.protected:
            return f"{why}, and {name} was asked for"
        inst = self.installed.get(name)
        if inst is None:
            return why
        if inst.essential:
            return f"{why}, and {name} is Essential: apt would not remove it either"
        self.removed[name] = why
        self.chosen.pop(name, None)
        self._set(name, None)
        return None

    def fix_broken(self) -> str | None:
        """apt's problem resolver, for what marking left broken: installed packages whose relations no longer
        hold (a removal, a provide that went away) or whose own Breaks/Conflicts now hit a new version move to
        their candidates, or would be removed."""
        for _ in range(len(self.installed) + 1):
            changed = False
            for name, inst in sorted(self.installed.items()):
                if name in self.chosen or name in self.removed:
                    continue
                why = self._broken(inst)
                if why is None:
                    continue
                changed = True
                # Marking checks the candidate's own relations: a success means the package is whole again.
                if self.mark_install(name, UpdateKind.CO_UPGRADE, why, 0) is None and name in self.chosen:
                    continue
                error = self.mark_delete(name, f"{why}, and it cannot be upgraded")
                if error is not None:
                    return error
            if not changed:
                return None
        return None

    def _broken(self, inst: Installed) -> str | None:
        for clause in _relations(inst.depends, inst.pre_depends):
            if not self.clause_ok(clause) and self.clause_ok(clause, original=True):
                return f"{inst.name} {inst.version} needs {' | '.join(map(str, clause))}"
        for field, is_conflicts in ((inst.breaks, False), (inst.conflicts, True)):
            for clause in parse_relations(field):
                for rel in clause:
                    for victim, v in self._hit(rel, is_conflicts):
                        if victim != inst.name and victim in self.chosen:
                            verb = "conflicts with" if is_conflicts else "breaks"
                            return f"{inst.name} {inst.version} {verb} {victim} {v}"
        return None

    def multi_arch_same(self, foreign: Mapping[str, Sequence[Installed]],
                        versions_of: Callable[[str, str], Sequence[Candidate]] | None) -> str | None:
        """dpkg needs a Multi-Arch: same package at one version on every architecture it is installed for: apt
        moves the other architectures' instances in step, to the same version, and each of them then needs its
        Depends/Pre-Depends met on its own architecture (a Multi-Arch: foreign package of any architecture
        meets them), which apt installs or upgrades there."""
        for name, ch in sorted(self.chosen.items()):
            if ":" in name:
                continue
            for other in foreign.get(name, ()):
                if self.compare(other.version, ch.record.version) == 0:
                    continue
                key = f"{name}:{other.architecture}"
                if key in self.chosen:
                    continue
                twin = next((c for c in (versions_of(name, other.architecture) if versions_of else ())
                             if c.architecture == other.architecture
                             and self.compare(c.version, ch.record.version) == 0), None)
                if twin is None:
                    return (f"{name}:{other.architecture} {other.version} is also installed and Multi-Arch: same needs "
                            f"it at {ch.record.version} too, which no repository has for {other.architecture}")
                self.chosen[key] = Chosen(twin, other, UpdateKind.SIBLING, (),
                                          f"Multi-Arch: same, kept in step with {name}:{ch.record.architecture}")
                error = self._foreign_dependencies(twin, other.architecture, foreign, versions_of, 0)
                if error is not None:
                    return error
        return None

    def _foreign_instance(self, name: str, arch: str, foreign: Mapping[str, Sequence[Installed]]
                          ) -> tuple[str, str] | None:
        """(version, Multi-Arch) of `name` for `arch` as the world has it after the marking, if present."""
        key = f"{name}:{arch}"
        if key in self.chosen:
            record = self.chosen[key].record
            return record.version, record.multi_arch or "no"
        inst = self.installed.get(name)
        if inst is not None and inst.architecture == arch and name not in self.removed:
            return self.version[name], (self.chosen[name].record.multi_arch if name in self.chosen
                                        else inst.multi_arch) or "no"
        other = next((i for i in foreign.get(name, ()) if i.architecture == arch), None)
        return None if other is None else (other.version, other.multi_arch or "no")

    def _foreign_ok(self, rel: Relation, arch: str, foreign: Mapping[str, Sequence[Installed]]) -> bool:
        """Whether a relation of an `arch` package holds: an instance of that architecture, or a Multi-Arch:
        foreign one of any (dpkg's archsatisfied), or (unversioned) a provider the native world has."""
        native = rel.arch in ("native", self.usable.architecture)
        mine = None if native else self._foreign_instance(rel.name, arch, foreign)
        if mine is not None and rel.version_ok(mine[0], self.compare):
            return True
        version = self.version.get(rel.name)
        if version is not None and rel.version_ok(version, self.compare):
            record = self.chosen[rel.name].record if rel.name in self.chosen else self.installed.get(rel.name)
            accepts = {"foreign", "allowed"} if rel.arch == "any" else {"foreign"}
            if native or (record is not None and record.multi_arch in accepts):
                return True
        return False

    def _foreign_dependencies(self, record: Candidate, arch: str, foreign: Mapping[str, Sequence[Installed]],
                              versions_of: Callable[[str, str], Sequence[Candidate]] | None, depth: int
                              ) -> str | None:
        """Install or upgrade, for `arch`, what `record` (of that architecture) needs and the world lacks."""
        if depth > _MAX_DEPTH:
            return f"dependency chain through {record.package}:{arch} is too deep"
        for clause in _relations(record.depends, record.pre_depends):
            if any(self._foreign_ok(rel, arch, foreign) for rel in clause):
                continue
            if any(rel.name in self.provides and not rel.op for rel in clause):
                continue  # a virtual package: left to the native world's providers
            found = None
            for rel in clause:
                found = self._foreign_candidate(rel, arch, foreign, versions_of)
                if found is not None:
                    break
            if found is None:
                return (f"{record.package}:{arch} {record.version} needs {' | '.join(map(str, clause))}, which no "
                        f"repository has for {arch} in an installable version")
            native_arch = self._native_arch(found.package)
            if found.multi_arch != "same" and native_arch not in (None, arch):
                return (f"{record.package}:{arch} {record.version} needs {found.package}:{arch}, which would "
                        f"replace {found.package}:{native_arch} (not Multi-Arch: same)")
            inst = next((i for i in foreign.get(found.package, ()) if i.architecture == arch), None)
            if inst is None:
                native = self.installed.get(found.package)
                inst = native if native is not None and native.architecture == arch else None
            key = f"{found.package}:{arch}"
            self.chosen[key] = Chosen(found, inst, UpdateKind.DEPENDENCY if inst else UpdateKind.NEW, (),
                                      f"{record.package}:{arch} {record.version} needs "
                                      f"{' | '.join(map(str, clause))}")
            error = self._foreign_dependencies(found, arch, foreign, versions_of, depth + 1)
            if error is not None:
                return error
        return None

    def _native_arch(self, name: str) -> str | None:
        """The architecture of the instance of `name` the world holds in `installed`'s place, if any."""
        if name in self.chosen:
            return self.chosen[name].record.architecture
        inst = self.installed.get(name)
        return inst.architecture if inst is not None and name not in self.removed else None

    def _foreign_candidate(self, rel: Relation, arch: str, foreign: Mapping[str, Sequence[Installed]],
                           versions_of: Callable[[str, str], Sequence[Candidate]] | None) -> Candidate | None:
        """apt's candidate of `rel.name` for `arch` (the newest version of the highest priority, never older
        than the installed one), if it meets the relation."""
        if versions_of is None:
            return None
        found = sorted((c for c in versions_of(rel.name, arch) if c.architecture == arch), key=_sort_key(self.compare),
                       reverse=True)
        if not found:
            return None
        best = max(self.usable.policy.priority(c) for c in found)
        cand = next(c for c in found if self.usable.policy.priority(c) == best)
        mine = self._foreign_instance(rel.name, arch, foreign)
        if mine is not None and self.compare(cand.version, mine[0]) <= 0:
            return None
        return cand if rel.version_ok(cand.version, self.compare) else None


def _sort_key(compare: Compare) -> Callable[[Candidate], Any]:
    return functools.cmp_to_key(lambda a, b: compare(a.version, b.version))


def _unmet_names(inst: Installed | None, solver: _Solver) -> set[str]:
    """Names in the installed version's relations that the image already failed to satisfy."""
    if inst is None:
        return set()
    return {r.name for clause in _relations(inst.depends, inst.pre_depends)
            if not solver.clause_ok(clause, original=True) for r in clause}


def _kind(inst: Installed | None, record: Candidate, source: str) -> UpdateKind:
    if inst is None:
        return UpdateKind.NEW
    return UpdateKind.SIBLING if record.source_name == source else UpdateKind.DEPENDENCY


def _unpack_order(chosen: Mapping[str, Chosen]) -> Iterable[Chosen]:
    """Dependencies before their dependents; cycles (common between sibling libraries) kept together."""
    after: dict[str, set[str]] = {name: set() for name in chosen}  # dependency -> its dependents
    for name, ch in chosen.items():
        for clause in _relations(ch.record.depends, ch.record.pre_depends):
            for rel in clause:
                if rel.name in chosen and rel.name != name:
                    after[rel.name].add(name)
    order = _acyclic_order(after)
    if order is not None:
        return [chosen[name] for name in order]
    return _condensed_order(chosen, after)


def _acyclic_order(after: Mapping[str, set[str]]) -> list[str] | None:
    """Without a cycle, the order below is the plain topological order that takes the smallest ready name first
    (every component is one package, keyed by its name): found without loading networkx (~70 ms of a patch run)
    for the many patches whose updates depend on each other without a cycle. None if there is a cycle."""
    waiting = {name: 0 for name in after}
    for dependents in after.values():
        for dependent in dependents:
            waiting[dependent] += 1
    ready = [name for name, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        name = heapq.heappop(ready)
        order.append(name)
        for dependent in after[name]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, dependent)
    return order if len(order) == len(after) else None


def _condensed_order(chosen: Mapping[str, Chosen], after: Mapping[str, set[str]]) -> Iterator[Chosen]:
    """The strongly connected components in topological order, the one with the smallest member first among those
    ready; each component's members sorted."""
    import networkx as nx

    graph: nx.DiGraph = nx.DiGraph()
    graph.add_nodes_from(chosen)
    graph.add_edges_from((name, dependent) for name, dependents in after.items() for dependent in dependents)
    condensed = nx.condensation(graph)
    for component in nx.lexicographical_topological_sort(condensed, key=lambda c: min(condensed.nodes[c]["members"])):
        for name in sorted(condensed.nodes[component]["members"]):
            yield chosen[name]
