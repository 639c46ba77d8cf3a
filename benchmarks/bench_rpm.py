#!/usr/bin/env python3
"""Patch benchmark: `copa patch` of an RPM image beside what dnf, rpm and skopeo need for the same job.

Setup (not measured; the packages are cached under ~/.cache/copa-tests/bench/): an image built as
tests/test_rpm_e2e.py builds one, only bigger. 170 packages are built by rpmbuild (tests/support/rpmtools.py,
zstd payloads as RHEL 9's) and installed by the real rpm 4.18 into a root (rpmdb.sqlite, the repository key
imported as RHEL/UBI images have theirs: a gpg-pubkey entry): 150 small ones (an executable, a library with its
soname link, a %config(noreplace) file, a README: a few KiB) and 20 big ones (four 1 MiB files of incompressible
content each), all requiring a base package. The root gets a UBI 9 /etc/os-release and a .repo file (gpgcheck=1,
repo_gpgcheck=1, the key in /etc/pki/rpm-gpg) naming a createrepo_c repository on 127.0.0.1 that holds a newer
build (1.1-1.el9, changed contents) of 50 of them (every fifth a big one), signed by rpmsign, its repomd.xml by
gpg. The image (one layer) is pushed to a fresh docker-registry. Then, for 1, 10 and 50 of the updated packages
named by a Trivy report (family redhat), measured, wall time and peak RSS of the whole process tree (GNU time):
  copa cold     `python -m copa patch -i REG/bench/rpm:1 -r REPORT -t TAG --push`, empty COPA_CACHE_DIR
  copa warm     the same with the metadata and package cache of the cold run
  (a) dnf       `dnf --installroot COPY upgrade PKGS -y --setopt=tsflags=noscripts` on a copy (`cp -a`, not
                timed) of the image's rootfs: the package-manager path (fresh dnf cache in the copy each time:
                repomd.xml and its signature, primary/filelists, the packages, their signatures, the transaction)
  (b) rpm -U    `rpm --root COPY -U --nodeps --noscripts` of the same packages already downloaded: the floor of
                a package manager writing files and its database (no metadata, no network, no solving)
  (c) skopeo    `skopeo copy` of the image out of the same registry into an OCI layout (reads every blob, as copa
                must read the layer holding the rpm database)
Each copa result (the first cold one of each size) is pulled, unpacked by umoci and read by `rpm -qa`; each dnf
and rpm -U copy too: the updated packages at 1.1, the others at 1.0.

    .venv/bin/python benchmarks/bench_rpm.py [--repeat N] [--sizes 1,10,50] [--rebuild] [--profile]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import BENCH_CACHE, REPO, MeasureError, Measurement, measure, median, print_table, registry
from bench_debian import copa_argv, copa_env, profile_copa

from tests.support import images
from tests.support.aptrepo import RepoServer
from tests.support.registry import RunningRegistry
from tests.support.rpmrepo import build_repo
from tests.support.rpmtools import (
    GpgKey,
    RpmFile,
    RpmSpec,
    build_rpm,
    init_root,
    make_gpg_key,
    rpm_root_args,
    sign_rpms,
)
from tests.support.trivy import write_report

IMAGE = "bench/rpm:1"
REF = "ubi"
SMALL, BIG, UPDATED = 150, 20, 50
BIG_FILES, BIG_FILE_BYTES = 4, 1 << 20
OLD, NEW = ("1.0", "1.el9"), ("1.1", "1.el9")
PAYLOAD = "w19.zstdio"  # RHEL 9's %_binary_payload
CACHE = BENCH_CACHE / f"rpm-{SMALL}s{BIG}b{UPDATED}u-v1"
KEY_NAME = "RPM-GPG-KEY-copa-bench"
OS_RELEASE = 'NAME="Red Hat Enterprise Linux"\nVERSION="9.4 (Plow)"\nID="rhel"\nID_LIKE="fedora"\n' \
             'VERSION_ID="9.4"\nPLATFORM_ID="platform:el9"\nPRETTY_NAME="Red Hat Enterprise Linux 9.4 (Plow)"\n'


# ------------------------------------------------------------------------------------------------ packages


def small_name(i: int) -> str:
    return f"bench-small-{i:03d}"


def big_name(i: int) -> str:
    return f"bench-big-{i:02d}"


def updated_names() -> list[str]:
    """The 50 packages the repository has a newer build of, in the order the report sizes take them: every fifth a
    big one (10 big, 40 small), so 1 is one big package, 10 are 2 big and 8 small."""
    bigs, smalls = iter(range(BIG)), iter(range(SMALL))
    return [big_name(next(bigs)) if k % 5 == 0 else small_name(next(smalls)) for k in range(UPDATED)]


def small_spec(i: int, version: tuple[str, str]) -> RpmSpec:
    name, (ver, rel) = small_name(i), version
    text = f"{name} {ver}\n" + "".join(f"line {n} of {name}, version {ver}\n" for n in range(60))
    files = (
        RpmFile(f"/usr/bin/{name}", f"#!/bin/sh\necho {name} {ver}\n".encode(), 0o755),
        RpmFile(f"/usr/lib64/lib{name}.so.1", text.encode() * 4, 0o755),
        RpmFile(f"/usr/lib64/lib{name}.so", kind="symlink", target=f"lib{name}.so.1"),
        RpmFile(f"/etc/{name}.conf", f"# {name}\nsetting=1\n".encode(), attr="%config(noreplace)"),
        RpmFile(f"/usr/share/doc/{name}", kind="dir"),
        RpmFile(f"/usr/share/doc/{name}/README", text.encode(), attr="%doc"),
    )
    return RpmSpec(name, ver, rel, arch="x86_64", files=files, payload=PAYLOAD, requires=("bench-base",),
                   provides=(f"lib{name}.so.1()(64bit)",))


def big_spec(i: int, version: tuple[str, str]) -> RpmSpec:
    name, (ver, rel) = big_name(i), version
    rng = random.Random(f"{name}-{ver}")  # reproducible, incompressible
    files = tuple(RpmFile(f"/usr/lib64/{name}/data{n}.bin", rng.randbytes(BIG_FILE_BYTES), 0o644)
                  for n in range(BIG_FILES))
    return RpmSpec(name, ver, rel, arch="x86_64", files=(RpmFile(f"/usr/lib64/{name}", kind="dir"), *files),
                   payload=PAYLOAD, requires=("bench-base",))


def base_spec() -> RpmSpec:
    return RpmSpec("bench-base", "1.0", "1.el9", files=(RpmFile("/etc/bench-release", b"copa bench\n"),),
                   payload=PAYLOAD)


@dataclass(frozen=True)
class Packages:
    old: tuple[Path, ...]
    repo: Path  # the signed repository directory (repodata/ signed), the new builds inside
    new: dict[str, Path]  # name -> new .rpm in `repo`
    key: GpgKey


def build_packages(rebuild: bool) -> Packages:
    """The old packages, the key and the signed repository, from the cache when it is complete."""
    done = CACHE / "complete"
    names = updated_names()
    if rebuild or not done.exists():
        shutil.rmtree(CACHE, ignore_errors=True)
        start = time.monotonic()
        key = make_gpg_key(CACHE / "gpg", "rsa3072", uid="copa bench <bench@copa.test>")
        specs = [base_spec(), *(small_spec(i, OLD) for i in range(SMALL)), *(big_spec(i, OLD) for i in range(BIG))]
        updates = [big_spec(int(n.rsplit("-", 1)[1]), NEW) if n.startswith("bench-big") else
                   small_spec(int(n.rsplit("-", 1)[1]), NEW) for n in names]  # fmt: skip
        with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
            built_old = list(pool.map(lambda s: build_rpm(s, CACHE / "old"), specs))
            built_new = list(pool.map(lambda s: build_rpm(s, CACHE / "repo"), updates))
        sign_rpms(built_new, key)
        build_repo(CACHE / "repo", [], key=key)
        (CACHE / "old.list").write_text("".join(f"{p.name}\n" for p in built_old))
        done.write_text("")
        print(f"built {len(built_old)} + {len(built_new)} packages and the repository in "
              f"{time.monotonic() - start:.0f} s")
    key_home = CACHE / "gpg"
    listing = subprocess.run(["gpg", "--homedir", str(key_home), "--batch", "--with-colons", "--list-secret-keys"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    key = GpgKey(key_home, "copa bench <bench@copa.test>", fingerprint, key_home / "RPM-GPG-KEY-copa-test")
    old = tuple(CACHE / "old" / line for line in (CACHE / "old.list").read_text().split())
    new = {n: CACHE / "repo" / f"{n}-{NEW[0]}-{NEW[1]}.x86_64.rpm" for n in names}
    return Packages(old, CACHE / "repo", new, key)


def mib(paths: Sequence[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / (1 << 20)


# ------------------------------------------------------------------------------------------------ the image


def build_root(root: Path, pkgs: Packages, url: str) -> None:
    """The image's rootfs: the old packages installed by rpm, UBI 9's os-release, the key imported and on disk,
    and a .repo file for the local repository."""
    init_root(root, pkgs.old)
    subprocess.run([*rpm_root_args(root), "--import", str(pkgs.key.public)], check=True)
    for d in ("etc/yum.repos.d", "etc/pki/rpm-gpg"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(pkgs.key.public, root / "etc/pki/rpm-gpg" / KEY_NAME)
    (root / "etc/os-release").write_text(OS_RELEASE)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "etc/yum.repos.d/bench.repo").write_text(
        f"[bench]\nname=copa bench\nbaseurl={url}/\nenabled=1\ngpgcheck=1\nrepo_gpgcheck=1\n"
        f"gpgkey=file:///etc/pki/rpm-gpg/{KEY_NAME}\n")


def push_image(work: Path, pkgs: Packages, url: str, reg: RunningRegistry) -> tuple[Path, Path]:
    """The image (its rootfs under `work`, the repository at `url`) as a one-layer OCI layout pushed to `reg` as
    IMAGE; returns the rootfs and the layer's blob."""
    base = work / "rootfs"
    build_root(base, pkgs, url)
    images.builder.make_oci_layout(base, work / "layout", REF, cmd=None)
    images.push_layout(work / "layout", REF, reg.host, IMAGE)
    layer = max((p for p in (work / "layout/blobs/sha256").iterdir()), key=lambda p: p.stat().st_size)
    return base, layer


