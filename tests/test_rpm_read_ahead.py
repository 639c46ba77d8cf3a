"""Reading rpm packages ahead from a signed repository (copa/pkg/rpm/prefetch.py, copa/pkg/rpm/readahead.py).

While the image is read, a repository with repo_gpgcheck=1 whose repomd.xml.asc verifies with the keys read so far
(the gpgkey file in the image's /etc) is parsed, and the reported packages' newest versions are downloaded and read;
the plan verifies the very repomd.xml and signature the prefetch downloaded instead of asking for them again. It may
change how fast a patch is, never what it produces: the patch layer is byte for byte the one built without reading
ahead (whose tree tests/test_rpm_e2e.py checks against the real rpm -U, with read-ahead on there too), a repomd
signed by a key the image does not trust is not even decompressed, and the build runs its own header check on what
was read ahead (a package the prefetch accepted is still refused when the build's keys refuse it)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import copa.pkg.rpm.prefetch as prefetch
from copa.cli import main
from copa.pkg.base import PrefetchHints, RepositoryOptions
from copa.pkg.fetch import make_fetcher
from copa.pkg.openpgp import Keyring
from copa.pkg.rpm.readahead import ReadAhead
from copa.pkg.rpm.repomd import RepoIndex, fetch_entry, fetch_repomd
from copa.pkg.rpm.repos import RpmRepository
from tests.support import images
from tests.support.aptrepo import RepoServer
from tests.support.rpmrepo import createrepo
from tests.support.rpmtools import build_rpm, make_gpg_key
from tests.support.trivy import write_report
from tests.test_rpm_e2e import NEW, REF, World
from tests.test_rpm_e2e import world as world  # the module-scoped image and repository (a fixture)

pytestmark = pytest.mark.skipif(not os.access("/usr/bin/rpmbuild", os.X_OK), reason="needs rpm and rpmbuild")

REPO_FILE = "etc/yum.repos.d/copa-test.repo"


@dataclass(frozen=True)
class Signed:
    root: Path  # the image's root: the e2e image whose repository says repo_gpgcheck=1
    layout: Path
    repo: Path
    server: RepoServer  # the e2e repository with repomd.xml signed by the key in the image's /etc/pki/rpm-gpg
    libfoo: Path  # the new libfoo package the repository serves


@pytest.fixture(scope="module")
def signed(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    tmp = tmp_path_factory.mktemp("rpm-read-ahead")
    repo = tmp / "repo"
    shutil.copytree(world.repo, repo)
    world.key.sign_detached(repo / "repodata/repomd.xml")
    root = tmp / "root"
    shutil.copytree(world.root, root, symlinks=True)
    with RepoServer(repo) as server:
        text = (root / REPO_FILE).read_text().replace(world.server_url, server.url) + "repo_gpgcheck=1\n"
        (root / REPO_FILE).write_text(text)
        images.builder.make_oci_layout(root, tmp / "layout", REF, cmd=None)
        libfoo = next(p for p in world.new_rpms if p.name.startswith("libfoo-1.1-"))
        yield Signed(root, tmp / "layout", repo, server, libfoo)


def _captured(root: Path) -> dict[str, bytes]:
    """The image's /etc as the layer scan hands it to a prefetcher."""
    return {str(p.relative_to(root)): p.read_bytes() for p in (root / "etc").rglob("*") if p.is_file()}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _prefetch(captured: dict[str, bytes], tmp: Path, names: tuple[str, ...]) -> tuple[prefetch.MetadataPrefetch,
                                                                                      ReadAhead]:
    part = prefetch.MetadataPrefetch(RepositoryOptions(), "amd64", "", make_fetcher(tmp / "cache", 30.0, None),
                                     PrefetchHints(names, tmp / "work", (("libfoo", "1.1-1.el9"),)))
    part.start(captured)
    part.join()
    ahead = part.ahead()
    assert isinstance(ahead, ReadAhead)
    return part, ahead


