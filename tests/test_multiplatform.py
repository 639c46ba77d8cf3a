"""Multi-platform patching end to end: a real index (amd64, arm64, arm/v7, a scratch ppc64le, attestations) in a
real registry, patched by the CLI, read back with skopeo and umoci, and checked with the host's dpkg, apt, file(1)
and buildah, never with copa's own readers.

The foreign roots come from fixtures/build_foreign.py (nothing foreign executed); their builder is itself checked
here against mmdebstrap's real dpkg (the same method run for amd64 must give the same database byte for byte).
Each scenario patches once (module-scoped) and many tests look at that one result.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import images
from tests.support import multiplatform as mp
from tests.support.buildah import Buildah, buildah_store  # noqa: F401  (pytest fixture)
from tests.support.multiplatform import (
    ARM64,
    ARMHF,
    ATTESTED,
    DEBIAN_PLATFORMS,
    FOREIGN_PLATFORMS,
    SCRATCH,
    PlatformInfo,
)
from tests.support.registry import RunningRegistry

pytestmark = [pytest.mark.live, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "SOURCE_DATE_EPOCH": "1704067200"}
REPO = "multiplatform"
SOURCE_TAG = "1.0"
ATTESTATION = "attestation-manifest"


def copa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "copa", *args], cwd=ROOT, env=ENV, capture_output=True, text=True)


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"copa exited {proc.returncode}: {proc.stderr[-3000:]}"
    return proc


# ------------------------------------------------------------------------------------------ the fixture builder


def test_builder_writes_the_database_dpkg_writes() -> None:
    """The foreign method run for amd64, against mmdebstrap's bookworm image (real dpkg, same suite): every status
    paragraph, every info file and every packaged file of the packages both have are identical."""
    ours = Path(mp.builder.rootfs(mp.builder.AMD64))
    theirs = images.debian_rootfs()
    ours_db, theirs_db = mp.dpkg_db_files(ours), mp.dpkg_db_files(theirs)
    ours_pkgs = {(p, a) for p, a in mp.installed(ours)}
    same_version = {k for k, v in mp.installed(ours).items() if mp.installed(theirs).get(k) == v}
    assert len(same_version) >= 10, f"the two builds share too few packages: {sorted(ours_pkgs)}"
    compared = 0
    for key, data in ours_db.items():
        pkg = key.split(":")[1] if key.startswith("status:") else key.removeprefix("info/").split(".")[0].split(":")[0]
        if not any(p == pkg for p, _ in same_version):
            continue
        assert theirs_db.get(key) == data, f"{key} differs from what dpkg wrote"
        compared += 1
    assert compared >= 40
    assert sorted(p.name for p in ours.iterdir() if p.is_symlink()) == \
        sorted(p.name for p in theirs.iterdir() if p.is_symlink())  # the merged-/usr links
    # What the maintainer scripts of base-files and mawk did there, configure_effects did here.
    for path in ("var/run", "var/lock", "var/spool/mail", "usr/local/man", "etc/dpkg/origins/default",
                 "usr/bin/awk", "etc/alternatives/awk", "etc/alternatives/nawk.1.gz"):
        assert os.readlink(ours / path) == os.readlink(theirs / path), path
    for path in ("var/lib/dpkg/alternatives/awk", "etc/profile", "root/.profile", "usr/share/info/dir"):
        assert (ours / path).read_bytes() == (theirs / path).read_bytes(), path
    for path in ("var/mail", "run/lock", "var/log/wtmp", "var/log/btmp", "opt", "usr/local/src"):
        sa, sb = (theirs / path).stat(), (ours / path).stat()
        assert (sa.st_mode, sa.st_uid, sa.st_gid) == (sb.st_mode, sb.st_uid, sb.st_gid), path
    for package, _arch in same_version:
        stem = next(p for p in (ours / "var/lib/dpkg/info").glob(f"{package}*.list")
                    if p.name.split(".list")[0].split(":")[0] == package)
        for line in stem.read_text().splitlines():
            if line == "/.":
                continue
            a, b = theirs / line.lstrip("/"), ours / line.lstrip("/")
            assert a.is_symlink() == b.is_symlink(), line
            if a.is_symlink():
                assert os.readlink(a) == os.readlink(b), line
            elif a.is_file():
                assert a.read_bytes() == b.read_bytes(), line
                sa, sb = a.stat(), b.stat()
                assert (sa.st_mode, sa.st_uid, sa.st_gid) == (sb.st_mode, sb.st_uid, sb.st_gid), line


@pytest.mark.parametrize("platform", FOREIGN_PLATFORMS, ids=lambda p: p.deb_arch)
def test_foreign_root_is_a_sound_dpkg_system(platform: PlatformInfo, tmp_path: Path) -> None:
    root = mp.foreign_rootfs(platform.deb_arch)
    found = mp.installed(root)
    assert {a for _, a in found} <= {platform.deb_arch, "all"}
    assert ("openssl", platform.deb_arch) in found
    assert mp.dpkg_audit(root) == ""
    assert platform.file_machine in mp.file_type(root / "usr/bin/openssl")
    # dpkg rewriting the database (any write does) changes nothing: it is already in dpkg's own form.
    shutil.copytree(root / "var/lib/dpkg", tmp_path / "dpkg")
    mp.run("dpkg", f"--admindir={tmp_path / 'dpkg'}", "--set-selections", check=True)
    assert (tmp_path / "dpkg/status").read_bytes() == (root / "var/lib/dpkg/status").read_bytes()
    # Vulnerable on purpose: bookworm-security (or -updates) has newer versions of several packages.
    plan = mp.apt_upgrade_plan(root, platform.deb_arch, tmp_path / "apt")
    assert {"openssl", "libssl3"} <= {p for p, _, _ in plan}, plan


def test_multiplatform_layout_entries() -> None:
    layout, ref = mp.multiplatform_layout()
    index = json.loads(mp.run("skopeo", "inspect", "--raw", f"oci:{layout}:{ref}").stdout)
    platforms = [m["platform"] for m in index["manifests"]]
    assert {"os": "linux", "architecture": "arm", "variant": "v7"} in platforms
    assert sum(p["architecture"] == "unknown" for p in platforms) == len(ATTESTED)
    by_digest = {m["digest"]: m for m in index["manifests"]}
    for m in index["manifests"]:
        if m["platform"]["architecture"] == "unknown":
            assert m["annotations"]["vnd.docker.reference.type"] == ATTESTATION
            assert by_digest[m["annotations"]["vnd.docker.reference.digest"]]["platform"]["os"] == "linux"


# ------------------------------------------------------------------------------------------ scenarios


@dataclass(frozen=True)
class Source:
    host: str
    index: dict[str, Any]
    digests: dict[str, str]  # platform text -> manifest digest in the source index
    attestations: dict[str, dict[str, Any]]  # platform text of the subject -> its index entry


def _platform_text(p: dict[str, str]) -> str:
    return "/".join(x for x in (p["os"], p["architecture"], p.get("variant", "")) if x)


def _split(index: dict[str, Any]) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """(platform text -> digest, subject digest -> attestation entry) of an index."""
    digests, attestations = {}, {}
    for m in index["manifests"]:
        if m.get("annotations", {}).get("vnd.docker.reference.type") == ATTESTATION:
            attestations[m["annotations"]["vnd.docker.reference.digest"]] = m
        else:
            digests[_platform_text(m["platform"])] = m["digest"]
    return digests, attestations


@pytest.fixture(scope="module")
def source(anon_registry: RunningRegistry) -> Source:
    layout, ref = mp.multiplatform_layout()
    mp.push_index(layout, ref, anon_registry.host, f"{REPO}:{SOURCE_TAG}")
    index = mp.raw_manifest(anon_registry.host, f"{REPO}:{SOURCE_TAG}")
    digests, by_subject = _split(index)
    text_of = {d: t for t, d in digests.items()}
    return Source(anon_registry.host, index, digests, {text_of[s]: m for s, m in by_subject.items()})


@dataclass(frozen=True)
class Run:
    proc: subprocess.CompletedProcess[str]
    tag: str
    index: dict[str, Any]
    digests: dict[str, str]
    attestations: dict[str, dict[str, Any]]  # subject digest -> entry

    def json(self) -> dict[str, Any]:
        doc = json.loads(self.proc.stdout)
        assert isinstance(doc, dict)
        return doc

    def platform(self, text: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = [p for p in self.json()["platforms"] if p["platform"] == text]
        assert len(found) == 1, f"{text}: {self.json()['platforms']}"
        return found[0]


def _patch(source: Source, tag: str, *args: str) -> Run:
    proc = ok(copa("patch", "-i", f"{source.host}/{REPO}:{SOURCE_TAG}", "-t", tag, "-p", *args))
    index = mp.raw_manifest(source.host, f"{REPO}:{tag}")
    digests, attestations = _split(index)
    return Run(proc, tag, index, digests, attestations)


@pytest.fixture(scope="module")
def all_platforms(source: Source) -> Run:
    """No report, no --platform: every linux platform is brought up to date."""
    return _patch(source, "1.0-patched", "--json")


@pytest.fixture(scope="module")
def unpacked(all_platforms: Run, source: Source, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each patched Debian platform's image, pulled by its TAG-ARCH[-VARIANT] tag and unpacked by umoci."""
    work = tmp_path_factory.mktemp("unpacked")
    return {p.deb_arch: mp.unpack(source.host, f"{REPO}:{all_platforms.tag}-{p.tag_suffix}", work / p.deb_arch)
            for p in DEBIAN_PLATFORMS}


