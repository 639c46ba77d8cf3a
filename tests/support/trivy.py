"""Trivy JSON reports made by the tests: what Trivy would say of an image whose packages are older than the
ones apt installs from bookworm-security (the oracle image), so the tests follow the archive as it moves."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

# Packages listed with no fixed version, as Trivy lists "will_not_fix" / "affected" entries.
UNFIXED_NAME = "no-fix-yet"


def dpkg_versions(rootfs: Path) -> dict[str, str]:
    out = subprocess.run(
        ["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\n"],
        check=True, capture_output=True, text=True,
    ).stdout
    versions = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2].startswith("ii"):
            versions[parts[0]] = parts[1]
    return versions


def status_d_versions(rootfs: Path) -> dict[str, str]:
    versions = {}
    for f in sorted((rootfs / "var/lib/dpkg/status.d").iterdir()):
        if f.name.endswith(".md5sums"):
            continue
        fields = dict(line.split(": ", 1) for line in f.read_text().splitlines() if ": " in line)
        versions[fields["Package"]] = fields["Version"]
    return versions


def fixed_packages(base: dict[str, str], oracle: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Packages whose oracle version is newer: name -> (installed, fixed)."""
    out = {}
    for name, old in base.items():
        new = oracle.get(name)
        if new and new != old and subprocess.run(["dpkg", "--compare-versions", new, "gt", old]).returncode == 0:
            out[name] = (old, new)
    return out


def write_report(path: Path, fixes: dict[str, tuple[str, str]], os_version: str = "12.5", arch: str = "amd64",
                 family: str = "debian", ids: Mapping[str, Sequence[str]] | None = None) -> Path:
    """A Trivy JSON report naming `fixes` (name -> (installed, fixed)).

    Without `ids` (hermetic packages that have no real advisories) each package gets two placeholder CVEs from
    the reserved-looking CVE-2099 range, plus one unfixed entry for UNFIXED_NAME. With `ids` (real packages:
    tests/support/cves.py reads them from the fixed packages' changelogs) each package is listed once per real
    identifier, or once with an empty VulnerabilityID when it has none, and nothing made up is added.
    """
    vulns = []
    for i, (name, (installed, fixed)) in enumerate(sorted(fixes.items())):
        if ids is not None:
            # Trivy has no severity without its database; "UNKNOWN" is what it writes then.
            for vuln_id in ids.get(name, ()) or ("",):
                vulns.append({"VulnerabilityID": vuln_id, "PkgName": name, "InstalledVersion": installed,
                              "FixedVersion": fixed, "Severity": "UNKNOWN"})
            continue
        # Two CVEs for each package: Trivy lists a package once per CVE.
        for j in range(2):
            vulns.append({"VulnerabilityID": f"CVE-2099-{1000 + 2 * i + j}", "PkgName": name,
                          "InstalledVersion": installed, "FixedVersion": fixed, "Severity": "HIGH"})
    if ids is None:
        vulns.append({"VulnerabilityID": "CVE-2099-0001", "PkgName": UNFIXED_NAME, "InstalledVersion": "1.0",
                      "Severity": "LOW", "Status": "affected"})
    report = {
        "SchemaVersion": 2,
        "ArtifactName": "test-image",
        "ArtifactType": "container_image",
        "Metadata": {"OS": {"Family": family, "Name": os_version},
                     "ImageConfig": {"architecture": arch, "os": "linux"}},
        "Results": [{"Target": f"test-image ({family} {os_version})", "Class": "os-pkgs", "Type": family,
                     "Vulnerabilities": vulns}],
    }
    path.write_text(json.dumps(report, indent=1))
    return path
