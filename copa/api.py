"""The library entry point: `copa.api.patch(...)`; the CLI is a thin layer over it."""

from __future__ import annotations

import dataclasses
import importlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from copa import events
from copa.errors import CopaError, UnsupportedImageError, UsageError
from copa.oci.model import Index, Manifest
from copa.oci.reference import Reference
from copa.oci.registry import CheckedAhead, RegistryClient, RegistryOptions, StreamedUpload
from copa.oci.transport import Opened, Outputs, Written, check_tag, open_image, plan_outputs, write_outputs
from copa.pkg.options import RepositoryOptions
from copa.scratch import Removals, scratch_dir
from copa.targets import Reports, Target, platform_tag, read_reports, select

# At the top: only what a patch needs up to its first registry request (the options, the reports, the registry
# client). The engine (layer codecs, the layer scan and cache, package detection and fetching, mutate, the SBOM,
# VEX, referrers, end-of-life and loader modules) is imported where it is used, once that request is made: a run
# that fails at the registry, or a --dry-run, does not pay for what it never uses. `_import_engine` loads it in the
# calling thread before platforms are patched in worker threads.
if TYPE_CHECKING:
    from copa.oci.compression import Compression
    from copa.oci.digest import Digest
    from copa.oci.image import Image
    from copa.oci.layer import LayerBlob
    from copa.oci.mutate import Original, Patched
    from copa.pkg.base import ImageContext, OSRelease, PackageManager, Plan, Skip, Update
    from copa.pkg.cache import Cache
    from copa.pkg.inventory import InstalledPackage
    from copa.vex import VexFix

Progress = Callable[[str], None]
# Where a patch layer is uploaded while it is written: the client and the repository pushed to (None: not pushed).
StreamTo = tuple[RegistryClient, Reference] | None

@dataclass(frozen=True)
class PatchOptions:
    image: str
    report: str | None = None
    tag: str | None = None
    tag_suffix: str = "patched"
    push: bool = False
    oci_dir: str | None = None
    output_tar: str | None = None
    platform: str | None = None  # one platform (the library's older spelling of `platforms`)
    # --platform, each OS/ARCH[/VARIANT]: the platforms of an index to patch (empty: all of them, or the reports')
    platforms: tuple[str, ...] = ()
    scanner: str | None = None  # -s: trivy|grype|native (read by content) or a plugin NAME (copa-NAME)
    vex_output: str | None = None  # -o: write an OpenVEX document of the fixes here
    attach: bool = False  # --attach: push OpenVEX and an SBOM as OCI referrers of each patched manifest
    loader: str | None = None  # -l: podman or docker, load the result into that local image store
    exit_on_eol: bool = False  # --exit-on-eol: refuse an image whose OS release is past its end of life
    eol_api_url: str = "https://endoflife.date/api/v1/products"
    client_cert: str | None = None  # --cert/--key: registry TLS client certificate
    client_key: str | None = None
    ignore_errors: bool = False
    allow_remove: bool = False
    timeout: float = 300.0
    insecure: tuple[str, ...] = ()
    ca_bundle: str | None = None
    compression: str = "gzip"
    dry_run: bool = False
    repos: RepositoryOptions = field(default_factory=RepositoryOptions)
    cache_dir: str | None = None
    # With dry_run: plan the image as it is, a previous copa patch layer included, rather than its original again
    # (copa bulk asks whether a patched tag has anything left to fix).
    as_is: bool = False


@dataclass(frozen=True)
class PatchResult:
    image: str
    target: str | None
    digest: str | None
    os: str
    updates: tuple[Update, ...]
    skipped: tuple[Skip, ...]
    unfixed: int  # report entries with no fixed version
    up_to_date: bool
    dry_run: bool
    seconds: float
    # Every sink written, each with its own digest: a layout stores a Docker image's manifests as OCI ones
    # (another digest), and a docker-archive's digest is the image ID.
    outputs: tuple[Written, ...] = ()
    # A multi-platform image: each platform's outcome (empty for a single image).
    platforms: tuple[PlatformResult, ...] = ()


@dataclass(frozen=True)
class PlatformResult:
    platform: str  # OS/ARCH[/VARIANT]
    result: str  # "patched", "planned" (--dry-run), "up-to-date", "kept" (not patchable), "failed" (--ignore-errors)
    os: str = ""
    updates: tuple[Update, ...] = ()
    skipped: tuple[Skip, ...] = ()
    unfixed: int = 0
    detail: str = ""  # why kept or failed
    digest: str | None = None  # the patched image's manifest digest, once written
    tag: str | None = None  # REPOSITORY:TAG-ARCH[-VARIANT], when pushed


