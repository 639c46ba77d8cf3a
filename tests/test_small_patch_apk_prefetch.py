"""apk's early download (copa/pkg/apk/prefetch.py): the indexes it fetches while the image is read are the ones the
plan would fetch (the plan's own `select_repositories` is the oracle), the plan takes them instead of downloading them
again, and a body it fetched is still verified by the plan."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from copa.pkg.apk.prefetch import index_urls
from copa.pkg.apk.repos import select_repositories
from copa.pkg.options import RepositoryOptions
from tests.support import alpine, apkrepo
from tests.support.apkrepo import ApkRepo, PackageUpdate
from tests.support.trivy import write_report

ROOT = Path(__file__).resolve().parents[1]

ETCS = {
    "main and community": {"etc/apk/repositories": b"https://dl.example/v3.23/main\n# a comment\n"
                                                   b"https://dl.example/v3.23/community\n"},
    "a directory too": {"etc/apk/repositories": b"http://a.example/main\n",
                        "etc/apk/repositories.d/extra.list": b"http://b.example/extra\n"},
    "tagged, with a login, a local path": {"etc/apk/repositories": b"@edge https://dl.example/edge/main\n"
                                                                  b"https://user:secret@private.example/apk\n"
                                                                  b"/media/cdrom/apks\nhttps://dl.example/main\n"},
    "an index named directly, v3 word": {"etc/apk/repositories": b"v2 https://dl.example/x86_64/APKINDEX.tar.gz\n"},
    "an arch file": {"etc/apk/repositories": b"https://dl.example/main\n", "etc/apk/arch": b"aarch64\n"},
}


def _ctx(etc: dict[str, bytes], repos: RepositoryOptions) -> SimpleNamespace:
    under = {p: c for p, c in etc.items() if p.startswith("etc/apk/repositories.d/")}
    root = SimpleNamespace(read=etc.get, under=lambda p: under if p == "etc/apk/repositories.d" else {})
    return SimpleNamespace(repos=repos, root=root, architecture="amd64", variant="")


@pytest.mark.parametrize("case", sorted(ETCS))
@pytest.mark.parametrize("user", [False, True])
def test_the_early_download_fetches_what_the_plan_reads(case: str, user: bool) -> None:
    etc = ETCS[case]
    repos = RepositoryOptions(repositories=("https://user.example/v3.23/main",) if user else (),
                              mirrors=(("https://dl.example/", "http://mirror.example/"),))
    arch = (etc.get("etc/apk/arch") or b"x86_64").decode().strip()
    planned = select_repositories(_ctx(etc, repos), arch, set())  # type: ignore[arg-type]
    expected = [r.index_url for r in planned
                if not r.tag and r.login is None and r.index_url.startswith(("http://", "https://"))]
    assert index_urls(etc, repos, "amd64", "") == expected
    assert all("secret" not in u for u in index_urls(etc, repos, "amd64", ""))


class _Counting(http.server.SimpleHTTPRequestHandler):
    seen: list[str]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.seen.append(self.path)
        super().do_GET()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> ApkRepo:
    source = alpine.copy_rootfs(alpine.alpine_rootfs(), tmp_path_factory.mktemp("src") / "root")
    return apkrepo.build_repo(source, [PackageUpdate("zlib")], tmp_path_factory.mktemp("repo"))


@pytest.fixture
def served(repo: ApkRepo) -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (_Counting,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             lambda *a: handler(*a, directory=str(repo.directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _patch(layout: Path, ref: str, report: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1704067200"}
    return subprocess.run([sys.executable, "-m", "copa", "patch", "-i", f"oci:{layout}:{ref}", "-r", str(report),
                           "--oci-dir", str(tmp / "out"), "--cache-dir", str(tmp / "cache")],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=False)


def _image(repo: ApkRepo, url: str, tmp: Path, key: apkrepo.RepoKey) -> tuple[Path, str, Path]:
    """The alpine image plus a layer listing only `url` and trusting `key`; a report naming zlib's new build."""
    from tests.support import images

    src, ref = alpine.alpine_layout()
    layout = images.copy_layout(src, tmp / "layout")
    apkrepo.add_key_layer(layout, ref, alpine.alpine_rootfs(), key, url)
    new = repo.package("zlib")
    report = write_report(tmp / "trivy.json", {"zlib": (new.old_version or "", new.version)}, os_version="3.23.6",
                          family="alpine")
    return layout, ref, report


