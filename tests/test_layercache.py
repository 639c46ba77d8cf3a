"""Layer records by blob digest (copa.oci.layercache): `scan` with the cache gives the View it gives without it, and a
second image on an already-seen base reads only its own layers.

The View without the cache is the oracle (tests/test_rootfs.py checks it against `umoci unpack`); here it is compared
with the View built from records written by a first scan, on the real Debian and Alpine fixtures and on a layout
umoci builds from tars with the awkward cases (hardlinks out of the captured paths, duplicates, whiteouts)."""

from __future__ import annotations

import dataclasses
import io
import random
import subprocess
import tarfile
from collections import Counter
from pathlib import Path
from typing import BinaryIO

import pytest

from copa.errors import IntegrityError
from copa.oci.digest import Digest
from copa.oci.image import Image, Source
from copa.oci.layercache import LayerCache
from copa.oci.layout import LayoutSource
from copa.oci.model import Descriptor, Document, ImageConfig, Index, Manifest
from copa.oci.rootfs import View, scan
from copa.pkg.cache import Cache
from copa.pkg.detect import CAPTURE, CAPTURE_LARGE
from tests.support import alpine, images

pytestmark = [pytest.mark.slow]


class CountingSource:
    """A real layout source that counts the blobs opened (what `scan` reads)."""

    def __init__(self, inner: Source) -> None:
        self.inner = inner
        self.opened: Counter[Digest] = Counter()

    @property
    def description(self) -> str:
        return self.inner.description

    def root(self) -> Manifest | Index:
        return self.inner.root()

    def fetch_manifest(self, desc: Descriptor) -> Document:
        return self.inner.fetch_manifest(desc)

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        self.opened[desc.digest] += 1
        return self.inner.open_blob(desc)


def _image(layout: Path, ref: str) -> tuple[Image, CountingSource]:
    source = CountingSource(LayoutSource(layout, ref))
    root = source.root()
    assert isinstance(root, Manifest)
    return Image.load(source, root), source


def _scan(image: Image, cache: LayerCache | None) -> View:
    return scan(image, capture=CAPTURE, large=CAPTURE_LARGE, cache=cache)


def _layer_reads(image: Image, source: CountingSource) -> list[int]:
    return [source.opened[layer.descriptor.digest] for layer in image.layers]


