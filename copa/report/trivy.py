"""Trivy JSON reports (`trivy image --format json`), SchemaVersion 2."""

from __future__ import annotations

from typing import Any

from copa.errors import ReportError
from copa.report._json import field
from copa.report.model import Finding, OSInfo, Report, build_packages, comparator_for

SCHEMA_VERSION = 2
_NO_OS = "report has no OS metadata: was it made by `trivy image --format json`?"


def is_trivy(doc: dict[str, Any]) -> bool:
    return "SchemaVersion" in doc or ("Results" in doc and "ArtifactName" in doc)


def parse_trivy(doc: dict[str, Any], source: str) -> Report:
    schema = doc.get("SchemaVersion")
    if schema != SCHEMA_VERSION or isinstance(schema, bool):
        raise ReportError(f"{source}: Trivy SchemaVersion {schema!r} is not supported: "
                          f"regenerate it with a Trivy that writes SchemaVersion {SCHEMA_VERSION}")
    metadata = field(doc, "Metadata", dict, source, "", required=False)
    os_meta = field(metadata, "OS", dict, source, "Metadata", required=False) if metadata else None
    if not os_meta:
        raise ReportError(f"{source}: {_NO_OS}")
    family = field(os_meta, "Family", str, source, "Metadata.OS", required=False)
    if not family:
        raise ReportError(f"{source}: {_NO_OS}")
    version = field(os_meta, "Name", str, source, "Metadata.OS", required=False) or ""
    arch = variant = image_os = None
    # ImageConfig is the image's config as go-containerregistry's v1.ConfigFile spells it (architecture, variant, os).
    config = field(metadata, "ImageConfig", dict, source, "Metadata", required=False) if metadata else None
    if config:
        arch = field(config, "architecture", str, source, "Metadata.ImageConfig", required=False) or None
        variant = field(config, "variant", str, source, "Metadata.ImageConfig", required=False) or None
        image_os = field(config, "os", str, source, "Metadata.ImageConfig", required=False) or None

    findings: list[Finding] = []
    results = field(doc, "Results", list, source, "", required=False) or []
    for r_index, result in enumerate(results):
        where = f"Results[{r_index}]"
        if not isinstance(result, dict):
            raise ReportError(f"{source}: {where} must be an object")
        cls = field(result, "Class", str, source, where, required=False)
        # Old Trivy (before Class existed) named OS results by the OS family in Type.
        kind = field(result, "Type", str, source, where, required=False)
        if cls != "os-pkgs" and not (cls is None and kind == family):
            continue  # lang-pkgs, secrets, config... are not ours
        vulns = field(result, "Vulnerabilities", list, source, where, required=False) or []
        for v_index, vuln in enumerate(vulns):
            vwhere = f"{where}.Vulnerabilities[{v_index}]"
            if not isinstance(vuln, dict):
                raise ReportError(f"{source}: {vwhere} must be an object")
            # PkgName is the binary package (SrcName would be the source); that is what gets installed.
            name = field(vuln, "PkgName", str, source, vwhere)
            installed = field(vuln, "InstalledVersion", str, source, vwhere)
            vuln_id = field(vuln, "VulnerabilityID", str, source, vwhere)
            fixed = field(vuln, "FixedVersion", str, source, vwhere, required=False) or ""
            assert name is not None and installed is not None and vuln_id is not None
            findings.append(Finding(name, installed, fixed, vuln_id))
    os_info = OSInfo(family.lower(), version)
    packages, unfixed = build_packages(findings, comparator_for(os_info.family), source)
    artifact = field(doc, "ArtifactName", str, source, "", required=False) or None
    digests = field(metadata, "RepoDigests", list, source, "Metadata", required=False) if metadata else None
    return Report(source, "trivy", os_info, arch, packages, unfixed, variant=variant, image_os=image_os,
                  artifact=artifact, repo_digests=tuple(d for d in digests or () if isinstance(d, str)))