@pytest.fixture(scope="module")
def apt_plans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, frozenset[tuple[str, str, str]]]:
    """The host apt's `apt-get -s upgrade` of each platform's original root (its own sources, its architecture)."""
    work = tmp_path_factory.mktemp("apt")
    roots = {p.deb_arch: mp.foreign_rootfs(p.deb_arch) for p in FOREIGN_PLATFORMS}
    roots["amd64"] = images.debian_rootfs()
    return {arch: mp.apt_upgrade_plan(root, arch, work / arch) for arch, root in roots.items()}


def test_all_platforms_json(all_platforms: Run, source: Source,
                            apt_plans: dict[str, frozenset[tuple[str, str, str]]]) -> None:
    doc = all_platforms.json()
    texts = [p["platform"] for p in doc["platforms"]]
    assert sorted(t for t in texts if t.startswith("linux/")) == sorted(p.text for p in (*DEBIAN_PLATFORMS, SCRATCH))
    for p in DEBIAN_PLATFORMS:
        entry = all_platforms.platform(p.text)
        assert entry["result"] == "patched", entry
        got = {(u["name"], u["to"], u["architecture"]) for u in entry["updates"]}
        assert got == apt_plans[p.deb_arch], p.text
        assert entry["digest"] == all_platforms.digests[p.text] != source.digests[p.text]
    scratch = all_platforms.platform(SCRATCH.text)
    assert scratch["result"] in ("kept", "skipped"), scratch
    assert scratch["updates"] == []
    assert scratch.get("detail"), "a platform copa cannot patch is kept with a note saying why"


