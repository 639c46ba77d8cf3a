"""OCI referrers (copa/oci/referrers.py): artifacts attached to a pushed image.

Against the real docker-registry (2.8, no referrers API): the fallback index under the `sha256-<hex>` tag is read
back by skopeo, the artifact manifests and blobs over plain HTTP (not through copa's client). The referrers-API
branch (a registry answering the manifest PUT with OCI-Subject) against a small in-process server, since no registry
here has the API.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest

from copa.errors import AuthError, RegistryError
from copa.oci.digest import Digest
from copa.oci.model import Descriptor, MediaType
from copa.oci.reference import Reference
from copa.oci.referrers import CYCLONEDX, EMPTY, OPENVEX, attach, fetch_artifact, referrers, referrers_tag
from copa.oci.registry import RegistryClient, RegistryOptions
from tests.support import images
from tests.support.registry import PASSWORD, USER, RunningRegistry

VEX = b'{"@context":"https://openvex.dev/ns/v0.2.0","statements":[]}\n'
SBOM = b'{"bomFormat":"CycloneDX","specVersion":"1.6","version":1}\n'


def skopeo_raw(ref: str) -> bytes:
    proc = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{ref}"],
                          capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:
        data: bytes = resp.read()
        return data


def subject_of(host: str, repo: str, tag: str) -> Descriptor:
    raw = skopeo_raw(f"{host}/{repo}:{tag}")
    media_type = json.loads(raw).get("mediaType", MediaType.OCI_MANIFEST)
    return Descriptor(media_type, Digest.of_bytes(raw), len(raw))


@pytest.fixture(scope="module")
def pushed(anon_registry: RunningRegistry, tiny_layout: Path) -> tuple[Reference, Descriptor]:
    images.push_layout(tiny_layout, "t", anon_registry.host, "attach/app:1.0")
    return Reference.parse(f"{anon_registry.host}/attach/app"), subject_of(anon_registry.host, "attach/app", "1.0")


@pytest.fixture(scope="module")
def attached(pushed: tuple[Reference, Descriptor]) -> tuple[Digest, Digest]:
    repo, subject = pushed
    with RegistryClient() as client:
        vex = attach(client, repo, subject, OPENVEX, VEX, OPENVEX, {"org.opencontainers.image.created": "2024-01-01"})
        sbom = attach(client, repo, subject, CYCLONEDX, SBOM, CYCLONEDX)
    return vex, sbom


def test_referrers_tag_follows_the_spec() -> None:
    assert referrers_tag(Digest.parse("sha256:" + "a" * 64)) == "sha256-" + "a" * 64
    assert referrers_tag(Digest.parse("sha512:" + "b" * 128)) == "sha512-" + "b" * 64


def test_fallback_index_lists_both_artifacts(pushed: tuple[Reference, Descriptor],
                                             attached: tuple[Digest, Digest]) -> None:
    repo, subject = pushed
    raw = skopeo_raw(f"{repo.registry}/{repo.repository}:{referrers_tag(subject.digest)}")
    index = json.loads(raw)
    assert index["mediaType"] == MediaType.OCI_INDEX and index["schemaVersion"] == 2
    entries = {m["digest"]: m for m in index["manifests"]}
    vex, sbom = attached
    assert set(entries) == {str(vex), str(sbom)}
    assert entries[str(vex)]["artifactType"] == OPENVEX
    assert entries[str(vex)]["annotations"] == {"org.opencontainers.image.created": "2024-01-01"}
    assert entries[str(sbom)]["artifactType"] == CYCLONEDX and "annotations" not in entries[str(sbom)]
    for digest, entry in entries.items():
        manifest_raw = skopeo_raw(f"{repo.registry}/{repo.repository}@{digest}")
        assert entry["size"] == len(manifest_raw) and entry["mediaType"] == MediaType.OCI_MANIFEST
        assert "sha256:" + hashlib.sha256(manifest_raw).hexdigest() == digest


def test_artifact_manifests_name_the_subject_and_carry_the_payload(pushed: tuple[Reference, Descriptor],
                                                                    attached: tuple[Digest, Digest]) -> None:
    repo, subject = pushed
    for digest, payload, kind in zip(attached, (VEX, SBOM), (OPENVEX, CYCLONEDX), strict=True):
        manifest = json.loads(skopeo_raw(f"{repo.registry}/{repo.repository}@{digest}"))
        assert manifest["artifactType"] == kind
        assert manifest["subject"] == {"mediaType": subject.media_type, "digest": str(subject.digest),
                                       "size": subject.size}
        # image-spec 1.1's empty descriptor, byte for byte
        empty = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        assert manifest["config"] == {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2}
        [layer] = manifest["layers"]
        assert layer["mediaType"] == kind and layer["size"] == len(payload)
        base = f"http://{repo.registry}/v2/{repo.repository}/blobs"
        assert http_get(f"{base}/{layer['digest']}") == payload
        assert http_get(f"{base}/{EMPTY.digest}") == b"{}"


def test_attaching_again_adds_no_duplicate(pushed: tuple[Reference, Descriptor],
                                           attached: tuple[Digest, Digest]) -> None:
    repo, subject = pushed
    with RegistryClient() as client:
        again = attach(client, repo, subject, CYCLONEDX, SBOM, CYCLONEDX)
    assert again == attached[1]
    index = json.loads(skopeo_raw(f"{repo.registry}/{repo.repository}:{referrers_tag(subject.digest)}"))
    assert sorted(m["digest"] for m in index["manifests"]) == sorted(map(str, attached))


def test_referrers_read_from_the_fallback_tag(pushed: tuple[Reference, Descriptor],
                                              attached: tuple[Digest, Digest]) -> None:
    repo, subject = pushed
    with RegistryClient() as client:
        found = referrers(client, repo, subject.digest)
        only_vex = referrers(client, repo, subject.digest, artifact_type=OPENVEX)
        none = referrers(client, repo, Digest.parse("sha256:" + "0" * 64))
    assert {(r.descriptor.digest, r.artifact_type) for r in found} == {(attached[0], OPENVEX),
                                                                       (attached[1], CYCLONEDX)}
    assert [r.descriptor.digest for r in only_vex] == [attached[0]]
    assert none == []
    with RegistryClient() as client:
        assert fetch_artifact(client, repo, only_vex[0].descriptor) == VEX


def test_a_foreign_tag_in_the_fallback_place_is_refused_before_any_push(
        anon_registry: RunningRegistry, tiny_layout: Path) -> None:
    images.push_layout(tiny_layout, "t", anon_registry.host, "attach/taken:1.0")
    subject = subject_of(anon_registry.host, "attach/taken", "1.0")
    # An image (not an index) already sits under the referrers tag: copa must not overwrite it.
    images.push_layout(tiny_layout, "t", anon_registry.host, f"attach/taken:{referrers_tag(subject.digest)}")
    repo = Reference.parse(f"{anon_registry.host}/attach/taken")
    payload = b'{"unique": "refused"}'
    with RegistryClient() as client, pytest.raises(RegistryError, match=r"is not an OCI image index.*delete or rename"):
        attach(client, repo, subject, OPENVEX, payload, OPENVEX)
    blob = "sha256:" + hashlib.sha256(payload).hexdigest()
    req = urllib.request.Request(f"http://{anon_registry.host}/v2/attach/taken/blobs/{blob}", method="HEAD")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 404


# -- a registry with the referrers API (in-process: no registry here has it) ----------------------------------


class _ApiRegistry:
    """Just enough of distribution-spec 1.1 for attach/referrers: monolithic blob uploads, manifests by digest or
    tag, OCI-Subject on a manifest PUT with a subject, and GET /v2/<name>/referrers/<digest> with artifactType
    filtering. Every request is recorded."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, tuple[str, bytes]] = {}  # digest or tag -> (media type, raw)
        self.requests: list[tuple[str, str]] = []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))

            def _route(self) -> None:
                registry.requests.append((self.command, self.path))
                path, _, query = self.path.partition("?")
                if path == "/v2/":
                    return self._reply(200, b"{}")
                m = re.fullmatch(r"/v2/(.+?)/(blobs/uploads|blobs|manifests|referrers)/(.*)", path)
                if m is None:
                    return self._reply(404)
                _name, kind, ident = m.groups()
                if kind == "blobs/uploads":
                    if self.command == "POST":
                        return self._reply(202, headers={"Location": f"/v2/{_name}/blobs/uploads/u1"})
                    data = self._body()
                    digest = query.split("digest=", 1)[1].replace("%3A", ":")
                    registry.blobs[digest] = data
                    return self._reply(201, headers={"Docker-Content-Digest": digest})
                if kind == "blobs":
                    if ident in registry.blobs:
                        return self._reply(200, registry.blobs[ident])
                    return self._reply(404)
                if kind == "manifests":
                    if self.command == "PUT":
                        raw = self._body()
                        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
                        media_type = self.headers["Content-Type"]
                        registry.manifests[digest] = registry.manifests[ident] = (media_type, raw)
                        headers = {"Docker-Content-Digest": digest}
                        subject = json.loads(raw).get("subject")
                        if subject:
                            headers["OCI-Subject"] = subject["digest"]
                        return self._reply(201, headers=headers)
                    if ident not in registry.manifests:
                        return self._reply(404)
                    media_type, raw = registry.manifests[ident]
                    return self._reply(200, raw, {"Content-Type": media_type})
                params = parse_qs(query)
                wanted = params.get("artifactType", [""])[0]
                entries = []
                for digest, (media_type, raw) in registry.manifests.items():
                    doc = json.loads(raw)
                    if not digest.startswith("sha256:") or (doc.get("subject") or {}).get("digest") != ident:
                        continue
                    kind_ = doc.get("artifactType") or doc["config"]["mediaType"]
                    if wanted and kind_ != wanted:
                        continue
                    entry = {"mediaType": media_type, "digest": digest, "size": len(raw), "artifactType": kind_}
                    if doc.get("annotations"):
                        entry["annotations"] = doc["annotations"]
                    entries.append(entry)
                # One entry per page, the next page named by a Link header (the spec lets a registry paginate).
                entries.sort(key=lambda e: e["digest"])
                page = int(params.get("page", ["0"])[0])
                body = json.dumps({"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX,
                                   "manifests": entries[page:page + 1]})
                headers = {"Content-Type": MediaType.OCI_INDEX}
                if wanted:
                    headers["OCI-Filters-Applied"] = "artifactType"
                if page + 1 < len(entries):
                    following = urlencode({**({"artifactType": wanted} if wanted else {}), "page": page + 1})
                    headers["Link"] = f'<{path}?{following}>; rel="next"'
                return self._reply(200, body.encode(), headers)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = _route

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def api_registry() -> Iterator[_ApiRegistry]:
    reg = _ApiRegistry()
    yield reg
    reg.stop()


