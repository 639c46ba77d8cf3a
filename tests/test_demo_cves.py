"""The demo's vulnerability identifiers come from the fixed packages' own changelogs (tests/support/cves.py).

Oracles: dpkg-deb -x puts the .debs on disk as dpkg would (so the changelog path, symlinked doc dirs included, is
resolved by the kernel), zcat reads it, `dpkg-parsechangelog --since` picks the entries an upgrade brings, and
grep finds the identifiers in them. Everything is real packages from the Debian archive of this machine.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from debian.debian_support import version_compare

from copa.pkg.apt.debs import fetch_deb
from copa.pkg.apt.packages import PackageRecord
from copa.report.load import load_report
from tests.support import cves, images
from tests.support.trivy import dpkg_versions, fixed_packages, write_report

pytestmark = pytest.mark.live

# Security updates (openssl, pam), a binNMU installed version (libssh2-1 1.10.0-3+b1), a native package whose
# Debian changelog is changelog.gz (apt), a package whose doc dir is a symlink into another one (libstdc++6 ->
# gcc-12-base).
DEMO = Path(__file__).resolve().parents[1] / "fixtures" / "demo.py"
PACKAGES = ("libssl3", "libpam0g", "libssh2-1", "apt", "libstdc++6")


def _newest(name: str) -> PackageRecord:
    records = cves.archive_index().versions(name)
    assert records, f"{name} is not in the archive's bookworm indexes"
    newest = records[0]
    for r in records[1:]:
        if version_compare(r.version, newest.version) > 0:
            newest = r
    return newest


def _extract(records: list[PackageRecord], root: Path) -> Path:
    for r in records:
        subprocess.run(["dpkg-deb", "-x", str(fetch_deb(r)), str(root)], check=True)
    return root


def _oracle_text(root: Path, name: str, version: str) -> tuple[str, Path]:
    for path in cves.changelog_names(name, version):
        if (root / path).exists():
            out = subprocess.run(["zcat", str(root / path)], check=True, capture_output=True).stdout
            return out.decode("utf-8", errors="replace"), (root / path).resolve()
    raise AssertionError(f"no changelog for {name} under {root}")


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each package's newest .deb unpacked by dpkg-deb (with the package its doc-dir symlink points into)."""
    out = {}
    for name in PACKAGES:
        newest = _newest(name)
        with_deps = [newest]
        if name == "libstdc++6":
            with_deps.append(next(r for r in cves.archive_index().versions("gcc-12-base")
                                  if r.source_version == newest.source_version))
        out[name] = _extract(with_deps, tmp_path_factory.mktemp(name.replace("+", "p")))
    return out


def test_changelog_is_the_one_dpkg_installs(extracted: dict[str, Path]) -> None:
    for name, root in extracted.items():
        version = _newest(name).version
        changelog = cves.fixed_changelog(name, version)
        assert changelog is not None
        text, real_path = _oracle_text(root, name, version)
        assert changelog.text == text, name
        assert real_path == (root / changelog.path).resolve(), name
    stdcxx = cves.fixed_changelog("libstdc++6", _newest("libstdc++6").version)
    assert stdcxx is not None and stdcxx.package == "gcc-12-base"  # followed the symlink into the other .deb


def _dpkg_range(changelog: Path, since: str) -> tuple[list[str], tuple[str, ...], tuple[str, ...]]:
    """(versions, CVE ids, DSA/DLA ids) of the entries `dpkg-parsechangelog --since` selects, the ids found by
    grep in what it prints (one entry per paragraph; headers and trailers name no id)."""
    out = subprocess.run(["dpkg-parsechangelog", "-l", str(changelog), "--since", since, "--format", "rfc822"],
                         check=True, capture_output=True).stdout
    versions = re.findall(r"^Version: (\S+)$", out.decode(errors="replace"), re.M)
    found = subprocess.run(["grep", "-oE", r"CVE-[0-9]{4}-[0-9]{4,}|D[SL]A[- ][0-9]+-[0-9]+"], input=out,
                           capture_output=True, check=False).stdout.decode().splitlines()
    found = [f.replace(" ", "-") for f in found]
    return (versions, tuple(dict.fromkeys(f for f in found if f.startswith("CVE-"))),
            tuple(dict.fromkeys(f for f in found if not f.startswith("CVE-"))))


def _since_values(text: str) -> Iterator[str]:
    """Installed versions an upgrade to the top entry can start from: listed ones, binNMUs of them (not listed:
    dpkg takes the next older one), and one older than everything (dpkg then takes every entry). Not the top
    version itself nor a newer one: dpkg-parsechangelog then ignores --since and prints the top entry (its default
    range), where nothing is fixed and cves.entries_since rightly answers no entry."""
    versions = re.findall(r"^\S+ \(([^)]+)\)", text, re.M)
    yield from versions[1:4]
    yield from (f"{v}+b1" for v in versions[1:3])
    yield "0~"


