"""SBOMs of the patched image: CycloneDX 1.6 JSON (every installed OS package after the patch with its purl, the
OS as an `operating-system` component, the image as metadata.component) and SPDX 2.3 JSON (the same facts: the image
package DESCRIBED, CONTAINING the OS and each package).

The package list is the adapter's inventory (copa/pkg/<family>/inventory.py): read from the image's own package
database with the plan applied, not scanned from files. The same image gives the same bytes (timestamp from
SOURCE_DATE_EPOCH when set; serialNumber derived from the content).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from copa import __version__
from copa.oci.digest import Digest
from copa.oci.model import Platform
from copa.oci.reference import Reference
from copa.pkg.base import OSRelease
from copa.pkg.inventory import InstalledPackage
from copa.vex import image_purl, timestamp

SPEC_VERSION = "1.6"
SCHEMA_URL = f"http://cyclonedx.org/schema/bom-{SPEC_VERSION}.schema.json"


@dataclass(frozen=True, slots=True)
class SbomImage:
    name: str  # registry/repository, as the user named the patched image
    digest: str  # sha256:... of the patched manifest
    purl: str  # pkg:oci/... (copa.vex.image_purl)


def _os_ref(os_release: OSRelease) -> str:
    return f"os:{os_release.id or 'unknown'}@{os_release.version_id or 'unknown'}"


def _license(text: str) -> dict[str, Any]:
    # Declared licenses are free text (apk L:, rpm License:), often compound ("GPL-2.0-or-later AND MIT", "GPLv2+"):
    # a name is always valid CycloneDX, an SPDX id only if it is in the schema's list, which copa does not check.
    return {"license": {"name": text}}


# Trivy's CycloneDX property names. Trivy looks a Debian, Ubuntu or RPM package's advisories up by its source
# package, and reads a third-party SBOM's source packages from these properties only (not from a purl's `upstream`
# qualifier): without them `trivy sbom` would look libssl3 up instead of openssl and miss its vulnerabilities.
_TRIVY = "aquasecurity:trivy:"


def _split_version(version: str) -> tuple[str, str, str]:
    """(epoch, version, release) as Trivy keeps them: '1:2.38.1-5+deb12u3' -> ('1', '2.38.1', '5+deb12u3'); the
    release is what follows the last '-' (dpkg's revision, rpm's release, apk's -rN)."""
    epoch, colon, rest = version.partition(":")
    if not colon or not epoch.isdigit():
        epoch, rest = "", version
    upstream, dash, release = rest.rpartition("-")
    return (epoch, upstream, release) if dash else (epoch, rest, "")


def _component(p: InstalledPackage) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "library", "bom-ref": p.purl, "name": p.name, "version": p.version,
                           "purl": p.purl}
    if p.licenses:
        out["licenses"] = [_license(t) for t in p.licenses]
    epoch, version, release = _split_version(p.source_version or p.version)
    properties = [{"name": f"{_TRIVY}SrcName", "value": p.source or p.name},
                  {"name": f"{_TRIVY}SrcVersion", "value": version}]
    if release:
        properties.append({"name": f"{_TRIVY}SrcRelease", "value": release})
    if epoch and epoch != "0":
        properties.append({"name": f"{_TRIVY}SrcEpoch", "value": epoch})
    out["properties"] = properties
    return out


def cyclonedx_document(image: SbomImage, os_release: OSRelease, packages: Sequence[InstalledPackage], *,
                       timestamp: str, tool_version: str = __version__) -> dict[str, Any]:
    components: list[dict[str, Any]] = [{
        "type": "operating-system",
        "bom-ref": _os_ref(os_release),
        "name": os_release.id or "unknown",
        "version": os_release.version_id,
        "description": os_release.pretty_name,
    }]
    seen: set[str] = set()
    for p in sorted(packages, key=lambda p: p.purl):
        if p.purl not in seen:  # bom-refs must be unique; one purl is one installed instance
            seen.add(p.purl)
            components.append(_component(p))
    body: dict[str, Any] = {
        "$schema": SCHEMA_URL,
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "version": 1,
        "metadata": {
            "timestamp": timestamp,
            "tools": {"components": [{"type": "application", "name": "copa", "version": tool_version}]},
            "component": {"type": "container", "bom-ref": image.purl, "name": image.name, "version": image.digest,
                          "purl": image.purl},
        },
        "components": components,
        "dependencies": [
            {"ref": image.purl, "dependsOn": [c["bom-ref"] for c in components]},
        ],
    }
    # RFC 4122 wants a fresh UUID per BOM; one derived from the content keeps the document reproducible and still
    # tells two different BOMs apart.
    content = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    serial = uuid.uuid5(uuid.NAMESPACE_URL, f"{image.purl}#{content}")
    return {"$schema": SCHEMA_URL, "bomFormat": "CycloneDX", "specVersion": SPEC_VERSION,
            "serialNumber": f"urn:uuid:{serial}", **{k: v for k, v in body.items() if k not in (
                "$schema", "bomFormat", "specVersion")}}


