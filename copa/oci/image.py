"""What every image source provides, and what every sink consumes.

A *source* (registry, OCI layout, docker-archive) implements three calls: its root document, a child
manifest by descriptor, and a verified blob stream by descriptor. Everything else derives from those.
A *sink* is a function taking a `Bundle`: every manifest and blob the written image needs, plus a
way to open each blob; sinks write blobs first, then child manifests, then the root (and a tag) last,
so nothing points at content that is not in place.
"""

from __future__ import annotations

import gzip
import io
import lzma
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, cast

import zstandard
from isal import igzip
from isal.igzip_lib import IsalError

from copa.errors import UnsupportedImageError
from copa.oci.digest import Digest
from copa.oci.model import Descriptor, Document, ImageConfig, Index, Manifest, MediaType, Platform, layer_compression
from copa.oci.reference import Reference

BlobOpener = Callable[[Descriptor], BinaryIO]


class Source(Protocol):
    """An image store we read from. `open_blob` returns a stream that verifies size and digest."""

    @property
    def description(self) -> str: ...

    def root(self) -> Manifest | Index: ...

    def fetch_manifest(self, desc: Descriptor) -> Document: ...

    def open_blob(self, desc: Descriptor) -> BinaryIO: ...


def read_blob(source: Source, desc: Descriptor, limit: int = 64 << 20) -> bytes:
    """Read a small blob (config) whole; refuse absurd sizes rather than exhausting memory."""
    if desc.size > limit:
        raise UnsupportedImageError(f"blob {desc.digest} is {desc.size} bytes; too large for a config document")
    with source.open_blob(desc) as f:
        return f.read()


# What reading a damaged compressed stream raises: zlib's and ISA-L's inflate errors, lzma's and zstd's, and a
# gzip header or CRC error or a stream cut short (gzip.BadGzipFile is an OSError: name it, so that the remaining
# OSErrors can still mean the local disk or the network).
CORRUPT_STREAM: tuple[type[Exception], ...] = (
    zlib.error, cast(type[Exception], IsalError), lzma.LZMAError, zstandard.ZstdError, EOFError, gzip.BadGzipFile,
)


def decompressed(stream: BinaryIO, media_type: str) -> BinaryIO:
    """A streaming uncompressed view of a layer blob."""
    kind = layer_compression(media_type)
    if kind == "gzip":
        # ISA-L inflates about twice as fast as zlib: every base layer is read through here.
        return igzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[no-untyped-call, return-value]
    if kind == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
        return io.BufferedReader(reader, buffer_size=1 << 16)
    return stream


@dataclass(frozen=True, slots=True)
class Layer:
    descriptor: Descriptor
    diff_id: Digest


@dataclass(frozen=True, slots=True)
class Image:
    """One platform's image: manifest + config, blobs read lazily from `source`."""

    source: Source
    manifest: Manifest
    config: ImageConfig

    @classmethod
    def load(cls, source: Source, manifest: Manifest) -> Image:
        _check_media_types(source, manifest)
        config = ImageConfig.parse(read_blob(source, manifest.config))
        if len(config.diff_ids) != len(manifest.layers):
            raise UnsupportedImageError(
                f"{source.description}: manifest has {len(manifest.layers)} layers but config lists "
                f"{len(config.diff_ids)} diff_ids; the image is malformed"
            )
        return cls(source, manifest, config)

    @property
    def layers(self) -> tuple[Layer, ...]:
        return tuple(Layer(d, diff) for d, diff in zip(self.manifest.layers, self.config.diff_ids, strict=True))

    def open_layer_tar(self, layer: Layer) -> BinaryIO:
        """The layer's uncompressed tar stream (compressed bytes verified against the manifest digest)."""
        return decompressed(self.source.open_blob(layer.descriptor), layer.descriptor.media_type)


# A manifest whose config is of another type is an artifact (a Helm chart, a signature, an SBOM), not an image.
_CONFIG_TYPES = (MediaType.OCI_CONFIG, MediaType.DOCKER_CONFIG, "")
# Layer media types are the OCI and Docker tar types (with +gzip/+zstd, nondistributable/foreign variants); anything
# else would be read as a plain tar and fail far from its cause, or be an artifact's blob.
_LAYER_PREFIXES = ("application/vnd.oci.image.layer.", "application/vnd.docker.image.rootfs.")


def _check_media_types(source: Source, manifest: Manifest) -> None:
    if manifest.config.media_type not in _CONFIG_TYPES:
        raise UnsupportedImageError(f"{source.description}: config media type {manifest.config.media_type!r} is not "
                                    f"an image config: this is an artifact, not a container image copa can patch")
    for n, layer in enumerate(manifest.layers, 1):
        kind = layer.media_type
        if not (kind.startswith(_LAYER_PREFIXES) and ".tar" in kind):
            raise UnsupportedImageError(f"{source.description}: layer {n} ({layer.digest}) has media type {kind!r}, "
                                        f"not an OCI or Docker layer tar: this is not a container image copa can "
                                        f"patch")


