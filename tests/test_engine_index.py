"""Nested indexes, non-image index entries and re-patching images without history (review findings 2, 10, 15,
18, 35), on real OCI layouts built by umoci (tests/test_layout.py's fixture) and read back by skopeo."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from copa.errors import UnsupportedImageError
from copa.oci.digest import Digest
from copa.oci.image import Image, resolve_platform
from copa.oci.layer import Entry, write_layer
from copa.oci.layout import LayoutSource, write_layout
from copa.oci.model import ImageConfig, Index, Manifest, MediaType, Opaque, Platform
from copa.oci.mutate import PATCH_LAYER_LABEL, append_layer, original_of
from tests.test_layout import Fixture, fixture_dir

ARTIFACT = "application/vnd.oci.artifact.manifest.v1+json"


def run(*args: str | Path) -> str:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed: {proc.stderr.strip()}"
    return proc.stdout


@pytest.fixture(scope="module")
def umoci_images() -> Fixture:
    return fixture_dir()


def _blob(layout: Path, raw: bytes) -> Digest:
    digest = Digest.of_bytes(raw)
    path = layout / "blobs" / "sha256" / digest.hex
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return digest


def _entry(
    media_type: str, raw: bytes, digest: Digest, platform: tuple[str, str, str] | None = None
) -> dict[str, object]:
    out: dict[str, object] = {"mediaType": media_type, "digest": str(digest), "size": len(raw)}
    if platform is not None:
        os_, arch, variant = platform
        out["platform"] = {"os": os_, "architecture": arch, **({"variant": variant} if variant else {})}
    return out


def _copy_images(fx: Fixture, out: Path) -> tuple[Manifest, Manifest]:
    """The fixture's amd64 and arm64 images copied by skopeo into the layout `out`."""
    amd = LayoutSource(fx.layout, "amd").root()
    arm = LayoutSource(fx.layout, "arm").root()
    assert isinstance(amd, Manifest) and isinstance(arm, Manifest)
    run("skopeo", "copy", "-q", f"oci:{fx.layout}:amd", f"oci:{out}:amd")
    run("skopeo", "copy", "-q", f"oci:{fx.layout}:arm", f"oci:{out}:arm")
    return amd, arm


