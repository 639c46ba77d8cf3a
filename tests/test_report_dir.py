"""`-r DIR`: one report per platform. Reports made from a real multi-platform index in docker-registry (Syft's view
of each platform for Grype's source, the real config blobs for Trivy's ImageConfig) must map onto the index's own
platforms; then the directory rules and their errors, and the platform names scanners write."""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from copa.errors import ReportError
from copa.oci.model import Platform
from copa.report import Report, load_report, load_reports
from copa.report.platform import normalise_platform
from tests.support.registry import RunningRegistry

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures" / "reports"
GRYPE_AMD64 = FIXTURES / "grype" / "grype-debian-mixed.json"
GRYPE_ARM64 = FIXTURES / "grype" / "grype-debian-12-arm64.json"
TRIVY_AMD64 = FIXTURES / "trivy-debian-mixed.json"
V1ALPHA1 = FIXTURES / "v1alpha1-debian.json"  # amd64
V1ALPHA2 = FIXTURES / "v1alpha2-debian.json"  # arm64/v8

# The index the real-tool test pushes: (architecture, variant) of each image in it. Two arm variants, so a report
# whose variant got lost (linux/arm matches both) fails the one-match check.
INDEX_PLATFORMS = [("amd64", ""), ("arm64", "v8"), ("arm", "v7"), ("arm", "v6")]


# -- a real multi-platform index, seen by Syft and skopeo -----------------------------------------------------------

def _blob(root: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def _image(root: Path, arch: str, variant: str) -> dict[str, Any]:
    """One Debian-looking image: os-release and a dpkg status naming tar for this architecture."""
    files = {"etc/os-release": b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n',
             "var/lib/dpkg/status": (f"Package: tar\nStatus: install ok installed\nArchitecture: {arch}\n"
                                     f"Version: 1.34+dfsg-1.2\n\n").encode()}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    diff_id = "sha256:" + hashlib.sha256(buf.getvalue()).hexdigest()
    layer, layer_size = _blob(root, gzip.compress(buf.getvalue(), mtime=0))
    platform = {"architecture": arch, "os": "linux", **({"variant": variant} if variant else {})}
    config, config_size = _blob(root, json.dumps({**platform, "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                                                  "config": {}}).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config,
                           "size": config_size},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer,
                            "size": layer_size}]}
    digest, size = _blob(root, json.dumps(manifest).encode())
    return {"mediaType": manifest["mediaType"], "digest": digest, "size": size, "platform": platform}


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory, anon_registry: RunningRegistry) -> tuple[str, str]:
    """(the multi-platform index, a single-platform arm64/v8 image) in docker-registry."""
    root = tmp_path_factory.mktemp("index-layout")
    manifests = [_image(root, a, v) for a, v in INDEX_PLATFORMS]
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
    digest, size = _blob(root, json.dumps(index).encode())
    arm64 = {k: v for k, v in manifests[INDEX_PLATFORMS.index(("arm64", "v8"))].items() if k != "platform"}
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": index["mediaType"], "digest": digest, "size": size,
         "annotations": {"org.opencontainers.image.ref.name": "app"}},
        {**arm64, "annotations": {"org.opencontainers.image.ref.name": "single"}}]}))
    refs = f"{anon_registry.host}/reports/app:1", f"{anon_registry.host}/reports/single:1"
    for name, ref in zip(("app", "single"), refs, strict=True):
        subprocess.run(["skopeo", "copy", "--all", "--quiet", "--dest-tls-verify=false", f"oci:{root}:{name}",
                        f"docker://{ref}"], check=True, capture_output=True)
    return refs


@pytest.fixture(scope="module")
def index_ref(pushed: tuple[str, str]) -> str:
    return pushed[0]


def _skopeo(*args: str) -> Any:
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", *args], check=True, capture_output=True).stdout
    return json.loads(out)


def _index_platforms(ref: str) -> list[Platform]:
    index = _skopeo("--raw", f"docker://{ref}")
    return [Platform(m["platform"]["os"], m["platform"]["architecture"], m["platform"].get("variant", ""))
            for m in index["manifests"]]


def _syft(ref: str, platform: str | None) -> dict[str, Any]:
    syft = shutil.which("syft") or str(Path(sys.executable).parent / "syft")
    env = {**os.environ, "SYFT_REGISTRY_INSECURE_USE_HTTP": "true", "SYFT_CHECK_FOR_APP_UPDATE": "false"}
    out = subprocess.run([syft, "scan", f"registry:{ref}", *(["--platform", platform] if platform else []),
                          "-o", "json", "-q"], check=True, capture_output=True, text=True, env=env).stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