def resolve_platform(source: Source, root: Manifest | Index, wanted: Platform) -> tuple[Manifest, Platform | None]:
    """Pick the manifest for `wanted` from an index, searching nested indexes depth first in entry order.

    An entry that points at another index usually carries no platform, so every index entry is entered;
    only after the whole tree is searched is the platform missing."""
    if isinstance(root, Manifest):
        return root, None
    found = _find_platform(source, root, wanted, set())
    if found is not None:
        return found
    available = ", ".join(sorted({str(p) for p in _platforms(source, root, set())})) or "none"
    raise UnsupportedImageError(
        f"{source.description} has no {wanted} image (platforms: {available}); pass --platform with one of them"
    )


def _may_be_index(entry: Descriptor) -> bool:
    return entry.media_type in MediaType.INDEXES or (entry.platform is None and not entry.media_type)


def _find_platform(
    source: Source, index: Index, wanted: Platform, seen: set[Digest]
) -> tuple[Manifest, Platform | None] | None:
    seen.add(index.digest)
    for entry in _by_preference(index.manifests, wanted):
        if entry.digest in seen:
            continue  # a cycle of indexes (only a hostile registry can make one) must not recurse forever
        if entry.platform is not None and wanted.matches(entry.platform):
            child = source.fetch_manifest(entry)
            if isinstance(child, Manifest):
                return child, entry.platform
            if isinstance(child, Index) and (found := _find_platform(source, child, wanted, seen)) is not None:
                return found
        elif _may_be_index(entry):
            child = source.fetch_manifest(entry)
            if isinstance(child, Index) and (found := _find_platform(source, child, wanted, seen)) is not None:
                return found
    return None


def _by_preference(entries: tuple[Descriptor, ...], wanted: Platform) -> list[Descriptor]:
    """Entries in order, except that without a wanted variant an entry with no variant (or the usual one for the
    architecture: arm64/v8) comes before one with another variant (linux/arm/v6 before v7 would be arbitrary)."""
    if wanted.variant:
        return list(entries)
    usual = _DEFAULT_VARIANT.get(wanted.architecture, "")

    def rank(entry: Descriptor) -> int:
        variant = entry.platform.variant if entry.platform is not None else ""
        return 0 if variant in ("", usual) else 1

    return sorted(entries, key=rank)


# The variant a platform without one means, as containerd's platform matcher assumes.
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


def _platforms(source: Source, index: Index, seen: set[Digest]) -> list[Platform]:
    seen.add(index.digest)
    out: list[Platform] = []
    for entry in index.manifests:
        if entry.platform is not None and entry.media_type not in MediaType.INDEXES:
            out.append(entry.platform)
        elif _may_be_index(entry) and entry.digest not in seen:
            child = source.fetch_manifest(entry)
            if isinstance(child, Index):
                out.extend(_platforms(source, child, seen))
    return out


def platform_entries(source: Source, root: Manifest | Index) -> list[tuple[Platform, Descriptor]]:
    """Every image manifest of an index tree with the platform its entry names, in entry order, each manifest
    once. Entries without a platform (and nested indexes' own entries) are not images a platform selects."""
    if isinstance(root, Manifest):
        return []
    out: list[tuple[Platform, Descriptor]] = []
    seen: set[Digest] = set()

    def walk(index: Index) -> None:
        seen.add(index.digest)
        for entry in index.manifests:
            if entry.digest in seen:
                continue
            if entry.platform is not None and entry.media_type not in MediaType.INDEXES:
                seen.add(entry.digest)
                out.append((entry.platform, entry))
            elif _may_be_index(entry):
                child = source.fetch_manifest(entry)
                if isinstance(child, Index):
                    walk(child)

    walk(root)
    return out


@dataclass(frozen=True)
class Bundle:
    """Everything a sink writes: `blobs` first, then `children` in order, then `root`.

    `primary` is the single image a one-image sink (docker-archive) writes; `mount_from` names the
    source registry repository so a registry sink can mount blobs instead of re-uploading them.
    """

    root: Manifest | Index
    primary: Manifest
    children: tuple[Document, ...]
    blobs: tuple[Descriptor, ...]
    open_blob: BlobOpener
    mount_from: Reference | None = None  # set when the source is a registry
    # Child manifests a registry sink also tags (after the children, before the root): per-platform tags.
    child_tags: tuple[tuple[str, Manifest], ...] = ()
    # Blobs already sent to the registry sink's repository while they were written (copa.oci.registry's
    # StreamedUpload): the upload session to close, or None to upload the blob as usual.
    streamed: Mapping[Digest, Callable[[], str | None]] = field(default_factory=dict)
    # Whether the registry sink's repository holds some of the blobs, asked while the patch was made (copa.oci.
    # registry's CheckedAhead); called once, by the push.
    checked: Callable[[], Mapping[Digest, bool]] | None = None

    def iter_blobs(self) -> Iterator[Descriptor]:
        seen: set[Digest] = set()
        for desc in self.blobs:
            if desc.digest not in seen:
                seen.add(desc.digest)
                yield desc


def manifest_blobs(manifest: Manifest) -> tuple[Descriptor, ...]:
    return (manifest.config, *manifest.layers)


def is_docker(media_type: str) -> bool:
    return media_type in (MediaType.DOCKER_MANIFEST, MediaType.DOCKER_LIST)
