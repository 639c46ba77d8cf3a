"""docker-archive tars (`docker save` / skopeo `docker-archive:`) as a Source and as a sink.

The archive has no image manifest of its own, so the source synthesizes one from manifest.json; its
bytes are a pure function of the archive's content, so its digest is stable across runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import re
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from copa.errors import IntegrityError, LocalIOError, UnsupportedImageError, UsageError
from copa.oci.digest import Digest, verifying
from copa.oci.image import Bundle, decompressed
from copa.oci.model import (
    MAX_LAYERS,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    MediaType,
    layer_compression,
    parse_manifest,
)
from copa.oci.reference import Reference

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CONFIG_LIMIT = 64 << 20
_CHUNK = 1 << 20
_OCI_EQUIVALENT = {MediaType.DOCKER_LAYER: MediaType.OCI_LAYER, MediaType.DOCKER_LAYER_GZIP: MediaType.OCI_LAYER_GZIP}
_BLOB_NAME = re.compile(r"^blobs/(sha256|sha512)/([0-9a-f]+)$")


@dataclass(frozen=True, slots=True)
class _Member:
    name: str
    offset: int
    size: int


class _Slice(io.RawIOBase):
    """`size` bytes of a file from `offset`: one tar member, read with its own file handle."""

    def __init__(self, path: Path, member: _Member) -> None:
        super().__init__()
        self._file = path.open("rb")
        self._file.seek(member.offset)
        self._left = member.size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer)
        n = min(len(view), self._left)
        if n == 0:
            return 0
        chunk = self._file.read(n)
        view[: len(chunk)] = chunk
        self._left -= len(chunk)
        return len(chunk)

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            super().close()


def _index_members(path: Path) -> dict[str, _Member]:
    """Regular-file members by normalized name, with symlinks and hard links resolved to their targets."""
    # Members are read by offset from a file: a FIFO would block the open forever, a device would never end.
    if path.exists() and not path.is_file():
        raise LocalIOError(f"docker archive {path} is not a regular file; pass the archive file itself")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise LocalIOError(f"docker archive {path} does not exist; check the path") from None
    except OSError as e:
        raise LocalIOError(f"cannot read docker archive {path}: {e.strerror}") from None
    if magic.startswith(_GZIP_MAGIC) or magic == _ZSTD_MAGIC:
        # Members are read by offset for cheap random access, which a compressed stream does not allow.
        raise UnsupportedImageError(f"docker archive {path} is compressed; decompress it first (e.g. gunzip)")
    files: dict[str, _Member] = {}
    links: dict[str, str] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                name = posixpath.normpath(info.name.lstrip("/"))
                if info.isreg():
                    files[name] = _Member(name, info.offset_data, info.size)
                elif info.issym():
                    links[name] = posixpath.normpath(posixpath.join(posixpath.dirname(name), info.linkname))
                elif info.islnk():
                    links[name] = posixpath.normpath(info.linkname.lstrip("/"))
    except tarfile.TarError as e:
        raise UnsupportedImageError(f"docker archive {path} is not a valid tar file ({e})") from None
    for name, target in links.items():
        for _ in range(16):  # bounded: a link cycle must not hang us
            if target in files:
                files[name] = files[target]
                break
            if target not in links:
                break
            target = links[target]
    return files


def _tag_matches(wanted: str, repo_tag: str) -> bool:
    if wanted == repo_tag:
        return True
    try:
        return Reference.parse(wanted) == Reference.parse(repo_tag)
    except UsageError:
        return False


def _dump(doc: Mapping[str, Any] | list[Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


class ArchiveSource:
    """One image from a docker-archive tar, chosen by RepoTag (or the only one)."""

    def __init__(self, path: str | os.PathLike[str], tag: str | None = None) -> None:
        self._path = Path(path)
        self._tag = tag
        self._members = _index_members(self._path)
        entry = self._choose(self._manifest_json())
        self._blobs: dict[Digest, _Member] = {}
        self._manifest = self._synthesize(entry)

    @property
    def description(self) -> str:
        return f"docker-archive:{self._path}" + (f":{self._tag}" if self._tag else "")

    def _member(self, name: Any) -> _Member:
        member = self._members.get(posixpath.normpath(str(name).lstrip("/")))
        if member is None:
            raise UnsupportedImageError(f"{self.description}: member {name!r} named in manifest.json is missing")
        return member

    def _read_member(self, member: _Member, limit: int) -> bytes:
        if member.size > limit:
            raise UnsupportedImageError(f"{self.description}: {member.name} is {member.size} bytes; too large")
        with _Slice(self._path, member) as f:
            return f.read()

    def _manifest_json(self) -> list[Any]:
        member = self._members.get("manifest.json")
        if member is None:
            raise UnsupportedImageError(
                f"{self._path} has no manifest.json; it is not a docker-archive (or a pre-1.10 legacy one)"
            )
        try:
            doc = json.loads(self._read_member(member, _CONFIG_LIMIT))
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            reason = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
            raise UnsupportedImageError(f"{self._path}: manifest.json is not valid JSON ({reason})") from None
        if not isinstance(doc, list) or not all(isinstance(e, dict) for e in doc):
            raise UnsupportedImageError(f"{self._path}: manifest.json is not a list of image entries")
        return doc

    def _list(self, entry: dict[str, Any], key: str) -> list[str]:
        """entry[key] as a list of strings (absent or null: empty); another JSON type is a malformed archive."""
        value = entry.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UnsupportedImageError(f"{self._path}: manifest.json {key} must be a list of strings; the archive "
                                        f"is malformed")
        return value

    def _choose(self, entries: list[Any]) -> dict[str, Any]:
        all_tags = [t for e in entries for t in self._list(e, "RepoTags")]
        if self._tag is not None:
            for entry in entries:
                if any(_tag_matches(self._tag, t) for t in self._list(entry, "RepoTags")):
                    return dict(entry)
            raise LocalIOError(
                f"{self._path} has no image tagged {self._tag!r} (tags: {', '.join(all_tags) or 'none'}); "
                "pass one of them"
            )
        if len(entries) != 1:
            raise LocalIOError(
                f"{self._path} holds {len(entries)} images (tags: {', '.join(all_tags) or 'none'}); name one"
            )
        return dict(entries[0])

    def _synthesize(self, entry: dict[str, Any]) -> Manifest:
        config_member = self._member(entry.get("Config"))
        config_raw = self._read_member(config_member, _CONFIG_LIMIT)
        config = ImageConfig.parse(config_raw)
        layer_names = self._list(entry, "Layers")
        if len(layer_names) > MAX_LAYERS:  # before each is looked at: the synthesized manifest would refuse them
            raise UnsupportedImageError(f"{self.description}: manifest.json lists {len(layer_names)} layers, more "
                                        f"than {MAX_LAYERS}: no runtime can stack that many; the archive is malformed")
        if len(layer_names) != len(config.diff_ids):
            raise UnsupportedImageError(
                f"{self.description}: {len(layer_names)} layers but the config lists {len(config.diff_ids)} "
                "diff_ids; the archive is malformed"
            )
        config_digest = Digest.of_bytes(config_raw)
        self._blobs[config_digest] = config_member
        pairs = zip(layer_names, config.diff_ids, strict=True)
        layers = [self._layer(self._member(name), diff_id) for name, diff_id in pairs]
        # Docker v2s2 has no zstd layer type; an archive holding zstd layers is described as OCI instead.
        oci = any(layer_compression(mt) == "zstd" for mt, _, _ in layers)
        if oci:
            layers = [(_OCI_EQUIVALENT.get(mt, mt), d, size) for mt, d, size in layers]
        doc = {
            "schemaVersion": 2,
            "mediaType": MediaType.OCI_MANIFEST if oci else MediaType.DOCKER_MANIFEST,
            "config": {
                "mediaType": MediaType.OCI_CONFIG if oci else MediaType.DOCKER_CONFIG,
                "size": config_member.size,
                "digest": str(config_digest),
            },
            "layers": [{"mediaType": mt, "size": size, "digest": str(d)} for mt, d, size in layers],
        }
        parsed = parse_manifest(_dump(doc))
        assert isinstance(parsed, Manifest)
        return parsed

    def _layer(self, member: _Member, diff_id: Digest) -> tuple[str, Digest, int]:
        with _Slice(self._path, member) as f:
            magic = f.read(4)
        if magic.startswith(_GZIP_MAGIC):
            media_type = MediaType.DOCKER_LAYER_GZIP
        elif magic == _ZSTD_MAGIC:
            media_type = MediaType.OCI_LAYER_ZSTD
        else:
            media_type = MediaType.DOCKER_LAYER
        blob_name = _BLOB_NAME.match(member.name)
        if not layer_compression(media_type):
            digest = diff_id  # an uncompressed layer's digest is its diff_id; open_blob verifies it
        elif blob_name:
            digest = Digest(blob_name.group(1), blob_name.group(2))  # content-addressed name; verified on read
        else:
            digest = self._hash_member(member)
        self._blobs[digest] = member
        return media_type, digest, member.size

    def _hash_member(self, member: _Member) -> Digest:
        h = hashlib.sha256()
        with _Slice(self._path, member) as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return Digest("sha256", h.hexdigest())

    def root(self) -> Manifest | Index:
        return self._manifest

    def fetch_manifest(self, desc: Descriptor) -> Manifest | Index:
        if desc.digest != self._manifest.digest:
            raise LocalIOError(f"{self.description} has no manifest {desc.digest}; an archive holds one image")
        return self._manifest

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        member = self._blobs.get(desc.digest)
        if member is None:
            raise LocalIOError(f"{self.description} has no blob {desc.digest}")
        raw = io.BufferedReader(_Slice(self._path, member), buffer_size=1 << 16)
        return verifying(raw, desc.digest, desc.size, f"{self.description} {member.name}")


class _Hashing(io.RawIOBase):
    """Passes a stream through, hashing and counting it (tarfile reads exactly the header's size)."""

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


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _check_diff_id(got: _Hashing, diff_id: Digest, desc: Descriptor) -> None:
    if got.hash.hexdigest() != diff_id.hex:
        raise IntegrityError(
            f"layer {desc.digest}: uncompressed content hashes to {diff_id.algorithm}:{got.hash.hexdigest()} "
            f"but the config's diff_id is {diff_id}; the image is corrupt"
        )


def _add_layer(
    tar: tarfile.TarFile, name: str, desc: Descriptor, diff_id: Digest, bundle: Bundle, tmp_dir: Path
) -> None:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    with bundle.open_blob(desc) as src:
        if not layer_compression(desc.media_type):
            # Uncompressed: the descriptor's size is the member size, so stream straight into the tar.
            info.size = desc.size
            hashing = _Hashing(src, diff_id.algorithm)
            try:
                tar.addfile(info, io.BufferedReader(hashing, buffer_size=1 << 16))
            except OSError as e:
                raise IntegrityError(f"layer {desc.digest} ended early ({e}); the source is truncated") from None
            src.read()  # reach EOF so a verifying source checks its digest and rejects trailing bytes
            _check_diff_id(hashing, diff_id, desc)
            return
        # Compressed: a tar header needs the uncompressed size up front and no manifest records it. Spooling to
        # a temp file reads the source once (a second pass could mean a second registry download).
        with tempfile.TemporaryFile(dir=tmp_dir) as spool:
            hashing = _Hashing(decompressed(src, desc.media_type), diff_id.algorithm)
            while chunk := hashing.read(_CHUNK):
                spool.write(chunk)
            src.read()  # past the compressed stream's end, so the blob's own digest is checked in full
            _check_diff_id(hashing, diff_id, desc)
            info.size = hashing.count
            spool.seek(0)
            tar.addfile(info, spool)


def _split_tag(repo_tag: str) -> tuple[str, str]:
    repo, sep, tag = repo_tag.rpartition(":")
    if not sep or "/" in tag or not repo:
        raise UsageError(f"invalid docker-archive tag {repo_tag!r}: expected REPOSITORY:TAG")
    return repo, tag


def write_archive(path: str | os.PathLike[str], bundle: Bundle, repo_tags: list[str]) -> None:
    """Write `bundle.primary` as a docker-archive in the layout skopeo writes (and `docker load` reads).

    Layers are stored uncompressed as <diff_id hex>.tar, the config as <hex>.json, plus the legacy
    <id>/{layer.tar,json,VERSION} entries and `repositories` file that pre-manifest.json loaders need."""
    target = Path(path)
    for repo_tag in repo_tags:
        _split_tag(repo_tag)
    manifest = bundle.primary
    with bundle.open_blob(manifest.config) as f:
        config_raw = f.read(_CONFIG_LIMIT + 1)
        f.read()  # to EOF, so the verifying stream checks the digest
    if len(config_raw) > _CONFIG_LIMIT or Digest.of_bytes(config_raw, manifest.config.digest.algorithm) != (
        manifest.config.digest
    ):
        raise IntegrityError(f"image config {manifest.config.digest} does not match its digest; the source is corrupt")
    config = ImageConfig.parse(config_raw)
    if len(config.diff_ids) != len(manifest.layers):
        raise UnsupportedImageError(
            f"manifest has {len(manifest.layers)} layers but the config lists {len(config.diff_ids)} diff_ids"
        )
    tmp = target.with_name(target.name + ".tmp")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            config_name = f"{manifest.config.digest.hex}.json"
            _add_bytes(tar, config_name, config_raw)
            layer_names: list[str] = []
            for desc, diff_id in zip(manifest.layers, config.diff_ids, strict=True):
                name = f"{diff_id.hex}.tar"
                if name not in layer_names:
                    _add_layer(tar, name, desc, diff_id, bundle, target.parent)
                layer_names.append(name)
            top_id = _write_legacy(tar, config_raw, config.diff_ids)
            entry = {"Config": config_name, "RepoTags": list(repo_tags), "Layers": layer_names}
            _add_bytes(tar, "manifest.json", _dump([entry]))
            repositories: dict[str, dict[str, str]] = {}
            for repo_tag in repo_tags:
                repo, tag = _split_tag(repo_tag)
                repositories.setdefault(repo, {})[tag] = top_id
            if repositories and top_id:
                _add_bytes(tar, "repositories", _dump(repositories))
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise LocalIOError(f"cannot write docker archive {target}: {e.strerror or e}; check the path") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _write_legacy(tar: tarfile.TarFile, config_raw: bytes, diff_ids: tuple[Digest, ...]) -> str:
    """Per-layer v1 directories, as skopeo writes them; IDs are chain IDs so a repeated layer cannot loop."""
    full = json.loads(config_raw)
    chain = ""
    parent = ""
    written: set[str] = set()
    for i, diff_id in enumerate(diff_ids):
        chain = str(diff_id) if not chain else "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
        layer_id = chain.split(":", 1)[1]
        layer_config: dict[str, Any] = {}
        if parent:
            layer_config["parent"] = parent
        if i == len(diff_ids) - 1:
            for attr in ("architecture", "config", "container", "container_config", "created", "docker_version", "os"):
                if attr in full:
                    layer_config[attr] = full[attr]
        layer_config["id"] = layer_id
        if layer_id not in written:
            written.add(layer_id)
            link = tarfile.TarInfo(f"{layer_id}/layer.tar")
            link.type = tarfile.SYMTYPE
            link.linkname = f"../{diff_id.hex}.tar"
            tar.addfile(link)
            _add_bytes(tar, f"{layer_id}/json", _dump(layer_config))
            _add_bytes(tar, f"{layer_id}/VERSION", b"1.0")
        parent = layer_id
    return parent
