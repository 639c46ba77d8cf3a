"""Real Debian test images for the suite, built once and cached under ~/.cache/copa-tests/ (see fixtures/).

All functions are cached per process and per machine (the build script keys the on-disk cache by its
parameters); the first call may take a minute or two. Returned layouts and rootfs trees are SHARED cache
entries: never write into them; copy a layout with `copy_layout` first if a test must modify it.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Literal

from copa.errors import CopaError

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "fixtures" / "build_debian.py"


class PushError(CopaError):
    """skopeo could not copy a fixture image into the test registry."""


def _load_builder() -> ModuleType:
    # fixtures/ is not a package (the script must also run standalone), so load it by path, once.
    name = "copa_fixtures_build_debian"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up in sys.modules while the class is built
    spec.loader.exec_module(module)
    return module


builder = _load_builder()

# Ref names inside each layout (the tag part of oci:LAYOUT:REF).
DEBIAN_REF = "bookworm"
ORACLE_REF = "bookworm-oracle"
DISTROLESS_REF = "bookworm-distroless"
TWO_LAYER_REF = "bookworm-two-layer"


@functools.cache
def debian_rootfs() -> Path:
    """bookworm minbase + openssl, ca-certificates, libexpat1, libssh2-1, python3.11-minimal (point release)."""
    return Path(builder.rootfs(builder.DEBIAN))


@functools.cache
def oracle_rootfs() -> Path:
    """The same package set installed with bookworm-security enabled: what patching should yield."""
    return Path(builder.rootfs(builder.ORACLE))


@functools.cache
def distroless_rootfs() -> Path:
    """debian_rootfs reshaped like Google distroless (status.d, no dpkg/apt)."""
    return Path(builder.rootfs(builder.DISTROLESS))


@functools.cache
def debian_layout() -> tuple[Path, str]:
    """(OCI layout dir, ref name) of the one-layer debian image."""
    return Path(builder.layout(builder.DEBIAN, DEBIAN_REF)), DEBIAN_REF


@functools.cache
def oracle_layout() -> tuple[Path, str]:
    return Path(builder.layout(builder.ORACLE, ORACLE_REF)), ORACLE_REF


@functools.cache
def distroless_layout() -> tuple[Path, str]:
    return Path(builder.layout(builder.DISTROLESS, DISTROLESS_REF)), DISTROLESS_REF


@functools.cache
def two_layer_layout() -> tuple[Path, str]:
    """debian layer + a layer adding TWO_LAYER_ADDED, changing TWO_LAYER_CHANGED, whiting out TWO_LAYER_DELETED
    and making TWO_LAYER_OPAQUE_DIR opaque (only TWO_LAYER_OPAQUE_KEPT remains in it)."""
    return Path(builder.layout(builder.DEBIAN, TWO_LAYER_REF, second_layer=True)), TWO_LAYER_REF


def build_seconds(path: Path) -> float:
    """How long the cache entry holding `path` (a rootfs or layout returned above) took to build."""
    return float(builder.build_seconds(path.parent))


def copy_layout(layout_dir: Path, dest: Path) -> Path:
    """A private, writable copy of a cached layout at `dest` (which must not exist)."""
    shutil.copytree(layout_dir, dest, symlinks=True)
    return dest


def push_layout(
    layout_dir: Path,
    ref_name: str,
    registry_host: str,
    repo_tag: str,
    fmt: Literal["oci", "v2s2"] = "oci",
) -> str:
    """Copy oci:layout_dir:ref_name to registry_host/repo_tag (plain HTTP) with skopeo; returns the manifest digest.

    `fmt="v2s2"` converts to a Docker schema 2 manifest on the way, as pushing to Docker Hub would.
    """
    with tempfile.TemporaryDirectory(prefix="copa-push-") as tmp:
        digest_file = Path(tmp) / "digest"
        argv = [
            "skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"--format={fmt}",
            f"--digestfile={digest_file}", f"oci:{layout_dir}:{ref_name}", f"docker://{registry_host}/{repo_tag}",
        ]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            detail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            raise PushError(f"pushing {layout_dir}:{ref_name} to {registry_host}/{repo_tag} failed: {detail}")
        return digest_file.read_text().strip()


TWO_LAYER_ADDED: str = builder.TWO_LAYER_ADDED
TWO_LAYER_ADDED_CONTENT: bytes = builder.TWO_LAYER_ADDED_CONTENT
TWO_LAYER_CHANGED: str = builder.TWO_LAYER_CHANGED
TWO_LAYER_CHANGED_CONTENT: bytes = builder.TWO_LAYER_CHANGED_CONTENT
TWO_LAYER_DELETED: str = builder.TWO_LAYER_DELETED
TWO_LAYER_OPAQUE_DIR: str = builder.TWO_LAYER_OPAQUE_DIR
TWO_LAYER_OPAQUE_KEPT: str = builder.TWO_LAYER_OPAQUE_KEPT
TWO_LAYER_OPAQUE_CONTENT: bytes = builder.TWO_LAYER_OPAQUE_CONTENT
