#!/usr/bin/env python3
"""The honest benchmark (issue 13): one cold `copa patch` of a fixture image (Debian; Alpine; RPM) against (a) the
package manager doing the same upgrade on a copy of the image's rootfs, (b) the whole rebuild a user without BuildKit
runs, and (c) the floor: the transfers and decompression the job cannot avoid, timed with standard tools one after
another. All in one run, interleaved round by round so that a change in the machine's load or the mirror's speed
hits every figure alike.

Setup (not measured): the fixture image is pushed to a fresh docker-registry. Debian (tests/support/images.py): a
Trivy report names every package whose bookworm-security version (the oracle image) is newer. Alpine: bench_alpine's
hermetic signed repository on 127.0.0.1 holds a newer release of 24 packages of the image, which lists only it.
RPM: bench_rpm's hermetic image (171 packages in rpmdb.sqlite, UBI 9's os-release, no dnf inside) and its signed
createrepo_c repository on 127.0.0.1 with a newer build of 50 of them, of which the report names the first N
(`--rpm-updated`, default 10: 2 big and 8 small). One untimed discovery run of copa cold goes through a logging
HTTP forward proxy (`http_proxy`; the registry is not): it records every repository URL copa fetched (signed
release files, indexes, packages) and keeps their bodies, and its pushed image gives the patch layer whose size
the floor's gzip and upload use (RPM: that image is also pulled, unpacked by umoci and read by the real rpm: the
named packages at their new version, the others not moved).

Measured each round (wall time, CPU time (user + system) and peak RSS of the process tree, GNU time):
  copa cold     `python -m copa patch -i REG/SRC -r REPORT -t TAG --push`, an empty COPA_CACHE_DIR; SRC is a copy
                of the image in a repository of its own, so that the patch layer is really uploaded
  copa warm     the same with the cold run's cache, from another such copy
  (a)           Debian: `apt-get update` + `apt-get install --only-upgrade PKGS` chrooted into a copy of the rootfs
                (bench_debian.apt_upgrade); Alpine: the image's apk `add -u PKGS` with `--root` on a copy (as
                bench_alpine runs it); RPM: the host's `dnf --installroot COPY upgrade PKGS` (as bench_rpm runs
                it; the image has no dnf). None pulls, nor builds a layer, nor pushes
  (b) buildah   `buildah from` the image, `buildah run --isolation chroot` the same upgrade (apk: `apk add -u
                --no-cache PKGS`), `buildah commit`,
                `buildah push` (to the source repository, as a user would), `--storage-driver vfs` with a private
                `--root`/`--runroot` per round: the sum of the four steps. RPM: the image has no dnf to run, so
                the upgrade step is `buildah mount` and the host's `dnf --installroot MOUNTPOINT upgrade PKGS`
                (checked by rpm -qa afterwards, untimed), inside the same from/commit/push sequence
  (c) floor     the sum of: `skopeo copy` of the image to an OCI layout (pull); one `curl` process fetching every
                URL copa fetched, one after another (downloads); `xz -d`/`zstd -d`/`gzip -d` of the fetched indexes
                and of the packages' data members: a .deb's `data.tar.*`, an .rpm's payload, found by reading the
                rpm lead and header sizes and checked against rpm2cpio (decompression); `igzip -1` of copa's patch
                layer, uncompressed
                (compression); `skopeo copy` of a one-layer image holding that layer to a fresh registry (upload)
Also: time from starting copa to its first network request (copa pointed at a listener on 127.0.0.1 that notes
the first byte it receives; copa is then stopped), median of 5 a round; peak RSS of copa cold.
Targets (cold cache): copa <= 1.0x (c), <= 0.3x (a), <= 0.15x (b); warm <= 1.0x (c) without its downloads; peak
RSS < 150 MiB; first request < 150 ms. The last line printed holds the ratios against them (by wall time); the
line before it gives the same ratios by CPU time, which a loaded machine distorts less.

    .venv/bin/python benchmarks/bench_compare.py [--repeat N] [--image debian|alpine|rpm|all] [--rpm-updated N]
                                                [--rpm-primary N] [--apk-index N]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import http.client
import http.server
import itertools
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import BENCH_CACHE, REPO, MeasureError, Measurement, measure, median, print_table, registry
from bench_debian import apt_upgrade, copa_env

from tests.support import images
from tests.support.registry import RunningRegistry
from tests.support.trivy import dpkg_versions, fixed_packages, write_report

IMAGE = "bench/debian:1"
TARGET_FLOOR = 1.0
TARGET_APT = 0.3
TARGET_BUILDAH = 0.15
TARGET_RSS_MIB = 150
TARGET_FIRST_REQUEST_MS = 150
APT_OPTS = "-q -o Acquire::Check-Valid-Until=false"  # as bench_debian: the mirror may be a frozen snapshot
# Magic numbers of the compressed files copa fetched: by-hash URLs carry no extension to tell them by.
DECOMPRESSORS = {b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd", b"\x1f\x8b": "gzip"}
RPM_LEAD = b"\xed\xab\xee\xdb"  # an .rpm's first bytes; its lead is 96 bytes long
RPM_HEADER = b"\x8e\xad\xe8\x01"  # a header structure's magic and version
BUILDAH_TOTAL = "(b) buildah: the steps above, one after another"
BASE_INFLATE = "(info, not in (c)) decompress the image's layers"


# ------------------------------------------------------------------------------------------------ discovery


@dataclass(frozen=True, slots=True)
class Fetched:
    url: str
    path: Path  # the body as served
    size: int


class LoggingProxy(http.server.ThreadingHTTPServer):
    """A plain-HTTP forward proxy on 127.0.0.1 that keeps every URL it served with status 200, and its body.

    Used only for the untimed discovery run: copa's downloads are what the floor's curl must fetch again."""

    daemon_threads = True

    def __init__(self, store: Path) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.store = store
        self.fetched: list[Fetched] = []
        self.refused: list[str] = []
        self.lock = threading.Lock()
        self.numbers = itertools.count()  # bodies are stored under their arrival number

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: LoggingProxy

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.scheme != "http" or not parts.hostname:
            self.send_error(400, "absolute http:// URL expected")
            return
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("connection", "proxy-connection", "keep-alive", "host")}  # fmt: skip
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=120)
        try:
            conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers)
            resp = conn.getresponse()
            self.send_response(resp.status)
            for key, value in resp.getheaders():
                if key.lower() not in ("connection", "keep-alive", "transfer-encoding"):
                    self.send_header(key, value)
            self.send_header("Connection", "close")
            self.end_headers()
            if resp.status != 200:
                with self.server.lock:
                    self.server.refused.append(f"{resp.status} {self.path}")
                shutil.copyfileobj(resp, self.wfile)
                return
            with self.server.lock:
                path = self.server.store / f"{next(self.server.numbers):04d}"
            size = 0
            with path.open("wb") as out:
                while chunk := resp.read(1 << 16):
                    out.write(chunk)
                    self.wfile.write(chunk)
                    size += len(chunk)
            with self.server.lock:
                self.server.fetched.append(Fetched(self.path, path, size))
        finally:
            conn.close()


@contextlib.contextmanager
def logging_proxy(store: Path) -> Iterator[LoggingProxy]:
    proxy = LoggingProxy(store)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()


def copa_environment(cache: Path) -> dict[str, str]:
    """copa's environment: its cache, and compiled bytecode kept between runs as an installed copa has it (pip
    writes .pyc files at install). A PYTHONDONTWRITEBYTECODE in the caller's environment would have every run
    compile copa from source again: 0.3 to 0.6 s of each figure on this machine, a cost no user pays. The .pyc
    files go to a directory of the benchmark's own, not into the working tree."""
    env = copa_env(cache)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(BENCH_CACHE / "pycache")
    return env