def _grype_from_syft(sbom: dict[str, Any]) -> dict[str, Any]:
    """What Grype writes for this SBOM's image, with one fixed vulnerability per OS package: Grype's source.target
    is Syft's image source metadata and its distro Syft's os-release, unchanged."""
    matches = [{
        "vulnerability": {"id": "CVE-2023-39804", "namespace": "debian:distro:debian:12", "urls": [], "cvss": [],
                          "fix": {"versions": ["1.34+dfsg-1.2+deb12u1"], "state": "fixed"}, "advisories": []},
        "relatedVulnerabilities": [], "matchDetails": [],
        "artifact": {k: a[k] for k in ("id", "name", "version", "type", "locations", "purl")},
    } for a in sbom["artifacts"] if a["type"] == "deb"]
    return {"matches": matches, "source": {"type": "image", "target": sbom["source"]["metadata"]},
            "distro": {"name": sbom["distro"]["id"], "version": sbom["distro"]["versionID"], "idLike": []},
            "descriptor": {"name": "grype", "version": "0.87.0"}}


def _trivy_from_config(config: dict[str, Any]) -> dict[str, Any]:
    """A Trivy report whose ImageConfig is the image's real config blob, as Trivy copies it."""
    doc: dict[str, Any] = json.loads(TRIVY_AMD64.read_text())
    doc["Metadata"]["ImageConfig"] = config
    return doc


def _matching(report: Report, platforms: list[Platform]) -> list[Platform]:
    assert report.platform is not None, report.source
    return [p for p in platforms if report.platform.matches(p)]


def test_syft_and_config_reports_map_onto_the_index(index_ref: str, tmp_path: Path) -> None:
    platforms = _index_platforms(index_ref)
    assert [(p.architecture, p.variant) for p in platforms] == INDEX_PLATFORMS
    grype_dir, trivy_dir = tmp_path / "grype", tmp_path / "trivy"
    grype_dir.mkdir()
    trivy_dir.mkdir()
    for p in platforms:
        name = f"{p.architecture}{p.variant}.json"
        (grype_dir / name).write_text(json.dumps(_grype_from_syft(_syft(index_ref, str(p)))))
        config = _skopeo("--config", "--raw", "--override-arch", p.architecture,
                         *(["--override-variant", p.variant] if p.variant else []), f"docker://{index_ref}")
        (trivy_dir / name).write_text(json.dumps(_trivy_from_config(config)))
    for directory, kind in ((grype_dir, "grype"), (trivy_dir, "trivy")):
        reports = load_reports(directory)
        assert [r.format for r in reports] == [kind] * len(platforms)
        # each report is taken for exactly the platform it was made from, and no two for the same one
        for report, platform in zip(reports, sorted(platforms, key=lambda p: f"{p.architecture}{p.variant}.json"),
                                    strict=True):
            assert _matching(report, platforms) == [platform], (kind, report.source, report.platform)
        assert load_reports(directory, kind) == reports


def test_single_platform_image_is_named_by_its_config(pushed: tuple[str, str], tmp_path: Path) -> None:
    """Syft (so Grype) writes the platform it asked for in source.target.architecture: the host's for a
    single-platform image. The image's own config, which Syft keeps beside it, is what the report must say."""
    sbom = _syft(pushed[1], None)
    config = _skopeo("--config", "--raw", f"docker://{pushed[1]}")
    truth = Platform(config["os"], config["architecture"], config.get("variant", ""))
    assert truth == Platform("linux", "arm64", "v8")
    path = tmp_path / "grype.json"
    path.write_text(json.dumps(_grype_from_syft(sbom)))
    report = load_report(path)
    assert report.platform is not None and report.platform.matches(truth)
    assert (report.arch, report.variant) == ("arm64", "v8")
    # without the config, the target's own field is all there is (and Syft's says the host's architecture)
    target = {k: v for k, v in sbom["source"]["metadata"].items() if k != "config"}
    path.write_text(json.dumps({**_grype_from_syft(sbom), "source": {"type": "image", "target": target}}))
    assert load_report(path).arch == sbom["source"]["metadata"]["architecture"]


# -- directory rules ------------------------------------------------------------------------------------------------

def _arm_v7_trivy() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(TRIVY_AMD64.read_text())
    doc["Metadata"]["ImageConfig"] = {"architecture": "arm", "variant": "v7", "os": "linux"}
    return doc


