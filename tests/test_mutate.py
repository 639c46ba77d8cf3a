"""copa.oci.mutate through the CLI: re-patching starts from the original image, and zstd patch layers.

Oracles: skopeo and umoci read what copa wrote; validate() re-hashes every blob.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from copa.oci.image import Image
from copa.oci.layout import LayoutSource
from copa.oci.model import Manifest, MediaType
from copa.oci.mutate import BASE_IMAGE_LABEL, HISTORY_MARK, original_of
from tests.support import images
from tests.support.registry import RunningRegistry
from tests.support.trivy import dpkg_versions, fixed_packages, write_report
from tests.support.validate import validate

pytestmark = [pytest.mark.live, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "SOURCE_DATE_EPOCH": "1704067200"}
PREFERRED = ("libexpat1", "libssh2-1", "liblzma5", "libpcre2-8-0")


def copa(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "copa", *args], cwd=ROOT, env=ENV, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"copa {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def run(*args: str | Path) -> str:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed ({proc.returncode}): {proc.stderr.strip()}"
    return proc.stdout


def load(layout: Path, name: str) -> Image:
    source = LayoutSource(layout, name)
    root = source.root()
    assert isinstance(root, Manifest)
    return Image.load(source, root)


@pytest.fixture(scope="module")
def fix() -> tuple[str, str, str]:
    fixes = fixed_packages(dpkg_versions(images.debian_rootfs()), dpkg_versions(images.oracle_rootfs()))
    name = next((n for n in PREFERRED if n in fixes), None) or sorted(fixes)[0]
    return name, *fixes[name]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, fix: tuple[str, str, str]) -> Path:
    name, old, new = fix
    return write_report(tmp_path_factory.mktemp("report") / "trivy.json", {name: (old, new)})


@pytest.fixture(scope="module")
def patched(report: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The Debian layout patched once into a new layout (ref bookworm-patched)."""
    src, ref = images.debian_layout()
    out = tmp_path_factory.mktemp("patched") / "layout"
    proc = copa("patch", "-i", f"oci:{src}:{ref}", "-r", str(report), "--oci-dir", str(out), "--json")
    return {"layout": out, "name": f"{ref}-patched", "source": f"oci:{src}:{ref}", "result": json.loads(proc.stdout)}


def test_repatch_replaces_the_patch_layer(patched: dict[str, Any], report: Path, tmp_path: Path) -> None:
    layout: Path = patched["layout"]
    first = load(layout, patched["name"])
    assert first.config.labels[BASE_IMAGE_LABEL] == patched["source"]
    assert first.config.history[-1].created_by.startswith(HISTORY_MARK)
    # Re-patch the patched image, writing into the same layout under a second name.
    proc = copa("patch", "-i", f"oci:{layout}:{patched['name']}", "-r", str(report), "--oci-dir", str(layout),
                "-t", "again")
    assert "patching its original" in proc.stderr
    second = load(layout, "again")
    original = load(*images.debian_layout())
    assert len(second.layers) == len(first.layers) == len(original.layers) + 1
    assert len(second.config.history) == len(first.config.history)
    assert second.manifest.layers[:-1] == original.manifest.layers
    # The label still names the original, not the intermediate patched image.
    assert second.config.labels[BASE_IMAGE_LABEL] == patched["source"]
    # Same original, same package, same SOURCE_DATE_EPOCH: the same patch layer.
    assert second.manifest.layers[-1].digest == first.manifest.layers[-1].digest
    assert original_of(second, "x").layers == len(original.layers)
    # Both names live in the layout, and skopeo and umoci read both.
    for name in (patched["name"], "again"):
        validate(LayoutSource(layout, name))
        run("skopeo", "inspect", f"oci:{layout}:{name}")
    run("umoci", "unpack", "--image", f"{layout}:again", tmp_path / "bundle")


def test_zstd_patch_layer(report: Path, tmp_path: Path, anon_registry: RunningRegistry,
                          fix: tuple[str, str, str]) -> None:
    src, ref = images.debian_layout()
    out = tmp_path / "layout"
    copa("patch", "-i", f"oci:{src}:{ref}", "-r", str(report), "--compression", "zstd", "--oci-dir", str(out),
         "-t", "z")
    image = load(out, "z")
    assert image.manifest.media_type == MediaType.OCI_MANIFEST
    assert image.manifest.layers[-1].media_type == MediaType.OCI_LAYER_ZSTD
    with LayoutSource(out, "z").open_blob(image.manifest.layers[-1]) as f:
        assert f.read(4) == b"\x28\xb5\x2f\xfd", "the layer must really be zstd"
    validate(LayoutSource(out, "z"))
    # umoci 0.4 cannot read zstd layers, so skopeo (which can) recompresses the image to gzip; umoci unpacks that
    # copy and the fix is there.
    gz = tmp_path / "gz"
    run("skopeo", "copy", "--quiet", "--dest-compress-format=gzip", f"oci:{out}:z", f"oci:{gz}:g")
    regz = load(gz, "g")
    assert regz.manifest.layers[-1].media_type == MediaType.OCI_LAYER_GZIP
    assert regz.config.diff_ids == image.config.diff_ids
    validate(LayoutSource(gz, "g"))
    run("umoci", "unpack", "--image", f"{gz}:g", tmp_path / "bundle")
    name, _, fixed = fix
    assert dpkg_versions(tmp_path / "bundle" / "rootfs")[name] == fixed
    # skopeo copies the zstd image to a registry and back unchanged.
    target = f"{anon_registry.host}/mutate/zstd:1"
    run("skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{out}:z", f"docker://{target}")
    run("skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{target}", f"oci:{tmp_path / 'back'}:b")
    back = load(tmp_path / "back", "b")
    assert back.manifest.layers[-1].media_type == MediaType.OCI_LAYER_ZSTD
    assert back.config.diff_ids == image.config.diff_ids


def test_zstd_for_a_docker_image_fails_before_any_work(anon_registry: RunningRegistry, report: Path,
                                                       tmp_path: Path) -> None:
    src, ref = images.debian_layout()
    images.push_layout(src, ref, anon_registry.host, "mutate/v2s2:1", fmt="v2s2")
    started = time.monotonic()
    proc = copa("patch", "-i", f"{anon_registry.host}/mutate/v2s2:1", "-r", str(report), "--compression", "zstd",
                "--push", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "zstd" in proc.stderr and "Traceback" not in proc.stderr
    assert "building the patch layer" not in proc.stderr, "the flag combination is known before any package work"
    assert time.monotonic() - started < 10
