"""The dpkg adapter: Debian and Ubuntu images, distroless ones included."""

from __future__ import annotations

import bisect
import dataclasses
import os
import posixpath
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from copa.errors import ReportError
from copa.pkg.apt.conf import APT_CONF, APT_CONF_DIR, AptConfig
from copa.pkg.apt.debs import deb_item
from copa.pkg.apt.packages import PackageRecord, RepositoryIndex
from copa.pkg.base import ImageContext, LayerContent, Plan, Skip, Update, UpdateKind, check_failures
from copa.pkg.dpkg.config import DpkgConfig, read_config
from copa.pkg.dpkg.database import INFO, DpkgDatabase, info_name, read_database
from copa.pkg.dpkg.debfile import BadDeb, DebContents, check_identity, read_deb
from copa.pkg.dpkg.install import (
    LayerPlan,
    Unpacked,
    conffile_paths,
    database_entries,
    install_package,
    remove_package,
)
from copa.pkg.dpkg.inventory import deb_scanner_purl, dpkg_inventory
from copa.pkg.dpkg.plan import Candidate, Candidates, Chosen, Installed, Removal, Wanted, resolve
from copa.pkg.dpkg.prefetch import ReadAhead
from copa.pkg.dpkg.relations import parse_relations
from copa.pkg.dpkg.repos import apt_fetcher, image_policy, load_index
from copa.pkg.dpkg.status import StatusEntry, StatusParseError, entry_from_control
from copa.pkg.dpkg.version import compare_versions
from copa.pkg.effects import Package, apply, note
from copa.pkg.inventory import InstalledPackage
from copa.report.model import OSInfo, Report

# apt 2.5.2 began upgrading every installed binary of a source package it upgrades (Debian 12's apt is 2.6)
_BY_SOURCE_SINCE = "2.5.2"


@dataclass(frozen=True)
class _Payload:
    db: DpkgDatabase
    chosen: tuple[Chosen, ...]
    records: tuple[PackageRecord, ...]  # the chosen versions' index records, in the same order
    removals: tuple[Removal, ...] = ()


@dataclass(frozen=True, slots=True)
class AptBehaviour:
    """What the image's own apt would do differently from another apt: read from its version and apt.conf."""

    by_source: bool  # APT::Get::Upgrade-By-Source-Package
    install_recommends: bool  # APT::Install-Recommends
    default_release: str  # APT::Default-Release


def apt_behaviour(ctx: ImageContext, installed: dict[str, Installed]) -> AptBehaviour:
    config = AptConfig.from_files(ctx.root.read(APT_CONF), ctx.root.under(APT_CONF_DIR))
    apt = installed.get("apt")
    # An image without apt (distroless) is patched as its release's apt would: every supported release's apt
    # upgrades by source except the older ones that ship it.
    by_source_default = apt is None or compare_versions(apt.version, _BY_SOURCE_SINCE) >= 0
    return AptBehaviour(
        by_source=config.flag("APT::Get::Upgrade-By-Source-Package", by_source_default),
        install_recommends=config.flag("APT::Install-Recommends", True),
        default_release=config.get("APT::Default-Release"),
    )


def _wanted(report: Report | None, installed: dict[str, Installed], usable: Candidates) -> list[Wanted]:
    if report is not None:
        return _reported(report, installed)
    # No report: bring every installed package to apt's candidate, as `apt-get upgrade` would.
    out = []
    for name, inst in sorted(installed.items()):
        candidate = next(iter(usable(name)), None)
        if candidate is not None and compare_versions(candidate.version, inst.version) > 0:
            out.append(Wanted(name, candidate.version))
    return out


def _reported(report: Report, installed: dict[str, Installed]) -> list[Wanted]:
    """The report's packages; a name installed only as a source package (openssl, glibc) stands for the
    installed binaries built from it, compared by source version (see Wanted.by_source)."""
    by_source: dict[str, list[str]] = {}
    for inst in installed.values():
        by_source.setdefault(inst.source, []).append(inst.name)
    out = []
    for p in report.packages:
        if p.name in installed or p.name not in by_source:
            out.append(Wanted(p.name, p.fixed_version, p.vulnerability_ids))
            continue
        out.extend(Wanted(b, p.fixed_version, p.vulnerability_ids, by_source=True) for b in sorted(by_source[p.name]))
    if report.packages and not any(p.name in installed or p.name in by_source for p in report.packages):
        raise ReportError(
            f"the report {report.source} does not describe this image: none of its {len(report.packages)} packages "
            "is installed; scan this image and pass that report"
        )
    return out


