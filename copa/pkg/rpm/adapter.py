"""The rpm adapter: RHEL/UBI, CentOS, Rocky, Alma, Oracle, Amazon Linux and Fedora images, with or without a
package manager inside (ubi-micro, distroless-style roots): nothing of the image is run.

plan: the rpm database (sqlite or BerkeleyDB) -> installed packages; the image's dnf/yum repositories (or the
user's) -> verified metadata; the dnf-like resolver (plan.py). build: each chosen .rpm downloaded (checksum from
the verified metadata), its header signature checked against the repository's keys when gpgcheck is on, read and
turned into layer entries (install.py), and the rpm database rewritten in the image's own format with the headers
rpm would store.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from copa.errors import IntegrityError, ReportError, ResolutionError
from copa.pkg.base import (
    ImageContext,
    LayerContent,
    Plan,
    Skip,
    SkipReason,
    Update,
    UpdateKind,
    check_failures,
)
from copa.pkg.effects import apply
from copa.pkg.effects import note as effects_note
from copa.pkg.fetch import FetchItem, fetcher_for
from copa.pkg.rpm.deps import EQUAL, Dep, overlaps
from copa.pkg.rpm.header import Header, installed_header
from copa.pkg.rpm.install import (
    InstalledTriggers,
    LayerPlan,
    effects_package,
    install_package,
    other_owned,
    owned_paths,
)
from copa.pkg.rpm.plan import Chosen, Installed, Policy, Wanted, resolve
from copa.pkg.rpm.readahead import ReadAhead
from copa.pkg.rpm.repomd import RepoIndex, RpmPackage, load_repository
from copa.pkg.rpm.repos import RepoSetup, RpmRepository, Tree, read_setup, repository_auth, repository_keyring
from copa.pkg.rpm.rpmdb.installed import RpmDatabase, read_database
from copa.pkg.rpm.rpmfile import HeaderCheck, RpmContents, expect_identity, read_rpm
from copa.pkg.rpm.signature import checker
from copa.pkg.rpm.tags import Tag
from copa.pkg.rpm.version import compare_versions, rpmvercmp
from copa.report.model import OSInfo, Report

# Imported where used: modular metadata only for a repository that lists `modules` (RHEL 8 AppStream), the
# inventory only for --attach and -o. The adapter is imported by the prefetch thread while the main thread scans
# the image, and Python code there slows the scan about as much as it runs (the GIL).
if TYPE_CHECKING:
    from copa.pkg.inventory import InstalledPackage
    from copa.pkg.rpm.modules import ModularFilter, ModuleStream

_PSEUDO = frozenset({"gpg-pubkey"})  # keys imported into the rpmdb: not packages anyone upgrades


def _deps(h: Header, names: Tag, flags: Tag, versions: Tag) -> tuple[Dep, ...]:
    n, f, v = h.strings(names), h.ints(flags), h.strings(versions)
    return tuple(Dep(name, (f[i] if i < len(f) else 0) & 14, v[i] if i < len(v) else "") for i, name in enumerate(n))


def installed_of(h: Header) -> Installed:
    epoch = h.integer(Tag.EPOCH)
    evr = f"{epoch}:" if epoch else ""
    evr += f"{h.string(Tag.VERSION) or ''}-{h.string(Tag.RELEASE) or ''}"
    return Installed(
        name=h.string(Tag.NAME) or "",
        arch=h.string(Tag.ARCH) or "noarch",
        evr=evr,
        provides=_deps(h, Tag.PROVIDENAME, Tag.PROVIDEFLAGS, Tag.PROVIDEVERSION),
        requires=_deps(h, Tag.REQUIRENAME, Tag.REQUIREFLAGS, Tag.REQUIREVERSION),
        conflicts=_deps(h, Tag.CONFLICTNAME, Tag.CONFLICTFLAGS, Tag.CONFLICTVERSION),
        obsoletes=_deps(h, Tag.OBSOLETENAME, Tag.OBSOLETEFLAGS, Tag.OBSOLETEVERSION),
        recommends=_deps(h, Tag.RECOMMENDNAME, Tag.RECOMMENDFLAGS, Tag.RECOMMENDVERSION),
        sourcerpm=h.string(Tag.SOURCERPM) or "",
    )


@dataclass(frozen=True)
class Candidate:
    """A repository package as the resolver sees it (copa.pkg.rpm.plan.Candidate)."""

    package: RpmPackage
    priority: int

    @property
    def name(self) -> str:
        return self.package.name

    @property
    def arch(self) -> str:
        return self.package.arch

    @property
    def evr(self) -> str:
        return self.package.evr

    @property
    def sourcerpm(self) -> str:
        return self.package.sourcerpm

    @property
    def files(self) -> tuple[str, ...]:
        return self.package.files

    @cached_property
    def provides(self) -> tuple[Dep, ...]:
        return tuple(r.dep for r in self.package.provides)

    @cached_property
    def requires(self) -> tuple[Dep, ...]:
        return tuple(r.dep for r in self.package.requires)

    @cached_property
    def conflicts(self) -> tuple[Dep, ...]:
        return tuple(r.dep for r in self.package.conflicts)

    @cached_property
    def obsoletes(self) -> tuple[Dep, ...]:
        return tuple(r.dep for r in self.package.obsoletes)

    @cached_property
    def recommends(self) -> tuple[Dep, ...]:
        return tuple(r.dep for r in self.package.recommends)


@dataclass(frozen=True)
class _Payload:
    db: RpmDatabase
    headers: dict[int, Header]
    owned: dict[int, tuple[str, ...]]  # the paths of the files each installed header owns, by hnum
    hnums: dict[tuple[str, str], int]  # (name, arch) -> hnum of the installed header
    chosen: tuple[Chosen, ...]
    setup: RepoSetup
    erased: tuple[int, ...]
    repos: _Repositories


class _Repositories:
    """Every enabled repository's index, and lookups across them as the resolver needs them."""

    def __init__(self, ctx: ImageContext, setup: RepoSetup, keep: frozenset[str]) -> None:
        self.setup = setup
        self.tree = Tree(ctx.root.read, ctx.root.under)
        self.fetcher = fetcher_for(ctx, repository_auth(setup, self.tree, ctx.workdir))
        self.ctx = ctx
        self.indexes: list[RepoIndex] = []
        ahead = _read_ahead(ctx)
        # (The repomd.xml bodies the prefetch downloaded are verified here as configured, not downloaded again.)
        bodies = dict(ahead.metadata) if ahead is not None else None
        for repo in setup.repos:
            self.indexes.append(load_repository(
                repo, self.fetcher, lambda r: repository_keyring(r, self.tree, ctx.repos, self.fetcher),
                variables=setup.variables, mirrors=ctx.repos.mirrors, keep=keep.__contains__, bodies=bodies,
                parsed=ahead.primaries if ahead is not None else {}))
        self.module_streams: tuple[ModuleStream, ...] = ()
        self.modular = self._modular_filter()
        # The resolver asks for the same names over and over (every best-candidate check); the wrapped candidates
        # (their relations parsed once) and a filelists answer are kept per name.
        self._versions: dict[str, list[Candidate]] = {}
        self._providers: dict[str, list[Candidate]] = {}

    def _modular_filter(self) -> ModularFilter | None:
        """dnf 4's modular filtering (copa/pkg/rpm/modules.py), when some repository lists `modules`: the
        repositories' streams and defaults, the image's /etc/dnf/modules.defaults.d over them, its
        /etc/dnf/modules.d states, and the platform stream of its os-release's PLATFORM_ID."""
        if not any("modules" in ix.loaded.repomd.entries for ix in self.indexes):
            return None  # (what load_modules finds in a repository without modules metadata: nothing)
        from copa.pkg.rpm.modules import (
            DEFAULTS_DIR,
            MODULES_DIR,
            ModuleMetadata,
            build_filter,
            load_modules,
            local_defaults,
            parse_module_states,
            platform_of,
        )

        meta = ModuleMetadata()
        for ix in self.indexes:
            meta = meta.merged(load_modules(ix.loaded, self.fetcher))
        if not meta.streams:
            return None
        self.module_streams = meta.streams
        meta = ModuleMetadata(meta.streams, {**meta.defaults, **local_defaults(self.tree.under(DEFAULTS_DIR))})
        states = parse_module_states(self.tree.under(MODULES_DIR))
        os_release = self.tree.read("etc/os-release") or self.tree.read("usr/lib/os-release") or b""
        return build_filter(meta, states, platform_of(os_release.decode("utf-8", "replace")))

    def _wrap(self, index: RepoIndex, packages: Sequence[RpmPackage]) -> list[Candidate]:
        repo = index.repo
        return [Candidate(p, repo.priority) for p in packages
                if self.setup.visible(repo, p.name, (p.epoch or "0", p.version, p.release), p.arch)
                and (self.modular is None or self.modular.visible(p, repo))]

    def versions(self, name: str) -> list[Candidate]:
        if name not in self._versions:
            self._versions[name] = [c for ix in self.indexes for c in self._wrap(ix, ix.versions(name))]
        return self._versions[name]

    def providers(self, capability: str) -> list[Candidate]:
        if capability not in self._providers:
            found = [c for ix in self.indexes for c in self._wrap(ix, ix.providers(capability))]
            if not found and capability.startswith("/"):
                found = [c for ix in self.indexes
                         for c in self._wrap(ix, ix.filelist_providers(capability, self.fetcher))]
            self._providers[capability] = found
        return self._providers[capability]

    def stream_hint(self, name: str, fixed: str) -> str:
        """For a fix modular filtering hid: which module streams ship `name` at `fixed` or newer."""
        if self.modular is None:
            return ""
        from copa.pkg.rpm.modules import split_nevra

        found = sorted({f"{s.name}:{s.stream}" for s in self.module_streams
                        if (s.name, s.stream) not in self.modular.active
                        for nevra in s.artifacts
                        for n, e, v, r, _ in [split_nevra(nevra)]
                        if n == name and compare_versions(f"{e}:{v}-{r}", fixed) >= 0})
        if not found:
            return ""
        active = sorted(f"{m}:{st}" for m, st in self.modular.active)
        streams, ship = ("streams", "ship") if len(found) > 1 else ("stream", "ships")
        return (f"; module {streams} {', '.join(found)} {ship} {name} {fixed} or newer, but the image's active "
                f"streams are {', '.join(active) or 'none'} (dnf would not switch streams: `dnf module switch-to` "
                "in a rebuild)")

    def repo_of(self, pkg: RpmPackage) -> RpmRepository:
        return next(ix.repo for ix in self.indexes if ix.repo.id == pkg.repo_id)


