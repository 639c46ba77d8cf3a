"""The apk plan, pure: installed packages + reported fixes + repository records -> what to install.

Like `apk add --upgrade <reported>`: each reported package goes to the newest version at or above its fixed
version; then the new versions' D: dependencies (names, so:/cmd:/pc: providers from p:, with versions)
are closed transitively, upgrading installed packages or adding new ones; installed packages whose own
dependencies the change breaks (packages of one origin pinning each other with `=`) move along, and so do
installed packages whose install_if (i:) held before and no longer does (ssl_client's `busybox=<version>`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from copa.pkg.apk.index import ApkRecord, Dependency
from copa.pkg.apk.version import compare_versions
from copa.pkg.base import Skip, SkipReason, UpdateKind


@dataclass(frozen=True, slots=True)
class Installed:
    name: str
    version: str
    origin: str = ""
    depends: tuple[Dependency, ...] = ()
    provides: tuple[Dependency, ...] = ()
    install_if: tuple[Dependency, ...] = ()


@dataclass(frozen=True, slots=True)
class Wanted:
    name: str
    fixed_version: str | None
    vulnerabilities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Chosen:
    record: ApkRecord
    installed: Installed | None
    kind: UpdateKind
    vulnerabilities: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resolution:
    chosen: tuple[Chosen, ...]
    skipped: tuple[Skip, ...] = ()
    failures: tuple[Skip, ...] = ()


@dataclass
class _State:
    installed: Mapping[str, Installed]
    by_name: dict[str, list[ApkRecord]]
    providers: dict[str, list[ApkRecord]]
    chosen: dict[str, Chosen] = field(default_factory=dict)
    failures: list[Skip] = field(default_factory=list)

    def current(self) -> list[tuple[str, str, tuple[Dependency, ...]]]:
        """(name, version, provides) of every package after the planned changes."""
        out = [(c.record.name, c.record.version, c.record.provides) for c in self.chosen.values()]
        out += [(i.name, i.version, i.provides) for n, i in self.installed.items() if n not in self.chosen]
        return out

    def satisfied(self, dep: Dependency) -> bool:
        for name, version, provides in self.current():
            if name == dep.name and dep.matches(version):
                return True
            if any(p.name == dep.name and dep.matches(p.version or None) for p in provides):
                return True
        return False


def _newest_first(records: Sequence[ApkRecord]) -> list[ApkRecord]:
    seen: dict[str, ApkRecord] = {}
    for r in records:  # the first repository listing a version wins, as in apk
        seen.setdefault(r.version, r)
    def cmp(a: ApkRecord, b: ApkRecord) -> int:
        return compare_versions(a.version, b.version)

    return sorted(seen.values(), key=functools.cmp_to_key(cmp), reverse=True)


def _index(available: Sequence[ApkRecord]) -> tuple[dict[str, list[ApkRecord]], dict[str, list[ApkRecord]]]:
    by_name: dict[str, list[ApkRecord]] = {}
    providers: dict[str, list[ApkRecord]] = {}
    for r in available:
        by_name.setdefault(r.name, []).append(r)
        for p in r.provides:
            providers.setdefault(p.name, []).append(r)
    return ({n: _newest_first(rs) for n, rs in by_name.items()},
            {n: rs for n, rs in providers.items()})


def _provides_match(record: ApkRecord, dep: Dependency) -> bool:
    if record.name == dep.name and dep.matches(record.version):
        return True
    return any(p.name == dep.name and dep.matches(p.version or None) for p in record.provides)


def _fix_dependency(state: _State, dep: Dependency) -> tuple[ApkRecord, Installed | None] | None:
    """The record to install so that `dep` holds: an upgrade of an installed package if one can do it."""
    candidates = [r for r in state.by_name.get(dep.name, []) if dep.matches(r.version)]
    candidates += [r for r in _newest_first(state.providers.get(dep.name, [])) if _provides_match(r, dep)]
    installed = [r for r in candidates if r.name in state.installed
                 and compare_versions(r.version, state.installed[r.name].version) > 0]
    if installed:
        return installed[0], state.installed[installed[0].name]
    fresh = [r for r in candidates if r.name not in state.installed and r.name not in state.chosen]
    if not fresh:
        return None
    # Among new providers apk prefers the highest provider_priority (k:), then the package's own name.
    best = max(fresh, key=lambda r: (r.name == dep.name, r.provider_priority or 0))
    return best, None


def resolve(installed: Mapping[str, Installed], wanted: Sequence[Wanted], available: Sequence[ApkRecord]
            ) -> Resolution:
    by_name, providers = _index(available)
    state = _State(installed, by_name, providers)
    skipped: list[Skip] = []
    for w in wanted:
        inst = installed.get(w.name)
        if inst is None:
            skipped.append(Skip(w.name, SkipReason.NOT_INSTALLED))
            continue
        if w.fixed_version is None:
            skipped.append(Skip(w.name, SkipReason.NO_FIXED_VERSION))
            continue
        if compare_versions(inst.version, w.fixed_version) >= 0:
            skipped.append(Skip(w.name, SkipReason.ALREADY_FIXED, f"{inst.version} >= {w.fixed_version}"))
            continue
        records = by_name.get(w.name, [])
        best = records[0] if records else None
        if best is None or compare_versions(best.version, w.fixed_version) < 0:
            have = f"newest available is {best.version}" if best else "no repository has it"
            state.failures.append(Skip(w.name, SkipReason.NO_FIX_AVAILABLE, f"needs {w.fixed_version}, {have}"))
            continue
        prev = state.chosen.get(w.name)
        vulns = tuple(sorted(set(w.vulnerabilities) | set(prev.vulnerabilities if prev else ())))
        state.chosen[w.name] = Chosen(best, inst, UpdateKind.REPORTED, vulns)
    _close(state)
    order = sorted(state.chosen.values(), key=lambda c: c.record.name)
    return Resolution(tuple(order), tuple(skipped), tuple(state.failures))


def _close(state: _State) -> None:
    before = _State(state.installed, state.by_name, state.providers)  # the image as it is
    changed = True
    while changed:
        changed = False
        for chosen in list(state.chosen.values()):
            for dep in chosen.record.depends:
                if dep.conflict or state.satisfied(dep):
                    continue
                fix = _fix_dependency(state, dep)
                if fix is None:
                    state.failures.append(Skip(chosen.record.name, SkipReason.UNRESOLVABLE,
                                               f"{chosen.record.name}-{chosen.record.version} needs {dep}, "
                                               "which no repository provides"))
                    del state.chosen[chosen.record.name]
                    changed = True
                    break
                record, inst = fix
                kind = UpdateKind.DEPENDENCY if inst is not None else UpdateKind.NEW
                state.chosen[record.name] = Chosen(record, inst, kind)
                changed = True
        origins = {c.record.origin for c in state.chosen.values() if c.record.origin}
        for name, inst in state.installed.items():
            if name in state.chosen or not any(not d.conflict and before.satisfied(d) and not state.satisfied(d)
                                               for d in inst.depends):
                continue
            # The change breaks this installed package (e.g. it pins a sibling with '='): move it along.
            records = state.by_name.get(name, [])
            newer = [r for r in records if compare_versions(r.version, inst.version) > 0]
            if not newer:
                # It cannot move, so its pin holds the other package back, as apk's solver would.
                changed = _drop_breakers(state, before, inst) or changed
                continue
            kind = UpdateKind.SIBLING if inst.origin and inst.origin in origins else UpdateKind.DEPENDENCY
            state.chosen[name] = Chosen(newer[0], inst, kind)
            changed = True
        changed = _follow_install_if(state, before, origins) or changed


def _drop_breakers(state: _State, before: _State, inst: Installed) -> bool:
    """Un-choose the packages whose change breaks a relation of `inst` that held before; True if any."""
    dropped = False
    for dep in inst.depends:
        if dep.conflict or not before.satisfied(dep) or state.satisfied(dep):
            continue
        for name, chosen in list(state.chosen.items()):
            if chosen.record.name == dep.name or any(p.name == dep.name for p in chosen.record.provides):
                state.failures.append(Skip(name, SkipReason.UNRESOLVABLE,
                                           f"installed {inst.name}-{inst.version} needs {dep}"))
                del state.chosen[name]
                dropped = True
    return dropped


def _install_if_holds(state: _State, conditions: Sequence[Dependency]) -> bool:
    return all(state.satisfied(d) != d.conflict for d in conditions)


def _follow_install_if(state: _State, before: _State, origins: set[str]) -> bool:
    """apk keeps a package that install_if brought in only while its condition holds: when the change breaks
    the condition, the newest version whose condition holds again replaces it (apk would purge it if there
    were none; copa never removes packages, so it then stays as it is)."""
    moved = False
    for name, inst in state.installed.items():
        if name in state.chosen or not inst.install_if:
            continue
        if not _install_if_holds(before, inst.install_if) or _install_if_holds(state, inst.install_if):
            continue
        newer = [r for r in state.by_name.get(name, []) if compare_versions(r.version, inst.version) > 0
                 and _install_if_holds(state, r.install_if)]
        if newer:
            kind = UpdateKind.SIBLING if inst.origin and inst.origin in origins else UpdateKind.DEPENDENCY
            state.chosen[name] = Chosen(newer[0], inst, kind)
            moved = True
    return moved
