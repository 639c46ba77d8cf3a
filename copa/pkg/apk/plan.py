"""The apk plan, pure: installed packages + reported fixes + world + repository records -> what to install.

The semantics are those of `apk upgrade NAMES` with `NAME>=FIXED` added to /etc/apk/world (checked against real
apk in tests/test_apk_solver_oracle.py): each reported package goes to the newest version at or above its fixed
version that the world allows; every other package keeps its installed version unless it must move, and then
takes the newest version that fits, as apk's solver does for names without the upgrade flag:

* a new version's D: dependencies (names, so:/cmd:/pc: providers from p:, with versions, `~` fuzzy, `<` upper
  bounds) are closed transitively, upgrading installed packages or adding new ones;
* an installed package whose own dependency the change breaks (`libssl3` pins `libcrypto3=<version>`) moves to
  the newest version whose dependencies hold again (a co-upgrade);
* a package that install_if (i:) brought in moves when its condition no longer holds (ssl_client's
  `busybox=<version>`).

When something cannot move (no version fits, /etc/apk/world holds it), the version that needed it is rejected and
the plan is made again without it: the package falls back to an older candidate, as apk's solver would pick it,
or, when no candidate at or above the fixed version is left, the reported package fails with the blocker named.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
    reason: str = ""  # why a package the report did not name moves
    # The record whose change made this one move ((name, version)); None for a reported package.
    cause: tuple[str, str] | None = None


@dataclass(frozen=True)
class Resolution:
    chosen: tuple[Chosen, ...]
    skipped: tuple[Skip, ...] = ()
    failures: tuple[Skip, ...] = ()


class _Reject(Exception):
    """A record that cannot be part of the plan (name, version): the plan is made again without it."""

    def __init__(self, name: str, version: str, detail: str) -> None:
        super().__init__(detail)
        self.key = (name, version)
        self.detail = detail


@dataclass(frozen=True)
class _Universe:
    """What does not change while planning: the image, the repositories, the world, the fixes asked for."""

    installed: Mapping[str, Installed]
    by_name: Mapping[str, list[ApkRecord]]  # newest first
    providers: Mapping[str, list[ApkRecord]]  # newest first
    world: tuple[Dependency, ...]

    def world_on(self, name: str) -> list[Dependency]:
        return [d for d in self.world if d.name == name and not d.conflict and d.op]

    def world_allows(self, record: ApkRecord) -> Dependency | None:
        """The world constraint `record` breaks, if any (`zlib<1.3.2-r2`, `busybox=1.37.0-r30`)."""
        for dep in self.world_on(record.name):
            if not dep.matches(record.version):
                return dep
        return None


@dataclass
class _State:
    universe: _Universe
    fixed: Mapping[str, str]  # reported name -> the version it must reach
    rejected: set[tuple[str, str]]
    chosen: dict[str, Chosen] = field(default_factory=dict)

    @property
    def installed(self) -> Mapping[str, Installed]:
        return self.universe.installed

    def current(self) -> list[tuple[str, str, tuple[Dependency, ...]]]:
        """(name, version, provides) of every package after the planned changes."""
        out = [(c.record.name, c.record.version, c.record.provides) for c in self.chosen.values()]
        out += [(i.name, i.version, i.provides) for n, i in self.installed.items() if n not in self.chosen]
        return out

    def satisfied(self, dep: Dependency) -> bool:
        return any(_provides(name, version, provides, dep) for name, version, provides in self.current())

    def usable(self, record: ApkRecord) -> bool:
        """Not rejected, allowed by the world, and at or above the fixed version for a reported package."""
        if (record.name, record.version) in self.rejected or self.universe.world_allows(record) is not None:
            return False
        fixed = self.fixed.get(record.name)
        return fixed is None or compare_versions(record.version, fixed) >= 0

    def constraints_on(self, name: str) -> list[tuple[str, Dependency]]:
        """The planned new versions' dependencies on `name`, with who has them."""
        return [(f"{c.record.name}-{c.record.version}", d) for c in self.chosen.values() for d in c.record.depends
                if d.name == name and not d.conflict]

    def fits(self, record: ApkRecord) -> bool:
        """Whether `record` keeps every planned new version's dependency on its name (or a name it provides)."""
        for _, dep in self.constraints_on(record.name):
            if not dep.matches(record.version):
                return False
        for p in record.provides:
            for _, dep in self.constraints_on(p.name):
                if not dep.matches(p.version or None):
                    return False
        return True


