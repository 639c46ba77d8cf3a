"""Grype JSON reports: the fixtures (fixtures/reports/grype, shaped as Grype's presenter writes them) against the Trivy
reports describing the same findings, against the JSON read without copa code, malformed input, and the plan
`copa patch --dry-run` makes of the same findings given as Trivy, Grype or a plugin's manifest."""

from __future__ import annotations

import base64
import copy
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import copa.api
from copa.errors import ReportError
from copa.oci.model import Platform
from copa.report import load_report
from copa.report.grype import _FAMILIES
from copa.report.match import FAMILY_ALIASES as _FAMILY_ALIASES
from tests.support import debimage
from tests.support.aptrepo import RepoServer
from tests.support.trivy import write_report

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures" / "reports"
GRYPE = FIXTURES / "grype"
SHARED_REPORTS = REPO.parent / "shared" / "reports"
GRYPE_FIXTURES = sorted(GRYPE.glob("grype-*.json"))

# (Grype fixture, Trivy report of the same findings)
PAIRS = [
    (GRYPE / "grype-alpine-3.21.0.json", SHARED_REPORTS / "trivy-alpine-3.21.0.json"),
    (GRYPE / "grype-mariner-2.0-arm64.json", SHARED_REPORTS / "trivy-cbl-mariner-distroless-2.0.json"),
    (GRYPE / "grype-debian-mixed.json", FIXTURES / "trivy-debian-mixed.json"),
]


def test_fixtures_present() -> None:
    assert len(GRYPE_FIXTURES) >= 5
    for path, trivy in PAIRS:
        assert path.is_file() and trivy.is_file(), (path, trivy)


@pytest.mark.parametrize(("grype", "trivy"), PAIRS, ids=[p[0].name for p in PAIRS])
def test_same_findings_as_trivy(grype: Path, trivy: Path) -> None:
    """Differential: Grype's and Trivy's descriptions of the same findings give the same packages, fixes and IDs."""
    g, t = load_report(grype), load_report(trivy)
    assert g.format == "grype" and t.format == "trivy"
    assert g.os.family == t.os.family
    assert g.packages == t.packages
    assert g.unfixed == t.unfixed
    assert g.packages  # not vacuous
    # Trivy names the platform from the image config, Grype from Syft's source metadata: the same image platform.
    assert t.platform is not None and g.platform is not None
    assert g.platform.matches(t.platform) and t.platform.matches(g.platform)


def _independent(doc: dict[str, Any]) -> tuple[set[tuple[str, str]], set[tuple[str, str]], set[str]]:
    """Straight from the JSON, no copa code: OS packages with a fix, without one, and every match's CVE ids."""
    fixed: set[tuple[str, str]] = set()
    unfixed: set[tuple[str, str]] = set()
    ids: set[str] = set()
    for m in doc["matches"]:
        a, v = m["artifact"], m["vulnerability"]
        if a["type"] not in ("deb", "apk", "rpm"):
            continue
        key = (a["name"], re.sub(r"^0:", "", a["version"]))
        if v["fix"]["state"] == "fixed" and v["fix"]["versions"]:
            fixed.add(key)
        else:
            unfixed.add(key)
        related = [r["id"] for r in m["relatedVulnerabilities"] if r["id"].startswith("CVE-")]
        ids |= {v["id"]} if v["id"].startswith("CVE-") or not related else set(related)
    return fixed, unfixed, ids


@pytest.mark.parametrize("path", GRYPE_FIXTURES, ids=lambda p: p.name)
def test_fixture_against_its_json(path: Path) -> None:
    doc = json.loads(path.read_text())
    report = load_report(path)
    fixed, unfixed, ids = _independent(doc)
    assert report.format == "grype" and report.source == str(path)
    assert report.os.family == _FAMILIES[doc["distro"]["name"]]
    assert report.os.version == doc["distro"]["version"]
    assert {(p.name, p.installed_version) for p in report.packages} == fixed
    assert {(p.name, p.installed_version) for p in report.unfixed} == unfixed
    assert {i for p in (*report.packages, *report.unfixed) for i in p.vulnerability_ids} == ids
    target = doc["source"]["target"]
    # the platform comes from the image config Syft keeps (base64) when there is one, else from the target's fields
    config = json.loads(base64.b64decode(target["config"])) if target.get("config") else {
        "architecture": target["architecture"], "variant": target.get("architectureVariant")}
    assert report.arch == config["architecture"]
    assert report.variant == config.get("variant")
    for p in report.packages:
        listed = {re.sub(r"^0:", "", v) for m in doc["matches"] if (m["artifact"]["name"], re.sub(r"^0:", "", m[
            "artifact"]["version"])) == (p.name, p.installed_version) for v in m["vulnerability"]["fix"]["versions"]}
        assert p.fixed_version in listed