def test_registry_with_the_api_keeps_the_list_itself(api_registry: _ApiRegistry) -> None:
    subject_raw = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
    subject = Descriptor(MediaType.OCI_MANIFEST, Digest.of_bytes(subject_raw), len(subject_raw))
    repo = Reference.parse(f"{api_registry.host}/app")
    with RegistryClient() as client:
        vex = attach(client, repo, subject, OPENVEX, VEX, OPENVEX, {"k": "v"})
        sbom = attach(client, repo, subject, CYCLONEDX, SBOM, CYCLONEDX)
        found = referrers(client, repo, subject.digest)
        filtered = referrers(client, repo, subject.digest, artifact_type=CYCLONEDX)
    tag = referrers_tag(subject.digest)
    assert not any(tag in path for _, path in api_registry.requests), "no fallback tag with the referrers API"
    assert sum(1 for _, path in api_registry.requests if "/referrers/" in path and "page=1" in path) == 1
    assert {(r.descriptor.digest, r.artifact_type) for r in found} == {(vex, OPENVEX), (sbom, CYCLONEDX)}
    assert next(r for r in found if r.descriptor.digest == vex).descriptor.annotations == {"k": "v"}
    assert [r.descriptor.digest for r in filtered] == [sbom]
    assert api_registry.blobs[str(Digest.of_bytes(VEX))] == VEX


