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
