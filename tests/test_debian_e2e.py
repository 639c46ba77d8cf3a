"""End to end on a real Debian image from the real archive, in a real registry, checked against apt itself.

The oracle is the same mmdebstrap build with bookworm-security enabled: the files and dpkg state that
apt produces. The patched image is read back with skopeo + umoci (which verify every digest) and
checked with dpkg --audit / --verify and syft.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from copa.oci.model import MediaType, parse_manifest
from tests.support import images
from tests.support.registry import RunningRegistry
from tests.support.trivy import UNFIXED_NAME, dpkg_versions, fixed_packages, status_d_versions, write_report

pytestmark = [pytest.mark.live, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "SOURCE_DATE_EPOCH": "1704067200"}


def copa(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "copa", *args], cwd=ROOT, env=ENV, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"copa {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def skopeo_raw(ref: str) -> bytes:
    return subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{ref}"],
                          check=True, capture_output=True).stdout


def unpack(ref: str, work: Path) -> Path:
    """Pull with skopeo into a layout and unpack with umoci, which verifies every blob digest."""
    layout = work / "layout"
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:x"],
                   check=True, capture_output=True)
    bundle = work / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:x", str(bundle)], check=True, capture_output=True)
    return bundle / "rootfs"


def paragraphs(status: bytes) -> dict[str, bytes]:
    out = {}
    for para in status.split(b"\n\n"):
        for line in para.splitlines():
            if line.startswith(b"Package: "):
                out[line[9:].decode()] = para.strip()
                break
    return out


def assert_package_files_equal(patched: Path, oracle: Path, names: list[str]) -> None:
    """Every path the oracle's dpkg lists for each package has the same content (or link) in the patch."""
    info = oracle / "var/lib/dpkg/info"
    for name in names:
        lists = [p for p in (info / f"{name}.list", info / f"{name}:amd64.list") if p.exists()]
        assert lists, f"oracle has no file list for {name}"
        for line in lists[0].read_text().splitlines():
            if line in ("", "/."):
                continue
            a, b = oracle / line.lstrip("/"), patched / line.lstrip("/")
            if a.is_symlink():
                assert b.is_symlink() and os.readlink(a) == os.readlink(b), f"{name}: symlink {line} differs"
            elif a.is_file():
                assert b.is_file() and not b.is_symlink(), f"{name}: {line} missing in the patched image"
                assert a.read_bytes() == b.read_bytes(), f"{name}: {line} differs from what apt installed"
                assert (a.stat().st_mode & 0o7777) == (b.stat().st_mode & 0o7777), f"{name}: mode of {line}"


@pytest.fixture(scope="module")
def fixes() -> dict[str, tuple[str, str]]:
    found = fixed_packages(dpkg_versions(images.debian_rootfs()), dpkg_versions(images.oracle_rootfs()))
    assert len(found) >= 3, "bookworm-security should have newer versions of several fixture packages"
    return found


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, fixes: dict[str, tuple[str, str]]) -> Path:
    return write_report(tmp_path_factory.mktemp("report") / "trivy.json", fixes)


@pytest.fixture(scope="module")
def pushed(anon_registry: RunningRegistry) -> str:
    layout, ref = images.debian_layout()
    images.push_layout(layout, ref, anon_registry.host, "app:1.0")
    return f"{anon_registry.host}/app:1.0"


@pytest.fixture(scope="module")
def patched(pushed: str, report: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    proc = copa("patch", "-i", pushed, "-r", str(report), "-t", "1.0-patched", "--push", "--json")
    result: dict[str, Any] = json.loads(proc.stdout)
    result["rootfs"] = unpack(pushed.replace(":1.0", ":1.0-patched"), tmp_path_factory.mktemp("patched"))
    return result


def test_patched_files_and_status_equal_apt(patched: dict[str, Any], fixes: dict[str, tuple[str, str]]) -> None:
    rootfs: Path = patched["rootfs"]
    oracle = images.oracle_rootfs()
    updated = {u["name"]: u["to"] for u in patched["updates"]}
    for name, (_, fixed) in fixes.items():
        assert updated.get(name) == fixed, f"{name} should be updated to {fixed}"
    assert dpkg_versions(rootfs) == dpkg_versions(oracle)
    assert_package_files_equal(rootfs, oracle, sorted(updated))
    mine = paragraphs((rootfs / "var/lib/dpkg/status").read_bytes())
    theirs = paragraphs((oracle / "var/lib/dpkg/status").read_bytes())
    for name in updated:
        assert mine[name] == theirs[name], f"status paragraph of {name} differs from dpkg's"
    assert (rootfs / "var/lib/dpkg/status").read_bytes() == (oracle / "var/lib/dpkg/status").read_bytes()


def test_dpkg_accepts_the_patched_database(patched: dict[str, Any]) -> None:
    rootfs: Path = patched["rootfs"]
    audit = subprocess.run(["dpkg", f"--root={rootfs}", "--audit"], capture_output=True, text=True)
    assert audit.returncode == 0 and audit.stdout == "", audit.stdout + audit.stderr
    verify = subprocess.run(["dpkg", f"--root={rootfs}", "--verify"], capture_output=True, text=True)
    assert verify.returncode == 0 and verify.stdout == "", verify.stdout + verify.stderr


def test_original_layers_untouched_and_labels(pushed: str, patched: dict[str, Any]) -> None:
    before = parse_manifest(skopeo_raw(pushed))
    after = parse_manifest(skopeo_raw(pushed.replace(":1.0", ":1.0-patched")))
    assert not isinstance(before, type(None))
    assert after.layers[:-1] == before.layers  # type: ignore[union-attr]
    assert len(after.layers) == len(before.layers) + 1  # type: ignore[union-attr]
    assert "sh.copa.image.patched" in after.annotations
    inspect = json.loads(subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{pushed.replace(':1.0', ':1.0-patched')}"],
        check=True, capture_output=True, text=True).stdout)
    assert inspect["Labels"]["BaseImage"] == f"{pushed}"


