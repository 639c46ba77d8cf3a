"""A CycloneDX 1.6 JSON SBOM of the patched image: every installed OS package (after the patch) with its purl,
the OS as an `operating-system` component, the image as metadata.component.

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


def sbom_for(repository: Reference, digest: Digest | str, platform: Platform | None, os_release: OSRelease,
             packages: Sequence[InstalledPackage]) -> dict[str, Any]:
    """The SBOM of one patched image manifest (`packages`: the adapter's inventory after the plan), timestamped
    from SOURCE_DATE_EPOCH when set."""
    image = SbomImage(f"{repository.registry}/{repository.repository}", str(digest),
                      image_purl(repository, digest, platform))
    return cyclonedx_document(image, os_release, packages, timestamp=timestamp())


def to_bytes(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()
