"""OCI / Docker manifest, index and config documents.

JSON becomes these types here and nowhere else. Each document keeps its raw bytes: the digest of a
manifest is the digest of exactly the bytes a registry served, and re-serialising could change it.
Edits (appending a layer) go through the JSON of the original so that fields we do not model survive.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from copa.errors import UnsupportedImageError
from copa.oci.digest import Digest, InvalidDigest


class MediaType:
    OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    OCI_INDEX = "application/vnd.oci.image.index.v1+json"
    OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
    OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
    OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
    OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
    OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
    DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
    DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
    DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
    DOCKER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

    MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
    INDEXES = (OCI_INDEX, DOCKER_LIST)
    ALL_MANIFESTS = MANIFESTS + INDEXES


def layer_compression(media_type: str) -> str:
    """'gzip', 'zstd' or '' (uncompressed) for a layer media type."""
    if media_type.endswith("+zstd") or media_type.endswith(".zstd"):
        return "zstd"
    if media_type.endswith("gzip"):
        return "gzip"
    return ""


class ManifestFormatError(UnsupportedImageError):
    pass


# Bounds on what a manifest may list. overlayfs stacks at most 128 lower directories (Docker refuses images of more
# than 125 layers), so no runnable image comes near MAX_LAYERS; a hostile manifest of 100,000 layers is refused
# before one of them is opened. MAX_ENTRIES bounds an index the same way (real ones list tens of platforms).
MAX_LAYERS = 1000
MAX_ENTRIES = 10000


def _strings(obj: Any, where: str) -> dict[str, str]:
    """An annotations/labels object: absent or null is empty; anything but an object of strings is refused."""
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ManifestFormatError(f"{where} must be a JSON object, not {type(obj).__name__}")
    return {str(k): str(v) for k, v in obj.items()}


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            from copa.errors import UsageError

            raise UsageError(f"invalid platform {text!r}: expected OS/ARCH[/VARIANT], e.g. linux/arm64")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    def matches(self, other: Platform) -> bool:
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        # A wanted platform without a variant accepts any variant (linux/arm64 matches linux/arm64/v8).
        return not self.variant or not other.variant or self.variant == other.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            p: dict[str, str] = {"architecture": self.platform.architecture, "os": self.platform.os}
            if self.platform.variant:
                p["variant"] = self.platform.variant
            out["platform"] = p
        return out


def _descriptor(obj: Any, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise ManifestFormatError(f"{where}: descriptor is not an object")
    try:
        digest = Digest.parse(str(obj["digest"]))
        size = obj["size"]
        media_type = obj.get("mediaType", "")
    except (KeyError, ValueError, TypeError, InvalidDigest) as e:
        raise ManifestFormatError(f"{where}: invalid descriptor ({e})") from None
    # The image spec's size is an int64 of bytes: a string, a fraction or a negative count is no size to verify.
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 1 << 63:
        raise ManifestFormatError(f"{where}: invalid descriptor (size {size!r} is not a byte count)")
    if media_type is None:
        media_type = ""
    if not isinstance(media_type, str):
        raise ManifestFormatError(f"{where}: invalid descriptor (mediaType {media_type!r} is not a string)")
    plat = obj.get("platform")
    platform = None
    if isinstance(plat, dict) and plat.get("os") and plat.get("architecture"):
        platform = Platform(str(plat["os"]), str(plat["architecture"]), str(plat.get("variant", "")))
    urls = obj.get("urls") or []
    if not isinstance(urls, list):
        raise ManifestFormatError(f"{where}: invalid descriptor (urls must be a list)")
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        annotations=_strings(obj.get("annotations"), f"{where} annotations"),
        platform=platform,
        urls=tuple(str(u) for u in urls),
    )


def _same(original: list[Any], i: int, desc: Descriptor) -> bool:
    """Whether the manifest's i-th layer JSON describes exactly `desc` (so it can be kept as written)."""
    if i >= len(original):
        return False
    try:
        return _descriptor(original[i], "layer") == desc
    except ManifestFormatError:
        return False


def _load(raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestFormatError(f"{what} is not valid JSON: {str(e).split(';')[0]}") from None
    except RecursionError:
        raise ManifestFormatError(f"{what} is JSON nested too deeply to be an image document") from None
    if not isinstance(doc, dict):
        raise ManifestFormatError(f"{what} is not a JSON object")
    return doc


def _dump(doc: Mapping[str, Any]) -> bytes:
    # Compact and key-ordered as written by most registries' clients; deterministic for equal input.
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Manifest:
    raw: bytes
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str]

    @property
    def digest(self) -> Digest:
        return Digest.of_bytes(self.raw)

    def descriptor(self, platform: Platform | None = None, annotations: Mapping[str, str] | None = None) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.raw), annotations or {}, platform)

    def edited(self, config: Descriptor, layers: tuple[Descriptor, ...], annotations: Mapping[str, str]) -> Manifest:
        """A new manifest with this one's other fields, the given config and layers, and added annotations.

        Docker v2s2 has no annotations field, so for it annotations are dropped (the config labels carry
        the same facts)."""
        doc = _load(self.raw, "manifest")
        doc["config"] = {**doc.get("config", {}), **config.to_json()}
        # A kept layer keeps its original JSON, fields we do not model included; only new layers are ours to write.
        original = doc.get("layers") or []
        doc["layers"] = [original[i] if _same(original, i, d) else d.to_json() for i, d in enumerate(layers)]
        if annotations and self.media_type != MediaType.DOCKER_MANIFEST:
            doc["annotations"] = {**doc.get("annotations", {}), **annotations}
        parsed = parse_manifest(_dump(doc), self.media_type)
        assert isinstance(parsed, Manifest)
        return parsed