def test_language_packages_and_ignored_matches_are_not_ours() -> None:
    report = load_report(GRYPE / "grype-debian-mixed.json")
    names = {p.name for p in (*report.packages, *report.unfixed)}
    assert "requests" not in names
    # the ignored match (CVE-2024-0099 for qux, fixed in 1.0-2) would have raised qux's fix
    qux = next(p for p in report.packages if p.name == "qux")
    assert qux.fixed_version == "1.0-1" and "CVE-2024-0099" not in qux.vulnerability_ids


def test_amazon_advisories_stand_for_their_cves() -> None:
    report = load_report(GRYPE / "grype-amazon-2023.json")
    assert report.os.family == "amazon" and report.os.version == "2023"
    by_name = {p.name: p for p in report.packages}
    assert by_name["openssl-libs"].vulnerability_ids == ("CVE-2023-6237", "CVE-2024-0727")
    assert by_name["openssl-libs"].fixed_version == "1:3.0.8-1.amzn2023.0.12"  # a real epoch stays
    assert by_name["glibc"].fixed_version == "2.34-52.amzn2023.0.10"  # Grype's zero epoch goes
    assert by_name["curl-minimal"].vulnerability_ids == ("ALAS2023-2024-540",)  # no CVE named: the advisory
    assert [(p.name, p.vulnerability_ids) for p in report.unfixed] == [("sqlite-libs", ("CVE-2023-7104",))]
    assert report.platform == Platform("linux", "amd64")


@pytest.mark.parametrize(("grype", "plain"), [("0:2.35-7.cm2", "2.35-7.cm2"), ("0:1.1.1k-29.cm2", "1.1.1k-29.cm2"),
                                              ("0:2.34-52.amzn2023.0.10", "2.34-52.amzn2023.0.10")])
def test_dropping_the_zero_epoch_keeps_the_version_for_rpm(grype: str, plain: str) -> None:
    """rpm itself says 0:X and X are the same version, so the report may write X as Trivy does."""
    out = subprocess.run(["rpm", "--eval", f'%{{lua: print(rpm.vercmp("{grype}", "{plain}"))}}'],
                         check=True, capture_output=True, text=True).stdout.strip()
    assert out == "0"


def test_mapped_families_are_the_orchestrators() -> None:
    """Every family a Grype distro name maps to is one copa.api knows how to check against an image."""
    assert set(_FAMILIES.values()) <= set(_FAMILY_ALIASES)
    # and every family the orchestrator knows is reachable from Grype's names
    assert set(_FAMILY_ALIASES) <= set(_FAMILIES.values())


def _doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((GRYPE / "grype-debian-mixed.json").read_text())
    doc.update(changes)
    return doc


def _one_match(**vuln: Any) -> dict[str, Any]:
    doc = _doc()
    m = copy.deepcopy(doc["matches"][5])  # qux, fixed in 1.0-1
    m["vulnerability"].update(vuln)
    doc["matches"] = [m]
    return doc


def _load(tmp_path: Path, doc: dict[str, Any]) -> Any:
    p = tmp_path / "grype.json"
    p.write_text(json.dumps(doc))
    return load_report(p)


@pytest.mark.parametrize(("fix", "fixed"), [
    ({"versions": ["1.0-1"], "state": "fixed"}, "1.0-1"),
    ({"versions": [], "state": "fixed"}, None),
    ({"versions": ["1.0-1"], "state": "not-fixed"}, None),
    ({"versions": [], "state": "wont-fix"}, None),
    ({"versions": [], "state": "unknown"}, None),
    ({"versions": [], "state": ""}, None),
    ({"versions": ["0.9-1", "1.0-3", "1.0-2"], "state": "fixed"}, "1.0-2"),  # lowest above installed, as Trivy's list
])
def test_fix_states(tmp_path: Path, fix: dict[str, Any], fixed: str | None) -> None:
    report = _load(tmp_path, _one_match(fix=fix))
    if fixed is None:
        assert report.packages == () and [p.name for p in report.unfixed] == ["qux"]
    else:
        assert [(p.name, p.fixed_version) for p in report.packages] == [("qux", fixed)] and report.unfixed == ()


