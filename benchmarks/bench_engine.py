#!/usr/bin/env python3
"""Engine benchmark: copa's OCI library re-pushing an image with one appended layer, beside `skopeo copy`.

For each image (the Debian fixture, ~30 MB compressed, and a generated image of >= 1 GiB of random content)
the image is pushed to a source registry; then, each into a FRESH destination registry so every blob really
crosses the wire:
  copa    read the source (manifest, config), write a one-file layer (copa.oci.layer.write_layer), append it
          (copa.oci.mutate.append_layer) and push everything (copa.oci.registry.push) -- in a child process
  skopeo  `skopeo copy docker://SRC docker://DST` of the same image
Wall time and the peak RSS of the child process tree come from GNU time. The large image shows memory stays
flat: copa's peak RSS must be far below the size of one layer.

    .venv/bin/python benchmarks/bench_engine.py [--repeat N] [--large-mib 1024] [--skip-large]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import BENCH_CACHE, REPO, Measurement, measure, median, print_table, registry

from tests.support import images

LARGE_LAYERS = 2  # the large image's size is split over this many layers
SRC_TAG = "bench/src:1"


# ------------------------------------------------------------------------------------------------ large image


class _Hashing:
    """A write-through file wrapper that hashes and counts what passes (tar -> gzip -> file)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


class _RandomFile:
    """`size` bytes of pseudo-random (incompressible) content, produced as read: never all in memory."""

    def __init__(self, size: int, seed: int) -> None:
        self.left = size
        self.rng = random.Random(seed)

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return self.rng.randbytes(n)


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _write_layer(layout: Path, index: int, size: int) -> tuple[dict[str, object], str]:
    """A gzip layer holding one random file of `size` bytes; returns (descriptor, diff_id)."""
    tmp = layout / "blobs/sha256" / f"layer-{index}.tmp"
    with tmp.open("wb") as f:
        compressed = _Hashing(cast(BinaryIO, f))
        # Level 1: the content is random, so a higher level only costs time without shrinking anything.
        with gzip.GzipFile(filename="", fileobj=cast(BinaryIO, compressed), mode="wb", compresslevel=1, mtime=0) as gz:
            uncompressed = _Hashing(cast(BinaryIO, gz))
            with tarfile.open(fileobj=cast(BinaryIO, uncompressed), mode="w|", format=tarfile.PAX_FORMAT) as tar:
                info = tarfile.TarInfo(f"data/random-{index}.bin")
                info.size, info.mode, info.mtime = size, 0o644, 0
                tar.addfile(info, cast(BinaryIO, _RandomFile(size, index)))
    digest = compressed.hash.hexdigest()
    tmp.rename(layout / "blobs/sha256" / digest)
    desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": f"sha256:{digest}",
            "size": compressed.size}
    return desc, f"sha256:{uncompressed.hash.hexdigest()}"


def large_layout(total_mib: int) -> Path:
    """An OCI layout (ref name `large`) of LARGE_LAYERS random layers totalling `total_mib` MiB, cached."""
    final = BENCH_CACHE / f"large-{total_mib}mib-v1"
    if (final / "index.json").is_file():
        return final
    BENCH_CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=BENCH_CACHE))
    try:
        (tmp / "blobs/sha256").mkdir(parents=True)
        (tmp / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        per_layer = total_mib * (1 << 20) // LARGE_LAYERS
        layers, diff_ids = zip(*(_write_layer(tmp, i, per_layer) for i in range(LARGE_LAYERS)), strict=True)
        config = {
            "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/usr/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": f"bench: random layer {i}"}
                        for i in range(LARGE_LAYERS)],
        }  # fmt: skip
        config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
                       **_blob(tmp, json.dumps(config).encode())}
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": config_desc, "layers": list(layers)}
        manifest_desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                         **_blob(tmp, json.dumps(manifest).encode()),
                         "annotations": {"org.opencontainers.image.ref.name": "large"}}  # fmt: skip
        (tmp / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest_desc]}))
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def blob_bytes(layout: Path) -> int:
    return sum(p.stat().st_size for p in (layout / "blobs/sha256").iterdir())