def _started(ahead: ReadAhead, sha256: str) -> bool:
    """Whether the read of that file has started (take() cancels one that has not: the build reads it itself)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        future = ahead._reads.get(sha256)  # (private: the test waits for the background read to begin)
        if future is not None and (future.running() or future.done()):
            return True
        time.sleep(0.01)
    return False


def test_a_verified_signed_repository_is_read_ahead(signed: Signed, tmp_path: Path) -> None:
    part, ahead = _prefetch(_captured(signed.root), tmp_path, ("libfoo",))
    try:
        assert _started(ahead, _sha256(signed.libfoo))
        contents = ahead.take(_sha256(signed.libfoo))
        assert contents is not None
        # The oracle for what was read: the package's own header, as the rpm that built it wrote it.
        assert contents.headers.nevra == "libfoo-1.1-1.el9.x86_64"
        # The plan gets the bodies the server holds, signature included.
        repodata = signed.server.url + "/repodata/"
        for name in ("repomd.xml", "repomd.xml.asc"):
            assert ahead.metadata[repodata + name] == (signed.repo / "repodata" / name).read_bytes()
        assert list((tmp_path / "cache" / "derived").glob("rpm-primary-*.rows"))
    finally:
        part.close()


def test_a_repomd_signed_by_an_untrusted_key_is_not_read(signed: Signed, tmp_path: Path) -> None:
    other = make_gpg_key(tmp_path / "gpg")
    captured = _captured(signed.root)
    captured["etc/pki/rpm-gpg/RPM-GPG-KEY-copa-test"] = other.public.read_bytes()
    requests = len(signed.server.requests)
    part, ahead = _prefetch(captured, tmp_path, ("libfoo",))
    part.close()  # (the prefetch is over: whatever it was to read is submitted)
    assert ahead._reads == {}  # (private: nothing was submitted to read)
    assert not list((tmp_path / "cache" / "derived").glob("rpm-primary-*.rows"))  # primary not even decompressed
    assert not [r for r in signed.server.requests[requests:] if r.endswith(".rpm")]


def _patch(layout: Path, tmp: Path, capsys: pytest.CaptureFixture[str], fixed: str = "1.1-1.el9",
           extra: tuple[str, ...] = (), tools: bool = False) -> tuple[int, str]:
    tmp.mkdir(parents=True)
    reported = {"libfoo": ("1.0-1.el9", fixed), **({"foo-tools": ("1.0-1.el9", "1.1-1.el9")} if tools else {})}
    report = write_report(tmp / "trivy.json", reported, os_version="9.4", family="redhat")
    os.environ["COPA_CACHE_DIR"] = str(tmp / "cache")
    os.environ["SOURCE_DATE_EPOCH"] = "1704067200"
    try:
        code = main(["patch", "-i", f"oci:{layout}:{REF}", "-r", str(report), "--oci-dir", str(tmp / "out"),
                     "-t", "patched", "--json", "--progress", "quiet", *extra])
    finally:
        del os.environ["COPA_CACHE_DIR"], os.environ["SOURCE_DATE_EPOCH"]
    err = capsys.readouterr().err
    if code != 0:
        return code, err
    index = json.loads((tmp / "out/index.json").read_text())
    manifest = json.loads((tmp / "out/blobs/sha256" / index["manifests"][0]["digest"].split(":")[1]).read_text())
    return code, str(manifest["layers"][-1]["digest"])


def _spy_take(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    taken: list[str] = []
    real = ReadAhead.take

    def take(self: ReadAhead, sha256: str) -> Any:
        # A submitted read is let start first: take() cancels one that has not (the build then reads the file
        # itself), which made what was taken depend on timing.
        if sha256 in self._reads:
            _started(self, sha256)
        found = real(self, sha256)
        if found is not None:
            taken.append(found.headers.nevra)
        return found

    monkeypatch.setattr(ReadAhead, "take", take)
    return taken


def test_layer_is_the_same_with_and_without_reading_ahead(signed: Signed, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    taken = _spy_take(monkeypatch)
    requests = len(signed.server.requests)
    code, ahead = _patch(signed.layout, tmp_path / "ahead", capsys)
    assert code == 0, ahead
    assert taken == ["libfoo-1.1-1.el9.x86_64"]
    asked = signed.server.requests[requests:]
    # The plan verified the repomd.xml and signature the prefetch downloaded: each asked for once in the patch.
    assert [r for r in asked if "repomd.xml" in r] == ["/repodata/repomd.xml", "/repodata/repomd.xml.asc"]

    def nothing(*_: Any) -> None:
        return None

    # Without reading ahead, and without the prefetch's parse of primary (the plan loads it from the cache).
    monkeypatch.setattr(ReadAhead, "submit", nothing)
    real_parsed = RepoIndex.parsed_primary
    monkeypatch.setattr(RepoIndex, "parsed_primary",
                        lambda self: dataclasses.replace(real_parsed(self), key="not-this-primary"))
    taken.clear()
    code, plain = _patch(signed.layout, tmp_path / "plain", capsys)
    assert code == 0, plain
    assert taken == [] and plain == ahead


def test_a_fix_no_repository_offers_reads_nothing_ahead(signed: Signed, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    requests = len(signed.server.requests)
    code, err = _patch(signed.layout, tmp_path / "missing", capsys, fixed="9.9-1.el9")
    assert code == 7 and "libfoo" in err, err
    time.sleep(0.2)  # (nothing may still be on its way either)
    assert not [r for r in signed.server.requests[requests:] if r.endswith(".rpm")]


def test_the_build_checks_what_was_read_ahead(world: World, signed: Signed, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: a prefetch that accepts any package (its header check replaced) reads an unsigned one
    ahead; the build's own check still refuses it, as it refuses it without reading ahead (exit 5)."""
    unsigned = tmp_path / "repo"
    for spec in NEW:
        build_rpm(spec, unsigned)
    createrepo(unsigned)
    world.key.sign_detached(unsigned / "repodata/repomd.xml")
    monkeypatch.setattr(prefetch, "checker", lambda _keys: None)
    taken = _spy_take(monkeypatch)
    with RepoServer(unsigned) as server:
        code, err = _patch(signed.layout, tmp_path / "patch", capsys, tools=True,
                           extra=("--mirror", f"{signed.server.url}={server.url}"))
    assert sorted(taken) == ["foo-tools-1.1-1.el9.noarch", "libfoo-1.1-1.el9.x86_64"]
    assert code == 5, err
    errors = [line for line in err.splitlines() if line.startswith("copa: error: ")]
    # (one of the two read ahead, not newdep, which was not: the first failure in plan order is reported)
    assert "Traceback" not in err and len(errors) == 1, err
    assert any(f"{nevra}.rpm is not signed" in errors[0] for nevra in taken), err
    assert not (tmp_path / "patch" / "out" / "index.json").exists()


