"""Grype JSON reports (`grype IMAGE -o json`).

The shape is Grype's presenter model (grype/presenter/models: Document, Match, Package, Vulnerability, Fix,
distribution, source) and Syft's image source metadata (syft/source ImageMetadata). Only matches on OS packages
(artifact.type deb, apk, rpm) are ours; language packages are skipped as Trivy's lang-pkgs results are.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from copa.errors import ReportError
from copa.report._json import field
from copa.report.model import Finding, OSInfo, Report, build_packages, comparator_for

# Syft package types of OS packages.
OS_PACKAGE_TYPES = frozenset({"deb", "apk", "rpm"})

# Grype's distro names (grype/distro Type, and the os-release ID it falls back to when it cannot type a distro)
# -> the family names the rest of copa uses, which are Trivy's.
_FAMILIES = {
    "debian": "debian", "ubuntu": "ubuntu", "alpine": "alpine", "wolfi": "wolfi", "chainguard": "chainguard",
    "redhat": "redhat", "rhel": "redhat", "centos": "centos", "rockylinux": "rocky", "rocky": "rocky",
    "almalinux": "alma", "alma": "alma", "oraclelinux": "oracle", "ol": "oracle", "oracle": "oracle",
    "amazonlinux": "amazon", "amzn": "amazon", "amazon": "amazon", "fedora": "fedora",
    "mariner": "cbl-mariner", "cbl-mariner": "cbl-mariner", "azurelinux": "azurelinux",
}

_NO_DISTRO = "report names no distro: Grype found no OS in the image; scan the image itself with `grype IMAGE -o json`"


def is_grype(doc: dict[str, Any]) -> bool:
    """Grype's document: `matches` beside at least one of its other top-level keys."""
    return "matches" in doc and any(k in doc for k in ("descriptor", "distro", "source"))


def family_of(name: str) -> str:
    return _FAMILIES.get(name.strip().lower(), name.strip().lower())


def _without_zero_epoch(version: str) -> str:
    """'0:2.35-7.cm2' -> '2.35-7.cm2'. Grype prints the zero epoch the RHEL-family feeds carry; rpm, Trivy and copa
    write none, and to rpm the two are the same version."""
    return version[2:] if version.startswith("0:") else version


def _image_config(target: dict[str, Any]) -> tuple[str, str | None, str | None] | None:
    """(architecture, variant, os) from the image config Syft keeps in source.target.config (base64 of the config
    blob), or None when it is absent or unreadable. It is the image's own word; the target's architecture fields are
    the platform Syft asked the registry for, which for a single-platform image is the scanning host's (Syft 1.18
    says amd64 for an arm64-only image) and empty for an OCI directory."""
    raw = target.get("config")
    if not isinstance(raw, str) or not raw:
        return None
    try:
        config = json.loads(base64.b64decode(raw, validate=True))
    except (ValueError, RecursionError):
        return None  # binascii.Error and JSONDecodeError are ValueErrors; the target's fields still stand
    if not isinstance(config, dict):
        return None

    def text(key: str) -> str | None:
        value = config.get(key)
        return value if isinstance(value, str) and value else None

    return text("architecture") or "", text("variant"), text("os")


