"""Hostile OCI image layouts for issue 12, written byte by byte by the tests (no tool would make most of them).

`Entry` describes one tar member as an attacker would write it (any name, type, link target); `layer_tar` packs a
list of them; `write_layout` writes an OCI layout whose image has those layers, with hooks to break the config,
the manifest or the index in the ways the corpus names. Everything is deterministic and small: the one large case
(a 100 MB config) is a sparse file, so the test costs no disk and no memory unless copa reads it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
REF = "org.opencontainers.image.ref.name"

DEBIAN_OS_RELEASE = b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
ALPINE_OS_RELEASE = b'PRETTY_NAME="Alpine Linux v3.21"\nID=alpine\nVERSION_ID=3.21.0\n'


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str = "file"  # "file", "dir", "symlink", "hardlink", "fifo"
    data: bytes = b""
    link: str = ""
    mode: int = 0o644


def layer_tar(entries: Sequence[Entry]) -> bytes:
    """An uncompressed tar of `entries` in the given order, names exactly as given (tarfile would not refuse them:
    it writes what it is told, which is what an attacker's tool does)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.mode = e.mode if e.kind != "dir" else 0o755
            info.mtime = 0
            if e.kind == "file":
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                         "fifo": tarfile.FIFOTYPE}[e.kind]
            info.linkname = e.link
            tar.addfile(info)
    return buf.getvalue()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def debian_base() -> list[Entry]:
    """The smallest image copa detects as Debian: os-release and an empty-ish dpkg status."""
    return [
        Entry("etc/", "dir"),
        Entry("etc/os-release", data=DEBIAN_OS_RELEASE),
        Entry("var/", "dir"),
        Entry("var/lib/", "dir"),
        Entry("var/lib/dpkg/", "dir"),
        Entry("var/lib/dpkg/status", data=b"Package: base-files\nStatus: install ok installed\nVersion: 12.4\n"
                                          b"Architecture: amd64\n\n"),
    ]


@dataclass
class Layout:
    """An OCI layout written by `write_layout`, and what the image in it is made of."""

    path: Path
    name: str
    manifest: dict[str, Any]
    config: dict[str, Any]
    blobs: dict[str, bytes] = field(default_factory=dict)  # digest -> bytes (the small ones)

    @property
    def ref(self) -> str:
        return f"oci:{self.path}:{self.name}"

    def put_blob(self, data: bytes) -> str:
        d = digest(data)
        target = self.path / "blobs" / "sha256" / d.split(":")[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self.blobs[d] = data
        return d

    def set_root(self, media_type: str, raw: bytes, *, size: int | None = None, at: str | None = None) -> None:
        """index.json naming `raw` (written as a blob unless `at` names another digest) as the image `name`."""
        d = at or self.put_blob(raw)
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": media_type, "digest": d, "size": len(raw) if size is None else size,
             "annotations": {REF: self.name}}]}
        (self.path / "index.json").write_text(json.dumps(index))


Hook = Callable[[Layout], None]