def _likely_names(installed: dict[str, Installed], report: Report | None) -> frozenset[str]:
    """The names a plan will most likely look up; only their index rows are kept in memory (others are
    read from the index cache if the resolver asks for them after all)."""
    names = set(installed)
    if report is not None:
        names.update(p.name for p in report.packages)
    for inst in installed.values():
        for clause in parse_relations(inst.depends) + parse_relations(inst.pre_depends):
            names.update(rel.name for rel in clause)
    return frozenset(names)


def _foreign_index(ctx: ImageContext, foreign: dict[str, tuple[Installed, ...]]
                   ) -> Callable[[str, str], Sequence[Candidate]]:
    """Repository versions for the other architectures the image has Multi-Arch: same packages of; each
    architecture's indexes are read only when the plan asks for one of its packages."""
    names = frozenset(foreign)
    loaded: dict[str, RepositoryIndex] = {}

    def versions(name: str, architecture: str) -> Sequence[Candidate]:
        if architecture not in loaded:
            loaded[architecture] = load_index(ctx, architecture, names, fetched=_releases(ctx))
        return [r for r in loaded[architecture].versions(name) if r.architecture == architecture]

    return versions


class DpkgAdapter:
    name = "dpkg"

    def plan(self, ctx: ImageContext, report: Report | None) -> Plan:
        db = read_database(ctx.files, ctx.architecture, ctx.variant)
        installed = db.installed()
        if report is not None:
            _reported(report, installed)  # a report for another image fails before any download
        index = load_index(ctx, db.architecture, _likely_names(installed, report), fetched=_releases(ctx))
        behaviour = apt_behaviour(ctx, installed)
        policy = image_policy(ctx, behaviour.default_release)
        wanted = _wanted(report, installed, Candidates(installed, index.versions, db.architecture, compare_versions,
                                                       policy))
        foreign = db.foreign()
        resolution = resolve(installed, wanted, index.versions, db.architecture, compare_versions,
                             index.providers, policy=policy, foreign=foreign,
                             foreign_versions_of=_foreign_index(ctx, foreign),
                             by_source=behaviour.by_source, install_recommends=behaviour.install_recommends,
                             allow_remove=ctx.allow_remove)
        check_failures(resolution.failures, ctx.ignore_errors)
        updates = tuple(
            Update(c.record.package, c.record.architecture, c.installed.version if c.installed else "",
                   c.record.version, c.kind, c.vulnerabilities, reason=c.reason)
            for c in resolution.chosen
        ) + tuple(Update(r.installed.name, r.installed.architecture, r.installed.version, "", UpdateKind.REMOVED,
                         reason=r.reason) for r in resolution.removals)
        skipped: tuple[Skip, ...] = resolution.skipped + resolution.failures
        records = tuple(c.record for c in resolution.chosen if isinstance(c.record, PackageRecord))
        return Plan(updates, skipped, _Payload(db, resolution.chosen, records, resolution.removals))

    def build(self, ctx: ImageContext, plan: Plan) -> LayerContent:
        payload = plan.payload
        assert isinstance(payload, _Payload)
        db = payload.db
        debs = _download_and_read(ctx, payload.records)
        view = ctx.root
        names = [posixpath.basename(r.filename) for r in payload.records]
        olds = [_old_entry(db, c) for c in payload.chosen]
        old_files, old_info = self._old_state(ctx, db, olds)
        unpacked: list[Unpacked] = []
        for i, (chosen, contents) in enumerate(zip(payload.chosen, debs, strict=True)):
            unpacked.append(Unpacked(chosen.record.package, contents, olds[i], old_files.get(i, ()),
                                     old_info.get(i, ())))
        config = read_config(view)
        conffiles = self._current_conffiles(ctx, unpacked, config)
        mtime = max((f.mtime for u in unpacked for f in u.contents.files), default=0)
        layer = LayerPlan(view, mtime, config)
        status_entries = []
        installs = [u for u in plan.updates if u.kind is not UpdateKind.REMOVED]
        updates = []
        for pkg, update, deb_name in zip(unpacked, installs, names, strict=True):
            recorded = install_package(layer, pkg, conffiles)
            status_entries.append((pkg, _status_entry(pkg, recorded, deb_name)))
            updates.append(update)
        removed = [e for r in payload.removals if (e := db.entry(r.installed.name, r.installed.architecture))]
        gone_files, gone_info = self._old_state(ctx, db, removed)
        other_owned = self._other_owned(ctx, db, [*(e for e in olds if e is not None), *removed])
        for i, entry in enumerate(removed):
            remove_package(layer, entry, gone_files.get(i, ()), gone_info.get(i, ()), other_owned)
        if not db.distroless:
            layer.remove_dropped_dirs(other_owned)
        database_entries(layer, db, status_entries, removed)
        # What the maintainer scripts and triggers would have done (copa/pkg/effects); its entries win at their paths.
        outcome = apply(layer.entries, view, [_effects_package(u) for u in unpacked], "dpkg", db.architecture, mtime)
        updates = [dataclasses.replace(u, scripts_note=note(outcome, u.name)) for u in updates]
        updates += [u for u in plan.updates if u.kind is UpdateKind.REMOVED]
        return LayerContent(tuple(layer.entries.values()), view.is_symlink, tuple(updates), default_mtime=mtime)

    def inventory(self, ctx: ImageContext, plan: Plan) -> tuple[InstalledPackage, ...]:
        payload = plan.payload
        assert isinstance(payload, _Payload)
        gone = {(c.installed.name, c.installed.architecture) for c in payload.chosen if c.installed is not None}
        gone.update((r.installed.name, r.installed.architecture) for r in payload.removals)
        return dpkg_inventory(ctx.os_release, payload.db, gone, payload.records)

    def purl(self, ctx: ImageContext, name: str, version: str, architecture: str,
             scanned_os: OSInfo | None = None) -> str:
        if scanned_os is not None and scanned_os.family:
            return deb_scanner_purl(scanned_os.family, scanned_os.version, name, version, architecture)
        return deb_scanner_purl(ctx.os_release.id, ctx.os_release.version_id, name, version, architecture)

    def _old_state(
        self, ctx: ImageContext, db: DpkgDatabase, entries: Sequence[StatusEntry | None]
    ) -> tuple[dict[int, tuple[str, ...]], dict[int, tuple[str, ...]]]:
        """By position in `entries`: the paths each installed version owns, and its info/ file names."""
        files: dict[int, tuple[str, ...]] = {}
        info: dict[int, tuple[str, ...]] = {}
        stems: dict[int, str] = {}
        for i, entry in enumerate(entries):
            if entry is not None:
                stems[i] = info_name(entry.package, entry.multi_arch, entry.architecture)
        if db.distroless:
            for name in stems:
                pkg = entries[name]
                assert pkg is not None
                file_name = db.status_d_name(pkg.package) or pkg.package
                md5 = db.md5sums_d.get(f"{file_name}.md5sums", b"")
                files[name] = tuple(line.split(None, 1)[1].strip() for line in md5.decode("utf-8", "replace")
                                    .splitlines() if len(line.split(None, 1)) == 2)
            return files, info
        # The image's info/ paths, sorted once: each package's files are then one contiguous range of them.
        info_paths = ctx.root.paths_below(INFO)
        for name, stem in stems.items():
            content = ctx.root.read(f"{INFO}/{stem}.list") or b""
            files[name] = tuple(p.lstrip("/") for p in content.decode("utf-8", "replace").splitlines()
                                if p.strip() and p != "/.")
            prefix = f"{INFO}/{stem}."
            start = bisect.bisect_left(info_paths, prefix)
            end = start
            while end < len(info_paths) and info_paths[end].startswith(prefix):
                end += 1
            info[name] = tuple(p[len(INFO) + 1:] for p in info_paths[start:end])
        return files, info

    def _other_owned(self, ctx: ImageContext, db: DpkgDatabase, entries: Sequence[StatusEntry]) -> set[str]:
        """Every path (with its leading slash) the info/*.list of a package not being updated or removed names."""
        owned: set[str] = set()
        if db.distroless:
            skip = {f"{db.status_d_name(e.package) or e.package}.md5sums" for e in entries}
            for name, sums in db.md5sums_d.items():
                if name not in skip:
                    owned.update("/" + parts[1].strip() for line in sums.decode("utf-8", "replace").splitlines()
                                 if len(parts := line.split(None, 1)) == 2)
            return owned
        updated = {f"{INFO}/{info_name(e.package, e.multi_arch, e.architecture)}.list" for e in entries}
        for path, content in ctx.root.under(INFO).items():
            if path.endswith(".list") and path not in updated:
                owned.update(content.decode("utf-8", "surrogateescape").splitlines())
        return owned

    def _current_conffiles(self, ctx: ImageContext, unpacked: Sequence[Unpacked],
                           config: DpkgConfig) -> dict[str, bytes | None]:
        """The image's current content of the conffiles of packages being upgraded (None: deleted), read where
        a diversion put them; keyed by the package's path."""
        return {p: ctx.root.read(config.target(p.lstrip("/"), u.package))
                for u in unpacked if u.old is not None for p in conffile_paths(u.contents)}