def test_attach_with_token_auth(token_registry: RunningRegistry, tiny_layout: Path, tmp_path: Path) -> None:
    """Behind a token server: the referrers probe and the fallback tag read with a pull token, the pushes with a
    pull,push one; skopeo (with the same credentials) reads the fallback index back."""
    creds = f"{USER}:{PASSWORD}"
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--dest-creds", creds,
                    f"oci:{tiny_layout}:t", f"docker://{token_registry.host}/secure/app:1.0"],
                   check=True, capture_output=True)
    raw = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--creds", creds, "--raw",
                          f"docker://{token_registry.host}/secure/app:1.0"], check=True, capture_output=True).stdout
    subject = Descriptor(json.loads(raw).get("mediaType", MediaType.OCI_MANIFEST), Digest.of_bytes(raw), len(raw))
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {token_registry.host: {"username": USER, "password": PASSWORD}}}))
    repo = Reference.parse(f"{token_registry.host}/secure/app")
    with RegistryClient(RegistryOptions(auth_file=str(auth))) as client:
        digest = attach(client, repo, subject, OPENVEX, VEX, OPENVEX)
    index = json.loads(subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--creds", creds, "--raw",
         f"docker://{token_registry.host}/secure/app:{referrers_tag(subject.digest)}"],
        check=True, capture_output=True).stdout)
    assert [(m["digest"], m["artifactType"]) for m in index["manifests"]] == [(str(digest), OPENVEX)]
    with RegistryClient(RegistryOptions(auth_file=str(tmp_path / "none.json"), retries=0)) as client, \
            pytest.raises(AuthError):
        attach(client, repo, subject, OPENVEX, VEX, OPENVEX)
