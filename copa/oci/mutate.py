"""Make the patched image: the original layers untouched plus one new layer, as a `Bundle` for a sink."""

from __future__ import annotations

import io
from collections.abc import Callable
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
    new_blobs: dict[Digest, Callable[[], BinaryIO]] = {
        config.digest: lambda: io.BytesIO(config.raw),
        layer.digest: layer.open,
    }

    def open_blob(desc: Descriptor) -> BinaryIO:
        opener = new_blobs.get(desc.digest)
        return opener() if opener is not None else source.open_blob(desc)

    if isinstance(root, Manifest):
        return Bundle(manifest, manifest, (), manifest_blobs(manifest), open_blob)

    # An index: the patched platform's entry points at the new manifest; every other entry is kept by
    # digest, and its manifests and blobs travel along so any sink can hold the whole index.
    children: list[Document] = []
    blobs: list[Descriptor] = list(manifest_blobs(manifest))
    new_root = _replace_in_index(source, root, image.manifest.digest, manifest, children, blobs, created)
    return Bundle(new_root, manifest, tuple(children), tuple(blobs), open_blob)


def _replace_in_index(
    source: Source,
    index: Index,
    old: Digest,
    new: Manifest,
    children: list[Document],
    blobs: list[Descriptor],
    created: str,
) -> Index:
    """`index` with `old` replaced by `new` wherever it occurs, nested indexes included (children are appended
    before the index that holds them, so sinks write them first)."""
    replaced = False
    # A buildx attestation (provenance, SBOM) describes the unpatched image; it would be false of the new one.
    stale = frozenset(e.digest for e in index.manifests if e.annotations.get(ATTESTATION_OF) == str(old))
    edits: list[tuple[Digest, Descriptor]] = []
    for entry in index.manifests:
        if entry.digest in stale:
            continue
        if entry.digest == old:
            if not replaced:
                children.append(new)
            replaced = True
            continue
        child = source.fetch_manifest(entry)
        if isinstance(child, Index):
            nested = _replace_in_index(source, child, old, new, children, blobs, created)
            children.append(nested)
            if nested.digest != child.digest:
                edits.append((child.digest, nested.descriptor()))
            continue
        children.append(child)
        # Another kind of document (an artifact, a Helm chart) is carried byte for byte with what it names.
        blobs.extend(manifest_blobs(child) if isinstance(child, Manifest) else _opaque_blobs(child))
    for digest, desc in edits:
        index = index.replaced(digest, desc, {})
    if edits or replaced:
        index = index.replaced(old, new.descriptor(), {PATCHED_ANNOTATION: created}, stale)
    return index


def _opaque_blobs(doc: Opaque) -> tuple[Descriptor, ...]:
    return doc.references()
