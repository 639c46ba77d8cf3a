"""RPM version order against rpm 4.18 itself (rpmlua's rpm.vercmp and rpm.ver), and Trivy reports of the RPM
families: versions with epochs, and the report-vs-image release check."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from copa.errors import ReportError, UnsupportedImageError
from copa.pkg.base import OSRelease
from copa.pkg.detect import FAMILIES, KINDS, Detected, adapter_for, version_order
from copa.pkg.rpm.version import EVR, compare_versions, rpmvercmp
from copa.report import load_report
from copa.report.match import check_report as _check_report

needs_rpm = pytest.mark.skipif(shutil.which("rpmlua") is None, reason="rpmlua (rpm 4.18) not installed")

REAL = ["1.1.1k-4.el8", "1.1.1k-12.el8_9", "2.28-225.el8_8.6", "2.28-225.el8", "3.0.7-27.el9", "3.0.7-3.el9",
        "1:1.2.11-40.el9", "1.2.11-41.el9", "5.4.4-4.amzn2023.0.2", "5.4.4-4.amzn2023.0.10", "1.0~rc1", "1.0",
        "1.0^post1", "1.0.1", "1.0^", "1.0~", "1.0a", "1.0.a", "1.00", "01.0", "1.0_1", "1.0+1", "2:0.1-1",
        "0:1.0-1", "1.0-1", "1.0-1.el8", "1.0-1.el8_10", "1.0-1.el8_9", "4.18.0-553.el8_10", "7.61.1-34.el8",
        "7.61.1-34.el8_10.2", "1.0-0.rc1.1", "1.0-0.1.rc1", "2.0.0-0.3.beta", "10", "9", "1.0.0~beta^2", "a", "B",
        "1.0-", "", "~", "^", "1..0", "1.0.", "ab12", "12ab", "1.0~~", "1.0~^", "é1", "1é"]


def _lua(s: str) -> str:
    """A Lua string literal for any text: every byte as a decimal escape, so nothing needs quoting."""
    return '"' + "".join(f"\\{b}" for b in s.encode("utf-8", "surrogateescape")) + '"'


def _rpm_vercmp(pairs: list[tuple[str, str]]) -> list[int]:
    """rpm's rpmvercmp for every pair, in one rpmlua run. rpm 4.18's rpm.vercmp parses both sides as EVRs and
    compares those (rpmverCmp), which is rpmvercmp itself for non-empty strings with no '-' and no epoch."""
    assert all(a and b and "-" not in a + b and ":" not in a + b for a, b in pairs)
    script = "".join(f"print(rpm.vercmp({_lua(a)}, {_lua(b)}))\n" for a, b in pairs)
    return [int(x) for x in _run_lua(script)]


def _rpm_evrcmp(pairs: list[tuple[str, str]]) -> list[int]:
    """rpm's EVR order (rpm.ver objects: epoch, version, release) for every pair, in one rpmlua run."""
    script = "local function c(a, b) local x, y = rpm.ver(a), rpm.ver(b)\n" \
             " if x < y then return -1 elseif x == y then return 0 else return 1 end end\n"
    script += "".join(f"print(c({_lua(a)}, {_lua(b)}))\n" for a, b in pairs)
    return [int(x) for x in _run_lua(script)]


def _run_lua(script: str) -> list[str]:
    # rpmlua runs a script file (it reads no program from stdin).
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as f:
        f.write(script)
        f.flush()
        proc = subprocess.run(["rpmlua", f.name], capture_output=True, check=True)
    return proc.stdout.decode().split()


@needs_rpm
def test_real_looking_versions_match_rpm() -> None:
    fields = [v for v in REAL if v and "-" not in v and ":" not in v]
    pairs = [(a, b) for a in fields for b in fields]
    ours = [rpmvercmp(a, b) for a, b in pairs]
    assert ours == _rpm_vercmp(pairs)
    evrs = [v for v in REAL if v]  # rpm.ver() of "" is nil
    evr_pairs = [(a, b) for a in evrs for b in evrs]
    assert [compare_versions(a, b) for a, b in evr_pairs] == _rpm_evrcmp(evr_pairs)


_FIELD = st.text(alphabet="0123456789abzAZ.~^_+é", min_size=1, max_size=10)
_SEGMENTS = st.lists(st.sampled_from(["0", "00", "1", "2", "10", "010", "a", "b", "rc", "el8", "~", "^", ".", "_",
                                      "+", "9999999999999999999999"]), min_size=1, max_size=6).map("".join)
_VERSION = st.one_of(_FIELD, _SEGMENTS)


