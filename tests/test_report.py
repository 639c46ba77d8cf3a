"""Scanner report parsing: real Trivy reports, copa manifests, and malformed input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from copa.errors import ReportError
from copa.report import (
    Report,
    comparator_for,
    load_report,
    register_comparator,
    simple_compare,
)
from copa.report.model import _COMPARATORS

REPO = Path(__file__).resolve().parents[1]
SHARED_REPORTS = Path(__file__).resolve().parents[2] / "shared" / "reports"
FIXTURES = REPO / "fixtures" / "reports"
REAL_REPORTS = sorted(SHARED_REPORTS.glob("trivy-*.json"))


def test_real_reports_are_present() -> None:
    assert len(REAL_REPORTS) >= 2, f"expected the real Trivy reports in {SHARED_REPORTS}"


def _independent_count(doc: dict[str, Any]) -> tuple[set[tuple[str, str]], set[tuple[str, str]], set[str], set[str]]:
    """Straight from the JSON, no copa code: packages with/without a fix and their CVE ids."""
    fixed: set[tuple[str, str]] = set()
    unfixed: set[tuple[str, str]] = set()
    fixed_ids: set[str] = set()
    unfixed_ids: set[str] = set()
    for result in doc.get("Results") or []:
        if result.get("Class") != "os-pkgs":
            continue
        for v in result.get("Vulnerabilities") or []:
            key = (v["PkgName"], v["InstalledVersion"])
            if v.get("FixedVersion"):
                fixed.add(key)
                fixed_ids.add(v["VulnerabilityID"])
            else:
                unfixed.add(key)
                unfixed_ids.add(v["VulnerabilityID"])
    return fixed, unfixed, fixed_ids, unfixed_ids


@pytest.mark.parametrize("path", REAL_REPORTS, ids=lambda p: p.name)
def test_real_trivy_report(path: Path) -> None:
    doc = json.loads(path.read_text())
    report = load_report(path)
    fixed, unfixed, fixed_ids, unfixed_ids = _independent_count(doc)
    assert report.format == "trivy"
    assert report.source == str(path)
    assert report.os.family == doc["Metadata"]["OS"]["Family"]
    assert report.os.version == doc["Metadata"]["OS"]["Name"]
    assert report.arch == doc["Metadata"]["ImageConfig"]["architecture"]
    assert {(p.name, p.installed_version) for p in report.packages} == fixed
    assert len(report.packages) == len(fixed)
    assert {(p.name, p.installed_version) for p in report.unfixed} == unfixed
    assert {i for p in report.packages for i in p.vulnerability_ids} == fixed_ids
    assert {i for p in report.unfixed for i in p.vulnerability_ids} == unfixed_ids
    for p in report.packages:
        assert list(p.vulnerability_ids) == sorted(set(p.vulnerability_ids))
        # the chosen fix is one of the listed FixedVersions, and no listed one for this package is higher
        listed = {
            v["FixedVersion"]
            for r in doc["Results"]
            for v in r.get("Vulnerabilities") or []
            if (v["PkgName"], v["InstalledVersion"]) == (p.name, p.installed_version) and v.get("FixedVersion")
        }
        assert p.fixed_version is not None and p.fixed_version in listed
        assert all(simple_compare(p.fixed_version, other) >= 0 for other in listed)


def test_alpine_report_specifics() -> None:
    report = load_report(SHARED_REPORTS / "trivy-alpine-3.21.0.json")
    by_name = {p.name: p for p in report.packages}
    # CVE-2024-12797 is fixed in 3.3.3-r0, CVE-2024-13176 in 3.3.2-r5: the higher one fixes both
    assert by_name["libcrypto3"].fixed_version == "3.3.3-r0"
    assert by_name["libcrypto3"].vulnerability_ids == ("CVE-2024-12797", "CVE-2024-13176")
    assert by_name["musl"].fixed_version == "1.2.5-r9"
    assert report.arch == "amd64"


def test_mariner_report_specifics() -> None:
    report = load_report(SHARED_REPORTS / "trivy-cbl-mariner-distroless-2.0.json")
    by_name = {p.name: p for p in report.packages}
    assert by_name["glibc"].fixed_version == "2.35-7.cm2"
    assert by_name["openssl"].fixed_version == "1.1.1k-29.cm2"
    assert report.arch == "arm64"


def test_trivy_debian_mixed_uses_dpkg_order_and_counts_unfixed() -> None:
    report = load_report(FIXTURES / "trivy-debian-mixed.json")
    assert report.os.family == "debian" and report.arch == "amd64"
    by_name = {p.name: p for p in report.packages}
    # dpkg order: the epoch makes 1:1.0-2 higher than 2.0-1 (a naive comparator would pick 2.0-1)
    assert by_name["libfoo1"].fixed_version == "1:1.0-2"
    assert by_name["libfoo1"].vulnerability_ids == ("CVE-2024-0001", "CVE-2024-0002")
    # a comma list: the lowest entry above the installed version
    assert by_name["bar"].fixed_version == "1.2.3-1"
    assert by_name["qux"].fixed_version == "1.0-1"
    assert "requests" not in by_name  # lang-pkgs ignored
    unfixed = {p.name: p for p in report.unfixed}
    assert set(unfixed) == {"libfoo1", "baz"}
    assert unfixed["baz"].vulnerability_ids == ("CVE-2024-0005",)
    assert unfixed["libfoo1"].fixed_version is None
    assert report.unfixed_count == 2


def test_v1alpha1() -> None:
    report = load_report(FIXTURES / "v1alpha1-debian.json")
    assert report.format == "v1alpha1"
    assert report.os.family == "debian" and report.os.version == "12.4" and report.arch == "amd64"
    by_name = {p.name: p for p in report.packages}
    assert set(by_name) == {"libssl3", "tar"}
    assert by_name["libssl3"].fixed_version == "3.0.13-1~deb12u1"
    assert by_name["libssl3"].vulnerability_ids == ("CVE-2023-5678", "CVE-2023-6129")
    assert by_name["tar"].fixed_version == "1.34+dfsg-1.2+deb12u1"
    assert [p.name for p in report.unfixed] == ["zlib1g"]


def test_v1alpha2() -> None:
    report = load_report(FIXTURES / "v1alpha2-debian.json")
    assert report.format == "v1alpha2"
    assert report.arch == "arm64"
    assert len(report.packages) == 1
    # +deb12u10 > +deb12u4 in dpkg order (not in string order)
    assert report.packages[0].fixed_version == "2.36-9+deb12u10"
    assert report.packages[0].vulnerability_ids == ("CVE-2023-6246", "CVE-2025-4802")


def test_report_with_no_os_pkgs_is_empty_but_valid(tmp_path: Path) -> None:
    doc = {"SchemaVersion": 2, "Metadata": {"OS": {"Family": "debian", "Name": "12.4"}},
           "Results": [{"Target": "x", "Class": "lang-pkgs", "Vulnerabilities": []}]}
    p = tmp_path / "r.json"
    p.write_text(json.dumps(doc))
    report = load_report(p)
    assert report.packages == () and report.unfixed == () and report.arch is None


def test_register_comparator(tmp_path: Path) -> None:
    doc = {"SchemaVersion": 2, "Metadata": {"OS": {"Family": "testos", "Name": "1"}},
           "Results": [{"Class": "os-pkgs", "Vulnerabilities": [
               {"VulnerabilityID": "A", "PkgName": "p", "InstalledVersion": "1", "FixedVersion": "a"},
               {"VulnerabilityID": "B", "PkgName": "p", "InstalledVersion": "1", "FixedVersion": "bbb"},
           ]}]}
    p = tmp_path / "r.json"
    p.write_text(json.dumps(doc))
    assert comparator_for("testos") is simple_compare
    try:
        register_comparator(["TestOS"], lambda a, b: (len(a) > len(b)) - (len(a) < len(b)))
        report: Report = load_report(p)
        assert report.packages[0].fixed_version == "bbb"
    finally:
        _COMPARATORS.pop("testos", None)


@pytest.mark.parametrize(("a", "b"), [
    ("3.3.2-r5", "3.3.3-r0"), ("1.2.5-r8", "1.2.5-r9"), ("2.35-5.cm2", "2.35-7.cm2"),
    ("1.1.1k-15.cm2", "1.1.1k-29.cm2"),
    ("1.0~rc1", "1.0"), ("9", "10"), ("1.0", "1.0a"), ("1.2.10", "1.2.9"),
])
def test_simple_compare_agrees_with_dpkg(a: str, b: str) -> None:
    # these strings are valid dpkg versions and dpkg's order is the one we mean for them
    def dpkg_lt(x: str, y: str) -> bool:
        return subprocess.run(["dpkg", "--compare-versions", x, "lt", y], check=False).returncode == 0

    expected = -1 if dpkg_lt(a, b) else (1 if dpkg_lt(b, a) else 0)
    assert simple_compare(a, b) == expected
    assert simple_compare(b, a) == -expected


def _trivy(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"SchemaVersion": 2, "Metadata": {"OS": {"Family": "debian", "Name": "12"}},
                           "Results": [{"Class": "os-pkgs", "Vulnerabilities": [
                               {"VulnerabilityID": "CVE-1", "PkgName": "p", "InstalledVersion": "1.0-1",
                                "FixedVersion": "1.0-2"}]}]}
    doc.update(overrides)
    return doc


def _vuln(**fields: Any) -> dict[str, Any]:
    v: dict[str, Any] = {"VulnerabilityID": "CVE-1", "PkgName": "p", "InstalledVersion": "1.0-1",
                         "FixedVersion": "1.0-2"}
    v.update(fields)
    return _trivy(Results=[{"Class": "os-pkgs", "Vulnerabilities": [v]}])


MALFORMED: list[tuple[str, bytes | None, str]] = [
    ("missing-file", None, "does not exist"),
    ("empty", b"", "is empty"),
    ("whitespace", b"  \n\t\n", "is empty"),
    ("not-json", b'{"SchemaVersion": 2,\n  "Metadata": }', "not valid JSON at line 2 column 15"),
    ("not-utf8", b'{"a": "\xff\xfe"}', "not UTF-8"),
    ("array", b"[1, 2]", "must be a JSON object, not list"),
    ("unknown-format", b'{"hello": "world"}', "unknown report format"),
    ("schema-1", json.dumps(_trivy(SchemaVersion=1)).encode(), "SchemaVersion 1 is not supported"),
    ("schema-str", json.dumps(_trivy(SchemaVersion="2")).encode(), "SchemaVersion '2' is not supported"),
    ("no-metadata", json.dumps({"SchemaVersion": 2, "Results": []}).encode(), "report has no OS metadata"),
    ("no-os", json.dumps(_trivy(Metadata={"ImageConfig": {}})).encode(), "was it made by `trivy image --format json`?"),
    ("os-not-object", json.dumps(_trivy(Metadata={"OS": "debian"})).encode(), "field Metadata.OS must be an object"),
    ("results-not-list", json.dumps(_trivy(Results={"a": 1})).encode(),
     "field Results must be an array, not an object"),
    ("result-not-object", json.dumps(_trivy(Results=[3])).encode(), "Results[0] must be an object"),
    ("vulns-not-list", json.dumps(_trivy(Results=[{"Class": "os-pkgs", "Vulnerabilities": "x"}])).encode(),
     "field Results[0].Vulnerabilities must be an array, not a string"),
    ("pkgname-number", json.dumps(_vuln(PkgName=7)).encode(),
     "field Results[0].Vulnerabilities[0].PkgName must be a string, not a number"),
    ("no-installed", json.dumps(_vuln(InstalledVersion=None)).encode(),
     "missing field Results[0].Vulnerabilities[0].InstalledVersion"),
    ("fixed-bool", json.dumps(_vuln(FixedVersion=True)).encode(), "FixedVersion must be a string, not true/false"),
    ("bad-dpkg-version", json.dumps(_vuln(FixedVersion="not a version!")).encode(), "bad version in report"),
    ("native-api", b'{"apiVersion": "v2", "metadata": {}}', "apiVersion 'v2' is not supported"),
    ("native-no-metadata", b'{"apiVersion": "v1alpha1", "updates": []}', "missing field metadata"),
    ("native-no-os-type", b'{"apiVersion": "v1alpha1", "metadata": {"os": {"version": "12"}}}',
     "missing field metadata.os.type"),
    ("native-updates-type", b'{"apiVersion": "v1alpha1", "metadata": {"os": {"type": "debian"}}, "updates": 5}',
     "field updates must be an array, not a number"),
    ("native-update-name", b'{"apiVersion": "v1alpha1", "metadata": {"os": {"type": "debian"}}, '
     b'"updates": [{"installedVersion": "1"}]}', "missing field updates[0].name"),
]


@pytest.mark.parametrize(("name", "content", "message"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_reports(tmp_path: Path, name: str, content: bytes | None, message: str) -> None:
    path = tmp_path / f"{name}.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ReportError) as info:
        load_report(path)
    err = info.value
    assert err.exit_code == 3
    assert message in str(err), str(err)
    assert str(path) in str(err)
    assert "\n" not in str(err)


def test_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="is a directory"):
        load_report(tmp_path)


def test_cli_style_no_traceback_on_garbage(tmp_path: Path) -> None:
    # Fuzz-ish: every prefix of a real report is either a valid report or a one-line ReportError.
    data = (FIXTURES / "trivy-debian-mixed.json").read_bytes()
    path = tmp_path / "cut.json"
    for cut in range(0, len(data), 37):
        path.write_bytes(data[:cut])
        with pytest.raises(ReportError):
            load_report(path)