SPDX_VERSION = "SPDX-2.3"
# Trivy reads a package's source from this prefix of sourceInfo (its own SPDX writer's wording).
_BUILT_FROM = "built package from:"


def _spdx_id(kind: str, key: str) -> str:
    # SPDX identifiers allow letters, digits, '.' and '-': a hash of the purl is unique and stable.
    return f"SPDXRef-{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _purl_ref(purl: str) -> list[dict[str, str]]:
    return [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl}]


def _spdx_package(p: InstalledPackage) -> dict[str, Any]:
    epoch, version, release = _split_version(p.source_version or p.version)
    source_version = (f"{epoch}:" if epoch and epoch != "0" else "") + version + (f"-{release}" if release else "")
    out: dict[str, Any] = {
        "SPDXID": _spdx_id("Package", p.purl), "name": p.name, "versionInfo": p.version,
        "downloadLocation": "NOASSERTION", "filesAnalyzed": False,
        # A declared license is free text (GPLv2+, "MIT AND BSD") that need not be an SPDX expression: it is kept
        # as a comment rather than asserted.
        "licenseConcluded": "NOASSERTION", "licenseDeclared": "NOASSERTION", "copyrightText": "NOASSERTION",
        "externalRefs": _purl_ref(p.purl), "primaryPackagePurpose": "LIBRARY",
        "sourceInfo": f"{_BUILT_FROM} {p.source or p.name} {source_version}",
    }
    if p.licenses:
        out["licenseComments"] = "declared by the package database: " + "; ".join(p.licenses)
    return out


def spdx_document(image: SbomImage, os_release: OSRelease, packages: Sequence[InstalledPackage], *,
                  timestamp: str, tool_version: str = __version__) -> dict[str, Any]:
    image_id, os_id = "SPDXRef-Image", "SPDXRef-OperatingSystem"
    described: list[dict[str, Any]] = [
        {"SPDXID": image_id, "name": image.name, "versionInfo": image.digest, "downloadLocation": "NOASSERTION",
         "filesAnalyzed": False, "externalRefs": _purl_ref(image.purl), "primaryPackagePurpose": "CONTAINER"},
        {"SPDXID": os_id, "name": os_release.id or "unknown", "versionInfo": os_release.version_id,
         "downloadLocation": "NOASSERTION", "filesAnalyzed": False, "description": os_release.pretty_name,
         "primaryPackagePurpose": "OPERATING_SYSTEM"},
    ]
    seen: set[str] = set()
    for p in sorted(packages, key=lambda p: p.purl):
        if p.purl not in seen:
            seen.add(p.purl)
            described.append(_spdx_package(p))
    relationships = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                      "relatedSpdxElement": image_id}]
    relationships += [{"spdxElementId": image_id, "relationshipType": "CONTAINS", "relatedSpdxElement": p["SPDXID"]}
                      for p in described[1:]]
    body: dict[str, Any] = {
        "spdxVersion": SPDX_VERSION, "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT", "name": image.name,
        "creationInfo": {"created": timestamp, "creators": [f"Tool: copa-{tool_version}"]},
        "packages": described, "relationships": relationships,
    }
    # A unique absolute URI per document, derived from the content as the CycloneDX serial number is.
    content = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return {**body, "documentNamespace": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{image.purl}#{content}')}"}


def sbom_for(repository: Reference, digest: Digest | str, platform: Platform | None, os_release: OSRelease,
             packages: Sequence[InstalledPackage]) -> dict[str, Any]:
    """The SBOM of one patched image manifest (`packages`: the adapter's inventory after the plan), timestamped
    from SOURCE_DATE_EPOCH when set."""
    image = SbomImage(f"{repository.registry}/{repository.repository}", str(digest),
                      image_purl(repository, digest, platform))
    return cyclonedx_document(image, os_release, packages, timestamp=timestamp())


def to_bytes(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()