def _provides(name: str, version: str, provides: Iterable[Dependency], dep: Dependency) -> bool:
    if name == dep.name and dep.matches(version):
        return True
    return any(p.name == dep.name and dep.matches(p.version or None) for p in provides)


def _provides_record(record: ApkRecord, dep: Dependency) -> bool:
    return _provides(record.name, record.version, record.provides, dep)


def _has_name(name: str, provides: Iterable[Dependency], dep: Dependency) -> bool:
    """Whether a package is what `dep` is about (its name, or a name it provides), whatever the versions."""
    return name == dep.name or any(p.name == dep.name for p in provides)


def _newest_first(records: list[ApkRecord]) -> list[ApkRecord]:
    if len(records) == 1:
        return records  # (most names: one build in one repository)
    seen: dict[tuple[str, str], ApkRecord] = {}
    for r in records:  # the first repository listing a version wins, as in apk
        seen.setdefault((r.name, r.version), r)

    def cmp(a: ApkRecord, b: ApkRecord) -> int:
        return compare_versions(a.version, b.version)

    return sorted(seen.values(), key=functools.cmp_to_key(cmp), reverse=True)


class _NewestFirst(Mapping[str, list[ApkRecord]]):
    """Name -> its records newest first, each list put in that order when it is first asked for: an Alpine image's
    indexes list ~25 000 names and as many provided ones, of which a plan asks for a few hundred (ordering them all
    was a third of the index's making)."""

    def __init__(self, lists: dict[str, list[ApkRecord]]) -> None:
        self._lists = lists
        self._ordered: set[str] = set()

    def __getitem__(self, name: str) -> list[ApkRecord]:
        records = self._lists[name]
        if name not in self._ordered:
            records[:] = _newest_first(records)
            self._ordered.add(name)
        return records

    def __iter__(self) -> Iterator[str]:
        return iter(self._lists)

    def __len__(self) -> int:
        return len(self._lists)


def _index(available: Sequence[ApkRecord]) -> tuple[Mapping[str, list[ApkRecord]], Mapping[str, list[ApkRecord]]]:
    by_name: dict[str, list[ApkRecord]] = {}
    providers: dict[str, list[ApkRecord]] = {}
    for r in available:
        by_name.setdefault(r.name, []).append(r)
        for p in r.provides:
            providers.setdefault(p.name, []).append(r)
    return _NewestFirst(by_name), _NewestFirst(providers)


def _label(c: Chosen | Installed | ApkRecord) -> str:
    if isinstance(c, Chosen):
        c = c.record
    return f"{c.name}-{c.version}"


def _kind(state: _State, name: str, inst: Installed | None, fallback: UpdateKind) -> UpdateKind:
    if inst is None:
        return UpdateKind.NEW
    origins = {c.record.origin for c in state.chosen.values() if c.record.origin and c.record.name != name}
    return UpdateKind.SIBLING if inst.origin and inst.origin in origins else fallback


def resolve(installed: Mapping[str, Installed], wanted: Sequence[Wanted], available: Sequence[ApkRecord],
            world: Sequence[Dependency] = ()) -> Resolution:
    by_name, providers = _index(available)
    universe = _Universe(installed, by_name, providers, tuple(world))
    skipped: list[Skip] = []
    failures: dict[str, Skip] = {}
    asked: dict[str, Wanted] = {}
    for w in wanted:
        inst = installed.get(w.name)
        if inst is None:
            skipped.append(Skip(w.name, SkipReason.NOT_INSTALLED))
        elif w.fixed_version is None:
            skipped.append(Skip(w.name, SkipReason.NO_FIXED_VERSION))
        elif compare_versions(inst.version, w.fixed_version) >= 0:
            skipped.append(Skip(w.name, SkipReason.ALREADY_FIXED, f"{inst.version} >= {w.fixed_version}"))
        elif w.name in asked:  # named twice (two report entries): the higher fix and every vulnerability
            prev = asked[w.name]
            assert prev.fixed_version is not None
            higher = max(prev.fixed_version, w.fixed_version, key=functools.cmp_to_key(compare_versions))
            asked[w.name] = Wanted(w.name, higher, tuple(sorted(set(prev.vulnerabilities) | set(w.vulnerabilities))))
        else:
            asked[w.name] = Wanted(w.name, w.fixed_version, tuple(sorted(set(w.vulnerabilities))))
    rejected: dict[tuple[str, str], str] = {}
    while True:
        fixed = {n: w.fixed_version for n, w in asked.items() if n not in failures and w.fixed_version}
        state = _State(universe, fixed, set(rejected))
        try:
            for w in asked.values():
                if w.name not in failures:
                    failure = _choose_reported(state, w, rejected)
                    if failure is not None:
                        failures[w.name] = failure
            _close(state)
        except _Reject as r:
            if r.key in rejected:  # cannot happen (rejected records are never chosen); guard against a loop
                raise AssertionError(f"apk plan: {r.key} rejected twice") from None
            rejected[r.key] = r.detail
            continue
        break
    order = sorted(state.chosen.values(), key=lambda c: c.record.name)
    return Resolution(tuple(order), tuple(skipped), tuple(failures[n] for n in sorted(failures)))


