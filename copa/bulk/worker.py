"""What one job of a sweep does, wherever it runs: a local worker process or a Dask worker.

`run_job(job, template)` is the function every executor calls. It is a module-level function of plain, picklable
arguments (a Job and a PatchOptions), so a Dask worker needs nothing but copa installed; it never raises for a
failed job: every outcome, failure included, is a `JobResult`, so the scheduler sees one kind of answer.

Per worker process one RegistryClient is kept for each set of registry options (`_client`): connections and
bearer tokens are reused from job to job instead of being negotiated again for every image.

A job whose target tag already holds a patch of the same source with nothing left to fix is skipped
(`_already_patched`), cheapest check first: the target tag exists (one HEAD), its images were made from exactly
the source's layers (manifests and configs only), and a dry run of the target as it is (its patch layer included)
plans no update.

A job that runs past its deadline stops at its next step with a JobTimeoutError; the last step before the tag is
written is one of them, so a job reported as timed out never tags anything afterwards.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from copa.api import PatchOptions, PatchResult, patch, registry_options
from copa.bulk.job import Job
from copa.errors import CopaError, LocalIOError
from copa.oci.image import Image, platform_entries
from copa.oci.model import Manifest
from copa.oci.mutate import original_of
from copa.oci.reference import Reference
from copa.oci.registry import RegistryClient, RegistryOptions, RegistrySource, head_manifest

# Outcomes of a job. "planned": --dry-run found updates (nothing written). "cancelled": never started, because an
# earlier job failed without --ignore-errors.
PATCHED, PLANNED, UP_TO_DATE, SKIPPED = "patched", "planned", "up-to-date", "skipped"
FAILED, CANCELLED = "failed", "cancelled"
RESULTS = (PATCHED, PLANNED, UP_TO_DATE, SKIPPED, FAILED, CANCELLED)

# Per-job codes that are not copa's own: as timeout(1) and the shell report them.
TIMEOUT_CODE = 124
SIGNAL_BASE = 128


@dataclass(frozen=True, slots=True)
class JobResult:
    job: Job
    result: str  # one of RESULTS
    platforms: tuple[str, ...] = ()  # the platforms patched (an index), empty for a single image
    updates: int = 0  # packages updated (every platform counted)
    digest: str | None = None  # the written image's digest (the registry's when pushed)
    seconds: float = 0.0
    error: str = ""  # the one-line error of a failed job, or why a job was skipped
    exit_code: int = 0  # what `copa patch` alone would have exited with (0 unless failed)
    worker: str = ""  # which process ran it (host:pid), for the JSON record


class JobTimeoutError(CopaError):
    exit_code = TIMEOUT_CODE


_clients: dict[RegistryOptions, RegistryClient] = {}
_clients_lock = threading.Lock()


def _client(options: RegistryOptions) -> RegistryClient:
    """This process's client for `options`, made once and kept: a Dask worker runs many jobs, and each reuses the
    connections and tokens of the ones before."""
    with _clients_lock:
        client = _clients.get(options)
        if client is None:
            client = _clients[options] = RegistryClient(options)
        return client


def _worker_name() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"


def _deadline_progress(deadline: float, job: Job) -> Callable[[str], None]:
    def progress(_message: str) -> None:
        if time.monotonic() > deadline:
            raise JobTimeoutError(f"{job.source}: the job ran longer than --timeout; nothing was tagged")
    return progress


def job_options(job: Job, template: PatchOptions) -> PatchOptions:
    """The single-image options of `job`: what `copa patch -i SOURCE -t TARGET` with the sweep's flags would use."""
    return dataclasses.replace(template, image=job.source, tag=job.target, tag_suffix="patched",
                               platforms=job.platforms, platform=None, report=job.report, oci_dir=None,
                               output_tar=None, dry_run=False, as_is=False)


def run_job(job: Job, template: PatchOptions) -> JobResult:
    """Patch one image of the sweep with the sweep's options (`template`: its image, tag, report and platforms are
    the job's). `template.oci_dir`, when set, is one layout shared by the whole sweep: each image is named there
    by its full target reference."""
    started = time.monotonic()
    deadline = started + template.timeout
    progress = _deadline_progress(deadline, job)
    try:
        client = _client(registry_options(template))
        if template.push and not template.dry_run:
            why = _already_patched(job, template, client, progress)
            if why:
                return JobResult(job, SKIPPED, error=why, seconds=time.monotonic() - started, worker=_worker_name())
        options = job_options(job, template)
        if template.dry_run:
            options = dataclasses.replace(options, dry_run=True, push=False)
            result = patch(options, progress, client=client)
        elif template.oci_dir:
            result = _patch_into_layout(job, options, Path(template.oci_dir), progress, client)
        else:
            result = patch(options, progress, client=client)
        return _done(job, result, started)
    except CopaError as e:
        return JobResult(job, FAILED, error=str(e), exit_code=e.exit_code, seconds=time.monotonic() - started,
                         worker=_worker_name())
    except Exception as e:  # a bug in copa must cost one job, not the sweep; the summary names it
        return JobResult(job, FAILED, error=f"internal error: {type(e).__name__}: {e}", exit_code=1,
                         seconds=time.monotonic() - started, worker=_worker_name())


