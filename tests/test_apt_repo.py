"""Reading APT repositories end to end: a hermetic signed repository served on 127.0.0.1 (built with dpkg-deb and
dpkg-scanpackages, checked with gpgv), and the real Debian archive (`-m live`, mirror from the machine's apt
sources)."""

from __future__ import annotations

import gzip
import hashlib
import lzma
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from debian import deb822

from copa.errors import IntegrityError, NotFoundError, RegistryError
from copa.pkg.apt.debs import fetch_deb, fetch_debs
from copa.pkg.apt.openpgp import keyring_for_source, verify_clearsigned, verify_detached
from copa.pkg.apt.packages import PackageRecord, RepositoryIndex, load_indexes
from copa.pkg.apt.sources import AptSource, parse_file
from copa.pkg.cache import Cache
from copa.pkg.fetch import Fetcher
from copa.pkg.openpgp import Keyring
from copa.web.response import Response
from copa.web.session import Session
from tests.support.aptrepo import (
    AptRepo,
    DebSpec,
    RepoServer,
    SigningKey,
    build_repo,
    copy_repo,
    make_key,
    write_release,
)

DEBS = [
    DebSpec("hello", "1.0-1", files={"usr/bin/hello": "#!/bin/sh\necho hello\n"}, control={"Depends": "libc6"}),
    DebSpec(
        "hello",
        "1:1.1-1",
        files={"usr/bin/hello": "#!/bin/sh\necho hello 1.1\n", "etc/hello.conf": "x=1\n"},
        conffiles=("/etc/hello.conf",),
        control={"Depends": "libc6 (>= 2.36), hello-data (= 1:1.1-1)", "Multi-Arch": "foreign"},
    ),
    DebSpec(
        "hello-data",
        "1:1.1-1",
        arch="all",
        files={"usr/share/hello/data": "data\n"},
        control={"Source": "hello (1:1.1-1)", "Provides": "hello-assets (= 1), hello-virtual"},
    ),
    DebSpec("libfoo1", "2.0-3+b1", files={"usr/lib/libfoo.so.1": b"\x7fELF"}, control={"Source": "foo (2.0-3)"}),
    DebSpec("armonly", "1.0", arch="arm64", files={"usr/share/doc/armonly/x": "arm\n"}),
]


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return make_key(tmp_path_factory.mktemp("key"))


@pytest.fixture(scope="module")
def pristine_repo(tmp_path_factory: pytest.TempPathFactory, key: SigningKey) -> AptRepo:
    return build_repo(tmp_path_factory.mktemp("pristine") / "repo", DEBS, key=key, architectures=("amd64", "arm64"))


@pytest.fixture
def repo(tmp_path: Path, pristine_repo: AptRepo) -> AptRepo:
    return copy_repo(pristine_repo, tmp_path / "repo")


@pytest.fixture
def server(repo: AptRepo) -> Iterator[RepoServer]:
    with RepoServer(repo.root) as s:
        yield s


@pytest.fixture
def fetcher(tmp_path: Path) -> Fetcher:
    return Fetcher(Cache(tmp_path / "cache"), backoff=0.01, retries=3)


def _load(repo: AptRepo, fetcher: Fetcher, url: str | None = None, arch: str = "amd64", **kw: Any) -> RepositoryIndex:
    return load_indexes([repo.source(url)], arch, keyring_for_source, fetcher=fetcher, **kw)


def _gpgv(keyring: Path, *args: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["gpgv", "--keyring", str(keyring), "--output", "-", *map(str, args)], capture_output=True)


# --- the builder itself, against real tools ---------------------------------------------------------------------


def test_builder_signatures_verify_with_gpgv(tmp_path: Path, key: SigningKey) -> None:
    repo = build_repo(tmp_path / "r", DEBS[:1], key=key, detached=True)
    clear = _gpgv(key.keyring, repo.dist / "InRelease")
    assert clear.returncode == 0, clear.stderr
    assert clear.stdout.rstrip(b"\n") == (repo.dist / "Release").read_bytes().rstrip(b"\n")
    detached = _gpgv(key.keyring, repo.dist / "Release.gpg", repo.dist / "Release")
    assert detached.returncode == 0, detached.stderr
    fields = subprocess.run(
        ["dpkg-deb", "-f", str(repo.deb("hello", "1.0-1")), "Package", "Version"], capture_output=True, text=True
    ).stdout
    assert fields == "Package: hello\nVersion: 1.0-1\n"


# --- hermetic repository --------------------------------------------------------------------------------------


