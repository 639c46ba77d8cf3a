"""Turn the user's image argument into a Source, and the output flags into sink calls.

Image arguments follow skopeo's transport names: `oci:DIR[:NAME]`, `docker-archive:FILE[:REPO:TAG]`,
`docker://REF`, or a bare registry reference.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from copa.errors import UsageError
from copa.oci.digest import Digest
from copa.oci.reference import Reference, valid_tag
from copa.oci.registry import RegistryClient, RegistrySource, push

# The layout, archive and loader modules (and the layer codecs they import) are imported where an image argument or
# an output names them: a registry image's first request waits for none of them.
if TYPE_CHECKING:
    from copa.oci.image import Bundle, Source
    from copa.oci.layerstore import BlobHomes


@dataclass(frozen=True, slots=True)
class Opened:
    source: Source
    reference: Reference | None  # set when the image came from a registry
    name: str  # how the image is named in messages and in the BaseImage label
    tag: str  # the tag (or layout ref name) the image was read by, for the default output tag


def _split_path(rest: str) -> tuple[str, str]:
    """'DIR:NAME' -> (DIR, NAME). A colon is part of the path unless what follows has no slash."""
    path, sep, name = rest.rpartition(":")
    if sep and path and "/" not in name:
        return path, name
    return rest, ""


def open_image(text: str, client: RegistryClient) -> Opened:
    if text.startswith("oci:"):
        from copa.oci.layout import LayoutSource

        path, name = _split_path(text[4:])
        return Opened(LayoutSource(Path(path), name or None), None, text, name)
    if text.startswith("docker-archive:"):
        from copa.oci.archive import ArchiveSource

        rest = text[len("docker-archive:"):]
        path, _, tag = rest.partition(":")
        return Opened(ArchiveSource(Path(path), tag or None), None, text, tag.rpartition(":")[2] if tag else "")
    if text.startswith("docker://"):
        text = text[len("docker://"):]
    ref = Reference.parse(text)
    return Opened(RegistrySource(client, ref), ref, str(ref), ref.tag)


@dataclass(frozen=True, slots=True)
class Outputs:
    reference: Reference | None  # the full target name, when one can be formed
    push: bool
    oci_dir: Path | None
    output_tar: Path | None
    tag: str  # the tag alone: a layout's ref name
    loader: str | None = None  # -l: podman or docker


def check_tag(tag: str, what: str) -> None:
    """A tag as the distribution spec allows it; checked before any work, not at the registry after all of it."""
    if not valid_tag(tag):
        raise UsageError(
            f"invalid {what} {tag!r}: a tag is 1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
        )


def plan_outputs(
    opened: Opened, tag: str | None, suffix: str, push: bool, oci_dir: str | None, output_tar: str | None,
    loader: str | None = None,
) -> Outputs:
    if not (push or oci_dir or output_tar or loader):
        raise UsageError("no output named: pass --push (to the registry), --oci-dir DIR, --output-tar FILE or "
                         "-l podman|docker")
    if not tag:
        check_tag(f"latest-{suffix}", "--tag-suffix (as part of a tag)")
    if tag and ("/" in tag or "@" in tag):
        full = Reference.parse(tag)
    elif tag and ":" in tag:
        # NAME:TAG names a docker-archive's RepoTag (or a layout ref) for an image that has no repository.
        if opened.reference is not None:
            raise UsageError(f"invalid -t {tag!r}: pass a bare TAG or a full REGISTRY/REPOSITORY:TAG")
        Reference.parse(tag)
        full = None
    elif tag:
        check_tag(tag, "-t tag")
        full = opened.reference.with_tag(tag) if opened.reference is not None else None
    elif opened.reference is not None:
        base_tag = opened.reference.tag or "latest"
        full = opened.reference.with_tag(_default_tag(base_tag, suffix))
    else:
        full = None
    ref_name = full.tag if full is not None else (tag or _default_tag(opened.tag or "latest", suffix))
    if push and full is None:
        raise UsageError("--push needs -t REGISTRY/REPOSITORY:TAG when the image does not come from a registry")
    if loader is not None:
        from copa.oci.loaders import check_name

        # The name write_outputs loads under, refused now rather than after all the patch work.
        check_name(str(full) if full is not None else ref_name)
    return Outputs(full, push, Path(oci_dir) if oci_dir else None, Path(output_tar) if output_tar else None, ref_name,
                   loader)


def _default_tag(base: str, suffix: str) -> str:
    tag = f"{base}-{suffix}"
    if len(tag) > 128:
        raise UsageError(f"the default tag {tag!r} is longer than 128 characters; pass -t TAG")
    return tag


def archive_tags(outputs: Outputs) -> list[str]:
    """The docker-archive RepoTags: the full name when there is one. An image read from a layout or archive
    has no repository to name, so a bare ref name (not REPO:TAG) leaves the archive untagged, as skopeo does."""
    if outputs.reference is not None:
        return [str(outputs.reference)]
    return [outputs.tag] if ":" in outputs.tag else []


@dataclass(frozen=True, slots=True)
class Written:
    """One sink's result. The same image can have a different digest per sink: an OCI layout stores Docker v2s2
    manifests converted to OCI ones, and a docker-archive has no manifest at all (its digest is the image ID,
    the config's digest, as docker shows it)."""

    kind: str  # "registry", "oci-dir" or "output-tar"
    target: str
    digest: Digest


def write_outputs(outputs: Outputs, bundle: Bundle, client: RegistryClient, workdir: Path | None = None,
                  timeout: float = 300.0, homes: BlobHomes | None = None) -> tuple[Written, ...]:
    """Write to every named sink. Each sink writes blobs first and its tag or index last. Each sink's module is
    imported only when it is written to: a push does not load the layout, archive and loader modules."""
    written: list[Written] = []
    if outputs.oci_dir is not None:
        from copa.oci.layout import write_layout

        digest = write_layout(outputs.oci_dir, bundle, outputs.tag)
        written.append(Written("oci-dir", f"oci:{outputs.oci_dir}:{outputs.tag}", digest))
    if outputs.output_tar is not None:
        from copa.oci.archive import write_archive

        write_archive(outputs.output_tar, bundle, archive_tags(outputs))
        written.append(Written("output-tar", f"docker-archive:{outputs.output_tar}", bundle.primary.config.digest))
    if outputs.push and outputs.reference is not None:
        written.append(Written("registry", str(outputs.reference), push(client, outputs.reference, bundle, homes)))
    if outputs.loader is not None:
        # A local store holds one platform per name: each patched platform of an index is loaded under its
        # TAG-ARCH[-VARIANT] name, as Copacetic does; a single image under the patched name.
        from copa.oci.loaders import load

        name = str(outputs.reference) if outputs.reference is not None else outputs.tag
        with tempfile.TemporaryDirectory(prefix="copa-load-", dir=workdir) as tmp:
            if bundle.child_tags and outputs.reference is not None:
                for tag, manifest in bundle.child_tags:
                    written.append(load(outputs.loader, bundle, str(outputs.reference.with_tag(tag)), Path(tmp),
                                        manifest=manifest, timeout=timeout))
            else:
                written.append(load(outputs.loader, bundle, name, Path(tmp), timeout=timeout))
    return tuple(written)