@needs_rpm
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(_VERSION, _VERSION), min_size=100, max_size=300))
def test_rpmvercmp_matches_rpm(pairs: list[tuple[str, str]]) -> None:
    ours = [rpmvercmp(a, b) for a, b in pairs]
    theirs = _rpm_vercmp(pairs)
    assert [(p, o, t) for p, o, t in zip(pairs, ours, theirs, strict=True) if o != t] == []


_EVR = st.tuples(st.one_of(st.just(""), st.sampled_from(["0:", "1:", "2:", "10:", "01:"])),
                 _SEGMENTS,
                 st.one_of(st.just(""), _SEGMENTS.map(lambda s: "-" + s))).map("".join)


@needs_rpm
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(_EVR, _EVR), min_size=100, max_size=300))
def test_evr_order_matches_rpm(pairs: list[tuple[str, str]]) -> None:
    ours = [compare_versions(a, b) for a, b in pairs]
    theirs = _rpm_evrcmp(pairs)
    assert [(p, o, t) for p, o, t in zip(pairs, ours, theirs, strict=True) if o != t] == []


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("1.0~rc1", "1.0", -1),  # tilde before the end
    ("1.0^post1", "1.0", 1),  # caret after the end...
    ("1.0^post1", "1.0.1", -1),  # ...but before any other segment
    ("1.010", "1.9", 1),  # numbers, not strings
    ("1.01", "1.1", 0),  # leading zeros dropped
    ("1.0a", "1.0.1", -1),  # letters before numbers
    ("1_0", "1.0", 0),  # separators only separate
    ("", "1", -1),  # an empty field (rpm.vercmp cannot be asked about it: it parses EVRs)
    ("", "~", 1),
    ("", "", 0),
])
def test_rpmvercmp_rules(a: str, b: str, expected: int) -> None:
    assert rpmvercmp(a, b) == expected
    assert rpmvercmp(b, a) == -expected


def test_evr_parse() -> None:
    assert EVR.parse("1:1.1.1k-4.el8") == EVR(1, "1.1.1k", "4.el8")
    assert EVR.parse("5.4.4-4.amzn2023.0.2") == EVR(0, "5.4.4", "4.amzn2023.0.2")
    assert EVR.parse("2.0") == EVR(0, "2.0", None)
    assert EVR.parse("a:1-2") == EVR(0, "a:1", "2")  # only a numeric prefix is an epoch, as in rpm's parseEVR
    assert str(EVR.parse("1:1.1.1k-4.el8")) == "1:1.1.1k-4.el8"
    assert compare_versions("1:1.0-1", "2.0-1") == 1  # the epoch wins
    assert compare_versions("0:1.0-1", "1.0-1") == 0  # a missing epoch is 0


# --- the RPM family in copa.pkg.detect and the report check -------------------------------------------------

RPM_FAMILIES = ("redhat", "centos", "rocky", "alma", "oracle", "amazon", "fedora")


def test_rpm_family_is_registered() -> None:
    assert FAMILIES["rpm"].report_families == RPM_FAMILIES
    for family in RPM_FAMILIES:
        assert version_order(family) is compare_versions
    rpm_kind = next(k for k in KINDS if k.name == "rpm")
    detected = Detected(rpm_kind, OSRelease("rhel", ("fedora",), "9.3", "", "Red Hat Enterprise Linux 9.3"))
    if importlib.util.find_spec("copa.pkg.rpm.adapter") is None:
        with pytest.raises(UnsupportedImageError) as info:
            adapter_for(detected)
        assert info.value.exit_code == 6
    else:
        assert adapter_for(detected).name


def _trivy(tmp_path: Path, family: str, name: str, vulns: list[dict[str, Any]]) -> Path:
    doc = {"SchemaVersion": 2, "ArtifactName": "img", "ArtifactType": "container_image",
           "Metadata": {"OS": {"Family": family, "Name": name}, "ImageConfig": {"architecture": "amd64"}},
           "Results": [{"Target": f"img ({family} {name})", "Class": "os-pkgs", "Type": family,
                        "Vulnerabilities": vulns}]}
    path = tmp_path / f"trivy-{family}.json"
    path.write_text(json.dumps(doc))
    return path


def _vuln(name: str, installed: str, fixed: str, cve: str) -> dict[str, Any]:
    # Trivy's PkgID for rpm is name@version-release.arch, without the epoch; InstalledVersion has the epoch.
    bare = installed.split(":", 1)[-1]
    return {"VulnerabilityID": cve, "PkgID": f"{name}@{bare}.x86_64", "PkgName": name,
            "PkgIdentifier": {"PURL": f"pkg:rpm/redhat/{name}@{bare}?arch=x86_64"},
            "InstalledVersion": installed, "FixedVersion": fixed, "Status": "fixed" if fixed else "affected",
            "Severity": "HIGH"}


