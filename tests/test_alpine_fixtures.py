"""The Alpine fixtures and the hermetic apk repository are what they claim to be, checked with the image's own
apk-tools 3 (run on this host through the image's musl loader), umoci and tar rather than our own code."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
import time
import zlib
from pathlib import Path

import pytest

from tests.support import alpine, apkrepo
from tests.support.alpine import ApkOracleError, apk_version_compare, apk_version_valid, run_apk
from tests.support.apkrepo import PackageUpdate

NEW_PKG = "copa-test-newdep"
NEW_FILE = "usr/share/copa-test-newdep/README"
DROPPED = "usr/bin/curl"
SCRIPT = b"#!/bin/sh\necho copa-test post-upgrade\n"


def _db_names(root: Path) -> list[str]:
    return [line[2:] for line in (root / "lib/apk/db/installed").read_text().splitlines() if line.startswith("P:")]


def _z_lines(root: Path, package: str) -> dict[str, str]:
    """{path: Z: checksum} of one package's files in the installed db."""
    record = next(
        r for r in (root / "lib/apk/db/installed").read_text().split("\n\n") if f"\nP:{package}\n" in f"\n{r}"
    )
    out: dict[str, str] = {}
    directory, last = "", ""
    for line in record.splitlines():
        if line.startswith("F:"):
            directory = line[2:]
        elif line.startswith("R:"):
            last = f"{directory}/{line[2:]}"
        elif line.startswith("Z:") and last:
            out[last] = line[2:]
    return out


def _gzip_members(raw: bytes) -> list[bytes]:
    """The compressed bytes of each gzip member of a .apk, in order."""
    members: list[bytes] = []
    while raw:
        d = zlib.decompressobj(31)
        d.decompress(raw)
        members.append(raw[: len(raw) - len(d.unused_data)])
        raw = d.unused_data
    return members


def _q1(data: bytes) -> str:
    return "Q1" + base64.b64encode(hashlib.sha1(data).digest()).decode()


# ------------------------------------------------------------------------------------------ rootfs & layouts


def test_rootfs_is_a_consistent_alpine_system() -> None:
    start = time.monotonic()
    root = alpine.alpine_rootfs()
    print(
        f"alpine rootfs: {root} (cold build {alpine.build_seconds(root)}s, this call {time.monotonic() - start:.1f}s)"
    )
    names = _db_names(root)
    listed = run_apk(root, "info", "-v").stdout.split()
    assert len(listed) == len(names) >= 20
    assert {"musl", "busybox", "apk-tools", "curl", "libcrypto3", "alpine-baselayout"} <= set(names)
    assert "linux-virt" not in names and "openrc" not in names
    assert run_apk(root, "--version").stdout.startswith("apk-tools 3.")
    assert "ID=alpine" in (root / "etc/os-release").read_text()
    assert run_apk(root, "audit", "--system").stdout == ""  # every packaged file matches its db checksum
    for gone in ("boot", "lib/modules", "home/quicksand", ".dockerenv", "lost+found"):
        assert not os.path.lexists(root / gone), gone
    assert list((root / "dev").iterdir()) == []
    assert stat.S_IMODE((root / "tmp").lstat().st_mode) == 0o1777  # sticky bit survived rdump
    assert "quicksand" not in (root / "etc/passwd").read_text()


def test_distroless_has_no_apk_but_keeps_the_database(tmp_path: Path) -> None:
    shared = alpine.distroless_rootfs()
    # apk creates var/cache/apk (owned by the removed apk-tools) when it opens a root: never touch the cache entry.
    root = alpine.copy_rootfs(shared, tmp_path / "root")
    assert not os.path.lexists(root / "sbin/apk")
    assert not list((root / "usr/lib").glob("libapk*")) and not list((root / "lib").glob("libapk*"))
    names = _db_names(root)
    assert "apk-tools" not in names and "libapk" not in names and "musl" in names
    assert (root / "etc/apk/repositories").is_file() and (root / "etc/os-release").is_file()
    # The full image's apk reads the distroless database.
    assert len(run_apk(root, "info", "-v").stdout.split()) == len(names)
    assert run_apk(root, "audit", "--system").stdout == ""


