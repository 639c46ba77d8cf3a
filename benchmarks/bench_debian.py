#!/usr/bin/env python3
"""Patch benchmark: `copa patch` of the Debian fixture image beside what apt and skopeo need for the same job.

Setup (not measured): the fixture image (tests/support/images.py) is pushed to a fresh docker-registry, and a
Trivy report lists every package whose bookworm-security version (the oracle image) is newer.
Measured, wall time and peak RSS of the whole process tree (GNU time):
  copa cold     `python -m copa patch -i REG/bench/debian:1 -r REPORT -t TAG --push`, empty COPA_CACHE_DIR
  copa warm     the same with the package cache of the cold run
  (a) apt       `apt-get update` + `apt-get install --only-upgrade <the same packages>` chrooted into a copy of
                the image's rootfs: the work copa's BuildKit path does inside its container (a lower bound of it:
                BuildKit would still diff the tree, compress and push a layer)
  (b) skopeo    `skopeo copy` of the same image out of the same registry: to an OCI layout (reads every blob,
                as copa must read the layer holding the dpkg database) and to another repository of the
                registry (blobs mounted: the push floor)
Targets: copa cold under 0.3x (a) in wall time, peak RSS under 150 MiB. When copa misses one, it is run once
more under cProfile and the top functions (file:line) are printed; copa/ itself is not changed here.

    .venv/bin/python benchmarks/bench_debian.py [--repeat N] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import REPO, Measurement, measure, median, print_table, registry

from tests.support import images
from tests.support.trivy import dpkg_versions, fixed_packages, write_report

TIME_TARGET = 0.3  # copa cold / (a)
RSS_TARGET_MIB = 150
IMAGE = "bench/debian:1"
# Device nodes apt, dpkg and maintainer scripts open; the image's /dev is empty (a runtime provides it).
DEVICES = {"null": (1, 3), "zero": (1, 5), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}


# ------------------------------------------------------------------------------------------------ (a) apt chroot


@contextlib.contextmanager
def chroot_copy(rootfs: Path) -> Iterator[Path]:
    """A private copy of `rootfs` ready for chrooted apt: device nodes, the host's resolv.conf, /proc mounted."""
    work = Path(tempfile.mkdtemp(prefix="bench-chroot-"))
    root = work / "rootfs"
    proc_mounted = False
    try:
        subprocess.run(["cp", "-a", str(rootfs), str(root)], check=True)
        for name, (major, minor) in DEVICES.items():
            os.mknod(root / "dev" / name, 0o666 | 0o020000, os.makedev(major, minor))  # S_IFCHR
            os.chmod(root / "dev" / name, 0o666)
        shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
        # Maintainer scripts may read /proc; when mounting is not allowed here apt still runs, so go on without.
        proc_mounted = subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")],
                                      capture_output=True, check=False).returncode == 0  # fmt: skip
        yield root
    finally:
        if proc_mounted:
            subprocess.run(["umount", "-l", str(root / "proc")], check=False)
        shutil.rmtree(work, ignore_errors=True)


def apt_upgrade(rootfs: Path, packages: list[str]) -> Measurement:
    with chroot_copy(rootfs) as root:
        # Check-Valid-Until off as for the fixture build (the mirror may be a frozen snapshot).
        apt = f"chroot {root} apt-get -q -o Acquire::Check-Valid-Until=false"
        script = f"{apt} update && DEBIAN_FRONTEND=noninteractive {apt} -y install --only-upgrade {' '.join(packages)}"
        return measure("(a) apt-get update + upgrade (chroot)", ["sh", "-c", script])


# ------------------------------------------------------------------------------------------------ copa


def copa_argv(image: str, report: Path, tag: str) -> list[str]:
    return [sys.executable, "-m", "copa", "patch", "-i", image, "-r", str(report), "-t", tag, "--push"]


