"""Real Alpine test images and the real-apk oracle, built once and cached under ~/.cache/copa-tests/alpine-*.

The rootfs is Alpine 3.23 with apk-tools 3 (see fixtures/build_alpine.py). `run_apk` executes an image's own
/sbin/apk on this (glibc) host through the image's musl loader, so tests compare copa against the real apk.
Returned rootfs trees and layouts are SHARED cache entries: never write into them; copy first (`copy_rootfs`,
images.copy_layout).
"""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from copa.errors import CopaError

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "fixtures" / "build_alpine.py"

ALPINE_REF = "alpine"
DISTROLESS_REF = "alpine-distroless"


class ApkOracleError(CopaError):
    """Real apk rejected something the tests built or asked."""


def _load_builder() -> ModuleType:
    name = "copa_fixtures_build_alpine"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up in sys.modules while the class is built
    spec.loader.exec_module(module)
    return module


builder = _load_builder()
ARCH: str = builder.ARCH


@functools.cache
def alpine_rootfs() -> Path:
    """Alpine 3.23: alpine-baselayout, busybox, musl, apk-tools 3, ca-certificates, curl and their deps."""
    return Path(builder.rootfs(builder.ALPINE))


@functools.cache
def distroless_rootfs() -> Path:
    """alpine_rootfs without apk-tools/libapk (no /sbin/apk); /lib/apk/db and /etc/apk kept."""
    return Path(builder.rootfs(builder.DISTROLESS))


@functools.cache
def alpine_layout() -> tuple[Path, str]:
    """(OCI layout dir, ref name) of the one-layer alpine image (Cmd /bin/sh)."""
    return Path(builder.layout(builder.ALPINE, ALPINE_REF)), ALPINE_REF


@functools.cache
def distroless_layout() -> tuple[Path, str]:
    return Path(builder.layout(builder.DISTROLESS, DISTROLESS_REF)), DISTROLESS_REF


def build_seconds(path: Path) -> float:
    """How long the cache entry holding `path` (a rootfs or layout returned above) took to build."""
    return float(builder.build_seconds(path))


def copy_rootfs(src: Path, dest: Path) -> Path:
    """A private, writable copy of a cached rootfs at `dest` (must not exist), owners/modes/links preserved."""
    proc = subprocess.run(["cp", "-a", str(src), str(dest)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ApkOracleError(f"copying {src} to {dest} failed: {proc.stderr.strip()}")
    return dest


def run_apk(
    root: Path, *args: str, tool_root: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`apk --root ROOT --force-no-chroot ARGS` with tool_root's apk (default: ROOT's own, else the cached image's).

    The image's network repositories are replaced by an empty list unless ARGS give `--repositories-file`.
    """
    if tool_root is None:
        tool_root = root if (root / "sbin/apk").is_file() else alpine_rootfs()
    result: subprocess.CompletedProcess[str] = builder.run_apk(root, *args, tool_root=tool_root, check=check)
    return result


def installed_versions(root: Path) -> dict[str, str]:
    """{name: version} as real apk reports it (`apk info -v`)."""
    out: dict[str, str] = {}
    for line in run_apk(root, "info", "-v").stdout.split():
        name, _, rel = line.rpartition("-r")
        base, _, ver = name.rpartition("-")
        out[base] = f"{ver}-r{rel}"
    return out


def oracle_upgrade(root: Path, repo_url: str, key_dir: Path) -> str:
    """Upgrade the writable rootfs copy `root` from `repo_url` with real apk; returns apk's output.

    Only the repository at repo_url is used (the image's own list is replaced by an empty file) and only keys in
    key_dir are trusted, so apk must verify our signatures and checksums. Scripts are never run (they would run
    on this host: there is no chroot), but apk still records them in lib/apk/db/scripts.tar.gz.
    Raises ApkOracleError if apk fails.
    """
    args = ["--repository", repo_url, "--keys-dir", str(key_dir.resolve()), "--no-cache", "--no-scripts"]
    proc = run_apk(root, *args, "upgrade", check=False)
    if proc.returncode != 0:
        raise ApkOracleError(f"real apk upgrade from {repo_url} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout + proc.stderr


def audit(root: Path) -> list[str]:
    """`apk audit` lines (changed/added files under protected paths and the like), sorted."""
    return sorted(run_apk(root, "audit").stdout.splitlines())


@functools.cache
def _version_tool() -> Path:
    return alpine_rootfs()


def apk_version_compare(a: str, b: str) -> int:
    """-1, 0 or 1 as real apk orders versions a and b (`apk version -t A B`)."""
    tool = _version_tool()
    proc = subprocess.run(
        [*builder.apk_argv(tool), "--root", str(tool), "--repositories-file", "/dev/null", "version", "-t", a, b],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    sign = proc.stdout.strip()
    if sign not in ("<", "=", ">"):
        raise ApkOracleError(f"apk version -t {a!r} {b!r} gave {sign!r} ({proc.stderr.strip()}); are both valid?")
    return {"<": -1, "=": 0, ">": 1}[sign]


def apk_version_valid(version: str) -> bool:
    """Does real apk accept `version` as a valid version string (`apk version -c`)?"""
    tool = _version_tool()
    proc = subprocess.run(
        [*builder.apk_argv(tool), "--root", str(tool), "--repositories-file", "/dev/null", "version", "-c", version],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    # apk prints each invalid version and exits non-zero for it.
    return proc.returncode == 0 and not proc.stdout.strip()
