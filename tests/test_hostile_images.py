"""Hostile images (issue 12): crafted layer tars, manifests and configs, each case named after its attack.

Layer cases are judged by umoci: `umoci unpack --rootless` of the same layout is what a runtime would see, and
copa's merged view (rootfs.scan) must hold the same paths, file contents and link targets; where umoci refuses a
layer, copa must refuse it too, with one line. Document cases (sizes, digests, media types, counts, types) are
read in-process through copa.oci (LayoutSource, Image.load, scan) and must end in the named CopaError. A sample of
both goes through the CLI, which must exit with its code, one line, no traceback, nothing written, nothing created
outside the work directory, within the time and memory bounds below. One hostile image goes through the real
registry (pushed by skopeo), read back by copa as from the layout.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from copa.errors import CopaError, IntegrityError, LocalIOError, UnsupportedImageError
from copa.oci.archive import ArchiveSource
from copa.oci.image import Image
from copa.oci.layout import LayoutSource
from copa.oci.model import Manifest, ManifestFormatError
from copa.oci.reference import Reference
from copa.oci.registry import RegistryClient, RegistrySource
from copa.oci.rootfs import MAX_CAPTURED_TOTAL, View, scan
from copa.pkg.detect import CAPTURE, CAPTURE_LARGE, detect
from tests.support.hostile_cli import refused, run_copa
from tests.support.hostile_images import (
    ALPINE_OS_RELEASE,
    DEBIAN_OS_RELEASE,
    OCI_INDEX,
    OCI_MANIFEST,
    Entry,
    Layout,
    archive_members,
    debian_base,
    digest,
    layer_tar,
    sparse_blob,
    write_archive,
    write_bomb_layout,
    write_layout,
)
from tests.support.registry import RunningRegistry

# Bounds every CLI case is held to (each fails while reading the image: no package work happens).
CLI_SECONDS = 30.0
CLI_PEAK_RSS_BYTES = 400 << 20  # the 100,000-layer manifest is a 15 MB JSON document parsed whole
# The compression bomb is read until MAX_CAPTURED_TOTAL is held: that much more.
BOMB_PEAK_RSS_BYTES = MAX_CAPTURED_TOTAL + CLI_PEAK_RSS_BYTES
# The escape target of the `../` cases, relative to the work directory; it must never appear.
ESCAPED = "copa-hostile-escaped"

BASE = debian_base()
WITHOUT_OS_RELEASE = [e for e in BASE if e.name != "etc/os-release"]


def _layers(*layers: list[Entry]) -> list[bytes]:
    return [layer_tar(entries) for entries in layers]


# name -> layers (bottom first). Each is unpacked by umoci and scanned by copa.
LAYER_CASES: dict[str, list[bytes]] = {
    "dotdot-escape": _layers(BASE, [Entry(f"../../../../../../{ESCAPED}", data=b"x")]),
    "dotdot-inside-shadows-os-release": _layers(BASE, [Entry("etc/../../etc/os-release", data=ALPINE_OS_RELEASE)]),
    "absolute-path": _layers(BASE, [Entry("/etc/os-release", data=ALPINE_OS_RELEASE)]),
    "dot-segments": _layers(BASE, [Entry("./etc/./os-release", data=ALPINE_OS_RELEASE)]),
    "symlink-escape-then-write-through": _layers(
        [*BASE, Entry("evil", "symlink", link=f"../../../../../../{ESCAPED}-dir")],
        [Entry("evil/escaped", data=b"x")]),
    "symlink-absolute-then-write-through": _layers(
        [*BASE, Entry("evil", "symlink", link="/")], [Entry("evil/etc/os-release", data=ALPINE_OS_RELEASE)]),
    "write-through-lower-etc-symlink": _layers(
        [Entry("usr/", "dir"), Entry("usr/etc/", "dir"), Entry("usr/etc/os-release", data=DEBIAN_OS_RELEASE),
         Entry("etc", "symlink", link="usr/etc"), *BASE[2:]],
        [Entry("etc/os-release", data=ALPINE_OS_RELEASE)]),
    "symlink-and-write-through-same-layer": _layers(
        [Entry("real/", "dir"), Entry("etc", "symlink", link="real"), Entry("etc/os-release", data=ALPINE_OS_RELEASE),
         *BASE[2:]]),
    "whiteout-through-symlink": _layers(
        [Entry("usr/", "dir"), Entry("usr/etc/", "dir"), Entry("usr/etc/os-release", data=DEBIAN_OS_RELEASE),
         Entry("usr/etc/keep", data=b"k"), Entry("etc", "symlink", link="usr/etc"), *BASE[2:]],
        [Entry("etc/.wh.os-release")]),
    "hardlink-to-outside": _layers(BASE, [Entry("etc/passwd-link", "hardlink", link="../../../../../etc/passwd")]),
    "hardlink-to-nothing": _layers(BASE, [Entry("etc/dangling", "hardlink", link="no/such/file")]),
    "whiteout-dotdot": _layers(BASE, [Entry("etc/.wh...")]),
    "whiteout-dot-at-root": _layers(BASE, [Entry(".wh..")]),
    "whiteout-empty-name": _layers(BASE, [Entry("etc/.wh.")]),
    "opaque-at-root": _layers(BASE, [Entry(".wh..wh..opq")]),
    "opaque-under-a-file": _layers(BASE, [Entry("etc/os-release/.wh..wh..opq")]),
    "opaque-in-missing-dir": _layers(BASE, [Entry("nowhere/deep/.wh..wh..opq")]),
    "opaque-same-layer-keeps-own": _layers(BASE, [Entry("etc/.wh..wh..opq"),
                                                 Entry("etc/os-release", data=ALPINE_OS_RELEASE)]),
    "whiteout-of-root-escape": _layers(BASE, [Entry("../.wh.etc")]),
}


# Cases where umoci refuses the layer and copa reads on: a hardlink whose target the layer does not hold is kept in
# copa's view as a node without content (View.read gives None, so nothing is read through it); refusing it would
# need every lower layer's paths before the link's own layer is read.
COPA_READS_ON = {"hardlink-to-nothing": "etc/dangling", "hardlink-to-outside": "etc/passwd-link"}


def _umoci_view(layout: Layout, bundle: Path) -> dict[str, tuple[str, bytes]] | str:
    """umoci's unpacked rootfs as {path: (kind, content or link target)}, or umoci's error."""
    proc = subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout.path}:{layout.name}", str(bundle)],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return proc.stderr.strip() or "umoci failed"
    rootfs = bundle / "rootfs"
    out: dict[str, tuple[str, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for name in (*dirnames, *filenames):
            full = Path(dirpath) / name
            rel = str(full.relative_to(rootfs))
            if full.is_symlink():
                out[rel] = ("symlink", os.readlink(full).encode())
            elif full.is_dir():
                out[rel] = ("dir", b"")
            else:
                out[rel] = ("file", full.read_bytes())
    return out


def _copa_view(view: View) -> dict[str, tuple[str, bytes]]:
    out: dict[str, tuple[str, bytes]] = {}
    for path, node in view.nodes.items():
        if node.kind == "symlink":
            out[path] = ("symlink", node.linkname.encode())
        elif node.kind == "dir":
            out[path] = ("dir", b"")
        elif node.kind in ("file", "hardlink"):
            content = view.contents.get(path)
            if node.kind == "hardlink" and content is None:
                continue  # a link to nothing: umoci drops it too (checked by the case's own assertion)
            out[path] = ("file", content if content is not None else b"")
    # Directories a layer implies without an entry of their own (umoci creates them): every parent of a path.
    for path in list(out):
        parent = os.path.dirname(path)
        while parent and parent not in out:
            out[parent] = ("dir", b"")
            parent = os.path.dirname(parent)
    return out


def _scan(layout: Layout) -> View:
    source = LayoutSource(layout.path, layout.name)
    root = source.root()
    assert isinstance(root, Manifest)
    image = Image.load(source, root)
    # Capture every top-level directory, so the contents of all files are compared, not only copa's usual ones.
    return scan(image, None, ("etc", "usr", "var", "tmp", "real", "evil", "nowhere", ESCAPED, f"{ESCAPED}-dir"),
                large=CAPTURE_LARGE)


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_layer_case_matches_umoci(name: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    layout = write_layout(work / "layout", LAYER_CASES[name])
    expected = _umoci_view(layout, work / "bundle")
    if isinstance(expected, str) and name in COPA_READS_ON:
        view = _scan(layout)
        node = view.get(COPA_READS_ON[name])
        assert node is not None and node.kind == "hardlink" and view.read(COPA_READS_ON[name]) is None
        return
    if isinstance(expected, str):
        with pytest.raises(CopaError) as info:
            _scan(layout)
        assert "\n" not in str(info.value), str(info.value)
        assert isinstance(info.value, UnsupportedImageError), (type(info.value), expected)
        return
    view = _scan(layout)
    assert _copa_view(view) == expected
    # Nothing of the host leaks into the view: a hardlink to /etc/passwd names the image's (absent) one.
    assert all(b"root:x:0:0" not in c for c in view.contents.values())
    assert not (tmp_path.parent / ESCAPED).exists() and not (Path("/") / ESCAPED).exists()


# --------------------------------------------------------------------------------------------- documents


def _edit_layer(key: str, value: object) -> Callable[[dict[str, object]], None]:
    def edit(manifest: dict[str, object]) -> None:
        layers = manifest["layers"]
        assert isinstance(layers, list)
        layers[0][key] = value
    return edit


def _republish(layout: Layout) -> None:
    config = json.dumps(layout.config).encode()
    layout.manifest["config"].update(digest=layout.put_blob(config), size=len(config))
    layout.set_root(OCI_MANIFEST, json.dumps(layout.manifest).encode())


def _many_layers(layout: Layout) -> None:
    layout.manifest["layers"] = layout.manifest["layers"] * 100_000
    layout.config["rootfs"]["diff_ids"] = layout.config["rootfs"]["diff_ids"] * 100_000
    _republish(layout)


def _config_100mb(declared: int) -> Callable[[Layout], None]:
    def hook(layout: Layout) -> None:
        layout.manifest["config"].update(digest=sparse_blob(layout, 100 << 20), size=declared)
        layout.set_root(OCI_MANIFEST, json.dumps(layout.manifest).encode())
    return hook


def _index_contains_itself(layout: Layout) -> None:
    """An index blob whose one entry is its own name: content addressing makes it impossible to be honest, so the
    file under that name cannot hash to it."""
    name = "sha256:" + "a" * 64
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_INDEX, "digest": name, "size": 200}]}).encode()
    (layout.path / "blobs" / "sha256" / ("a" * 64)).write_bytes(raw)
    layout.set_root(OCI_INDEX, raw, at=name)


def _index_of_many(layout: Layout) -> None:
    entry = {"mediaType": OCI_MANIFEST, "digest": digest(json.dumps(layout.manifest).encode()),
             "size": len(json.dumps(layout.manifest)), "platform": {"os": "linux", "architecture": "amd64"}}
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry] * 20_000}).encode()
    layout.set_root(OCI_INDEX, raw)


def _corrupt_layer(layout: Layout) -> None:
    desc = layout.manifest["layers"][0]
    (layout.path / "blobs" / "sha256" / desc["digest"][7:]).write_bytes(b"\x1f\x8b" + b"x" * (desc["size"] - 2))


def _manifest_is(raw: bytes) -> Callable[[Layout], None]:
    def hook(layout: Layout) -> None:
        layout.set_root(OCI_MANIFEST, raw)
    return hook


def _config_is(raw: bytes) -> Callable[[Layout], None]:
    def hook(layout: Layout) -> None:
        layout.manifest["config"].update(digest=layout.put_blob(raw), size=len(raw))
        layout.set_root(OCI_MANIFEST, json.dumps(layout.manifest).encode())
    return hook


def _not_regular(target: str, kind: str) -> Callable[[Layout], None]:
    """Replace the layout's `target` ("config", "index.json", "oci-layout") by a FIFO (which blocked open() forever
    before the fix) or a link to /dev/zero (which never ends)."""
    def hook(layout: Layout) -> None:
        config = f"blobs/sha256/{layout.manifest['config']['digest'][7:]}"
        path = layout.path / (config if target == "config" else target)
        path.unlink()
        if kind == "fifo":
            os.mkfifo(path)
        else:
            os.symlink("/dev/zero", path)
    return hook


E = dict[str, object]
# name -> (write_layout keyword arguments, the error, words of its message)
DOCUMENT_CASES: dict[str, tuple[E, type[CopaError], tuple[str, ...]]] = {
    "manifest-100000-layers": ({"after": _many_layers}, ManifestFormatError, ("100000 layers",)),
    "index-20000-entries": ({"after": _index_of_many}, ManifestFormatError, ("20000 manifests",)),
    "config-100MB-declared": ({"after": _config_100mb(100 << 20)}, UnsupportedImageError, ("too large",)),
    "config-100MB-declared-small": ({"after": _config_100mb(1000)}, IntegrityError, ("more than the expected",)),
    "index-contains-itself": ({"after": _index_contains_itself}, IntegrityError, ("digest mismatch",)),
    "layer-digest-mismatch": ({"after": _corrupt_layer}, IntegrityError, ("digest mismatch",)),
    "layer-size-smaller": ({"edit_manifest": lambda m: m["layers"][0].update(size=m["layers"][0]["size"] - 10)},
                           IntegrityError, ("more than the expected",)),
    "layer-size-larger": ({"edit_manifest": lambda m: m["layers"][0].update(size=m["layers"][0]["size"] + 10)},
                          IntegrityError, ("truncated",)),
    "layer-size-negative": ({"edit_manifest": _edit_layer("size", -1)}, ManifestFormatError, ("size -1",)),
    "layer-size-string": ({"edit_manifest": _edit_layer("size", "12")}, ManifestFormatError, ("size '12'",)),
    "layer-size-fraction": ({"edit_manifest": _edit_layer("size", 1.5)}, ManifestFormatError, ("size 1.5",)),
    "layer-size-2^63": ({"edit_manifest": _edit_layer("size", 1 << 63)}, ManifestFormatError, ("byte count",)),
    "layer-digest-unknown-algorithm": ({"edit_manifest": _edit_layer("digest", "md5:" + "0" * 32)},
                                       ManifestFormatError, ("invalid",)),
    "layer-digest-path-escape": ({"edit_manifest": _edit_layer("digest", "sha256:../../../../etc/passwd")},
                                 ManifestFormatError, ("invalid",)),
    "layer-blob-missing": ({"edit_manifest": _edit_layer("digest", digest(b"nothing"))}, LocalIOError, ("missing",)),
    "layer-media-type-unknown": ({"edit_manifest": _edit_layer("mediaType", "application/x-evil")},
                                 UnsupportedImageError, ("application/x-evil",)),
    "layer-media-type-missing": ({"edit_manifest": lambda m: m["layers"][0].pop("mediaType")},
                                 UnsupportedImageError, ("media type ''",)),
    "layer-media-type-list": ({"edit_manifest": _edit_layer("mediaType", ["x"])}, ManifestFormatError, ("mediaType",)),
    "config-media-type-artifact": ({"edit_manifest": lambda m: m["config"].update(
        mediaType="application/vnd.cncf.helm.config.v1+json")}, UnsupportedImageError, ("artifact",)),
    "manifest-media-type-unknown": ({"edit_manifest": lambda m: m.update(mediaType="application/x-evil")},
                                    ManifestFormatError, ("unsupported manifest media type",)),
    "manifest-schema-1": ({"after": _manifest_is(b'{"schemaVersion": 1, "fsLayers": []}')}, ManifestFormatError,
                          ("schema 1",)),
    "manifest-annotations-list": ({"edit_manifest": lambda m: m.update(annotations=["x"])}, ManifestFormatError,
                                  ("annotations",)),
    "layer-annotations-string": ({"edit_manifest": _edit_layer("annotations", "x")}, ManifestFormatError,
                                 ("annotations",)),
    "layer-urls-string": ({"edit_manifest": _edit_layer("urls", "http://x")}, ManifestFormatError, ("urls",)),
    "layers-object": ({"edit_manifest": lambda m: m.update(layers={})}, ManifestFormatError, ("layers",)),
    "manifest-not-json": ({"after": _manifest_is(b"\xff\xfe not json")}, ManifestFormatError, ("not valid JSON",)),
    "manifest-nested-deeply": ({"after": _manifest_is(b"[" * 100_000 + b"]" * 100_000)}, ManifestFormatError,
                               ("manifest",)),
    "config-not-object": ({"after": _config_is(b"[]")}, ManifestFormatError, ("not a JSON object",)),
    "config-rootfs-list": ({"config": {"rootfs": []}}, ManifestFormatError, ("rootfs",)),
    "config-diff-ids-string": ({"config": {"rootfs": {"diff_ids": "sha256:" + "0" * 64}}}, ManifestFormatError,
                               ("diff_ids",)),
    "config-diff-ids-fewer": ({"config": {"rootfs": {"diff_ids": []}}}, UnsupportedImageError, ("diff_ids",)),
    "config-labels-list": ({"config": {"config": {"Labels": ["a"]}}}, ManifestFormatError, ("Labels",)),
    "config-history-object": ({"config": {"history": {"a": 1}}}, ManifestFormatError, ("history",)),
    "config-os-list": ({"config": {"os": ["linux"]}}, ManifestFormatError, ("os",)),
    "config-blob-is-a-fifo": ({"after": _not_regular("config", "fifo")}, LocalIOError, ("not a regular file",)),
    "config-blob-is-dev-zero": ({"after": _not_regular("config", "zero")}, LocalIOError, ("not a regular file",)),
    "index-json-is-a-fifo": ({"after": _not_regular("index.json", "fifo")}, LocalIOError, ("not a regular file",)),
    "oci-layout-is-dev-zero": ({"after": _not_regular("oci-layout", "zero")}, LocalIOError, ("not a regular file",)),
    "config-number-of-5000-digits": ({"after": _config_is(b'{"os": ' + b"9" * 5000 + b"}")}, ManifestFormatError,
                                     ("image config",)),
}


def _read_image(layout: Layout) -> None:
    """What copa patch reads of an image before any package work: root, manifest, config, every layer, detection."""
    source = LayoutSource(layout.path, layout.name)
    root = source.root()
    if not isinstance(root, Manifest):
        from copa.oci.image import platform_entries

        platform_entries(source, root)
        raise AssertionError("an index of these cases must not be readable")
    image = Image.load(source, root)
    detect(scan(image, None, CAPTURE, large=CAPTURE_LARGE))


@pytest.mark.parametrize("name", sorted(DOCUMENT_CASES))
def test_document_case(name: str, tmp_path: Path) -> None:
    kwargs, error, words = DOCUMENT_CASES[name]
    layout = write_layout(tmp_path / "layout", [layer_tar(BASE)], **kwargs)  # type: ignore[arg-type]
    start = time.monotonic()
    with pytest.raises(CopaError) as info:
        _read_image(layout)
    assert type(info.value) is error or isinstance(info.value, error), (type(info.value), str(info.value))
    line = str(info.value)
    assert line and "\n" not in line, line
    for word in words:
        assert word.lower() in line.lower(), line
    assert time.monotonic() - start < 10


def test_clean_image_reads() -> None:
    """The baseline every case above departs from reads and is detected as Debian (else the cases prove nothing)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        layout = write_layout(Path(tmp) / "layout", [layer_tar(BASE)])
        source = LayoutSource(layout.path, layout.name)
        root = source.root()
        assert isinstance(root, Manifest)
        assert detect(scan(Image.load(source, root), None, CAPTURE, large=CAPTURE_LARGE)).os_release.id == "debian"