def copa_patch(image: str, report: Path, tag: str) -> list[str]:
    return [sys.executable, "-m", "copa", "patch", "-i", image, "-r", str(report), "-t", tag, "--push",
            "--progress", "quiet"]  # fmt: skip


def skopeo(*args: str) -> list[str]:
    return ["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false", *args]


def run(argv: Sequence[str], what: str, env: dict[str, str] | None = None) -> None:
    """An untimed setup step; its failure stops the benchmark with the command's last lines."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, env=env, cwd=REPO)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise MeasureError(f"{what}: exited {proc.returncode}: {tail}")


def copy_in_registry(reg: RunningRegistry, image: str, repo: str) -> str:
    """The benchmark image under `repo` of the same registry (blobs mounted): a source whose repository has
    never seen copa's patch layer, so that pushing it is a real upload."""
    run(skopeo(f"docker://{reg.host}/{image}", f"docker://{reg.host}/{repo}:1"), f"copying the image to {repo}")
    return f"{reg.host}/{repo}:1"


# ------------------------------------------------------------------------------------------------ the patch layer


@dataclass(frozen=True, slots=True)
class PatchLayer:
    blob: Path  # compressed, as copa pushed it
    media_type: str
    digest: str
    tar: Path  # uncompressed
    diff_id: str