def test_index_over_http_matches_debs(repo: AptRepo, server: RepoServer, fetcher: Fetcher) -> None:
    index = _load(repo, fetcher, server.url)
    assert sorted(r.version for r in index.versions("hello")) == ["1.0-1", "1:1.1-1"]
    assert "armonly" not in index  # binary-amd64 only lists amd64 + all
    assert len(index) == 4
    for rec in index:
        deb = repo.root / rec.filename
        assert rec.sha256 == hashlib.sha256(deb.read_bytes()).hexdigest() and rec.size == deb.stat().st_size
        assert rec.repository == server.url and rec.suite == "stable" and rec.component == "main"
        # oracle: the control file inside the .deb, as dpkg-deb reads it
        control = deb822.Deb822(subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True).stdout)
        assert rec.package == control["Package"] and rec.version == control["Version"]
        assert rec.architecture == control["Architecture"]
        assert rec.depends == control.get("Depends", "")
        assert rec.provides == control.get("Provides", "")
        assert rec.multi_arch == control.get("Multi-Arch", "no")
        assert rec.size == deb.stat().st_size
    data = next(iter(index.versions("hello-data")))
    assert (data.source_name, data.source_version) == ("hello", "1:1.1-1")
    (lib,) = index.versions("libfoo1")
    assert (lib.source_name, lib.source_version) == ("foo", "2.0-3")
    (h10,) = [r for r in index.versions("hello") if r.version == "1.0-1"]
    assert (h10.source_name, h10.source_version) == ("hello", "1.0-1")
    assert [r.package for r in index.providers("hello-virtual")] == ["hello-data"]
    assert [r.package for r in index.providers("hello-assets")] == ["hello-data"]
    assert index.sources[0].verified
    # gzip preferred (the same text, inflated several times faster than xz); nothing else fetched
    assert [p for p in server.requests if "Packages" in p] == ["/dists/stable/main/binary-amd64/Packages.gz"]


def test_arm64_index(repo: AptRepo, server: RepoServer, fetcher: Fetcher) -> None:
    index = _load(repo, fetcher, server.url, arch="arm64")
    assert sorted(index.names()) == ["armonly", "hello-data"]


def test_file_uri_repository(repo: AptRepo, fetcher: Fetcher) -> None:
    index = _load(repo, fetcher)  # file:// URL
    assert len(index) == 4
    (lib,) = index.versions("libfoo1")
    assert lib.repository.startswith("file://")
    assert fetch_deb(lib, fetcher).read_bytes() == (repo.root / lib.filename).read_bytes()


def test_detached_signature_and_by_hash(tmp_path: Path, key: SigningKey, fetcher: Fetcher) -> None:
    repo = build_repo(tmp_path / "r", DEBS, key=key, inrelease=False, detached=True, by_hash=True)
    with RepoServer(repo.root) as server:
        index = _load(repo, fetcher, server.url)
        assert len(index) == 4
        assert "/dists/stable/Release.gpg" in server.requests
        assert any("/by-hash/SHA256/" in p for p in server.requests)


def test_release_gpg_with_several_signatures(tmp_path: Path, key: SigningKey) -> None:
    # Release.gpg signed by an unknown key first and ours second: like Debian's, any one good signature suffices
    other = make_key(tmp_path / "other")
    release = b"Suite: x\nSHA256:\n"
    sig = other.sign_detached(release)
    both = subprocess.run(["gpg", "--dearmor"], input=sig, capture_output=True, check=True).stdout
    both += subprocess.run(
        ["gpg", "--dearmor"], input=key.sign_detached(release), capture_output=True, check=True
    ).stdout
    assert verify_detached(release, both, Keyring.from_file(key.keyring), "t") == release
    with pytest.raises(IntegrityError):
        verify_detached(release + b"x", both, Keyring.from_file(key.keyring), "t")


def test_tampered_packages_rejected(repo: AptRepo, server: RepoServer, fetcher: Fetcher) -> None:
    packages = repo.dist / "main/binary-amd64/Packages.xz"
    text = lzma.decompress(packages.read_bytes()).replace(b"Version: 1.0-1", b"Version: 9.0-1")
    packages.write_bytes(lzma.compress(text))
    (repo.dist / "main/binary-amd64/Packages.gz").write_bytes(gzip.compress(text))
    with pytest.raises(IntegrityError, match=r"Packages\.gz.*(sha256|bytes)"):
        _load(repo, fetcher, server.url)
    assert not list((fetcher.cache.root / "sha256").rglob("*"))[1:]  # nothing but directories