# --------------------------------------------------------------------------------------------- docker-archive

_MEMBERS, _ENTRY = archive_members([layer_tar(BASE)])
# name -> (manifest.json, extra members, words of the UnsupportedImageError); "" words: the archive reads.
ARCHIVE_CASES: dict[str, tuple[object, list[Entry], tuple[str, ...]]] = {
    "baseline": ([_ENTRY], [], ()),
    "manifest-json-nested-deeply": (b"[" * 100_000 + b"]" * 100_000, [], ("nested too deeply",)),
    "manifest-json-not-a-list": ({"Config": _ENTRY["Config"]}, [], ("not a list",)),
    "repo-tags-number": ([{**_ENTRY, "RepoTags": 5}], [], ("RepoTags",)),
    "layers-number": ([{**_ENTRY, "Layers": 5}], [], ("Layers",)),
    "layers-null-entry": ([{**_ENTRY, "Layers": [None]}], [], ("Layers",)),
    "config-path-escape": ([{**_ENTRY, "Config": "../../../../etc/passwd"}], [], ("missing",)),
    "layer-path-escape": ([{**_ENTRY, "Layers": ["../../../../etc/passwd"]}], [], ("missing",)),
    "layer-symlink-to-host": ([{**_ENTRY, "Layers": ["evil.tar"]}], [Entry("evil.tar", "symlink", link="/etc/passwd")],
                              ("missing",)),
    "config-symlink-loop": ([{**_ENTRY, "Config": "a"}], [Entry("a", "symlink", link="b"),
                                                          Entry("b", "symlink", link="a")], ("missing",)),
    "archive-is-a-fifo": (None, [], ("not a regular file",)),
    "archive-100000-layers": ([{**_ENTRY, "Layers": _ENTRY["Layers"] * 100_000}], [], ("100000 layers",)),
}