def _created() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = datetime.fromtimestamp(int(epoch), UTC) if epoch and epoch.isdigit() else datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def registry_options(options: PatchOptions) -> RegistryOptions:
    return RegistryOptions(
        insecure=frozenset(options.insecure), ca_bundle=options.ca_bundle, timeout=options.timeout,
        client_cert=options.client_cert, client_key=options.client_key,
    )


def patch(options: PatchOptions, progress: Progress = lambda _m: None, *,
          client: RegistryClient | None = None) -> PatchResult:
    """Patch one image (every platform of an index that is asked for). `client` lets a caller that patches many
    images (copa bulk) keep one registry client, its connections and tokens, across them; it is not closed."""
    from copa.oci.compression import Compression

    started = time.monotonic()
    compression = Compression.parse(options.compression)
    if options.vex_output:  # before any network or package work
        from copa import vex

        if options.dry_run:
            raise UsageError("-o writes the OpenVEX document of a patched image; drop --dry-run or -o")
        vex.check_writable(Path(options.vex_output))
    reports = read_reports(options.report, options.scanner, options.timeout)
    if client is not None:
        return _patch(options, progress, client, compression, reports, started)
    with RegistryClient(registry_options(options)) as own:
        return _patch(options, progress, own, compression, reports, started)


def _import_engine(options: PatchOptions) -> None:
    """Load the modules a patch uses after its first request, in the calling thread: platforms are patched in worker
    threads, and imports made there would be slower (and, with import cycles, could deadlock on the import locks)."""
    for name in (*_ENGINE, *(("copa.eol",) if options.exit_on_eol else ()),
                 *(("copa.vex",) if options.vex_output or options.attach else ())):
        importlib.import_module(name)


_ENGINE = ("concurrent.futures", "copa.oci.image", "copa.oci.layer", "copa.oci.layercache", "copa.oci.layerstore",
           "copa.oci.mutate", "copa.oci.rootfs", "copa.pkg.base", "copa.pkg.cache", "copa.pkg.detect",
           "copa.pkg.fetch", "copa.report.match")


@dataclass(frozen=True)
class _Done:
    """One image's patch, before anything is written."""

    target: Target
    result: str  # "patched", "up-to-date", "kept" (not patchable, not asked for), "failed" (--ignore-errors)
    os: str = ""
    updates: tuple[Update, ...] = ()
    skipped: tuple[Skip, ...] = ()
    unfixed: int = 0
    detail: str = ""
    patched: Patched | None = None
    # What -o and --attach publish about a patched image: the vulnerabilities fixed (with the package URLs a
    # scanner names them by), the package inventory after the patch (the SBOM), and the image's OS.
    fixes: tuple[VexFix, ...] = ()
    inventory: tuple[InstalledPackage, ...] = ()
    os_release: OSRelease | None = None
    # The patch layer's digest and its upload started while it was written (the push closes that session).
    streamed: tuple[Digest, Callable[[], str | None]] | None = None
    # Whether the push target holds this image's base layers, asked while it was patched (the push waits for it).
    checked: CheckedAhead | None = None


