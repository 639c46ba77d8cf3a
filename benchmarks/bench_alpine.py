#!/usr/bin/env python3
"""Patch benchmark: `copa patch` of the Alpine fixture image beside what real apk and skopeo need for the same job.

Setup (not measured): a hermetic, signed apk repository (tests/support/apkrepo.py) holds a rebuilt, newer release
of every package of the Alpine 3.23 fixture image (tests/support/alpine.py), served on 127.0.0.1; the image plus a
layer trusting the repository key and listing only that repository is pushed to a fresh docker-registry; a Trivy
report names every rebuilt package.
Measured, wall time and peak RSS of the whole process tree (GNU time):
  copa cold     `python -m copa patch -i REG/bench/alpine:1 -r REPORT -t TAG --push`, empty COPA_CACHE_DIR
  copa warm     the same with the package cache of the cold run
  (a) apk       real `apk upgrade` (the image's own apk-tools 3 through its musl loader, --no-scripts) on a copy
                of the image's rootfs from the same repository: the package-manager path. Measured twice: through
                tests/support/alpine.oracle_upgrade in a child Python (what the tests run; its RSS is the Python
                process's when that is larger than apk's) and as the bare apk command line it runs (the baseline)
  copa start-up `python -m copa --version`: the interpreter and CLI start-up inside every copa run
  (b) skopeo    `skopeo copy` of the same image out of the same registry: to an OCI layout (reads every blob, as
                copa must read the layer holding the apk database) and to another repository of the registry
                (blobs mounted: the push floor)

    .venv/bin/python benchmarks/bench_alpine.py [--repeat N] [--profile]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import REPO, MeasureError, Measurement, measure, median, print_table, registry
from bench_debian import copa_argv, copa_env, profile_copa

from tests.support import alpine, apkrepo, images
from tests.support.apkrepo import ApkRepo, PackageUpdate
from tests.support.trivy import write_report

IMAGE = "bench/alpine:1"


# ------------------------------------------------------------------------------------------------ setup


def build_repo(base: Path, directory: Path) -> ApkRepo:
    """A newer release (-rN+1, built as abuild would) of every package installed in `base` that can be rebuilt
    from the rootfs and that apk can take: alpine-baselayout owns dev/pts and the like, which the image leaves to
    the runtime, and a package another one not rebuilt pins exactly (`D:alpine-baselayout-data=3.7.2-r0`) stays
    where it is in `apk upgrade`."""
    installed = apkrepo.read_installed(base)
    names = {n for n, p in installed.items() if all(os.path.lexists(base / f.path) for f in p.files)}
    while pinned := {n for n in names for other in set(installed) - names
                     if f"{n}={installed[n].version}" in installed[other].fields.get("D", "").split()}:  # fmt: skip
        names -= pinned
    if skipped := sorted(set(installed) - names):
        print(f"not rebuilt (paths missing from the rootfs, or pinned by those): {', '.join(skipped)}")
    start = time.monotonic()
    repo = apkrepo.build_repo(base, [PackageUpdate(n) for n in sorted(names)], directory)
    size = sum(p.path.stat().st_size for p in repo.packages)
    print(f"hermetic repository: {len(repo.packages)} packages, {size / (1 << 20):.1f} MiB, "
          f"built in {time.monotonic() - start:.1f} s")  # fmt: skip
    return repo


def pad_index(repo: ApkRepo, extra: int) -> int:
    """Rewrite the repository's APKINDEX (signed again with its key) to also list `extra` packages it does not hold:
    its own records repeated under new names and checksums, their p: providers renamed with them and without i:
    (so that no padded record provides what the image's packages need or is pulled in). Main and community list
    ~25 000 packages; the hermetic repository a few dozen. Returns the index's size in bytes."""
    own = [p.index_record for p in repo.packages]
    padded = []
    for n in range(extra):
        record = own[n % len(own)]
        name = re.search(r"^P:(.*)$", record, re.M).group(1)  # type: ignore[union-attr]
        new = f"pad{n:05d}-{name}"
        lines = []
        for line in record.splitlines():
            key, _, value = line.partition(":")
            if key == "i":  # (no install_if: a padded record must never be pulled in)
                continue
            if key == "P":
                value = new
            elif key == "C":
                value = "Q1" + base64.b64encode(hashlib.sha1(new.encode()).digest()).decode()
            elif key == "p":
                value = " ".join(f"{v.split(':', 1)[0]}:{new}-{v.split(':', 1)[-1]}" if ":" in v else f"{new}-{v}"
                                 for v in value.split())
            lines.append(f"{key}:{value}")
        padded.append("\n".join(lines) + "\n")
    return apkrepo.write_index(repo.arch_dir, own + padded, repo.key).stat().st_size


def image_layout(work: Path, base: Path, repo: ApkRepo, url: str) -> tuple[Path, str]:
    """A writable copy of the fixture layout plus the layer trusting the repository key and listing `url`."""
    src, ref = alpine.alpine_layout()
    layout = images.copy_layout(src, work / "layout")
    apkrepo.add_key_layer(layout, ref, base, repo.key, url)
    return layout, ref


# ------------------------------------------------------------------------------------------------ (a) real apk


def apk_argv(root: Path, url: str, keys: Path) -> list[str]:
    """The command line alpine.oracle_upgrade runs (via fixtures/build_alpine.run_apk), for measuring apk alone."""
    return [
        *alpine.builder.apk_argv(root), "--root", str(root), "--force-no-chroot", "--no-progress",
        "--repositories-file", "/dev/null", "--repository", url, "--keys-dir", str(keys.resolve()), "--no-cache",
        "--no-scripts", "upgrade",
    ]  # fmt: skip


def oracle_argv(root: Path, url: str, keys: Path) -> list[str]:
    code = (
        "import sys; from pathlib import Path; from tests.support import alpine; "
        "alpine.oracle_upgrade(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))"
    )
    return [sys.executable, "-c", code, str(root), url, str(keys)]


def apk_upgrade(label: str, work: Path, base: Path, argv_for: Callable[[Path, str, Path], list[str]], url: str,
                keys: Path, repo: ApkRepo) -> Measurement:  # fmt: skip
    """One measured upgrade on a fresh copy of `base` (the copy is not measured), checked afterwards."""
    root = alpine.copy_rootfs(base, Path(tempfile.mkdtemp(prefix="bench-apk-", dir=work)) / "root")
    try:
        result = measure(label, argv_for(root, url, keys), cwd=REPO)
        versions = alpine.installed_versions(root)
        wrong = {p.name for p in repo.packages if versions.get(p.name) != p.version}
        if wrong:
            raise MeasureError(f"{label}: apk did not upgrade {', '.join(sorted(wrong))}")
        return result
    finally:
        shutil.rmtree(root.parent, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ main


def check_patched(image: str, work: Path, repo: ApkRepo) -> None:
    """The image copa pushed, pulled and unpacked (umoci verifies every digest), has every rebuilt package at its
    new version as real apk reads the database."""
    layout = work / "check-layout"
    for argv in (["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{image}", f"oci:{layout}:x"],
                 ["umoci", "unpack", "--image", f"{layout}:x", str(work / "check-bundle")]):  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise MeasureError(f"checking copa's result: {' '.join(argv[:2])} failed: {proc.stderr.strip()}")
    root = work / "check-bundle" / "rootfs"
    versions = alpine.installed_versions(root)
    if wrong := sorted(p.name for p in repo.packages if versions.get(p.name) != p.version):
        raise MeasureError(f"copa's result {image} does not have the new {', '.join(wrong)}")
    print(f"checked: {image} has all {len(repo.packages)} rebuilt packages (apk info)")
    shutil.rmtree(layout)
    shutil.rmtree(work / "check-bundle")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (median reported)")
    parser.add_argument("--profile", action="store_true", help="afterwards, one cold copa patch under cProfile")
    args = parser.parse_args(argv)

    base = alpine.alpine_rootfs()
    os_version = (base / "etc/alpine-release").read_text().strip()
    work = Path(tempfile.mkdtemp(prefix="bench-alpine-"))
    try:
        repo = build_repo(base, work / "repo")
        keys = work / "keys"
        repo.key.write_public(keys)
        fixes = {p.name: (p.old_version or "", p.version) for p in repo.packages}
        report = write_report(work / "trivy.json", fixes, os_version=os_version, family="alpine")
        with apkrepo.serve(repo.directory) as url, registry("alpine") as reg:
            layout, ref = image_layout(work, base, repo, url)
            images.push_layout(layout, ref, reg.host, IMAGE)
            image = f"{reg.host}/{IMAGE}"
            cold: list[Measurement] = []
            warm: list[Measurement] = []
            for i in range(args.repeat):
                cache = work / f"copa-cache-{i}"
                cold.append(measure("copa cold", copa_argv(image, report, f"cold-{i}"), env=copa_env(cache), cwd=REPO))
                warm.append(measure("copa warm", copa_argv(image, report, f"warm-{i}"), env=copa_env(cache), cwd=REPO))
            check_patched(f"{reg.host}/bench/alpine:cold-0", work, repo)
            startup = [measure("copa start-up floor (--version)", [sys.executable, "-m", "copa", "--version"],
                               env=copa_env(work / "unused-cache"), cwd=REPO) for _ in range(args.repeat)]  # fmt: skip
            bare = [apk_upgrade("(a) apk upgrade", work, base, apk_argv, url, keys, repo)
                    for _ in range(args.repeat)]  # fmt: skip
            oracle = [apk_upgrade("(a) the same via alpine.oracle_upgrade", work, base, oracle_argv, url, keys, repo)
                      for _ in range(args.repeat)]  # fmt: skip
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
            if args.profile:
                profile_copa(image, report, top=20)
        via_python = f"median of {len(oracle)}; + a child Python"
        rows = [median("copa cold", cold), median("copa warm", warm), median(startup[0].label, startup),
                median(bare[0].label, bare), median(oracle[0].label, oracle, via_python),
                median(pull[0].label, pull), median(mount[0].label, mount)]  # fmt: skip
        apk = rows[3]
        ratios = {r.label: f"{r.seconds / apk.seconds:.2f}x (a)" for r in rows}
        print_table(f"patching {len(repo.packages)} packages of the Alpine {os_version} fixture image", rows, ratios)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