def test_unpatchable_platform_json_digest(all_platforms: Run, source: Source) -> None:
    """The entry of a platform kept as it was names the digest it is kept by."""
    assert all_platforms.platform(SCRATCH.text)["digest"] == source.digests[SCRATCH.text]


def test_all_platforms_index(all_platforms: Run, source: Source) -> None:
    # Same platforms in the same order, the unpatchable one by its old digest, no attestation of a patched image.
    assert [_platform_text(m["platform"]) for m in all_platforms.index["manifests"]] == \
        [t for t in (_platform_text(m["platform"]) for m in source.index["manifests"]) if t != "unknown/unknown"]
    assert all_platforms.digests[SCRATCH.text] == source.digests[SCRATCH.text]
    assert all_platforms.attestations == {}
    for p in DEBIAN_PLATFORMS:
        ref = f"{REPO}:{all_platforms.tag}-{p.tag_suffix}"
        tagged = mp.raw_manifest(source.host, ref)
        assert mp.manifest_digest(source.host, ref) == all_platforms.digests[p.text], p.text
        original = mp.raw_manifest(source.host, f"{REPO}@{source.digests[p.text]}")
        assert tagged["layers"][: len(original["layers"])] == original["layers"], "original layers kept"
        # What a client asking the index for this platform gets (skopeo's Digest names the index itself).
        picked = mp.inspect_platform(source.host, f"{REPO}:{all_platforms.tag}", p)
        assert picked["Layers"] == [layer["digest"] for layer in tagged["layers"]]
        picked_config = mp.inspect_platform(source.host, f"{REPO}:{all_platforms.tag}", p, config=True)
        assert (picked_config["architecture"], picked_config.get("variant", "")) == (p.architecture, p.variant)
    assert mp.manifest_status(source.host, REPO, f"{all_platforms.tag}-{SCRATCH.tag_suffix}") == 404


