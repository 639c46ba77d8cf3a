"""Package URLs (purl), built as the purl specification's "How to build a PURL" says.

Every family's purls (pkg:deb, pkg:apk, pkg:rpm) and the image's (pkg:oci) go through `build`; which qualifiers a
family writes is that family's business (copa/pkg/<family>/inventory.py), the encoding is here.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

# The specification's unencoded characters: alphanumerics, its punctuation ('.', '-', '_', '~') and the colon
# (never encoded, whether a separator or not). Everything else is percent-encoded, '+' and '/' included.
_SAFE = ".-_~:"
# Types whose specification says the namespace / the name is case-insensitive, lowercased in the canonical form.
_LOWER_NAMESPACE = frozenset({"deb", "apk", "rpm", "oci"})
_LOWER_NAME = frozenset({"deb", "apk", "oci"})


def _encode(text: str) -> str:
    return quote(text, safe=_SAFE)


def build(type_: str, name: str, namespace: str = "", version: str = "",
          qualifiers: Mapping[str, str] | None = None) -> str:
    """The canonical purl string: namespace segments and name percent-encoded, empty qualifiers dropped, the rest
    sorted by (lowercased) key."""
    type_ = type_.lower()
    out = f"pkg:{type_}/"
    if type_ in _LOWER_NAMESPACE:
        namespace = namespace.lower()
    if type_ in _LOWER_NAME:
        name = name.lower()
    segments = [s for s in namespace.strip("/").split("/") if s]
    if segments:
        out += "/".join(_encode(s) for s in segments) + "/"
    out += _encode(name.strip("/"))
    if version:
        out += "@" + _encode(version)
    pairs = sorted((k.lower(), v) for k, v in (qualifiers or {}).items() if v)
    if pairs:
        out += "?" + "&".join(f"{k}={_encode(v)}" for k, v in pairs)
    return out


def distro_qualifier(os_id: str, version_id: str) -> str:
    """`distro` as Syft writes it for OS packages: the os-release ID and VERSION_ID (debian-12, alpine-3.20.3,
    rhel-9.3); the ID alone when there is no VERSION_ID (rolling distributions such as Wolfi may have none)."""
    return f"{os_id}-{version_id}" if version_id else os_id


def split_epoch(version: str) -> tuple[str, str]:
    """('1', '2.38.1-5') for '1:2.38.1-5'; ('', version) when it has no epoch (a '0' epoch counts as none)."""
    epoch, colon, rest = version.partition(":")
    if not colon or not epoch.isdigit():
        return "", version
    return ("" if epoch.strip("0") == "" else epoch), rest


def oci(repository: str, digest: str, *, registry: str = "", tag: str = "", arch: str = "") -> str:
    """pkg:oci/NAME@sha256:... for an image: the name is the repository's last path segment, lowercased; where it
    lives (registry/repository) goes into repository_url."""
    name = repository.rstrip("/").rsplit("/", 1)[-1].lower()
    # An image known by no registry (an OCI layout, an archive) has no location to name.
    location = f"{registry}/{repository}" if registry else ""
    return build("oci", name, version=digest, qualifiers={"repository_url": location, "tag": tag, "arch": arch})