def test_the_plan_takes_the_index_the_early_download_fetched(repo: ApkRepo, served: tuple[str, list[str]],
                                                             tmp_path: Path) -> None:
    url, seen = served
    layout, ref, report = _image(repo, url, tmp_path, repo.key)
    proc = _patch(layout, ref, report, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "zlib" in proc.stdout
    assert sorted(seen) == sorted([f"/{apkrepo.ARCH}/APKINDEX.tar.gz",
                                   f"/{apkrepo.ARCH}/{repo.package('zlib').path.name}"]), seen


def test_an_index_the_early_download_fetched_is_still_verified(repo: ApkRepo, served: tuple[str, list[str]],
                                                              tmp_path: Path) -> None:
    url, seen = served
    layout, ref, report = _image(repo, url, tmp_path, _other_key())
    proc = _patch(layout, ref, report, tmp_path)
    assert proc.returncode == 5, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("copa: error: ")]
    assert len(errors) == 1 and "not a trusted key" in errors[0], proc.stderr
    assert seen == [f"/{apkrepo.ARCH}/APKINDEX.tar.gz"]  # fetched once, by the early download, then refused
    assert not (tmp_path / "out").exists()


def _other_key() -> apkrepo.RepoKey:
    """A key the image trusts that did not sign the repository."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return apkrepo.RepoKey("copa-test-other.rsa.pub", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


# == the download ahead ===========================================================================================


def _in_process(layout: Path, ref: str, report: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    from copa.cli import main

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1704067200")
    return main(["patch", "-i", f"oci:{layout}:{ref}", "-r", str(report), "--oci-dir", str(tmp / "out"),
                 "--cache-dir", str(tmp / "cache"), "--progress", "quiet"])


def _patch_layer(out: Path) -> str:
    import json

    index = json.loads((out / "index.json").read_text())
    manifest = json.loads((out / "blobs/sha256" / index["manifests"][0]["digest"].split(":")[1]).read_text())
    return str(manifest["layers"][-1]["digest"])


def test_the_reported_packages_are_downloaded_ahead_once(repo: ApkRepo, served: tuple[str, list[str]],
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the image is read, the reported package's build the verified index offers is downloaded into the
    cache; the build finds it there (one download in all), and the layer is the one built without the download
    ahead."""
    import copa.pkg.apk.prefetch as prefetch

    url, seen = served
    layout, ref, report = _image(repo, url, tmp_path, repo.key)
    ahead: list[str] = []
    quietly = prefetch._quietly

    def recording(fetcher: object, package_url: str, record: object) -> None:
        ahead.append(package_url)
        quietly(fetcher, package_url, record)  # type: ignore[arg-type]

    monkeypatch.setattr(prefetch, "_quietly", recording)
    assert _in_process(layout, ref, report, tmp_path / "a", monkeypatch) == 0
    package = f"/{apkrepo.ARCH}/{repo.package('zlib').path.name}"
    assert [u.removeprefix(url) for u in ahead] == [package]
    assert sorted(seen) == sorted([f"/{apkrepo.ARCH}/APKINDEX.tar.gz", package]), seen

    # The same patch without the download ahead (a fresh cache): the same layer, byte for byte.
    monkeypatch.setattr(prefetch.IndexPrefetch, "_download_ahead", lambda *a: None)
    assert _in_process(layout, ref, report, tmp_path / "b", monkeypatch) == 0
    assert _patch_layer(tmp_path / "a" / "out") == _patch_layer(tmp_path / "b" / "out")


def test_nothing_is_downloaded_ahead_when_a_fix_is_missing(repo: ApkRepo, served: tuple[str, list[str]],
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A report naming a version the index does not offer fails the plan (exit 7): nothing was downloaded for it."""
    url, seen = served
    layout, ref, _ = _image(repo, url, tmp_path, repo.key)
    new = repo.package("zlib")
    report = write_report(tmp_path / "beyond.json", {"zlib": (new.old_version or "", new.version + "9")},
                          os_version="3.23.6", family="alpine")
    assert _in_process(layout, ref, report, tmp_path, monkeypatch) == 7
    assert seen == [f"/{apkrepo.ARCH}/APKINDEX.tar.gz"]


def test_the_plan_takes_the_early_parse_only_under_its_own_keys(repo: ApkRepo) -> None:
    """load_indexes takes the index the early download verified and parsed only when the plan's keys are the same;
    under other keys it verifies the body itself (here: refused, for those keys did not sign it)."""
    from copa.errors import CopaError
    from copa.pkg.apk.index import read_apkindex
    from copa.pkg.apk.prefetch import ApkAhead
    from copa.pkg.apk.repos import load_indexes, repository_for
    from copa.pkg.apk.signing import Keys

    body = (repo.arch_dir / "APKINDEX.tar.gz").read_bytes()
    base = "http://repo.example/main"
    rep = repository_for(base, apkrepo.ARCH)
    keys = Keys({repo.key.name: repo.key.public_pem})
    parsed = read_apkindex(body, keys, False, base, "test index")
    assert parsed.signed_by and parsed.records
    early = ApkAhead({rep.index_url: body}, {rep.index_url: parsed}, keys)
    ctx = SimpleNamespace(ahead=early, repos=RepositoryOptions())
    [(_, taken)] = load_indexes(ctx, [rep], keys, None)  # type: ignore[arg-type]
    assert taken is parsed
    other = Keys({repo.key.name: _other_key().public_pem})
    with pytest.raises(CopaError, match="signature"):
        load_indexes(ctx, [rep], other, None)  # type: ignore[arg-type]