def test_repatch_gives_the_same_images(all_platforms: Run, source: Source) -> None:
    """Patching the patched index again starts from each image's original layers: the very same manifests."""
    again = _patch(source, "1.0-again", "--json")
    assert again.digests == all_platforms.digests
    assert all(again.platform(p.text)["result"] == "patched" for p in DEBIAN_PLATFORMS)


def test_up_to_date_index(source: Source, tmp_path: Path) -> None:
    """An index whose images are all current: every Debian platform up to date, and nothing written."""
    # build_debian's amd64 oracle installs from bookworm-security, not -updates: current only while apt agrees.
    assert mp.apt_upgrade_plan(images.oracle_rootfs(), "amd64", tmp_path / "apt") == frozenset()
    layout, ref = mp.multiplatform_oracle_layout()
    mp.push_index(layout, ref, source.host, "multiplatform-current:1.0")
    proc = ok(copa("patch", "-i", f"{source.host}/multiplatform-current:1.0", "-t", "1.0-patched", "-p", "--json"))
    results = {p["platform"]: p for p in json.loads(proc.stdout)["platforms"]}
    for p in DEBIAN_PLATFORMS:
        assert results[p.text]["result"] == "up-to-date" and results[p.text]["updates"] == [], results[p.text]
    assert results[SCRATCH.text]["result"] != "patched"
    assert mp.tags(source.host, "multiplatform-current") == {"1.0"}, "nothing to write"


@pytest.mark.parametrize("platform", FOREIGN_PLATFORMS, ids=lambda p: p.deb_arch)
def test_foreign_platform_patched_like_dpkg(platform: PlatformInfo, unpacked: dict[str, Path],
                                            apt_plans: dict[str, frozenset[tuple[str, str, str]]]) -> None:
    root = unpacked[platform.deb_arch]
    before = mp.installed(mp.foreign_rootfs(platform.deb_arch))
    after = mp.installed(root)
    expected = dict(before)
    for name, version, arch in apt_plans[platform.deb_arch]:
        expected[(name, arch)] = version
    assert after == expected  # apt's own upgrade plan, applied
    assert {a for _, a in after} <= {platform.deb_arch, "all"}
    assert mp.dpkg_audit(root) == ""
    assert platform.file_machine in mp.file_type(root / "usr/bin/openssl")
    # The oracle: the same packages installed from bookworm-security by the dpkg-exact builder. Same status
    # paragraphs, same info files, same packaged files.
    oracle = mp.foreign_oracle_rootfs(platform.deb_arch)
    assert mp.installed(oracle) == after
    ours, theirs = mp.dpkg_db_files(root), mp.dpkg_db_files(oracle)
    assert {k for k in ours if k.startswith("status:")} == {k for k in theirs if k.startswith("status:")}
    for key, data in theirs.items():
        assert ours.get(key) == data, f"{platform.deb_arch}: {key} differs from dpkg's"
    # The whole tree, beyond the packages' files: nothing else added, removed or changed. status-old aside: dpkg
    # leaves one after an upgrade (its status before the last write), the oracle was installed in one go.
    assert mp.tree_differences(oracle, root, frozenset({"var/lib/dpkg/status-old"})) == []
    for name, _version, _arch in apt_plans[platform.deb_arch]:
        listing = next(p for p in (oracle / "var/lib/dpkg/info").glob(f"{name}*.list")
                       if p.name.split(".list")[0].split(":")[0] == name)
        for line in listing.read_text().splitlines():
            a, b = oracle / line.lstrip("/"), root / line.lstrip("/")
            if line == "/." or (a.is_dir() and not a.is_symlink()):
                continue
            assert a.is_symlink() == b.is_symlink(), line
            if a.is_symlink():
                assert os.readlink(a) == os.readlink(b), line
            else:
                assert a.read_bytes() == b.read_bytes(), f"{name}: {line}"
                assert a.stat().st_mode & 0o7777 == b.stat().st_mode & 0o7777, f"{name}: mode of {line}"