def _wanted(report: Report | None, installed: Sequence[Installed], repos: _Repositories) -> list[Wanted]:
    if report is not None:
        return [Wanted(p.name, p.fixed_version, p.vulnerability_ids) for p in report.packages]
    # No report: every installed package with a newer version, as `dnf upgrade` would; and, as dnf does, one
    # without a newer version of its own that a repository package obsoletes (the resolver takes the obsoleter
    # for it; the version asked for is what the obsoleter provides of the name).
    out = []
    for inst in installed:
        newer = [c for c in repos.versions(inst.name) if compare_versions(c.evr, inst.evr) > 0]
        if newer:
            out.append(Wanted(inst.name, min((c.evr for c in newer), key=functools.cmp_to_key(compare_versions))))
            continue
        obsoleted = Dep(inst.name, EQUAL, inst.evr)
        for c in repos.providers(inst.name):
            if c.name != inst.name and any(o.name == inst.name and overlaps(obsoleted, o, rpmvercmp)
                                           for o in c.obsoletes):
                evr = next((p.evr for p in c.provides if p.name == inst.name and p.evr), c.evr)
                if compare_versions(evr, inst.evr) > 0:
                    out.append(Wanted(inst.name, evr))
                    break
    return out


class RpmAdapter:
    name = "rpm"

    def plan(self, ctx: ImageContext, report: Report | None) -> Plan:
        db = read_database(ctx.root)
        headers = {hnum: Header.parse(blob, f"/{db.directory} header {hnum}", IntegrityError)
                   for hnum, blob in db.headers.items()}
        by_key: dict[tuple[str, str], int] = {}
        installed: list[Installed] = []
        for hnum, h in sorted(headers.items()):
            inst = installed_of(h)
            if inst.name in _PSEUDO:
                continue
            installed.append(inst)
            by_key[inst.key] = hnum
        names = {i.name for i in installed}
        if report is not None and report.packages and not any(p.name in names for p in report.packages):
            raise ReportError(
                f"the report {report.source} does not describe this image: none of its {len(report.packages)} "
                "packages is installed; scan this image and pass that report")
        tree = Tree(ctx.root.read, ctx.root.under)
        setup = read_setup(tree, ctx.os_release, ctx.architecture, ctx.variant, ctx.repos)
        if not setup.repos:
            raise ResolutionError(f"image {ctx.os_release.pretty_name} has no enabled rpm repositories; pass "
                                  "--repository URL (a baseurl) and --keyring FILE")
        keep = frozenset({i.name for i in installed} | {d.name for i in installed for d in i.requires}
                         | ({p.name for p in report.packages} if report is not None else set()))
        repos = _Repositories(ctx, setup, keep)
        owned = {hnum: owned_paths(h) for hnum, h in headers.items()}
        files = frozenset("/" + p for paths in owned.values() for p in paths)
        resolution = resolve(installed, _wanted(report, installed, repos), repos.versions, repos.providers,
                             rpmvercmp, files.__contains__,
                             Policy())
        fixed = {p.name: p.fixed_version for p in report.packages} if report is not None else {}
        resolution = dataclasses.replace(resolution, failures=tuple(
            dataclasses.replace(f, detail=f.detail + repos.stream_hint(f.name, fixed[f.name] or ""))
            if f.reason is SkipReason.NO_FIX_AVAILABLE and fixed.get(f.name) else f
            for f in resolution.failures))
        check_failures(resolution.failures, ctx.ignore_errors)
        updates = tuple(Update(c.record.name, c.record.arch, c.installed.evr if c.installed else "", c.record.evr,
                               c.kind, c.vulnerabilities, reason=c.reason) for c in resolution.chosen)
        updates += tuple(Update(e.installed.name, e.installed.arch, e.installed.evr, "", UpdateKind.REMOVED,
                                reason=e.reason) for e in resolution.erased)
        skipped: tuple[Skip, ...] = resolution.skipped + resolution.failures
        erased = tuple(by_key[e.installed.key] for e in resolution.erased)
        return Plan(updates, skipped, _Payload(db, headers, owned, by_key, resolution.chosen, setup, erased, repos))

    def build(self, ctx: ImageContext, plan: Plan) -> LayerContent:
        payload = plan.payload
        assert isinstance(payload, _Payload)
        repos = payload.repos
        contents = _download_and_read(ctx, repos, payload.chosen)
        mtime = max((f.mtime for c in contents for f in c.files), default=0)
        layer = LayerPlan.of(ctx.root, mtime)
        replaced = [payload.hnums[c.installed.key] for c in payload.chosen if c.installed is not None]
        owned = other_owned(payload.owned, [*replaced, *payload.erased])
        notes: dict[str, list[str]] = {}
        for chosen, new in zip(payload.chosen, contents, strict=True):
            old = payload.headers[payload.hnums[chosen.installed.key]] if chosen.installed else None
            notes[chosen.record.name] = install_package(layer, new, old, owned)
        # An obsoleted package's files go, except those another package still owns or a new package installs
        # (a replacement often ships the same paths: rpm -e of the obsoleted one skips files shared with it).
        installed_now = {f.path for c in contents for f in c.files}
        for hnum in payload.erased:
            for path in payload.owned[hnum]:
                if "/" + path not in owned and path not in installed_now:
                    real = layer.real(path)
                    node = ctx.root.get(real)
                    if node is not None and node.kind != "dir":
                        layer.remove(real)
        install_time = _install_time(contents)
        blobs = [installed_header(c.headers.header, c.headers.signature, install_time=install_time,
                                  install_tid=install_time, file_states=layer.file_states(c)).to_bytes(magic=False)
                 for c in contents]
        change = payload.db.upgrade([*replaced, *payload.erased], blobs)
        for entry in change.entries():
            layer.entries[entry.path] = entry
        # What the scriptlets and triggers would have done (copa/pkg/effects); its entries win at their paths.
        triggers = InstalledTriggers.of(payload.headers.values())
        outcome = apply(layer.entries, ctx.root, [effects_package(c, payload.headers[payload.hnums[ch.installed.key]]
                                                                  if ch.installed else None, triggers)
                                                  for c, ch in zip(contents, payload.chosen, strict=True)],
                        "rpm", ctx.architecture, mtime)
        updates = []
        for u in plan.updates:
            if u.kind is UpdateKind.REMOVED:
                updates.append(u)
                continue
            note = "; ".join([*notes.get(u.name, []), *filter(None, [effects_note(outcome, u.name)])])
            updates.append(dataclasses.replace(u, scripts_note=note))
        return LayerContent(tuple(layer.entries.values()), ctx.root.is_symlink, tuple(updates), default_mtime=mtime)

    def inventory(self, ctx: ImageContext, plan: Plan) -> tuple[InstalledPackage, ...]:
        payload = plan.payload
        assert isinstance(payload, _Payload)
        from copa.pkg.rpm.inventory import RpmIdentity, rpm_inventory

        gone = {payload.hnums[c.installed.key] for c in payload.chosen if c.installed is not None}
        gone.update(payload.erased)
        chosen = []
        for c in payload.chosen:
            assert isinstance(c.record, Candidate)
            p = c.record.package
            chosen.append(RpmIdentity(p.name, p.epoch, p.version, p.release, p.arch, p.sourcerpm))
        return rpm_inventory(ctx.os_release, [h for n, h in sorted(payload.headers.items()) if n not in gone], chosen)

    def purl(self, ctx: ImageContext, name: str, version: str, architecture: str,
             scanned_os: OSInfo | None = None) -> str:
        from copa.pkg.rpm.inventory import rpm_scanner_purl, scanner_vendor

        if scanned_os is not None and scanned_os.family:
            return rpm_scanner_purl(scanned_os.family, scanned_os.version, name, version, architecture)
        vendor = scanner_vendor(ctx.os_release.id)
        return rpm_scanner_purl(vendor, ctx.os_release.version_id, name, version, architecture)