@pytest.fixture
def mixed_dir(tmp_path: Path) -> Path:
    d = tmp_path / "reports"
    d.mkdir()
    shutil.copy(GRYPE_AMD64, d / "amd64.json")
    shutil.copy(V1ALPHA2, d / "arm64.json")
    (d / "armv7.json").write_text(json.dumps(_arm_v7_trivy()))
    (d / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (d / "old").mkdir()
    shutil.copy(GRYPE_AMD64, d / "old" / "amd64.json")  # a subdirectory is not searched
    return d


def test_directory_of_mixed_formats(mixed_dir: Path) -> None:
    reports = load_reports(mixed_dir)
    assert [Path(r.source).name for r in reports] == ["amd64.json", "arm64.json", "armv7.json"]
    assert [r.format for r in reports] == ["grype", "v1alpha2", "trivy"]
    assert [str(r.platform) for r in reports] == ["linux/amd64", "linux/arm64", "linux/arm/v7"]
    # each is what load_report gives for the file alone
    assert reports == tuple(load_report(r.source) for r in reports)


def test_a_file_gives_one_report_without_needing_a_platform(tmp_path: Path) -> None:
    doc = json.loads(V1ALPHA1.read_text())
    del doc["metadata"]["config"]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    (report,) = load_reports(path)
    assert report.platform is None and report == load_report(path)


def _dir(tmp_path: Path, files: dict[str, bytes | Path]) -> Path:
    d = tmp_path / "dir"
    d.mkdir(parents=True)
    for name, content in files.items():
        (d / name).write_bytes(content.read_bytes() if isinstance(content, Path) else content)
    return d


def test_errors_name_the_files(tmp_path: Path) -> None:
    no_arch = json.loads(V1ALPHA1.read_text())
    del no_arch["metadata"]["config"]
    trivy_arm64 = copy.deepcopy(_arm_v7_trivy())
    trivy_arm64["Metadata"]["ImageConfig"] = {"architecture": "aarch64", "os": "linux"}
    cases: list[tuple[dict[str, bytes | Path], str]] = [
        ({}, "dir: report directory has no report files: put one report per platform in it"),
        ({".hidden.json": GRYPE_AMD64}, "report directory has no report files"),
        ({"a.json": GRYPE_AMD64, "b.json": json.dumps(no_arch).encode()},
         "dir/b.json: report names no architecture; each report in a directory must name its platform"),
        ({"a.json": TRIVY_AMD64, "b.json": GRYPE_AMD64},
         "dir/a.json and {d}/b.json are both reports for linux/amd64: keep one report per platform"),
        # arm64/v8 from the manifest and aarch64 from Trivy are the same platform
        ({"a.json": V1ALPHA2, "b.json": json.dumps(trivy_arm64).encode()},
         "dir/a.json and {d}/b.json are both reports for linux/arm64"),
        ({"a.json": GRYPE_AMD64, "b.json": b"{not json"}, "dir/b.json: not valid JSON at line 1 column 2"),
    ]
    for files, message in cases:
        d = _dir(tmp_path, files)
        with pytest.raises(ReportError) as info:
            load_reports(d)
        text = str(info.value)
        assert message.format(d=d) in text and info.value.exit_code == 3 and "\n" not in text, text
        shutil.rmtree(d)


def test_unreadable_entries(tmp_path: Path) -> None:
    d = _dir(tmp_path, {"a.json": GRYPE_AMD64})
    (d / "b.json").symlink_to(tmp_path / "gone.json")
    with pytest.raises(ReportError, match=r"dir/b.json: is a link to nothing: a report directory holds report files"):
        load_reports(d)
    (d / "b.json").unlink()
    os.mkfifo(d / "c.json")
    with pytest.raises(ReportError, match=r"dir/c.json: is not a regular file"):
        load_reports(d)  # and it must not block opening the FIFO
    (d / "c.json").unlink()
    (d / "d.json").symlink_to(GRYPE_ARM64)  # a link to a report is a report
    assert [str(r.platform) for r in load_reports(d)] == ["linux/amd64", "linux/arm64"]


def test_plugin_runs_once_per_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    plugin = bin_dir / "copa-echo"
    # prints the manifest it is given, and logs each call
    plugin.write_text(f'#!/bin/sh\necho "$1" >> {tmp_path}/calls\nexec cat "$1"\n')
    plugin.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    d = _dir(tmp_path, {"x.json": V1ALPHA1, "y.json": V1ALPHA2, ".skip": b"junk"})
    reports = load_reports(d, "echo")
    assert (tmp_path / "calls").read_text().splitlines() == [str(d / "x.json"), str(d / "y.json")]
    assert [(Path(r.source).name, str(r.platform)) for r in reports] == [("x.json", "linux/amd64"),
                                                                        ("y.json", "linux/arm64")]
    with pytest.raises(ReportError, match=r"is Grype JSON, but -s native expects"):
        load_reports(_dir(tmp_path / "n", {"a.json": GRYPE_AMD64}), "native")


# -- platform names -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("arch", "variant", "os_name", "expected"), [
    ("amd64", None, None, "linux/amd64"), ("x86_64", None, "linux", "linux/amd64"),
    ("arm64", "v8", None, "linux/arm64"), ("aarch64", None, None, "linux/arm64"), ("arm64", "8", None, "linux/arm64"),
    ("arm", "v7", None, "linux/arm/v7"), ("armhf", None, None, "linux/arm/v7"), ("armel", None, None, "linux/arm/v6"),
    ("arm", "v6", None, "linux/arm/v6"), ("armv7l", None, None, "linux/arm/v7"), ("arm/v7", None, None, "linux/arm/v7"),
    ("linux/arm64/v8", None, None, "linux/arm64"), ("i686", None, None, "linux/386"),
    ("ppc64el", None, None, "linux/ppc64le"), ("s390x", None, None, "linux/s390x"),
    ("riscv64", None, None, "linux/riscv64"), ("AMD64", None, "Linux", "linux/amd64"),
    ("amd64", "v3", None, "linux/amd64/v3"), ("", None, None, None), ("  ", "v8", None, None), (None, None, None, None),
])
def test_platform_names(arch: str | None, variant: str | None, os_name: str | None, expected: str | None) -> None:
    platform = normalise_platform(arch, variant, os_name)
    assert (str(platform) if platform else None) == expected
    if platform is not None:
        assert platform == Platform.parse(expected or "")
