"""Bad input on an RPM image: each a one-line error with its exit code, and nothing written.

* a package whose bytes do not match the sha256 primary.xml names (the mirror serves another file): exit 5;
* a package whose header and payload name `/../../etc/evil` (crafted from a real rpmbuild package: same-length
  edits of DIRNAMES and of the uncompressed cpio name, the payload digests and SHA1HEADER/SHA256HEADER
  recomputed, so every digest passes; the repository is unsigned, --allow-unsigned-repositories): exit 5;
* a Debian report for the RHEL image: exit 3;
* a damaged rpmdb.sqlite, or a damaged BerkeleyDB Packages: exit 6.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from copa.pkg.rpm.rpmfile import read_headers
from tests.support import images
from tests.support.aptrepo import RepoServer
from tests.support.rpmrepo import createrepo
from tests.support.rpmtools import RpmFile, RpmSpec, build_rpm, init_root
from tests.support.trivy import write_report
from tests.test_rpmdb_bdb import to_bdb

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("rpmbuild") is None, reason="needs rpm tools")]

ROOT = Path(__file__).resolve().parents[1]
REF = "ubi"
OS_RELEASE = 'NAME="Red Hat Enterprise Linux"\nID="rhel"\nID_LIKE="fedora"\nVERSION_ID="9.4"\n' \
             'PRETTY_NAME="Red Hat Enterprise Linux 9.4 (Plow)"\n'
OLD = RpmSpec("libfoo", "1.0", "1.el9", files=(RpmFile("/usr/share/foo/data", b"1.0\n"),))
# /aa/bb/etc/evil becomes /../../etc/evil: the same length, so the header and cpio edits keep every offset.
NEW = RpmSpec("libfoo", "1.1", "1.el9", payload="none",
              files=(RpmFile("/usr/share/foo/data", b"1.1\n"), RpmFile("/aa/bb/etc/evil", b"evil\n")))
REPORT = {"libfoo": ("1.0-1.el9", "1.1-1.el9")}


@dataclass(frozen=True)
class World:
    layout: Path
    broken_db_layout: Path
    broken_bdb_layout: Path
    good_repo: Path
    tmp: Path


def _image(root: Path, repo_url: str, layout: Path) -> None:
    (root / "etc/yum.repos.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/os-release").write_text(OS_RELEASE)
    (root / "etc/yum.repos.d/t.repo").write_text(f"[t]\nname=t\nbaseurl={repo_url}/\nenabled=1\ngpgcheck=0\n")
    images.builder.make_oci_layout(root, layout, REF, cmd=None)


REPO_URL = "http://repo.copa.invalid/ubi9"  # the image's baseurl; each test points it at its repository (--mirror)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("rpm-bad")
    old = build_rpm(OLD, tmp / "old")
    good = tmp / "good"
    build_rpm(NEW, good)
    createrepo(good)
    root = tmp / "root"
    init_root(root, [old])
    _image(root, REPO_URL, tmp / "layout")
    broken = tmp / "broken-root"
    shutil.copytree(root, broken, symlinks=True)
    db = broken / "var/lib/rpm/rpmdb.sqlite"
    data = bytearray(db.read_bytes())
    data[100:4096] = b"\xa5" * (4096 - 100)  # past sqlite's file header: the schema page is garbage
    db.write_bytes(bytes(data))
    images.builder.make_oci_layout(broken, tmp / "broken-layout", REF, cmd=None)
    bdb = tmp / "broken-bdb-root"  # RHEL 8's BerkeleyDB, its Packages hash damaged past the meta page
    shutil.copytree(root, bdb, symlinks=True)
    to_bdb(bdb)
    packages = bdb / "var/lib/rpm/Packages"
    pages = packages.read_bytes()
    packages.write_bytes(pages[:4096] + b"\xff" * (len(pages) - 4096))
    images.builder.make_oci_layout(bdb, tmp / "broken-bdb-layout", REF, cmd=None)
    yield World(tmp / "layout", tmp / "broken-layout", tmp / "broken-bdb-layout", good, tmp)


def copa(world: World, tmp: Path, repo: Path | None, report: Path, *extra: str, layout: Path | None = None
         ) -> subprocess.CompletedProcess[str]:
    def run(url: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "copa", "patch", "-i", f"oci:{layout or world.layout}:{REF}", "-r", str(report),
             "--oci-dir", str(tmp / "out"), "--mirror", f"{REPO_URL}={url}", *extra],
            cwd=ROOT, capture_output=True, text=True,
            env={**os.environ, "COPA_CACHE_DIR": str(tmp / "cache"), "COPA_DEBUG": ""})

    if repo is None:
        return run("http://127.0.0.1:9")
    with RepoServer(repo) as server:
        return run(server.url)


def one_error(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("copa: error: ")]
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr
    for word in words:
        assert word in errors[0], errors[0]


def nothing_written(tmp: Path) -> None:
    """No layout (a tag is written only after every blob is in place; these fail before any blob)."""
    out = tmp / "out"
    assert not (out / "index.json").exists()
    assert not (out / "blobs").exists() or not [p for p in (out / "blobs").rglob("*") if p.is_file()]


def test_the_good_repository_patches(world: World, tmp_path: Path) -> None:
    """The control: the same image and report with the untouched repository patch fine (the evil path is only
    an ordinary /aa/bb/etc/evil there)."""
    report = write_report(tmp_path / "trivy.json", REPORT, os_version="9.4", family="redhat")
    proc = copa(world, tmp_path, world.good_repo, report)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out/index.json").is_file()


def test_sha256_mismatch_with_primary(world: World, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(world.good_repo, repo)
    rpm = repo / NEW.filename
    data = bytearray(rpm.read_bytes())
    data[-10] ^= 0xFF  # same size, another sha256
    rpm.write_bytes(bytes(data))
    report = write_report(tmp_path / "trivy.json", REPORT, os_version="9.4", family="redhat")
    one_error(copa(world, tmp_path, repo, report), 5, "sha256")
    nothing_written(tmp_path)


def _craft_escaping(src: Path, dst: Path) -> None:
    """src's /aa/bb/etc/evil renamed /../../etc/evil in the header (DIRNAMES) and the cpio payload, with the
    payload digests and the header digests recomputed."""
    blob = bytearray(src.read_bytes())
    with src.open("rb") as f:
        headers = read_headers(f, src.name)
    start = blob.index(headers.header_bytes)
    old_header = headers.header_bytes
    payload_at = start + len(old_header)
    old_payload = bytes(blob[payload_at:])
    assert old_payload.count(b"./aa/bb/etc/evil\0") == 1
    new_payload = old_payload.replace(b"./aa/bb/etc/evil\0", b"./../../etc/evil\0")
    new_header = old_header.replace(b"/aa/bb/etc/\0", b"/../../etc/\0", 1)
    assert new_header != old_header
    # Uncompressed payload: PAYLOADDIGEST (compressed bytes) and PAYLOADDIGESTALT (cpio) are the same sha256.
    before, after = (hashlib.sha256(p).hexdigest().encode() for p in (old_payload, new_payload))
    assert new_header.count(before) >= 1
    new_header = new_header.replace(before, after)
    blob[start:payload_at] = new_header
    blob[payload_at:] = new_payload
    for algo in ("sha1", "sha256"):
        old_digest = hashlib.new(algo, old_header).hexdigest().encode()
        at = blob.index(old_digest)
        blob[at:at + len(old_digest)] = hashlib.new(algo, new_header).hexdigest().encode()
    dst.write_bytes(bytes(blob))


def test_payload_path_escaping_the_root(world: World, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _craft_escaping(world.good_repo / NEW.filename, repo / NEW.filename)
    # The real rpm reads the crafted package as valid (digests pass) and lists the climbing path.
    listing = subprocess.run(["rpm", "-qlp", "--nosignature", str(repo / NEW.filename)], capture_output=True,
                             text=True)
    assert listing.returncode == 0 and "/../../etc/evil" in listing.stdout.split(), listing.stderr
    createrepo(repo)
    report = write_report(tmp_path / "trivy.json", REPORT, os_version="9.4", family="redhat")
    one_error(copa(world, tmp_path, repo, report, "--allow-unsigned-repositories"), 5, "..")
    nothing_written(tmp_path)


def test_debian_report_on_the_rhel_image(world: World, tmp_path: Path) -> None:
    report = write_report(tmp_path / "trivy.json", {"libssl3": ("3.0.11-1~deb12u2", "3.0.13-1~deb12u1")})
    one_error(copa(world, tmp_path, None, report), 3)
    nothing_written(tmp_path)


def test_damaged_rpmdb(world: World, tmp_path: Path) -> None:
    report = write_report(tmp_path / "trivy.json", REPORT, os_version="9.4", family="redhat")
    one_error(copa(world, tmp_path, None, report, layout=world.broken_db_layout), 6, "rpmdb.sqlite")
    nothing_written(tmp_path)


def test_damaged_berkeley_packages(world: World, tmp_path: Path) -> None:
    report = write_report(tmp_path / "trivy.json", REPORT, os_version="9.4", family="redhat")
    one_error(copa(world, tmp_path, None, report, layout=world.broken_bdb_layout), 6, "Packages")
    nothing_written(tmp_path)
