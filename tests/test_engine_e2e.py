"""The image engine through the real CLI (`python -m copa patch`): multi-platform indexes, every output,
registry faults and auth. Real registries (docker-registry), skopeo and umoci are the oracles; every produced
image also passes tests/support/validate.py.

The report names one package (the smallest fix available) so each patch takes seconds; the package work
itself is tested in test_debian_e2e.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from copa.oci.archive import ArchiveSource
from copa.oci.image import Source
from copa.oci.layout import LayoutSource
from copa.oci.model import Index, Manifest, MediaType, Platform, parse_manifest
from copa.oci.reference import Reference
from copa.oci.registry import RegistryClient, RegistryOptions, RegistrySource
from tests.support import images
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.registry import PASSWORD, USER, RunningRegistry, free_port
from tests.support.trivy import dpkg_versions, fixed_packages, write_report
from tests.support.validate import validate

pytestmark = [pytest.mark.live, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "SOURCE_DATE_EPOCH": "1704067200"}
AMD64, ARM64 = Platform("linux", "amd64"), Platform("linux", "arm64")
# Small fixes first: the report names one package so a patch run takes seconds.
PREFERRED = ("libexpat1", "libssh2-1", "liblzma5", "libpcre2-8-0")


def copa(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "copa", *args], cwd=ROOT, env=env or ENV,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"copa {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def run(*args: str | Path) -> str:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed ({proc.returncode}): {proc.stderr.strip()}"
    return proc.stdout


def error_lines(stderr: str) -> list[str]:
    """The error part of stderr: progress lines are 'copa: <step>', errors 'copa: error: ...'."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("copa: error") or "internal error" in line]


def registry_source(ref: str, auth_file: Path | None = None) -> Source:
    client = RegistryClient(RegistryOptions(auth_file=str(auth_file) if auth_file else None))
    return RegistrySource(client, Reference.parse(ref))


def raw_manifest(ref: str, *creds: str) -> Manifest | Index:
    return parse_manifest(run("skopeo", "inspect", "--tls-verify=false", *creds, "--raw", f"docker://{ref}").encode())


def tags(registry: str, repo: str) -> list[str]:
    out = json.loads(run("skopeo", "list-tags", "--tls-verify=false", f"docker://{registry}/{repo}"))
    return list(out["Tags"] or [])


def umoci_rootfs(layout: Path, name: str, work: Path) -> Path:
    run("umoci", "unpack", "--image", f"{layout}:{name}", work / "bundle")
    return work / "bundle" / "rootfs"


# -- shared fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fix() -> tuple[str, str, str]:
    """(package, installed, fixed) of one package bookworm-security fixes in the fixture image."""
    fixes = fixed_packages(dpkg_versions(images.debian_rootfs()), dpkg_versions(images.oracle_rootfs()))
    name = next((n for n in PREFERRED if n in fixes), None) or sorted(fixes)[0]
    return name, *fixes[name]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, fix: tuple[str, str, str]) -> Path:
    name, old, new = fix
    return write_report(tmp_path_factory.mktemp("report") / "trivy.json", {name: (old, new)})


@pytest.fixture(scope="module")
def app(anon_registry: RunningRegistry) -> str:
    layout, ref = images.debian_layout()
    images.push_layout(layout, ref, anon_registry.host, "engine/app:1.0")
    return f"{anon_registry.host}/engine/app:1.0"


def assert_patched(rootfs: Path, fix: tuple[str, str, str]) -> None:
    name, _, fixed = fix
    assert dpkg_versions(rootfs)[name] == fixed


# -- multi-platform index -----------------------------------------------------------------------------