def _choose_reported(state: _State, w: Wanted, rejected: Mapping[tuple[str, str], str]) -> Skip | None:
    """Choose the newest usable version of a reported package, or say why there is none."""
    assert w.fixed_version is not None
    records = state.universe.by_name.get(w.name, [])
    for r in records:
        if state.usable(r):
            state.chosen[w.name] = Chosen(r, state.installed[w.name], UpdateKind.REPORTED, w.vulnerabilities)
            return None
    fixes = [r for r in records if compare_versions(r.version, w.fixed_version) >= 0]
    if not fixes:
        have = f"newest available is {records[0].version}" if records else "no repository has it"
        return Skip(w.name, SkipReason.NO_FIX_AVAILABLE, f"needs {w.fixed_version}, {have}")
    held = [d for r in fixes if (d := state.universe.world_allows(r)) is not None]
    if len(held) == len(fixes):
        return Skip(w.name, SkipReason.HELD, f"needs {w.fixed_version}, but /etc/apk/world holds it at {held[0]}")
    why = next((rejected[(r.name, r.version)] for r in fixes if (r.name, r.version) in rejected), "")
    return Skip(w.name, SkipReason.UNRESOLVABLE, why or f"no version at or above {w.fixed_version} can be installed")


def _close(state: _State) -> None:
    changed = True
    while changed:
        changed = False
        for chosen in list(state.chosen.values()):
            for dep in chosen.record.depends:
                if not dep.conflict and not state.satisfied(dep):
                    _meet(state, chosen, dep)
                    changed = True
                    break
            if changed:
                break
        if changed:
            continue
        changed = _move_dependants(state) or _follow_install_if(state)


def _meet(state: _State, needer: Chosen, dep: Dependency) -> None:
    """Make `dep` of a planned new version hold: move the package that has the name (or provides it), or
    install a new provider; reject the needer when neither can be done."""
    u = state.universe
    present = [name for name, _, provides in state.current() if _has_name(name, provides, dep)]
    who = _label(needer)
    for name in present:
        if name == needer.record.name:
            continue
        candidates = [r for r in u.by_name.get(name, []) if _provides_record(r, dep) and state.usable(r)]
        # A reported package re-chosen to fit keeps its kind; others take the newest version that also keeps
        # what the other new versions need of them.
        fitting = [r for r in candidates if state.fits(r)]
        if fitting:
            record = fitting[0]
            current = state.chosen.get(name)
            if current is not None and current.kind is UpdateKind.REPORTED:
                if compare_versions(record.version, current.record.version) != 0:
                    # The newest version conflicts with this dependency: take the one that fits instead.
                    raise _Reject(name, current.record.version, f"{who} needs {dep}")
                continue
            inst = state.installed.get(name)
            kind = UpdateKind.CO_UPGRADE if dep.op else UpdateKind.DEPENDENCY
            state.chosen[name] = Chosen(record, inst, _kind(state, name, inst, kind), (),
                                        f"{who} needs {dep}", (needer.record.name, needer.record.version))
            return
        blocker = _blocker(state, name, dep)
        raise _Reject(needer.record.name, needer.record.version, f"{who} needs {dep}, {blocker}")
    fresh = [r for r in u.by_name.get(dep.name, []) + u.providers.get(dep.name, [])
             if r.name not in state.installed and r.name not in state.chosen and _provides_record(r, dep)
             and state.usable(r) and state.fits(r)]
    if not fresh:
        raise _Reject(needer.record.name, needer.record.version,
                      f"{who} needs {dep}, which no repository provides")
    # Among new providers apk prefers the package of that name, then the highest provider_priority (k:), then the
    # newest version.
    best = max(fresh, key=lambda r: (r.name == dep.name, r.provider_priority or 0,
                                     functools.cmp_to_key(compare_versions)(r.version)))
    state.chosen[best.name] = Chosen(best, None, UpdateKind.NEW, (), f"{who} needs {dep}",
                                     (needer.record.name, needer.record.version))


