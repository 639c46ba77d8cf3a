"""A PatchConfig expanded into Jobs: each image's tags discovered in its registry, each tag's target named, and
(with `-r DIR`) each job given the scanner report made of its source image.

Targets are Copacetic's (pkg/bulk/engine.go): the image's `target` fields, else the global ones; a target
`registry` is a prefix the source repository's last path segment is appended to (ghcr.io/myorg +
docker.io/library/nginx -> ghcr.io/myorg/nginx), without one the source repository itself; the tag is the template
rendered with the source tag (default `{{ .SourceTag }}-patched`). Two jobs writing one target (two repositories
with the same last segment sent to one prefix) are an error rather than one overwriting the other.

Reports are matched by content, not file name, as Copacetic's skip detection reads them (ArtifactName), but to
source images: a report names its image by reference (Trivy ArtifactName, Grype source.target.userInput) or by
digest (Trivy Metadata.RepoDigests, Grype source.target.repoDigests; the tag's manifest digest is asked of the
registry only when a report is not matched by name). A subdirectory of the report directory holds the per-platform
reports of one image and is matched as a whole. A job without a report gets update-all (report None); a report
matching no job is named in the plan's notes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from copa import events
from copa.bulk.config import ImageSpec, PatchConfig, render_tag
from copa.bulk.job import Job
from copa.bulk.tags import next_patch_tag, outputs_of, select_tags
from copa.errors import CopaError, NotFoundError, ReportError, UsageError
from copa.oci.digest import Digest
from copa.oci.reference import Reference, valid_tag
from copa.oci.registry import RegistryClient, head_manifest, list_tags
from copa.report.directory import report_files
from copa.report.load import load_report
from copa.report.model import Report


@dataclass(frozen=True)
class ImagePlan:
    name: str
    jobs: tuple[Job, ...]
    missing: tuple[str, ...] = ()  # listed tags the repository does not have (skipped, as Copacetic's docs say)
    note: str = ""  # why no tag was selected
    error: CopaError | None = None  # tag discovery failed (the registry refused, the repository does not exist...)


@dataclass(frozen=True)
class Plan:
    images: tuple[ImagePlan, ...]
    unmatched_reports: tuple[str, ...] = ()  # report files or directories that match no job

    @property
    def jobs(self) -> list[Job]:
        return [job for image in self.images for job in image.jobs]

    @property
    def errors(self) -> list[tuple[str, CopaError]]:
        return [(image.name, image.error) for image in self.images if image.error is not None]


def jobs(config: PatchConfig, client: RegistryClient, *, reports: Path | None = None,
         scanner: str | None = None, versioned: bool = False) -> list[Job]:
    """Every job of `config`, in config order (each image's tags oldest first). The first image whose tags cannot
    be discovered raises its error; use `plan` to go on with the others."""
    result = plan(config, client, reports=reports, scanner=scanner, versioned=versioned)
    for _, error in result.errors:
        raise error
    return result.jobs


def plan(config: PatchConfig, client: RegistryClient, *, reports: Path | None = None,
         scanner: str | None = None, versioned: bool = False) -> Plan:
    """`config` expanded image by image. A registry failure while discovering one image's tags is kept in its
    ImagePlan (the others are still planned); bad reports and colliding targets raise.

    `versioned` names targets as Copacetic does since its skip detection: a target tag already in the target
    repository is not overwritten, the job writes TAG-1, TAG-2... instead (copa.bulk.tags.next_patch_tag)."""
    images = [_image_plan(config, spec, client) for spec in config.images]
    if versioned:
        images = _versioned(images, client)
    _check_targets(images)
    unmatched: tuple[str, ...] = ()
    if reports is not None:
        matched, unmatched = _match_reports(Path(reports), [job for image in images for job in image.jobs], client,
                                            scanner)
        images = [ImagePlan(i.name, tuple(matched.get(j, j) for j in i.jobs), i.missing, i.note, i.error)
                  for i in images]
        for path in unmatched:
            events.step(f"report {path} matches no image of the config; it is not used")
    return Plan(tuple(images), unmatched)


# --- tags and targets ------------------------------------------------------------------------------------------


def target_repository(config: PatchConfig, spec: ImageSpec) -> Reference:
    """Where `spec`'s patched images go (Copacetic's buildTargetRepository), as a reference without a tag."""
    source = spec.repository
    registry = config.target_for(spec).registry
    if not registry:
        return Reference(source.registry, source.repository)
    ref = Reference.parse(f"{registry}/{source.repository.rsplit('/', 1)[-1]}")
    return Reference(ref.registry, ref.repository)


def _image_plan(config: PatchConfig, spec: ImageSpec, client: RegistryClient) -> ImagePlan:
    source = spec.repository
    target = target_repository(config, spec)
    template = config.target_for(spec).tag
    events.step(f"discovering tags of {source.registry}/{source.repository} ({spec.name}, {spec.tags.strategy})")
    try:
        if spec.tags.strategy == "list":
            # A HEAD per listed tag: exact, and allowed where listing a repository is not (or is thousands of tags).
            available = [t for t in spec.tags.list if head_manifest(client, source.with_tag(t)) is not None]
        else:
            available = list_tags(client, source)
    except CopaError as e:
        return ImagePlan(spec.name, (), error=e)
    if spec.tags.strategy != "list" and (target.registry, target.repository) == (source.registry, source.repository):
        # A sweep writing into its source repository must not pick up its own earlier results.
        own = outputs_of(available, lambda tag: render_tag(template, tag))
        available = [t for t in available if t not in own]
    # Missing tags and the note are the caller's to show (copa.bulk.command prints them with the plan).
    selection = select_tags(spec.tags, available)
    out: list[Job] = []
    for tag in selection.tags:
        new_tag = render_tag(template, tag)
        if not valid_tag(new_tag):
            raise UsageError(f"{config.source}:{config.target_for(spec).line or spec.line}: the tag template of "
                             f"{spec.name} renders {new_tag!r} for tag {tag}, which is not a valid tag: shorten the "
                             "template (tags are at most 128 letters, digits, '_', '.', '-')")
        out.append(Job(spec.name, str(source.with_tag(tag)), str(target.with_tag(new_tag)), spec.platforms))
    return ImagePlan(spec.name, tuple(out), selection.missing, selection.note)


def _versioned(images: list[ImagePlan], client: RegistryClient) -> list[ImagePlan]:
    existing: dict[str, list[str]] = {}
    out: list[ImagePlan] = []
    for image in images:
        renamed: list[Job] = []
        for job in image.jobs:
            ref = Reference.parse(job.target)
            repo = f"{ref.registry}/{ref.repository}"
            if repo not in existing:
                try:
                    existing[repo] = list_tags(client, ref)
                except NotFoundError:
                    existing[repo] = []  # nothing pushed there yet
            tag = next_patch_tag(ref.tag, existing[repo])
            renamed.append(replace(job, target=str(ref.with_tag(tag))))
        out.append(replace(image, jobs=tuple(renamed)))
    return out


def _check_targets(images: list[ImagePlan]) -> None:
    seen: dict[str, Job] = {}
    for image in images:
        for job in image.jobs:
            other = seen.get(job.target)
            if other is not None:
                raise UsageError(f"{other.name} ({other.source}) and {job.name} ({job.source}) would both be "
                                 f"written to {job.target}: give one of them its own target registry or tag template")
            seen[job.target] = job


# --- reports ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Identity:
    """How a report names its image: REGISTRY/REPO:TAG strings and (REGISTRY/REPO, digest) pairs."""

    names: frozenset[str]
    digests: frozenset[tuple[str, Digest]]


# Syft/Grype source schemes a userInput may keep ("registry:host/repo:tag"); a port ("registry:5000/...") is not one.
_SCHEMES = ("registry:", "docker:", "podman:")


def _reference(text: str) -> Reference | None:
    for scheme in _SCHEMES:
        if text.startswith(scheme) and not re.match(r"[0-9]+/", text[len(scheme):]):
            text = text[len(scheme):]
            break
    try:
        return Reference.parse(text)
    except CopaError:
        return None  # an oci-dir path or a file name: not a registry reference


def _identity(report: Report) -> _Identity:
    names: set[str] = set()
    digests: set[tuple[str, Digest]] = set()
    for text in filter(None, (report.artifact, *report.repo_digests)):
        ref = _reference(text)
        if ref is None:
            continue
        repo = f"{ref.registry}/{ref.repository}"
        if ref.digest is not None:
            digests.add((repo, ref.digest))
        # A bare name means :latest to the scanner as to us; a digest-only reference names no tag.
        if ref.tag:
            names.add(f"{repo}:{ref.tag}")
    return _Identity(frozenset(names), frozenset(digests))


def _entries(directory: Path) -> Iterator[tuple[Path, list[Path]]]:
    """(path a job gets, its report files): each report file, and each subdirectory with its files."""
    source = str(directory)
    if not directory.is_dir():
        raise ReportError(f"{source}: is not a directory: with a PatchConfig, -r names a directory of reports")
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as e:
        raise ReportError(f"{source}: cannot list report directory: {e.strerror or e}") from None
    found = False
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = directory / entry.name
        found = True
        if entry.is_dir():
            yield path, list(report_files(path))
        else:
            yield path, [path]
    if not found:
        raise ReportError(f"{source}: report directory is empty: put one report per image in it (or one "
                          "subdirectory of per-platform reports per image)")


def _match_reports(directory: Path, planned: list[Job], client: RegistryClient,
                   scanner: str | None) -> tuple[dict[Job, Job], tuple[str, ...]]:
    by_name = {_source_key(job): job for job in planned}
    digests: dict[Job, Digest | None] = {}

    def digest_of(job: Job) -> Digest | None:
        if job not in digests:
            desc = head_manifest(client, Reference.parse(job.source))
            digests[job] = desc.digest if desc is not None else None
        return digests[job]

    assigned: dict[Job, Path] = {}
    unmatched: list[str] = []
    for path, files in _entries(directory):
        identities = [(f, _identity(load_report(f, scanner))) for f in files]
        targets: set[Job] | None = None
        for file, ident in identities:
            hits = {by_name[n] for n in ident.names if n in by_name}
            if not hits and ident.digests:
                hits = {job for job in planned for repo, d in ident.digests
                        if _source_repo(job) == repo and digest_of(job) == d}
            if targets is not None and hits != targets:
                raise ReportError(f"{file}: names another image than the other reports in {path}: a subdirectory "
                                  "holds the per-platform reports of one image")
            targets = hits
        for job in sorted(targets or (), key=lambda j: j.source):
            if job in assigned:
                raise ReportError(f"{assigned[job]} and {path} are both reports for {job.source}: keep one per "
                                  "image, or put an image's per-platform reports in one subdirectory")
            assigned[job] = path
        if not targets:
            unmatched.append(str(path))
    matched = {job: Job(job.name, job.source, job.target, job.platforms, str(path)) for job, path in assigned.items()}
    return matched, tuple(unmatched)


def _source_key(job: Job) -> str:
    ref = Reference.parse(job.source)
    return f"{ref.registry}/{ref.repository}:{ref.tag}"


def _source_repo(job: Job) -> str:
    ref = Reference.parse(job.source)
    return f"{ref.registry}/{ref.repository}"