def _same(a: View, b: View) -> None:
    assert a.nodes == b.nodes
    assert a.contents == b.contents


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> LayerCache:
    return LayerCache(Cache(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def debian_plain() -> View:
    image, _ = _image(*images.debian_layout())
    return _scan(image, None)


def test_debian_view_is_the_same_from_records(cache: LayerCache, debian_plain: View) -> None:
    cold, source = _image(*images.debian_layout())
    _same(_scan(cold, cache), debian_plain)
    assert _layer_reads(cold, source) == [1]
    warm, source = _image(*images.debian_layout())
    view = _scan(warm, cache)
    assert _layer_reads(warm, source) == [0], "a recorded layer was read again"
    _same(view, debian_plain)
    assert view.read("var/lib/dpkg/status") and view.read("etc/os-release")


def test_second_image_on_the_same_base_reads_only_its_new_layer(cache: LayerCache, debian_plain: View) -> None:
    """The two-layer fixture is the bookworm image plus a small layer: its base diff_id is recorded already."""
    base, _ = _image(*images.debian_layout())
    image, source = _image(*images.two_layer_layout())
    assert image.layers[0].diff_id == base.layers[0].diff_id
    uncached, _ = _image(*images.two_layer_layout())
    want = _scan(uncached, None)
    got = _scan(image, cache)
    assert _layer_reads(image, source) == [0, 1]
    _same(got, want)
    assert got.nodes != debian_plain.nodes  # the upper layer did change something


def test_alpine_view_is_the_same_from_records(cache: LayerCache) -> None:
    plain, _ = _image(*alpine.alpine_layout())
    want = _scan(plain, None)
    cold, _ = _image(*alpine.alpine_layout())
    _same(_scan(cold, cache), want)
    warm, source = _image(*alpine.alpine_layout())
    _same(_scan(warm, cache), want)
    assert _layer_reads(warm, source) == [0]
    assert want.read("lib/apk/db/installed")


def test_a_damaged_record_is_read_again_from_the_layer(tmp_path: Path) -> None:
    plain, _ = _image(*alpine.alpine_layout())
    want = _scan(plain, None)
    root = tmp_path / "cache"
    cold, _ = _image(*alpine.alpine_layout())
    _scan(cold, LayerCache(Cache(root)))
    (record,) = (root / "derived").rglob("*.rec")
    data = bytearray(record.read_bytes())
    data[len(data) // 2] ^= 0xFF
    record.write_bytes(bytes(data))  # a stray write: same size, same inode
    _forget_verified()
    again, source = _image(*alpine.alpine_layout())
    _same(_scan(again, LayerCache(Cache(root))), want)
    assert _layer_reads(again, source) == [1], "the damaged record was served"
    assert record.is_file() and record.read_bytes() != bytes(data), "the record was not written again"


def test_records_follow_the_blob_digest_not_the_configs_diff_id(tmp_path: Path) -> None:
    """A record is keyed by the layer blob's digest, which every read checks: a config whose diff_id lies does not
    change what the blob holds, so its record serves the honest image too (and the other way round)."""
    layout = _umoci_layout(tmp_path, [[_file("etc/os-release", b"ID=test\n")]])
    image, _ = _image(layout, "s")
    lying = Image(image.source, image.manifest,
                  _with_diff_ids(image, [Digest("sha256", "0" * 64)]))
    store = LayerCache(Cache(tmp_path / "cache"))
    view = _scan(lying, store)
    assert view.read("etc/os-release") == b"ID=test\n"
    assert len(list((tmp_path / "cache" / "derived").rglob("*.rec"))) == 1
    honest, source = _image(layout, "s")
    _same(_scan(honest, store), view)
    assert _layer_reads(honest, source) == [0]


def test_a_blob_that_does_not_match_its_digest_is_not_recorded(tmp_path: Path) -> None:
    """The scan fails (as it does without the cache) and leaves no record: one is made only of a blob read to its
    end with the digest the manifest names."""
    # 8 MiB after the tar's end: the scan reaches the end of the archive long before the end of the blob.
    layout = _umoci_layout(tmp_path, [[_file("etc/os-release", b"ID=test\n")]], trailing=8 << 20)
    image, _ = _image(layout, "s")
    blob = layout / "blobs" / "sha256" / image.layers[0].descriptor.digest.hex
    data = bytearray(blob.read_bytes())
    data[4] ^= 0xFF  # the gzip header's MTIME: the layer still decompresses as before, only the digest can tell
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    store = LayerCache(Cache(tmp_path / "cache"))
    damaged, _ = _image(layout, "s")
    with pytest.raises(IntegrityError):
        _scan(damaged, store)
    assert not list((tmp_path / "cache" / "derived").rglob("*.rec"))


def test_hardlinks_duplicates_and_whiteouts_replay_exactly(tmp_path: Path) -> None:
    """Hardlinks in the captured /etc to files outside it (the second read a record must keep), a path twice in
    one layer, a whiteout and an opaque directory: the View from records is the View from the layers, and the
    captured links hold what umoci puts on disk."""
    lower = [_dir("usr"), _dir("usr/share"), _file("usr/share/target", b"outside\n"), _dir("etc"),
             _link("etc/linked", "usr/share/target"), _file("etc/twice", b"first\n"), _file("etc/twice", b"second\n"),
             _dir("etc/gone"), _file("etc/gone/a", b"a\n"), _file("etc/drop", b"drop\n"),
             _file("usr/share/hidden-target", b"hidden\n")]
    upper = [_dir("etc"), _whiteout("etc/drop"), _dir("etc/gone"), _opaque("etc/gone"), _file("etc/gone/b", b"b\n"),
             _file("usr/share/other", b"other\n"), _link("etc/also", "usr/share/other")]
    layout = _umoci_layout(tmp_path, [lower, upper])
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:s", str(bundle)], check=True, capture_output=True)
    plain, _ = _image(layout, "s")
    want = _scan(plain, None)
    store = LayerCache(Cache(tmp_path / "cache"))
    _same(_scan(_image(layout, "s")[0], store), want)
    warm, source = _image(layout, "s")
    got = _scan(warm, store)
    assert _layer_reads(warm, source) == [0, 0]
    _same(got, want)
    # A path twice in one layer: the last entry is what an unpacker leaves (umoci), and what scan keeps.
    for path in ("etc/linked", "etc/also", "etc/gone/b", "etc/twice"):
        assert got.read(path) == (bundle / "rootfs" / path).read_bytes(), path
    assert got.get("etc/drop") is None and got.get("etc/gone/a") is None
    assert not (bundle / "rootfs/etc/drop").exists() and not (bundle / "rootfs/etc/gone/a").exists()


# -- helpers ----------------------------------------------------------------------------------------------------


def _forget_verified() -> None:
    """A new process: nothing verified yet (the test runs in one process, a sweep's workers do not)."""
    from copa.pkg import cache as cache_module
    cache_module._verified.clear()


def _with_diff_ids(image: Image, diff_ids: list[Digest]) -> ImageConfig:
    return dataclasses.replace(image.config, diff_ids=tuple(diff_ids))


Member = tuple[tarfile.TarInfo, bytes | None]


def _info(name: str, kind: bytes, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 1_700_000_000
    return info


def _file(name: str, data: bytes) -> Member:
    info = _info(name, tarfile.REGTYPE)
    info.size = len(data)
    return info, data


def _dir(name: str) -> Member:
    return _info(name, tarfile.DIRTYPE, 0o755), None


def _link(name: str, target: str) -> Member:
    info = _info(name, tarfile.LNKTYPE)
    info.linkname = target
    return info, None


def _whiteout(path: str) -> Member:
    parent, _, base = path.rpartition("/")
    return _file(f"{parent}/.wh.{base}", b"")


def _opaque(directory: str) -> Member:
    return _file(f"{directory}/.wh..wh..opq", b"")


def _umoci_layout(tmp: Path, layers: list[list[Member]], trailing: int = 0) -> Path:
    """An OCI layout made by umoci from tars written here (umoci computes the digests and diff_ids); `trailing`
    random bytes after each tar's end-of-archive blocks (where readers stop), which compress to as many."""
    layout = tmp / "layout"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True, capture_output=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:s"], check=True, capture_output=True)
    for i, members in enumerate(layers):
        plain = tmp / f"layer{i}.tar"
        with tarfile.open(plain, "w", format=tarfile.PAX_FORMAT) as tar:
            for info, data in members:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        with plain.open("ab") as f:
            f.write(random.Random(i).randbytes(trailing))
        subprocess.run(["umoci", "raw", "add-layer", "--image", f"{layout}:s", str(plain)],
                       check=True, capture_output=True)
    return layout