def _blocker(state: _State, name: str, dep: Dependency) -> str:
    """Why no version of `name` can satisfy `dep`, naming what holds it (world, another new version)."""
    u = state.universe
    matching = [r for r in u.by_name.get(name, []) if _provides_record(r, dep)]
    if not matching:
        return f"which no version of {name} in the repositories provides"
    for r in matching:
        held = u.world_allows(r)
        if held is not None:
            return f"but /etc/apk/world holds {name} at {held}"
        for who, other in state.constraints_on(name):
            if not other.matches(r.version):
                return f"but {who} needs {other}"
    return f"but no version of {name} that provides it can be installed"


def _broken(state: _State, inst: Installed) -> list[Dependency]:
    """Dependencies of an installed package that held in the image and do not after the planned changes."""
    before = state.installed
    out = []
    for dep in inst.depends:
        if dep.conflict:
            continue
        held = any(_provides(i.name, i.version, i.provides, dep) for i in before.values())
        if held and not state.satisfied(dep):
            out.append(dep)
    return out


def _move_dependants(state: _State) -> bool:
    """Move the installed packages whose dependencies the planned changes break; True if any moved."""
    for name, inst in state.installed.items():
        if name in state.chosen:
            continue
        broken = _broken(state, inst)
        if not broken:
            continue
        dep = broken[0]
        breaker = next((c for c in state.chosen.values() if _has_name(c.record.name, c.record.provides, dep)), None)
        assert breaker is not None  # only a planned change can break what held before
        record = _newest_consistent(state, name)
        if record is None:
            # It cannot move, so its pin holds the package that broke it, as apk's solver holds it.
            newer = [r for r in state.universe.by_name.get(name, [])
                     if compare_versions(r.version, inst.version) > 0]
            held = next((h for r in newer if (h := state.universe.world_allows(r)) is not None), None)
            why = (f"and /etc/apk/world holds {name} at {held}" if held is not None and newer else
                   f"and no version of {name} in the repositories fits {_label(breaker)}" if newer else
                   "which has no newer version")
            raise _Reject(breaker.record.name, breaker.record.version,
                          f"installed {_label(inst)} needs {dep}, {why}")
        reason = f"{_label(inst)} pins {dep}, which moves to {breaker.record.version}" if dep.op else \
            f"{_label(inst)} needs {dep}, which {_label(breaker)} no longer provides"
        state.chosen[name] = Chosen(record, inst, _kind(state, name, inst, UpdateKind.CO_UPGRADE), (), reason,
                                    (breaker.record.name, breaker.record.version))
        return True
    return False


def _newest_consistent(state: _State, name: str) -> ApkRecord | None:
    """The newest usable version of an installed package whose dependencies on the planned new versions hold
    (what apk's solver takes for a name without the upgrade flag once the installed version is out)."""
    inst = state.installed[name]
    planned = {c.record.name for c in state.chosen.values()}
    for r in state.universe.by_name.get(name, []):
        if compare_versions(r.version, inst.version) <= 0 or not state.usable(r) or not state.fits(r):
            continue
        ok = True
        for dep in r.depends:
            if dep.conflict:
                continue
            on_planned = any(_has_name(n, pv, dep) for n, _, pv in state.current() if n in planned)
            if on_planned and not state.satisfied(dep):
                ok = False
                break
        if ok:
            return r
    return None


def _install_if_holds(state: _State, conditions: Sequence[Dependency], before: bool = False) -> bool:
    if before:
        inst = state.installed.values()
        return all(any(_provides(i.name, i.version, i.provides, d) for i in inst) != d.conflict for d in conditions)
    return all(state.satisfied(d) != d.conflict for d in conditions)


def _follow_install_if(state: _State) -> bool:
    """apk keeps a package that install_if brought in only while its condition holds: when the change breaks
    the condition, the newest version whose condition holds again replaces it (apk would purge it if there
    were none; copa never removes packages, so it then stays as it is)."""
    for name, inst in state.installed.items():
        if name in state.chosen or not inst.install_if:
            continue
        if not _install_if_holds(state, inst.install_if, before=True) or _install_if_holds(state, inst.install_if):
            continue
        newer = [r for r in state.universe.by_name.get(name, []) if compare_versions(r.version, inst.version) > 0
                 and state.usable(r) and state.fits(r) and _install_if_holds(state, r.install_if)]
        if newer:
            cond = " ".join(str(d) for d in inst.install_if)
            state.chosen[name] = Chosen(newer[0], inst, _kind(state, name, inst, UpdateKind.CO_UPGRADE), (),
                                        f"{_label(inst)} is installed if {cond}, which no longer holds")
            return True
    return False