def parse_grype(doc: dict[str, Any], source: str) -> Report:
    distro = field(doc, "distro", dict, source, "", required=False)
    if not distro:
        raise ReportError(f"{source}: {_NO_DISTRO}")
    name = field(distro, "name", str, source, "distro", required=False)
    if not name:
        raise ReportError(f"{source}: {_NO_DISTRO}")
    version = field(distro, "version", str, source, "distro", required=False) or ""
    os_info = OSInfo(family_of(name), version)

    arch = variant = image_os = artifact = None
    digests: list[Any] = []
    src = field(doc, "source", dict, source, "", required=False)
    # Only an image source carries the platform (Syft's ImageMetadata); an SBOM or a directory scan names none.
    if src and src.get("type") == "image":
        target = field(src, "target", dict, source, "source", required=False)
        if target:
            arch = field(target, "architecture", str, source, "source.target", required=False) or None
            variant = field(target, "architectureVariant", str, source, "source.target", required=False) or None
            image_os = field(target, "os", str, source, "source.target", required=False) or None
            artifact = field(target, "userInput", str, source, "source.target", required=False) or None
            digests = field(target, "repoDigests", list, source, "source.target", required=False) or []
            config = _image_config(target)
            if config is not None and config[0]:
                arch, variant, image_os = config

    # ignoredMatches (Grype's ignore rules, --only-fixed...) are left out: the user chose not to act on them.
    findings: list[Finding] = []
    for index, match in enumerate(field(doc, "matches", list, source, "", required=False) or []):
        where = f"matches[{index}]"
        if not isinstance(match, dict):
            raise ReportError(f"{source}: {where} must be an object")
        findings.extend(_findings(match, source, where))
    packages, unfixed = build_packages(findings, comparator_for(os_info.family), source)
    return Report(source, "grype", os_info, arch, packages, unfixed, variant=variant, image_os=image_os,
                  artifact=artifact, repo_digests=tuple(d for d in digests if isinstance(d, str)))


def _findings(match: dict[str, Any], source: str, where: str) -> list[Finding]:
    artifact = field(match, "artifact", dict, source, where)
    assert artifact is not None
    kind = field(artifact, "type", str, source, f"{where}.artifact", required=False) or ""
    if kind not in OS_PACKAGE_TYPES:
        return []  # a language package (python, npm, java-archive, go-module...) or a binary
    name = field(artifact, "name", str, source, f"{where}.artifact")
    installed = field(artifact, "version", str, source, f"{where}.artifact")
    vuln = field(match, "vulnerability", dict, source, where)
    assert name is not None and installed is not None and vuln is not None
    vuln_id = field(vuln, "id", str, source, f"{where}.vulnerability")
    assert vuln_id is not None
    fix = field(vuln, "fix", dict, source, f"{where}.vulnerability", required=False) or {}
    state = field(fix, "state", str, source, f"{where}.vulnerability.fix", required=False) or ""
    versions = field(fix, "versions", list, source, f"{where}.vulnerability.fix", required=False) or []
    for v_index, v in enumerate(versions):
        if not isinstance(v, str):
            raise ReportError(f"{source}: field {where}.vulnerability.fix.versions[{v_index}] must be a string")
    if kind == "rpm":
        installed = _without_zero_epoch(installed)
        versions = [_without_zero_epoch(v) for v in versions]
    # "fixed" is the one state with a fix to install; not-fixed, wont-fix, unknown (and an older Grype's empty
    # state) are unfixed whatever versions they list. Several versions (one per branch) are Trivy's comma list,
    # so both choose the same way (copa.report.model._choose_fixed).
    fixed = ", ".join(v.strip() for v in versions if v.strip()) if state == "fixed" else ""
    return [Finding(name, installed, fixed, i) for i in _ids(match, vuln_id, source, where)]


def _ids(match: dict[str, Any], vuln_id: str, source: str, where: str) -> tuple[str, ...]:
    """The CVEs a match stands for. A match on a distribution advisory (Amazon's ALAS-..., Chainguard's CGA-...)
    names the CVEs it fixes in relatedVulnerabilities; those are what Trivy reports and VEX consumers match, so
    they replace the advisory's ID. A CVE match keeps its own ID (its related entries are NVD's record of it)."""
    if vuln_id.upper().startswith("CVE-"):
        return (vuln_id,)
    related = field(match, "relatedVulnerabilities", list, source, where, required=False) or []
    cves: list[str] = []
    for r_index, entry in enumerate(related):
        if not isinstance(entry, dict):
            raise ReportError(f"{source}: {where}.relatedVulnerabilities[{r_index}] must be an object")
        rid = field(entry, "id", str, source, f"{where}.relatedVulnerabilities[{r_index}]", required=False) or ""
        if rid.upper().startswith("CVE-") and rid not in cves:
            cves.append(rid)
    return tuple(cves) or (vuln_id,)