def trivy_report(path: Path, updated: Sequence[str]) -> Path:
    """A Trivy report (family redhat) naming `updated` with their fixed version."""
    return write_report(path, {n: ("-".join(OLD), "-".join(NEW)) for n in updated}, os_version="9.4",
                        family="redhat")  # fmt: skip


def installed_versions(root: Path) -> dict[str, str]:
    proc = subprocess.run([*rpm_root_args(root), "-qa", "--qf", "%{NAME} %{VERSION}-%{RELEASE}\\n"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pairs = (line.split(" ", 1) for line in proc.stdout.splitlines() if line.strip())
    return {name: evr for name, evr in pairs}


def check_versions(what: str, root: Path, updated: Sequence[str]) -> None:
    versions = installed_versions(root)
    want_new = "-".join(NEW)
    wrong = sorted(n for n in updated if versions.get(n) != want_new)
    moved = sorted(n for n, v in versions.items() if n not in updated and v == want_new)
    if wrong or moved or len(versions) < SMALL + BIG + 1:
        raise MeasureError(f"{what}: not at {want_new}: {wrong}; moved though not named: {moved}; "
                           f"{len(versions)} packages")  # fmt: skip


def check_patched(image: str, work: Path, updated: Sequence[str]) -> None:
    """The image copa pushed, pulled and unpacked (umoci verifies every digest), read by the real rpm."""
    layout, bundle = work / "check-layout", work / "check-bundle"
    for argv in (["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{image}", f"oci:{layout}:x"],
                 ["umoci", "unpack", "--image", f"{layout}:x", str(bundle)]):  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise MeasureError(f"checking copa's result: {' '.join(argv[:2])} failed: {proc.stderr.strip()}")
    try:
        check_versions(f"copa's result {image}", bundle / "rootfs", updated)
    finally:
        shutil.rmtree(layout, ignore_errors=True)
        shutil.rmtree(bundle, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ (a), (b)


def rpm_home(work: Path) -> Path:
    """A HOME whose ~/.rpmmacros gives dnf (through librpm) the image's database path; Debian's rpm would use
    ~/.rpmdb."""
    home = work / "home"
    home.mkdir(exist_ok=True)
    (home / ".rpmmacros").write_text("%_dbpath /var/lib/rpm\n%_db_backend sqlite\n")
    return home


def dnf_argv(root: Path, names: Sequence[str]) -> list[str]:
    # gpgkey paths of an installroot's .repo are read on the host: point dnf at the copy's key file.
    return ["dnf", "--installroot", str(root), "upgrade", *names, "-y", "--setopt=tsflags=noscripts",
            "--releasever=9", f"--setopt=bench.gpgkey=file://{root}/etc/pki/rpm-gpg/{KEY_NAME}"]


def rpm_argv(root: Path, rpms: Sequence[Path]) -> list[str]:
    return [*rpm_root_args(root), "-U", "--nodeps", "--noscripts", *map(str, rpms)]


def on_copy(label: str, work: Path, base: Path, argv: Callable[[Path], list[str]], updated: Sequence[str],
            env: dict[str, str] | None = None) -> Measurement:  # fmt: skip
    """One measured run on a fresh copy of `base` (the copy is not measured), checked afterwards."""
    root = Path(tempfile.mkdtemp(prefix="bench-rpm-copy-", dir=work)) / "root"
    try:
        subprocess.run(["cp", "-a", str(base), str(root)], check=True)
        result = measure(label, argv(root), env=env, cwd=REPO)
        check_versions(label, root, updated)
        return result
    finally:
        shutil.rmtree(root.parent, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (median reported)")
    parser.add_argument("--sizes", default="1,10,50", help="how many of the updated packages the reports name")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached packages and repository")
    parser.add_argument("--profile", action="store_true", help="afterwards, one cold copa patch (largest size) "
                                                                "under cProfile")  # fmt: skip
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if max(sizes) > UPDATED:
        parser.error(f"at most {UPDATED} packages are updated")

    pkgs = build_packages(args.rebuild)
    order = updated_names()
    print(f"packages: {len(pkgs.old)} installed ({mib(pkgs.old):.1f} MiB of .rpm), {len(pkgs.new)} newer in the "
          f"signed repository ({mib(list(pkgs.new.values())):.1f} MiB)")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="bench-rpm-"))
    dnf_env = {**os.environ, "HOME": str(rpm_home(work))}
    try:
        with RepoServer(pkgs.repo) as server, registry("rpm") as reg:
            base, layer = push_image(work, pkgs, server.url, reg)
            image = f"{reg.host}/{IMAGE}"
            print(f"image {image}: one layer of {layer.stat().st_size / (1 << 20):.1f} MiB (gzip)")
            pull = [
                measure("(c) skopeo copy registry -> oci dir", [
                    "skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{image}",
                    f"oci:{work / f'pulled-{i}'}:x",
                ])
                for i in range(args.repeat)
            ]  # fmt: skip
            skopeo = median(pull[0].label, pull)
            summary: list[str] = []
            for size in sizes:
                updated = order[:size]
                report = trivy_report(work / f"trivy-{size}.json", updated)
                cold: list[Measurement] = []
                warm: list[Measurement] = []
                for i in range(args.repeat):
                    cache = work / f"copa-cache-{size}-{i}"
                    cold.append(measure("copa cold", copa_argv(image, report, f"n{size}-cold-{i}"),
                                        env=copa_env(cache), cwd=REPO))  # fmt: skip
                    warm.append(measure("copa warm", copa_argv(image, report, f"n{size}-warm-{i}"),
                                        env=copa_env(cache), cwd=REPO))  # fmt: skip
                    shutil.rmtree(cache, ignore_errors=True)
                check_patched(f"{reg.host}/bench/rpm:n{size}-cold-0", work, updated)
                dnf = [on_copy("(a) dnf --installroot upgrade", work, base, partial(dnf_argv, names=updated),
                               updated, dnf_env) for _ in range(args.repeat)]  # fmt: skip
                rpms = [pkgs.new[n] for n in updated]
                rpm = [on_copy("(b) rpm -U --nodeps --noscripts", work, base, partial(rpm_argv, rpms=rpms), updated)
                       for _ in range(args.repeat)]  # fmt: skip
                rows = [median("copa cold", cold), median("copa warm", warm), median(dnf[0].label, dnf),
                        median(rpm[0].label, rpm), skopeo]  # fmt: skip
                a, b = rows[2].seconds, rows[3].seconds
                ratios = {r.label: f"{r.seconds / a:.2f}x (a) {r.seconds / b:.1f}x (b)" for r in rows}
                print_table(f"updating {size} of {len(pkgs.old)} packages ({mib(rpms):.1f} MiB of .rpm) in the RPM "
                            f"image", rows, ratios)  # fmt: skip
                summary.append(f"{size:>3} updated: copa cold {rows[0].seconds:.2f} s / warm {rows[1].seconds:.2f} s, "
                               f"dnf {a:.2f} s, rpm -U {b:.2f} s, skopeo {skopeo.seconds:.2f} s; copa cold "
                               f"{rows[0].seconds / a:.2f}x dnf, peak RSS copa {rows[0].peak_rss_mib:.0f} MiB, dnf "
                               f"{rows[2].peak_rss_mib:.0f} MiB")  # fmt: skip
            print("\n" + "\n".join(summary))
            if args.profile:
                report = work / f"trivy-{max(sizes)}.json"
                profile_copa(image, report, top=20)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
