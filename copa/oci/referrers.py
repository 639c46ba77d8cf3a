"""Artifacts attached to an image as OCI 1.1 referrers (distribution-spec 1.1, "Pushing Manifests with Subject",
"Listing Referrers" and "Referrers Tag Schema"; image-spec 1.1 "Guidance for an Empty Descriptor").

An artifact is an image manifest with `artifactType`, the empty config `{}` and one layer holding the payload, and
`subject` naming the image. A registry with the referrers API answers the manifest PUT with `OCI-Subject` and lists
it by itself; for one without (Debian's docker-registry 2.8 among them) the client keeps the list: an image index
tagged `<alg>-<hex>` after the subject's digest, one descriptor (with artifactType and annotations) per referrer.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin

from copa.errors import IntegrityError, RegistryError
from copa.oci.digest import Digest
from copa.oci.image import Bundle
from copa.oci.model import Descriptor, Index, Manifest, ManifestFormatError, MediaType, parse_document, parse_manifest
from copa.oci.reference import Reference
from copa.oci.registry import MANIFEST_ACCEPT, RegistryClient, RegistrySource, _Pusher

EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
EMPTY = Descriptor(EMPTY_MEDIA_TYPE, Digest.of_bytes(EMPTY_JSON), len(EMPTY_JSON))

# Media types of the documents copa attaches (IANA-registered where one exists).
OPENVEX = "application/vnd.openvex+json"
CYCLONEDX = "application/vnd.cyclonedx+json"
SPDX = "application/spdx+json"

_TAG_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]")
_MAX_PAGES = 1000  # of a paginated referrers list: far more than any real image has, short of a loop


def referrers_tag(digest: Digest) -> str:
    """The fallback tag: the algorithm cut to 32 characters, '-', the encoded part cut to 64, and anything a tag
    cannot hold replaced by '-' (sha256:abc... -> sha256-abc...)."""
    algorithm, _, encoded = str(digest).partition(":")
    return _TAG_UNSAFE.sub("-", f"{algorithm[:32]}-{encoded[:64]}")


def artifact_manifest(subject: Descriptor, artifact_type: str, layer: Descriptor,
                      annotations: Mapping[str, str]) -> bytes:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MediaType.OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": EMPTY.to_json(),
        "layers": [layer.to_json()],
        # The subject names the manifest only: its platform or annotations would be no part of the relation.
        "subject": {"mediaType": subject.media_type, "digest": str(subject.digest), "size": subject.size},
    }
    if annotations:
        doc["annotations"] = dict(sorted(annotations.items()))
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def attach(client: RegistryClient, repository: Reference, subject: Descriptor, artifact_type: str, payload: bytes,
           payload_media_type: str, annotations: Mapping[str, str] | None = None) -> Digest:
    """Push `payload` as an artifact referring to `subject` (a manifest in `repository`); returns the artifact
    manifest's digest. The artifact is pushed by digest, never by tag; without the referrers API the fallback
    index is updated (read, the descriptor added unless already there, written back)."""
    annotations = dict(annotations or {})
    layer = Descriptor(payload_media_type, Digest.of_bytes(payload), len(payload))
    raw = artifact_manifest(subject, artifact_type, layer, annotations)
    digest = Digest.of_bytes(raw)
    target = Reference(repository.registry, repository.repository, digest=digest)
    blobs = {EMPTY.digest: EMPTY_JSON, layer.digest: payload}
    manifest = parse_manifest(raw, MediaType.OCI_MANIFEST)
    assert isinstance(manifest, Manifest)
    # The registry module's blob upload (existence check, retried monolithic upload) works on a Bundle.
    bundle = Bundle(root=manifest, primary=manifest, children=(), blobs=(EMPTY, layer),
                    open_blob=lambda d: io.BytesIO(blobs[d.digest]))
    if not _has_referrers_api(client, repository, subject.digest):
        # The fallback list will be needed: a tag in its place that is no index fails before anything is pushed.
        _fallback_index(client, repository, subject.digest)
    pusher = _Pusher(client, target, bundle)
    for desc in (EMPTY, layer):
        if not pusher.blob_exists(desc):
            pusher.upload(desc, None)
    headers = _put_manifest(client, target, str(digest), raw, MediaType.OCI_MANIFEST)
    if headers.get("OCI-Subject", "").strip():
        return digest  # the registry processed `subject`: its referrers API lists the artifact
    entry = {"mediaType": MediaType.OCI_MANIFEST, "digest": str(digest), "size": len(raw),
             "artifactType": artifact_type}
    if annotations:
        entry["annotations"] = dict(sorted(annotations.items()))
    _add_to_fallback(client, repository, subject.digest, entry)
    return digest


def _has_referrers_api(client: RegistryClient, repository: Reference, subject: Digest) -> bool:
    """Whether GET /v2/<name>/referrers/<digest> is served (a registry with the API never answers it 404)."""
    ref = Reference(repository.registry, repository.repository, digest=subject)
    resp = client.send("GET", ref, client.repo_url(ref, f"referrers/{subject}"),
                       headers={"Accept": MediaType.OCI_INDEX})
    with resp:
        return resp.status_code == 200


def _put_manifest(client: RegistryClient, target: Reference, identifier: str, raw: bytes,
                  media_type: str) -> Mapping[str, str]:
    resp = client.send("PUT", target, client.repo_url(target, f"manifests/{identifier}"), actions="pull,push",
                       headers={"Content-Type": media_type}, data=raw)
    with resp:
        if resp.status_code != 201:
            raise client.fail(resp, target, f"manifest {identifier}")
        echoed = resp.headers.get("Docker-Content-Digest", "")
        if echoed.startswith("sha256:") and identifier.startswith("sha256:") and echoed != identifier:
            raise IntegrityError(f"registry {target.registry} stored manifest {identifier} as {echoed}; a proxy or "
                                 "the registry altered it")
        return dict(resp.headers)


def _fallback_index(client: RegistryClient, repository: Reference, subject: Digest) -> dict[str, Any] | None:
    """The referrers tag's index as JSON, or None when the tag does not exist. A tag holding something else
    is refused: it is not copa's to overwrite."""
    tag = referrers_tag(subject)
    ref = Reference(repository.registry, repository.repository, tag=tag)
    resp = client.send("GET", ref, client.repo_url(ref, f"manifests/{tag}"), headers={"Accept": MANIFEST_ACCEPT})
    with resp:
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise client.fail(resp, ref, f"referrers tag {tag}")
        raw = resp.content
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict) or doc.get("mediaType", MediaType.OCI_INDEX) != MediaType.OCI_INDEX or \
            not isinstance(doc.get("manifests"), list):
        raise RegistryError(f"tag {tag} in {repository.registry}/{repository.repository} is not an OCI image index, "
                            "so it is not a referrers list copa may update; delete or rename that tag")
    return doc


