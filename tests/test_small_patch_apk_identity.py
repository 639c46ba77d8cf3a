"""A package that a verified APKINDEX names is authenticated by its identity (the sha1 of its control segment
equals the index's C:), as apk-tools installs it: its own signature is not checked again (issue 13: an RSA-4096
check is ~0.6 ms of pure Python per package). Real apk is the oracle: it accepts a package whose signature does not
verify when the signed index vouches for it, and so must copa. When nothing vouches for it (an unsigned index,
--allow-unsigned-repositories), a package signed by a trusted key that does not verify is still refused."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest

from tests.support import alpine, apkrepo
from tests.support.apkrepo import ApkRepo, PackageUpdate
from tests.support.trivy import write_report

ROOT = Path(__file__).resolve().parents[1]
NAME = "zlib"


def copa(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1704067200"}
    return subprocess.run([sys.executable, "-m", "copa", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False)


def _members(data: bytes) -> list[bytes]:
    """The raw gzip members of an .apk or APKINDEX.tar.gz."""
    out, rest = [], data
    while rest:
        d = zlib.decompressobj(wbits=31)
        d.decompress(rest)
        end = len(rest) - len(d.unused_data)
        out.append(rest[:end])
        rest = rest[end:]
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> ApkRepo:
    """A signed repository with a newer zlib whose signature segment signs other bytes: its control and data
    segments, and so the index's C:, are intact."""
    source = alpine.copy_rootfs(alpine.alpine_rootfs(), tmp_path_factory.mktemp("src") / "root")
    built = apkrepo.build_repo(source, [PackageUpdate(NAME)], tmp_path_factory.mktemp("repo"))
    path = built.arch_dir / built.package(NAME).path.name
    signature, *rest = _members(path.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(signature))) as tar:
        sign_name = next(m.name for m in tar if m.name.startswith(".SIGN."))
    bad = apkrepo._gzip(apkrepo._member(sign_name, apkrepo.sign(built.key, b"not this package's control segment")))
    path.write_bytes(bad + b"".join(rest))
    # The index names the new size (the signature segment's gzip length moved) and is signed again.
    size = path.stat().st_size
    apkrepo.write_index(built.arch_dir, ["\n".join(f"S:{size}" if ln.startswith("S:") else ln
                                                   for ln in p.index_record.splitlines())
                                         if p.name == NAME else p.index_record for p in built.packages], built.key)
    return built


def _patch(repo: ApkRepo, url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    keys = tmp / "keys"
    key = repo.key.write_public(keys)
    old = repo.package(NAME)
    report = write_report(tmp / "trivy.json", {NAME: (old.old_version or "", old.version)}, os_version="3.23.6",
                          family="alpine")
    layout, ref = alpine.alpine_layout()
    return copa("patch", "-i", f"oci:{layout}:{ref}", "-r", str(report), "--oci-dir", str(tmp / "out"),
                "--repository", url, "--keyring", str(key), "--cache-dir", str(tmp / "cache"), *extra)


def test_a_package_the_signed_index_vouches_for_is_accepted_as_apk_accepts_it(repo: ApkRepo, tmp_path: Path) -> None:
    with apkrepo.serve(repo.directory) as url:
        keys = tmp_path / "apk-keys"
        repo.key.write_public(keys)
        root = alpine.copy_rootfs(alpine.alpine_rootfs(), tmp_path / "oracle")
        alpine.oracle_upgrade(root, url, keys)  # real apk: raises if it refuses the package
        assert apkrepo.read_installed(root)[NAME].version == repo.package(NAME).version
        proc = _patch(repo, url, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "index.json").is_file()


def test_without_a_verified_index_the_package_signature_is_checked(repo: ApkRepo, tmp_path: Path) -> None:
    unsigned = tmp_path / "unsigned"
    (unsigned / apkrepo.ARCH).mkdir(parents=True)
    for p in repo.arch_dir.iterdir():
        (unsigned / apkrepo.ARCH / p.name).write_bytes(p.read_bytes())
    index = unsigned / apkrepo.ARCH / "APKINDEX.tar.gz"
    index.write_bytes(b"".join(_members(index.read_bytes())[1:]))  # the signature segment dropped
    with apkrepo.serve(unsigned) as url:
        proc = _patch(repo, url, tmp_path, "--allow-unsigned-repositories")
    assert proc.returncode == 5, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("copa: error: ")]
    assert len(errors) == 1 and "does not verify" in errors[0] and NAME in errors[0], proc.stderr
    assert not (tmp_path / "out").exists()