# ------------------------------------------------------------------------------------------------ copa child


def copa_append_and_push(source_ref: str, target_ref: str) -> None:
    """What the child process measures: copa's library reading, appending one layer, pushing elsewhere."""
    from copa.oci.image import Image, resolve_platform
    from copa.oci.layer import Entry, write_layer
    from copa.oci.model import Platform
    from copa.oci.mutate import append_layer, original_of
    from copa.oci.reference import Reference
    from copa.oci.registry import RegistryClient, RegistrySource, push

    source_reference = Reference.parse(source_ref)
    with RegistryClient() as client, tempfile.TemporaryDirectory(prefix="bench-layer-") as tmp:
        source = RegistrySource(client, source_reference)
        root = source.root()
        manifest, _ = resolve_platform(source, root, Platform("linux", "amd64"))
        image = Image.load(source, manifest)
        layer = write_layer([Entry.file("etc/copa-bench.txt", b"appended by bench_engine\n")], Path(tmp))
        bundle = append_layer(
            source, root, image, layer, original_of(image, str(source_reference)),
            created="2024-01-01T00:00:00Z", comment="bench_engine",
        )  # fmt: skip
        push(client, Reference.parse(target_ref), bundle)


# ------------------------------------------------------------------------------------------------ benchmark


@dataclass(frozen=True, slots=True)
class Subject:
    name: str
    layout: Path
    ref_name: str

    @property
    def size_mib(self) -> float:
        return blob_bytes(self.layout) / (1 << 20)


def subjects(large_mib: int, skip_large: bool) -> Iterator[Subject]:
    layout, ref = images.debian_layout()
    yield Subject("debian fixture", layout, ref)
    if not skip_large:
        print(f"preparing the large image ({large_mib} MiB of random layers; cached after the first run)...")
        yield Subject("large random", large_layout(large_mib), "large")


def bench_subject(subject: Subject, repeat: int) -> list[Measurement]:
    copa_runs: list[Measurement] = []
    skopeo_runs: list[Measurement] = []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with registry("src") as src:
        images.push_layout(subject.layout, subject.ref_name, src.host, SRC_TAG)
        for i in range(repeat):
            # A fresh destination each run: no blob is already there, none can be mounted.
            with ExitStack() as stack:
                dst = stack.enter_context(registry("dst-copa"))
                child = [sys.executable, __file__, "--child", f"{src.host}/{SRC_TAG}", f"{dst.host}/bench/copa:{i}"]
                copa_runs.append(measure("copa", child, env=env))
            with ExitStack() as stack:
                dst = stack.enter_context(registry("dst-skopeo"))
                skopeo_runs.append(measure(
                    "skopeo", ["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
                               f"docker://{src.host}/{SRC_TAG}", f"docker://{dst.host}/bench/skopeo:{i}"],
                ))  # fmt: skip
    return [median("copa (append 1 layer + push)", copa_runs), median("skopeo copy", skopeo_runs)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool and image (median reported)")
    parser.add_argument("--large-mib", type=int, default=1024, help="size of the large image (default 1024)")
    parser.add_argument("--skip-large", action="store_true", help="only the Debian fixture")
    parser.add_argument("--child", nargs=2, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        copa_append_and_push(*args.child)
        return 0
    for subject in subjects(args.large_mib, args.skip_large):
        repeat = 1 if subject.name == "large random" and args.repeat > 1 else args.repeat
        rows = bench_subject(subject, repeat)
        copa, skopeo = rows
        ratio = {copa.label: f"{copa.seconds / skopeo.seconds:.2f}x skopeo", skopeo.label: "1.00x"}
        print_table(f"{subject.name}: {subject.size_mib:.0f} MiB of blobs, registry -> fresh registry", rows, ratio)
        largest = max(p.stat().st_size for p in (subject.layout / "blobs/sha256").iterdir()) / (1 << 20)
        print(f"  largest blob {largest:.0f} MiB; copa peak RSS is {copa.peak_rss_mib / largest:.1%} of it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