@dataclass(frozen=True, slots=True)
class Index:
    raw: bytes
    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str]

    @property
    def digest(self) -> Digest:
        return Digest.of_bytes(self.raw)

    def descriptor(self, annotations: Mapping[str, str] | None = None) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.raw), annotations or {})

    def replaced(
        self, old: Digest, new: Descriptor, annotations: Mapping[str, str], drop: frozenset[Digest] = frozenset()
    ) -> Index:
        """The index with the entry for `old` pointing at `new`, and the entries in `drop` removed."""
        doc = _load(self.raw, "index")
        entries = []
        dropped = {str(d) for d in drop}
        for entry in doc.get("manifests", []):
            if entry.get("digest") in dropped:
                continue
            if entry.get("digest") == str(old):
                entry = {**entry, "mediaType": new.media_type, "digest": str(new.digest), "size": new.size}
            entries.append(entry)
        doc["manifests"] = entries
        if annotations and self.media_type == MediaType.OCI_INDEX:
            doc["annotations"] = {**doc.get("annotations", {}), **annotations}
        parsed = parse_manifest(_dump(doc), self.media_type)
        assert isinstance(parsed, Index)
        return parsed

    def without(self, drop: frozenset[Digest]) -> Index:
        """The index with the entries in `drop` removed."""
        doc = _load(self.raw, "index")
        dropped = {str(d) for d in drop}
        doc["manifests"] = [e for e in doc.get("manifests", []) if e.get("digest") not in dropped]
        parsed = parse_manifest(_dump(doc), self.media_type)
        assert isinstance(parsed, Index)
        return parsed

    def with_annotations(self, annotations: Mapping[str, str]) -> Index:
        """The index with `annotations` added (a Docker manifest list has no annotations: unchanged)."""
        if not annotations or self.media_type != MediaType.OCI_INDEX:
            return self
        doc = _load(self.raw, "index")
        doc["annotations"] = {**doc.get("annotations", {}), **annotations}
        parsed = parse_manifest(_dump(doc), self.media_type)
        assert isinstance(parsed, Index)
        return parsed


