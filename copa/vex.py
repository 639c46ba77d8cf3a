"""OpenVEX 0.2.0 documents of what a patch fixed (`copa patch -f openvex -o FILE`), as Copacetic writes them, but
valid against the official schema (Copacetic's statements lack `vulnerability.name`, its issue #1651).

One statement per vulnerability, `status: fixed`, naming each patched image (one product per patched platform
manifest, a pkg:oci purl) and, as its subcomponents, the packages whose update fixed it. Like Copacetic, a
subcomponent's purl carries the version the scan reported (the installed one) and is written as the scanner writes
it (the adapter's `purl`, Trivy's form: its distro qualifier from the report's OS), so a consumer can match each
statement to the scan's findings: Trivy applies a statement only where every qualifier it names matches.

The same inputs give the same bytes: the timestamp comes from SOURCE_DATE_EPOCH when set and the document's @id is
a hash of its content.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from copa import __version__
from copa.errors import LocalIOError
from copa.oci.digest import Digest
from copa.oci.model import Platform
from copa.oci.reference import Reference
from copa.pkg.base import Update, UpdateKind
from copa.pkg.purl import oci

CONTEXT = "https://openvex.dev/ns/v0.2.0"
DEFAULT_AUTHOR = "Project Copacetic"  # Copacetic's default; COPA_VEX_AUTHOR overrides it, as there
AUTHOR_ENV = "COPA_VEX_AUTHOR"
TOOLING = f"copa {__version__}"
# The OpenVEX shared namespace for document IRIs (spec: "public" is open to anyone); Copacetic's go-vex uses it too.
_ID_PREFIX = "https://openvex.dev/docs/public/vex-"

# Vulnerability identifiers with a canonical public page, given as the statement's vulnerability @id (an IRI).
_IRIS = (
    (re.compile(r"CVE-\d{4}-\d{4,}"), "https://nvd.nist.gov/vuln/detail/{}"),
    (re.compile(r"GHSA(-[23456789cfghjmpqrvwx]{4}){3}"), "https://github.com/advisories/{}"),
)


@dataclass(frozen=True, slots=True)
class VexFix:
    vulnerability: str  # CVE-2024-1234, GHSA-..., ALAS-...
    purl: str  # the package the update fixed it in, as the adapter's `purl` names it


@dataclass(frozen=True, slots=True)
class VexProduct:
    purl: str  # the patched image manifest, pkg:oci/NAME@sha256:...?repository_url=...&arch=...
    fixes: tuple[VexFix, ...]


def timestamp(now: datetime | None = None) -> str:
    """RFC 3339 UTC, seconds: SOURCE_DATE_EPOCH when set (reproducible documents), else now."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    moment = datetime.fromtimestamp(int(epoch), UTC) if epoch.isdigit() else (now or datetime.now(UTC))
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def author(environ: Mapping[str, str] | None = None) -> str:
    return (environ if environ is not None else os.environ).get(AUTHOR_ENV, "") or DEFAULT_AUTHOR


def vulnerability(name: str) -> dict[str, str]:
    """`name` always (the schema requires it); `@id` only where the name has a public IRI."""
    out = {"name": name}
    for pattern, template in _IRIS:
        if pattern.fullmatch(name):
            out = {"@id": template.format(name), **out}
            break
    return out


def openvex_document(products: Sequence[VexProduct], *, author: str, timestamp: str,
                     tooling: str = TOOLING, version: int = 1) -> dict[str, Any]:
    """The document as JSON data. Statements are ordered by vulnerability, products and subcomponents by purl.
    OpenVEX requires at least one statement: with no fixes at all the caller writes no document (Copacetic
    writes none either)."""
    by_vuln: dict[str, dict[str, set[str]]] = {}
    for product in products:
        for fix in product.fixes:
            by_vuln.setdefault(fix.vulnerability, {}).setdefault(product.purl, set()).add(fix.purl)
    statements = []
    for vuln in sorted(by_vuln):
        statements.append({
            "vulnerability": vulnerability(vuln),
            "products": [
                {"@id": image, "subcomponents": [{"@id": p} for p in sorted(packages)]}
                for image, packages in sorted(by_vuln[vuln].items())
            ],
            "status": "fixed",
        })
    body: dict[str, Any] = {
        "@context": CONTEXT,
        "author": author,
        "timestamp": timestamp,
        "version": version,
        "tooling": tooling,
        "statements": statements,
    }
    # A content hash for @id, as go-vex's canonical ID is one: the same fixes by the same author give the same IRI.
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return {"@context": CONTEXT, "@id": _ID_PREFIX + digest, **{k: v for k, v in body.items() if k != "@context"}}


def document_for(products: Sequence[VexProduct]) -> dict[str, Any] | None:
    """The document `copa patch -o` writes: author from COPA_VEX_AUTHOR, timestamp from SOURCE_DATE_EPOCH (else
    now); None when nothing was fixed, since OpenVEX requires a statement (Copacetic writes no document then)."""
    if not any(p.fixes for p in products):
        return None
    return openvex_document(products, author=author(), timestamp=timestamp())


def to_bytes(document: Mapping[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()


def check_writable(path: Path) -> None:
    """Fail before any patching when the -o file could not be written (its directory missing, not writable, or the
    path a directory), so a patch is never pushed only to lose its VEX document."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise LocalIOError(f"cannot write {path}: it is a directory; name a file with -o")
    if not parent.is_dir():
        raise LocalIOError(f"cannot write {path}: directory {parent} does not exist; create it or change -o")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LocalIOError(f"cannot write {path}: directory {parent} is not writable; change -o")


def write_document(path: Path, document: Mapping[str, Any]) -> None:
    """Write atomically: a temporary file beside `path`, renamed over it, so a reader never sees half a
    document and a failure leaves any previous file as it was."""
    data = to_bytes(document)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.tmp-")
    except OSError as e:
        raise LocalIOError(f"cannot write {path}: {e.strerror or e}; check that its directory exists and is "
                           "writable") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise LocalIOError(f"cannot write {path}: {e.strerror or e}; check the path and free space") from None


def fixes_of(updates: Iterable[Update], purl: Callable[[str, str, str], str]) -> tuple[VexFix, ...]:
    """The fixes a patch made: each vulnerability an update names, in its package at the version the scan
    reported (the installed one; a newly installed package's new one), as Copacetic names them. `purl` is the
    adapter's (name, version, architecture) -> package URL. A removal or an unchanged version fixes nothing."""
    out: list[VexFix] = []
    for u in updates:
        if u.kind is UpdateKind.REMOVED or not u.new_version or u.new_version == u.old_version:
            continue
        package = purl(u.name, u.old_version or u.new_version, u.architecture)
        out.extend(VexFix(v, package) for v in dict.fromkeys(u.vulnerabilities) if v)
    return tuple(out)


def image_purl(repository: Reference, digest: Digest | str, platform: Platform | None = None) -> str:
    """The pkg:oci purl of one image manifest: its digest, where it lives, and its architecture."""
    return oci(repository.repository, str(digest), registry=repository.registry,
               arch=platform.architecture if platform is not None else "")


def product_for(repository: Reference, digest: Digest | str, platform: Platform | None, updates: Iterable[Update],
                purl: Callable[[str, str, str], str]) -> VexProduct:
    """One patched image manifest and what its updates fixed (`purl`: the adapter's, bound to its context and the
    report's OS)."""
    return VexProduct(image_purl(repository, digest, platform), fixes_of(updates, purl))