def pull_patch_layer(image: str, work: Path) -> PatchLayer:
    """copa's patch layer (the last one of the patched image), pulled with skopeo and decompressed."""
    layout = work / "patched"
    run(skopeo(f"docker://{image}", f"oci:{layout}:x"), "pulling the patched image")
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((layout / "blobs/sha256" / manifest_digest).read_text())
    layer = manifest["layers"][-1]
    blob = layout / "blobs/sha256" / layer["digest"].split(":", 1)[1]
    tar = work / "patch-layer.tar"
    if layer["mediaType"].endswith("+zstd"):
        subprocess.run(["zstd", "-q", "-d", "-f", str(blob), "-o", str(tar)], check=True)
    else:
        with gzip.open(blob, "rb") as src, tar.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    digest = hashlib.sha256()
    with tar.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return PatchLayer(blob, layer["mediaType"], layer["digest"], tar, f"sha256:{digest.hexdigest()}")


def layout_layers(layout: Path) -> list[Path]:
    """The layer blobs of the (one) image of an OCI layout skopeo wrote."""
    blobs = layout / "blobs/sha256"
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":", 1)[1]).read_text())
    return [blobs / layer["digest"].split(":", 1)[1] for layer in manifest["layers"]]


def one_layer_layout(layer: PatchLayer, dest: Path) -> Path:
    """An OCI layout of an image whose only layer is the patch layer: what the upload floor pushes."""
    blobs = dest / "blobs/sha256"
    blobs.mkdir(parents=True)
    shutil.copyfile(layer.blob, blobs / layer.digest.split(":", 1)[1])

    def put(doc: dict[str, object]) -> tuple[str, int]:
        data = json.dumps(doc, separators=(",", ":")).encode()
        hexdigest = hashlib.sha256(data).hexdigest()
        (blobs / hexdigest).write_bytes(data)
        return f"sha256:{hexdigest}", len(data)

    config, config_size = put({"architecture": "amd64", "os": "linux",
                               "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]}})  # fmt: skip
    manifest, manifest_size = put({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.blob.stat().st_size}],
    })  # fmt: skip
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest, "size": manifest_size,
        "annotations": {"org.opencontainers.image.ref.name": "x"}}]}))  # fmt: skip
    return dest


# ------------------------------------------------------------------------------------------------ decompression


def deb_data_member(deb: Path, dest: Path) -> Path | None:
    """The `data.tar.*` member of a .deb (an ar archive), written to `dest`; None if `deb` is not one."""
    with deb.open("rb") as f:
        if f.read(8) != b"!<arch>\n":
            return None
        while header := f.read(60):
            if len(header) < 60:
                return None
            name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode())
            if name.startswith("data.tar"):
                dest.write_bytes(f.read(size))
                return dest
            f.seek(size + (size & 1), os.SEEK_CUR)  # members are 2-byte aligned
    return None


def rpm_payload_offset(rpm: Path) -> int | None:
    """Where an .rpm's compressed payload starts, None if `rpm` is not one: after the 96-byte lead, the signature
    header (padded to 8 bytes) and the main header. A header is 16 bytes of magic, reserved bytes, the index
    entry count and the data size (both big-endian), then 16 bytes per entry and the data."""
    with rpm.open("rb") as f:
        if f.read(4) != RPM_LEAD:
            return None
        offset = 96
        for padded in (True, False):
            f.seek(offset)
            head = f.read(16)
            if head[:4] != RPM_HEADER:
                raise MeasureError(f"{rpm}: no rpm header at offset {offset}")
            count, size = struct.unpack(">II", head[8:16])
            length = 16 + 16 * count + size
            offset += length + ((-length) % 8 if padded else 0)
        return offset


def rpm_payload(rpm: Path, dest: Path) -> Path | None:
    """The compressed payload of an .rpm, written to `dest`; None if `rpm` is not one."""
    offset = rpm_payload_offset(rpm)
    if offset is None:
        return None
    with rpm.open("rb") as src, dest.open("wb") as out:
        src.seek(offset)
        shutil.copyfileobj(src, out, 1 << 20)
    return dest


def check_rpm_payload(rpm: Path, payload: Path, tool: str) -> None:
    """Our payload offset, checked once against rpm's own reader: `TOOL -d` of the payload must give the cpio
    archive rpm2cpio prints."""
    ours = subprocess.run([tool, "-d", "-c", str(payload)], capture_output=True, check=True).stdout
    theirs = subprocess.run(["rpm2cpio", str(rpm)], capture_output=True, check=True).stdout
    if hashlib.sha256(ours).digest() != hashlib.sha256(theirs).digest():
        raise MeasureError(f"{rpm.name}: the payload found at the header's end is not what rpm2cpio reads")


