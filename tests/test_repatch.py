"""Re-patching with a larger report: half the fixes first, then the result patched with all of them.

copa starts a re-patch from the image's original layers, so the second result must be exactly a single patch with
the full report: one patch layer above the original layers (the half patch's layer is gone, not buried), the same
files and dpkg database, and, with SOURCE_DATE_EPOCH fixed, the very same layer (diff_id and digest). Through a
real registry, as a user would chain it; the re-patched image is then run from the registry (buildah) and its own
dpkg checks the database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from copa.oci.model import parse_manifest
from tests.support import images
from tests.support.buildah import Buildah, Container, buildah_store  # noqa: F401  (pytest fixture)
from tests.support.registry import RunningRegistry
from tests.support.trivy import dpkg_versions, fixed_packages, write_report

pytestmark = [pytest.mark.live, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "SOURCE_DATE_EPOCH": "1704067200"}
def copa(*args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "copa", *args, "--json"], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise AssertionError(f"copa {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def skopeo_inspect(ref: str, *flags: str) -> bytes:
    return subprocess.run(["skopeo", "inspect", "--tls-verify=false", *flags, f"docker://{ref}"], check=True,
                          capture_output=True, stdin=subprocess.DEVNULL).stdout


def layer_digests(ref: str) -> list[str]:
    manifest = parse_manifest(skopeo_inspect(ref, "--raw"))
    return [str(layer.digest) for layer in manifest.layers]  # type: ignore[union-attr]


def config(ref: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(skopeo_inspect(ref, "--config", "--raw"))
    return doc


@pytest.fixture(scope="module")
def fixes() -> dict[str, tuple[str, str]]:
    found = fixed_packages(dpkg_versions(images.debian_rootfs()), dpkg_versions(images.oracle_rootfs()))
    assert len(found) >= 4, "bookworm-security should have newer versions of several fixture packages"
    return found


@pytest.fixture(scope="module")
def chain(anon_registry: RunningRegistry, fixes: dict[str, tuple[str, str]],
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """base -> half -> full-again, and base -> full in one go. Returns refs and copa's results."""
    work = tmp_path_factory.mktemp("repatch")
    names = sorted(fixes)
    half = {n: fixes[n] for n in names[::2]}
    half_report = write_report(work / "half.json", half)
    full_report = write_report(work / "full.json", fixes)
    layout, ref = images.debian_layout()
    images.push_layout(layout, ref, anon_registry.host, "repatch:1.0")
    base = f"{anon_registry.host}/repatch:1.0"
    out: dict[str, Any] = {"base": base, "half_names": set(half)}
    out["half"] = copa("patch", "-i", base, "-r", str(half_report), "-t", "1.0-half", "--push")
    out["again"] = copa("patch", "-i", f"{base}-half", "-r", str(full_report), "-t", "1.0-again", "--push")
    out["once"] = copa("patch", "-i", base, "-r", str(full_report), "-t", "1.0-once", "--push")
    return out


def test_half_patch_is_a_real_step(chain: dict[str, Any], fixes: dict[str, tuple[str, str]]) -> None:
    """The first patch updates some reported packages and leaves others for the second (else the test is moot)."""
    half = {u["name"] for u in chain["half"]["updates"]}
    once = {u["name"] for u in chain["once"]["updates"]}
    assert chain["half_names"] <= half < once
    assert set(fixes) - half, "the half report already fixed every package"


def test_repatch_has_one_patch_layer_above_the_original(chain: dict[str, Any]) -> None:
    base = layer_digests(chain["base"])
    half = layer_digests(f"{chain['base']}-half")
    again = layer_digests(f"{chain['base']}-again")
    assert len(half) == len(base) + 1 and half[:-1] == base
    assert len(again) == len(base) + 1, f"patch layers piled up: {again}"
    assert again[:-1] == base, "the re-patch does not sit on the original layers"
    assert again[-1] != half[-1], "the re-patch kept the half patch's layer"


def test_repatch_equals_a_single_full_patch(chain: dict[str, Any]) -> None:
    again, once = f"{chain['base']}-again", f"{chain['base']}-once"
    assert {u["name"]: u["to"] for u in chain["again"]["updates"]} == {
        u["name"]: u["to"] for u in chain["once"]["updates"]}
    a, b = config(again), config(once)
    # Same packages, same original, same SOURCE_DATE_EPOCH: the same layer, byte for byte.
    assert a["rootfs"]["diff_ids"] == b["rootfs"]["diff_ids"]
    assert layer_digests(again) == layer_digests(once)
    assert len(a.get("history", [])) == len(b.get("history", [])), "the re-patch carries an extra history entry"
    # Labels (BaseImage names the original, not the half-patched image), env, dates: all the same.
    assert {k: v for k, v in a.items() if k != "history"} == {k: v for k, v in b.items() if k != "history"}


def test_repatch_history_describes_the_new_layer(chain: dict[str, Any]) -> None:
    """The patch layer's history entry names what the layer holds now, as the single full patch's does."""
    again, once = config(f"{chain['base']}-again"), config(f"{chain['base']}-once")
    assert again["history"][-1] == once["history"][-1]
    assert again == once


def test_repatch_runs_like_a_single_full_patch(chain: dict[str, Any], buildah_store: Buildah) -> None:  # noqa: F811
    """From the inside, pulled from the registry: the image's own dpkg is content with the re-patched database and
    reports the single full patch's versions. (Equal layer digests above already make the files identical; this
    is what the image's tools make of them.)"""
    with buildah_store.from_registry(f"{chain['base']}-again") as again:
        audit = again.run("dpkg", "--audit")
        assert audit.rc == 0 and audit.stdout == "", str(audit)
        versions = installed_versions(again)
        for u in chain["once"]["updates"]:
            assert versions.get(u["name"]) == u["to"], f"{u['name']}: dpkg-query says {versions.get(u['name'])}"
        half_only = {u["name"]: u["to"] for u in chain["half"]["updates"]}
        assert all(versions.get(n) == v for n, v in half_only.items())


def installed_versions(ctr: Container) -> dict[str, str]:
    """{package: version} of installed packages, as the image's own dpkg-query reports them."""
    result = ctr.run("dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\\n")
    assert result.rc == 0, str(result)
    return {p[0]: p[1] for p in (ln.split() for ln in result.stdout.splitlines()) if len(p) >= 3 and p[2] == "ii"}