@pytest.mark.parametrize("name", sorted(ARCHIVE_CASES))
def test_archive_case(name: str, tmp_path: Path) -> None:
    manifest, extra, words = ARCHIVE_CASES[name]
    path = tmp_path / "a.tar"
    if manifest is None:
        os.mkfifo(path)  # opening it for reading blocked forever before the fix
    else:
        write_archive(path, manifest, [*_MEMBERS, *extra])

    def read() -> str:
        source = ArchiveSource(path)
        root = source.root()
        assert isinstance(root, Manifest)
        return detect(scan(Image.load(source, root), None, CAPTURE, large=CAPTURE_LARGE)).os_release.id

    if not words:
        assert read() == "debian"
        return
    with pytest.raises((UnsupportedImageError, LocalIOError)) as info:
        read()
    line = str(info.value)
    assert "\n" not in line and all(w.lower() in line.lower() for w in words), line


# --------------------------------------------------------------------------------------------- the CLI


# A sample of the cases above through the CLI (the rest are read in-process: the CLI adds nothing to them).
CLI_CASES: dict[str, tuple[Callable[[Path], Layout], int, tuple[str, ...]]] = {
    # Read like any Debian image (the escaping member is filed inside the root), then refused for want of repositories.
    "dotdot-escape": (lambda w: write_layout(w / "img", LAYER_CASES["dotdot-escape"]), 7, ("repositories",)),
    "whiteout-dotdot": (lambda w: write_layout(w / "img", LAYER_CASES["whiteout-dotdot"]), 6, ("whiteout",)),
    "os-release-symlink-loop": (lambda w: write_layout(w / "img", _layers(
        [*WITHOUT_OS_RELEASE, Entry("etc/os-release", "symlink", link="../usr/lib/os-release"), Entry("usr/", "dir"),
         Entry("usr/lib/", "dir"), Entry("usr/lib/os-release", "symlink", link="/etc/os-release")])), 5,
        ("symlink loop", "/etc/os-release")),
    "dpkg-dir-symlink-loop": (lambda w: write_layout(w / "img", _layers(
        [*[e for e in BASE if not e.name.startswith("var/lib/dpkg")], Entry("var/lib/dpkg", "symlink", link="dpkg")])),
        5, ("symlink loop",)),
    "dpkg-status-symlink-loop": (lambda w: write_layout(w / "img", _layers(
        [*[e for e in BASE if e.name != "var/lib/dpkg/status"],
         Entry("var/lib/dpkg/status", "symlink", link="status")])), 6, ("status",)),
    "manifest-100000-layers": (lambda w: write_layout(w / "img", [layer_tar(BASE)], after=_many_layers), 6,
                               ("100000 layers",)),
    "config-100MB": (lambda w: write_layout(w / "img", [layer_tar(BASE)], after=_config_100mb(100 << 20)), 6,
                     ("too large",)),
    # 20 files of 16 MiB zeros under /etc in a 1.5 MB layer: refused once MAX_CAPTURED_TOTAL is held (before the fix,
    # 40 of them held 640 MB; a thousand would have exhausted memory).
    "captured-files-compression-bomb": (lambda w: write_bomb_layout(w / "img", 20, 16 << 20), 6, ("more than",)),
}


