#!/usr/bin/env python3
"""Scaling (issue 13): copa's cost grows with the packages it updates, not with the image.

Hermetic, nothing from the network once the Debian fixture exists. Built once and cached under
~/.cache/copa-tests/bench/ (keyed by SCHEMA and the fixture's cache entry):
  image     the Debian fixture rootfs (tests/support/images.py, bookworm, ~100 packages) plus BENCH_PACKAGES
            generated `bench-N` packages (tests/support/aptrepo.build_deb, xz) installed by the real
            `dpkg --root -i`: 500+ packages in the dpkg database, one gzip layer. The mix: most small (a binary,
            sometimes a library, docs, data files; a conffile now and then), a fifth of 0.3-2 MiB, a few with a
            file of 3-8 MiB; content of realistic compressibility (xz ~2x), so decompression costs what it does.
  repo      a signed apt repository (tests/support/aptrepo.build_repo) holding a newer build (1.0-2, every file
            changed) of UPGRADABLE of them, a representative share of each size; served on 127.0.0.1.
  large     the same image plus one 1 GiB application layer (four 250 MiB incompressible files and ~3000 small
            files), written as an OCI layout.
For each N of --sizes (default 1, 10, 100), a Trivy report names the first N upgradable packages (a fixed
shuffle). Measured each round (wall, CPU = user + system, peak RSS, by GNU time):
  copa cold     `python -m copa patch -i REG/SRC -r REPORT -t TAG --push --repository 'deb URL stable main'
                --keyring KEY`, an empty COPA_CACHE_DIR; SRC is a copy of the image in a repository of its own
                (blobs mounted), so that the patch layer is really uploaded
  copa warm     the same with the cold run's cache, from another such copy
  (c) floor     one after another: `skopeo copy` of the image to an OCI layout (pull); one `curl` fetching every
                URL copa fetched from the repository (downloads); `xz -d` of the fetched indexes and of each
                package's data member (decompression); `igzip -1` of copa's patch layer as tar (compression);
                `skopeo copy` of a one-layer image holding that layer to a fresh registry (upload)
  (a) apt       `apt-get update` + `apt-get install --only-upgrade PKGS` chrooted into a copy of the rootfs that
                lists only the bench repository (bench_debian.chroot_copy; the copy is not timed)
The 1 GiB image is patched for LARGE_N packages, cold and warm, beside its floor (whose pull is the whole image);
(a) is the same as for the small image and is not repeated. Each cold result is checked: the patched image's
dpkg database (read by dpkg-query) lists every reported package at its new version.
The figures are printed one a line with their ratios, then a table, then a chart (benchmarks/scaling.png) of time
and peak RSS against the number of updated packages (matplotlib: `.venv/bin/pip install -e '.[bench]'`).

    .venv/bin/python benchmarks/bench_scaling.py [--repeat N] [--sizes 1,10,100] [--skip-large] [--chart PATH]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import BENCH_CACHE, REPO, MeasureError, ensure_gnu_time, registry
from bench_compare import (
    Fetched,
    compressed_inputs,
    copa_environment,
    copy_in_registry,
    curl_command,
    decompress_command,
    one_layer_layout,
    pull_patch_layer,
    skopeo,
)
from bench_debian import chroot_copy

from tests.support import images
from tests.support.aptrepo import DebSpec, RepoServer, build_deb, build_repo, make_key
from tests.support.registry import RunningRegistry
from tests.support.trivy import dpkg_versions, write_report

SCHEMA = "scaling-v2"  # bump when the image, the packages or the repository below change: it keys the cache
BENCH_PACKAGES = 450  # generated packages installed beside the fixture's ~100
UPGRADABLE = 100  # of them with a newer build in the repository
OLD, NEW = "1.0-1", "1.0-2"
SUITE = "stable"
REF = "scaling"
IMAGE = "bench/scaling:1"
LARGE_IMAGE = "bench/scaling-large:1"
LARGE_N = 10
LARGE_BIG_FILES = 4
LARGE_BIG_MIB = 250
LARGE_SMALL_FILES = 3000
TARGET_RSS_MIB = 150
CHART = REPO / "benchmarks" / "scaling.png"
MIB = 1 << 20
APT = "(a) apt-get update + upgrade (chroot)"
READ_LAYERS = "(i) igzip -d of the image's layers"


# ------------------------------------------------------------------------------------------------ the packages

# Byte maps to 16 and 4 symbols: random bytes through them have 4 and 2 bits of entropy a byte, so a mix of raw,
# 16-symbol and 4-symbol blocks compresses about as well as binaries and text do (xz ~2x), cheaply.
_NIBBLES = bytes.maketrans(bytes(range(256)), bytes(b"etaoinshrdlucmfw"[i % 16] for i in range(256)))
_QUADS = bytes.maketrans(bytes(range(256)), bytes(b"\x00\x00\x48\xff"[i % 4] for i in range(256)))


def content(rng: random.Random, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        block, pick = rng.randbytes(4096), rng.random()
        out += block if pick < 0.15 else block.translate(_NIBBLES if pick < 0.6 else _QUADS)
    return bytes(out[:size])


def kind(index: int) -> str:
    """The size class of bench-INDEX, drawn once per index: 6 % large, 20 % medium, the rest small."""
    draw = random.Random(f"kind-{index}").random()
    return "large" if draw < 0.06 else "medium" if draw < 0.26 else "small"


def spec(index: int, version: str) -> DebSpec:
    """bench-INDEX at `version`: files by its size class, contents seeded by (index, version) so that every file
    but the copyright changes between versions."""
    name = f"bench-{index}"
    rng = random.Random(f"{name}-{version}")
    size_class = kind(index)
    files: dict[str, bytes | str] = {
        f"usr/share/doc/{name}/copyright": f"Files: *\nCopyright: copa benchmarks\nLicense: none\n# {name}\n" * 20,
        f"usr/bin/{name}": content(rng, rng.randint(8, 60) * 1024),
    }
    if index % 2 == 0 or size_class != "small":
        files[f"usr/lib/x86_64-linux-gnu/lib{name}.so.1"] = content(rng, rng.randint(20, 100) * 1024)
    for j in range(rng.randint(1, 3)):
        files[f"usr/share/{name}/data-{j}.txt"] = content(rng, rng.randint(1, 16) * 1024)
    if size_class != "small":
        for j in range(rng.randint(2, 5)):
            files[f"usr/lib/x86_64-linux-gnu/{name}/module-{j}.so"] = content(rng, rng.randint(80, 300) * 1024)
    if size_class == "large":
        files[f"usr/share/{name}/assets.bin"] = content(rng, rng.randint(3, 8) * MIB)
    conffiles: tuple[str, ...] = ()
    if index % 10 == 3:
        files[f"etc/{name}/{name}.conf"] = f"# {name} {version}\nlevel = {rng.randint(1, 9)}\n"
        conffiles = (f"/etc/{name}/{name}.conf",)
    return DebSpec(name, version, files=files, conffiles=conffiles,
                   control={"Depends": "libc6 (>= 2.34)", "Section": "misc", "Priority": "optional",
                            "Installed-Size": str(sum(len(v) for v in files.values()) // 1024 + 1)})  # fmt: skip


def upgradable() -> list[int]:
    """The indexes with a newer build, in the order reports name them (the first N are the N updated). The order
    is stratified by size class, so that every prefix holds the classes in about the whole set's proportions (10
    updates are not ten tiny packages by chance): each next package is of the class furthest behind its share."""
    chosen = list(range(1, BENCH_PACKAGES, BENCH_PACKAGES // UPGRADABLE))[:UPGRADABLE]
    random.Random("order").shuffle(chosen)
    by_class: dict[str, list[int]] = {}
    for index in chosen:
        by_class.setdefault(kind(index), []).append(index)
    order: list[int] = []
    taken = dict.fromkeys(by_class, 0)
    for k in range(1, len(chosen) + 1):
        behind = max((c for c in by_class if taken[c] < len(by_class[c])),
                     key=lambda c: (k * len(by_class[c]) / len(chosen) - taken[c], len(by_class[c])))
        order.append(by_class[behind][taken[behind]])
        taken[behind] += 1
    return order


# ------------------------------------------------------------------------------------------------ the fixture


@dataclass(frozen=True)
class Fixture:
    rootfs: Path  # read-only: copied before anything changes it
    layout: Path  # OCI layout holding REF
    repo: Path  # the apt repository's root (dists/, pool/)
    keyring: Path  # its signing key, binary
    installed: int  # packages in the image's dpkg database

    def deb_mib(self, names: Sequence[str]) -> float:
        return sum(next((self.repo / "pool/main" / n).glob("*.deb")).stat().st_size for n in names) / MIB


def _build_fixture(entry: Path) -> None:
    rootfs = entry / "rootfs"
    subprocess.run(["cp", "-a", str(images.debian_rootfs()), str(rootfs)], check=True)
    debs_dir = entry / "debs"
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        debs = list(pool.map(lambda i: build_deb(spec(i, OLD), debs_dir), range(BENCH_PACKAGES)))
    # The real dpkg installs them (no maintainer scripts in these packages: nothing runs in the root).
    subprocess.run(["dpkg", f"--root={rootfs}", "--force-confold", "-i", *map(str, debs)], check=True,
                   capture_output=True)  # fmt: skip
    for lock in ("lock", "lock-frontend"):
        (rootfs / "var/lib/dpkg" / lock).unlink(missing_ok=True)
    shutil.rmtree(debs_dir)
    images.builder.make_oci_layout(rootfs, entry / "layout", REF, cmd=None)
    build_repo(entry / "repo", [spec(i, NEW) for i in sorted(upgradable())], key=make_key(entry / "key"),
               suite=SUITE, compress=("xz",))  # fmt: skip


def _cached(name: str, build: Callable[[Path], None]) -> Path:
    """BENCH_CACHE/name, built by `build(tmp)` into a temporary directory renamed into place when complete."""
    final = BENCH_CACHE / name
    if final.is_dir():
        return final
    BENCH_CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{name}.tmp-", dir=BENCH_CACHE))
    try:
        build(tmp)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def fixture() -> Fixture:
    base = images.debian_rootfs()
    # The fixture's cache entry names its parameters and the archive state it was built from.
    entry = _cached(f"{SCHEMA}-{base.parent.name}", _build_fixture)
    rootfs = entry / "rootfs"
    return Fixture(rootfs, entry / "layout", entry / "repo", entry / "key/repo-keyring.gpg",
                   len(dpkg_versions(rootfs)))  # fmt: skip


# ------------------------------------------------------------------------------------------------ the 1 GiB image


class _Sink:
    """Write-through wrapper hashing and counting what passes."""

    def __init__(self, out: BinaryIO) -> None:
        self.out, self.hash, self.size = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.out.write(data)


class _Random:
    """`size` incompressible bytes, made as read."""

    def __init__(self, size: int, seed: str) -> None:
        self.left, self.rng = size, random.Random(seed)

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return self.rng.randbytes(n)


def _app_layer_tar(out: BinaryIO) -> None:
    """An application layer: a few big incompressible files (models, archives) and thousands of small text-like
    ones (sources, packages of an interpreter), in directories."""
    rng = random.Random("app-layer")
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        def directory(path: str) -> None:
            info = tarfile.TarInfo(path)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1704067200
            tar.addfile(info)

        def file(path: str, size: int, data: object) -> None:
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = size, 0o644, 1704067200
            tar.addfile(info, cast(BinaryIO, data))

        for path in ("srv", "srv/app", "srv/app/data", "srv/app/lib"):
            directory(path)
        for i in range(LARGE_BIG_FILES):
            file(f"srv/app/data/blob-{i}.bin", LARGE_BIG_MIB * MIB, _Random(LARGE_BIG_MIB * MIB, f"blob-{i}"))
        for d in range(LARGE_SMALL_FILES // 100):
            directory(f"srv/app/lib/m{d:02d}")
            for f in range(100):
                data = content(rng, rng.randint(200, 16 * 1024))
                file(f"srv/app/lib/m{d:02d}/f{f:03d}.py", len(data), _Bytes(data))


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        chunk, self.pos = self.data[self.pos:end], min(end, len(self.data))
        return chunk


def _put(blobs: Path, doc: dict[str, object]) -> dict[str, object]:
    data = json.dumps(doc, separators=(",", ":")).encode()
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _build_large(fix: Fixture, entry: Path) -> None:
    layout = images.copy_layout(fix.layout, entry / "layout")
    blobs = layout / "blobs/sha256"
    tmp = blobs / "app-layer.tmp"
    # igzip -1 compresses the layer (ISA-L: seconds for 1 GiB where Python's gzip takes a minute).
    with tmp.open("wb") as out:
        igzip = subprocess.Popen(["igzip", "-1", "-c"], stdin=subprocess.PIPE, stdout=out)
        assert igzip.stdin is not None
        raw = _Sink(cast(BinaryIO, igzip.stdin))
        _app_layer_tar(cast(BinaryIO, raw))
        igzip.stdin.close()
        if igzip.wait() != 0:
            raise MeasureError("igzip failed writing the 1 GiB layer")
    digest = hashlib.sha256()
    with tmp.open("rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    layer_digest = digest.hexdigest()
    tmp.rename(blobs / layer_digest)
    index = json.loads((layout / "index.json").read_text())
    entry_desc = index["manifests"][0]
    manifest = json.loads((blobs / entry_desc["digest"].split(":")[1]).read_text())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_text())
    config["rootfs"]["diff_ids"].append(f"sha256:{raw.hash.hexdigest()}")
    config.setdefault("history", []).append({"created": "2024-01-01T00:00:00Z", "created_by": "COPY app /srv/app"})
    manifest["config"].update(_put(blobs, config))
    manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                               "digest": f"sha256:{layer_digest}", "size": (blobs / layer_digest).stat().st_size})
    entry_desc.update(_put(blobs, manifest))
    (layout / "index.json").write_text(json.dumps(index))


def large_layout(fix: Fixture) -> Path:
    entry = _cached(f"{SCHEMA}-large-{fix.layout.parent.name}", lambda tmp: _build_large(fix, tmp))
    return entry / "layout"


def layer_blobs(layout: Path) -> list[Path]:
    """The layer blobs of the (only) image of `layout`, bottom first."""
    blobs = layout / "blobs/sha256"
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":", 1)[1]).read_text())
    return [blobs / layer["digest"].split(":", 1)[1] for layer in manifest["layers"]]


# ------------------------------------------------------------------------------------------------ measuring


@dataclass(frozen=True, slots=True)
class Figure:
    label: str
    wall: float
    cpu: float  # user + system of the command and every child it waited for
    rss_kib: int

    @property
    def rss_mib(self) -> float:
        return self.rss_kib / 1024


def timed(label: str, argv: Sequence[str], env: dict[str, str] | None = None, cwd: Path = REPO) -> Figure:
    """`argv` once under GNU time: wall (%e), CPU (%U + %S) and peak RSS (%M); MeasureError if it fails."""
    with tempfile.NamedTemporaryFile("r", prefix="bench-time-", suffix=".txt") as out:
        proc = subprocess.run([ensure_gnu_time(), "-f", "%e %U %S %M", "-o", out.name, *argv], env=env, cwd=cwd,
                              capture_output=True, text=True, check=False)  # fmt: skip
        if proc.returncode != 0:
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
            raise MeasureError(f"{label}: {' '.join(argv[:4])} ... exited {proc.returncode}: {tail}")
        wall, user, system, rss = out.read().split()[-4:]  # the last line: GNU time may write a note before it
    return Figure(label, float(wall), float(user) + float(system), int(rss))


def summed(label: str, parts: Sequence[Figure]) -> Figure:
    """Steps run one after another: times add up, the peak RSS is the largest step's."""
    return Figure(label, sum(p.wall for p in parts), sum(p.cpu for p in parts), max(p.rss_kib for p in parts))