def test_report_summary(patched: dict[str, Any], fixes: dict[str, tuple[str, str]]) -> None:
    assert patched["unfixedInReport"] == 1
    assert UNFIXED_NAME not in {u["name"] for u in patched["updates"]}
    for u in patched["updates"]:
        if u["name"] in fixes:
            assert len(u["vulnerabilities"]) == 2


def test_syft_lists_the_new_versions(pushed: str, patched: dict[str, Any]) -> None:
    syft = shutil.which("syft") or str(Path(sys.executable).parent / "syft")
    env = {**os.environ, "SYFT_REGISTRY_INSECURE_USE_HTTP": "true", "SYFT_CHECK_FOR_APP_UPDATE": "false"}
    out = subprocess.run([syft, "scan", f"registry:{pushed.replace(':1.0', ':1.0-patched')}", "-o", "json", "-q"],
                         check=True, capture_output=True, text=True, env=env).stdout
    found = {(a["name"], a["version"]) for a in json.loads(out)["artifacts"] if a.get("type") == "deb"}
    for u in patched["updates"]:
        assert (u["name"], u["to"]) in found, f"syft does not see {u['name']} {u['to']}"


def test_repatch_does_not_pile_up_layers(pushed: str, patched: dict[str, Any], report: Path) -> None:
    target = pushed.replace(":1.0", ":1.0-patched")
    first = parse_manifest(skopeo_raw(target))
    copa("patch", "-i", target, "-r", str(report), "-t", "1.0-patched2", "--push")
    second = parse_manifest(skopeo_raw(pushed.replace(":1.0", ":1.0-patched2")))
    assert len(second.layers) == len(first.layers)  # type: ignore[union-attr]
    # Same original, same packages, same SOURCE_DATE_EPOCH: the same patch layer.
    assert second.layers[-1].digest == first.layers[-1].digest  # type: ignore[union-attr]


def test_already_up_to_date(anon_registry: RunningRegistry, report: Path) -> None:
    layout, ref = images.oracle_layout()
    images.push_layout(layout, ref, anon_registry.host, "oracle:1")
    proc = copa("patch", "-i", f"{anon_registry.host}/oracle:1", "-r", str(report), "--push")
    assert "already up to date" in proc.stdout
    listing = subprocess.run(["skopeo", "list-tags", "--tls-verify=false", f"docker://{anon_registry.host}/oracle"],
                             check=True, capture_output=True, text=True).stdout
    assert json.loads(listing)["Tags"] == ["1"]


def test_docker_v2s2_stays_v2s2_and_tar_output(anon_registry: RunningRegistry, report: Path, tmp_path: Path) -> None:
    layout, ref = images.debian_layout()
    images.push_layout(layout, ref, anon_registry.host, "app2:1.0", fmt="v2s2")
    src = f"{anon_registry.host}/app2:1.0"
    tar = tmp_path / "patched.tar"
    copa("patch", "-i", src, "-r", str(report), "--push", "--output-tar", str(tar))
    manifest = parse_manifest(skopeo_raw(f"{anon_registry.host}/app2:1.0-patched"))
    assert manifest.media_type == MediaType.DOCKER_MANIFEST
    assert all(layer.media_type == MediaType.DOCKER_LAYER_GZIP for layer in manifest.layers)  # type: ignore[union-attr]
    subprocess.run(["skopeo", "copy", "--quiet", f"docker-archive:{tar}", f"oci:{tmp_path / 'fromtar'}:x"],
                   check=True, capture_output=True)


def test_distroless_with_user_repositories(
    anon_registry: RunningRegistry, fixes: dict[str, tuple[str, str]], tmp_path: Path
) -> None:
    from tests.support.mirror import debian_mirror, security_mirror

    layout, ref = images.distroless_layout()
    images.push_layout(layout, ref, anon_registry.host, "distroless:1")
    base = status_d_versions(images.distroless_rootfs())
    wanted = {n: v for n, v in fixes.items() if n in base}
    report = write_report(tmp_path / "r.json", wanted)
    src = f"{anon_registry.host}/distroless:1"
    # Without repositories the error names the options to use.
    proc = copa("patch", "-i", src, "-r", str(report), "--push", check=False)
    assert proc.returncode == 7 and "--repository" in proc.stderr and "Traceback" not in proc.stderr
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    copa("patch", "-i", src, "-r", str(report), "--push", "-t", "1-patched",
         "--repository", f"deb {debian_mirror()} bookworm main",
         "--repository", f"deb {security_mirror()} bookworm-security main", "--keyring", keyring)
    rootfs = unpack(f"{src}-patched", tmp_path)
    after = status_d_versions(rootfs)
    for name, (_, fixed) in wanted.items():
        assert after[name] == fixed
    assert not (rootfs / "var/lib/dpkg/status").exists()
    assert not (rootfs / "var/lib/dpkg/info").exists()
    assert_package_files_equal(rootfs, images.oracle_rootfs(), sorted(wanted))