def test_amd64_platform_runs(unpacked: dict[str, Path], all_platforms: Run, source: Source,
                             apt_plans: dict[str, frozenset[tuple[str, str, str]]],
                             buildah_store: Buildah) -> None:  # noqa: F811
    after = mp.installed(unpacked["amd64"])
    for name, version, arch in apt_plans["amd64"]:
        assert after[(name, arch)] == version
    with buildah_store.from_registry(f"{source.host}/{REPO}:{all_platforms.tag}-amd64") as ctr:
        audit = ctr.run("dpkg", "--audit")
        assert audit.rc == 0 and audit.stdout.strip() == "", audit
        check = ctr.run("apt-get", "check")
        assert check.rc == 0, check
        status = ctr.run("dpkg-query", "-W", "-f=${Version}", "libssl3")
        assert status.stdout == after[("libssl3", "amd64")]


def test_per_platform_manifests_keep_their_config(all_platforms: Run, source: Source) -> None:
    for p in (*DEBIAN_PLATFORMS,):
        doc = json.loads(mp.run("skopeo", "inspect", "--config", "--tls-verify=false",
                                f"docker://{source.host}/{REPO}:{all_platforms.tag}-{p.tag_suffix}").stdout)
        assert (doc["os"], doc["architecture"], doc.get("variant", "")) == ("linux", p.architecture, p.variant)


@pytest.fixture(scope="module")
def selected(source: Source) -> Run:
    """--platform as a comma list: only those two patched, human summary."""
    return _patch(source, "1.0-sel", "--platform", f"{ARM64.text},{ARMHF.text}")


@pytest.fixture(scope="module")
def repeated(source: Source) -> Run:
    """--platform repeated: the same selection."""
    return _patch(source, "1.0-rep", "--platform", ARM64.text, "--platform", ARMHF.text, "--json")


def _assert_only_foreign_patched(run: Run, source: Source) -> None:
    for p in (ARM64, ARMHF):
        assert run.digests[p.text] != source.digests[p.text]
        assert mp.manifest_status(source.host, REPO, f"{run.tag}-{p.tag_suffix}") == 200
    for text in ("linux/amd64", "linux/386", SCRATCH.text):
        assert run.digests[text] == source.digests[text], f"{text} must be kept by digest"
    assert mp.manifest_status(source.host, REPO, f"{run.tag}-amd64") == 404
    # amd64's attestation still describes the kept amd64 image: kept as it was; arm64's is dropped.
    assert run.attestations == {source.digests["linux/amd64"]: source.attestations["linux/amd64"]}


KEPT = ("linux/amd64", "linux/386", SCRATCH.text)  # not selected in the --platform and report-directory runs


def test_platform_comma_list(selected: Run, source: Source) -> None:
    _assert_only_foreign_patched(selected, source)
    text = selected.proc.stdout + selected.proc.stderr
    for p in (ARM64, ARMHF):
        assert f"{p.text}" in text and f"{REPO}:{selected.tag}-{p.tag_suffix}" in text, text


def test_summary_names_every_platform(selected: Run) -> None:
    """The human summary gives each platform's outcome, the ones not selected too (kept)."""
    text = selected.proc.stdout + selected.proc.stderr
    for line in text.splitlines():
        if line.strip().startswith(("linux/amd64", "linux/386", SCRATCH.text)):
            assert "kept" in line, line
    for platform in KEPT:
        assert any(line.strip().startswith(platform) for line in text.splitlines()), f"{platform}: {text}"


def test_platform_repeated(repeated: Run, selected: Run, source: Source) -> None:
    _assert_only_foreign_patched(repeated, source)
    for p in (ARM64, ARMHF):
        assert repeated.platform(p.text)["result"] == "patched"
    # Same inputs, same patch: the deterministic layer and fixed SOURCE_DATE_EPOCH give the same manifests.
    for p in (ARM64, ARMHF):
        assert repeated.digests[p.text] == selected.digests[p.text]


def test_json_lists_unselected_platforms_as_kept(repeated: Run, source: Source) -> None:
    """--json has one entry per platform of the index: the ones not selected are "kept", with their digest."""
    for text in KEPT:
        entry = repeated.platform(text)
        assert entry["result"] == "kept" and entry["updates"] == [], entry
        assert entry["digest"] == source.digests[text]


