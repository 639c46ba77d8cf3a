"""docker-archive source and sink, checked against skopeo and umoci as oracles."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import BinaryIO

import pytest
import zstandard

from copa.errors import IntegrityError, LocalIOError
from copa.oci.archive import ArchiveSource, write_archive
from copa.oci.digest import Digest
from copa.oci.image import Bundle, Source, read_blob
from copa.oci.layout import LayoutSource, write_layout
from copa.oci.model import Descriptor, ImageConfig, Index, Manifest, MediaType, Platform, parse_manifest
from tests.support.validate import validate
from tests.test_layout import Fixture, assert_unpacks_to, bundle_of, images, run, run_bytes

__all__ = ["images"]  # the session fixture, shared with tests/test_layout.py


def _skopeo_archive(images: Fixture, tmp_path: Path, name: str = "amd") -> Path:
    out = tmp_path / f"{name}.tar"
    run("skopeo", "copy", "-q", f"oci:{images.layout}:{name}", f"docker-archive:{out}:repo:{name}")
    return out


def _manifest(source: Source) -> Manifest:
    root = source.root()
    assert isinstance(root, Manifest)
    return root


def _skopeo_manifest(ref: str) -> dict[str, object]:
    doc = json.loads(run_bytes("skopeo", "inspect", "--raw", ref))
    assert isinstance(doc, dict)
    return doc


def _layer_digests(doc: dict[str, object]) -> list[tuple[str, int]]:
    layers = doc["layers"]
    assert isinstance(layers, list)
    return [(str(x["digest"]), int(x["size"])) for x in layers]


def test_reads_skopeo_archive(images: Fixture, tmp_path: Path) -> None:
    archive = _skopeo_archive(images, tmp_path)
    source = ArchiveSource(archive, "repo:amd")
    validate(source)
    manifest = _manifest(source)
    assert manifest.media_type == MediaType.DOCKER_MANIFEST
    assert {d.media_type for d in manifest.layers} == {MediaType.DOCKER_LAYER}
    # skopeo synthesizes a manifest for docker-archive too: config and layers must agree with ours.
    theirs = _skopeo_manifest(f"docker-archive:{archive}")
    assert theirs["config"]["digest"] == str(manifest.config.digest)  # type: ignore[index]
    assert _layer_digests(theirs) == [(str(d.digest), d.size) for d in manifest.layers]
    # Deterministic: a second reader (and the fully qualified tag, and no tag) yield the same bytes.
    assert ArchiveSource(archive, "docker.io/library/repo:amd").root().raw == manifest.raw
    assert ArchiveSource(archive).root().raw == manifest.raw


def _craft(path: Path, members: dict[str, bytes], manifest: list[dict[str, object]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in {**members, "manifest.json": json.dumps(manifest).encode()}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _parts(images: Fixture, name: str) -> tuple[bytes, ImageConfig, list[bytes]]:
    """Config and gzip layer blobs of a fixture image (small: fine to hold in a test)."""
    source = LayoutSource(images.layout, name)
    m = _manifest(source)
    config_raw = read_blob(source, m.config)
    return config_raw, ImageConfig.parse(config_raw), [read_blob(source, d) for d in m.layers]


def test_reads_new_docker_save_layout_with_gzip_layers(images: Fixture, tmp_path: Path) -> None:
    config_raw, config, layers = _parts(images, "amd")
    members = {f"blobs/sha256/{Digest.of_bytes(b).hex}": b for b in [config_raw, *layers]}
    names = list(members)
    archive = tmp_path / "new.tar"
    _craft(archive, members, [{"Config": names[0], "RepoTags": ["repo:new"], "Layers": names[1:]}])
    source = ArchiveSource(archive, "repo:new")
    validate(source)
    manifest = _manifest(source)
    assert {d.media_type for d in manifest.layers} == {MediaType.DOCKER_LAYER_GZIP}
    # skopeo presents compressed archive members by their uncompressed digests; those are our diff_ids.
    theirs = [d for d, _size in _layer_digests(_skopeo_manifest(f"docker-archive:{archive}"))]
    assert theirs == [str(d) for d in config.diff_ids]
    out = tmp_path / "layout"
    # A Docker-typed image: converted to OCI by default, since umoci and skopeo 1.9 only see OCI entries.
    digest = write_layout(out, bundle_of(source), "fromtar")
    assert digest != manifest.digest
    converted = LayoutSource(out, "fromtar")
    validate(converted)
    assert _manifest(converted).media_type == MediaType.OCI_MANIFEST
    assert [d.digest for d in _manifest(converted).layers] == [d.digest for d in manifest.layers]
    assert json.loads(run("skopeo", "inspect", f"oci:{out}:fromtar"))["Digest"] == str(digest)
    assert_unpacks_to(out, "fromtar", images.trees["amd"], tmp_path)
    # Kept as Docker types on request: still a valid layout by our own reader.
    assert write_layout(out, bundle_of(source), "docker", keep_docker_types=True) == manifest.digest
    validate(LayoutSource(out, "docker"))


def test_reads_legacy_layout_with_zstd_layer(images: Fixture, tmp_path: Path) -> None:
    config_raw, config, layers = _parts(images, "amd")
    plain = [gzip.decompress(b) for b in layers]
    members = {
        f"{Digest.of_bytes(config_raw).hex}.json": config_raw,
        "aaaa/layer.tar": plain[0],  # legacy: uncompressed, named by a v1 id, not a digest
        "bbbb/layer.tar": zstandard.ZstdCompressor().compress(plain[1]),
    }
    archive = tmp_path / "legacy.tar"
    config_name, *layer_names = members
    _craft(archive, members, [{"Config": config_name, "RepoTags": None, "Layers": layer_names}])
    source = ArchiveSource(archive)
    validate(source)
    manifest = _manifest(source)
    # Docker v2s2 has no zstd layer type, so the synthesized manifest is OCI.
    assert manifest.media_type == MediaType.OCI_MANIFEST
    assert [d.media_type for d in manifest.layers] == [MediaType.OCI_LAYER, MediaType.OCI_LAYER_ZSTD]
    assert manifest.layers[0].digest == config.diff_ids[0]
    # skopeo must read the same archive to the same uncompressed content.
    run("skopeo", "copy", "-q", f"docker-archive:{archive}", f"oci:{tmp_path / 'sk'}:x")
    assert_unpacks_to(tmp_path / "sk", "x", images.trees["amd"], tmp_path)


def test_write_archive_round_trip(images: Fixture, tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    source = LayoutSource(images.layout, "amd")
    write_archive(out, bundle_of(source), ["example.com/team/app:1.0", "app:latest"])
    assert not out.with_name("out.tar.tmp").exists()
    inspected = json.loads(run("skopeo", "inspect", "--config", f"docker-archive:{out}:app:latest"))
    original = json.loads(run("skopeo", "inspect", "--config", f"oci:{images.layout}:amd"))
    assert inspected == original
    run("skopeo", "copy", "-q", f"docker-archive:{out}:example.com/team/app:1.0", f"dir:{tmp_path / 'dir'}")
    run("skopeo", "copy", "-q", f"docker-archive:{out}", f"oci:{tmp_path / 'oci'}:x")
    assert_unpacks_to(tmp_path / "oci", "x", images.trees["amd"], tmp_path)
    back = ArchiveSource(out, "app:latest")
    validate(back)
    assert _manifest(back).config.digest == _manifest(source).config.digest
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        repositories = json.load(tar.extractfile("repositories"))  # type: ignore[arg-type]
    assert "manifest.json" in names
    assert set(repositories) == {"example.com/team/app", "app"}
    top = repositories["app"]["latest"]
    assert f"{top}/layer.tar" in names and f"{top}/json" in names


def test_write_archive_from_zstd_layout(images: Fixture, tmp_path: Path) -> None:
    zl = tmp_path / "z"
    run("skopeo", "copy", "-q", "--dest-compress-format", "zstd", f"oci:{images.layout}:arm", f"oci:{zl}:z")
    source = LayoutSource(zl, "z")
    assert {layer_compression_of(d) for d in _manifest(source).layers} == {"zstd"}
    out = tmp_path / "z.tar"
    write_archive(out, bundle_of(source), ["z:1"])
    validate(ArchiveSource(out))
    run("skopeo", "copy", "-q", f"docker-archive:{out}", f"oci:{tmp_path / 'oci'}:x")
    assert_unpacks_to(tmp_path / "oci", "x", images.trees["arm"], tmp_path)


def layer_compression_of(desc: Descriptor) -> str:
    return "zstd" if desc.media_type.endswith("zstd") else "other"


def test_write_archive_rejects_wrong_diff_id(images: Fixture, tmp_path: Path) -> None:
    source = LayoutSource(images.layout, "arm")
    good = bundle_of(source)
    config = ImageConfig.parse(read_blob(source, good.primary.config))
    bad_config = config.edited((Digest.of_bytes(b"not the layer"),), config.history, {})
    bad_desc = Descriptor(MediaType.OCI_CONFIG, bad_config.digest, len(bad_config.raw))
    manifest = good.primary.edited(bad_desc, good.primary.layers, {})

    def opener(desc: Descriptor) -> BinaryIO:
        return io.BytesIO(bad_config.raw) if desc.digest == bad_config.digest else source.open_blob(desc)

    out = tmp_path / "bad.tar"
    with pytest.raises(IntegrityError, match="diff_id"):
        write_archive(out, Bundle(manifest, manifest, (), (bad_desc, *manifest.layers), opener), ["bad:1"])
    assert list(tmp_path.iterdir()) == []


def test_corrupt_member_is_an_integrity_error(images: Fixture, tmp_path: Path) -> None:
    archive = _skopeo_archive(images, tmp_path, "arm")
    source = ArchiveSource(archive)
    layer = _manifest(source).layers[0]
    data = bytearray(archive.read_bytes())
    # Flip a byte inside the layer member (the uncompressed layer is stored verbatim in the archive).
    with tarfile.open(archive) as tar:
        member = tar.getmember(f"{layer.digest.hex}.tar")
    data[member.offset_data + member.size // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="digest mismatch"), ArchiveSource(archive).open_blob(layer) as f:
        f.read()


def test_missing_tag_and_file(images: Fixture, tmp_path: Path) -> None:
    archive = _skopeo_archive(images, tmp_path, "arm")
    with pytest.raises(LocalIOError, match=r"no image tagged 'other:1' \(tags: docker.io/library/repo:arm\)"):
        ArchiveSource(archive, "other:1")
    with pytest.raises(LocalIOError, match="does not exist"):
        ArchiveSource(tmp_path / "absent.tar")


def test_docker_list_is_converted_with_its_children(images: Fixture, tmp_path: Path) -> None:
    archive = _skopeo_archive(images, tmp_path, "arm")
    source = ArchiveSource(archive)
    manifest = _manifest(source)
    entry = manifest.descriptor(Platform("linux", "arm64")).to_json()
    raw = json.dumps({"schemaVersion": 2, "mediaType": MediaType.DOCKER_LIST, "manifests": [entry]}).encode()
    listing = parse_manifest(raw)
    assert isinstance(listing, Index)
    bundle = Bundle(listing, manifest, (manifest,), (manifest.config, *manifest.layers), source.open_blob)
    out = tmp_path / "out"
    digest = write_layout(out, bundle, "list")
    index = json.loads(run_bytes("skopeo", "inspect", "--raw", f"oci:{out}:list"))
    assert (
        index["mediaType"] == MediaType.OCI_INDEX
        and Digest.of_bytes(run_bytes("skopeo", "inspect", "--raw", f"oci:{out}:list")) == digest
    )
    assert index["manifests"][0]["mediaType"] == MediaType.OCI_MANIFEST
    validate(LayoutSource(out, "list"))
    run("skopeo", "--override-arch", "arm64", "copy", "-q", f"oci:{out}:list", f"oci:{tmp_path / 'one'}:x")
    assert_unpacks_to(tmp_path / "one", "x", images.trees["arm"], tmp_path)