@dataclass(frozen=True, slots=True)
class Opaque:
    """An index entry that is not an image (an artifact manifest, a Helm chart, a signature): kept byte for byte."""

    raw: bytes
    media_type: str

    @property
    def digest(self) -> Digest:
        return Digest.of_bytes(self.raw)

    def references(self) -> tuple[Descriptor, ...]:
        """The blobs a JSON document of this kind names (an artifact's config, layers or blobs), so they can travel
        with it; anything unreadable is simply not followed."""
        try:
            doc = json.loads(self.raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return ()
        if not isinstance(doc, dict):
            return ()
        lists = [doc.get(key) for key in ("layers", "blobs")]
        found = [doc.get("config"), *(obj for items in lists if isinstance(items, list) for obj in items)]
        out: list[Descriptor] = []
        for obj in found:
            try:
                out.append(_descriptor(obj, "artifact"))
            except ManifestFormatError:
                continue
        return tuple(out)


Document = Manifest | Index | Opaque


def parse_document(raw: bytes, media_type: str) -> Document:
    """Like `parse_manifest`, but a document of another known type (`media_type`, e.g. from an index entry)
    is returned as `Opaque` instead of refused: copa carries such entries along without reading them."""
    if media_type and media_type not in MediaType.ALL_MANIFESTS and not media_type.startswith(_DOCKER_V1):
        doc = _load(raw, "manifest")
        declared = str(doc.get("mediaType", ""))
        if declared in MediaType.ALL_MANIFESTS:
            return parse_manifest(raw, declared)
        return Opaque(raw, declared or media_type)
    return parse_manifest(raw, media_type)


_DOCKER_V1 = "application/vnd.docker.distribution.manifest.v1"


def parse_manifest(raw: bytes, media_type: str = "") -> Manifest | Index:
    """Parse a manifest or index; `media_type` is the Content-Type / descriptor type if known."""
    doc = _load(raw, "manifest")
    declared = str(doc.get("mediaType", ""))
    mt = declared or media_type
    if not mt:
        # OCI allows omitting mediaType; tell the two apart by their fields.
        mt = MediaType.OCI_INDEX if "manifests" in doc else MediaType.OCI_MANIFEST
    if doc.get("schemaVersion") == 1 or mt.startswith(_DOCKER_V1):
        raise ManifestFormatError("Docker schema 1 manifests are not supported; re-push the image with a current tool")
    annotations = _strings(doc.get("annotations"), "manifest annotations")
    if mt in MediaType.INDEXES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise ManifestFormatError("index has no 'manifests' list")
        if len(entries) > MAX_ENTRIES:
            raise ManifestFormatError(f"index lists {len(entries)} manifests, more than {MAX_ENTRIES}: not an image "
                                      f"index copa will read")
        return Index(raw, mt, tuple(_descriptor(e, "index entry") for e in entries), annotations)
    if mt in MediaType.MANIFESTS:
        layers = doc.get("layers")
        if "config" not in doc or not isinstance(layers, list):
            raise ManifestFormatError("image manifest lacks 'config' or 'layers'")
        if len(layers) > MAX_LAYERS:
            raise ManifestFormatError(f"image manifest lists {len(layers)} layers, more than {MAX_LAYERS}: no runtime "
                                      f"can stack that many; the image is malformed")
        return Manifest(
            raw,
            mt,
            _descriptor(doc["config"], "manifest config"),
            tuple(_descriptor(layer, "manifest layer") for layer in layers),
            annotations,
        )
    raise ManifestFormatError(f"unsupported manifest media type {mt!r}: expected an OCI or Docker v2 image")


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    created_by: str
    comment: str = ""
    created: str = ""
    empty_layer: bool = False


@dataclass(frozen=True, slots=True)
class ImageConfig:
    raw: bytes
    os: str
    architecture: str
    variant: str
    diff_ids: tuple[Digest, ...]
    labels: Mapping[str, str]
    history: tuple[HistoryEntry, ...]

    @property
    def digest(self) -> Digest:
        return Digest.of_bytes(self.raw)

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant)

    @classmethod
    def parse(cls, raw: bytes) -> ImageConfig:
        doc = _load(raw, "image config")
        rootfs = _typed(doc, "rootfs", dict, {})
        try:
            diff_ids = tuple(Digest.parse(str(d)) for d in _typed(rootfs, "diff_ids", list, [], "rootfs."))
        except InvalidDigest as e:
            raise ManifestFormatError(f"image config: {e}") from None
        cfg = _typed(doc, "config", dict, {})
        labels = _strings(cfg.get("Labels"), "image config config.Labels")
        for key in ("os", "architecture", "variant"):
            _typed(doc, key, str, "")
        history = tuple(
            HistoryEntry(
                created_by=str(h.get("created_by", "")),
                comment=str(h.get("comment", "")),
                created=str(h.get("created", "")),
                empty_layer=bool(h.get("empty_layer", False)),
            )
            for h in _typed(doc, "history", list, [])
            if isinstance(h, dict)
        )
        return cls(
            raw,
            str(doc.get("os", "")),
            str(doc.get("architecture", "")),
            str(doc.get("variant", "")),
            diff_ids,
            labels,
            history,
        )

    def edited(
        self,
        diff_ids: tuple[Digest, ...],
        history: tuple[HistoryEntry, ...],
        labels: Mapping[str, str],
        created: str = "",
        kept_history: int | None = None,
    ) -> ImageConfig:
        """A new config with the given layers and history, added labels, and other fields kept. The first
        `kept_history` entries of `history` are the config's own (default: as many as it has): their JSON is kept
        byte for byte, the entries after them are written."""
        doc = _load(self.raw, "image config")
        rootfs = doc.setdefault("rootfs", {"type": "layers"})
        rootfs["diff_ids"] = [str(d) for d in diff_ids]
        old_history = doc.get("history")
        if isinstance(old_history, list):
            # Keep the original entries' JSON untouched; only entries past them are ours to write.
            # A re-patch passes fewer of the old entries than the config has: the previous patch's entry goes.
            keep = min(len(old_history), len(history) if kept_history is None else kept_history)
            doc["history"] = old_history[:keep] + [_history_json(h) for h in history[keep:]]
        if labels:
            cfg = doc.setdefault("config", {})
            cfg["Labels"] = {**(cfg.get("Labels") or {}), **labels}
        if created:
            doc["created"] = created
        return ImageConfig.parse(_dump(doc))


def _typed(doc: dict[str, Any], key: str, kind: type, default: Any, prefix: str = "") -> Any:
    """doc[key] if it is a `kind` (absent or null: `default`); another JSON type is a malformed config."""
    value = doc.get(key)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise ManifestFormatError(f"image config: {prefix}{key} must be a JSON {_JSON_KIND.get(kind, 'value')}, "
                                  f"not {type(value).__name__}; the image is malformed")
    return value


_JSON_KIND: dict[type, str] = {dict: "object", list: "array", str: "string"}


def _history_json(h: HistoryEntry) -> dict[str, Any]:
    entry: dict[str, Any] = {"created_by": h.created_by}
    if h.created:
        entry["created"] = h.created
    if h.comment:
        entry["comment"] = h.comment
    if h.empty_layer:
        entry["empty_layer"] = True
    return entry
