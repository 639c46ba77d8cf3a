"""OCI image-layout directories (image-spec `image-layout.md`) as a Source and as a sink."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from copa.errors import IntegrityError, LocalIOError, UnsupportedImageError
from copa.oci.digest import Digest, verifying
from copa.oci.image import Bundle
from copa.oci.model import (
    Descriptor,
    Document,
    Index,
    Manifest,
    ManifestFormatError,
    MediaType,
    Opaque,
    parse_document,
    parse_manifest,
)

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_VERSION = "1.0.0"
_MANIFEST_LIMIT = 16 << 20  # manifests and index.json are small; refuse absurd ones rather than exhaust memory
_CHUNK = 1 << 20


def blob_path(root: Path, digest: Digest) -> Path:
    # Digest.parse only admits [0-9a-f] hex and known algorithms, so this cannot escape `root`.
    return root / "blobs" / digest.algorithm / digest.hex


def _open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading if it is a regular file (or a link to one). A layout made by someone else may hold a
    FIFO, which would block open() forever, or a device such as /dev/zero, which never ends: both are refused
    (OSError, as for an unreadable file). O_NONBLOCK makes opening a FIFO return at once, so it can be checked."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_small(path: Path, what: str) -> bytes:
    try:
        with _open_regular(path) as f:
            data = f.read(_MANIFEST_LIMIT + 1)
    except FileNotFoundError:
        raise LocalIOError(f"{what} {path} does not exist; is this an OCI image layout directory?") from None
    except OSError as e:
        raise LocalIOError(f"cannot read {what} {path}: {e.strerror}") from None
    if len(data) > _MANIFEST_LIMIT:
        raise UnsupportedImageError(f"{what} {path} is larger than {_MANIFEST_LIMIT} bytes; not a manifest")
    return data


def _load_json(path: Path, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(_read_small(path, what))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
        raise UnsupportedImageError(f"{what} {path} is not valid JSON ({reason}); the layout is corrupt") from None
    if not isinstance(doc, dict):
        raise UnsupportedImageError(f"{what} {path} is not a JSON object; the layout is corrupt")
    return doc


def _check_layout_file(root: Path) -> None:
    doc = _load_json(root / "oci-layout", "layout marker")
    version = doc.get("imageLayoutVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise UnsupportedImageError(
            f"{root}/oci-layout has imageLayoutVersion {version!r}; only 1.x image layouts are supported"
        )


class LayoutSource:
    """Reads one image (or index) from an OCI layout, selected by its `ref.name` annotation."""

    def __init__(self, path: str | os.PathLike[str], ref_name: str | None = None) -> None:
        self._root = Path(path)
        self._ref_name = ref_name
        if not self._root.is_dir():
            raise LocalIOError(f"OCI layout {self._root} is not a directory; check the path")
        _check_layout_file(self._root)

    @property
    def description(self) -> str:
        return f"oci:{self._root}" + (f":{self._ref_name}" if self._ref_name else "")

    def index(self) -> Index:
        parsed = parse_manifest(_read_small(self._root / "index.json", "index"), MediaType.OCI_INDEX)
        if not isinstance(parsed, Index):
            raise UnsupportedImageError(f"{self._root}/index.json is not an image index; the layout is corrupt")
        return parsed

    def root_descriptor(self) -> Descriptor:
        entries = self.index().manifests
        if self._ref_name is not None:
            for entry in entries:
                if entry.annotations.get(REF_NAME) == self._ref_name:
                    return entry
            names = ", ".join(sorted({e.annotations[REF_NAME] for e in entries if REF_NAME in e.annotations}))
            raise LocalIOError(
                f"{self._root} has no image named {self._ref_name!r} (names: {names or 'none'}); pass one of them"
            )
        if len(entries) != 1:
            names = ", ".join(sorted({e.annotations.get(REF_NAME, str(e.digest)) for e in entries}))
            raise LocalIOError(f"{self._root} holds {len(entries)} images ({names or 'none'}); name one with DIR:NAME")
        return entries[0]

    def root(self) -> Manifest | Index:
        root = self.fetch_manifest(self.root_descriptor())
        if isinstance(root, Opaque):
            raise ManifestFormatError(f"{self.description} is a {root.media_type}, not a container image")
        return root

    def fetch_manifest(self, desc: Descriptor) -> Document:
        if desc.size > _MANIFEST_LIMIT:
            raise UnsupportedImageError(f"{self.description}: manifest {desc.digest} claims {desc.size} bytes")
        with self.open_blob(desc) as f:
            raw = f.read()
        return parse_document(raw, desc.media_type)

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        path = blob_path(self._root, desc.digest)
        try:
            raw = _open_regular(path)
        except FileNotFoundError:
            raise LocalIOError(f"{self.description}: blob {desc.digest} is missing; the layout is incomplete") from None
        except OSError as e:
            raise LocalIOError(f"{self.description}: cannot read blob {desc.digest}: {e.strerror}") from None
        return verifying(raw, desc.digest, desc.size, f"{self.description} blob {desc.digest}")


def _copy_blob(root: Path, desc: Descriptor, bundle: Bundle) -> None:
    target = blob_path(root, desc.digest)
    with contextlib.suppress(FileNotFoundError):
        if target.stat().st_size == desc.size:
            return  # content-addressed: the right size under the right name is the same blob
    target.parent.mkdir(parents=True, exist_ok=True)
    # Hash again here rather than trusting the opener: a sink is the last place corruption can be caught.
    hasher = desc.digest.hasher()
    count = 0
    fd, tmp = tempfile.mkstemp(dir=_tmp_dir(root), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out, bundle.open_blob(desc) as src:
            while chunk := src.read(_CHUNK):
                hasher.update(chunk)
                count += len(chunk)
                out.write(chunk)
        if count != desc.size or hasher.hexdigest() != desc.digest.hex:
            raise IntegrityError(
                f"blob {desc.digest}: wrote {count} bytes hashing to {desc.digest.algorithm}:{hasher.hexdigest()}, "
                f"expected {desc.size} bytes; the source is corrupt"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a layout is meant to be shared with other tools/users
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _tmp_dir(root: Path) -> Path:
    """Where a blob is written before its rename: `blobs/`, on the same file system as `blobs/<algorithm>/` but
    outside it. Readers such as `umoci gc` take every file in `blobs/<algorithm>/` for a digest, so a temporary file
    there, left by a killed run, would make the whole layout unreadable to them."""
    return root / "blobs"


def _write_bytes_atomic(target: Path, data: bytes, tmp_dir: Path | None = None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir or target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a layout is meant to be shared with other tools/users
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write_manifest_blob(root: Path, doc: Document) -> None:
    target = blob_path(root, doc.digest)
    if not (target.exists() and target.stat().st_size == len(doc.raw)):
        _write_bytes_atomic(target, doc.raw, _tmp_dir(root))


_OCI_TYPES = {
    MediaType.DOCKER_MANIFEST: MediaType.OCI_MANIFEST,
    MediaType.DOCKER_LIST: MediaType.OCI_INDEX,
    MediaType.DOCKER_CONFIG: MediaType.OCI_CONFIG,
    MediaType.DOCKER_LAYER: MediaType.OCI_LAYER,
    MediaType.DOCKER_LAYER_GZIP: MediaType.OCI_LAYER_GZIP,
    MediaType.DOCKER_FOREIGN_GZIP: MediaType.OCI_LAYER_NONDIST_GZIP,
}


def _oci_doc(doc: Document, converted: dict[Digest, Document]) -> Document:
    """`doc` with Docker media types replaced by their OCI equivalents; blob bytes are untouched."""
    if isinstance(doc, Opaque) or doc.media_type not in _OCI_TYPES:
        return doc
    obj = json.loads(doc.raw)
    obj["mediaType"] = _OCI_TYPES[doc.media_type]
    entries = [obj["config"], *obj["layers"]] if isinstance(doc, Manifest) else obj["manifests"]
    for entry in entries:
        entry["mediaType"] = _OCI_TYPES.get(entry.get("mediaType", ""), entry.get("mediaType", ""))
        child = converted.get(Digest.parse(entry["digest"])) if isinstance(doc, Index) else None
        if child is not None:
            entry.update(mediaType=child.media_type, digest=str(child.digest), size=len(child.raw))
    return parse_manifest(json.dumps(obj, separators=(",", ":")).encode())


def oci_bundle(bundle: Bundle) -> Bundle:
    """The same image with Docker v2s2 manifests/lists rewritten as OCI ones (as `skopeo copy` to oci: does).

    Needed because OCI-layout readers (skopeo 1.9, umoci) ignore index.json entries of Docker media types.
    Config and layer blobs are byte-identical; only manifest digests change."""
    converted: dict[Digest, Document] = {}
    # Manifests before indexes, so an index can point at its children's new digests.
    ordered = sorted(bundle.children, key=lambda d: isinstance(d, Index))
    for doc in ordered:
        converted[doc.digest] = _oci_doc(doc, converted)
    root = _oci_doc(bundle.root, converted)
    assert not isinstance(root, Opaque)  # an image's root is converted to an image document
    converted[bundle.root.digest] = root
    primary = converted.get(bundle.primary.digest, _oci_doc(bundle.primary, converted))
    assert isinstance(primary, Manifest)
    return Bundle(
        root=root,
        primary=primary,
        children=tuple(converted[c.digest] for c in bundle.children),
        blobs=bundle.blobs,
        open_blob=bundle.open_blob,
        mount_from=bundle.mount_from,
    )


def write_layout(
    path: str | os.PathLike[str], bundle: Bundle, ref_name: str | None, *, keep_docker_types: bool = False
) -> Digest:
    """Write `bundle` into the layout at `path` (created if needed), named `ref_name`; returns the root digest.

    Docker-typed manifests are converted to OCI (see `oci_bundle`) unless `keep_docker_types`, so the returned
    digest can differ from `bundle.root.digest`. index.json is replaced last and atomically, so a failure
    part-way leaves the layout's images as they were (at worst with some unreferenced blobs, which are harmless)."""
    if not keep_docker_types:
        bundle = oci_bundle(bundle)
    root = Path(path)
    try:
        root.mkdir(parents=True, exist_ok=True)
        if (root / "oci-layout").exists():
            _check_layout_file(root)
        else:
            _write_bytes_atomic(root / "oci-layout", json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
        index_doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": []}
        if (root / "index.json").exists():
            index_doc = _load_json(root / "index.json", "index")
        for desc in bundle.iter_blobs():
            _copy_blob(root, desc, bundle)
        for child in bundle.children:
            _write_manifest_blob(root, child)
        _write_manifest_blob(root, bundle.root)
        annotations = {REF_NAME: ref_name} if ref_name else {}
        new_entry = (
            bundle.root.descriptor(annotations=annotations)
            if isinstance(bundle.root, Manifest)
            else bundle.root.descriptor(annotations)
        ).to_json()
        kept = [e for e in index_doc.get("manifests") or [] if not _same_slot(e, ref_name, bundle.root.digest)]
        index_doc["manifests"] = [*kept, new_entry]
        _write_bytes_atomic(root / "index.json", json.dumps(index_doc, separators=(",", ":")).encode())
    except OSError as e:
        reason = e.strerror or str(e)
        raise LocalIOError(f"cannot write OCI layout {root}: {reason}; check the path and free space") from None
    return bundle.root.digest


def _same_slot(entry: Any, ref_name: str | None, digest: Digest) -> bool:
    """Whether an existing index.json entry is the one the new root replaces."""
    if not isinstance(entry, dict):
        return False
    name = (entry.get("annotations") or {}).get(REF_NAME)
    if ref_name:
        return bool(name == ref_name)
    # Unnamed: replace only an identical unnamed entry, so repeated writes do not pile up duplicates.
    return name is None and entry.get("digest") == str(digest)
