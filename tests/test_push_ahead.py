"""copa.oci.registry.CheckedAhead: whether the push target holds the base layers is asked while the patch is made,
and the push then asks only about the rest. The real docker-registry answers (directly, or behind the fault proxy);
skopeo pulls every pushed image whole (each blob checked against its digest)."""

from __future__ import annotations

import dataclasses
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from copa.oci.image import Bundle, manifest_blobs
from copa.oci.model import Manifest
from copa.oci.reference import Reference
from copa.oci.registry import CheckedAhead, RegistryClient, RegistryOptions, RegistrySource, push
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.registry import RunningRegistry, record

pytestmark = [pytest.mark.live]

FAST = RegistryOptions(retries=1, backoff=0.01, timeout=20)


def _skopeo(*args: str) -> None:
    proc = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr


def _pulls_whole(ref: Reference, tmp_path: Path) -> None:
    _skopeo("copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}", f"oci:{tmp_path / uuid.uuid4().hex}:x")


def _heads(log: list[tuple[str, str, int]]) -> list[str]:
    """The blob digests asked about (HEAD), in order."""
    return [url.rsplit("/blobs/", 1)[1] for method, url, _ in log if method == "HEAD" and "/blobs/" in url]



@pytest.fixture(scope="module")
def image(anon_registry: RunningRegistry, tiny_layout: Path) -> Reference:
    repo = f"ahead/src-{uuid.uuid4().hex[:8]}:t"
    _skopeo("copy", "--quiet", "--dest-tls-verify=false", f"oci:{tiny_layout}:t", f"docker://{anon_registry.host}/{repo}")
    return Reference.parse(f"{anon_registry.host}/{repo}")


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(FAST) as c:
        yield c


def _bundle(source: RegistrySource, mount: bool) -> tuple[Bundle, Manifest]:
    root = source.root()
    assert isinstance(root, Manifest)
    bundle = Bundle(root=root, primary=root, children=(), blobs=manifest_blobs(root), open_blob=source.open_blob,
                    mount_from=source.ref if mount else None)
    return bundle, root


def test_the_push_does_not_ask_again_what_was_asked_ahead(image: Reference, client: RegistryClient,
                                                          tmp_path: Path) -> None:
    bundle, root = _bundle(RegistrySource(client, image), mount=True)
    target = image.with_tag("ahead")
    log = record(client)
    ahead = CheckedAhead(client, target, image, root.layers)
    answers = ahead.answers()
    assert answers == {layer.digest: True for layer in root.layers}  # the target's repository is the source's
    assert sorted(_heads(log)) == sorted(str(layer.digest) for layer in root.layers)
    log.clear()
    push(client, target, dataclasses.replace(bundle, checked=ahead.answers))
    assert _heads(log) == [str(root.config.digest)], log  # only the blob nobody asked about
    _pulls_whole(target, tmp_path)


def test_a_blob_found_missing_is_uploaded_without_asking_again(anon_registry: RunningRegistry, image: Reference,
                                                               client: RegistryClient, tmp_path: Path) -> None:
    bundle, root = _bundle(RegistrySource(client, image), mount=False)
    target = Reference.parse(f"{anon_registry.host}/ahead/dst-{uuid.uuid4().hex[:8]}:t")
    ahead = CheckedAhead(client, target, None, root.layers)
    assert ahead.answers() == {layer.digest: False for layer in root.layers}
    log = record(client)
    push(client, target, dataclasses.replace(bundle, checked=ahead.answers))
    assert _heads(log) == [str(root.config.digest)], log
    uploads = [url for method, url, status in log if method == "PUT" and "/blobs/uploads/" in url and status == 201]
    assert len(uploads) == 1 + len(root.layers)
    _pulls_whole(target, tmp_path)


def test_a_check_that_fails_is_no_answer_and_the_push_asks_again(anon_registry: RunningRegistry,
                                                                 image: Reference, tmp_path: Path) -> None:
    proxy = FaultProxy(anon_registry.host).start()
    try:
        fault = Fault("500", r"/blobs/sha256:", "HEAD", count=1000)
        proxy.add(fault)
        via = Reference.parse(str(image).replace(anon_registry.host, proxy.host))
        with RegistryClient(FAST) as client:
            bundle, root = _bundle(RegistrySource(client, via), mount=True)
            target = via.with_tag("after-500")
            ahead = CheckedAhead(client, target, via, root.layers)
            assert ahead.answers() == {}  # no exception: the patch goes on
            fault.count = 0
            proxy.log.clear()
            push(client, target, dataclasses.replace(bundle, checked=ahead.answers))
        asked = [path.rsplit("/blobs/", 1)[1] for method, path, status in proxy.log
                 if method == "HEAD" and "/blobs/" in path and status == 200]
        assert {str(layer.digest) for layer in root.layers} <= set(asked), proxy.log
    finally:
        proxy.stop()
    _pulls_whole(Reference.parse(f"{anon_registry.host}/{image.repository}:after-500"), tmp_path)


def test_cancelled_checks_end_without_answers(image: Reference, client: RegistryClient) -> None:
    _, root = _bundle(RegistrySource(client, image), mount=True)
    ahead = CheckedAhead(client, image.with_tag("never"), image, root.layers * 50)  # (one check per digest)
    ahead.cancel()
    assert set(ahead.answers()) <= {layer.digest for layer in root.layers}