def test_arm64_v8_is_tagged_arm64(source: Source, tmp_path: Path) -> None:
    """An index listing arm64 as arm64/v8 (Docker Hub's official images do): --platform linux/arm64 picks it, and
    its tag is TAG-arm64 as Copacetic names it (it drops arm64's default variant v8)."""
    layout, ref = mp.multiplatform_layout()
    repo = "multiplatform-v8"
    mp.push_index(mp.with_variant(layout, ref, "arm64", "v8", tmp_path / "v8"), ref, source.host, f"{repo}:1.0")
    proc = ok(copa("patch", "-i", f"{source.host}/{repo}:1.0", "-t", "1.0-patched", "-p", "--platform", ARM64.text,
                   "--json"))
    patched = [p for p in json.loads(proc.stdout)["platforms"] if p["result"] == "patched"]
    assert [p["platform"] for p in patched] == ["linux/arm64/v8"]
    assert mp.tags(source.host, repo) == {"1.0", "1.0-patched", "1.0-patched-arm64"}
    index = mp.raw_manifest(source.host, f"{repo}:1.0-patched")
    assert [m["platform"] for m in index["manifests"] if m["platform"]["architecture"] == "arm64"] == \
        [{"architecture": "arm64", "os": "linux", "variant": "v8"}]


# ------------------------------------------------------------------------------------------ report directories


def _debian_version(root: Path) -> str:
    return (root / "etc/debian_version").read_text().strip()


def _trivy(platform: PlatformInfo, root: Path, fixes: dict[str, str]) -> dict[str, Any]:
    before = {p: v for (p, _), v in mp.installed(root).items()}
    config = {"architecture": platform.architecture, "os": "linux",
              **({"variant": platform.variant} if platform.variant else {})}
    vulns = [{"VulnerabilityID": f"CVE-2099-{i:04d}", "PkgName": name, "InstalledVersion": before[name],
              "FixedVersion": version} for i, (name, version) in enumerate(sorted(fixes.items()), 1)]
    return {"SchemaVersion": 2, "ArtifactName": "mp", "ArtifactType": "container_image",
            "Metadata": {"OS": {"Family": "debian", "Name": _debian_version(root)}, "ImageConfig": config},
            "Results": [{"Target": "mp (debian)", "Class": "os-pkgs", "Type": "debian", "Vulnerabilities": vulns}]}


def _native(platform: PlatformInfo, root: Path, fixes: dict[str, str]) -> dict[str, Any]:
    before = {p: v for (p, _), v in mp.installed(root).items()}
    config = {"arch": platform.architecture, **({"variant": platform.variant} if platform.variant else {})}
    updates = [{"name": name, "installedVersion": before[name], "fixedVersion": version,
                "vulnerabilityID": f"CVE-2099-{i:04d}", "type": "debian", "class": "os-pkgs"}
               for i, (name, version) in enumerate(sorted(fixes.items()), 1)]
    return {"apiVersion": "v1alpha2", "metadata": {"os": {"type": "debian", "version": _debian_version(root)},
                                                   "config": config}, "osupdates": updates}


def _fixes(platform: PlatformInfo, names: tuple[str, ...]) -> dict[str, str]:
    oracle = {p: v for (p, _), v in mp.installed(mp.foreign_oracle_rootfs(platform.deb_arch)).items()}
    return {name: oracle[name] for name in names}


ARM64_FIXES = ("libssl3", "openssl")
ARMHF_FIXES = ("libexpat1",)