def median_of(label: str, runs: Sequence[Figure]) -> Figure:
    return Figure(label, statistics.median(r.wall for r in runs), statistics.median(r.cpu for r in runs),
                  max(r.rss_kib for r in runs))  # fmt: skip


def run(argv: Sequence[str], what: str) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, cwd=REPO)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise MeasureError(f"{what}: exited {proc.returncode}: {tail}")


# ------------------------------------------------------------------------------------------------ one case


@dataclass(frozen=True)
class Case:
    name: str  # "N=10" or "1 GiB, N=10"
    image: str  # REPOSITORY:TAG in the registry
    packages: tuple[str, ...]
    report: Path
    deb_mib: float
    apt: bool  # measure (a) for this case
    layout: Path  # the image's OCI layout (its layer blobs for the information row)


class Bench:
    def __init__(self, fix: Fixture, reg: RunningRegistry, server: RepoServer, work: Path, copa_tree: Path) -> None:
        self.fix, self.reg, self.server, self.work, self.copa_tree = fix, reg, server, work, copa_tree
        self.source_line = f"deb {server.url} {SUITE} main"
        self.runs: dict[tuple[str, str], list[Figure]] = {}
        self.discovered: dict[str, tuple[list[Fetched], Path, Path, dict[str, list[Path]]]] = {}
        self.checked: set[str] = set()

    def keep(self, case: Case, figure: Figure) -> Figure:
        self.runs.setdefault((case.name, figure.label), []).append(figure)
        print(f"  {case.name:<14} {figure.label:<38} {figure.wall:7.2f} s wall {figure.cpu:7.2f} s CPU "
              f"{figure.rss_mib:7.1f} MiB", flush=True)  # fmt: skip
        return figure

    def copa_run(self, label: str, case: Case, source: str, cache: Path) -> Figure:
        # copa from `copa_tree` (its directory first on the path and as the working directory, which `-m` searches
        # first), bytecode cached as an installed copa has it (bench_compare.copa_environment).
        env = {**copa_environment(cache), "PYTHONPATH": str(self.copa_tree)}
        return self.keep(case, timed(label, self.copa(case, source, cache), env, cwd=self.copa_tree))

    def copa(self, case: Case, source: str, cache: Path) -> list[str]:
        return [sys.executable, "-m", "copa", "patch", "-i", source, "-r", str(case.report), "-t", "patched",
                "--push", "--progress", "quiet", "--repository", self.source_line,
                "--keyring", str(self.fix.keyring)]  # fmt: skip

    def check(self, case: Case, patched: str) -> PatchLayerInfo:
        """The patch layer of copa's first cold result, and its dpkg database read by dpkg-query: every reported
        package at NEW (a benchmark of a wrong patch would mean nothing)."""
        work = self.work / f"check-{case.name.replace(' ', '_').replace(',', '')}"
        work.mkdir()
        layer = pull_patch_layer(patched, work)
        admin = work / "root/var/lib/dpkg"
        admin.mkdir(parents=True)
        with tarfile.open(layer.tar) as tar:
            member = tar.getmember("var/lib/dpkg/status")
            data = tar.extractfile(member)
            assert data is not None
            (admin / "status").write_bytes(data.read())
        versions = dpkg_versions(work / "root")
        wrong = [p for p in case.packages if versions.get(p) != NEW]
        if wrong:
            raise MeasureError(f"{case.name}: copa's patched image does not have {NEW} of {', '.join(wrong[:5])}")
        return PatchLayerInfo(layer.tar, one_layer_layout(layer, work / "one-layer"), layer.blob.stat().st_size)

    def round(self, case: Case, i: int) -> None:
        cache = self.work / f"cache-{i}"
        shutil.rmtree(cache, ignore_errors=True)
        self.server.requests.clear()
        slug = case.name.replace(" ", "-").replace(",", "").replace("=", "").lower()
        cold_src = copy_in_registry(self.reg, case.image, f"bench/{slug}-cold-{i}")
        self.copa_run("copa cold", case, cold_src, cache)
        if case.name not in self.discovered:
            # What copa fetched from the repository (the server's log of this cold run): what curl fetches again.
            paths = sorted(set(self.server.requests))
            fetched = [Fetched(f"{self.server.url}{p}", self.fix.repo / p.lstrip("/"),
                               (self.fix.repo / p.lstrip("/")).stat().st_size) for p in paths]  # fmt: skip
            info = self.check(case, cold_src.rsplit(":", 1)[0] + ":patched")
            inputs_dir = self.work / f"inputs-{slug}"
            inputs_dir.mkdir()
            self.discovered[case.name] = (fetched, info.tar, info.upload_layout, compressed_inputs(fetched, inputs_dir))
            print(f"  {case.name:<14} copa fetched {len(fetched)} files, {sum(f.size for f in fetched) / MIB:.1f} MiB;"
                  f" patch layer {info.blob_size / MIB:.1f} MiB gzip, {info.tar.stat().st_size / MIB:.1f} MiB tar")
        warm_src = copy_in_registry(self.reg, case.image, f"bench/{slug}-warm-{i}")
        self.copa_run("copa warm", case, warm_src, cache)
        fetched, tar, upload_layout, by_tool = self.discovered[case.name]
        pulled = self.work / f"pulled-{i}"
        floor = [
            self.keep(case, timed("(c) pull: skopeo copy -> oci dir",
                                  skopeo(f"docker://{self.reg.host}/{case.image}", f"oci:{pulled}:x"))),
            self.keep(case, timed("(c) downloads: curl", curl_command([f.url for f in fetched]))),
            self.keep(case, timed("(c) decompress: xz -d", decompress_command(by_tool))),
            self.keep(case, timed("(c) compress: igzip -1 of the layer",
                                  ["sh", "-c", f"igzip -1 -c {tar} > /dev/null"])),
        ]  # fmt: skip
        with registry("scaling-upload") as sink:
            floor.append(self.keep(case, timed("(c) upload: skopeo copy of one layer",
                                               skopeo(f"oci:{upload_layout}:x", f"docker://{sink.host}/one:1"))))
        shutil.rmtree(pulled, ignore_errors=True)
        self.keep(case, summed("(c) floor", floor))
        self.keep(case, summed("(c) floor without downloads", [f for f in floor if "curl" not in f.label]))
        # Not part of the floor (skopeo's pull copies blobs without opening them), shown to explain copa's fixed
        # part: decompressing the image's layers, which copa reads to find the package database and the files.
        blobs = " ".join(str(p) for p in layer_blobs(case.layout))
        self.keep(case, timed(READ_LAYERS, ["sh", "-c", f"igzip -d -c {blobs} > /dev/null"]))
        if case.apt:
            self.keep(case, self.apt(case))
        shutil.rmtree(cache, ignore_errors=True)

    def apt(self, case: Case) -> Figure:
        """(a): apt in a chroot of a copy of the rootfs whose only source is the bench repository."""
        with chroot_copy(self.fix.rootfs) as root:
            for old in ("etc/apt/sources.list", "etc/apt/sources.list.d"):
                target = root / old
                if target.is_dir():
                    shutil.rmtree(target)
                    target.mkdir()
                else:
                    target.unlink(missing_ok=True)
            (root / "etc/apt/keyrings").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.fix.keyring, root / "etc/apt/keyrings/bench.gpg")
            (root / "etc/apt/sources.list.d/bench.list").write_text(
                f"deb [signed-by=/etc/apt/keyrings/bench.gpg] {self.server.url} {SUITE} main\n")
            apt = f"chroot {root} apt-get -q -o Acquire::Check-Valid-Until=false"
            script = (f"{apt} update && DEBIAN_FRONTEND=noninteractive {apt} -y install --only-upgrade "
                      f"{' '.join(case.packages)}")  # fmt: skip
            figure = timed(APT, ["sh", "-c", script])
            got = dpkg_versions(root)
            wrong = [p for p in case.packages if got.get(p) != NEW]
            if wrong:
                raise MeasureError(f"(a) apt did not upgrade {', '.join(wrong[:5])}")
            return figure

    def medians(self) -> dict[tuple[str, str], Figure]:
        return {key: median_of(key[1], runs) for key, runs in self.runs.items()}


