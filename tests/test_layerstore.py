"""Patch layers built once (copa.oci.layerstore.LayerStore) and pushed once (BlobHomes: cross-repository mounts).

Oracles: the layer writer itself run again on the same inputs (it is deterministic: a stored layer must be those
bytes), `sha256sum` and `tar` over the stored blob, and the real `docker-registry`: its 201 answer to a mount, the
absence of any upload request, and `skopeo copy` reading the pushed image back (it verifies every blob)."""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from copa.oci.digest import Digest
from copa.oci.image import Bundle, manifest_blobs
from copa.oci.layer import Compression, Entry, Kind, LayerBlob, write_layer
from copa.oci.layerstore import BlobHomes, LayerStore, layer_key, writer_version
from copa.oci.model import Manifest
from copa.oci.reference import Reference
from copa.oci.registry import RegistryClient, RegistryOptions, RegistrySource, push
from copa.pkg import cache as cache_module
from copa.pkg.cache import Cache
from tests.support.registry import RunningRegistry, record

FAST = RegistryOptions(retries=3, backoff=0.05, timeout=20)
ENTRIES = [Entry("usr", Kind.DIR, 0o755), Entry("usr/lib", Kind.DIR, 0o755),
           Entry.file("usr/lib/libfoo.so.1", b"\x7fELF" + bytes(range(256)) * 64, 0o644, mtime=1_700_000_000),
           Entry.file("usr/share/doc/foo/changelog", b"foo (2.0) stable; urgency=high\n", mtime=1_700_000_000)]


def _build(directory: Path, compression: Compression = Compression.GZIP) -> LayerBlob:
    directory.mkdir(parents=True, exist_ok=True)
    return write_layer(ENTRIES, directory, compression=compression, clamp_mtime=1_700_000_000)


def _key(compression: str = "gzip") -> str:
    return layer_key([Digest("sha256", "a" * 64)], [("libfoo1", "amd64", "2.0")], compression=compression,
                     docker=False, source_date_epoch="1700000000", writer_version="test")


def test_same_key_same_bytes(tmp_path: Path) -> None:
    store = LayerStore(Cache(tmp_path / "cache"))
    assert store.get(_key()) is None
    first = _build(tmp_path / "a")
    stored = store.put(_key(), first)
    again = store.get(_key())
    assert again is not None and again.path == stored.path
    assert (again.digest, again.diff_id, again.size, again.media_type) == \
        (first.digest, first.diff_id, first.size, first.media_type)
    # The writer run again on the same inputs gives these very bytes: what the store serves is what a build makes.
    rebuilt = _build(tmp_path / "b")
    assert again.path.read_bytes() == rebuilt.path.read_bytes()
    got = subprocess.run(["sha256sum", str(again.path)], capture_output=True, text=True, check=True).stdout.split()[0]
    assert f"sha256:{got}" == str(again.digest)
    listing = subprocess.run(["tar", "-tzf", str(again.path)], capture_output=True, text=True, check=True).stdout
    assert "usr/lib/libfoo.so.1" in listing.split()
    # Other options, other key: a zstd build is not served for a gzip key.
    assert _key("zstd") != _key() and store.get(_key("zstd")) is None
    # What the build reported travels with the layer.
    store.put(_key(), first, {"updates": [["libfoo1", "amd64", "1.0", "2.0"]]})
    found = store.get_with_extra(_key())
    assert found is not None and found[1] == {"updates": [["libfoo1", "amd64", "1.0", "2.0"]]}


def test_the_writer_version_is_a_fingerprint_of_the_code() -> None:
    version = writer_version()
    assert version == writer_version() and "isal " in version and "zstandard " in version
    key = layer_key([], [("a", "amd64", "1")], compression="gzip", docker=False, source_date_epoch=None,
                    writer_version=version)
    other = layer_key([], [("a", "amd64", "1")], compression="gzip", docker=False, source_date_epoch=None,
                      writer_version=version + "x")
    assert key != other


def test_a_damaged_stored_layer_is_not_served(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    stored = LayerStore(Cache(root)).put(_key(), _build(tmp_path / "a"))
    data = bytearray(stored.path.read_bytes())
    data[-10] ^= 0x01
    stored.path.write_bytes(bytes(data))
    cache_module._verified.clear()  # as in a new process
    store = LayerStore(Cache(root))
    assert store.get(_key()) is None
    assert not stored.path.exists(), "the damaged blob stays in the cache"
    # The metadata entry damaged: not served either (its sum no longer matches).
    store.put(_key(), _build(tmp_path / "b"))
    meta = next((root / "derived" / "patch-layers").rglob("*.json"))
    meta.write_bytes(meta.read_bytes().replace(b'"size": ', b'"size": 1'))
    cache_module._verified.clear()
    assert LayerStore(Cache(root)).get(_key()) is None


def test_concurrent_builders_build_once(tmp_path: Path) -> None:
    """Eight builders (each its own store object on the shared directory, as separate processes have): one builds,
    the others wait and get its layer."""
    root = tmp_path / "cache"
    builds: list[int] = []
    results: list[tuple[LayerBlob, bool]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        def build() -> LayerBlob:
            with lock:
                builds.append(i)
            return _build(tmp_path / f"w{i}")
        result = LayerStore(Cache(root)).get_or_build(_key(), build)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(builds) == 1 and len(results) == 8
    assert sum(built for _, built in results) == 1
    assert len({str(blob.digest) for blob, _ in results}) == 1
    assert not list((root / "patch-layers").glob("*.lock"))


# -- pushed once: cross-repository mounts -------------------------------------------------------------------------



@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(FAST) as c:
        yield c


@pytest.fixture(scope="module")
def source_ref(anon_registry: RunningRegistry, tiny_layout: Path) -> Reference:
    repo = f"homes/src-{uuid.uuid4().hex[:8]}:t"
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{tiny_layout}:t",
                    f"docker://{anon_registry.host}/{repo}"], check=True, capture_output=True, timeout=120)
    return Reference.parse(f"{anon_registry.host}/{repo}")


