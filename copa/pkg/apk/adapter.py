"""The apk adapter: Alpine, Wolfi and Chainguard images."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from copa.errors import IntegrityError, UnsupportedImageError
from copa.pkg.apk.apkfile import ApkContents, read_apk
from copa.pkg.apk.index import ApkRecord, Dependency, parse_dependency
from copa.pkg.apk.install import DB_DIRS, Installing, LayerPlan, database_entries, install_package
from copa.pkg.apk.installed import InstalledPackage, parse_installed
from copa.pkg.apk.inventory import apk_inventory, apk_scanner_purl
from copa.pkg.apk.plan import Chosen, Installed, Wanted, resolve
from copa.pkg.apk.repos import (
    Repository,
    apk_fetcher,
    image_arch,
    load_indexes,
    select_repositories,
    trusted_keys,
)
from copa.pkg.apk.signing import Keys
from copa.pkg.apk.version import compare_versions
from copa.pkg.base import ImageContext, LayerContent, Plan, Skip, Update, check_failures
from copa.pkg.fetch import Fetcher, inflight
from copa.pkg.inventory import InstalledPackage as InventoryPackage
from copa.report.model import OSInfo, Report


@dataclass(frozen=True)
class _Payload:
    packages: tuple[InstalledPackage, ...]
    chosen: tuple[Chosen, ...]
    arch: str
    repositories: tuple[Repository, ...]
    keys: Keys
    vouched: frozenset[str] = frozenset()  # URLs of the repositories whose index signature verified


def read_installed(ctx: ImageContext) -> list[InstalledPackage]:
    for d in DB_DIRS:
        data = ctx.root.read(f"{d}/installed")
        if data is not None:
            return parse_installed(data.decode("utf-8", "replace"), "/" + f"{d}/installed")
    raise UnsupportedImageError("image has no /lib/apk/db/installed; it is not an apk-based image")


WORLD = "etc/apk/world"


def read_world(ctx: ImageContext) -> tuple[Dependency, ...]:
    """/etc/apk/world: the image's top-level constraints (`zlib<1.3.2-r2`, `busybox=1.37.0-r30`, `curl@edge`).
    A word apk could not parse either is left out (apk reports it and goes on without it too)."""
    out = []
    for word in (ctx.root.read(WORLD) or b"").decode("utf-8", "replace").split():
        try:
            out.append(parse_dependency(word))
        except ValueError:
            continue
    return tuple(out)


def _wanted(report: Report | None, installed: dict[str, Installed], available: Sequence[ApkRecord],
            world: Sequence[Dependency] = ()) -> list[Wanted]:
    if report is not None:
        return [Wanted(p.name, p.fixed_version, p.vulnerability_ids) for p in report.packages]
    # Without a report, like `apk upgrade`: every package with a newer version the world allows moves, to the
    # newest one that fits (the oldest newer version is the least it must reach: a newest version that another new
    # version's upper bound excludes gives way, as in apk's solver).
    least: dict[str, str] = {}
    for r in available:
        if r.name not in installed or compare_versions(r.version, installed[r.name].version) <= 0:
            continue
        if any(d.name == r.name and d.op and not d.conflict and not d.matches(r.version) for d in world):
            continue
        if r.name not in least or compare_versions(r.version, least[r.name]) < 0:
            least[r.name] = r.version
    return [Wanted(n, v) for n, v in sorted(least.items())]


class ApkAdapter:
    name = "apk"

    def plan(self, ctx: ImageContext, report: Report | None) -> Plan:
        packages = read_installed(ctx)
        records = [p.record for p in packages]  # parsed from the header at each access: once each here
        installed = {r.name: Installed(r.name, r.version, r.origin, r.depends, r.provides, r.install_if)
                     for r in records}
        arch = image_arch(ctx)
        world = read_world(ctx)
        pinned = {p.field("s"): p.name for p in packages if p.field("s")}
        pinned.update({d.tag: d.name for d in world if d.tag})
        repos = select_repositories(ctx, arch, set(pinned))
        keys = trusted_keys(ctx)
        available: list[ApkRecord] = []
        vouched: set[str] = set()
        for repo, index in load_indexes(ctx, repos, keys, apk_fetcher(ctx, repos)):
            if index.signed_by:
                vouched.add(index.url)
            for r in index.records:
                if r.arch not in (arch, "noarch", ""):
                    continue
                # A tagged repository serves only the packages pinned to its tag.
                if repo.tag and pinned.get(repo.tag) != r.name and not any(
                        p.field("s") == repo.tag and p.name == r.name for p in packages) and not any(
                        d.tag == repo.tag and d.name == r.name for d in world):
                    continue
                available.append(r)
        resolution = resolve(installed, _wanted(report, installed, available, world), available, world)
        if report is not None:
            check_failures(resolution.failures, ctx.ignore_errors)
        # Without a report (`apk upgrade`), what cannot move (an installed package pins its version, and has no
        # newer build itself) is kept back, as apk keeps it: the summary lists it as skipped, with the reason.
        updates = tuple(
            Update(c.record.name, c.record.arch or arch, c.installed.version if c.installed else "",
                   c.record.version, c.kind, c.vulnerabilities, reason=c.reason)
            for c in resolution.chosen
        )
        skipped: tuple[Skip, ...] = resolution.skipped + resolution.failures
        payload = _Payload(tuple(packages), resolution.chosen, arch, tuple(repos), keys, frozenset(vouched))
        return Plan(updates, skipped, payload)

    def build(self, ctx: ImageContext, plan: Plan) -> LayerContent:
        payload = plan.payload
        assert isinstance(payload, _Payload)
        old = {p.name: p for p in payload.packages}
        contents = _download_and_read(ctx, payload)
        installing = [Installing(c.record, contents[i], old.get(c.record.name)) for i, c in enumerate(payload.chosen)]
        mtime = max((p.record.build_time for p in installing), default=0)
        layer = LayerPlan(ctx.root, mtime)
        for pkg in installing:
            install_package(layer, pkg)
        database_entries(layer, payload.packages, installing)
        # What the package scripts and triggers would have done (copa/pkg/effects); its entries win at their paths.
        # Imported here: only a build needs it, and a warm run (the layer taken from the cache) or a dry run does
        # not build (about 10 ms of imports: the CA bundle, ld.so.cache, alternatives and ELF readers).
        from copa.pkg.effects import Package, apply, note

        outcome = apply(layer.entries, ctx.root, [Package(p.record.name, p.old.version if p.old else "",
                                                          p.record.version, p.contents.scripts,
                                                          tuple(p.contents.pkginfo.get("triggers", ())))
                                                  for p in installing], "apk", payload.arch, mtime)
        updates = [dataclasses.replace(u, scripts_note=note(outcome, u.name)) for u in plan.updates]
        return LayerContent(tuple(layer.entries.values()), ctx.root.is_symlink, tuple(updates), default_mtime=mtime)

    def inventory(self, ctx: ImageContext, plan: Plan) -> tuple[InventoryPackage, ...]:
        payload = plan.payload
        assert isinstance(payload, _Payload)
        return apk_inventory(ctx.os_release, [p.record for p in payload.packages], plan.updates,
                             [c.record for c in payload.chosen], payload.arch)

    def purl(self, ctx: ImageContext, name: str, version: str, architecture: str,
             scanned_os: OSInfo | None = None) -> str:
        if scanned_os is not None and scanned_os.family:
            return apk_scanner_purl(scanned_os.family, scanned_os.version, name, version, architecture)
        return apk_scanner_purl(ctx.os_release.id, ctx.os_release.version_id, name, version, architecture)


def _download_and_read(ctx: ImageContext, payload: _Payload) -> list[ApkContents]:
    """Every chosen package downloaded and read (verified), in the plan's order. Each read starts as soon as its
    download lands, biggest first, on every core (inflate and hashing release the GIL) while the rest download; the
    first failure in plan order is raised once every worker has finished."""
    fetcher = apk_fetcher(ctx, payload.repositories)
    repos = {r.url: r for r in payload.repositories}
    records = [c.record for c in payload.chosen]
    # apk treats I:0 as a virtual package: it neither fetches nor unpacks it (apk_db_pkg_add marks it cached; no
    # .PKGINFO is read), records it with no files, and the old version's files go.
    real = sorted((i for i, r in enumerate(records) if r.installed_size != 0), key=lambda i: -records[i].size)

    def download(i: int) -> Path:
        record = records[i]
        url = repos[record.repository].package_url(payload.arch, record.filename)
        return fetch_apk(fetcher, url, record, package_what(record))

    with ThreadPoolExecutor(max_workers=fetcher.workers, thread_name_prefix="copa-fetch") as fetch_pool, \
            ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="copa-unpack") as read_pool:
        fetched = {i: fetch_pool.submit(download, i) for i in real}

        def read(i: int) -> ApkContents:
            return read_apk(fetched[i].result(), ctx.workdir / "apk-stage" / f"{i:04d}", payload.keys,
                            expected=records[i].checksum, require_signature=False, what=package_what(records[i]),
                            vouched=records[i].repository in payload.vouched)

        reads = {i: read_pool.submit(read, i) for i in real}
    return [reads[i].result() if i in reads else ApkContents(r.identity, {}, {}, (), "") for i, r in enumerate(records)]


def package_what(record: ApkRecord) -> str:
    return f"{record.name}-{record.version}.apk"


def fetch_apk(fetcher: Fetcher, url: str, record: ApkRecord, what: str) -> Path:
    """The package file in the cache (keyed by its identity; the caller verifies it against C:). A download of it
    under way (the early download's, copa.pkg.apk.prefetch) is waited for, not repeated."""
    ident = record.identity.hex()
    final = fetcher.cache.named(f"apk/{ident}.apk")
    if final.is_file() and (not record.size or final.stat().st_size == record.size):
        return final
    with inflight(f"apk/{ident}"):
        if final.is_file() and (not record.size or final.stat().st_size == record.size):
            return final
        return _download_apk(fetcher, url, record, what, final)


def _download_apk(fetcher: Fetcher, url: str, record: ApkRecord, what: str, final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)

    def consume(stream: BinaryIO) -> Path:
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".tmp-")
        try:
            count = 0
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(1 << 20):
                    count += len(chunk)
                    if record.size and count > record.size:
                        raise IntegrityError(f"{what}: larger than the index's {record.size} bytes; the source "
                                             "is corrupt")
                    out.write(chunk)
            if record.size and count != record.size:
                raise IntegrityError(f"{what}: got {count} bytes, the index says {record.size}; the download is "
                                     "truncated")
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return final

    # The shared fetcher's retry loop (transient failures only); verification happens when the file is read.
    return fetcher._with_retries(url, what, consume)