@dataclass(frozen=True)
class PatchLayerInfo:
    tar: Path
    upload_layout: Path
    blob_size: int


# ------------------------------------------------------------------------------------------------ output


def report_lines(cases: Sequence[Case], med: dict[tuple[str, str], Figure], repeat: int) -> None:
    print(f"\nscaling: medians of {repeat} round(s); wall s / CPU s / peak RSS MiB")
    header = (f"{'case':<14} {'updated':>15} {'copa cold':>20} {'copa warm':>20} {'(c) floor':>13} "
              f"{'floor w/o dl':>13} {'(a) apt':>13} {'cold/(c)':>9} {'warm/(c)':>9} {'cold/(a)':>9}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for case in cases:
        cold, warm = med.get((case.name, "copa cold")), med.get((case.name, "copa warm"))
        floor, local = med.get((case.name, "(c) floor")), med.get((case.name, "(c) floor without downloads"))
        apt = med.get((case.name, APT))
        assert cold and warm and floor and local

        def cell(f: Figure | None, rss: bool = True) -> str:
            if f is None:
                return "-"
            return f"{f.wall:.2f}/{f.cpu:.2f}/{f.rss_mib:.0f}" if rss else f"{f.wall:.2f}/{f.cpu:.2f}"

        print(f"{case.name:<14} {f'{len(case.packages)} ({case.deb_mib:.1f} MiB)':>15} {cell(cold):>20} "
              f"{cell(warm):>20} {cell(floor, False):>13} {cell(local, False):>13} {cell(apt, False):>13} "
              f"{cold.wall / floor.wall:>8.2f}x {warm.wall / local.wall:>8.2f}x "
              f"{(f'{cold.wall / apt.wall:.2f}x' if apt else '-'):>9}")  # fmt: skip
    print()
    for case in cases:
        cold, warm = med[(case.name, "copa cold")], med[(case.name, "copa warm")]
        floor, local = med[(case.name, "(c) floor")], med[(case.name, "(c) floor without downloads")]
        apt = med.get((case.name, APT))
        print(f"{case.name:<14} copa cold {cold.wall:.2f} s (CPU {cold.cpu:.2f} s) = {cold.wall / floor.wall:.2f}x "
              f"(c) floor {floor.wall:.2f} s (CPU {cold.cpu / floor.cpu:.2f}x its {floor.cpu:.2f} s)"
              + (f", {cold.wall / apt.wall:.2f}x (a) apt {apt.wall:.2f} s" if apt else "")
              + f"; warm {warm.wall:.2f} s = {warm.wall / local.wall:.2f}x the floor without downloads; "
              f"peak RSS cold {cold.rss_mib:.0f} MiB, warm {warm.rss_mib:.0f} MiB; "
              f"{med[(case.name, READ_LAYERS)].wall:.2f} s to decompress the image's layers")  # fmt: skip
    rss = [med[(c.name, "copa cold")].rss_mib for c in cases] + [med[(c.name, "copa warm")].rss_mib for c in cases]
    print(f"\npeak RSS of copa over every case: {min(rss):.0f} to {max(rss):.0f} MiB "
          f"(target < {TARGET_RSS_MIB} MiB: {'ok' if max(rss) < TARGET_RSS_MIB else 'MISSED'})")


def chart(cases: Sequence[Case], med: dict[tuple[str, str], Figure], path: Path) -> None:
    """Two panels, 800 x 400 px: time and peak RSS against the number of updated packages (log scale); the 1 GiB
    image's point marked apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    small = [c for c in cases if not c.name.startswith("1 GiB")]
    large = [c for c in cases if c.name.startswith("1 GiB")]
    xs = [len(c.packages) for c in small]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(8, 4), dpi=100)
    series = [("copa cold", "copa cold", "C0", "-"), ("copa warm", "copa warm", "C1", "-"),
              ("(c) floor", "(c) floor", "C2", "--"), (APT, "(a) apt", "C3", ":")]
    for label, legend, color, style in series:
        ys = [med[(c.name, label)].wall if (c.name, label) in med else None for c in small]
        if all(y is not None for y in ys):
            ax_t.plot(xs, ys, style, marker="o", color=color, label=legend)
    ax_t.plot(xs, [med[(c.name, "copa cold")].cpu for c in small], "-.", marker=".", color="C0", alpha=0.5,
              label="copa cold CPU")
    for c in large:
        n = len(c.packages)
        ax_t.plot([n], [med[(c.name, "copa cold")].wall], "*", ms=12, color="C0", label="copa cold, 1 GiB image")
        ax_t.plot([n], [med[(c.name, "(c) floor")].wall], "*", ms=12, color="C2", label="floor, 1 GiB image")
    for label, legend, color in (("copa cold", "copa cold", "C0"), ("copa warm", "copa warm", "C1")):
        ax_m.plot(xs, [med[(c.name, label)].rss_mib for c in small], "-", marker="o", color=color, label=legend)
    for c in large:
        ax_m.plot([len(c.packages)], [med[(c.name, "copa cold")].rss_mib], "*", ms=12, color="C0",
                  label="copa cold, 1 GiB image")
    ax_m.axhline(TARGET_RSS_MIB, color="grey", ls="--", lw=1, label=f"target {TARGET_RSS_MIB} MiB")
    for ax, title, unit in ((ax_t, "time", "seconds"), (ax_m, "peak RSS", "MiB")):
        ax.set_xscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("updated packages")
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("copa patch of a 500+ package Debian image: cost against updated packages", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"chart written: {path} ({path.stat().st_size // 1024} KiB)")


# ------------------------------------------------------------------------------------------------ main


@contextmanager
def serving(fix: Fixture) -> Iterator[RepoServer]:
    with RepoServer(fix.repo) as server:
        yield server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="rounds (each figure is the median of them)")
    parser.add_argument("--sizes", default="1,10,100", help=f"numbers of updated packages (at most {UPGRADABLE})")
    parser.add_argument("--skip-large", action="store_true", help="leave out the 1 GiB layer image")
    parser.add_argument("--chart", type=Path, default=CHART, help=f"where the PNG goes (default {CHART})")
    parser.add_argument("--copa-tree", type=Path, default=REPO,
                        help="the source tree whose copa is measured (default this one; e.g. an export of a commit: "
                        "`git archive HEAD copa | tar -x -C DIR`)")
    args = parser.parse_args(argv)
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        parser.error(f"--sizes takes numbers separated by commas, not {args.sizes!r}")
    if not sizes or sizes[0] < 1 or sizes[-1] > UPGRADABLE:
        parser.error(f"--sizes: each between 1 and {UPGRADABLE}")
    for tool, package in (("igzip", "isal"), ("curl", "curl"), ("xz", "xz-utils"), ("skopeo", "skopeo"),
                          ("umoci", "umoci"), ("dpkg-scanpackages", "dpkg-dev")):  # fmt: skip
        if shutil.which(tool) is None:
            subprocess.run(["apt-get", "install", "-y", "-q", package], check=True, capture_output=True,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip

    print("preparing the image and the repository (cached after the first run)...", flush=True)
    fix = fixture()
    order = [f"bench-{i}" for i in upgradable()]
    os_version = (fix.rootfs / "etc/debian_version").read_text().strip()
    print(f"image: {fix.installed} packages in its dpkg database; repository: {UPGRADABLE} newer builds "
          f"({fix.deb_mib(order):.1f} MiB of .debs)")
    large = None if args.skip_large else large_layout(fix)
    work = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    try:
        with ExitStack() as stack:
            reg = stack.enter_context(registry("scaling"))
            server = stack.enter_context(serving(fix))
            images.push_layout(fix.layout, REF, reg.host, IMAGE)
            cases = []
            for n in sizes:
                names = tuple(order[:n])
                report = write_report(work / f"trivy-{n}.json", {p: (OLD, NEW) for p in names}, os_version=os_version)
                cases.append(Case(f"N={n}", IMAGE, names, report, fix.deb_mib(names), apt=True, layout=fix.layout))
            if large is not None:
                images.push_layout(large, REF, reg.host, LARGE_IMAGE)
                size = sum(p.stat().st_size for p in (large / "blobs/sha256").iterdir()) / MIB
                print(f"1 GiB image: {size:.0f} MiB of blobs")
                names = tuple(order[:LARGE_N])
                cases.append(Case(f"1 GiB, N={LARGE_N}", LARGE_IMAGE, names,
                                  write_report(work / "trivy-large.json", {p: (OLD, NEW) for p in names},
                                               os_version=os_version),
                                  fix.deb_mib(names), apt=False, layout=large))  # fmt: skip
            bench = Bench(fix, reg, server, work, args.copa_tree.resolve())
            for i in range(args.repeat):
                for case in cases:
                    bench.round(case, i)
                print(f"round {i + 1}/{args.repeat} done", flush=True)
            med = bench.medians()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report_lines(cases, med, args.repeat)
    try:
        chart(cases, med, args.chart)
    except ImportError:
        print("no chart: matplotlib is missing; install it with `.venv/bin/pip install -e '.[bench]'`",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
