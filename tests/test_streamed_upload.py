"""The patch layer goes to the registry while it is written (copa.oci.registry.StreamedUpload): the image pushed is
the image written, byte for byte, and a registry that refuses chunked uploads still gets it, uploaded whole. The
real docker-registry (behind the fault proxy, which logs every request) and skopeo are the oracles; every pushed
image also passes tests/support/validate.py."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import copa.oci.registry as registry
from copa.cli import main
from copa.oci.layer import Entry, write_layer
from copa.oci.model import Descriptor, Manifest, parse_manifest
from copa.oci.reference import Reference
from copa.oci.registry import RegistryClient, RegistrySource, StreamedUpload
from tests.support import images
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.registry import RunningRegistry
from tests.support.trivy import dpkg_versions, fixed_packages, write_report
from tests.support.validate import validate

pytestmark = [pytest.mark.live, pytest.mark.slow]

SMALL_START = 64 << 10  # the one-package patch layer of these tests is a few hundred KiB: streamed from here on


@pytest.fixture(scope="module")
def app(anon_registry: RunningRegistry) -> str:
    layout, ref = images.debian_layout()
    images.push_layout(layout, ref, anon_registry.host, "streamed/app:1.0")
    return f"{anon_registry.host}/streamed/app:1.0"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    fixes = fixed_packages(dpkg_versions(images.debian_rootfs()), dpkg_versions(images.oracle_rootfs()))
    name = next((n for n in ("libexpat1", "libssh2-1", "liblzma5") if n in fixes), None) or sorted(fixes)[0]
    return write_report(tmp_path_factory.mktemp("report") / "trivy.json", {name: fixes[name]})


@pytest.fixture
def proxy(anon_registry: RunningRegistry) -> Iterator[FaultProxy]:
    p = FaultProxy(anon_registry.host).start()
    yield p
    p.stop()


def _patch(app: str, report: Path, proxy: FaultProxy, anon_registry: RunningRegistry, tag: str, out: Path) -> str:
    via_proxy = app.replace(anon_registry.host, proxy.host)
    code = main(["patch", "-i", via_proxy, "-r", str(report), "--push", "-t", tag, "--oci-dir", str(out),
                 "--progress", "quiet"])
    assert code == 0
    return app.replace(":1.0", f":{tag}")


def _pushed_layer(ref: str) -> str:
    manifest = parse_manifest(subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{ref}"],
                                             capture_output=True, check=True).stdout)
    assert isinstance(manifest, Manifest)
    return str(manifest.layers[-1].digest)


def _base_layers(ref: str) -> tuple[Descriptor, ...]:
    root = RegistrySource(RegistryClient(), Reference.parse(ref)).root()
    assert isinstance(root, Manifest)
    return root.layers


def _written_layer(out: Path, tag: str) -> str:
    index = json.loads((out / "index.json").read_text())
    digest = next(m["digest"] for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"]
                  == tag).split(":", 1)[1]
    return str(json.loads((out / "blobs/sha256" / digest).read_text())["layers"][-1]["digest"])


def _session(path: str) -> str:
    """The upload session (its id in the URL) a request went to."""
    return path.split("/blobs/uploads/", 1)[1].split("?", 1)[0]


def _check_pushed(ref: str, tmp: Path) -> None:
    validate(RegistrySource(RegistryClient(), Reference.parse(ref)))
    # skopeo checks every blob against its digest on the way into a layout.
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}", f"oci:{tmp}:x"],
                   check=True, capture_output=True)


def test_the_layer_streamed_while_written_is_the_layer_pushed(app: str, report: Path, proxy: FaultProxy,
                                                              anon_registry: RunningRegistry, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(registry, "STREAM_START", SMALL_START)
    ref = _patch(app, report, proxy, anon_registry, "1.0-streamed", tmp_path / "out")
    layer = _pushed_layer(ref)
    patches = [(p, s) for m, p, s in proxy.log if m == "PATCH"]
    assert len(patches) == 1 and patches[0][1] == 202, patches
    # The session the body went to was closed with the layer's digest; the layer was not uploaded again.
    closes = [p for m, p, s in proxy.log if m == "PUT" and f"digest={layer.replace(':', '%3A')}" in p]
    assert len(closes) == 1, proxy.log
    sessions = {_session(p) for p, _ in patches}
    assert sessions == {_session(closes[0])}, (sessions, closes)
    assert layer == _written_layer(tmp_path / "out", "1.0-streamed")
    # Its bytes are in the session already: it is closed without asking whether the registry has the layer. The
    # base layer was asked about once, before the layer was written (its upload session opened).
    heads = [i for i, (m, p, _) in enumerate(proxy.log) if m == "HEAD" and "/blobs/" in p]
    asked = [proxy.log[i][1].rsplit("/blobs/", 1)[1] for i in heads]
    assert layer not in asked, proxy.log
    base = [str(d.digest) for d in _base_layers(app)]
    assert sorted(a for a in asked if a in base) == sorted(base), proxy.log
    first_post = next(i for i, (m, p, _) in enumerate(proxy.log) if m == "POST" and "/blobs/uploads/" in p)
    assert all(i < first_post for i, a in zip(heads, asked, strict=True) if a in base), proxy.log
    _check_pushed(ref, tmp_path / "copy")


def test_a_registry_refusing_chunks_gets_the_layer_whole(app: str, report: Path, proxy: FaultProxy,
                                                         anon_registry: RunningRegistry, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(registry, "STREAM_START", SMALL_START)
    proxy.add(Fault("500", r"/blobs/uploads/", "PATCH", count=1000))
    ref = _patch(app, report, proxy, anon_registry, "1.0-whole", tmp_path / "out")
    assert ("PATCH", 500) in [(m, s) for m, _, s in proxy.log], proxy.log
    assert _pushed_layer(ref) == _written_layer(tmp_path / "out", "1.0-whole")
    _check_pushed(ref, tmp_path / "copy")


def test_a_small_layer_is_pushed_as_before(app: str, report: Path, proxy: FaultProxy,
                                                          anon_registry: RunningRegistry, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPA_CACHE_DIR", str(tmp_path / "cache"))
    ref = _patch(app, report, proxy, anon_registry, "1.0-small", tmp_path / "out")
    assert not [p for m, p, _ in proxy.log if m == "PATCH"], "a layer under STREAM_START opens no upload session"
    _check_pushed(ref, tmp_path / "copy")


def test_a_failed_write_leaves_nothing_to_close(anon_registry: RunningRegistry, tmp_path: Path) -> None:
    """The layer's writing fails after part of it went up: the upload ends, and the push has no session to close."""
    upload = StreamedUpload(RegistryClient(), Reference.parse(f"{anon_registry.host}/streamed/broken:1"), 4096)

    def broken() -> object:
        raise OSError("disk gone")

    big = Entry.file("a", bytes(range(256)) * 4096)
    with pytest.raises(Exception, match="disk gone"):
        write_layer([big, Entry("b", big.kind, size=10, content=broken)], tmp_path, watch=upload)  # type: ignore[arg-type]
    assert upload.location() is None