def _put_blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return digest, len(data)


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def build_multi_layout(dest: Path) -> tuple[Path, str]:
    """A layout whose ref "multi" is an OCI index: the Debian image as linux/amd64, a linux/arm64 manifest, and a
    buildx-style attestation manifest (platform unknown/unknown) for the amd64 image.

    The arm64 manifest reuses the amd64 layers with a config saying arm64: not a runnable image, but the
    engine never looks inside other platforms' layers, which is exactly what this checks."""
    layout_dir, ref = images.debian_layout()
    layout = images.copy_layout(layout_dir, dest)
    source = LayoutSource(layout, ref)
    amd_desc = source.root_descriptor()
    amd = source.root()
    assert isinstance(amd, Manifest)
    with source.open_blob(amd.config) as f:
        config = json.loads(f.read())
    config["architecture"] = "arm64"
    config["variant"] = "v8"
    cfg_digest, cfg_size = _put_blob(layout, _dump(config))
    arm_doc = json.loads(amd.raw)
    arm_doc["config"] = {**arm_doc["config"], "digest": cfg_digest, "size": cfg_size}
    arm_digest, arm_size = _put_blob(layout, _dump(arm_doc))
    statement = {"_type": "https://in-toto.io/Statement/v0.1", "predicateType": "https://spdx.dev/Document",
                 "subject": [{"name": "app", "digest": {"sha256": amd_desc.digest.hex}}], "predicate": {}}
    st_digest, st_size = _put_blob(layout, _dump(statement))
    att_config = {"architecture": "unknown", "os": "unknown", "config": {},
                  "rootfs": {"type": "layers", "diff_ids": [st_digest]}}
    ac_digest, ac_size = _put_blob(layout, _dump(att_config))
    att_doc = {"schemaVersion": 2, "mediaType": MediaType.OCI_MANIFEST,
               "config": {"mediaType": MediaType.OCI_CONFIG, "digest": ac_digest, "size": ac_size},
               "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": st_digest, "size": st_size,
                           "annotations": {"in-toto.io/predicate-type": "https://spdx.dev/Document"}}]}
    att_digest, att_size = _put_blob(layout, _dump(att_doc))
    index_doc = {"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": [
        {"mediaType": MediaType.OCI_MANIFEST, "digest": str(amd_desc.digest), "size": amd_desc.size,
         "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": MediaType.OCI_MANIFEST, "digest": arm_digest, "size": arm_size,
         "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
        {"mediaType": MediaType.OCI_MANIFEST, "digest": att_digest, "size": att_size,
         "platform": {"architecture": "unknown", "os": "unknown"},
         "annotations": {"vnd.docker.reference.digest": str(amd_desc.digest),
                         "vnd.docker.reference.type": "attestation-manifest"}},
    ]}
    idx_digest, idx_size = _put_blob(layout, _dump(index_doc))
    top = {"schemaVersion": 2, "manifests": [{"mediaType": MediaType.OCI_INDEX, "digest": idx_digest,
                                              "size": idx_size,
                                              "annotations": {"org.opencontainers.image.ref.name": "multi"}}]}
    (layout / "index.json").write_bytes(_dump(top))
    return layout, "multi"


@pytest.fixture(scope="module")
def multi(anon_registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> str:
    layout, name = build_multi_layout(tmp_path_factory.mktemp("multi") / "layout")
    target = f"{anon_registry.host}/engine/multi:1"
    run("skopeo", "copy", "--quiet", "--all", "--dest-tls-verify=false", f"oci:{layout}:{name}", f"docker://{target}")
    return target


@pytest.fixture(scope="module")
def multi_patched(multi: str, report: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("multi-out") / "layout"
    proc = copa("patch", "-i", multi, "-r", str(report), "--platform", "linux/amd64", "-t", "1-patched",
                "--push", "--oci-dir", str(out), "--json")
    result: dict[str, Any] = json.loads(proc.stdout)
    result["oci_dir"] = out
    result["ref"] = multi.replace(":1", ":1-patched")
    return result


def _entries(index: Manifest | Index) -> dict[str, Any]:
    assert isinstance(index, Index), f"expected an index, got {index.media_type}"
    return {str(e.platform): e for e in index.manifests}


def test_index_patch_replaces_only_the_chosen_platform(multi: str, multi_patched: dict[str, Any]) -> None:
    before, after = raw_manifest(multi), raw_manifest(multi_patched["ref"])
    assert isinstance(after, Index) and after.media_type == MediaType.OCI_INDEX
    assert multi_patched["digest"] == str(after.digest)
    old, new = _entries(before), _entries(after)
    assert list(old) == ["linux/amd64", "linux/arm64/v8", "unknown/unknown"]
    # The attestation described the unpatched amd64 image: it is dropped rather than left to attest falsely.
    assert list(new) == ["linux/amd64", "linux/arm64/v8"]
    assert new["linux/arm64/v8"] == old["linux/arm64/v8"], "the arm64 entry must be kept byte for byte"
    assert new["linux/amd64"].digest != old["linux/amd64"].digest
    patched = raw_manifest(f"{multi.rsplit(':', 1)[0]}@{new['linux/amd64'].digest}")
    original = raw_manifest(f"{multi.rsplit(':', 1)[0]}@{old['linux/amd64'].digest}")
    assert isinstance(patched, Manifest) and isinstance(original, Manifest)
    assert patched.layers[:-1] == original.layers and len(patched.layers) == len(original.layers) + 1
    assert new["linux/amd64"].size == len(patched.raw)
    assert "sh.copa.image.patched" in after.annotations
    # The original index is untouched.
    assert raw_manifest(multi).raw == before.raw


def test_index_result_copies_and_validates(multi_patched: dict[str, Any], tmp_path: Path,
                                           fix: tuple[str, str, str]) -> None:
    ref = multi_patched["ref"]
    run("skopeo", "copy", "--quiet", "--all", "--src-tls-verify=false", f"docker://{ref}", f"oci:{tmp_path / 'c'}:x")
    source = registry_source(ref)
    validate(source, AMD64)
    validate(source, ARM64)
    # skopeo picks the amd64 image out of the index on its own; umoci unpacks it: the fix is in.
    run("skopeo", "copy", "--quiet", "--src-tls-verify=false", "--override-arch=amd64", f"docker://{ref}",
        f"oci:{tmp_path / 'one'}:x")
    assert_patched(umoci_rootfs(tmp_path / "one", "x", tmp_path), fix)


def test_index_to_oci_dir(multi_patched: dict[str, Any], tmp_path: Path) -> None:
    out: Path = multi_patched["oci_dir"]
    source = LayoutSource(out, "1-patched")
    root = source.root()
    assert isinstance(root, Index)
    assert str(root.digest) == multi_patched["digest"], "the layout and the registry must hold the same index"
    validate(source, AMD64)
    validate(source, ARM64)
    run("skopeo", "copy", "--quiet", "--all", f"oci:{out}:1-patched", f"oci:{tmp_path / 'c'}:x")


# -- outputs --------------------------------------------------------------------------------------------


def _check_outputs(layout: Path, name: str, tar: Path, fix: tuple[str, str, str], work: Path) -> dict[str, Any]:
    """skopeo reads both outputs, umoci unpacks the layout, both pass validate(); returns the archive's manifest."""
    run("skopeo", "inspect", f"oci:{layout}:{name}")
    validate(LayoutSource(layout, name))
    validate(ArchiveSource(tar))
    run("skopeo", "copy", "--quiet", f"docker-archive:{tar}", f"oci:{work / 'fromtar'}:x")
    assert_patched(umoci_rootfs(layout, name, work), fix)
    # The layout and the archive hold the same image: same config, same layers.
    layout_manifest = LayoutSource(layout, name).root()
    archive_manifest = ArchiveSource(tar).root()
    assert isinstance(layout_manifest, Manifest) and isinstance(archive_manifest, Manifest)
    assert layout_manifest.config.digest == archive_manifest.config.digest
    return _archive_entry(tar)


def _archive_entry(tar: Path) -> dict[str, Any]:
    """The one manifest.json entry, read with GNU tar (skopeo inspect does not show an archive's RepoTags)."""
    entries: list[dict[str, Any]] = json.loads(run("tar", "-xOf", tar, "manifest.json"))
    assert len(entries) == 1
    return entries[0]


def test_outputs_from_a_registry_image(app: str, report: Path, tmp_path: Path, fix: tuple[str, str, str]) -> None:
    layout, tar = tmp_path / "out", tmp_path / "out.tar"
    copa("patch", "-i", app, "-r", str(report), "--oci-dir", str(layout), "--output-tar", str(tar))
    entry = _check_outputs(layout, "1.0-patched", tar, fix, tmp_path)
    assert entry["RepoTags"] == [app.replace(":1.0", ":1.0-patched")]
    assert "1.0-patched" not in tags(app.split("/")[0], "engine/app"), "nothing is pushed without --push"


def test_outputs_from_an_oci_layout(report: Path, tmp_path: Path, fix: tuple[str, str, str]) -> None:
    src, ref = images.debian_layout()
    before = (src / "index.json").read_bytes()
    layout, tar = tmp_path / "out", tmp_path / "out.tar"
    copa("patch", "-i", f"oci:{src}:{ref}", "-r", str(report), "--oci-dir", str(layout), "--output-tar", str(tar))
    entry = _check_outputs(layout, f"{ref}-patched", tar, fix, tmp_path)
    # No repository to name the image by: the archive is untagged, as skopeo writes one.
    assert entry["RepoTags"] == []
    assert (src / "index.json").read_bytes() == before
    # A full -t names it.
    tar2 = tmp_path / "named.tar"
    copa("patch", "-i", f"oci:{src}:{ref}", "-r", str(report), "-t", "example.com/team/app:2", "--output-tar",
         str(tar2))
    assert _archive_entry(tar2)["RepoTags"] == ["example.com/team/app:2"]
    # skopeo finds the image by that name.
    run("skopeo", "inspect", f"docker-archive:{tar2}:example.com/team/app:2")


def test_docker_archive_as_input(report: Path, tmp_path: Path, fix: tuple[str, str, str]) -> None:
    src, ref = images.debian_layout()
    archive = tmp_path / "in.tar"
    run("skopeo", "copy", "--quiet", f"oci:{src}:{ref}", f"docker-archive:{archive}:team/app:3")
    layout, tar = tmp_path / "out", tmp_path / "out.tar"
    copa("patch", "-i", f"docker-archive:{archive}", "-r", str(report), "--oci-dir", str(layout),
         "--output-tar", str(tar))
    _check_outputs(layout, "latest-patched", tar, fix, tmp_path)
    original = ArchiveSource(archive).root()
    patched = LayoutSource(layout, "latest-patched").root()
    assert isinstance(original, Manifest) and isinstance(patched, Manifest)
    assert len(patched.layers) == len(original.layers) + 1


def test_no_output_flag_is_a_usage_error(app: str, report: Path) -> None:
    started = time.monotonic()
    proc = copa("patch", "-i", app, "-r", str(report), check=False)
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and all(flag in lines[0] for flag in ("--push", "--oci-dir", "--output-tar")), lines
    assert time.monotonic() - started < 10


# -- registry faults ------------------------------------------------------------------------------------


@pytest.fixture
def proxy(anon_registry: RunningRegistry) -> Iterator[FaultProxy]:
    p = FaultProxy(anon_registry.host).start()
    yield p
    p.stop()


def test_transient_upload_failures_are_retried(app: str, report: Path, proxy: FaultProxy,
                                              anon_registry: RunningRegistry) -> None:
    proxy.add(Fault("500", r"/engine/app/blobs/uploads/", "POST", count=1))
    proxy.add(Fault("429", r"/engine/app/blobs/uploads/.+digest=", "PUT", count=1, retry_after=1))
    via_proxy = app.replace(anon_registry.host, proxy.host)
    copa("patch", "-i", via_proxy, "-r", str(report), "--push", "-t", "1.0-retried")
    statuses = [(m, s) for m, p, s in proxy.log if "/blobs/uploads/" in p]
    assert ("POST", 500) in statuses and ("PUT", 429) in statuses, statuses
    assert sum(1 for m, s in statuses if m == "PUT" and s == 201) >= 2, "both new blobs must land after the faults"
    target = app.replace(":1.0", ":1.0-retried")
    validate(registry_source(target))
    patched = raw_manifest(target)
    assert isinstance(patched, Manifest)
    assert len(patched.layers) == 2


def test_failing_manifest_put_leaves_no_tag(app: str, report: Path, proxy: FaultProxy,
                                            anon_registry: RunningRegistry) -> None:
    proxy.add(Fault("500", r"/manifests/", "PUT", count=1000))
    via_proxy = app.replace(anon_registry.host, proxy.host)
    proc = copa("patch", "-i", via_proxy, "-r", str(report), "--push", "-t", "1.0-broken", check=False)
    assert proc.returncode == 4, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "500" in lines[0] and "PUT" in lines[0] and "engine/app" in lines[0], lines
    puts = [p for m, p, s in proxy.log if m == "PUT" and "/manifests/" in p]
    assert len(puts) > 1, "a 500 on the manifest PUT should be retried before giving up"
    assert "1.0-broken" not in tags(anon_registry.host, "engine/app")


def test_dead_registry_fails_fast() -> None:
    dead = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = copa("patch", "-i", f"{dead}/engine/app:1.0", "--push", check=False)
    elapsed = time.monotonic() - started
    assert proc.returncode == 4, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and dead in lines[0] and "refused" in lines[0], lines
    assert elapsed < 20, f"giving up on a dead registry took {elapsed:.1f}s"


# -- auth -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_app(basic_registry: RunningRegistry) -> str:
    layout, ref = images.debian_layout()
    target = f"{basic_registry.host}/engine/app:1.0"
    run("skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"--dest-creds={USER}:{PASSWORD}",
        f"oci:{layout}:{ref}", f"docker://{target}")
    return target


def _auth_file(path: Path, host: str, password: str) -> Path:
    token = base64.b64encode(f"{USER}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return path


def test_basic_auth_from_registry_auth_file(private_app: str, basic_registry: RunningRegistry, report: Path,
                                            tmp_path: Path) -> None:
    auth = _auth_file(tmp_path / "config.json", basic_registry.host, PASSWORD)
    copa("patch", "-i", private_app, "-r", str(report), "--push", env={**ENV, "REGISTRY_AUTH_FILE": str(auth)})
    target = private_app.replace(":1.0", ":1.0-patched")
    inspect = json.loads(run("skopeo", "inspect", "--tls-verify=false", f"--creds={USER}:{PASSWORD}",
                             f"docker://{target}"))
    assert inspect["Labels"]["BaseImage"] == private_app
    validate(registry_source(target, auth))


def test_wrong_password_is_one_line_exit_4(private_app: str, basic_registry: RunningRegistry, report: Path,
                                           tmp_path: Path) -> None:
    auth = _auth_file(tmp_path / "config.json", basic_registry.host, "not-the-password")
    started = time.monotonic()
    proc = copa("patch", "-i", private_app, "-r", str(report), "--push", check=False,
                env={**ENV, "REGISTRY_AUTH_FILE": str(auth)})
    assert proc.returncode == 4, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and basic_registry.host in lines[0], lines
    assert time.monotonic() - started < 15