def _layer_members(layout_dir: Path, ref: str) -> list[tarfile.TarInfo]:
    index = json.loads((layout_dir / "index.json").read_text())
    desc = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == ref)
    blobs = layout_dir / "blobs" / "sha256"
    manifest = json.loads((blobs / desc["digest"].split(":")[1]).read_text())
    (layer,) = manifest["layers"]
    with tarfile.open(blobs / layer["digest"].split(":")[1], "r:gz") as tar:
        return tar.getmembers()


@pytest.mark.parametrize("which", ["alpine", "distroless"])
def test_layout_layer_keeps_owners_modes_and_links(which: str) -> None:
    layout_dir, ref = alpine.alpine_layout() if which == "alpine" else alpine.distroless_layout()
    root = alpine.alpine_rootfs() if which == "alpine" else alpine.distroless_rootfs()
    members = {m.name: m for m in _layer_members(layout_dir, ref)}
    on_disk = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            member = members[rel]
            on_disk += 1
            assert (member.uid, member.gid, member.mode) == (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)), rel
            if path.is_symlink():
                assert member.issym() and member.linkname == os.readlink(path), rel
            elif path.is_file() and not member.islnk():
                assert member.isreg() and member.size == st.st_size, rel
    assert on_disk == len(members)


# ------------------------------------------------------------------------------------------ hermetic repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> apkrepo.ApkRepo:
    updates = [
        PackageUpdate("curl", drop_files=(DROPPED,), add_depends=(NEW_PKG,), scripts={"post-upgrade": SCRIPT}),
        PackageUpdate(NEW_PKG, new=True, files={NEW_FILE: b"brand new\n"}),
        PackageUpdate("libcrypto3"),
        PackageUpdate("libssl3", bump=2),
        PackageUpdate("zlib"),
    ]
    start = time.monotonic()
    built = apkrepo.build_repo(alpine.alpine_rootfs(), updates, tmp_path_factory.mktemp("apkrepo"), sha1_signature=True)
    print(f"built {len(built.packages)} packages + index in {time.monotonic() - start:.2f}s")
    return built


@pytest.fixture(scope="module")
def keys(repo: apkrepo.ApkRepo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    keys_dir = tmp_path_factory.mktemp("keys")
    repo.key.write_public(keys_dir)
    return keys_dir


def test_package_layout_matches_abuild(repo: apkrepo.ApkRepo) -> None:
    pkg = repo.package("curl")
    # Three gzip members: signature, control, data; the control member is what C: hashes.
    members = _gzip_members(pkg.path.read_bytes())
    assert len(members) == 3
    assert pkg.checksum == _q1(members[1])
    sig_tar = gzip.decompress(members[0])
    assert sig_tar[:100].rstrip(b"\0").decode() == f".SIGN.RSA256.{repo.key.name}"
    control = gzip.decompress(members[1])
    pkginfo = control[512 : 512 + int(control[124:135], 8)].decode()
    assert f"pkgver = {pkg.version}" in pkginfo and f"depend = {NEW_PKG}" in pkginfo
    assert f"datahash = {hashlib.sha256(members[2]).hexdigest()}" in pkginfo
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(members[2]))) as data:
        regular = [m for m in data.getmembers() if m.isreg()]
        assert regular and all("APK-TOOLS.checksum.SHA1" in m.pax_headers for m in regular)
        assert DROPPED not in data.getnames()
    assert f"C:{pkg.checksum}" in pkg.index_record


def test_real_apk_installs_the_hermetic_packages(repo: apkrepo.ApkRepo, keys: Path, tmp_path: Path) -> None:
    base = alpine.alpine_rootfs()
    before = alpine.installed_versions(base)
    root = alpine.copy_rootfs(base, tmp_path / "root")
    with apkrepo.serve(repo.directory) as url:
        start = time.monotonic()
        out = alpine.oracle_upgrade(root, url, keys)
        print(f"real apk upgrade: {time.monotonic() - start:.2f}s\n{out}")
    after = alpine.installed_versions(root)
    expected = {p.name: p.version for p in repo.packages}
    assert {n: after[n] for n in expected} == expected
    unchanged = {n: v for n, v in before.items() if n not in expected}
    assert {n: v for n, v in after.items() if n not in expected} == unchanged  # nothing else moved
    assert apk_version_compare(after["libssl3"], before["libssl3"]) == 1
    assert not os.path.lexists(root / DROPPED) and (root / NEW_FILE).read_bytes() == b"brand new\n"
    # apk recorded our per-file SHA-1s; audit re-hashes every file against them.
    assert _z_lines(root, NEW_PKG)[NEW_FILE] == _q1(b"brand new\n")
    assert run_apk(root, "audit", "--system").stdout == ""
    assert alpine.audit(root) == alpine.audit(base)
    # apk-tools 3 keeps scripts in scripts.tar.gz as <name>-<version>.<identity>.<script>.
    with tarfile.open(root / "lib/apk/db/scripts.tar.gz") as scripts:
        names = [n for n in scripts.getnames() if n.startswith(f"curl-{repo.package('curl').version}.")]
        assert [n.rsplit(".", 1)[1] for n in names] == ["post-upgrade"]
        extracted = scripts.extractfile(names[0])
        assert extracted is not None and extracted.read() == SCRIPT