def test_redhat_report_epochs(tmp_path: Path) -> None:
    path = _trivy(tmp_path, "redhat", "8.10", [
        _vuln("openssl-libs", "1:1.1.1k-4.el8", "1:1.1.1k-12.el8_9", "CVE-2023-5678"),
        # two branches listed: the lowest above the installed one; 1:... beats any epoch-0 version
        _vuln("openssl-libs", "1:1.1.1k-4.el8", "1:1.1.1k-9.el8_7, 1:1.1.1k-5.el8_5", "CVE-2022-0778"),
        _vuln("glibc", "2.28-225.el8", "2.28-225.el8_8.6", "CVE-2023-4911"),
        _vuln("glibc", "2.28-225.el8", "2.28-236.el8_9.7", "CVE-2024-2961"),
        _vuln("zlib", "1.2.11-40.el8", "", "CVE-2018-25032"),
    ])
    report = load_report(path)
    assert report.os.family == "redhat" and report.os.version == "8.10"
    fixed = {p.name: p for p in report.packages}
    assert fixed["openssl-libs"].fixed_version == "1:1.1.1k-12.el8_9"
    assert fixed["openssl-libs"].installed_version == "1:1.1.1k-4.el8"
    assert fixed["openssl-libs"].vulnerability_ids == ("CVE-2022-0778", "CVE-2023-5678")
    assert fixed["glibc"].fixed_version == "2.28-236.el8_9.7"  # rpm order: 236 > 225, el8_9 > el8_8
    assert [p.name for p in report.unfixed] == ["zlib"]
    # a lexical order would get these wrong
    assert compare_versions("1:1.1.1k-5.el8_5", "1:1.1.1k-12.el8_9") < 0


def test_amazon_report(tmp_path: Path) -> None:
    path = _trivy(tmp_path, "amazon", "2023 (Amazon Linux)", [
        _vuln("python3", "3.9.16-1.amzn2023.0.2", "3.9.16-1.amzn2023.0.10", "CVE-2023-24329"),
        _vuln("python3", "3.9.16-1.amzn2023.0.2", "3.9.16-1.amzn2023.0.9", "CVE-2023-40217"),
    ])
    report = load_report(path)
    assert report.packages[0].fixed_version == "3.9.16-1.amzn2023.0.10"


def _os(os_id: str, version_id: str, like: tuple[str, ...] = ()) -> OSRelease:
    return OSRelease(os_id, like, version_id, "", f"{os_id} {version_id}")


@pytest.mark.parametrize(("family", "name", "image"), [
    ("redhat", "8.10", _os("rhel", "8.9", ("fedora",))),  # major only: 8.10 and 8.9 are one package world
    ("redhat", "9.3", _os("rhel", "9.5", ("fedora",))),
    ("centos", "7.9.2009", _os("centos", "7", ("rhel", "fedora"))),
    ("rocky", "9.3", _os("rocky", "9.3", ("rhel", "centos", "fedora"))),
    ("alma", "8.9", _os("almalinux", "8.9", ("rhel", "centos", "fedora"))),
    ("oracle", "8.9", _os("ol", "8.9", ("fedora",))),
    ("amazon", "2 (Karoo)", _os("amzn", "2", ("centos", "rhel", "fedora"))),
    ("amazon", "2023", _os("amzn", "2023", ("fedora",))),
    ("amazon", "2023 (Amazon Linux)", _os("amzn", "2023", ("fedora",))),
    ("amazon", "AMI release 2018.03", _os("amzn", "2018.03", ("rhel", "fedora"))),
    ("fedora", "39", _os("fedora", "39")),
])
def test_report_matches_image(tmp_path: Path, family: str, name: str, image: OSRelease) -> None:
    _check_report(load_report(_trivy(tmp_path, family, name, [])), image)


@pytest.mark.parametrize(("family", "name", "image"), [
    ("redhat", "9.3", _os("rhel", "8.10", ("fedora",))),  # another major release
    ("amazon", "2 (Karoo)", _os("amzn", "2023", ("fedora",))),
    ("amazon", "2023", _os("amzn", "2", ("centos", "rhel", "fedora"))),
    ("redhat", "9.3", _os("rocky", "9.3", ("rhel", "centos", "fedora"))),  # Trivy reports Rocky as rocky
    ("centos", "8", _os("almalinux", "8.9", ("rhel", "centos", "fedora"))),
    ("fedora", "39", _os("rhel", "9.3", ("fedora",))),
    ("oracle", "8.9", _os("rhel", "8.9", ("fedora",))),
])
def test_report_for_another_release_or_distribution(tmp_path: Path, family: str, name: str,
                                                    image: OSRelease) -> None:
    with pytest.raises(ReportError) as info:
        _check_report(load_report(_trivy(tmp_path, family, name, [])), image)
    assert info.value.exit_code == 3
