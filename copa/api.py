"""The library entry point: `copa.api.patch(...)`; the CLI is a thin layer over it."""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from copa.errors import ReportError
from copa.oci.image import Bundle, Image, is_docker, resolve_platform
from copa.oci.layer import Compression, write_layer
from copa.oci.model import Index, Manifest, Platform
from copa.oci.mutate import Original, append_layer, original_of
from copa.oci.registry import RegistryClient, RegistryOptions
from copa.oci.rootfs import Files, scan
from copa.oci.transport import Opened, Written, open_image, plan_outputs, write_outputs
from copa.pkg.base import ImageContext, LayerContent, OSRelease, RepositoryOptions, Skip, Update
from copa.pkg.detect import CAPTURE, CAPTURE_LARGE, PREFETCH_WATCH, EarlyDownloads, adapter_for, detect
from copa.pkg.fetch import make_fetcher
from copa.report.load import load_report
from copa.report.model import Report

Progress = Callable[[str], None]

DEFAULT_PLATFORM = Platform("linux", "amd64")

# Report OS families that name the same package world as an image's os-release ID.
_FAMILY_ALIASES = {
    "debian": {"debian"},
    "ubuntu": {"ubuntu"},
    "alpine": {"alpine"},
    "wolfi": {"wolfi", "chainguard"},
    "chainguard": {"wolfi", "chainguard"},
    "cbl-mariner": {"mariner", "cbl-mariner"},
    "azurelinux": {"azurelinux"},
    # Trivy's RPM families: "redhat" is RHEL and UBI only (CentOS, Rocky, Alma... are reported as themselves).
    "redhat": {"rhel"},
    "centos": {"centos"},
    "rocky": {"rocky"},
    "alma": {"almalinux"},
    "oracle": {"ol"},
    "amazon": {"amzn"},
    "fedora": {"fedora"},
}


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
    eol_api_url: str = "https://endoflife.date/api"
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


def _created() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = datetime.fromtimestamp(int(epoch), UTC) if epoch and epoch.isdigit() else datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


_KNOWN_IDS = frozenset(i for ids in _FAMILY_ALIASES.values() for i in ids)
# Families whose VERSION_ID names a release by major.minor (alpine 3.21, ubuntu 22.04); others by the major alone.
_MINOR_MATTERS = frozenset({"alpine", "ubuntu"})
# Rolling distributions: the version is a date or build number, not a release.
_ROLLING = frozenset({"wolfi", "chainguard"})


def _release(version: str, parts: int) -> str | None:
    """'12.5' -> '12', '3.21.0' -> '3.21' (parts=2), '2 (Karoo)' -> '2'; None when the version does not start
    with a number. Trivy names Amazon Linux 1 "AMI release 2018.03": the words before the number go."""
    m = re.match(r"\d+(?:\.\d+)*", version.strip().removeprefix("AMI release "))
    if m is None:
        return None
    return ".".join(m.group(0).split(".")[:parts])


def _check_report(report: Report, os_release: OSRelease) -> None:
    """The report must be for this image's distribution and release: a Debian report applied to Ubuntu, or a
    bookworm report to bullseye, names versions from another package world."""
    family = report.os.family.lower()
    accepted = _FAMILY_ALIASES.get(family, {family})
    # ID_LIKE only speaks for a derivative we do not know by its own ID (ubuntu is ID_LIKE=debian, but not Debian).
    ids = {os_release.id} if os_release.id in _KNOWN_IDS else set(os_release.families)
    if not accepted & ids:
        raise ReportError(
            f"report is for {report.os.family} {report.os.version} but the image is "
            f"{os_release.pretty_name}; scan this image and pass that report"
        )
    if family in _ROLLING or os_release.id not in accepted:
        return
    parts = 2 if family in _MINOR_MATTERS else 1
    wanted, actual = _release(report.os.version, parts), _release(os_release.version_id, parts)
    if wanted is not None and actual is not None and wanted != actual:
        raise ReportError(
            f"report is for {report.os.family} {report.os.version} but the image is {os_release.pretty_name} "
            f"(VERSION_ID {os_release.version_id}); scan this image and pass that report"
        )


def _platform(options: PatchOptions, report: Report | None) -> Platform:
    if options.platform:
        return Platform.parse(options.platform)
    if options.platforms:
        return Platform.parse(options.platforms[0])
    if report is not None and report.arch:
        # A report may name the variant with the architecture (arm/v7); without one, resolve_platform prefers
        # the variant-less or usual entry over an arbitrary first variant.
        arch, _, variant = report.arch.partition("/")
        return Platform("linux", arch, variant)
    return DEFAULT_PLATFORM