def _add_to_fallback(client: RegistryClient, repository: Reference, subject: Digest, entry: dict[str, Any]) -> None:
    doc = _fallback_index(client, repository, subject) or {
        "schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": []}
    if any(isinstance(m, dict) and m.get("digest") == entry["digest"] for m in doc["manifests"]):
        return  # already listed: the same artifact attached again
    doc["manifests"].append(entry)
    raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    tag = referrers_tag(subject)
    _put_manifest(client, Reference(repository.registry, repository.repository, tag=tag), tag, raw,
                  MediaType.OCI_INDEX)


@dataclass(frozen=True, slots=True)
class Referrer:
    descriptor: Descriptor  # of the artifact manifest, annotations included
    artifact_type: str


def referrers(client: RegistryClient, repository: Reference, digest: Digest,
              artifact_type: str = "") -> list[Referrer]:
    """The manifests whose subject is `digest`: from the referrers API (every page its Link headers name), or
    (when it answers 404) from the fallback tag; an `artifact_type` filter is applied here when the registry did
    not apply it."""
    ref = Reference(repository.registry, repository.repository, digest=digest)
    url = client.repo_url(ref, f"referrers/{digest}")
    if artifact_type:
        url += f"?artifactType={quote(artifact_type, safe='')}"  # a '+' left bare would reach the server as ' '
    entries: list[Referrer] = []
    filtered = True
    for page in range(_MAX_PAGES):
        resp = client.send("GET", ref, url, headers={"Accept": MediaType.OCI_INDEX})
        with resp:
            if resp.status_code == 404 and page == 0:
                break
            if resp.status_code != 200:
                raise client.fail(resp, ref, f"referrers of {digest}")
            filtered = filtered and "artifactType" in resp.headers.get("OCI-Filters-Applied", "")
            entries += _entries(resp.content, f"referrers of {digest} from {repository.registry}")
            following = resp.links.get("next", {}).get("url")
        if not following:
            break
        url = urljoin(resp.url, following)
    else:
        raise RegistryError(f"registry {repository.registry} lists the referrers of {digest} in more than "
                            f"{_MAX_PAGES} pages; the registry is looping")
    if resp.status_code == 404:
        doc = _fallback_index(client, repository, digest)
        entries = _entries(json.dumps(doc).encode(), f"referrers tag of {digest}") if doc is not None else []
        filtered = False
    if artifact_type and not filtered:
        entries = [e for e in entries if e.artifact_type == artifact_type]
    return entries


def _entries(raw: bytes, what: str) -> list[Referrer]:
    """Each entry of a referrers index, with its artifactType (the model's Descriptor does not carry it)."""
    try:
        index = parse_document(raw, MediaType.OCI_INDEX)
        doc = json.loads(raw)
    except (ManifestFormatError, ValueError) as e:
        raise RegistryError(f"{what} is not an OCI image index ({e}); the registry is not OCI-compliant") from None
    if not isinstance(index, Index):
        raise RegistryError(f"{what} is not an OCI image index; the registry is not OCI-compliant")
    kinds = [str(m.get("artifactType", "")) if isinstance(m, dict) else "" for m in doc.get("manifests", [])]
    return [Referrer(d, k) for d, k in zip(index.manifests, kinds, strict=True)]


def fetch_artifact(client: RegistryClient, repository: Reference, descriptor: Descriptor) -> bytes:
    """The payload (first layer) of an artifact manifest, verified against its digests."""
    source = RegistrySource(client, Reference(repository.registry, repository.repository, digest=descriptor.digest))
    manifest = source.fetch_manifest(descriptor)
    layers = manifest.layers if isinstance(manifest, Manifest) else ()
    if not layers:
        raise RegistryError(f"artifact {descriptor.digest} has no layer holding its payload")
    with source.open_blob(layers[0]) as stream:
        return stream.read()
