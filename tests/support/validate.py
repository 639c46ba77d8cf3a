"""An independent structural check of any image a test produces.

Deliberately re-hashes everything itself instead of trusting the Source's verifying streams, so a bug in
those streams cannot hide a bad image."""

from __future__ import annotations

import hashlib
import io
from typing import BinaryIO

from copa.oci.image import Source, decompressed
from copa.oci.model import Descriptor, ImageConfig, Index, Manifest, MediaType, Platform

_OCI_LAYER_PREFIX = "application/vnd.oci.image.layer."
_DOCKER_LAYER_PREFIX = "application/vnd.docker.image.rootfs."


class _Tee(io.RawIOBase):
    def __init__(self, raw: BinaryIO, algorithm: str) -> None:
        super().__init__()
        self.raw = raw
        self.hash = hashlib.new(algorithm)
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer)
        chunk = self.raw.read(len(view))
        view[: len(chunk)] = chunk
        self.hash.update(chunk)
        self.count += len(chunk)
        return len(chunk)

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _check_blob_bytes(tee: _Tee, desc: Descriptor, where: str) -> None:
    assert tee.count == desc.size, f"{where}: blob {desc.digest} has {tee.count} bytes, descriptor says {desc.size}"
    got = f"{desc.digest.algorithm}:{tee.hash.hexdigest()}"
    assert got == str(desc.digest), f"{where}: blob {desc.digest} content hashes to {got}"


def _check_doc_bytes(raw: bytes, desc: Descriptor, where: str) -> None:
    assert len(raw) == desc.size, f"{where}: document {desc.digest} has {len(raw)} bytes, descriptor says {desc.size}"
    got = hashlib.new(desc.digest.algorithm, raw).hexdigest()
    assert got == desc.digest.hex, f"{where}: document bytes hash to {got}, descriptor says {desc.digest}"


def _check_media_types(manifest: Manifest, where: str) -> None:
    if manifest.media_type == MediaType.OCI_MANIFEST:
        config_type, layer_prefix = MediaType.OCI_CONFIG, _OCI_LAYER_PREFIX
    elif manifest.media_type == MediaType.DOCKER_MANIFEST:
        config_type, layer_prefix = MediaType.DOCKER_CONFIG, _DOCKER_LAYER_PREFIX
    else:
        raise AssertionError(f"{where}: unexpected manifest media type {manifest.media_type!r}")
    assert manifest.config.media_type == config_type, (
        f"{where}: {manifest.media_type} has config media type {manifest.config.media_type!r}, want {config_type!r}"
    )
    for i, layer in enumerate(manifest.layers):
        assert layer.media_type.startswith(layer_prefix), (
            f"{where}: layer {i} media type {layer.media_type!r} does not belong in a {manifest.media_type}"
        )


def _validate_manifest(source: Source, manifest: Manifest, where: str, platform: Platform | None) -> None:
    _check_media_types(manifest, where)
    with source.open_blob(manifest.config) as f:
        tee = _Tee(f, manifest.config.digest.algorithm)
        config_raw = io.BufferedReader(tee).read()
    _check_blob_bytes(tee, manifest.config, f"{where} config")
    config = ImageConfig.parse(config_raw)
    if platform is not None:
        assert platform.matches(config.platform), f"{where}: config platform {config.platform}, index says {platform}"
    assert len(config.diff_ids) == len(manifest.layers), (
        f"{where}: {len(manifest.layers)} layers but config has {len(config.diff_ids)} diff_ids"
    )
    if config.history:
        non_empty = sum(1 for h in config.history if not h.empty_layer)
        assert non_empty == len(manifest.layers), (
            f"{where}: history has {non_empty} non-empty entries for {len(manifest.layers)} layers"
        )
    for i, (layer, diff_id) in enumerate(zip(manifest.layers, config.diff_ids, strict=True)):
        with source.open_blob(layer) as f:
            tee = _Tee(f, layer.digest.algorithm)
            plain = decompressed(io.BufferedReader(tee), layer.media_type)
            h = hashlib.new(diff_id.algorithm)
            while chunk := plain.read(1 << 20):
                h.update(chunk)
            tee.drain()  # a decompressor may stop before trailing bytes; they still belong to the blob
        _check_blob_bytes(tee, layer, f"{where} layer {i}")
        assert h.hexdigest() == diff_id.hex, (
            f"{where}: layer {i} ({layer.digest}) uncompresses to {diff_id.algorithm}:{h.hexdigest()}, "
            f"config diff_id is {diff_id}"
        )


def _validate(
    source: Source, doc: Manifest | Index, where: str, platform: Platform | None, wanted: Platform | None
) -> None:
    if isinstance(doc, Manifest):
        _validate_manifest(source, doc, where, platform)
        return
    assert doc.media_type in MediaType.INDEXES, f"{where}: unexpected index media type {doc.media_type!r}"
    assert doc.manifests, f"{where}: index has no manifests"
    for i, entry in enumerate(doc.manifests):
        if wanted is not None and entry.platform is not None and not wanted.matches(entry.platform):
            continue
        child = source.fetch_manifest(entry)
        child_where = f"{where} entry {i} ({entry.platform or entry.digest})"
        _check_doc_bytes(child.raw, entry, child_where)
        assert child.media_type == entry.media_type, (
            f"{child_where}: descriptor says {entry.media_type!r}, document is {child.media_type!r}"
        )
        if doc.media_type == MediaType.DOCKER_LIST:
            assert child.media_type in (MediaType.DOCKER_MANIFEST, MediaType.DOCKER_LIST), (
                f"{child_where}: a Docker manifest list holds a {child.media_type}"
            )
        _validate(source, child, child_where, entry.platform, wanted)


def validate(source: Source, platform: Platform | None = None) -> None:
    """Assert the image at `source` is internally consistent; with `platform`, check only that index entry."""
    root = source.root()
    _validate(source, root, source.description, None, platform)