def _patch(options: PatchOptions, progress: Progress, client: RegistryClient, compression: Compression,
           reports: Reports, started: float) -> PatchResult:
    opened = open_image(options.image, client)
    root = opened.source.root()
    _import_engine(options)
    from copa.oci.layerstore import BlobHomes
    from copa.oci.mutate import assemble

    targets = select(opened, root, ((options.platform,) if options.platform else ()) + options.platforms,
                     reports)
    multi = isinstance(root, Index)
    if options.output_tar and len(targets) > 1:
        raise UsageError(f"--output-tar holds one image but {len(targets)} platforms are to be patched; pass "
                         "--platform with one of them, or write them all with --push or --oci-dir")
    outputs = None if options.dry_run else plan_outputs(
        opened, options.tag, options.tag_suffix, options.push, options.oci_dir, options.output_tar, options.loader
    )
    if outputs is not None and outputs.loader is not None:
        from copa.oci.loaders import check_available  # only with -l: it loads subprocess and the archive writer

        check_available(outputs.loader, timeout=options.timeout)
    # (Removals inside the directory's `with`: the staging directories it removes are in it.)
    with tempfile.TemporaryDirectory(prefix="copa-") as tmp, Removals() as removals:
        # A patch layer bound for a registry goes up while it is written (copa.oci.registry.StreamedUpload).
        stream_to = (client, outputs.reference) if outputs is not None and outputs.push and outputs.reference else None
        done = _patch_all(opened, targets, options, compression, Path(tmp), progress, multi, stream_to, removals)
        patched = [d.patched for d in done if d.patched is not None]
        written: tuple[Written, ...] = ()
        child_tags: list[tuple[str, Manifest]] = []
        if patched and outputs is not None:
            # Copacetic's multi-platform mode (an index patched without a report, or from a report directory)
            # names each patched platform TAG-ARCH[-VARIANT] besides the index's TAG; with one report file it
            # patches one platform, named just TAG.
            if (multi and reports.single is None and outputs.reference is not None and outputs.reference.tag
                    and (outputs.push or outputs.loader)):
                for d in done:
                    if d.patched is not None and d.target.platform is not None:
                        tag = platform_tag(outputs.reference.tag, d.target.platform)
                        check_tag(tag, "per-platform tag")
                        child_tags.append((tag, d.patched.manifest))
            bundle = assemble(opened.source, root, patched, created=_created(), child_tags=child_tags)
            checks = [d.checked for d in done if d.checked is not None]
            bundle = dataclasses.replace(bundle, mount_from=opened.reference,
                                         streamed={d.streamed[0]: d.streamed[1] for d in done if d.streamed},
                                         checked=lambda: {k: v for c in checks for k, v in c.answers().items()})
            progress("writing " + ", ".join(
                str(x) for x in (outputs.reference if outputs.push else None, outputs.oci_dir, outputs.output_tar,
                                 outputs.loader) if x is not None
            ))
            # Blobs this cache's runs pushed before are mounted from the repository that holds them, not uploaded
            # again: a sweep pushes each patch layer to a registry once.
            written = write_outputs(outputs, bundle, client, Path(tmp), options.timeout,
                                    BlobHomes(_cache(options).root))
            _publish(options, opened, outputs, bundle.root, done, client, progress)
        return _result(opened, options, done, written, dict(child_tags), root, started)


def _publish(options: PatchOptions, opened: Opened, outputs: Outputs, root: Manifest | Index, done: list[_Done],
             client: RegistryClient, progress: Progress) -> None:
    """-o: the OpenVEX document of every patched image; --attach: each patched manifest's SBOM and VEX pushed as
    OCI referrers of it (after the image itself is in place)."""
    if not (options.vex_output or options.attach):
        return
    from copa import sbom, vex
    from copa.oci import referrers

    # An image from a layout or archive, written to one, has no registry: its purl names it by its ref name alone.
    repository = outputs.reference or opened.reference or Reference("", opened.tag or outputs.tag or "image")
    patched = [d for d in done if d.patched is not None]
    products = []
    for d in patched:
        assert d.patched is not None
        products.append(vex.VexProduct(vex.image_purl(repository, d.patched.manifest.digest, d.target.platform),
                                       d.fixes))
        if isinstance(root, Index):
            # A scanner given the tag names the image by the index's digest and the platform's architecture.
            products.append(vex.VexProduct(vex.image_purl(repository, root.digest, d.target.platform), d.fixes))
    document = vex.document_for(products)
    if options.vex_output and document is not None:
        vex.write_document(Path(options.vex_output), document)
        progress(f"wrote the OpenVEX document {options.vex_output}")
    if not (options.attach and outputs.push and outputs.reference is not None):
        return
    for d in patched:
        assert d.patched is not None and d.os_release is not None
        subject = d.patched.manifest.descriptor()
        created = {"org.opencontainers.image.created": vex.timestamp()}
        sbom_doc = sbom.sbom_for(outputs.reference, subject.digest, d.target.platform, d.os_release, d.inventory)
        # One subject's artifacts in turn: two writers of one fallback tag could lose an update.
        referrers.attach(client, outputs.reference, subject, referrers.CYCLONEDX, sbom.to_bytes(sbom_doc),
                         referrers.CYCLONEDX, created)
        own = vex.document_for([vex.VexProduct(vex.image_purl(outputs.reference, subject.digest, d.target.platform),
                                               d.fixes)])
        if own is not None:
            referrers.attach(client, outputs.reference, subject, referrers.OPENVEX, vex.to_bytes(own),
                             referrers.OPENVEX, created)
        progress(f"attached an SBOM{' and OpenVEX' if own is not None else ''} to {subject.digest}")