def compressed_inputs(fetched: Sequence[Fetched], work: Path) -> dict[str, list[Path]]:
    """What the floor decompresses, by tool: the compressed indexes as fetched and each package's data member (a
    .deb's data.tar.*, an .rpm's payload)."""
    by_tool: dict[str, list[Path]] = {}
    payloads = work / "payloads"
    payloads.mkdir()
    checked_rpm = False
    for item in fetched:
        member = payloads / item.path.name
        rpm = rpm_payload(item.path, member)
        source = deb_data_member(item.path, member) or rpm or item.path
        tool = decompressor(source)
        if tool is not None:
            by_tool.setdefault(tool, []).append(source)
            if rpm and not checked_rpm:
                check_rpm_payload(item.path, rpm, tool)
                checked_rpm = True
    return by_tool


def decompressor(path: Path) -> str | None:
    """The tool that decompresses `path`, by its magic number; None if it is not compressed in a known way."""
    with path.open("rb") as f:
        head = f.read(6)
    return next((tool for magic, tool in DECOMPRESSORS.items() if head.startswith(magic)), None)


def by_magic(paths: Sequence[Path]) -> dict[str, list[Path]]:
    by_tool: dict[str, list[Path]] = {}
    for path in paths:
        tool = decompressor(path)
        if tool is not None:
            by_tool.setdefault(tool, []).append(path)
    return by_tool


def decompress_command(by_tool: dict[str, list[Path]]) -> list[str]:
    # One process per tool, each file one after another: the floor is sequential by definition.
    script = " && ".join(f"{tool} -d -c {' '.join(map(str, paths))} > /dev/null" for tool, paths in by_tool.items())
    return ["sh", "-c", script]


def curl_command(urls: Sequence[str]) -> list[str]:
    # One curl process: it reuses its connection to the mirror, as copa's session does.
    argv = ["curl", "-sS", "--fail", "--noproxy", "*"]
    for url in urls:
        argv += ["-o", "/dev/null", url]
    return argv


# ------------------------------------------------------------------------------------------------ first request

FIRST_REQUESTS_PER_ROUND = 5