@pytest.mark.parametrize(("name", "family"), [
    ("debian", "debian"), ("ubuntu", "ubuntu"), ("alpine", "alpine"), ("wolfi", "wolfi"), ("chainguard", "chainguard"),
    ("redhat", "redhat"), ("centos", "centos"), ("rockylinux", "rocky"), ("almalinux", "alma"),
    ("oraclelinux", "oracle"), ("amazonlinux", "amazon"), ("fedora", "fedora"), ("mariner", "cbl-mariner"),
    ("azurelinux", "azurelinux"), ("rhel", "redhat"), ("amzn", "amazon"), ("ol", "oracle"), ("sles", "sles"),
])
def test_distro_names(tmp_path: Path, name: str, family: str) -> None:
    assert _load(tmp_path, _doc(distro={"name": name, "version": "9", "idLike": []})).os.family == family


def test_sources_without_a_platform(tmp_path: Path) -> None:
    # an SBOM or directory scan has no image metadata: no platform, and that is fine for a single report
    for source in ({"type": "sbom-file", "target": "sbom.json"}, {"type": "directory", "target": "/x"}, None):
        report = _load(tmp_path, _doc(source=source))
        assert report.arch is None and report.platform is None
    target = json.loads((GRYPE / "grype-debian-mixed.json").read_text())["source"]["target"]
    report = _load(tmp_path, _doc(source={"type": "image", "target": {**target, "architecture": ""}}))
    assert report.platform is None


@pytest.mark.parametrize(("config", "expected"), [
    ({"architecture": "arm64", "variant": "v8", "os": "linux"}, Platform("linux", "arm64")),
    ({"architecture": "arm", "variant": "v6", "os": "linux"}, Platform("linux", "arm", "v6")),
    ("not base64!", Platform("linux", "amd64")),  # unreadable: the target's own fields
    ({"os": "linux"}, Platform("linux", "amd64")),  # a config naming no architecture: the target's fields
    ([1, 2], Platform("linux", "amd64")),
])
def test_platform_from_the_image_config(tmp_path: Path, config: Any, expected: Platform) -> None:
    target = json.loads((GRYPE / "grype-debian-mixed.json").read_text())["source"]["target"]
    raw = config if isinstance(config, str) else base64.b64encode(json.dumps(config).encode()).decode()
    report = _load(tmp_path, _doc(source={"type": "image", "target": {**target, "config": raw}}))
    assert target["architecture"] == "amd64" and report.platform == expected


MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    ("no-distro", _doc(distro={}), "report names no distro"),
    ("distro-missing", {k: v for k, v in _doc().items() if k != "distro"}, "report names no distro"),
    ("distro-not-object", _doc(distro="debian"), "field distro must be an object, not a string"),
    ("matches-not-list", _doc(matches={"a": 1}), "field matches must be an array, not an object"),
    ("match-not-object", _doc(matches=[1]), "matches[0] must be an object"),
    ("no-artifact", _doc(matches=[{"vulnerability": {"id": "CVE-1"}}]), "missing field matches[0].artifact"),
    ("no-name", _doc(matches=[{"artifact": {"type": "deb", "version": "1"}, "vulnerability": {"id": "CVE-1"}}]),
     "missing field matches[0].artifact.name"),
    ("no-vuln-id", _doc(matches=[{"artifact": {"type": "deb", "name": "a", "version": "1"}, "vulnerability": {}}]),
     "missing field matches[0].vulnerability.id"),
    ("versions-not-strings", _one_match(fix={"versions": [1], "state": "fixed"}),
     "matches[0].vulnerability.fix.versions[0] must be a string"),
    ("bad-version", _one_match(fix={"versions": ["not a version!"], "state": "fixed"}), "bad version in report"),
    ("arch-number", _doc(source={"type": "image", "target": {"architecture": 64}}),
     "field source.target.architecture must be a string, not a number"),
]