def _result(opened: Opened, options: PatchOptions, done: list[_Done], written: tuple[Written, ...],
            tags: dict[str, Manifest], root: Manifest | Index, started: float) -> PatchResult:
    from copa.oci.image import platform_entries

    # The summary names the registry image when one was pushed, else the first sink written.
    main = next((w for w in written if w.kind == "registry"), written[0] if written else None)
    by_digest = {m.digest: t for t, m in tags.items()}
    reference = next((w.target for w in written if w.kind == "registry"), None)

    def outcome(d: _Done) -> PlatformResult:
        if d.patched is not None:
            digest = str(d.patched.manifest.digest) if written else None
        else:
            # Kept as it was (up to date, not patchable, failed): the index still names its original manifest.
            digest = None if d.result == "planned" else str(d.target.manifest.digest)
        tag = (f"{reference.rsplit(':', 1)[0]}:{by_digest[d.patched.manifest.digest]}"
               if reference and d.patched is not None and d.patched.manifest.digest in by_digest else None)
        return PlatformResult(platform=str(d.target.platform), result=d.result, os=d.os, updates=d.updates,
                              skipped=d.skipped, unfixed=d.unfixed, detail=d.detail, digest=digest, tag=tag)

    platforms: tuple[PlatformResult, ...] = ()
    if isinstance(root, Index):
        # Every platform of the index, in its order: those not asked for are kept by digest.
        by_manifest = {d.target.manifest.digest: d for d in done}
        listed: list[PlatformResult] = []
        for platform, entry in platform_entries(opened.source, root):
            if platform.os == "unknown":
                continue  # attestations are not platforms
            d = by_manifest.pop(entry.digest, None)
            listed.append(outcome(d) if d is not None else PlatformResult(
                str(platform), "kept", detail="not asked for", digest=str(entry.digest)))
        listed.extend(outcome(d) for d in by_manifest.values())
        platforms = tuple(listed)
    first = next((d for d in done if d.result == "patched"), done[0])
    return PatchResult(
        image=opened.name,
        target=main.target if main else None,
        digest=str(main.digest) if main else None,
        os=first.os,
        updates=tuple(u for d in done for u in d.updates),
        skipped=tuple(s for d in done for s in d.skipped),
        unfixed=sum(d.unfixed for d in done),
        up_to_date=not any(d.updates for d in done),
        dry_run=options.dry_run,
        seconds=time.monotonic() - started,
        outputs=written,
        platforms=platforms,
    )


