"""copa's own update manifests (Copacetic pkg/types v1alpha1 and v1alpha2)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from copa.errors import ReportError
from copa.report._json import field
from copa.report.model import Finding, OSInfo, Report, ReportedPackage, build_packages, comparator_for

# apiVersion -> the key holding OS package updates (v1alpha2 split OS and language updates).
API_VERSIONS = {"v1alpha1": "updates", "v1alpha2": "osupdates"}


def is_native(doc: dict[str, Any]) -> bool:
    return "apiVersion" in doc


def parse_native(doc: dict[str, Any], source: str) -> Report:
    api = doc.get("apiVersion")
    if not isinstance(api, str) or api not in API_VERSIONS:  # a list or object is not even hashable
        raise ReportError(f"{source}: apiVersion {api!r} is not supported: expected one of "
                          f"{', '.join(sorted(API_VERSIONS))}")
    metadata = field(doc, "metadata", dict, source, "")
    assert metadata is not None
    os_meta = field(metadata, "os", dict, source, "metadata")
    assert os_meta is not None
    family = field(os_meta, "type", str, source, "metadata.os")
    if not family:
        raise ReportError(f"{source}: field metadata.os.type is empty: it names the image's OS (e.g. debian)")
    version = field(os_meta, "version", str, source, "metadata.os", required=False) or ""
    config = field(metadata, "config", dict, source, "metadata", required=False)
    arch = (field(config, "arch", str, source, "metadata.config", required=False) or None) if config else None
    # v1alpha2 added config.variant; a v1alpha1 document may carry it too (plugins written for both), so read it
    # whenever it is there.
    variant = (field(config, "variant", str, source, "metadata.config", required=False) or None) if config else None

    key = API_VERSIONS[api]
    findings: list[Finding] = []
    for index, item in enumerate(field(doc, key, list, source, "", required=False) or []):
        where = f"{key}[{index}]"
        if not isinstance(item, dict):
            raise ReportError(f"{source}: {where} must be an object")
        name = field(item, "name", str, source, where)
        installed = field(item, "installedVersion", str, source, where)
        fixed = field(item, "fixedVersion", str, source, where, required=False) or ""
        vuln_id = field(item, "vulnerabilityID", str, source, where, required=False) or ""
        assert name is not None and installed is not None
        findings.append(Finding(name, installed, fixed, vuln_id))
    os_info = OSInfo(family.lower(), version)
    packages, unfixed = build_packages(findings, comparator_for(os_info.family), source)
    # An update without a vulnerability ID is still an update; keep no empty IDs in the lists.
    packages = tuple(_drop_empty_ids(p) for p in packages)
    unfixed = tuple(_drop_empty_ids(p) for p in unfixed)
    return Report(source, api, os_info, arch, packages, unfixed, variant=variant)


def _drop_empty_ids(p: ReportedPackage) -> ReportedPackage:
    return replace(p, vulnerability_ids=tuple(i for i in p.vulnerability_ids if i))
