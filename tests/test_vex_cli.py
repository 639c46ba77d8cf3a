"""`copa patch -f openvex -o FILE --attach` end to end: the real CLI patches the Debian fixture from the live
archive, pushes it to a real registry, writes the OpenVEX document and attaches it with an SBOM as OCI referrers.

Oracles: the official OpenVEX schema (tests/test_vex.py's validator), the report the run was given (every fixed
vulnerability is stated, nothing else), skopeo reading the referrers fallback tag and the artifacts, and the
image itself read back by umoci (the SBOM's package versions equal the patched dpkg database's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from copa.oci.digest import Digest
from copa.oci.referrers import CYCLONEDX, OPENVEX, referrers_tag
from tests.support import images
from tests.support.registry import RunningRegistry
from tests.support.trivy import dpkg_versions, fixed_packages, write_report
from tests.test_vex import VALIDATOR

pytestmark = [pytest.mark.live, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "SOURCE_DATE_EPOCH": "1704067200", "COPA_VEX_AUTHOR": "Security Team <sec@example.test>"}
PREFERRED = ("libexpat1", "libssh2-1", "liblzma5", "libpcre2-8-0")


def copa(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "copa", *map(str, args)], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, check=False)


def skopeo(*args: str) -> str:
    proc = subprocess.run(["skopeo", *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def run(anon_registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("vexcli")
    fixes = fixed_packages(dpkg_versions(images.debian_rootfs()), dpkg_versions(images.oracle_rootfs()))
    chosen = [n for n in PREFERRED if n in fixes][:2] or list(fixes)[:2]
    assert chosen, "the fixture has nothing to fix"
    report = write_report(tmp / "trivy.json", {n: fixes[n] for n in chosen})
    layout, name = images.debian_layout()
    images.push_layout(layout, name, anon_registry.host, "vex/app:1.0")
    source = f"{anon_registry.host}/vex/app:1.0"
    vex_file = tmp / "out" / "vex.json"
    vex_file.parent.mkdir()
    proc = copa("patch", "-i", source, "-r", report, "-t", "1.0-patched", "-p", "-f", "openvex", "-o", vex_file,
                "--attach", "--json")
    assert proc.returncode == 0, proc.stderr
    return {"result": json.loads(proc.stdout), "vex": json.loads(vex_file.read_text()), "report": report,
            "target": f"{anon_registry.host}/vex/app:1.0-patched", "repo": f"{anon_registry.host}/vex/app",
            "chosen": {n: fixes[n] for n in chosen}}


def test_the_document_is_valid_openvex_with_every_fixed_vulnerability(run: dict[str, Any]) -> None:
    doc = run["vex"]
    errors = sorted(VALIDATOR.iter_errors(doc), key=str)
    assert not errors, errors[0]
    assert doc["author"] == "Security Team <sec@example.test>"
    reported = json.loads(Path(run["report"]).read_text())
    expected = {v["VulnerabilityID"] for r in reported["Results"] for v in r.get("Vulnerabilities") or []
                if v.get("FixedVersion") and v.get("VulnerabilityID")}
    stated = {s["vulnerability"]["name"] for s in doc["statements"]}
    assert stated == expected
    assert {s["status"] for s in doc["statements"]} == {"fixed"}
    digest = run["result"]["digest"]
    products = {p["@id"] for s in doc["statements"] for p in s["products"]}
    assert any(f"@{digest.replace(':', '%3A')}" in p or f"@{digest}" in p for p in products), products
    subs = {c["@id"] for s in doc["statements"] for p in s["products"] for c in p.get("subcomponents", [])}
    for name, (old, _new) in run["chosen"].items():
        # Named at the version the scanner saw (the installed one), as Copacetic and Trivy name it.
        assert any(unquote(c).startswith(f"pkg:deb/debian/{name}@{old}?") and "arch=" in c for c in subs), subs


def test_sbom_and_vex_are_referrers_of_the_patched_manifest(run: dict[str, Any], tmp_path: Path) -> None:
    digest = Digest.parse(run["result"]["digest"])
    index = json.loads(skopeo("inspect", "--tls-verify=false", "--raw",
                              f"docker://{run['repo']}:{referrers_tag(digest)}"))
    types = sorted(m["artifactType"] for m in index["manifests"])
    assert types == sorted([CYCLONEDX, OPENVEX])
    sbom_entry = next(m for m in index["manifests"] if m["artifactType"] == CYCLONEDX)
    manifest = json.loads(skopeo("inspect", "--tls-verify=false", "--raw",
                                 f"docker://{run['repo']}@{sbom_entry['digest']}"))
    assert manifest["subject"]["digest"] == str(digest)
    layer = manifest["layers"][0]["digest"]
    blob = tmp_path / "sbom.json"
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{run['repo']}@{sbom_entry['digest']}",
                    f"dir:{tmp_path / 'art'}"], check=True, capture_output=True)
    blob.write_bytes((tmp_path / "art" / layer.split(":")[1]).read_bytes())
    sbom = json.loads(blob.read_text())
    versions = {c["name"]: c["version"] for c in sbom["components"] if c.get("type") == "library"}
    # The SBOM speaks of the patched image: the fixed packages at their new versions.
    for name, (_old, new) in run["chosen"].items():
        assert versions.get(name) == new, (name, versions.get(name), new)
    # ... and the patched dpkg database, read back from the registry by umoci, lists the same package set.
    oci = tmp_path / "oci"
    skopeo("copy", "--quiet", "--src-tls-verify=false", f"docker://{run['target']}", f"oci:{oci}:x")
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{oci}:x", str(tmp_path / "bundle")], check=True,
                   capture_output=True)
    admin = tmp_path / "bundle" / "rootfs" / "var" / "lib" / "dpkg"
    listed = subprocess.run(["dpkg-query", f"--admindir={admin}", "-W", "-f", "${Package} ${Version}\\n"],
                            check=True, capture_output=True, text=True).stdout.split("\n")
    dpkg = dict(line.split(" ", 1) for line in listed if line)
    assert versions == dpkg


def test_o_without_a_patch_and_f_without_o_are_usage_errors(tmp_path: Path) -> None:
    layout, name = images.debian_layout()
    proc = copa("patch", "-i", f"oci:{layout}:{name}", "-f", "openvex", "--oci-dir", tmp_path / "o")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "needs -o" in proc.stderr
    proc = copa("patch", "-i", f"oci:{layout}:{name}", "-o", tmp_path / "v.json", "--dry-run")
    assert proc.returncode == 2 and "--dry-run" in proc.stderr
    proc = copa("patch", "-i", f"oci:{layout}:{name}", "--attach", "--oci-dir", tmp_path / "o")
    assert proc.returncode == 2 and "--push" in proc.stderr
    assert not (tmp_path / "o").exists()