@pytest.fixture(scope="module")
def reports_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One report per platform, named after the OTHER platform: copa must match them by their contents."""
    d = tmp_path_factory.mktemp("reports")
    arm64_root, armhf_root = mp.foreign_rootfs("arm64"), mp.foreign_rootfs("armhf")
    (d / "armhf-trivy.json").write_text(json.dumps(_trivy(ARM64, arm64_root, _fixes(ARM64, ARM64_FIXES))))
    (d / "arm64.json").write_text(json.dumps(_native(ARMHF, armhf_root, _fixes(ARMHF, ARMHF_FIXES))))
    return d


@pytest.fixture(scope="module")
def by_reports(source: Source, reports_dir: Path,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, dict[str, Path]]:
    run = _patch(source, "1.0-rep-dir", "-r", str(reports_dir), "--json")
    work = tmp_path_factory.mktemp("by-reports")
    roots = {p.deb_arch: mp.unpack(source.host, f"{REPO}:{run.tag}-{p.tag_suffix}", work / p.deb_arch)
             for p in (ARM64, ARMHF)}
    return run, roots


def test_report_directory_matches_by_platform(by_reports: tuple[Run, dict[str, Path]], source: Source) -> None:
    run, roots = by_reports
    _assert_only_foreign_patched(run, source)
    for platform, names in ((ARM64, ARM64_FIXES), (ARMHF, ARMHF_FIXES)):
        entry = run.platform(platform.text)
        assert entry["result"] == "patched"
        assert {u["name"] for u in entry["updates"]} == set(names), entry["updates"]
        before = mp.installed(mp.foreign_rootfs(platform.deb_arch))
        after = mp.installed(roots[platform.deb_arch])
        fixes = _fixes(platform, names)
        assert after == {k: fixes.get(k[0], v) for k, v in before.items()}, platform.text
        assert mp.dpkg_audit(roots[platform.deb_arch]) == ""


def test_report_directory_json_lists_every_platform(by_reports: tuple[Run, dict[str, Path]], source: Source) -> None:
    run, _roots = by_reports
    for text in KEPT:
        assert run.platform(text)["result"] == "kept"


# ------------------------------------------------------------------------------------------ bad input


def _bad(source: Source, tag: str, *args: str) -> subprocess.CompletedProcess[str]:
    proc = copa("patch", "-i", f"{source.host}/{REPO}:{SOURCE_TAG}", "-t", tag, *args)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert [line for line in lines if "error" in line] == lines[-1:], "one error line, last"
    assert not {t for t in mp.tags(source.host, REPO) if t.startswith(tag)}, "nothing may be pushed"
    return proc


@pytest.fixture
def two_for_arm64(tmp_path: Path) -> Path:
    root = mp.foreign_rootfs("arm64")
    (tmp_path / "a.json").write_text(json.dumps(_trivy(ARM64, root, _fixes(ARM64, ("openssl",)))))
    (tmp_path / "b.json").write_text(json.dumps(_native(ARM64, root, _fixes(ARM64, ("libssl3",)))))
    return tmp_path


def test_two_reports_for_one_platform(source: Source, two_for_arm64: Path) -> None:
    proc = _bad(source, "bad-two", "-p", "-r", str(two_for_arm64))
    assert proc.returncode == 3, proc.stderr
    assert "linux/arm64" in proc.stderr or "arm64" in proc.stderr


def test_report_for_a_platform_the_image_lacks(source: Source, tmp_path: Path) -> None:
    s390x = PlatformInfo("linux/s390x", "s390x", "", "s390x", "s390x", "")
    report = _trivy(s390x, mp.foreign_rootfs("arm64"), _fixes(ARM64, ("openssl",)))
    (tmp_path / "s390x.json").write_text(json.dumps(report))
    proc = _bad(source, "bad-lacks", "-p", "-r", str(tmp_path))
    assert proc.returncode == 3, proc.stderr
    assert "s390x" in proc.stderr


def test_platform_the_index_lacks(source: Source) -> None:
    proc = _bad(source, "bad-platform", "-p", "--platform", "linux/s390x")
    assert proc.returncode == 6, proc.stderr
    assert "s390x" in proc.stderr


def test_output_tar_with_several_platforms(source: Source, tmp_path: Path) -> None:
    out = tmp_path / "several.tar"
    proc = _bad(source, "bad-tar", "--output-tar", str(out))
    assert proc.returncode == 2, proc.stderr
    assert not out.exists()
    proc = _bad(source, "bad-tar", "--output-tar", str(out), "--platform", f"{ARM64.text},{ARMHF.text}")
    assert proc.returncode == 2, proc.stderr
    assert not out.exists()


@pytest.fixture(autouse=True, scope="module")
def _fixtures_built() -> Iterator[None]:
    # Build (or find) every cached root and layout before the registry and copa get busy.
    mp.multiplatform_layout()
    for p in FOREIGN_PLATFORMS:
        mp.foreign_oracle_rootfs(p.deb_arch)
    yield