def _patch_all(opened: Opened, targets: list[Target], options: PatchOptions, compression: Compression,
               tmp: Path, progress: Progress, multi: bool, stream_to: StreamTo = None,
               removals: Removals | None = None) -> list[_Done]:
    """Patch each target; several at once (threads: most of the time is I/O and inflating, which release the
    GIL). At most three at a time bounds memory: each holds its image's package database and captured files."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int, target: Target) -> _Done:
        workdir = tmp / f"p{i}"
        workdir.mkdir()
        try:
            # Progress of each platform (its steps, downloads, layers) is labelled with it, from every thread.
            with events.scope(str(target.platform) if multi else None):
                return _patch_one(opened, target, options, compression, workdir, progress, stream_to, removals)
        except UnsupportedImageError as e:
            if target.explicit:
                raise
            # Every platform was asked for; one that is no OS copa knows (scratch, an unknown family) is kept.
            return _Done(target, "kept", detail=str(e))
        except CopaError as e:
            if not (multi and options.ignore_errors):
                raise
            return _Done(target, "failed", detail=str(e))

    if len(targets) == 1:
        return [one(0, targets[0])]
    workers = min(len(targets), 3, max(1, os.cpu_count() or 1) + 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="copa-platform") as pool:
        futures = [pool.submit(one, i, t) for i, t in enumerate(targets)]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _patch_one(opened: Opened, target: Target, options: PatchOptions, compression: Compression, workdir: Path,
               progress: Progress, stream_to: StreamTo = None, removals: Removals | None = None) -> _Done:
    # (Loaded by _import_engine in the thread that started the patch: here they are look-ups.)
    from copa.oci.image import Image, is_docker
    from copa.oci.layercache import LayerCache
    from copa.oci.mutate import Original, original_of
    from copa.oci.rootfs import Files, scan
    from copa.pkg.base import ImageContext, PrefetchHints
    from copa.pkg.detect import CAPTURE, CAPTURE_LARGE, PREFETCH_WATCH, EarlyDownloads, adapter_for, detect
    from copa.pkg.fetch import make_fetcher
    from copa.report.match import check_report

    image = Image.load(opened.source, target.manifest)
    # Refuse a compression the image's format cannot carry (zstd in Docker v2s2) before any package work.
    compression.media_type(is_docker(image.manifest.media_type))
    original = original_of(image, opened.name)
    if options.as_is:
        original = Original(len(image.layers), len(image.config.history), opened.name)
    if original.layers != len(image.layers):
        progress(f"image was patched before; patching its original ({original.base_reference}) again")
    progress("reading the image's files")
    # Repository indexes start downloading as soon as the base layer's /etc has been read (see detect.EarlyDownloads).
    # With a report, the family's prefetch also reads the named packages' newest versions ahead (on the core the
    # scan leaves idle); a dry run builds no layer, so it reads nothing ahead.
    reported = target.report.packages if target.report is not None and not options.dry_run else ()
    hints = PrefetchHints(tuple(p.name for p in reported), workdir,
                          tuple((p.name, p.fixed_version) for p in reported if p.fixed_version), options.ignore_errors)
    prefetch = EarlyDownloads(options.repos, image.config.architecture or "amd64", image.config.variant,
                             make_fetcher(Path(options.cache_dir) if options.cache_dir else None, options.timeout,
                                          options.ca_bundle, options.repos), hints)
    checked: CheckedAhead | None = None
    handed_over = False
    try:
        if stream_to is not None:
            # Bound for a registry: whether it holds the layers the patched image keeps is asked now, not after the
            # build (copa.oci.registry.CheckedAhead).
            checked = CheckedAhead(stream_to[0], stream_to[1], opened.reference,
                                   [layer.descriptor for layer in image.layers[:original.layers]])
        try:
            # What each layer holds is recorded by its blob's digest: a second image on the same base reads only its
            # own layers.
            root_view = scan(image, original.layers, CAPTURE, early=(PREFETCH_WATCH, prefetch.start),
                             large=CAPTURE_LARGE, cache=LayerCache(_cache(options)))
        finally:
            prefetch.join()
        detected = detect(root_view)
        if options.exit_on_eol:
            _check_end_of_life(detected.os_release, options, progress)
        adapter = adapter_for(detected)
        report = target.report
        # The adapter's staged files are removed while the image is pushed (copa.scratch).
        with scratch_dir(workdir, "adapter-", removals) as adapter_tmp:
            ctx = ImageContext(
                image=image,
                layers=original.layers,
                os_release=detected.os_release,
                architecture=image.config.architecture or "amd64",
                variant=image.config.variant,
                workdir=Path(adapter_tmp),
                repos=options.repos,
                files=Files(root_view.contents),
                root=root_view,
                ignore_errors=options.ignore_errors,
                allow_remove=options.allow_remove,
                cache_dir=Path(options.cache_dir) if options.cache_dir else None,
                timeout=options.timeout,
                ca_bundle=options.ca_bundle,
                ahead=prefetch.ahead(detected.kind.name),
            )
            if report is not None:
                check_report(report, ctx.os_release)
            progress(f"planning updates for {detected.os_release.pretty_name} ({adapter.name})")
            plan = adapter.plan(ctx, report)
            unfixed = len(report.unfixed) if report is not None else 0
            os_name = detected.os_release.pretty_name
            if not plan.updates:
                return _Done(target, "up-to-date", os_name, (), plan.skipped, unfixed)
            if options.dry_run:
                return _Done(target, "planned", os_name, plan.updates, plan.skipped, unfixed)
            layer, updates, streamed = _patch_layer(image, original, adapter, ctx, plan, options, compression,
                                                    workdir, progress, stream_to)
            patched = _patched(image, original, layer, updates)
            scanned = report.os if report is not None else None
            fixes: tuple[VexFix, ...] = ()
            if options.vex_output or options.attach:
                from copa import vex

                fixes = vex.fixes_of(updates, lambda n, v, a: adapter.purl(ctx, n, v, a, scanned))
            inventory = adapter.inventory(ctx, plan) if options.attach else ()
            handed_over = True
            return _Done(target, "patched", os_name, updates, plan.skipped, unfixed, patched=patched, fixes=fixes,
                         streamed=(layer.digest, streamed.location) if streamed is not None else None,
                         inventory=inventory, os_release=detected.os_release, checked=checked)

    finally:
        prefetch.close()  # what it still reads ahead is not needed any more
        if checked is not None and not handed_over:
            checked.cancel()  # nothing of this image is pushed

def _check_end_of_life(os_release: OSRelease, options: PatchOptions, progress: Progress) -> None:
    """--exit-on-eol: asked whenever the flag is set (Copacetic asks only without a report; its docs say always).
    An API that does not answer is a warning, as in Copacetic: the flag must not make patching depend on it."""
    from copa.eol import check_end_of_life, eol_error

    status = check_end_of_life(os_release.id, os_release.version_id, options.eol_api_url, min(options.timeout, 10.0),
                               codename=os_release.version_codename, ca_bundle=options.ca_bundle)
    if status.warning:
        progress(status.warning)
    if status.is_eol:
        raise eol_error(status)


def _cache(options: PatchOptions) -> Cache:
    from copa.pkg.cache import Cache

    return Cache(Path(options.cache_dir) if options.cache_dir else None)


def _patch_layer(image: Image, original: Original, adapter: PackageManager, ctx: ImageContext, plan: Plan,
                 options: PatchOptions, compression: Compression, workdir: Path, progress: Progress,
                 stream_to: StreamTo = None) -> tuple[LayerBlob, tuple[Update, ...], StreamedUpload | None]:
    """The patch layer for `plan`: built once per identical input, then taken from the cache. The layer is
    deterministic, so the same original layers, the same updates, the same repositories and options and the same
    writer give the same bytes: the same image under many tags or repositories (a sweep) is built once."""
    from copa.oci.image import is_docker
    from copa.oci.layer import write_layer
    from copa.oci.layerstore import LayerStore, layer_key, writer_version

    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    docker = is_docker(image.manifest.media_type)
    key = layer_key(
        [layer.diff_id for layer in image.layers[:original.layers]],
        [(u.name, u.architecture, u.new_version) for u in plan.updates],
        compression=compression.value, docker=docker, source_date_epoch=epoch, writer_version=writer_version(),
        extra=[repr(options.repos), repr(options.allow_remove)],
    )
    store = LayerStore(_cache(options))
    found = store.get_with_extra(key)
    if found is not None:
        layer, extra = found
        notes = extra.get("notes", {}) if isinstance(extra, dict) else {}
        progress(f"the patch layer for these {len(plan.updates)} packages was built before; reusing {layer.digest}")
        return layer, tuple(dataclasses.replace(u, scripts_note=str(notes.get(f"{u.name}:{u.architecture}", "")))
                            for u in plan.updates), None
    progress(f"building the patch layer ({len(plan.updates)} packages)")
    content = adapter.build(ctx, plan)
    updates = content.updates or plan.updates
    streamed = StreamedUpload(*stream_to) if stream_to is not None else None
    layer = write_layer(
        content.entries,
        workdir,
        compression=compression,
        docker=docker,
        default_mtime=content.default_mtime,
        clamp_mtime=int(epoch) if epoch and epoch.isdigit() else None,
        is_base_symlink=content.is_base_symlink,
        watch=streamed,
    )
    notes = {f"{u.name}:{u.architecture}": u.scripts_note for u in updates if u.scripts_note}
    # Only a plan whose updates the build kept as they were is stored: its notes can then be put back on a hit.
    if [(u.name, u.architecture, u.new_version) for u in updates] == \
            [(u.name, u.architecture, u.new_version) for u in plan.updates]:
        layer = store.put(key, layer, {"notes": notes})
    return layer, updates, streamed


def _patched(image: Image, original: Original, layer: LayerBlob, updates: tuple[Update, ...]) -> Patched:
    from copa.oci.mutate import patched_image

    names = ", ".join(f"{u.name} {u.new_version or '(removed)'}" for u in updates[:20])
    if len(updates) > 20:
        names += f" and {len(updates) - 20} more"
    return patched_image(image, layer, original, created=_created(), comment=names)
