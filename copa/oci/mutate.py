"""Make the patched image: the original layers untouched plus one new layer, as a `Bundle` for a sink."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from copa.oci.digest import Digest
from copa.oci.image import Bundle, Image, Source, manifest_blobs
from copa.oci.model import Descriptor, HistoryEntry, ImageConfig, Index, Manifest
from copa.pkg.layer import LayerBlob

PATCHED_ANNOTATION = "sh.copa.image.patched"
BASE_IMAGE_LABEL = "BaseImage"
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
    layers = len(image.layers)
    history = len(image.config.history)
    base = image.config.labels.get(BASE_IMAGE_LABEL, "")
    last = image.config.history[-1] if image.config.history else None
    if base and last is not None and last.created_by.startswith(HISTORY_MARK) and not last.empty_layer and layers:
        return Original(layers - 1, history - 1, base)
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
        {BASE_IMAGE_LABEL: original.base_reference},
        created,
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
    children: list[Manifest | Index] = []
    blobs: list[Descriptor] = list(manifest_blobs(manifest))
    new_root = _replace_in_index(source, root, image.manifest.digest, manifest, children, blobs, created)
    return Bundle(new_root, manifest, tuple(children), tuple(blobs), open_blob)


def _replace_in_index(
    source: Source,
    index: Index,
    old: Digest,
    new: Manifest,
    children: list[Manifest | Index],
    blobs: list[Descriptor],
    created: str,
) -> Index:
    replacement: Descriptor | None = None
    # A buildx attestation (provenance, SBOM) describes the unpatched image; it would be false of the new one.
    stale = frozenset(e.digest for e in index.manifests if e.annotations.get(ATTESTATION_OF) == str(old))
    for entry in index.manifests:
        if entry.digest in stale:
            continue
        if entry.digest == old:
            children.append(new)
            replacement = new.descriptor()
            continue
        child = source.fetch_manifest(entry)
        if isinstance(child, Index):
            nested = _replace_in_index(source, child, old, new, children, blobs, created)
            children.append(nested)
            if nested.digest != child.digest:
                index = index.replaced(child.digest, nested.descriptor(), {})
            continue
        children.append(child)
        blobs.extend(manifest_blobs(child))
    if replacement is not None:
        index = index.replaced(old, replacement, {PATCHED_ANNOTATION: created}, stale)
    return index