def patch(options: PatchOptions, progress: Progress = lambda _m: None) -> PatchResult:
    started = time.monotonic()
    compression = Compression.parse(options.compression)
    report = load_report(options.report) if options.report else None
    registry_options = RegistryOptions(
        insecure=frozenset(options.insecure), ca_bundle=options.ca_bundle, timeout=options.timeout
    )
    with RegistryClient(registry_options) as client:
        return _patch(options, progress, client, compression, report, started)


def _patch(options: PatchOptions, progress: Progress, client: RegistryClient, compression: Compression,
           report: Report | None, started: float) -> PatchResult:
    opened = open_image(options.image, client)
    outputs = None if options.dry_run else plan_outputs(
        opened, options.tag, options.tag_suffix, options.push, options.oci_dir, options.output_tar
    )
    progress(f"reading {opened.name}")
    root = opened.source.root()
    manifest, _platform_found = resolve_platform(opened.source, root, _platform(options, report))
    image = Image.load(opened.source, manifest)
    # Refuse a compression the image's format cannot carry (zstd in Docker v2s2) before any package work.
    compression.media_type(is_docker(image.manifest.media_type))
    original = original_of(image, opened.name)
    if original.layers != len(image.layers):
        progress(f"image was patched before; patching its original ({original.base_reference}) again")
    progress("reading the image's files")
    # Repository indexes start downloading as soon as the base layer's /etc has been read (see detect.EarlyDownloads).
    prefetch = EarlyDownloads(options.repos, image.config.architecture or "amd64", image.config.variant,
                             make_fetcher(Path(options.cache_dir) if options.cache_dir else None, options.timeout,
                                          options.ca_bundle))
    try:
        root_view = scan(image, original.layers, CAPTURE, early=(PREFETCH_WATCH, prefetch.start), large=CAPTURE_LARGE)
    finally:
        prefetch.join()
    detected = detect(root_view)
    adapter = adapter_for(detected)
    with tempfile.TemporaryDirectory(prefix="copa-") as tmp:
        ctx = ImageContext(
            image=image,
            layers=original.layers,
            os_release=detected.os_release,
            architecture=image.config.architecture or "amd64",
            variant=image.config.variant,
            workdir=Path(tmp),
            repos=options.repos,
            files=Files(root_view.contents),
            root=root_view,
            ignore_errors=options.ignore_errors,
            allow_remove=options.allow_remove,
            cache_dir=Path(options.cache_dir) if options.cache_dir else None,
            timeout=options.timeout,
            ca_bundle=options.ca_bundle,
        )
        if report is not None:
            _check_report(report, ctx.os_release)
        progress(f"planning updates for {detected.os_release.pretty_name} ({adapter.name})")
        plan = adapter.plan(ctx, report)
        unfixed = len(report.unfixed) if report is not None else 0

        def result(written: tuple[Written, ...], updates: tuple[Update, ...]) -> PatchResult:
            # The summary names the registry image when one was pushed, else the first sink written.
            main = next((w for w in written if w.kind == "registry"), written[0] if written else None)
            return PatchResult(opened.name, main.target if main else None, str(main.digest) if main else None,
                               detected.os_release.pretty_name, updates, plan.skipped, unfixed, not plan.updates,
                               options.dry_run, time.monotonic() - started, written)

        if not plan.updates or options.dry_run or outputs is None:
            return result((), plan.updates)
        progress(f"building the patch layer ({len(plan.updates)} packages)")
        content = adapter.build(ctx, plan)
        bundle = _bundle(opened, root, image, original, content, compression, Path(tmp))
        pushed = outputs.reference if outputs.push else None
        progress("writing " + ", ".join(
            str(x) for x in (pushed, outputs.oci_dir, outputs.output_tar) if x is not None
        ))
        return result(write_outputs(outputs, bundle, client), content.updates or plan.updates)


def _bundle(opened: Opened, root: Manifest | Index, image: Image, original: Original, content: LayerContent,
            compression: Compression, workdir: Path) -> Bundle:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    layer = write_layer(
        content.entries,
        workdir,
        compression=compression,
        docker=is_docker(image.manifest.media_type),
        default_mtime=content.default_mtime,
        clamp_mtime=int(epoch) if epoch and epoch.isdigit() else None,
        is_base_symlink=content.is_base_symlink,
    )
    names = ", ".join(f"{u.name} {u.new_version or '(removed)'}" for u in content.updates[:20])
    if len(content.updates) > 20:
        names += f" and {len(content.updates) - 20} more"
    bundle = append_layer(opened.source, root, image, layer, original, created=_created(), comment=names)
    return dataclasses.replace(bundle, mount_from=opened.reference)