def test_tampered_inrelease_rejected(repo: AptRepo, server: RepoServer, fetcher: Fetcher) -> None:
    inrelease = repo.dist / "InRelease"
    inrelease.write_bytes(inrelease.read_bytes().replace(b"Suite: stable", b"Suite: stabel"))
    assert _gpgv(repo.key.keyring, inrelease).returncode != 0  # type: ignore[union-attr]
    with pytest.raises(IntegrityError, match=r"signature does not verify.*--keyring"):
        _load(repo, fetcher, server.url)


def test_content_outside_signed_message_rejected(repo: AptRepo, fetcher: Fetcher) -> None:
    inrelease = repo.dist / "InRelease"
    data = inrelease.read_bytes()
    ring = Keyring.from_file(repo.key.keyring)  # type: ignore[union-attr]
    assert verify_clearsigned(data, ring, "t").startswith(b"Origin: copa-tests")
    for bad in (b"Suite: evil\n" + data, data + b"\nSuite: evil\n", data + data):
        with pytest.raises(IntegrityError, match=r"(outside|clearsigned)"):
            verify_clearsigned(bad, ring, "t")


def test_wrong_key_rejected(repo: AptRepo, server: RepoServer, fetcher: Fetcher, tmp_path: Path) -> None:
    other = make_key(tmp_path / "other")
    src = repo.source(server.url, signed_by=(str(other.keyring),))
    with pytest.raises(IntegrityError) as e:
        load_indexes([src], "amd64", keyring_for_source, fetcher=fetcher)
    assert server.url in str(e.value) and "--keyring" in str(e.value) and "\n" not in str(e.value)
    assert e.value.exit_code == 5


def test_unsigned_repository(tmp_path: Path, fetcher: Fetcher) -> None:
    repo = build_repo(tmp_path / "r", DEBS, key=None)
    with RepoServer(repo.root) as server:
        with pytest.raises(IntegrityError, match="not signed"):
            _load(repo, fetcher, server.url)
        assert len(_load(repo, fetcher, server.url, allow_insecure=True)) == 4
        trusted = repo.source(server.url, trusted=True)
        index = load_indexes([trusted], "amd64", keyring_for_source, fetcher=fetcher)
        assert len(index) == 4 and not index.sources[0].verified


def test_insecure_still_checks_index_hashes(repo: AptRepo, server: RepoServer, fetcher: Fetcher) -> None:
    (repo.dist / "main/binary-amd64/Packages.xz").write_bytes(lzma.compress(b"Package: evil\n"))
    (repo.dist / "main/binary-amd64/Packages.gz").write_bytes(gzip.compress(b"Package: evil\n"))
    with pytest.raises(IntegrityError):
        _load(repo, fetcher, server.url, allow_insecure=True)


@pytest.mark.parametrize("by_hash", [False, True])
def test_index_variant_not_served_falls_back(tmp_path: Path, key: SigningKey, fetcher: Fetcher, by_hash: bool
                                             ) -> None:
    # A partial mirror: its Release lists Packages.gz, .xz and the plain file, but only .xz is there. The index
    # loads from .xz, with the same records as from the full repository.
    repo = build_repo(tmp_path / "r", DEBS, key=key, by_hash=by_hash)
    expected = {(r.package, r.version, r.sha256) for r in _load(repo, fetcher)}
    directory = repo.dist / "main/binary-amd64"
    gone = {hashlib.sha256((directory / n).read_bytes()).hexdigest() for n in ("Packages.gz", "Packages")}
    for f in [directory / "Packages.gz", directory / "Packages", *directory.glob("by-hash/SHA256/*")]:
        if f.name in ("Packages.gz", "Packages") or f.name in gone:
            f.unlink()
    with RepoServer(repo.root) as server:
        index = _load(repo, Fetcher(Cache(tmp_path / "partial-cache")), server.url)
        assert {(r.package, r.version, r.sha256) for r in index} == expected
        asked = [p for p in server.requests if "/binary-amd64/" in p]
        assert asked[0].endswith("Packages.gz") or asked[0].rsplit("/", 1)[1] in gone  # .gz was tried first
        xz = hashlib.sha256((directory / "Packages.xz").read_bytes()).hexdigest()
        assert asked[-1].endswith("Packages.xz" if not by_hash else xz)