def test_ids_are_those_dpkg_parsechangelog_selects(extracted: dict[str, Path], tmp_path: Path) -> None:
    checked = 0
    for name in PACKAGES[:-1]:  # libstdc++6 is here for its symlink; its changelog is gcc's, long to parse
        version = _newest(name).version
        changelog = cves.fixed_changelog(name, version)
        assert changelog is not None
        plain = tmp_path / f"{name}.changelog"
        plain.write_text(changelog.text)
        for since in _since_values(changelog.text):
            picked = cves.entries_since(changelog.text, since)
            versions, expected_cves, expected_advisories = _dpkg_range(plain, since)
            assert [str(b.version) for b in picked] == versions, (name, since)
            assert cves.ids_in(cves.changes_text(picked)) == (expected_cves, expected_advisories), (name, since)
            checked += 1
    assert checked >= (len(PACKAGES) - 1) * 6


def test_fix_ids_of_a_security_update(extracted: dict[str, Path], tmp_path: Path) -> None:
    # The upgrade the demo's image gets: the point release's openssl to bookworm-security's.
    index = cves.archive_index()
    fixed = _newest("libssl3").version
    installed = next(r.version for r in index.versions("libssl3") if r.suite == "bookworm")
    if installed == fixed:
        pytest.fail("bookworm-security has no newer libssl3 than bookworm: pick another package for this test")
    ids = cves.fix_ids({"libssl3": (installed, fixed), "openssl": (installed, fixed), "no-such-pkg": ("1", "2")})
    plain = tmp_path / "c"
    plain.write_text(_oracle_text(extracted["libssl3"], "libssl3", fixed)[0])
    expected = _dpkg_range(plain, installed)[1]
    assert expected, "the openssl security update names no CVE: the oracle found nothing to compare"
    assert ids["libssl3"].cves == expected
    assert ids["openssl"].cves == expected  # one source, one changelog
    assert ids["no-such-pkg"].ids == () and ids["no-such-pkg"].changelog == ""

    # The report the demo writes lists each package once per identifier, nothing made up, and copa reads it so.
    with_none = {"libssl3": ids["libssl3"].ids, "tzdata": ()}
    report_path = write_report(tmp_path / "trivy.json", {"libssl3": (installed, fixed), "tzdata": ("1", "2")},
                               ids=with_none)
    rows = json.loads(report_path.read_text())["Results"][0]["Vulnerabilities"]
    assert [r["VulnerabilityID"] for r in rows] == [*expected, ""]
    report = load_report(report_path)
    assert {p.name: set(p.vulnerability_ids) for p in report.packages} == {"libssl3": set(expected),
                                                                          "tzdata": {""}}
    assert report.unfixed == ()


def test_demo_report_ids_match_the_changelogs_apt_installed(tmp_path: Path) -> None:
    """The demo's report, package by package, against the changelogs real apt installed in the oracle image (the
    fixture image built with bookworm-security): dpkg-parsechangelog --since the vulnerable image's version."""
    fixes = fixed_packages(dpkg_versions(images.debian_rootfs()), dpkg_versions(images.oracle_rootfs()))
    assert len(fixes) >= 3, "bookworm-security has (almost) nothing newer than the point release: no demo"
    ids = cves.fix_ids(fixes)
    oracle_root = images.oracle_rootfs()
    named = 0
    for name, (installed, fixed) in fixes.items():
        doc = oracle_root / "usr/share/doc" / name
        path = next(p for p in (doc / "changelog.Debian.gz", doc / "changelog.gz") if p.exists())
        plain = tmp_path / f"{name}.changelog"
        plain.write_bytes(subprocess.run(["zcat", str(path)], check=True, capture_output=True).stdout)
        versions, expected, advisories = _dpkg_range(plain, installed)
        assert versions[0] == fixed, name  # the oracle image holds the fixed version
        assert ids[name].ids == (expected or advisories), name
        named += bool(expected)
    assert named >= 1, "no fix of the demo names a CVE: the comparison above proved little"


@pytest.mark.sweep
def test_demo_runs_and_names_only_changelog_ids() -> None:
    """`fixtures/demo.py` end to end (two and a half minutes): every step ran (nothing "skipped"), every tag it
    checks exists, and every identifier it prints is one a changelog in the oracle image (installed by real apt
    from bookworm-security) names."""
    proc = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True, check=False, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "skipped: not available" not in out and "MISSING" not in out, out[-3000:]
    assert "statements" in out and "linux/arm64" in out
    docs = images.oracle_rootfs() / "usr/share/doc"
    texts = b"".join(subprocess.run(["zcat", "-f", str(p)], capture_output=True, check=False).stdout
                     for p in sorted(docs.glob("*/changelog*.gz")))
    printed = set(re.findall(r"\b(?:CVE-\d{4}-\d{4,}|D[SL]A-\d+-\d+)\b", out))
    assert len(printed) >= 3
    # changelogs write "DSA 5678-1" as often as "DSA-5678-1"
    assert {i for i in printed if i.encode() not in texts and i.replace("-", " ", 1).encode() not in texts} == set()
