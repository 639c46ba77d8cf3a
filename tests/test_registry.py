"""The registry client against real docker-registry processes, with skopeo as the oracle."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from copa.errors import AuthError, IntegrityError, NotFoundError, RegistryError
from copa.oci.digest import Digest
from copa.oci.image import Bundle, manifest_blobs
from copa.oci.model import Descriptor, Index, Manifest, MediaType, Platform, parse_manifest
from copa.oci.reference import Reference
from copa.oci.registry import RegistryClient, RegistryOptions, RegistrySource, head_manifest, push, tag_exists
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.registry import PASSWORD, USER, RunningRegistry, free_port, record

FAST = RegistryOptions(retries=3, backoff=0.05, timeout=20)


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120, check=False)


def skopeo_ok(*args: str) -> str:
    proc = skopeo(*args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def upload(layout: Path, host: str, repo: str, *extra: str) -> Reference:
    """The oracle's push: skopeo copies the umoci-built layout into the registry."""
    skopeo_ok("copy", "--quiet", "--dest-tls-verify=false", *extra, f"oci:{layout}:t", f"docker://{host}/{repo}")
    return Reference.parse(f"{host}/{repo}")


def inspect_raw(ref: Reference, *extra: str) -> bytes:
    proc = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", *extra, f"docker://{ref}"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def served_media_type(ref: Reference) -> str:
    """The Content-Type the registry serves the manifest with, asked without our client."""
    accept = ", ".join(MediaType.ALL_MANIFESTS)
    url = f"http://{ref.registry}/v2/{ref.repository}/manifests/{ref.identifier}"
    req = urllib.request.Request(url, method="HEAD", headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(resp.headers["Content-Type"])


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def bundle_of(source: RegistrySource, mount: bool = True) -> Bundle:
    root = source.root()
    assert isinstance(root, Manifest)
    return Bundle(
        root=root,
        primary=root,
        children=(),
        blobs=manifest_blobs(root),
        open_blob=source.open_blob,
        mount_from=source.ref if mount else None,
    )


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(FAST) as c:
        yield c



@pytest.fixture(scope="module")
def oci_image(anon_registry: RunningRegistry, tiny_layout: Path) -> Reference:
    return upload(tiny_layout, anon_registry.host, "src/app:t")


@pytest.fixture(scope="module")
def v2s2_image(anon_registry: RunningRegistry, tiny_layout: Path) -> Reference:
    return upload(tiny_layout, anon_registry.host, "src/docker:t", "--format", "v2s2")


# -- reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["oci", "v2s2"])
def test_read_matches_skopeo(
    which: str, oci_image: Reference, v2s2_image: Reference, tiny_layout: Path, client: RegistryClient
) -> None:
    ref = oci_image if which == "oci" else v2s2_image
    source = RegistrySource(client, ref)
    root = source.root()
    assert isinstance(root, Manifest)
    assert root.raw == inspect_raw(ref)
    assert root.media_type == (MediaType.OCI_MANIFEST if which == "oci" else MediaType.DOCKER_MANIFEST)
    info = json.loads(skopeo_ok("inspect", "--tls-verify=false", f"docker://{ref}"))
    assert str(root.digest) == info["Digest"]
    assert [str(layer.digest) for layer in root.layers] == info["Layers"]
    assert source.description == str(ref)
    # Blob bytes equal the layout's files, byte for byte (the layers are not recompressed).
    for desc in (root.config, *root.layers):
        with source.open_blob(desc) as f:
            h = hashlib.sha256()
            while chunk := f.read(1 << 15):
                h.update(chunk)
        assert h.hexdigest() == desc.digest.hex
        if which == "oci":
            assert (tiny_layout / "blobs" / "sha256" / desc.digest.hex).exists()
    # By digest: root() verifies the pin, fetch_manifest verifies the descriptor.
    pinned = RegistrySource(client, Reference(ref.registry, ref.repository, digest=root.digest))
    assert pinned.root().raw == root.raw
    assert source.fetch_manifest(root.descriptor()).raw == root.raw
    head = head_manifest(client, ref)
    assert head is not None and head.digest == root.digest and head.media_type == root.media_type


def test_missing_image_and_blob(anon_registry: RunningRegistry, oci_image: Reference, client: RegistryClient) -> None:
    with pytest.raises(NotFoundError) as e:
        RegistrySource(client, oci_image.with_tag("nope")).root()
    message = str(e.value)
    assert e.value.exit_code == 4
    assert anon_registry.host in message and "src/app" in message and "404 MANIFEST_UNKNOWN" in message
    with pytest.raises(NotFoundError, match=r"has no tag t in repository no/such/repo \(404 "):
        RegistrySource(client, Reference.parse(f"{anon_registry.host}/no/such/repo:t")).root()
    fake = Descriptor(MediaType.OCI_LAYER_GZIP, Digest.of_bytes(b"absent"), 6)
    with pytest.raises(NotFoundError, match="404 BLOB_UNKNOWN"):
        RegistrySource(client, oci_image).open_blob(fake)
    assert head_manifest(client, oci_image.with_tag("nope")) is None
    assert tag_exists(client, oci_image)


def test_pinned_digest_mismatch(oci_image: Reference, v2s2_image: Reference, client: RegistryClient) -> None:
    # Ask for the v2s2 manifest's digest in the repository holding only the OCI one: not found.
    other = RegistrySource(client, v2s2_image).root().digest
    with pytest.raises(NotFoundError):
        RegistrySource(client, Reference(oci_image.registry, oci_image.repository, digest=other)).root()


def test_dead_registry_fails_fast() -> None:
    port = free_port()
    start = time.monotonic()
    with RegistryClient(RegistryOptions(retries=1, backoff=0.05, timeout=5)) as c, pytest.raises(RegistryError) as e:
        RegistrySource(c, Reference.parse(f"127.0.0.1:{port}/app:t")).root()
    assert time.monotonic() - start < 5
    expected = f"cannot reach registry 127.0.0.1:{port}: connection refused; check the address or --insecure"
    assert expected in str(e.value)
    assert e.value.exit_code == 4


# -- pushing ---------------------------------------------------------------------------------


def assert_copyable(ref: Reference, tmp_path: Path) -> None:
    """skopeo can pull the whole image (every blob present and matching)."""
    out = tmp_path / unique("pulled")
    skopeo_ok("copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}", f"oci:{out}:x")


def test_push_mounts_within_registry(
    anon_registry: RunningRegistry, oci_image: Reference, client: RegistryClient, tmp_path: Path
) -> None:
    source = RegistrySource(client, oci_image)
    bundle = bundle_of(source)
    target = Reference.parse(f"{anon_registry.host}/{unique('mounted')}:p")
    log = record(client)
    digest = push(client, target, bundle)
    assert digest == bundle.root.digest
    mounts = [(m, u, s) for m, u, s in log if m == "POST" and "mount=" in u]
    assert len(mounts) == len(bundle.blobs) and all(s == 201 for _, _, s in mounts)
    assert not any(m in ("PUT", "PATCH") and "/blobs/" in u for m, u, _ in log)
    assert inspect_raw(target) == bundle.root.raw
    assert_copyable(target, tmp_path)


@pytest.mark.parametrize("which", ["oci", "v2s2"])
def test_push_uploads_to_other_registry(
    which: str,
    other_registry: RunningRegistry,
    oci_image: Reference,
    v2s2_image: Reference,
    client: RegistryClient,
    tmp_path: Path,
) -> None:
    source = RegistrySource(client, oci_image if which == "oci" else v2s2_image)
    bundle = bundle_of(source)
    target = Reference.parse(f"{other_registry.host}/{unique('uploaded')}:p")
    log = record(client)
    assert push(client, target, bundle) == bundle.root.digest
    assert not any("mount=" in u for _, u, _ in log)  # another registry: nothing to mount from
    raw = inspect_raw(target)
    assert raw == bundle.root.raw
    expected = MediaType.OCI_MANIFEST if which == "oci" else MediaType.DOCKER_MANIFEST
    assert served_media_type(target) == expected
    if which == "v2s2":
        assert json.loads(raw)["mediaType"] == expected
    assert_copyable(target, tmp_path)
    # Pushing again uploads nothing: every blob answers HEAD 200.
    log.clear()
    push(client, target, bundle)
    assert not any(m == "POST" for m, _, _ in log)


def test_push_index_with_child(
    other_registry: RunningRegistry, oci_image: Reference, client: RegistryClient, tmp_path: Path
) -> None:
    source = RegistrySource(client, oci_image)
    manifest = source.root()
    assert isinstance(manifest, Manifest)
    doc = {
        "schemaVersion": 2,
        "mediaType": MediaType.OCI_INDEX,
        "manifests": [manifest.descriptor(Platform("linux", "amd64")).to_json()],
    }
    index = parse_manifest(json.dumps(doc).encode())
    assert isinstance(index, Index)
    bundle = Bundle(index, manifest, (manifest,), manifest_blobs(manifest), source.open_blob, oci_image)
    target = Reference.parse(f"{other_registry.host}/{unique('indexed')}:multi")
    assert push(client, target, bundle) == index.digest
    assert inspect_raw(target) == index.raw
    pulled = RegistrySource(client, target)
    root = pulled.root()
    assert isinstance(root, Index)
    assert pulled.fetch_manifest(root.manifests[0]).raw == manifest.raw
    skopeo_ok("copy", "--quiet", "--all", "--src-tls-verify=false", f"docker://{target}", f"oci:{tmp_path / 'all'}:x")


def test_chunked_upload(other_registry: RunningRegistry, oci_image: Reference, tmp_path: Path) -> None:
    chunk = 64 * 1024
    with RegistryClient(RegistryOptions(retries=2, backoff=0.05, chunk_size=chunk)) as c:
        source = RegistrySource(c, oci_image)
        bundle = bundle_of(source)
        big = max(bundle.blobs, key=lambda d: d.size)
        assert big.size > 4 * chunk
        target = Reference.parse(f"{other_registry.host}/{unique('chunked')}:p")
        log = record(c)
        push(c, target, bundle)
    patches = [s for m, _, s in log if m == "PATCH"]
    assert len(patches) == -(-big.size // chunk) and set(patches) == {202}
    assert inspect_raw(target) == bundle.root.raw
    assert_copyable(target, tmp_path)


# -- auth ------------------------------------------------------------------------------------


def auth_file(tmp_path: Path, doc: dict[str, Any]) -> str:
    path = tmp_path / unique("auth") / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(doc))
    return str(path)


def basic_entry(user: str, pw: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{pw}".encode()).decode()}


def test_basic_auth(
    basic_registry: RunningRegistry, oci_image: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = auth_file(tmp_path, {"auths": {basic_registry.host: basic_entry(USER, PASSWORD)}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", good)
    target = Reference.parse(f"{basic_registry.host}/{unique('basic')}:p")
    with RegistryClient(FAST) as c:
        bundle = bundle_of(RegistrySource(c, oci_image))
        push(c, target, bundle)
        assert RegistrySource(c, target).root().raw == bundle.root.raw
    assert inspect_raw(target, "--creds", f"{USER}:{PASSWORD}") == bundle.root.raw

    bad = auth_file(tmp_path, {"auths": {basic_registry.host: basic_entry(USER, "wrong")}})
    with RegistryClient(RegistryOptions(retries=1, auth_file=bad)) as c, pytest.raises(AuthError) as e:
        RegistrySource(c, target).root()
    assert e.value.exit_code == 4
    assert str(e.value) == (
        f"registry {basic_registry.host} refused credentials for repository {target.repository} "
        "(401 UNAUTHORIZED): run docker login or set REGISTRY_AUTH_FILE"
    )
    empty = auth_file(tmp_path, {})
    with RegistryClient(RegistryOptions(retries=1, auth_file=empty)) as c, pytest.raises(AuthError, match="requires"):
        RegistrySource(c, target).root()


def test_token_auth(
    token_registry: RunningRegistry, oci_image: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    issuer = token_registry.issuer
    assert issuer is not None
    monkeypatch.setenv(
        "REGISTRY_AUTH_FILE",
        auth_file(tmp_path, {"auths": {token_registry.host: {"username": USER, "password": PASSWORD}}}),
    )
    first = Reference.parse(f"{token_registry.host}/{unique('tok')}:p")
    second = Reference.parse(f"{token_registry.host}/{unique('tok2')}:p")
    with RegistryClient(FAST) as c:
        bundle = bundle_of(RegistrySource(c, oci_image))
        push(c, first, bundle)
        pushed = RegistrySource(c, first)
        issuer.requests.clear()
        push(c, second, bundle_of(pushed))  # mount from `first`: a token for both repositories
        assert RegistrySource(c, second).root().raw == bundle.root.raw
    scopes = {s for _, ss in issuer.requests for s in ss}
    assert f"repository:{second.repository}:pull,push" in scopes
    assert f"repository:{first.repository}:pull" in scopes
    assert all(user == USER for user, _ in issuer.requests)
    assert inspect_raw(second, "--creds", f"{USER}:{PASSWORD}") == bundle.root.raw

    bad = auth_file(tmp_path, {"auths": {token_registry.host: basic_entry(USER, "wrong")}})
    with RegistryClient(RegistryOptions(retries=1, auth_file=bad)) as c, pytest.raises(AuthError) as e:
        RegistrySource(c, first).root()
    assert token_registry.host in str(e.value) and first.repository in str(e.value) and "401" in str(e.value)
    # Anonymous: the issuer grants nothing, so the registry itself refuses.
    anon = auth_file(tmp_path, {})
    with RegistryClient(RegistryOptions(retries=1, auth_file=anon)) as c, pytest.raises(AuthError, match="401"):
        RegistrySource(c, first).root()


def test_token_auth_identity_token_from_helper(
    token_registry: RunningRegistry, oci_image: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    issuer = token_registry.issuer
    assert issuer is not None
    issuer.refresh_tokens["refresh-abc"] = USER
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-copatoken"
    helper.write_text(
        f"#!{sys.executable}\nimport json, sys\nserver = sys.stdin.read().strip()\n"
        f"assert server == {token_registry.host!r}, server\n"
        "print(json.dumps({'Username': '<token>', 'Secret': 'refresh-abc'}))\n"
    )
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    cfg = auth_file(tmp_path, {"credHelpers": {token_registry.host: "copatoken"}})
    target = Reference.parse(f"{token_registry.host}/{unique('helper')}:p")
    with RegistryClient(RegistryOptions(retries=1, auth_file=cfg)) as c:
        bundle = bundle_of(RegistrySource(c, oci_image))
        push(c, target, bundle)
        assert RegistrySource(c, target).root().raw == bundle.root.raw


# -- faults ----------------------------------------------------------------------------------


@pytest.fixture
def proxy(anon_registry: RunningRegistry) -> Iterator[FaultProxy]:
    p = FaultProxy(anon_registry.host).start()
    yield p
    p.stop()


def test_corrupt_blob_is_detected(proxy: FaultProxy, oci_image: Reference, client: RegistryClient) -> None:
    via = Reference(proxy.host, oci_image.repository, oci_image.tag)
    source = RegistrySource(client, via)
    root = source.root()
    assert isinstance(root, Manifest)
    layer = root.layers[-1]
    proxy.add(Fault("corrupt", f"/blobs/{layer.digest}$", method="GET"))
    with pytest.raises(IntegrityError, match="digest mismatch") as e, source.open_blob(layer) as f:
        while f.read(1 << 16):
            pass
    assert e.value.exit_code == 5
    proxy.add(Fault("corrupt", "/manifests/", method="GET"))
    with pytest.raises(IntegrityError):
        RegistrySource(client, via.with_digest(root.digest)).root()


def test_push_survives_transient_faults(
    proxy: FaultProxy, anon_registry: RunningRegistry, oci_image: Reference, client: RegistryClient, tmp_path: Path
) -> None:
    bundle = bundle_of(RegistrySource(client, oci_image))
    repo = unique("flaky")
    proxy.add(Fault("429", "/blobs/sha256:", method="HEAD", retry_after=1))
    proxy.add(Fault("500", "/blobs/uploads/", method="POST", count=2))
    proxy.add(Fault("drop", r"/blobs/uploads/.*digest=", method="PUT"))
    proxy.add(Fault("500", "/manifests/p$", method="PUT"))
    start = time.monotonic()
    push(client, Reference.parse(f"{proxy.host}/{repo}:p"), bundle)
    assert time.monotonic() - start >= 1.0  # Retry-After honoured
    statuses = [s for _, _, s in proxy.log]
    assert statuses.count(429) == 1 and statuses.count(500) == 3 and statuses.count(-1) == 1
    assert all(f.count == 0 for f in proxy.faults)
    direct = Reference.parse(f"{anon_registry.host}/{repo}:p")
    assert inspect_raw(direct) == bundle.root.raw
    assert_copyable(direct, tmp_path)


def test_failed_push_leaves_no_tag(
    proxy: FaultProxy, anon_registry: RunningRegistry, oci_image: Reference, client: RegistryClient
) -> None:
    bundle = bundle_of(RegistrySource(client, oci_image))
    repo = unique("doomed")
    proxy.add(Fault("drop", "/manifests/p$", method="PUT", count=100))
    with pytest.raises(RegistryError, match="connection dropped") as e:
        push(client, Reference.parse(f"{proxy.host}/{repo}:p"), bundle)
    assert "gave up after 4 attempts" in str(e.value)
    assert not tag_exists(client, Reference.parse(f"{anon_registry.host}/{repo}:p"))
    assert skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{anon_registry.host}/{repo}:p").returncode != 0


def test_persistent_500_names_status(proxy: FaultProxy, oci_image: Reference, client: RegistryClient) -> None:
    proxy.add(Fault("500", "/manifests/", method="GET", count=100))
    with pytest.raises(RegistryError) as e:
        RegistrySource(client, Reference(proxy.host, oci_image.repository, oci_image.tag)).root()
    assert not isinstance(e.value, (AuthError, NotFoundError))
    assert proxy.host in str(e.value) and "500 UNAVAILABLE" in str(e.value) and oci_image.repository in str(e.value)


def test_corrupt_source_blob_fails_push_without_tag(
    proxy: FaultProxy, other_registry: RunningRegistry, oci_image: Reference, client: RegistryClient
) -> None:
    source = RegistrySource(client, Reference(proxy.host, oci_image.repository, oci_image.tag))
    bundle = bundle_of(source)
    assert isinstance(bundle.root, Manifest)
    proxy.add(Fault("corrupt", f"/blobs/{bundle.root.layers[-1].digest}$", method="GET"))
    target = Reference.parse(f"{other_registry.host}/{unique('corrupt')}:p")
    with pytest.raises(IntegrityError, match="digest mismatch"):
        push(client, target, bundle)
    assert not tag_exists(client, target)