@pytest.mark.parametrize("name", sorted(CLI_CASES))
def test_cli_case(name: str, tmp_path: Path) -> None:
    build, code, words = CLI_CASES[name]
    work = tmp_path / "work"
    work.mkdir()
    layout = build(work)
    before = {p.name for p in work.iterdir()}
    outside_before = set(os.listdir("/tmp"))
    run = run_copa(["patch", "-i", layout.ref, "--oci-dir", str(work / "out"), "--output-tar", str(work / "out.tar"),
                    "--progress", "quiet"], work, tmp_path / "logs", kill_after=CLI_SECONDS * 4)
    refused(run, code, words, seconds=CLI_SECONDS,
            peak_rss=BOMB_PEAK_RSS_BYTES if "bomb" in name else CLI_PEAK_RSS_BYTES)
    assert {p.name for p in work.iterdir()} == before, "no output layout, tar or other file may be written"
    assert sorted(os.listdir(tmp_path)) == ["logs", "work"]
    created = (set(os.listdir("/tmp")) - outside_before) & {ESCAPED, f"{ESCAPED}-dir"}
    assert not created and not (Path("/") / ESCAPED).exists()


# --------------------------------------------------------------------------------------------- a real registry


def test_hostile_layers_through_the_registry(anon_registry: RunningRegistry, tmp_path: Path) -> None:
    """skopeo pushes a layout with `..`, absolute and write-through-symlink members (it does not look inside
    layers); copa reads it back from the registry and sees what it sees from the layout, which umoci agreed with."""
    layers = [*LAYER_CASES["write-through-lower-etc-symlink"], *LAYER_CASES["dotdot-inside-shadows-os-release"][1:],
              *LAYER_CASES["dotdot-escape"][1:]]
    layout = write_layout(tmp_path / "layout", layers)
    ref = f"{anon_registry.host}/hostile/layers:1"
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", layout.ref, f"docker://{ref}"],
                   check=True, capture_output=True, timeout=120)
    from_layout = _copa_view(_scan(layout))
    with RegistryClient() as client:
        source = RegistrySource(client, Reference.parse(ref))
        root = source.root()
        assert isinstance(root, Manifest)
        view = scan(Image.load(source, root), None, ("etc", "usr", "var", "tmp", ESCAPED), large=CAPTURE_LARGE)
    assert _copa_view(view) == from_layout
    assert view.read("etc/os-release") == ALPINE_OS_RELEASE
    assert view.get(ESCAPED) is not None and not (Path("/") / ESCAPED).exists()