def _nested_layout(fx: Fixture, out: Path) -> dict[str, Manifest]:
    """outer index -> [nested index (no platform) -> [amd64], arm64 image, an artifact manifest with one blob]."""
    amd, arm = _copy_images(fx, out)
    nested = json.dumps({"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": [
        _entry(MediaType.OCI_MANIFEST, amd.raw, amd.digest, ("linux", "amd64", "")),
    ]}).encode()
    payload = b"an attached signature\n"
    payload_digest = _blob(out, payload)
    artifact = json.dumps({"mediaType": ARTIFACT, "artifactType": "application/example", "blobs": [
        {"mediaType": "application/octet-stream", "digest": str(payload_digest), "size": len(payload)},
    ]}).encode()
    outer = json.dumps({"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": [
        _entry(MediaType.OCI_INDEX, nested, _blob(out, nested)),
        _entry(MediaType.OCI_MANIFEST, arm.raw, arm.digest, ("linux", "arm64", "")),
        _entry(ARTIFACT, artifact, _blob(out, artifact)),
    ]}).encode()
    outer_digest = _blob(out, outer)
    entry = {**_entry(MediaType.OCI_INDEX, outer, outer_digest),
             "annotations": {"org.opencontainers.image.ref.name": "multi"}}
    (out / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    return {"amd": amd, "arm": arm}


def test_nested_index_platform_is_found_and_replaced_in_place(umoci_images: Fixture, tmp_path: Path) -> None:
    src = tmp_path / "src"
    docs = _nested_layout(umoci_images, src)
    source = LayoutSource(src, "multi")
    root = source.root()
    assert isinstance(root, Index)
    manifest, platform = resolve_platform(source, root, Platform("linux", "amd64"))
    assert manifest.digest == docs["amd"].digest and platform == Platform("linux", "amd64")
    with pytest.raises(UnsupportedImageError, match=r"platforms: linux/amd64, linux/arm64"):
        resolve_platform(source, root, Platform("linux", "s390x"))

    image = Image.load(source, manifest)
    layer = write_layer([Entry.file("etc/patched", b"yes\n")], tmp_path)
    bundle = append_layer(source, root, image, layer, original_of(image, "x"), created="2024-01-01T00:00:00Z",
                          comment="test")
    out = tmp_path / "out"
    digest = write_layout(out, bundle, "patched")
    # skopeo reads the written outer index byte for byte, and the arm64 image through it.
    raw = run("skopeo", "inspect", "--raw", f"oci:{out}:patched").encode()
    assert Digest.of_bytes(raw) == digest
    written = LayoutSource(out, "patched")
    new_root = written.root()
    assert isinstance(new_root, Index)
    nested_entry, arm_entry, artifact_entry = new_root.manifests
    assert nested_entry.media_type == MediaType.OCI_INDEX and nested_entry.digest != root.manifests[0].digest
    assert arm_entry.digest == docs["arm"].digest
    assert artifact_entry == root.manifests[2]
    nested = written.fetch_manifest(nested_entry)
    assert isinstance(nested, Index)
    assert nested.manifests[0].digest == bundle.primary.digest
    assert nested.manifests[0].platform == Platform("linux", "amd64")
    found, _ = resolve_platform(written, new_root, Platform("linux", "amd64"))
    assert found.layers[-1].digest == layer.digest
    # The artifact and the blob it names were copied byte for byte.
    artifact = written.fetch_manifest(artifact_entry)
    assert isinstance(artifact, Opaque)
    assert artifact.raw == (src / "blobs/sha256" / artifact_entry.digest.hex).read_bytes()
    for desc in artifact.references():
        copied = (out / "blobs/sha256" / desc.digest.hex).read_bytes()
        assert copied == (src / "blobs/sha256" / desc.digest.hex).read_bytes()
    # The untouched platform still reads through skopeo (which selects by platform from the outer index).
    inspected = json.loads(run("skopeo", "--override-arch", "arm64", "inspect", f"oci:{out}:patched"))
    assert inspected["Architecture"] == "arm64"


def test_variant_preference_without_a_wanted_variant(umoci_images: Fixture, tmp_path: Path) -> None:
    """linux/arm64 picks the v8 (or variant-less) entry even when another variant is listed first."""
    out = tmp_path / "l"
    amd, arm = _copy_images(umoci_images, out)
    index = json.dumps({"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": [
        _entry(MediaType.OCI_MANIFEST, amd.raw, amd.digest, ("linux", "arm64", "v9")),
        _entry(MediaType.OCI_MANIFEST, arm.raw, arm.digest, ("linux", "arm64", "v8")),
    ]}).encode()
    entry = {**_entry(MediaType.OCI_INDEX, index, _blob(out, index)),
             "annotations": {"org.opencontainers.image.ref.name": "v"}}
    (out / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    source = LayoutSource(out, "v")
    root = source.root()
    assert isinstance(root, Index)
    assert resolve_platform(source, root, Platform("linux", "arm64"))[0].digest == arm.digest
    assert resolve_platform(source, root, Platform("linux", "arm64", "v9"))[0].digest == amd.digest


def test_repatch_without_history_replaces_the_patch_layer(umoci_images: Fixture, tmp_path: Path) -> None:
    """ko/apko images have no history: the config label alone must mark copa's layer."""
    src = LayoutSource(umoci_images.layout, "amd")
    root = src.root()
    assert isinstance(root, Manifest)
    image = Image.load(src, root)
    # Strip the history, as ko and apko write configs.
    doc = json.loads(image.config.raw)
    doc.pop("history", None)
    bare = Image(src, root, ImageConfig.parse(json.dumps(doc).encode()))
    assert not bare.config.history
    first_layer = write_layer([Entry.file("etc/patched", b"1\n")], tmp_path)
    first = append_layer(src, root, bare, first_layer, original_of(bare, "orig"), created="", comment="one")
    patched_config = ImageConfig.parse(first.open_blob(first.primary.config).read())
    assert patched_config.labels[PATCH_LAYER_LABEL] == str(first_layer.diff_id)
    assert not patched_config.history
    again = Image(src, first.primary, patched_config)
    original = original_of(again, "patched")
    assert original.layers == len(root.layers) and original.base_reference == "orig"
    # A kept layer's descriptor JSON is the original's, byte for byte (unknown fields survive).
    kept = json.loads(first.primary.raw)["layers"][:-1]
    assert kept == json.loads(root.raw)["layers"]
    # An image whose label names a layer that is not its top layer is not taken for a copa patch.
    foreign = json.loads(patched_config.raw)
    foreign["config"]["Labels"][PATCH_LAYER_LABEL] = str(root.layers[0].digest)
    other = Image(src, first.primary, ImageConfig.parse(json.dumps(foreign).encode()))
    assert original_of(other, "y").layers == len(first.primary.layers)
