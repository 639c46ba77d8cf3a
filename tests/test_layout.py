"""OCI layout source and sink, checked against skopeo and umoci as oracles.

Also home of the small real-image fixture (built with umoci) that tests/test_archive.py reuses.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import pytest

from copa.errors import IntegrityError, LocalIOError
from copa.oci.digest import Digest
from copa.oci.image import Bundle, Source, manifest_blobs, read_blob
from copa.oci.layout import LayoutSource, write_layout
from copa.oci.model import Descriptor, HistoryEntry, ImageConfig, Index, Manifest, MediaType, Platform, parse_manifest
from tests.support.validate import validate

CACHE = Path(os.environ.get("COPA_TEST_CACHE", Path.home() / ".cache" / "copa-tests"))
FIXTURE_VERSION = "oci-sinks-v1"


def run(*args: str | Path) -> str:
    """Run an oracle tool; a failure shows its stderr in the assertion."""
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed ({proc.returncode}): {proc.stderr.strip()}"
    return proc.stdout


def run_bytes(*args: str | Path) -> bytes:
    proc = subprocess.run([str(a) for a in args], capture_output=True, check=False)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed: {proc.stderr.decode(errors='replace')}"
    return proc.stdout


@dataclass(frozen=True)
class Fixture:
    layout: Path  # OCI layout written by umoci with images "amd" (2 layers) and "arm" (1 layer)
    trees: dict[str, Path]  # expected rootfs per image name


def _populate(root: Path, name: str) -> None:
    if name == "amd":
        (root / "etc").mkdir(parents=True)
        (root / "etc/hello.txt").write_text("hello from amd\n")
        os.symlink("hello.txt", root / "etc/link")
        (root / "bin").mkdir()
        (root / "bin/tool").write_text("#!/bin/sh\necho tool\n")
        (root / "bin/tool").chmod(0o755)
    elif name == "amd2":
        (root / "etc").mkdir(parents=True)
        (root / "etc/second.txt").write_text("second layer\n")
        (root / "opt/data").mkdir(parents=True)
        (root / "opt/data/blob.bin").write_bytes(random.Random(7).randbytes(300_000))
    else:
        (root / "usr/share").mkdir(parents=True)
        (root / "usr/share/arm.txt").write_text("hello from arm\n")


def _build_fixture(out: Path) -> None:
    src = out / "src"
    layers = {"amd": ["amd", "amd2"], "arm": ["arm"]}
    run("umoci", "init", "--layout", out / "layout")
    for image, parts in layers.items():
        ref = f"{out / 'layout'}:{image}"
        run("umoci", "new", "--image", ref)
        arch = "amd64" if image == "amd" else "arm64"
        run("umoci", "config", "--image", ref, "--os", "linux", "--architecture", arch, "--config.cmd", "/bin/sh")
        for part in parts:
            _populate(src / part, part)
            run("umoci", "insert", "--rootless", "--image", ref, src / part, "/")
            # Expected final tree: the layers never overlap, so it is the plain union.
            shutil.copytree(src / part, out / "trees" / image, symlinks=True, dirs_exist_ok=True)
        run("umoci", "gc", "--layout", out / "layout")


def fixture_dir() -> Fixture:
    out = CACHE / FIXTURE_VERSION
    if not (out / "done").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=".build-"))
        _build_fixture(tmp)
        (tmp / "done").write_text("")
        try:
            os.replace(tmp, out)
        except OSError:  # another test process finished first; its fixture is as good as ours
            shutil.rmtree(tmp)
    return Fixture(out / "layout", {"amd": out / "trees/amd", "arm": out / "trees/arm"})


@pytest.fixture(scope="session")
def images() -> Fixture:
    return fixture_dir()


def bundle_of(source: Source) -> Bundle:
    root = source.root()
    assert isinstance(root, Manifest)
    return Bundle(root=root, primary=root, children=(), blobs=manifest_blobs(root), open_blob=source.open_blob)


def tree(root: Path) -> dict[str, tuple[str, str | bytes]]:
    """Files, symlinks and exec bits under `root`; directories are implied by their contents."""
    out: dict[str, tuple[str, str | bytes]] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            else:
                out[rel] = ("exec" if p.stat().st_mode & 0o100 else "file", p.read_bytes())
    for dirpath, dirs, _files in os.walk(root):
        for name in dirs:
            p = Path(dirpath) / name
            if p.is_symlink():
                out[str(p.relative_to(root))] = ("link", os.readlink(p))
    return out


def assert_unpacks_to(layout: Path, name: str, expected: Path, work: Path) -> None:
    """umoci verifies every blob digest and diff_id while unpacking; then compare the files."""
    bundle = Path(tempfile.mkdtemp(dir=work, prefix="bundle-")) / "b"
    run("umoci", "unpack", "--rootless", "--image", f"{layout}:{name}", bundle)
    assert tree(bundle / "rootfs") == tree(expected)


def test_reads_umoci_layout(images: Fixture) -> None:
    source = LayoutSource(images.layout, "amd")
    validate(source)
    root = source.root()
    assert isinstance(root, Manifest)
    assert root.raw == run_bytes("skopeo", "inspect", "--raw", f"oci:{images.layout}:amd")
    assert len(root.layers) == 2


def test_reads_skopeo_copied_layout(images: Fixture, tmp_path: Path) -> None:
    run("skopeo", "copy", "-q", f"oci:{images.layout}:arm", f"oci:{tmp_path / 'copy'}:t")
    source = LayoutSource(tmp_path / "copy")  # a single entry needs no name
    validate(source)
    assert source.root().raw == run_bytes("skopeo", "inspect", "--raw", f"oci:{tmp_path / 'copy'}:t")


def test_write_layout_round_trip(images: Fixture, tmp_path: Path) -> None:
    out = tmp_path / "out"
    digest = write_layout(out, bundle_of(LayoutSource(images.layout, "amd")), "patched")
    inspected = json.loads(run("skopeo", "inspect", f"oci:{out}:patched"))
    assert inspected["Digest"] == str(digest)
    assert inspected["Architecture"] == "amd64"
    run("skopeo", "copy", "-q", f"oci:{out}:patched", f"dir:{tmp_path / 'dir'}")
    validate(LayoutSource(out, "patched"))
    assert_unpacks_to(out, "patched", images.trees["amd"], tmp_path)


def test_write_layout_adds_and_replaces_names(images: Fixture, tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_layout(out, bundle_of(LayoutSource(images.layout, "amd")), "x")
    arm = write_layout(out, bundle_of(LayoutSource(images.layout, "arm")), "y")
    assert write_layout(out, bundle_of(LayoutSource(images.layout, "arm")), "x") == arm
    entries = json.loads((out / "index.json").read_text())["manifests"]
    assert sorted(e["annotations"]["org.opencontainers.image.ref.name"] for e in entries) == ["x", "y"]
    for name in ("x", "y"):
        assert json.loads(run("skopeo", "inspect", f"oci:{out}:{name}"))["Architecture"] == "arm64"
        assert_unpacks_to(out, name, images.trees["arm"], tmp_path)


def _platform_index(layout: Path) -> tuple[Index, list[Manifest]]:
    children = []
    entries = []
    for name, arch in (("amd", "amd64"), ("arm", "arm64")):
        m = LayoutSource(layout, name).root()
        assert isinstance(m, Manifest)
        children.append(m)
        entries.append(m.descriptor(Platform("linux", arch)).to_json())
    raw = json.dumps({"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": entries}).encode()
    index = parse_manifest(raw)
    assert isinstance(index, Index)
    return index, children


def test_index_round_trip(images: Fixture, tmp_path: Path) -> None:
    index, children = _platform_index(images.layout)
    blobs = tuple(d for m in children for d in manifest_blobs(m))
    reader = LayoutSource(images.layout, "amd")
    bundle = Bundle(root=index, primary=children[0], children=tuple(children), blobs=blobs, open_blob=reader.open_blob)
    out = tmp_path / "out"
    assert write_layout(out, bundle, "multi") == index.digest
    assert run_bytes("skopeo", "inspect", "--raw", f"oci:{out}:multi") == index.raw
    validate(LayoutSource(out, "multi"))
    validate(LayoutSource(out, "multi"), Platform("linux", "arm64"))
    run("skopeo", "copy", "-q", "--all", f"oci:{out}:multi", f"dir:{tmp_path / 'all'}")
    for arch, name in (("arm64", "arm"), ("amd64", "amd")):
        single = tmp_path / f"single-{arch}"
        run("skopeo", "--override-arch", arch, "copy", "-q", f"oci:{out}:multi", f"oci:{single}:x")
        assert_unpacks_to(single, "x", images.trees[name], tmp_path)


def test_corrupt_blob_is_an_integrity_error(images: Fixture, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(images.layout, copy)
    source = LayoutSource(copy, "amd")
    root = source.root()
    assert isinstance(root, Manifest)
    layer = root.layers[-1]
    blob = copy / "blobs" / layer.digest.algorithm / layer.digest.hex
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="digest mismatch"), source.open_blob(layer) as f:
        f.read()
    with pytest.raises(IntegrityError):
        validate(source)


def test_missing_ref_name_lists_names(images: Fixture) -> None:
    with pytest.raises(LocalIOError, match=r"no image named 'nope' \(names: amd, arm\)"):
        LayoutSource(images.layout, "nope").root()
    with pytest.raises(LocalIOError, match="holds 2 images"):
        LayoutSource(images.layout).root()


def test_missing_directory_and_files(tmp_path: Path) -> None:
    with pytest.raises(LocalIOError, match="not a directory"):
        LayoutSource(tmp_path / "absent", "x")
    with pytest.raises(LocalIOError, match="oci-layout"):
        LayoutSource(tmp_path, "x")
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    with pytest.raises(LocalIOError, match=r"index\.json"):
        LayoutSource(tmp_path, "x").root()


class _FailingBlobs:
    """Fault injection: serves one blob with altered content (same size), the rest from the real source."""

    def __init__(self, source: Source, bad: Digest) -> None:
        self._source = source
        self._bad = bad

    def __call__(self, desc: Descriptor) -> BinaryIO:
        if desc.digest != self._bad:
            return self._source.open_blob(desc)
        return io.BytesIO(b"\0" * desc.size)


def test_failed_write_leaves_layout_unchanged(images: Fixture, tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_layout(out, bundle_of(LayoutSource(images.layout, "arm")), "keep")
    before = (out / "index.json").read_bytes()
    source = LayoutSource(images.layout, "amd")
    good = bundle_of(source)
    bad = Bundle(good.root, good.primary, (), good.blobs, _FailingBlobs(source, good.primary.layers[0].digest))
    with pytest.raises(IntegrityError):
        write_layout(out, bad, "keep")
    assert (out / "index.json").read_bytes() == before
    assert not list(out.rglob(".tmp-*"))
    assert_unpacks_to(out, "keep", images.trees["arm"], tmp_path)


def test_validator_catches_inconsistent_images(images: Fixture, tmp_path: Path) -> None:
    source = LayoutSource(images.layout, "arm")
    good = bundle_of(source)
    config = ImageConfig.parse(read_blob(source, good.primary.config))
    cases: dict[str, tuple[Manifest, ImageConfig]] = {
        "diff_id": (good.primary, config.edited((Digest.of_bytes(b"x"),), config.history, {})),
        "diff_ids": (good.primary, config.edited((), config.history, {})),
        "history": (good.primary, config.edited(config.diff_ids, (*config.history, HistoryEntry("extra")), {})),
        "media type": (
            good.primary.edited(
                good.primary.config,
                tuple(replace(d, media_type=MediaType.DOCKER_LAYER_GZIP) for d in good.primary.layers),
                {},
            ),
            config,
        ),
    }
    for i, (expected, (manifest, cfg)) in enumerate(cases.items()):
        cfg_desc = Descriptor(MediaType.OCI_CONFIG, cfg.digest, len(cfg.raw))
        m = manifest.edited(cfg_desc, manifest.layers, {})

        def opener(desc: Descriptor, cfg: ImageConfig = cfg) -> BinaryIO:
            return io.BytesIO(cfg.raw) if desc.digest == cfg.digest else source.open_blob(desc)

        out = tmp_path / f"case{i}"
        write_layout(out, Bundle(m, m, (), (cfg_desc, *m.layers), opener), "x", keep_docker_types=True)
        with pytest.raises(AssertionError, match=expected):
            validate(LayoutSource(out, "x"))