def first_request_seconds(image: str, report: Path, cache: Path) -> float:
    """Seconds from starting copa to the first byte it sends over the network: copa patches an image on a listener
    of ours that notes that byte and never answers; copa is then stopped (no other work of it is timed)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        seen: list[float] = []

        def note_first_byte() -> None:
            conn, _ = listener.accept()
            with conn:
                if conn.recv(1):
                    seen.append(time.monotonic())

        watcher = threading.Thread(target=note_first_byte, daemon=True)
        watcher.start()
        started = time.monotonic()
        proc = subprocess.Popen(copa_patch(f"127.0.0.1:{port}/{image}", report, "never"), env=copa_environment(cache),
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        deadline = started + 60
        try:
            # Also watch copa itself: one that exits before any request (a bad report, say) ends the wait at once.
            while watcher.is_alive() and proc.poll() is None and time.monotonic() < deadline:
                watcher.join(timeout=0.02)
        finally:
            proc.kill()
            _, err = proc.communicate()
        if not seen:
            tail = " | ".join(err.decode(errors="replace").strip().splitlines()[-3:])
            raise MeasureError(f"first request: copa sent nothing to the registry (exit {proc.returncode}): {tail}")
        return seen[0] - started


# ------------------------------------------------------------------------------------------------ (b) buildah


# The upgrade step of a buildah rebuild: given the buildah command with its private store, upgrade the working
# container named "bench"; returns the step's measurements.
BuildahUpgrade = Callable[[Sequence[str]], list[Measurement]]
CONTAINER = "bench"


def buildah_run(script: str) -> BuildahUpgrade:
    """The upgrade run inside the image: `buildah run --isolation chroot bench -- sh -c SCRIPT`."""

    def step(buildah: Sequence[str]) -> list[Measurement]:
        argv = [*buildah, "run", "--isolation", "chroot", CONTAINER, "--", "sh", "-c", script]
        return [measure("(b) buildah run (the upgrade)", argv)]

    return step


def buildah_rebuild(image: str, upgrade: BuildahUpgrade, push_to: str, root: Path) -> list[Measurement]:
    """`buildah from`, the upgrade, `commit`, `push`, each timed; the store is private and removed afterwards."""
    store = ["buildah", "--storage-driver", "vfs", "--root", str(root / "root"), "--runroot", str(root / "run")]
    try:
        steps = [measure("(b) buildah from", [*store, "from", "--quiet", "--tls-verify=false", "--name", CONTAINER,
                                              f"docker://{image}"])]  # fmt: skip
        steps += upgrade(store)
        steps += [
            measure("(b) buildah commit", [*store, "commit", "--quiet", CONTAINER, "bench-patched"]),
            measure("(b) buildah push", [*store, "push", "--quiet", "--tls-verify=false", "bench-patched",
                                         f"docker://{push_to}"]),
        ]  # fmt: skip
        return steps
    finally:
        subprocess.run([*store, "rm", "--all"], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def total(label: str, parts: Sequence[Measurement]) -> Measurement:
    """Steps run one after another: their times add up; the peak RSS is the largest of them."""
    cpus = [p.cpu_seconds for p in parts if p.cpu_seconds is not None]
    return Measurement(label, sum(p.seconds for p in parts), max(p.peak_rss_kib for p in parts),
                       cpu_seconds=sum(cpus) if len(cpus) == len(parts) else None)  # fmt: skip


# ------------------------------------------------------------------------------------------------ main


@dataclass(frozen=True)
class Case:
    """One image to patch and what its package manager needs for the same job."""

    name: str  # "Debian"
    image: str  # REPOSITORY:TAG in the registry
    packages: tuple[str, ...]
    report: Path
    buildah_upgrade: BuildahUpgrade  # the upgrade step of (b)
    package_manager: Callable[[], Measurement]  # (a), on a private copy of the rootfs
    check: Callable[[str], None] | None = None  # checks copa's result (an image reference); raises if it is wrong


@contextlib.contextmanager
def debian_case(work: Path, reg: RunningRegistry) -> Iterator[Case]:
    base, oracle = images.debian_rootfs(), images.oracle_rootfs()
    fixes = fixed_packages(dpkg_versions(base), dpkg_versions(oracle))
    packages = tuple(sorted(fixes))
    layout, ref = images.debian_layout()
    images.push_layout(layout, ref, reg.host, IMAGE)
    script = (f"apt-get {APT_OPTS} update && DEBIAN_FRONTEND=noninteractive apt-get {APT_OPTS} -y install "
              f"--only-upgrade {' '.join(packages)}")  # fmt: skip
    yield Case("Debian", IMAGE, packages, write_report(work / "trivy.json", fixes), buildah_run(script),
               lambda: apt_upgrade(base, list(packages)))  # fmt: skip


@contextlib.contextmanager
def alpine_case(work: Path, reg: RunningRegistry, padding: int = 0) -> Iterator[Case]:
    """bench_alpine.py's hermetic setup: a signed repository on 127.0.0.1 holding a newer release of the image's
    packages, and the image plus a layer trusting its key and listing only it; with `padding`, its APKINDEX also
    lists that many packages it does not hold (bench_alpine.pad_index: the size of main + community)."""
    import bench_alpine

    from tests.support import alpine, apkrepo

    base = alpine.alpine_rootfs()
    os_version = (base / "etc/alpine-release").read_text().strip()
    repo = bench_alpine.build_repo(base, work / "apk-repo")
    if padding:
        size = bench_alpine.pad_index(repo, padding)
        print(f"Alpine repository: its APKINDEX also lists {padding} packages ({size >> 10} KiB)")
    keys = work / "apk-keys"
    repo.key.write_public(keys)
    fixes = {p.name: (p.old_version or "", p.version) for p in repo.packages}
    packages = tuple(sorted(fixes))
    report = write_report(work / "trivy.json", fixes, os_version=os_version, family="alpine")
    with apkrepo.serve(repo.directory) as url:
        layout, ref = bench_alpine.image_layout(work, base, repo, url)
        images.push_layout(layout, ref, reg.host, "bench/alpine:1")

        def add_u(root: Path, url: str, keys: Path) -> list[str]:
            return [*bench_alpine.apk_argv(root, url, keys)[:-1], "add", "-u", *packages]

        yield Case("Alpine", "bench/alpine:1", packages, report,
                   buildah_run(f"apk add -u --no-cache {' '.join(packages)}"),
                   lambda: bench_alpine.apk_upgrade("(a) apk add -u (root copy)", work, base, add_u, url, keys,
                                                    repo))  # fmt: skip


def buildah_host_dnf(names: Sequence[str], env: dict[str, str]) -> BuildahUpgrade:
    """The RPM image has no package manager for `buildah run` to run: the upgrade is the host's dnf on the working
    container's root, `buildah mount` then `dnf --installroot MOUNTPOINT upgrade PKGS` (bench_rpm's (a) command).
    The result is read by rpm -qa afterwards (not timed)."""
    import bench_rpm

    def step(buildah: Sequence[str]) -> list[Measurement]:
        mount = measure("(b) buildah mount", [*buildah, "mount", CONTAINER])
        proc = subprocess.run([*buildah, "mount", CONTAINER], capture_output=True, text=True, check=True)
        root = Path(proc.stdout.strip())  # mounting again names the same directory
        label = "(b) host dnf --installroot on the mount"
        dnf = measure(label, bench_rpm.dnf_argv(root, names), env=env, cwd=REPO)
        bench_rpm.check_versions(label, root, names)
        return [mount, dnf]

    return step


@contextlib.contextmanager
def rpm_case(work: Path, reg: RunningRegistry, updated: int, padding: int = 0) -> Iterator[Case]:
    """bench_rpm.py's hermetic setup: its image (no dnf inside) and its signed repository on 127.0.0.1, the
    report naming the first `updated` packages that repository has a newer build of; with `padding`, the
    repository's primary also lists that many packages it does not hold (bench_primary.py: a distribution's
    metadata, which copa and dnf must read)."""
    import bench_primary
    import bench_rpm

    from tests.support.aptrepo import RepoServer

    pkgs = bench_rpm.build_packages(rebuild=False)
    names = tuple(bench_rpm.updated_names()[:updated])
    report = bench_rpm.trivy_report(work / "trivy.json", names)
    env = {**os.environ, "HOME": str(bench_rpm.rpm_home(work))}  # the rpm database path for the host's dnf
    served = pkgs.repo
    if padding:
        served = bench_primary.pad_repository(pkgs.repo, work / "padded-repo", padding, pkgs.key)
        print(f"RPM repository: its primary also lists {padding} packages of createrepo_c's layout "
              f"({sum(p.stat().st_size for p in (served / 'repodata').glob('*-primary.xml*')) >> 10} KiB)")
    with RepoServer(served) as server:
        base, _ = bench_rpm.push_image(work, pkgs, server.url, reg)
        print(f"RPM image: {len(pkgs.old)} packages installed; the repository has {len(pkgs.new)} newer, "
              f"{bench_rpm.mib([pkgs.new[n] for n in names]):.1f} MiB of .rpm for the {len(names)} named. The image "
              f"has no dnf: (b)'s upgrade step is `buildah mount` and the host's `dnf --installroot` on the mount "
              f"point, between `buildah from` and `buildah commit`")
        yield Case("RPM", bench_rpm.IMAGE, names, report, buildah_host_dnf(names, env),
                   lambda: bench_rpm.on_copy("(a) dnf --installroot upgrade (root copy)", work, base,
                                             partial(bench_rpm.dnf_argv, names=names), names, env),
                   lambda image: bench_rpm.check_patched(image, work, names))  # fmt: skip


CaseFactory = Callable[[Path, RunningRegistry], contextlib.AbstractContextManager[Case]]
CASES: dict[str, CaseFactory] = {"debian": debian_case, "alpine": alpine_case, "rpm": partial(rpm_case, updated=10)}


def compare(case: Case, reg: RunningRegistry, work: Path, repeat: int) -> None:
    """Discovery, then `repeat` interleaved rounds of every measurement; prints the table and the targets line."""
    print(f"{case.name}: {len(case.packages)} packages to upgrade: {' '.join(case.packages)}")
    # Discovery (untimed): what copa fetches, and the layer it pushes. Only the registry may bypass the proxy (a
    # hermetic package repository on 127.0.0.1 must go through it to be logged); requests matches no_proxy against
    # an IP address without its port, so the registry is named `localhost` here.
    store = work / "fetched"
    store.mkdir()
    with logging_proxy(store) as proxy:
        env = {**copa_environment(work / "cache-discovery"), "http_proxy": proxy.url, "HTTP_PROXY": proxy.url,
               "no_proxy": "localhost", "NO_PROXY": "localhost"}  # fmt: skip
        source = copy_in_registry(reg, case.image, "bench/discovery").replace("127.0.0.1:", "localhost:", 1)
        run(copa_patch(source, case.report, "patched"), "discovery run of copa", env=env)
        fetched = sorted(proxy.fetched, key=lambda f: f.path.name)
        if proxy.refused:
            print(f"not counted (status other than 200): {'; '.join(proxy.refused)}")
    if not fetched:
        raise MeasureError("the discovery run fetched nothing through the proxy: is the repository https?")
    if case.check is not None:
        case.check(f"{reg.host}/bench/discovery:patched")
    layer = pull_patch_layer(f"{reg.host}/bench/discovery:patched", work)
    by_tool = compressed_inputs(fetched, work)
    mib = 1 << 20
    print(f"copa fetched {len(fetched)} files, {sum(f.size for f in fetched) / mib:.1f} MiB; "
          f"decompressed by the floor: " + ", ".join(f"{len(p)} with {t}" for t, p in by_tool.items()))
    packages = [f for f in fetched if f.url.endswith((".deb", ".rpm", ".apk"))]
    print(f"  {len(packages)} packages ({sum(f.size for f in packages) / mib:.1f} MiB); the others: "
          + ", ".join(f"{urlsplit(f.url).path.rsplit('/', 1)[-1]} ({f.size / 1024:.0f} KiB)"
                      for f in fetched if f not in packages))  # fmt: skip
    print(f"patch layer: {layer.blob.stat().st_size / mib:.1f} MiB {layer.media_type.rsplit('.', 1)[-1]}, "
          f"{layer.tar.stat().st_size / mib:.1f} MiB uncompressed")
    upload_layout = one_layer_layout(layer, work / "one-layer")
    image = f"{reg.host}/{case.image}"
    repository = case.image.rsplit(":", 1)[0]

    rows: dict[str, list[Measurement]] = {}
    first_request: list[float] = []

    def keep(m: Measurement) -> Measurement:
        rows.setdefault(m.label, []).append(m)
        return m

    for i in range(repeat):
        cache = work / f"cache-{i}"
        keep(measure("copa cold", copa_patch(copy_in_registry(reg, case.image, f"bench/cold-{i}"), case.report,
                                             "patched"), env=copa_environment(cache), cwd=REPO))  # fmt: skip
        keep(measure("copa warm", copa_patch(copy_in_registry(reg, case.image, f"bench/warm-{i}"), case.report,
                                             "patched"), env=copa_environment(cache), cwd=REPO))  # fmt: skip
        # Several a round: one start-up is ~150 ms, and a single one a round left the median at the mercy of one
        # slow start (runs of 164 and 252 ms in one benchmark, 137-147 ms the same hour).
        first_request.extend(first_request_seconds(case.image, case.report, work / f"cache-first-{i}-{j}")
                             for j in range(FIRST_REQUESTS_PER_ROUND))
        keep(measure("copa start-up: --version", [sys.executable, "-m", "copa", "--version"],
                     env=copa_environment(cache), cwd=REPO))  # fmt: skip
        manager = keep(case.package_manager())
        steps = buildah_rebuild(image, case.buildah_upgrade, f"{reg.host}/{repository}:buildah-{i}",
                                work / f"buildah-{i}")  # fmt: skip
        for step in steps:
            keep(step)
        keep(total(BUILDAH_TOTAL, steps))
        floor = [
            keep(measure("(c) pull: skopeo copy -> oci dir",
                         skopeo(f"docker://{image}", f"oci:{work / f'pulled-{i}'}:x"))),
            keep(measure("(c) downloads: curl", curl_command([f.url for f in fetched]))),
            keep(measure("(c) decompress: xz/zstd/gzip -d", decompress_command(by_tool))),
            keep(measure("(c) compress: igzip -1 of the layer", ["sh", "-c", f"igzip -1 -c {layer.tar} > /dev/null"])),
        ]  # fmt: skip
        with registry("upload") as sink:
            floor.append(keep(measure("(c) upload: skopeo copy of one layer",
                                      skopeo(f"oci:{upload_layout}:x", f"docker://{sink.host}/one:1"))))
        keep(total("(c) floor: the five steps above", floor))
        keep(total("(c) floor without downloads", [m for m in floor if "curl" not in m.label]))
        # Not in the floor (the floor leaves it out), printed to show what reading the base costs at least:
        # copa must decompress the layers that hold the package database and the files it replaces.
        keep(measure(BASE_INFLATE, decompress_command(by_magic(layout_layers(work / f"pulled-{i}")))))
        shutil.rmtree(work / f"pulled-{i}", ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
        print(f"round {i + 1}/{repeat} done", flush=True)

    medians = {label: median(label, runs) for label, runs in rows.items()}
    cold, warm = medians["copa cold"], medians["copa warm"]
    pm = medians[manager.label]
    rebuild = medians[BUILDAH_TOTAL]
    floor_all = medians["(c) floor: the five steps above"]
    floor_local = medians["(c) floor without downloads"]
    ratios = {label: f"{m.seconds / floor_all.seconds:.2f}x (c)" for label, m in medians.items()}
    ratios["copa warm"] = f"{warm.seconds / floor_local.seconds:.2f}x (c) w/o downloads"
    print_table(f"patching {len(case.packages)} packages of the {case.name} fixture image (median of {repeat}; "
                f"a total's median is the median of the per-round sums)", list(medians.values()), ratios)
    first_ms = statistics.median(first_request) * 1000
    print(f"\ncopa cold        {cold.seconds:.2f} s = {cold.seconds / floor_all.seconds:.2f}x (c) floor "
          f"{floor_all.seconds:.2f} s, {cold.seconds / pm.seconds:.2f}x (a) {pm.seconds:.2f} s, "
          f"{cold.seconds / rebuild.seconds:.2f}x (b) buildah {rebuild.seconds:.2f} s")
    print(f"copa warm        {warm.seconds:.2f} s = {warm.seconds / floor_local.seconds:.2f}x the floor "
          f"without downloads {floor_local.seconds:.2f} s")
    print(f"first request    {first_ms:.0f} ms after start (median; runs: "
          f"{', '.join(f'{s * 1000:.0f}' for s in first_request)} ms)")
    peak = max(cold.peak_rss_mib, warm.peak_rss_mib)
    print(f"peak RSS         {peak:.1f} MiB (copa cold or warm)")
    print(by_cpu(cold, warm, floor_all, floor_local, pm, rebuild))

    def verdict(value: float, target: float) -> str:
        return "ok" if value <= target else "MISSED"

    checks = [
        (cold.seconds / floor_all.seconds, TARGET_FLOOR, "x (c)"),
        (cold.seconds / pm.seconds, TARGET_APT, "x (a)"),
        (cold.seconds / rebuild.seconds, TARGET_BUILDAH, "x (b)"),
        (warm.seconds / floor_local.seconds, TARGET_FLOOR, "x (c) w/o downloads, warm"),
    ]
    parts = [f"{v:.2f}{unit} <= {t}: {verdict(v, t)}" for v, t, unit in checks]
    parts.append(f"RSS {peak:.0f} MiB < {TARGET_RSS_MIB}: {verdict(peak, TARGET_RSS_MIB)}")
    parts.append(f"first request {first_ms:.0f} ms < {TARGET_FIRST_REQUEST_MS}: "
                 f"{verdict(first_ms, TARGET_FIRST_REQUEST_MS)}")  # fmt: skip
    print(f"\ntargets ({case.name}): copa cold " + "; ".join(parts))


def by_cpu(cold: Measurement, warm: Measurement, floor_all: Measurement, floor_local: Measurement, pm: Measurement,
           rebuild: Measurement) -> str:  # fmt: skip
    """The ratios of the targets line by CPU time (user + system, all processes of each command's tree): what a
    busy machine distorts less than wall time. Work done outside the timed tree (the registry, the repository
    server, buildah's storage) is not in it, for copa and its peers alike."""

    def cpu(m: Measurement) -> float:
        if m.cpu_seconds is None:
            raise MeasureError(f"{m.label}: no CPU time measured")
        return max(m.cpu_seconds, 0.01)  # GNU time's resolution: a step it measured as 0 s still ran

    return (f"by CPU time     copa cold {cpu(cold):.2f} s = {cpu(cold) / cpu(floor_all):.2f}x (c) floor "
            f"{cpu(floor_all):.2f} s, {cpu(cold) / cpu(pm):.2f}x (a) {cpu(pm):.2f} s, {cpu(cold) / cpu(rebuild):.2f}x "
            f"(b) buildah {cpu(rebuild):.2f} s; copa warm {cpu(warm):.2f} s = {cpu(warm) / cpu(floor_local):.2f}x the "
            f"floor without downloads {cpu(floor_local):.2f} s")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="rounds (each figure is the median of them)")
    parser.add_argument("--image", choices=[*CASES, "all"], default="debian", help="which fixture (default debian)")
    parser.add_argument("--rpm-updated", type=int, default=10, metavar="N",
                        help="RPM: how many of the 50 packages with a newer build the report names (default 10: 2 big "
                             "and 8 small)")  # fmt: skip
    parser.add_argument("--apk-index", type=int, default=0, metavar="N",
                        help="Alpine: the repository's APKINDEX also lists N packages it does not hold (main and "
                             "community: ~25 000; default 0)")  # fmt: skip
    parser.add_argument("--rpm-primary", type=int, default=0, metavar="N",
                        help="RPM: the repository's primary also lists N packages it does not hold (a distribution's "
                             "metadata: 5 000-70 000 packages; default 0)")  # fmt: skip
    args = parser.parse_args(argv)
    if not 1 <= args.rpm_updated <= 50:
        parser.error("--rpm-updated: between 1 and 50 (the repository has a newer build of 50 packages)")
    cases: dict[str, CaseFactory] = {**CASES, "rpm": partial(rpm_case, updated=args.rpm_updated,
                                                              padding=args.rpm_primary),
                                     "alpine": partial(alpine_case, padding=args.apk_index)}
    for tool, package in (("igzip", "isal"), ("buildah", "buildah"), ("curl", "curl"), ("xz", "xz-utils"),
                          ("zstd", "zstd"), ("skopeo", "skopeo"), ("rpm2cpio", "rpm2cpio")):  # fmt: skip
        if shutil.which(tool) is None:
            subprocess.run(["apt-get", "install", "-y", "-q", package], check=True, capture_output=True,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
    for name in cases if args.image == "all" else [args.image]:
        work = Path(tempfile.mkdtemp(prefix=f"bench-compare-{name}-"))
        try:
            with registry("compare") as reg, cases[name](work, reg) as case:
                compare(case, reg, work, args.repeat)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