def _done(job: Job, result: PatchResult, started: float) -> JobResult:
    patched = tuple(p.platform for p in result.platforms if p.result in ("patched", "planned"))
    outcome = UP_TO_DATE if result.up_to_date else PLANNED if result.dry_run else PATCHED
    return JobResult(job, outcome, platforms=patched, updates=len(result.updates), digest=result.digest,
                     seconds=time.monotonic() - started, worker=_worker_name())


# ------------------------------------------------------------------------------------------------ skip check


def _already_patched(job: Job, template: PatchOptions, client: RegistryClient,
                     progress: Callable[[str], None]) -> str:
    """Why `job` need not run (its target already is a patch of its source with nothing left to fix), or ""."""
    target = Reference.parse(job.target)
    if head_manifest(client, target) is None:
        return ""
    source_layers = _original_layers(RegistrySource(client, Reference.parse(job.source)), job.source)
    target_layers = _original_layers(RegistrySource(client, target), job.target)
    if source_layers != target_layers:
        return ""  # the source was rebuilt (or the tag holds something else): patch it again
    dry = dataclasses.replace(job_options(job, template), image=job.target, tag=None, push=False, dry_run=True,
                              as_is=True)
    planned = patch(dry, progress, client=client)
    if not planned.up_to_date:
        return ""
    return f"{job.target} already patches this image; nothing left to fix"


def _original_layers(source: RegistrySource, name: str) -> frozenset[tuple[str, tuple[str, ...]]]:
    """Each image's platform and the diff_ids of its original layers (a copa patch layer on top left out)."""
    root = source.root()
    images: list[tuple[str, Manifest]] = []
    if isinstance(root, Manifest):
        images.append(("", root))
    else:
        for platform, desc in platform_entries(source, root):
            if platform.os in ("unknown", "windows"):
                continue  # attestations and Windows images: kept by digest, never patched
            doc = source.fetch_manifest(desc)
            if isinstance(doc, Manifest):
                images.append((str(platform), doc))
    out: set[tuple[str, tuple[str, ...]]] = set()
    for label, manifest in images:
        image = Image.load(source, manifest)
        kept = original_of(image, name).layers
        out.add((label, tuple(str(d) for d in image.config.diff_ids[:kept])))
    return frozenset(out)


# ------------------------------------------------------------------------------------------------ shared layout


def _patch_into_layout(job: Job, options: PatchOptions, layout: Path, progress: Callable[[str], None],
                       client: RegistryClient) -> PatchResult:
    """Patch into a private layout beside `layout`, then merge it in: blobs hard-linked (or copied), index.json
    rewritten under a lock, so jobs in several processes can share one layout without losing each other's entry.
    The image is named by its full target reference: tags alone repeat across repositories."""
    layout = layout.resolve()
    try:
        layout.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{layout.name}.job-", dir=layout.parent))
    except OSError as e:
        raise LocalIOError(f"cannot write next to OCI layout {layout}: {e.strerror or e}; check the path") from None
    try:
        tag = Reference.parse(job.target).tag or "latest"
        result = patch(dataclasses.replace(options, oci_dir=str(staging / "layout")), progress, client=client)
        if result.up_to_date:
            return result
        written = next((w for w in result.outputs if w.kind == "oci-dir"), None)
        if written is None:
            return result
        _merge_layout(staging / "layout", tag, layout, job.target)
        return dataclasses.replace(result, outputs=tuple(
            dataclasses.replace(w, target=f"oci:{layout}:{job.target}") if w.kind == "oci-dir" else w
            for w in result.outputs
        ))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _merge_layout(staged: Path, staged_name: str, layout: Path, name: str) -> None:
    try:
        blobs = layout / "blobs" / "sha256"
        blobs.mkdir(parents=True, exist_ok=True)
        for blob in (staged / "blobs" / "sha256").iterdir():
            final = blobs / blob.name
            if final.exists():
                continue  # content-addressed: an existing blob is this blob
            tmp = blobs / f".{blob.name}.{os.getpid()}.tmp"
            try:
                os.link(blob, tmp)
            except OSError:
                shutil.copyfile(blob, tmp)
            os.replace(tmp, final)
        entries: list[Any] = _read_json(staged / "index.json")["manifests"]
        entry = next(e for e in entries
                     if (e.get("annotations") or {}).get("org.opencontainers.image.ref.name") == staged_name)
        entry["annotations"]["org.opencontainers.image.ref.name"] = name
        with open(layout.parent / f".{layout.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (layout / "oci-layout").exists():
                _write_atomic(layout / "oci-layout", {"imageLayoutVersion": "1.0.0"})
            index_path = layout / "index.json"
            index: dict[str, Any] = _read_json(index_path) if index_path.exists() else {
                "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}
            old: list[Any] = index.get("manifests") or []
            kept = [e for e in old
                    if (e.get("annotations") or {}).get("org.opencontainers.image.ref.name") != name]
            index["manifests"] = [*kept, entry]
            _write_atomic(index_path, index)
    except OSError as e:
        raise LocalIOError(f"cannot write OCI layout {layout}: {e.strerror or e}; check the path and free space"
                           ) from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except ValueError:
        raise LocalIOError(f"{path} is not JSON: the OCI layout is damaged; remove it or pick another --oci-dir"
                           ) from None
    if not isinstance(doc, dict):
        raise LocalIOError(f"{path} is not an OCI index: remove it or pick another --oci-dir")
    return doc


def _write_atomic(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    os.replace(tmp, path)