def test_real_apk_rejects_an_untrusted_key(repo: apkrepo.ApkRepo, tmp_path: Path) -> None:
    other = tmp_path / "other-keys"
    apkrepo.RepoKey(repo.key.name, b"", _other_public_pem()).write_public(other)  # same name, different key
    root = alpine.copy_rootfs(alpine.alpine_rootfs(), tmp_path / "root")
    with apkrepo.serve(repo.directory) as url, pytest.raises(ApkOracleError, match=r"UNTRUSTED|untrusted|signature"):
        alpine.oracle_upgrade(root, url, other)
    assert alpine.installed_versions(root) == alpine.installed_versions(alpine.alpine_rootfs())


def _other_public_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_real_apk_rejects_a_package_whose_data_changed(tmp_path: Path) -> None:
    base = alpine.alpine_rootfs()
    built = apkrepo.build_repo(base, [PackageUpdate("zlib")], tmp_path / "repo")
    # Rebuild zlib's data with one byte changed but keep the signed control segment: datahash must catch it.
    good = built.package("zlib").path
    members = _gzip_members(good.read_bytes())
    data = bytearray(gzip.decompress(members[2]))
    data[1024] ^= 0xFF
    good.write_bytes(members[0] + members[1] + gzip.compress(bytes(data)))
    keys = tmp_path / "keys"
    built.key.write_public(keys)
    root = alpine.copy_rootfs(base, tmp_path / "root")
    with apkrepo.serve(built.directory) as url, pytest.raises(ApkOracleError):
        alpine.oracle_upgrade(root, url, keys)


def test_key_layer_makes_the_image_trust_the_repo(repo: apkrepo.ApkRepo, tmp_path: Path) -> None:
    from tests.support.images import copy_layout

    layout_dir, ref = alpine.alpine_layout()
    work = copy_layout(layout_dir, tmp_path / "layout")
    with apkrepo.serve(repo.directory) as url:
        apkrepo.add_key_layer(work, ref, alpine.alpine_rootfs(), repo.key, url)
        subprocess.run(
            ["umoci", "unpack", f"--image={work}:{ref}", str(tmp_path / "bundle")], check=True, capture_output=True
        )
        root = tmp_path / "bundle" / "rootfs"
        assert (root / "etc/apk/repositories").read_text() == f"{url}\n"
        # No --repository/--keys-dir: the image's own configuration (from the new layer) must suffice.
        proc = run_apk(root, "--repositories-file", str(root / "etc/apk/repositories"), "--no-cache", "--no-scripts",
                       "upgrade")  # fmt: skip
        assert "Upgrading curl" in proc.stdout
    assert alpine.installed_versions(root)["curl"] == repo.package("curl").version


# ------------------------------------------------------------------------------------------ version oracle


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.2.3-r0", "1.2.3-r1", -1),
        ("1.2.3_rc1", "1.2.3", -1),
        ("1.2.3_p1", "1.2.3", 1),
        ("1.10", "1.9", 1),
        ("1.0", "1.0", 0),
        ("1.0-r0", "1.0", 1),  # apk-tools 3: an explicit -r0 sorts after no release at all
        ("2.0a", "2.0", 1),
        ("3.5.8-r0", "3.5.10-r0", -1),
        ("1.0_alpha", "1.0_beta", -1),
    ],
)
def test_apk_version_compare_oracle(a: str, b: str, expected: int) -> None:
    assert apk_version_compare(a, b) == expected
    assert apk_version_compare(b, a) == -expected


def test_apk_version_valid_oracle() -> None:
    assert apk_version_valid("1.2.3-r4")
    assert apk_version_valid("1.2.3_rc1_p2-r0")
    assert not apk_version_valid("abc")
    assert not apk_version_valid("1.2-r")
