"""Make the patched image: the original layers untouched plus one new layer, as a `Bundle` for a sink."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from copa.oci.digest import Digest
from copa.oci.image import Bundle, Image, Source, manifest_blobs
from copa.oci.layer import LayerBlob
from copa.oci.model import Descriptor, Document, HistoryEntry, ImageConfig, Index, Manifest, Opaque

PATCHED_ANNOTATION = "sh.copa.image.patched"
BASE_IMAGE_LABEL = "BaseImage"
# The diff_id of the patch layer copa added: recognises a previous patch even in images without history (ko, apko).
PATCH_LAYER_LABEL = "sh.copa.patch.layer"
HISTORY_MARK = "copa patch"
ATTESTATION_OF = "vnd.docker.reference.digest"


@dataclass(frozen=True, slots=True)
class Original:
    """How much of an image is the original: a previous copa patch layer on top is not."""

    layers: int
    history: int
    base_reference: str


def original_of(image: Image, reference: str) -> Original:
    """Find the original image inside `image`, so a re-patch starts from it and layers never pile up."""
    cfg = image.config
    layers = len(image.layers)
    history = len(cfg.history)
    base = cfg.labels.get(BASE_IMAGE_LABEL, "")
    last = cfg.history[-1] if cfg.history else None
    marked = last is not None and last.created_by.startswith(HISTORY_MARK) and not last.empty_layer
    labelled = bool(cfg.diff_ids) and cfg.labels.get(PATCH_LAYER_LABEL) == str(cfg.diff_ids[-1])
    if base and layers and (labelled or marked):
        return Original(layers - 1, history - 1 if marked else history, base)
    return Original(layers, history, reference)


@dataclass(frozen=True)
class Patched:
    """One platform's patched image: its new manifest and the two new blobs (config, layer) it needs."""

    original_manifest: Manifest
    manifest: Manifest
    openers: Mapping[Digest, Callable[[], BinaryIO]]


def patched_image(
    image: Image,
    layer: LayerBlob,
    original: Original,
    *,
    created: str,
    comment: str,
) -> Patched:
    """The image with `layer` on top of its original layers: new config (history, labels) and manifest."""
    cfg: ImageConfig = image.config
    history = cfg.history[: original.history] if cfg.history else ()
    entry = HistoryEntry(created_by=f"{HISTORY_MARK}: {comment}", created=created)
    new_history = (*history, entry) if cfg.history else ()
    config = cfg.edited(
        (*cfg.diff_ids[: original.layers], layer.diff_id),
        new_history,
        {BASE_IMAGE_LABEL: original.base_reference, PATCH_LAYER_LABEL: str(layer.diff_id)},
        created,
        kept_history=len(history),
    )
    config_desc = Descriptor(image.manifest.config.media_type, config.digest, len(config.raw))
    layer_desc = Descriptor(layer.media_type, layer.digest, layer.size)
    manifest = image.manifest.edited(
        config_desc, (*image.manifest.layers[: original.layers], layer_desc), {PATCHED_ANNOTATION: created}
    )
    raw = config.raw
    return Patched(image.manifest, manifest, {config.digest: lambda: io.BytesIO(raw), layer.digest: layer.open})


def append_layer(
    source: Source,
    root: Manifest | Index,
    image: Image,
    layer: LayerBlob,
    original: Original,
    *,
    created: str,
    comment: str,
) -> Bundle:
    """One image patched: `assemble` with a single replacement."""
    return assemble(source, root, [patched_image(image, layer, original, created=created, comment=comment)],
                    created=created)


def assemble(
    source: Source, root: Manifest | Index, patched: Sequence[Patched], *, created: str,
    child_tags: Sequence[tuple[str, Manifest]] = (),
) -> Bundle:
    """The Bundle of `root` with each patched platform's manifest in place of its original. `child_tags` name
    patched manifests that a registry sink tags too (Copacetic's per-platform TAG-ARCH tags)."""
    if not patched:
        raise ValueError("assemble needs at least one patched image")
    new_blobs: dict[Digest, Callable[[], BinaryIO]] = {}
    for p in patched:
        new_blobs.update(p.openers)

    def open_blob(desc: Descriptor) -> BinaryIO:
        opener = new_blobs.get(desc.digest)
        return opener() if opener is not None else source.open_blob(desc)

    primary = patched[0].manifest
    if isinstance(root, Manifest):
        return Bundle(primary, primary, (), manifest_blobs(primary), open_blob)

    # An index: each patched platform's entry points at its new manifest; every other entry is kept by
    # digest, and its manifests and blobs travel along so any sink can hold the whole index.
    children: list[Document] = []
    blobs: list[Descriptor] = []
    for p in patched:
        blobs.extend(manifest_blobs(p.manifest))
    replacements = {p.original_manifest.digest: p.manifest for p in patched}
    new_root = _replace_in_index(source, root, replacements, children, blobs, created, set())
    return Bundle(new_root, primary, tuple(children), tuple(blobs), open_blob, child_tags=tuple(child_tags))


def _replace_in_index(
    source: Source,
    index: Index,
    replacements: Mapping[Digest, Manifest],
    children: list[Document],
    blobs: list[Descriptor],
    created: str,
    placed: set[Digest],
) -> Index:
    """`index` with each replaced manifest's entries pointing at its new manifest, nested indexes included
    (children are appended before the index that holds them, so sinks write them first)."""
    # A buildx attestation (provenance, SBOM) describes the unpatched image; it would be false of the new one.
    olds = {str(d) for d in replacements}
    stale = frozenset(e.digest for e in index.manifests if e.annotations.get(ATTESTATION_OF) in olds)
    edits: list[tuple[Digest, Descriptor]] = []
    for entry in index.manifests:
        if entry.digest in stale:
            continue
        new = replacements.get(entry.digest)
        if new is not None:
            if new.digest not in placed:
                children.append(new)
                placed.add(new.digest)
            edits.append((entry.digest, new.descriptor()))
            continue
        child = source.fetch_manifest(entry)
        if isinstance(child, Index):
            nested = _replace_in_index(source, child, replacements, children, blobs, created, placed)
            children.append(nested)
            if nested.digest != child.digest:
                edits.append((child.digest, nested.descriptor()))
            continue
        children.append(child)
        # Another kind of document (an artifact, a Helm chart) is carried byte for byte with what it names.
        blobs.extend(manifest_blobs(child) if isinstance(child, Manifest) else _opaque_blobs(child))
    for digest, desc in edits:
        index = index.replaced(digest, desc, {})
    if stale:
        index = index.without(stale)
    if edits or stale:
        index = index.with_annotations({PATCHED_ANNOTATION: created})
    return index


def _opaque_blobs(doc: Opaque) -> tuple[Descriptor, ...]:
    return doc.references()
