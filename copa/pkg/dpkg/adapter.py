"""The dpkg adapter: Debian and Ubuntu images, distroless ones included."""

from __future__ import annotations

import dataclasses
import functools
import os
import posixpath
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from copa.pkg.apt.fetch import deb_item
from copa.pkg.apt.packages import PackageRecord, RepositoryIndex
from copa.pkg.base import ImageContext, LayerContent, Plan, Skip, Update, check_failures
from copa.pkg.dpkg.database import INFO, DpkgDatabase, info_name, read_database
from copa.pkg.dpkg.debfile import read_deb
from copa.pkg.dpkg.install import (
    LayerPlan,
    Unpacked,
    conffile_paths,
    database_entries,
    install_package,
    scripts_note,
)
from copa.pkg.dpkg.plan import Chosen, Installed, Wanted, resolve
from copa.pkg.dpkg.relations import parse_relations
from copa.pkg.dpkg.repos import fetcher_for, load_index
from copa.pkg.dpkg.status import entry_from_control
from copa.pkg.dpkg.version import compare_versions
from copa.report.model import Report


@dataclass(frozen=True)
class _Payload:
    db: DpkgDatabase
    chosen: tuple[Chosen, ...]
    records: tuple[PackageRecord, ...]  # the chosen versions' index records, in the same order


def _wanted(report: Report | None, installed: dict[str, Installed], index: RepositoryIndex) -> list[Wanted]:
    if report is not None:
        return [Wanted(p.name, p.fixed_version, p.vulnerability_ids) for p in report.packages]
    # No report: bring every installed package to the newest version the repositories have.
    out = []
    for name, inst in sorted(installed.items()):
        newest = max((r.version for r in index.versions(name)), default=None,
                     key=functools.cmp_to_key(compare_versions))
        if newest is not None and compare_versions(newest, inst.version) > 0:
            out.append(Wanted(name, newest))
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


class DpkgAdapter:
    name = "dpkg"

    def plan(self, ctx: ImageContext, report: Report | None) -> Plan:
        db = read_database(ctx.files, ctx.architecture, ctx.variant)
        installed = db.installed()
        index = load_index(ctx, db.architecture, _likely_names(installed, report).__contains__)
        wanted = _wanted(report, installed, index)
        resolution = resolve(installed, wanted, index.versions, db.architecture, compare_versions,
                             index.providers)
        check_failures(resolution.failures, ctx.ignore_errors)
        updates = tuple(
            Update(c.record.package, c.record.architecture, c.installed.version if c.installed else "",
                   c.record.version, c.kind, c.vulnerabilities)
            for c in resolution.chosen
        )
        skipped: tuple[Skip, ...] = resolution.skipped + resolution.failures
        records = tuple(c.record for c in resolution.chosen if isinstance(c.record, PackageRecord))
        return Plan(updates, skipped, _Payload(db, resolution.chosen, records))

    def build(self, ctx: ImageContext, plan: Plan) -> LayerContent:
        payload = plan.payload
        assert isinstance(payload, _Payload)
        db = payload.db
        paths = fetcher_for(ctx).fetch_all([deb_item(r) for r in payload.records])
        view = ctx.root
        names = [posixpath.basename(r.filename) for r in payload.records]
        old_files, old_info = self._old_state(ctx, db, payload.chosen)
        # xz/zstd/gzip decompression releases the GIL: unpack the .debs on every core.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            debs = list(pool.map(lambda i: read_deb(paths[i], ctx.workdir / "stage" / f"{i:04d}",
                                                    names[i]),
                                 range(len(paths))))
        unpacked: list[Unpacked] = []
        for chosen, contents in zip(payload.chosen, debs, strict=True):
            old = db.entry(chosen.installed.name) if chosen.installed else None
            name = chosen.record.package
            unpacked.append(Unpacked(contents, old, old_files.get(name, ()), old_info.get(name, ())))
        conffiles = self._current_conffiles(ctx, unpacked)
        mtime = max((f.mtime for u in unpacked for f in u.contents.files), default=0)
        layer = LayerPlan(view, mtime)
        status_entries = []
        updates = []
        for pkg, update in zip(unpacked, plan.updates, strict=True):
            recorded = install_package(layer, pkg, conffiles)
            status_entries.append((pkg, entry_from_control(pkg.contents.control, recorded)))
            updates.append(dataclasses.replace(update, scripts_note=scripts_note(pkg.contents)))
        database_entries(layer, db, status_entries)
        return LayerContent(tuple(layer.entries.values()), view.is_symlink, tuple(updates), default_mtime=mtime)

    def _old_state(
        self, ctx: ImageContext, db: DpkgDatabase, chosen: Sequence[Chosen]
    ) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
        """Per package: the paths its installed version owns, and its info/ file names."""
        files: dict[str, tuple[str, ...]] = {}
        info: dict[str, tuple[str, ...]] = {}
        stems: dict[str, str] = {}
        for c in chosen:
            entry = db.entry(c.installed.name) if c.installed else None
            if entry is None:
                continue
            stems[c.record.package] = info_name(entry.package, entry.multi_arch, entry.architecture)
        if db.distroless:
            for name in stems:
                file_name = db.status_d_name(name) or name
                md5 = db.md5sums_d.get(f"{file_name}.md5sums", b"")
                files[name] = tuple(line.split(None, 1)[1].strip() for line in md5.decode("utf-8", "replace")
                                    .splitlines() if len(line.split(None, 1)) == 2)
            return files, info
        for name, stem in stems.items():
            content = ctx.root.read(f"{INFO}/{stem}.list") or b""
            files[name] = tuple(p.lstrip("/") for p in content.decode("utf-8", "replace").splitlines()
                                if p.strip() and p != "/.")
            prefix = f"{INFO}/{stem}."
            info[name] = tuple(sorted(p[len(INFO) + 1:] for p in ctx.root.nodes if p.startswith(prefix)))
        return files, info

    def _current_conffiles(self, ctx: ImageContext, unpacked: Sequence[Unpacked]) -> dict[str, bytes | None]:
        """The image's current content of the conffiles of packages being upgraded (None: deleted)."""
        wanted = {p for u in unpacked if u.old is not None for p in conffile_paths(u.contents)}
        return {p: ctx.root.read(p) for p in wanted}