def test_the_plan_starts_from_the_prefetchs_parse_of_the_same_primary_only(signed: Signed, tmp_path: Path) -> None:
    part, ahead = _prefetch(_captured(signed.root), tmp_path, ("libfoo",))
    part.close()
    assert len(ahead.primaries) == 1
    (key, parsed), = ahead.primaries.items()
    marked = dataclasses.replace(parsed, names=parsed.names | {"only-in-the-prefetchs-parse"})
    fetcher = make_fetcher(tmp_path / "cache", 30.0, None)
    loaded = fetch_repomd(RpmRepository("copa-test", "copa test", (signed.server.url,)), fetcher,
                          lambda _r: Keyring((), ""), verify=False)
    primary = fetch_entry(loaded, loaded.repomd.entries["primary"], fetcher)
    same = RepoIndex(loaded, primary, None, fetcher.cache, parsed={key: marked}).load()
    assert "only-in-the-prefetchs-parse" in same.names()  # taken: the same primary
    other = RepoIndex(loaded, primary, None, fetcher.cache, parsed={"another": marked}).load()
    assert other.names() == parsed.names == {"libfoo", "foo-tools", "newdep"}  # the repository's packages


def test_the_providers_index_reads_back_from_the_cache_as_parsed(signed: Signed, tmp_path: Path) -> None:
    """The cached providers index (NUL-joined names) answers every capability and file as the fresh parse does
    (whose answers tests/test_rpm_repomd.py checks against dnf repoquery)."""
    fetcher = make_fetcher(tmp_path / "cache", 30.0, None)
    loaded = fetch_repomd(RpmRepository("copa-test", "copa test", (signed.server.url,)), fetcher,
                          lambda _r: Keyring((), ""), verify=False)
    primary = fetch_entry(loaded, loaded.repomd.entries["primary"], fetcher)
    fresh = RepoIndex(loaded, primary, None, None).load()  # no cache: parsed here
    RepoIndex(loaded, primary, None, fetcher.cache).warm()
    cached = RepoIndex(loaded, primary, None, fetcher.cache).load()
    capabilities = {r.name for p in fresh for r in p.provides} | {f for p in fresh for f in p.files}
    assert len(capabilities) > 5 and cached.names() == fresh.names() == {"libfoo", "foo-tools", "newdep"}
    for cap in sorted(capabilities):
        assert [p.nevra for p in cached.providers(cap)] == [p.nevra for p in fresh.providers(cap)], cap
        assert fresh.providers(cap), cap