def test_expired_release(tmp_path: Path, key: SigningKey, fetcher: Fetcher) -> None:
    past = datetime.now(UTC) - timedelta(days=3)
    repo = build_repo(tmp_path / "r", DEBS, key=key, date=past, valid_until=past + timedelta(days=1))
    with pytest.raises(IntegrityError, match=r"expired.*check-valid-until=no"):
        _load(repo, fetcher)
    assert len(_load(repo, fetcher, check_valid_until=False)) == 4
    src = repo.source(check_valid_until=False)
    assert len(load_indexes([src], "amd64", keyring_for_source, fetcher=fetcher)) == 4


def test_deb_mismatch_rejected(repo: AptRepo, server: RepoServer, fetcher: Fetcher) -> None:
    index = _load(repo, fetcher, server.url)
    (lib,) = index.versions("libfoo1")
    deb = repo.root / lib.filename
    deb.write_bytes(deb.read_bytes()[:-1] + b"X")  # same size, different content
    with pytest.raises(IntegrityError, match=r"libfoo1_2\.0-3\+b1_amd64\.deb: sha256 mismatch"):
        fetch_deb(lib, fetcher)
    assert fetcher.cache.lookup(lib.sha256, lib.size) is None
    deb.write_bytes(deb.read_bytes() + b"extra")
    with pytest.raises(IntegrityError, match="more than the expected"):
        fetch_deb(lib, fetcher)


def test_deb_cached_across_runs(repo: AptRepo, server: RepoServer, tmp_path: Path) -> None:
    first = Fetcher(Cache(tmp_path / "c"))
    index = _load(repo, first, server.url)
    records = sorted(index, key=lambda r: (r.package, r.version))
    paths = fetch_debs(records, first)
    assert [p.read_bytes() for p in paths] == [(repo.root / r.filename).read_bytes() for r in records]
    before = list(server.requests)
    second = Fetcher(Cache(tmp_path / "c"))  # a new run, same cache dir
    again = _load(repo, second, server.url)
    assert [fetch_deb(r, second) for r in records] == paths
    # only InRelease was asked for: parsed indexes and .debs came from the cache
    assert server.requests[len(before) :] == ["/dists/stable/InRelease"]
    assert sorted(again, key=lambda r: (r.package, r.version)) == records


def test_retries_transient_errors_only(repo: AptRepo, server: RepoServer, fetcher: Fetcher) -> None:
    server.failures["/dists/stable/InRelease"] = [503, 429]
    assert len(_load(repo, fetcher, server.url)) == 4
    assert server.requests.count("/dists/stable/InRelease") == 3
    server.failures["/dists/stable/InRelease"] = [500, 500, 500]
    with pytest.raises(RegistryError, match="after 3 attempts"):
        _load(repo, fetcher, server.url)
    server.failures["/dists/stable/InRelease"] = [403]
    with pytest.raises(RegistryError, match="HTTP 403"):
        _load(repo, fetcher, server.url)
    assert server.requests.count("/dists/stable/InRelease") == 7  # the 403 was not retried


def test_missing_repository(tmp_path: Path, fetcher: Fetcher) -> None:
    with pytest.raises(NotFoundError, match="neither InRelease nor Release"):
        load_indexes([AptSource((tmp_path / "nothing").as_uri(), "s", ("main",))], "amd64", keyring_for_source,
                     fetcher=fetcher)  # fmt: skip


def test_rewritten_release_after_tamper_needs_signature(repo: AptRepo, fetcher: Fetcher, tmp_path: Path) -> None:
    # an attacker who rewrites Packages and Release but cannot sign: the old InRelease no longer matches
    other = make_key(tmp_path / "attacker")
    evil = AptRepo(repo.root, repo.suite, repo.components, repo.architectures, other, repo.debs)
    write_release(evil)
    with pytest.raises(IntegrityError):
        _load(repo, fetcher)


# --- the real archive -----------------------------------------------------------------------------------------

DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


def _machine_sources() -> list[AptSource]:
    out: list[AptSource] = []
    for p in sorted(Path("/etc/apt/sources.list.d").glob("*")):
        if p.suffix in (".list", ".sources"):
            out += parse_file(p.read_text(), str(p))
    return out


@pytest.fixture(scope="module")
def security_source() -> AptSource:
    for s in _machine_sources():
        if s.suite.endswith("-security"):
            return s
    raise AssertionError("no *-security source in /etc/apt/sources.list.d; the live tests need one")


@pytest.fixture(scope="module")
def live_fetcher() -> Fetcher:
    # persistent, so reruns do not download the big indexes again
    return Fetcher(Cache(Path.home() / ".cache" / "copa-tests" / "apt-cache"))


