"""The merged rootfs view (copa.oci.rootfs) on the real two-layer Debian fixture, with `umoci unpack` as the oracle.

umoci applies the same layers (whiteouts, opaque directories, hardlinks) to a real directory; whatever it
puts on disk is what `scan` must index and what `read_files` must return.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from copa.oci.image import Image, Source
from copa.oci.layer import Entry, Kind, write_layer
from copa.oci.layout import LayoutSource
from copa.oci.model import Manifest
from copa.oci.rootfs import Node, View, read_files, scan
from tests.support import images

pytestmark = [pytest.mark.slow]


def _image(layout: Path, ref: str) -> Image:
    source: Source = LayoutSource(layout, ref)
    root = source.root()
    assert isinstance(root, Manifest)
    return Image.load(source, root)


@pytest.fixture(scope="module")
def two_layer() -> Image:
    layout, ref = images.two_layer_layout()
    return _image(layout, ref)


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """umoci's rootfs of the two-layer image (run as root, so owners and modes are kept as in the layers)."""
    layout, ref = images.two_layer_layout()
    bundle = tmp_path_factory.mktemp("umoci") / "bundle"
    proc = subprocess.run(["umoci", "unpack", "--image", f"{layout}:{ref}", str(bundle)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return bundle / "rootfs"


# -- read_files -----------------------------------------------------------------------------------


def test_changed_file_has_the_upper_layers_content(two_layer: Image, unpacked: Path) -> None:
    files = read_files(two_layer, [images.TWO_LAYER_CHANGED, images.TWO_LAYER_ADDED])
    assert files.get(images.TWO_LAYER_CHANGED) == images.TWO_LAYER_CHANGED_CONTENT
    assert files.get(images.TWO_LAYER_CHANGED) == (unpacked / images.TWO_LAYER_CHANGED).read_bytes()
    assert files.get(images.TWO_LAYER_ADDED) == images.TWO_LAYER_ADDED_CONTENT
    # The lower layer alone still has the original content: the view really merges.
    lower = read_files(two_layer, [images.TWO_LAYER_CHANGED], upto=1).get(images.TWO_LAYER_CHANGED)
    assert lower is not None and lower != images.TWO_LAYER_CHANGED_CONTENT


def test_whiteout_hides_the_deleted_file(two_layer: Image, unpacked: Path) -> None:
    assert not (unpacked / images.TWO_LAYER_DELETED).exists()
    assert read_files(two_layer, [images.TWO_LAYER_DELETED]).get(images.TWO_LAYER_DELETED) is None
    assert read_files(two_layer, [images.TWO_LAYER_DELETED], upto=1).get(images.TWO_LAYER_DELETED) is not None
    assert scan(two_layer).get(images.TWO_LAYER_DELETED) is None
    assert scan(two_layer, upto=1).get(images.TWO_LAYER_DELETED) is not None


def test_opaque_directory_shows_only_the_upper_layers_files(two_layer: Image, unpacked: Path) -> None:
    on_disk = sorted(str(p.relative_to(unpacked)) for p in (unpacked / images.TWO_LAYER_OPAQUE_DIR).rglob("*"))
    assert on_disk == [images.TWO_LAYER_OPAQUE_KEPT]
    under = read_files(two_layer, prefixes=[images.TWO_LAYER_OPAQUE_DIR]).under(images.TWO_LAYER_OPAQUE_DIR)
    assert under == {images.TWO_LAYER_OPAQUE_KEPT: images.TWO_LAYER_OPAQUE_CONTENT}
    # ... while the base layer had more than that file there.
    lower = read_files(two_layer, prefixes=[images.TWO_LAYER_OPAQUE_DIR], upto=1).under(images.TWO_LAYER_OPAQUE_DIR)
    assert set(lower) - {images.TWO_LAYER_OPAQUE_KEPT}


def test_symlinked_file_and_symlinked_directory_are_resolved(two_layer: Image, unpacked: Path) -> None:
    assert os.readlink(unpacked / "etc/os-release") == "../usr/lib/os-release"
    assert os.readlink(unpacked / "lib") == "usr/lib"  # merged /usr
    asked = ["etc/os-release", "lib/os-release", "bin/sh", "/lib/x86_64-linux-gnu/libc.so.6"]
    files = read_files(two_layer, asked)
    for path in asked:
        real = unpacked / path.lstrip("/")
        assert files.get(path) == real.read_bytes(), f"{path} read through its symlinks differs from umoci's file"
    view = scan(two_layer, capture=["etc", "usr/lib/os-release"])
    assert view.resolve("etc/os-release") == "usr/lib/os-release"
    assert view.resolve("lib/os-release") == "usr/lib/os-release"
    assert view.read("etc/os-release") == (unpacked / "usr/lib/os-release").read_bytes()


# -- scan against umoci -----------------------------------------------------------------------------


def _disk_nodes(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            yield str(full.relative_to(root)), full.lstat()


def _expected_kind(node: Node) -> str:
    # A hardlink is a regular file on disk; so is its target.
    return "file" if node.kind == "hardlink" else node.kind


def _compare_with_disk(nodes: dict[str, Node], root: Path) -> None:
    disk = dict(_disk_nodes(root))
    # umoci creates parents a layer omits; every path a layer names must be on disk and vice versa for files.
    missing = sorted(set(nodes) - set(disk))
    assert not missing, f"scan lists paths umoci did not create: {missing[:10]}"
    extra = sorted(p for p, st in disk.items() if p not in nodes and not stat.S_ISDIR(st.st_mode))
    assert not extra, f"umoci created paths scan does not list: {extra[:10]}"
    problems = []
    for path, node in sorted(nodes.items()):
        st = disk[path]
        kind = _expected_kind(node)
        actual = ("file" if stat.S_ISREG(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode)
                  else "symlink" if stat.S_ISLNK(st.st_mode) else "other")
        if kind != actual:
            problems.append(f"{path}: scan says {node.kind}, umoci made {actual}")
            continue
        if kind == "symlink":
            if os.readlink(root / path) != node.linkname:
                problems.append(f"{path}: link {node.linkname!r} vs {os.readlink(root / path)!r}")
            continue
        if stat.S_IMODE(st.st_mode) != node.mode & 0o7777:
            problems.append(f"{path}: mode {node.mode & 0o7777:o} vs {stat.S_IMODE(st.st_mode):o}")
        if (st.st_uid, st.st_gid) != (node.uid, node.gid):
            problems.append(f"{path}: owner {node.uid}:{node.gid} vs {st.st_uid}:{st.st_gid}")
        if kind == "file" and node.kind == "file" and st.st_size != node.size:
            problems.append(f"{path}: size {node.size} vs {st.st_size}")
        if node.kind == "hardlink":
            target = root / node.linkname.lstrip("/")
            if not os.path.samefile(root / path, target):
                problems.append(f"{path}: not hardlinked to {node.linkname}")
    assert not problems, f"{len(problems)} differences from umoci, e.g. {problems[:10]}"


def test_scan_agrees_with_umoci_unpack(two_layer: Image, unpacked: Path) -> None:
    view = scan(two_layer)
    assert len(view.nodes) > 1000
    _compare_with_disk(view.nodes, unpacked)
    assert view.get(images.TWO_LAYER_CHANGED) is not None and view.get(images.TWO_LAYER_CHANGED).layer == 1  # type: ignore[union-attr]
    assert view.get("etc/os-release").kind == "symlink"  # type: ignore[union-attr]


# -- a synthetic image for the corners the Debian fixture lacks ------------------------------------------


def _layer_entries(members: list[tuple[str, str, bytes | str]]) -> list[Entry]:
    out = []
    for name, kind, payload in members:
        if kind == "dir":
            out.append(Entry(name, Kind.DIR, 0o755))
        elif kind == "file":
            data = payload if isinstance(payload, bytes) else payload.encode()
            out.append(Entry.file(name, data, 0o644))
        elif kind == "symlink":
            out.append(Entry(name, Kind.SYMLINK, 0o777, linkname=str(payload)))
        elif kind == "whiteout":
            out.append(Entry.whiteout(name))
        elif kind == "hardlink":
            out.append(Entry(name, Kind.HARDLINK, 0o644, linkname=str(payload)))
    return out


def _synthetic_layout(tmp: Path, layers: list[list[tuple[str, str, bytes | str]]]) -> Path:
    """An OCI layout made by umoci from layer tars we write, so umoci both builds and unpacks it."""
    layout = tmp / "layout"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True, capture_output=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:s"], check=True, capture_output=True)
    for i, members in enumerate(layers):
        work = tmp / f"w{i}"
        work.mkdir()
        blob = write_layer(_layer_entries(members), work)
        plain = work / "layer.tar"  # umoci raw add-layer wants an uncompressed tar
        with gzip.open(blob.path) as src, plain.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        subprocess.run(["umoci", "raw", "add-layer", "--image", f"{layout}:s", str(plain)],
                       check=True, capture_output=True)
    return layout


def test_upper_symlink_replacing_a_directory_hides_its_lower_children(tmp_path: Path) -> None:
    """A non-directory in an upper layer replaces a lower directory and everything under it."""
    layout = _synthetic_layout(tmp_path, [
        [("a", "dir", ""), ("a/old.txt", "file", "old"), ("b", "dir", ""), ("b/x", "file", "x"),
         ("c", "dir", ""), ("c/gone", "file", "gone"), ("c/stays", "file", "stays")],
        [("a", "symlink", "b"), ("c/gone", "whiteout", "")],
    ])
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:s", str(bundle)], check=True, capture_output=True)
    rootfs = bundle / "rootfs"
    assert os.readlink(rootfs / "a") == "b" and not (rootfs / "b/old.txt").exists()
    image = _image(layout, "s")
    view = scan(image)
    _compare_with_disk(view.nodes, rootfs)
    assert view.get("a/old.txt") is None, "a lower child of a directory replaced by a symlink stays visible"
    assert view.get("c/gone") is None and view.get("c/stays") is not None
    # Asked through the symlink, a/old.txt is b/old.txt, which does not exist; a/x is b/x.
    files = read_files(image, ["a/old.txt", "a/x"])
    assert files.get("a/old.txt") is None
    assert files.get("a/x") == b"x"


def test_hardlink_content_comes_from_its_own_layer(tmp_path: Path) -> None:
    """An upper layer replacing a hardlink's target path does not change the link's content (umoci agrees)."""
    layout = _synthetic_layout(tmp_path, [
        [("etc", "dir", ""), ("etc/a", "file", "one"), ("etc/link", "hardlink", "etc/a"),
         ("usr", "dir", ""), ("usr/x", "file", "outside"), ("etc/out", "hardlink", "usr/x")],
        [("etc", "dir", ""), ("etc/a", "file", "two"), ("usr", "dir", ""), ("usr/x", "file", "changed")],
    ])
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:s", str(bundle)], check=True, capture_output=True)
    rootfs = bundle / "rootfs"
    view = scan(_image(layout, "s"), capture=["etc"])
    for path in ("etc/a", "etc/link", "etc/out"):
        assert view.read(path) == (rootfs / path).read_bytes(), path
    assert view.read("etc/link") == b"one" and view.read("etc/out") == b"outside"
    assert view.under("etc") == {p: (rootfs / p).read_bytes() for p in ("etc/a", "etc/link", "etc/out")}


def test_early_hook_fires_once_past_the_directory_with_its_files() -> None:
    """On the real Debian fixture: the hook gets the final /etc/apt sources while var/ is still unread."""
    layout, ref = images.debian_layout()
    source = LayoutSource(layout, ref)
    root = source.root()
    assert isinstance(root, Manifest)
    image = Image.load(source, root)
    calls: list[dict[str, bytes]] = []
    view = scan(image, None, ("etc/apt", "var/lib/dpkg/status"), early=("etc", lambda c: calls.append(dict(c))))
    assert len(calls) == 1
    seen = calls[0]
    assert {p: c for p, c in view.contents.items() if p.startswith("etc/apt/")} == seen
    assert any(p.startswith("etc/apt/sources.list") for p in seen)
    assert "var/lib/dpkg/status" in view.contents and "var/lib/dpkg/status" not in seen


def test_large_database_files_are_captured_where_asked(tmp_path: Path) -> None:
    """A package database bigger than the usual capture limit (an rpm Packages of tens of MB) is kept when its
    directory is named `large`; the same size elsewhere is indexed but not kept."""
    big = os.urandom(1024) * (17 * 1024)  # 17 MiB: above the 16 MiB limit for ordinary captured files
    layout = _synthetic_layout(tmp_path, [[("etc", "dir", ""), ("etc/big", "file", big), ("var", "dir", ""),
                                           ("var/lib", "dir", ""), ("var/lib/rpm", "dir", ""),
                                           ("var/lib/rpm/Packages", "file", big)]])
    view = scan(_image(layout, "s"), capture=["etc", "var/lib/rpm"], large=["var/lib/rpm"])
    assert view.read("var/lib/rpm/Packages") == big
    assert view.get("etc/big") is not None and view.read("etc/big") is None


_PARTS = st.sampled_from(["a", "b", "a-b", "a.b", "ab", "é", "a b", "\udcff", "0", "~"])


@given(st.sets(st.lists(_PARTS, min_size=1, max_size=4).map("/".join), max_size=40),
       st.lists(_PARTS, min_size=1, max_size=3).map("/".join))
def test_paths_below_is_the_filter_it_replaces(paths: set[str], directory: str) -> None:
    """View.paths_below (a bisection over the sorted paths) against the plain filter over every path; names that
    sort next to "dir/" ("dir-x", "dir.x", "dir0") must stay out."""
    view = View({p: Node(p, "file", 0o644, 0, 0, 0, "", 0) for p in paths})
    assert view.paths_below(directory) == sorted(p for p in paths if p.startswith(directory + "/"))