def _bundle(client: RegistryClient, ref: Reference) -> Bundle:
    source = RegistrySource(client, ref)
    root = source.root()
    assert isinstance(root, Manifest)
    return Bundle(root, root, (), manifest_blobs(root), source.open_blob)  # no mount_from: only homes can mount


def _uploads(log: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    return [e for e in log if e[0] in ("PATCH", "PUT") and "/blobs/uploads/" in e[1]]


def _readable(ref: Reference, tmp: Path) -> None:
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}",
                    f"oci:{tmp}:t"], check=True, capture_output=True, timeout=120)


@pytest.mark.parametrize("shared", [False, True], ids=["in-process", "cache-dir"])
def test_a_blob_pushed_once_is_mounted_into_the_next_repository(
        shared: bool, client: RegistryClient, anon_registry: RunningRegistry, source_ref: Reference,
        tmp_path: Path) -> None:
    host = anon_registry.host
    first = Reference.parse(f"{host}/homes/a-{uuid.uuid4().hex[:8]}:p")
    second = Reference.parse(f"{host}/homes/b-{uuid.uuid4().hex[:8]}:p")
    homes = BlobHomes(tmp_path / "cache" if shared else None)
    log = record(client)
    push(client, first, _bundle(client, source_ref), homes)
    bundle = _bundle(client, source_ref)
    assert len(_uploads(log)) >= len(bundle.blobs), "the first push did not upload"
    if shared:
        homes = BlobHomes(tmp_path / "cache")  # another process of the sweep: it knows only the shared record
    log.clear()
    push(client, second, bundle, homes)
    mounts = [(u, s) for m, u, s in log if m == "POST" and "mount=" in u]
    assert len(mounts) == len(bundle.blobs)
    assert all(s == 201 and f"from={first.repository.replace('/', '%2F')}" in u for u, s in mounts), mounts
    assert not _uploads(log), "a blob was uploaded although the registry holds it in another repository"
    _readable(second, tmp_path / "copy")


def test_a_stale_home_falls_back_to_an_upload(client: RegistryClient, anon_registry: RunningRegistry,
                                              source_ref: Reference, tmp_path: Path) -> None:
    """A repository recorded as a home that does not hold the blob (deleted, or never pushed) costs one refused
    mount: the blob is uploaded, and the home is forgotten."""
    host = anon_registry.host
    target = Reference.parse(f"{host}/homes/c-{uuid.uuid4().hex[:8]}:p")
    bundle = _bundle(client, source_ref)
    homes = BlobHomes(tmp_path / "cache")
    for desc in bundle.blobs:
        homes.add(desc.digest, host, "homes/never-pushed")
    log = record(client)
    push(client, target, bundle, homes)
    assert len([e for e in log if e[0] == "POST" and "from=homes%2Fnever-pushed" in e[1]]) == len(bundle.blobs)
    assert len([e for e in _uploads(log) if e[0] == "PUT" and e[2] == 201]) == len(bundle.blobs)
    for desc in bundle.blobs:
        assert homes.candidates(desc.digest, host, "homes/other") == [target.repository]
    _readable(target, tmp_path / "copy")


def test_put_links_the_layer_in_and_copies_across_file_systems(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer this process wrote is linked into the store (same inode, not read again); where linking fails (the
    cache on another file system: EXDEV) it is copied and checked against its digest like any download."""
    import errno
    import hashlib
    import io
    import os

    from copa.errors import IntegrityError

    def layer(name: str) -> LayerBlob:
        data = name.encode() * 1000
        directory = tmp_path / name
        directory.mkdir()
        entry = Entry(f"f-{name}", Kind.FILE, 0o644, 0, 0, len(data), lambda: io.BytesIO(data))
        return write_layer([entry], directory)

    store = LayerStore(Cache(tmp_path / "cache"))
    linked = layer("a")
    stored = store.put("key-a", linked)
    assert os.stat(stored.path).st_ino == os.stat(linked.path).st_ino
    assert hashlib.sha256(stored.path.read_bytes()).hexdigest() == linked.digest.hex

    def no_link(*_a: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    copied = layer("b")
    stored_b = store.put("key-b", copied)
    assert os.stat(stored_b.path).st_ino != os.stat(copied.path).st_ino
    assert stored_b.path.read_bytes() == copied.path.read_bytes()
    wrong = layer("c")
    lie = LayerBlob(wrong.path, Digest("sha256", "0" * 64), wrong.diff_id, wrong.size, wrong.media_type)
    with pytest.raises(IntegrityError):
        store.put("key-c", lie)