@pytest.mark.live
def test_live_inrelease_verifies_like_gpgv(security_source: AptSource, live_fetcher: Fetcher, tmp_path: Path) -> None:
    data = live_fetcher.get_bytes(f"{security_source.dist_url}/InRelease", "live")
    ring = Keyring.from_file(DEBIAN_KEYRING)
    assert len(ring.certs) > 1  # several keys, some possibly expired
    text = verify_clearsigned(data, ring, "live")
    (tmp_path / "InRelease").write_bytes(data)
    oracle = _gpgv(DEBIAN_KEYRING, tmp_path / "InRelease")
    assert oracle.returncode == 0
    assert text.rstrip(b"\n") == oracle.stdout.rstrip(b"\n")
    # tampered: one hex digit of the first SHA256 line
    i = data.index(b"SHA256:\n ") + len(b"SHA256:\n ")
    tampered = data[:i] + (b"0" if data[i : i + 1] != b"0" else b"1") + data[i + 1 :]
    (tmp_path / "InRelease").write_bytes(tampered)
    assert _gpgv(DEBIAN_KEYRING, tmp_path / "InRelease").returncode != 0
    with pytest.raises(IntegrityError, match="does not verify"):
        verify_clearsigned(tampered, ring, "live")
    wrong = make_key(tmp_path / "wrong")
    with pytest.raises(IntegrityError, match="does not verify"):
        verify_clearsigned(data, Keyring.from_file(wrong.keyring), "live")


@pytest.mark.live
def test_live_security_index_and_deb(security_source: AptSource, live_fetcher: Fetcher, tmp_path: Path) -> None:
    src = AptSource(security_source.uri, security_source.suite, ("main",), signed_by=(str(DEBIAN_KEYRING),))
    index = load_indexes([src], "amd64", keyring_for_source, fetcher=live_fetcher)
    assert index.sources[0].verified and len(index) > 100
    # oracle: python-debian's parser over the same (verified, cached) Packages file
    release = index.sources[0].release
    name = next(n for n in ("main/binary-amd64/Packages.gz", "main/binary-amd64/Packages.xz") if n in release.files)
    cached = live_fetcher.cache.lookup(release.files[name].sha256, release.files[name].size)
    assert cached is not None
    with (gzip.open if name.endswith(".gz") else lzma.open)(cached, "rt", encoding="utf-8") as f:
        paragraphs = deb822.Packages.iter_paragraphs(f, use_apt_pkg=False)
        expected = {(p["Package"], p["Version"], p["SHA256"]) for p in paragraphs}
    assert {(r.package, r.version, r.sha256) for r in index} == expected
    smallest = min((r for r in index if r.architecture == "all"), key=lambda r: r.size)
    cache = Cache(tmp_path / "cache")
    path = fetch_deb(smallest, Fetcher(cache))
    info = subprocess.run(["dpkg-deb", "-f", str(path), "Package", "Version"], capture_output=True, text=True)
    assert info.stdout == f"Package: {smallest.package}\nVersion: {smallest.version}\n"

    class NoNetwork(Session):
        def request(self, *a: Any, **k: Any) -> Response:  # type: ignore[override]
            raise AssertionError("the cached .deb must not touch the network")

    assert fetch_deb(smallest, Fetcher(cache, session=NoNetwork())) == path


@pytest.mark.live
def test_live_full_main_index_parse_time(live_fetcher: Fetcher) -> None:
    srcs = [s for s in _machine_sources() if s.suite.count("-") == 0 and "main" in s.components]
    assert srcs, "no plain suite (e.g. bookworm) in /etc/apt/sources.list.d"
    src = AptSource(srcs[0].uri, srcs[0].suite, ("main",), signed_by=(str(DEBIAN_KEYRING),))
    t0 = time.monotonic()
    index = load_indexes([src], "amd64", keyring_for_source, fetcher=live_fetcher, use_parsed_cache=False)
    cold = time.monotonic() - t0
    load_indexes([src], "amd64", keyring_for_source, fetcher=live_fetcher)  # fills the decompressed-index cache
    t0 = time.monotonic()
    warm_index = load_indexes([src], "amd64", keyring_for_source, fetcher=live_fetcher)
    warm = time.monotonic() - t0
    print(f"\n{src.suite} main amd64: {len(index)} records, in memory {cold:.2f}s, from the cache {warm:.2f}s")
    # The cached text and the in-memory one give the same records.
    assert len(index) > 50000 and set(warm_index) == set(index)
    assert isinstance(next(iter(index)), PackageRecord)