def test_the_body_goes_up_while_the_layer_is_written(anon_registry: RunningRegistry, tmp_path: Path) -> None:
    """Straight to the registry (no proxy in between): the PATCH body follows the file as it is written (the second
    entry is produced only once the registry has started receiving the first), the registry takes the chunked body,
    and the session closes with the layer's digest: the blob the registry then serves is the file written."""
    ref = Reference.parse(f"{anon_registry.host}/streamed/direct:1")
    client = RegistryClient()
    upload = StreamedUpload(client, ref, 64 << 10)
    first = Entry.file("a", os.urandom(16 << 20))  # random: compressed, it passes the start at once

    def after_upload_began() -> io.BytesIO:
        deadline = time.monotonic() + 10
        while upload._sent == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert upload._sent > 0, "nothing was sent while the layer was being written"
        return io.BytesIO(b"second")

    blob = write_layer([first, Entry("b", first.kind, size=6, content=after_upload_began)], tmp_path, watch=upload)
    location = upload.location()
    assert location is not None
    resp = client.send("PUT", ref, registry._with_query(location, digest=str(blob.digest)),
                       actions="pull,push", headers={"Content-Length": "0"}, data=b"")
    assert resp.status_code == 201, resp.status_code
    resp.close()
    served = client.send("GET", ref, client.repo_url(ref, f"blobs/{blob.digest}")).content
    assert served == blob.path.read_bytes()