def copa_env(cache: Path) -> dict[str, str]:
    return {**os.environ, "COPA_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}


def _run_copa_in_process(image: str, report: Path, tag: str) -> int:
    from copa.cli import main as copa_main

    with tempfile.TemporaryDirectory(prefix="bench-copa-cache-") as cache:
        os.environ["COPA_CACHE_DIR"] = cache
        try:
            return copa_main(["patch", "-i", image, "-r", str(report), "-t", tag, "--push"])
        finally:
            os.environ.pop("COPA_CACHE_DIR", None)


def profile_copa(image: str, report: Path, top: int = 25) -> None:
    """A cold patch in this process under cProfile, worker threads included; top functions by own/cumulative time."""
    profilers: list[cProfile.Profile] = []

    def in_new_thread(*_: object) -> None:
        # threading.setprofile calls this first thing in every new thread (copa's download pools): give that
        # thread its own profiler, which replaces this hook for the rest of the thread's life.
        prof = cProfile.Profile()
        profilers.append(prof)
        prof.enable()

    main_profiler = cProfile.Profile()
    threading.setprofile(in_new_thread)
    main_profiler.enable()
    try:
        code = _run_copa_in_process(image, report, "bench-profiled")
    finally:
        main_profiler.disable()
        threading.setprofile(None)
    print(f"\ncProfile of one cold copa patch (exit {code}; main thread + {len(profilers)} worker threads merged; "
          f"wall time in 'acquire' is the main thread waiting for workers). Top {top} by own, then cumulative time:")
    for order in ("tottime", "cumulative"):
        # Full paths kept (no strip_dirs): file:line is what the report needs.
        stats = pstats.Stats(main_profiler, stream=sys.stdout)
        for prof in profilers:
            stats.add(prof)
        stats.sort_stats(order).print_stats(top)


def profile_copa_memory(image: str, report: Path, top: int = 15) -> None:
    """A cold patch under tracemalloc; the allocation sites (file:line) holding the most memory at the peak."""
    best: list[tracemalloc.Snapshot] = []
    done = threading.Event()

    def watch() -> None:
        high = 0
        while not done.wait(0.25):
            current, _ = tracemalloc.get_traced_memory()
            if current > high * 1.05:  # a new high: keep a snapshot of what is live now
                high = current
                best[:] = [tracemalloc.take_snapshot()]

    tracemalloc.start(1)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        code = _run_copa_in_process(image, report, "bench-memory")
    finally:
        done.set()
        watcher.join()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    print(f"\ntracemalloc of one cold copa patch (exit {code}): peak {peak / (1 << 20):.0f} MiB of Python objects; "
          f"top {top} allocation sites live near the peak:")
    if best:
        for stat in best[0].statistics("lineno")[:top]:
            frame = stat.traceback[0]
            print(f"  {stat.size / (1 << 20):8.1f} MiB  {stat.count:9d} blocks  {frame.filename}:{frame.lineno}")


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (median reported)")
    parser.add_argument("--profile", action="store_true", help="profile copa even if it meets the targets")
    parser.add_argument("--no-profile", action="store_true", help="never profile")
    parser.add_argument("--profile-only", action="store_true", help="skip the measurements, only profile copa")
    args = parser.parse_args(argv)

    base, oracle = images.debian_rootfs(), images.oracle_rootfs()
    fixes = fixed_packages(dpkg_versions(base), dpkg_versions(oracle))
    packages = sorted(fixes)
    print(f"packages with a fix in bookworm-security ({len(packages)}): {' '.join(packages)}")
    layout, ref = images.debian_layout()
    work = Path(tempfile.mkdtemp(prefix="bench-debian-"))
    try:
        report = write_report(work / "trivy.json", fixes)
        with registry("debian") as reg:
            images.push_layout(layout, ref, reg.host, IMAGE)
            image = f"{reg.host}/{IMAGE}"
            if args.profile_only:
                profile_copa(image, report)
                profile_copa_memory(image, report)
                return 0
            cold: list[Measurement] = []
            warm: list[Measurement] = []
            for i in range(args.repeat):
                cache = work / f"copa-cache-{i}"
                cold.append(measure("copa cold", copa_argv(image, report, f"cold-{i}"), env=copa_env(cache), cwd=REPO))
                warm.append(measure("copa warm", copa_argv(image, report, f"warm-{i}"), env=copa_env(cache), cwd=REPO))
            apt_runs = [apt_upgrade(base, packages) for _ in range(args.repeat)]
            pull = [
                measure("(b) skopeo copy registry -> oci dir", [
                    "skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{image}",
                    f"oci:{work / f'pulled-{i}'}:x",
                ])
                for i in range(args.repeat)
            ]  # fmt: skip
            mount = [
                measure("(b) skopeo copy registry -> same registry", [
                    "skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
                    f"docker://{image}", f"docker://{reg.host}/bench/copied-{i}:1",
                ])
                for i in range(args.repeat)
            ]  # fmt: skip
            rows = [median("copa cold", cold), median("copa warm", warm), median(apt_runs[0].label, apt_runs),
                    median(pull[0].label, pull), median(mount[0].label, mount)]  # fmt: skip
            apt = rows[2]
            ratios = {r.label: f"{r.seconds / apt.seconds:.2f}x (a)" for r in rows}
            print_table(f"patching {len(packages)} packages of the Debian fixture image", rows, ratios)
            copa_cold = rows[0]
            time_ok = copa_cold.seconds < TIME_TARGET * apt.seconds
            rss_ok = max(rows[0].peak_rss_mib, rows[1].peak_rss_mib) < RSS_TARGET_MIB
            print(f"\ntarget copa cold < {TIME_TARGET}x (a): {'met' if time_ok else 'MISSED'} "
                  f"({copa_cold.seconds / apt.seconds:.2f}x)")  # fmt: skip
            print(f"target peak RSS < {RSS_TARGET_MIB} MiB: {'met' if rss_ok else 'MISSED'} "
                  f"({max(rows[0].peak_rss_mib, rows[1].peak_rss_mib):.0f} MiB)")  # fmt: skip
            if args.profile or (not args.no_profile and not (time_ok and rss_ok)):
                profile_copa(image, report)
                profile_copa_memory(image, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