def _old_entry(db: DpkgDatabase, chosen: Chosen) -> StatusEntry | None:
    """The status entry a chosen version replaces: the instance of the installed architecture (a Multi-Arch: same
    package may be installed for several)."""
    if chosen.installed is None:
        return None
    return db.entry(chosen.installed.name, chosen.installed.architecture) or db.entry(chosen.installed.name)


def _read_ahead(ctx: ImageContext) -> ReadAhead | None:
    """What this run's prefetch prepared (copa.pkg.dpkg.prefetch), if it ran."""
    return ctx.ahead if isinstance(ctx.ahead, ReadAhead) else None


def _releases(ctx: ImageContext) -> dict[str, bytes] | None:
    """The InRelease bodies the prefetch downloaded this run (verified again by the plan), if it ran."""
    ahead = _read_ahead(ctx)
    return ahead.releases if ahead is not None else None


def _download_and_read(ctx: ImageContext, records: Sequence[PackageRecord]) -> list[DebContents]:
    """Every .deb downloaded (verified against the index) and read, each read starting as soon as its download
    is done, biggest first: decompression (which releases the GIL) runs on every core while the rest download.
    The first failure in record order is raised once every worker has finished."""
    fetcher = apt_fetcher(ctx)
    # What the prefetch read while the image was being read (copa.pkg.dpkg.prefetch), for the same sha256 only.
    ahead = _read_ahead(ctx)
    if ahead is not None:
        ahead.keep_only({r.sha256 for r in records})
    order = sorted(range(len(records)), key=lambda i: -records[i].size)
    with ThreadPoolExecutor(max_workers=fetcher.workers, thread_name_prefix="copa-fetch") as fetch_pool, \
            ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="copa-unpack") as read_pool:
        fetched = {i: fetch_pool.submit(fetcher.fetch, deb_item(records[i])) for i in order}

        def read(i: int) -> DebContents:
            name = posixpath.basename(records[i].filename)
            early = ahead.take(records[i].sha256) if ahead is not None else None
            contents = early or read_deb(fetched[i].result(), ctx.workdir / "stage" / f"{i:04d}", name)
            check_identity(contents.control, records[i].package, records[i].version, records[i].architecture, name)
            return contents

        reads = {i: read_pool.submit(read, i) for i in order}
    return [reads[i].result() for i in range(len(records))]


def _effects_package(pkg: Unpacked) -> Package:
    control = pkg.contents.control_files
    triggers = control.get("triggers", b"").decode("utf-8", "replace").splitlines()
    return Package(pkg.package, pkg.old.version if pkg.old else "", "",
                   {k: v for k, v in control.items() if k in ("preinst", "postinst", "prerm", "postrm", "config")},
                   tuple(t.strip() for t in triggers if t.strip() and not t.lstrip().startswith("#")))


def _status_entry(pkg: Unpacked, recorded: Sequence[tuple[str, str]], deb_name: str) -> StatusEntry:
    """The new status entry; a control file dpkg would refuse makes the .deb, not the image, the culprit."""
    try:
        return entry_from_control(pkg.contents.control, recorded, path=f"{deb_name} control")
    except StatusParseError as e:
        raise BadDeb(f"{e}; the repository serves a broken package") from None