@pytest.mark.parametrize(("name", "doc", "message"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed(tmp_path: Path, name: str, doc: dict[str, Any], message: str) -> None:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ReportError) as info:
        load_report(path)
    text = str(info.value)
    assert info.value.exit_code == 3
    assert message in text and str(path) in text and "\n" not in text, text


def test_every_prefix_is_a_report_error(tmp_path: Path) -> None:
    data = (GRYPE / "grype-amazon-2023.json").read_bytes()
    path = tmp_path / "cut.json"
    for cut in range(0, len(data), 53):
        path.write_bytes(data[:cut])
        with pytest.raises(ReportError):
            load_report(path)


# -- through the CLI: the same findings as Trivy, Grype and a plugin's manifest give the same plan ---------------

def _grype_from_trivy(trivy: dict[str, Any]) -> dict[str, Any]:
    """The Grype document of a Trivy report's findings: one match per (package, vulnerability)."""
    matches = []
    for v in trivy["Results"][0]["Vulnerabilities"]:
        fixed = v.get("FixedVersion") or ""
        matches.append({
            "vulnerability": {"id": v["VulnerabilityID"], "namespace": "debian:distro:debian:12", "urls": [],
                              "cvss": [], "advisories": [], "fix": {"versions": [fixed] if fixed else [],
                                                                     "state": "fixed" if fixed else "not-fixed"}},
            "relatedVulnerabilities": [], "matchDetails": [],
            "artifact": {"id": v["PkgName"], "name": v["PkgName"], "version": v["InstalledVersion"], "type": "deb",
                         "locations": [{"path": "/var/lib/dpkg/status"}], "language": "", "licenses": [], "cpes": [],
                         "purl": f"pkg:deb/debian/{v['PkgName']}@{v['InstalledVersion']}", "upstreams": []},
        })
    return {"matches": matches, "distro": {"name": "debian", "version": "12", "idLike": []},
            "source": {"type": "image", "target": {"userInput": "test-image", "architecture": "amd64", "os": "linux"}},
            "descriptor": {"name": "grype", "version": "0.87.0"}}


def test_cli_plans_agree_across_formats(tmp_path: Path) -> None:
    base, repo = debimage.base_image(), debimage.hermetic_repo()
    fixes = {k: v for k, v in debimage.FIXES.items() if k != debimage.MISSING_FIX}
    trivy = write_report(tmp_path / "trivy.json", fixes)
    doc = json.loads(trivy.read_text())
    grype = tmp_path / "grype.json"
    grype.write_text(json.dumps(_grype_from_trivy(doc)))
    # a scanner plugin that turns the Trivy report it is given into a v1alpha1 manifest
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    plugin = bin_dir / "copa-tov1"
    plugin.write_text(f"""#!{sys.executable}
import json, sys
doc = json.load(open(sys.argv[1]))
print(json.dumps({{"apiVersion": "v1alpha1", "metadata": {{"os": {{"type": "debian", "version": "12.5"}},
                  "config": {{"arch": "amd64"}}}},
                  "updates": [{{"name": v["PkgName"], "installedVersion": v["InstalledVersion"],
                               "fixedVersion": v.get("FixedVersion", ""), "vulnerabilityID": v["VulnerabilityID"]}}
                              for v in doc["Results"][0]["Vulnerabilities"]]}}))
""")
    plugin.chmod(0o755)
    env = {**os.environ, "COPA_DEBUG": "", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    with RepoServer(repo.root) as server:
        def plan(*args: str) -> dict[str, Any]:
            proc = subprocess.run([sys.executable, "-m", "copa", "patch", "-i", base.image_ref, *args, "--dry-run",
                                   "--json", *debimage.copa_args(server.url, repo)],
                                  cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
            assert proc.returncode == 0, proc.stderr
            out: dict[str, Any] = json.loads(proc.stdout)
            out.pop("seconds")
            return out

        by_trivy = plan("-r", str(trivy))
        assert {u["name"] for u in by_trivy["updates"]} >= {"app", "conf", "libfoo1"}  # not vacuous
        assert plan("-r", str(grype)) == by_trivy
        if "options.scanner" in inspect.getsource(copa.api):  # -s reaches the report loader once the lead wires it
            assert plan("-r", str(grype), "-s", "grype") == by_trivy
            assert plan("-r", str(trivy), "-s", "tov1") == by_trivy