def _install_time(contents: Sequence[RpmContents]) -> int:
    """rpm records when it installed; copa records the newest build time of what it installs (or
    SOURCE_DATE_EPOCH), so the same patch gives the same layer."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch and epoch.isdigit():
        return int(epoch)
    return max((c.header.integer(Tag.BUILDTIME) or 0 for c in contents), default=0)


def _read_ahead(ctx: ImageContext) -> ReadAhead | None:
    """What the prefetch (copa.pkg.rpm.prefetch) prepared for this run, if anything."""
    return ctx.ahead if isinstance(ctx.ahead, ReadAhead) else None


def _download_and_read(ctx: ImageContext, repos: _Repositories, chosen: Sequence[Chosen]) -> list[RpmContents]:
    """Every chosen package downloaded (checksum from the verified metadata) and read, each read starting as soon
    as its download is done, biggest first, on every core: payload decompression and hashing (which release the
    GIL) overlap the other downloads and each other. A package the prefetch read ahead under the same sha256 is
    taken as it was read, once this build's own header check passes on it. The first failed download in plan
    order is raised, else the first failed read, once every worker has finished."""
    fetcher = repos.fetcher
    packages: list[RpmPackage] = []
    for c in chosen:
        assert isinstance(c.record, Candidate)
        pkg = c.record.package
        if pkg.checksum.type != "sha256":
            raise IntegrityError(f"{pkg.nevra}: the repository names a {pkg.checksum.type} checksum; copa verifies "
                                 "packages by sha256 only")
        packages.append(pkg)
    order = sorted(range(len(packages)), key=lambda i: -packages[i].size)
    ahead = _read_ahead(ctx)
    if ahead is not None:
        ahead.keep_only({p.checksum.value for p in packages})
    with ThreadPoolExecutor(max_workers=fetcher.workers, thread_name_prefix="copa-fetch") as fetch_pool, \
            ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="copa-unpack") as read_pool:
        fetched = {i: fetch_pool.submit(fetcher.fetch, FetchItem(url=packages[i].url, sha256=packages[i].checksum.value,
                                                                 size=packages[i].size,
                                                                 what=f"{packages[i].nevra}.rpm"))
                   for i in order}
        # The repositories' keys (a gpgkey may be fetched) while the packages download.
        keys: dict[str, HeaderCheck | None] = {}
        try:
            for pkg in packages:
                if pkg.repo_id not in keys:
                    repo = repos.repo_of(pkg)
                    ring = repository_keyring(repo, repos.tree, ctx.repos, fetcher) if repo.gpgcheck else None
                    keys[repo.id] = checker(ring) if ring is not None else None
        except BaseException:
            for future in fetched.values():
                future.cancel()  # a key that cannot be had fails the patch: no need to finish the downloads
            raise

        def read(i: int) -> RpmContents:
            pkg = packages[i]
            check = expect_identity(pkg.name, pkg.epoch, pkg.version, pkg.release, pkg.arch, keys[pkg.repo_id])
            early = ahead.take(pkg.checksum.value) if ahead is not None else None
            if early is not None:
                check(early.headers)  # what read_rpm runs before the payload: the same error if it fails
                return early
            return read_rpm(fetched[i].result(), ctx.workdir / "stage" / f"{i:04d}", f"{pkg.nevra}.rpm", check)

        reads = {i: read_pool.submit(read, i) for i in order}
    for i in range(len(packages)):
        fetched[i].result()
    return [reads[i].result() for i in range(len(packages))]