# --------------------------------------------------------------------------------------------- wrong types


def _json_paths(doc: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Every path to a value in `doc` (dict keys, the first and last list index)."""
    out: list[tuple[object, ...]] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += [(*prefix, key), *_json_paths(value, (*prefix, key))]
    elif isinstance(doc, list) and doc:
        for index in sorted({0, len(doc) - 1}):
            out += [(*prefix, index), *_json_paths(doc[index], (*prefix, index))]
    return out


def _with(doc: object, path: tuple[object, ...], value: object) -> object:
    out = json.loads(json.dumps(doc))
    target = out
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return out


WRONG_TYPES: tuple[object, ...] = (None, True, -1, 1.5, "", "x", [], {}, [None], {"": None})


def test_wrong_type_in_every_document_field(tiny_layout: Path) -> None:
    """A real (umoci-built) manifest, config and index.json, each field in turn replaced by each JSON type it does not
    hold: parse_manifest and ImageConfig.parse answer a well-typed document or a one-line ManifestFormatError (an
    UnsupportedImageError), never another exception."""
    from copa.oci.model import ImageConfig, parse_manifest

    index = json.loads((tiny_layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((tiny_layout / "blobs" / "sha256" / manifest_digest).read_bytes())
    config = json.loads((tiny_layout / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]).read_bytes())
    documents = (("index", index, parse_manifest), ("manifest", manifest, parse_manifest),
                 ("config", config, ImageConfig.parse))
    failures: list[str] = []
    cases = refused = 0
    for what, doc, parse in documents:
        for path in _json_paths(doc):
            for value in WRONG_TYPES:
                cases += 1
                raw = json.dumps(_with(doc, path, value)).encode()
                try:
                    parsed = parse(raw)
                except UnsupportedImageError as e:
                    refused += 1
                    assert "\n" not in str(e)
                    continue
                except Exception as e:  # the bug this sweep looks for
                    failures.append(f"{what} {path}={value!r}: {type(e).__name__}: {e}")
                    continue
                _well_typed(parsed)
    assert not failures, "\n".join(failures[:20]) + f"\n({len(failures)} of {cases})"
    assert cases > 200 and refused > cases // 4, (cases, refused)


def _well_typed(parsed: object) -> None:
    from copa.oci.model import Descriptor, ImageConfig, Index

    descriptors: list[Descriptor] = []
    if isinstance(parsed, Manifest):
        descriptors = [parsed.config, *parsed.layers]
    elif isinstance(parsed, Index):
        descriptors = list(parsed.manifests)
    elif isinstance(parsed, ImageConfig):
        assert all(isinstance(v, str) for v in (parsed.os, parsed.architecture, parsed.variant))
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.labels.items())
        return
    for d in descriptors:
        assert isinstance(d.media_type, str) and isinstance(d.size, int) and d.size >= 0
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in d.annotations.items())
        assert all(isinstance(u, str) for u in d.urls)