def write_layout(path: Path, layers: Sequence[bytes], *, name: str = "t", gzip_layers: bool = True,
                 config: dict[str, Any] | None = None, edit_manifest: Callable[[dict[str, Any]], None] | None = None,
                 after: Hook | None = None) -> Layout:
    """An OCI layout at `path` holding one image `name` made of `layers` (uncompressed tars, gzipped unless told
    otherwise). `config` replaces fields of the generated config; `edit_manifest` edits the manifest JSON before it
    is written; `after` may break anything once everything is in place."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    out = Layout(path, name, {}, {})
    descriptors = []
    for tar in layers:
        blob = gzip.compress(tar, mtime=0) if gzip_layers else tar
        descriptors.append({"mediaType": OCI_LAYER_GZIP if gzip_layers else OCI_LAYER, "digest": out.put_blob(blob),
                            "size": len(blob)})
    cfg: dict[str, Any] = {"architecture": "amd64", "os": "linux",
                           "rootfs": {"type": "layers", "diff_ids": [digest(t) for t in layers]},
                           "config": {}, "history": [{"created_by": "hostile"} for _ in layers]}
    cfg.update(config or {})
    raw_config = json.dumps(cfg).encode()
    manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                "config": {"mediaType": OCI_CONFIG, "digest": out.put_blob(raw_config),
                                           "size": len(raw_config)},
                                "layers": descriptors}
    if edit_manifest is not None:
        edit_manifest(manifest)
    out.manifest, out.config = manifest, cfg
    out.set_root(OCI_MANIFEST, json.dumps(manifest).encode())
    if after is not None:
        after(out)
    return out


def sparse_blob(layout: Layout, size: int) -> str:
    """A blob file of `size` zero bytes that takes no disk (a hole); its digest is a fake one, since computing the
    real one would read it all: a reader must refuse it by its declared size before reading."""
    fake = "sha256:" + "e" * 64
    target = layout.path / "blobs" / "sha256" / ("e" * 64)
    with target.open("wb") as f:
        f.truncate(size)
    return fake


def files_outside(work: Path, before: set[str], roots: Sequence[Path]) -> list[str]:
    """Paths under `roots` that were not there in `before` (a snapshot by `snapshot`) and are not under `work`."""
    now = snapshot(roots)
    return sorted(p for p in now - before if not p.startswith(str(work) + os.sep) and p != str(work))


def snapshot(roots: Sequence[Path]) -> set[str]:
    found: set[str] = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            found.update(os.path.join(dirpath, n) for n in (*dirnames, *filenames))
    return found


def write_archive(path: Path, manifest: Any, members: Sequence[Entry]) -> Path:
    """A docker-archive tar: `manifest` (a JSON value, or raw bytes) as manifest.json, then `members` as given."""
    raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    path.write_bytes(layer_tar([Entry("manifest.json", data=raw), *members]))
    return path


def archive_members(layers: Sequence[bytes], config: dict[str, Any] | None = None
                    ) -> tuple[list[Entry], dict[str, Any]]:
    """The members and the manifest.json entry of a well-formed docker-archive holding `layers` (uncompressed)."""
    cfg: dict[str, Any] = {"architecture": "amd64", "os": "linux",
                           "rootfs": {"type": "layers", "diff_ids": [digest(t) for t in layers]}}
    cfg.update(config or {})
    raw = json.dumps(cfg).encode()
    cfg_name = digest(raw).split(":")[1] + ".json"
    members = [Entry(cfg_name, data=raw)] + [Entry(f"layer{i}.tar", data=t) for i, t in enumerate(layers)]
    return members, {"Config": cfg_name, "RepoTags": ["app:1"], "Layers": [f"layer{i}.tar" for i in range(len(layers))]}


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


class _Hashing(io.RawIOBase):
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.hasher = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.hasher.update(data)
        self.inner.write(data)
        return len(data)


def write_bomb_layout(path: Path, files: int, size: int, under: str = "etc") -> Layout:
    """The Debian baseline plus a layer of `files` files of `size` zero bytes under `under`: a compression bomb
    (about 1000:1), streamed to disk so that writing it costs no memory."""
    layout = write_layout(path, [layer_tar(debian_base())])
    tmp = path / "bomb.tmp"
    with tmp.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=1) as gz:
        plain = _Hashing(gz)
        with tarfile.open(fileobj=plain, mode="w|") as tar:
            for i in range(files):
                info = tarfile.TarInfo(f"{under}/bomb{i}")
                info.size = size
                tar.addfile(info, _Zeros(size))
    diff_id = "sha256:" + plain.hasher.hexdigest()
    blob_hasher = hashlib.sha256()
    with tmp.open("rb") as f:
        while chunk := f.read(1 << 20):
            blob_hasher.update(chunk)
    blob_digest = "sha256:" + blob_hasher.hexdigest()
    tmp.rename(path / "blobs" / "sha256" / blob_digest[7:])
    layout.manifest["layers"].append({"mediaType": OCI_LAYER_GZIP, "digest": blob_digest,
                                      "size": (path / "blobs" / "sha256" / blob_digest[7:]).stat().st_size})
    layout.config["rootfs"]["diff_ids"].append(diff_id)
    layout.config["history"].append({"created_by": "bomb"})
    config = json.dumps(layout.config).encode()
    layout.manifest["config"].update(digest=layout.put_blob(config), size=len(config))
    layout.set_root(OCI_MANIFEST, json.dumps(layout.manifest).encode())
    return layout
