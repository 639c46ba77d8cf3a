"""Bad input through the real CLI: each case exits with its documented code, says so in one line on stderr
(progress lines aside), never shows a traceback, and writes nothing."""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import debimage
from tests.support.aptrepo import AptRepo, RepoServer, copy_repo, make_key, write_indexes, write_release
from tests.support.registry import RunningRegistry
from tests.support.trivy import write_report

ROOT = Path(__file__).resolve().parents[1]
APP_FIX = {"app": ("1.0", "2.0")}


def copa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "copa", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "COPA_DEBUG": ""})


def fails(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """Assert exit `code` and one error line (the last; the others are progress) containing `words`."""
    assert proc.returncode == code, f"exit {proc.returncode}, wanted {code}: {proc.stderr}"
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("copa: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    for word in words:
        assert word.lower() in errors[0].lower(), errors[0]
    assert proc.stdout == ""
    return errors[0]


@pytest.fixture(scope="module")
def base() -> debimage.BaseImage:
    return debimage.base_image()


@pytest.fixture(scope="module")
def repo() -> AptRepo:
    return debimage.hermetic_repo()


@pytest.fixture
def out(tmp_path: Path) -> Iterator[Path]:
    """An output layout path; every test here checks that it was never created."""
    path = tmp_path / "out-layout"
    yield path
    assert not path.exists(), "a failed run must write nothing"


@pytest.fixture(scope="module")
def app_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(tmp_path_factory.mktemp("r") / "app.json", APP_FIX)


def patch(base: debimage.BaseImage, report: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return copa("patch", "-i", base.image_ref, "-r", str(report), "--oci-dir", str(out), *extra)


# --------------------------------------------------------------------------------------------- reports (3)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b'{"SchemaVersion": 2, "Results": [', ("not valid JSON", "line 1")),
        (b"", ("empty",)),
        (b"  \n", ("empty",)),
        (b"[1, 2]", ("JSON object",)),
        (b'{"hello": "world"}', ("unknown report format",)),
        (b"\xff\xfe\x00junk", ("UTF-8",)),
    ],
    ids=["truncated-json", "empty", "blank", "array", "unknown-format", "not-utf8"],
)
def test_unreadable_report(base: debimage.BaseImage, out: Path, tmp_path: Path, content: bytes,
                           words: tuple[str, ...]) -> None:
    report = tmp_path / "report.json"
    report.write_bytes(content)
    fails(patch(base, report, out), 3, str(report), *words)


def test_missing_report_file(base: debimage.BaseImage, out: Path, tmp_path: Path) -> None:
    fails(patch(base, tmp_path / "nope.json", out), 3, "nope.json", "does not exist")


def test_report_for_another_os_family(base: debimage.BaseImage, out: Path, tmp_path: Path) -> None:
    report = write_report(tmp_path / "alpine.json", {"musl": ("1.2.4-r1", "1.2.4-r2")}, os_version="3.19.1",
                          family="alpine")
    fails(patch(base, report, out), 3, "alpine", "Debian")


# --------------------------------------------------------------------------------------------- integrity (5)


def test_inrelease_signed_by_unknown_key(base: debimage.BaseImage, repo: AptRepo, app_report: Path, out: Path,
                                         tmp_path: Path) -> None:
    stranger = dataclasses.replace(copy_repo(repo, tmp_path / "repo"), key=make_key(tmp_path / "stranger"))
    write_release(stranger)  # re-signed by a key copa is not told to trust
    with RepoServer(stranger.root) as server:
        proc = patch(base, app_report, out, *debimage.copa_args(server.url, repo))
        # The index may be downloaded before the Release is verified (the cache warm-up overlapping the image
        # scan, see copa/pkg/dpkg/prefetch.py), but no package is fetched and nothing from it is used.
        assert not [p for p in server.requests if p.endswith(".deb")]
    fails(proc, 5)


def test_deb_checksum_does_not_match_index(base: debimage.BaseImage, repo: AptRepo, app_report: Path, out: Path,
                                           tmp_path: Path) -> None:
    tampered = copy_repo(repo, tmp_path / "repo")
    deb = tampered.deb("app", "2.0")
    data = bytearray(deb.read_bytes())
    data[-10] ^= 0xFF  # same size, different bytes: only the checksum can tell
    deb.write_bytes(bytes(data))
    with RepoServer(tampered.root) as server:
        # A cache of its own: a good copy of the same .deb fetched by another test would (rightly) be used.
        proc = patch(base, app_report, out, "--cache-dir", str(tmp_path / "cache"),
                     *debimage.copa_args(server.url, repo))
    fails(proc, 5, "app")


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, data in members:
        out.write(f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode())
        out.write(data)
        if len(data) % 2:
            out.write(b"\n")
    return out.getvalue()


def _targz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def evil_deb(path: Path) -> Path:
    """app 3.0 whose data.tar writes ../../etc/evil: built by hand, as dpkg-deb refuses to build it."""
    control = (b"Package: app\nVersion: 3.0\nArchitecture: amd64\nMaintainer: copa tests <t@example.invalid>\n"
               b"Description: escapes the root\n built by hand\n")
    data = {"./usr/share/app/fine.txt": b"fine\n", "./usr/share/../../../etc/evil": b"escaped\n"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_ar([("debian-binary", b"2.0\n"), ("control.tar.gz", _targz({"./control": control})),
                          ("data.tar.gz", _targz(data))]))
    return path


def test_deb_path_escaping_the_root(base: debimage.BaseImage, repo: AptRepo, out: Path, tmp_path: Path) -> None:
    evil = copy_repo(repo, tmp_path / "repo")
    deb = evil_deb(evil.root / "pool/main/app/app_3.0_amd64.deb")
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "../../../etc/evil" in listing  # the archive really holds the escaping path
    write_indexes(evil.root, evil.suite, evil.components, evil.architectures)
    write_release(evil)
    report = write_report(tmp_path / "r.json", {"app": ("1.0", "3.0")})
    with RepoServer(evil.root) as server:
        proc = patch(base, report, out, *debimage.copa_args(server.url, repo))
        assert "/pool/main/app/app_3.0_amd64.deb" in server.requests  # it got as far as reading the package
    fails(proc, 5, "app_3.0_amd64.deb", "..")
    assert not (tmp_path / "etc").exists()


# --------------------------------------------------------------------------------------------- registry (4)


def test_missing_image_in_registry(anon_registry: RunningRegistry, app_report: Path, out: Path) -> None:
    proc = copa("patch", "-i", f"{anon_registry.host}/does-not-exist:1.0", "-r", str(app_report), "--push")
    fails(proc, 4, "does-not-exist")
    # The registry itself says the repository (and so any tag in it) does not exist.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://{anon_registry.host}/v2/does-not-exist/tags/list", timeout=10)
    assert e.value.code == 404


# --------------------------------------------------------------------------------------------- usage (2)


def test_unknown_flag(base: debimage.BaseImage, app_report: Path, out: Path) -> None:
    fails(patch(base, app_report, out, "--frobnicate"), 2, "--frobnicate")


def test_no_output_flag(base: debimage.BaseImage, app_report: Path, out: Path) -> None:
    fails(copa("patch", "-i", base.image_ref, "-r", str(app_report)), 2, "--push", "--oci-dir", "--output-tar")


def test_malformed_mirror_flag(base: debimage.BaseImage, app_report: Path, out: Path) -> None:
    fails(patch(base, app_report, out, "--mirror", "no-equals-sign"), 2, "--mirror")
