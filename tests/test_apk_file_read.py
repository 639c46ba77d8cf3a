"""read_apk's data member path (one inflate, a walk by offset, small files in memory, the rest in the staged tar),
checked against GNU tar extracting the same packages: real Alpine packages rebuilt from the fixture image, and
packages built here with hard links, several gzip members and damage. Each case runs with the size limits as
shipped and forced to their extremes, so the in-memory, on-disk, inline and staged paths all meet the oracle."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from copa.errors import CopaError, IntegrityError, UnsafePathError
from copa.pkg.apk import apkfile
from copa.pkg.apk.apkfile import CHECKSUM_PAX, ApkContents, read_apk
from copa.pkg.apk.signing import Keys
from tests.support import alpine, apkrepo
from tests.test_apk_index import _gz, _reg, _tar, sign_segment, signing_key

# Real packages of the fixture with what each brings: many small files (ca-certificates), a large binary
# (busybox), shared libraries over the inline size (libcrypto3), symlinks (musl), a plain small one (zlib).
REAL = ("busybox", "ca-certificates", "libcrypto3", "musl", "zlib")

MODES = {
    "as shipped": {},
    # every data member streamed from the file (hashed in a first pass), every data tar spilled to the stage
    "tar on disk": {"_READ_WHOLE_MAX": 0, "_MEMORY_TAR_MAX": 0},
    "all inline": {"_INLINE_MAX": 1 << 40, "_INLINE_BUDGET": 1 << 40},
    "none inline": {"_INLINE_MAX": -1},  # every file's content read by offset from the staged tar
    "on disk, none inline": {"_READ_WHOLE_MAX": 0, "_MEMORY_TAR_MAX": 0, "_INLINE_MAX": -1},
}


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in MODES[request.param].items():
        monkeypatch.setattr(apkfile, name, value)
    return str(request.param)


@pytest.fixture(scope="module")
def real_apks(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("real-apks")
    key = apkrepo.test_key()
    return [apkrepo.build_package(alpine.alpine_rootfs(), apkrepo.PackageUpdate(n), out, key).path for n in REAL]


def gnu_tar_extract(apk: Path, dest: Path) -> Path:
    """The oracle: GNU tar reads the .apk as apk does, one tar through the concatenated gzip members."""
    dest.mkdir(parents=True)
    subprocess.run(["tar", "--warning=no-unknown-keyword", "-xzf", str(apk), "-C", str(dest)], check=True,
                   capture_output=True)
    return dest


def assert_equals_tar(contents: ApkContents, extracted: Path) -> None:
    seen = set()
    for f in contents.files:
        seen.add(f.path)
        on_disk = extracted / f.path
        st = on_disk.lstat()
        assert (f.mode, f.uid, f.gid) == (st.st_mode & 0o7777, st.st_uid, st.st_gid), f.path
        if f.kind != "dir":  # a directory's mtime is the last change tar made in it
            assert f.mtime == int(st.st_mtime), f.path
        if f.kind == "file":
            assert on_disk.is_file() and not on_disk.is_symlink()
            with f.open() as src:
                data = src.read()
            assert data == on_disk.read_bytes(), f.path
            assert f.size == len(data)
            if f.sha1 is not None:
                assert f.sha1 == hashlib.sha1(data).digest()
        elif f.kind == "symlink":
            assert os.readlink(on_disk) == f.linkname
        elif f.kind == "hardlink":
            assert os.path.samefile(on_disk, extracted / f.linkname)
        else:
            assert f.kind == "dir" and on_disk.is_dir()
    control = {p.name for p in extracted.iterdir() if p.name.startswith(".")}
    everything = {str(p.relative_to(extracted)) for p in extracted.rglob("*")} - control
    assert seen == everything


def test_real_packages_equal_gnu_tar(real_apks: list[Path], mode: str, tmp_path: Path) -> None:
    for i, apk in enumerate(real_apks):
        contents = read_apk(apk, tmp_path / f"stage{i}", Keys({}), expected="", require_signature=False,
                            what=apk.name)
        assert len(contents.files) > 0 and contents.info("pkgname") == REAL[i]
        assert_equals_tar(contents, gnu_tar_extract(apk, tmp_path / f"tar{i}"))
    staged = [p for p in tmp_path.rglob("*") if p.is_file() and "stage" in p.parts[-2]]
    # At most one file per package lands in the stage: the data tar, and only when something needs it.
    assert all(p.name == "data.tar" for p in staged)
    if mode in ("tar on disk", "on disk, none inline"):
        assert len(staged) == len(real_apks)
    if mode == "all inline":
        assert staged == []


def _hardlinked_members(size: int = 200 << 10) -> list[tuple[tarfile.TarInfo, bytes]]:
    big = os.urandom(size)  # by default over the inline size; incompressible
    members = [_reg("usr/bin/tool", big, 0o755, {CHECKSUM_PAX: hashlib.sha1(big).hexdigest()}),
               _reg("usr/share/x/small", b"small\n", 0o644, {CHECKSUM_PAX: hashlib.sha1(b"small\n").hexdigest()}),
               _reg("usr/share/x/empty", b"", 0o600, {CHECKSUM_PAX: hashlib.sha1(b"").hexdigest()})]
    link = tarfile.TarInfo("usr/bin/tool2")
    link.type, link.linkname, link.mode, link.mtime = tarfile.LNKTYPE, "usr/bin/tool", 0o755, 1700000000
    members.append((link, b""))
    dirs = []
    for d in ("usr", "usr/bin", "usr/share", "usr/share/x"):
        info = tarfile.TarInfo(d)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1700000000
        dirs.append((info, b""))
    return dirs + members


def _assemble(data_members: bytes, *, key_signed: bool = True, datahash: bool = True) -> bytes:
    """signature + control + the given data bytes (any gzip layout), with .PKGINFO's datahash over them."""
    info = {"pkgname": "tool", "pkgver": "1.0-r0", "arch": "x86_64"}
    if datahash:
        info["datahash"] = hashlib.sha256(data_members).hexdigest()
    text = "".join(f"{k} = {v}\n" for k, v in info.items()).encode()
    control = _gz(_tar([_reg(".PKGINFO", text)], cut=True))
    signature = sign_segment(signing_key(), control) if key_signed else b""
    return signature + control + data_members


def _split_gzip(tar_bytes: bytes, parts: int) -> bytes:
    """The data tar as `parts` concatenated gzip members (a valid gzip stream that apk, gzip and tar all read)."""
    step = -(-len(tar_bytes) // parts)
    return b"".join(gzip.compress(tar_bytes[i:i + step], mtime=0) for i in range(0, len(tar_bytes), step))


@pytest.mark.parametrize("parts", [1, 3])
def test_hard_links_and_gzip_members_equal_gnu_tar(parts: int, mode: str, tmp_path: Path) -> None:
    raw = _assemble(_split_gzip(_tar(_hardlinked_members(), cut=False), parts))
    apk = tmp_path / "tool.apk"
    apk.write_bytes(raw)
    contents = read_apk(apk, tmp_path / "stage", signing_key().keys(), expected="", require_signature=True,
                        what="tool.apk")
    assert [f.kind for f in contents.files].count("hardlink") == 1
    assert_equals_tar(contents, gnu_tar_extract(apk, tmp_path / "tar"))


def test_zero_padding_between_members_reads_as_python_gzip_does(mode: str, tmp_path: Path) -> None:
    """As the reader before this one (Python's gzip module): zeros after a member are padding, not data."""
    tar_bytes = _tar(_hardlinked_members(), cut=False)
    half = len(tar_bytes) // 2
    data = gzip.compress(tar_bytes[:half], mtime=0) + b"\0" * 1000 + gzip.compress(tar_bytes[half:], mtime=0)
    assert gzip.decompress(data) == tar_bytes
    apk = tmp_path / "tool.apk"
    apk.write_bytes(_assemble(data))
    contents = read_apk(apk, tmp_path / "stage", signing_key().keys(), expected="", require_signature=True,
                        what="tool.apk")
    by_path = {f.path: f for f in contents.files}
    with by_path["usr/bin/tool"].open() as src:
        assert hashlib.sha1(src.read()).digest() == by_path["usr/bin/tool"].sha1


def _damaged(tmp_path: Path, data: bytes, *, datahash: bool = True) -> Path:
    apk = tmp_path / "bad.apk"
    apk.write_bytes(_assemble(data, datahash=datahash))
    return apk


def _read(apk: Path, stage: Path) -> ApkContents:
    return read_apk(apk, stage, signing_key().keys(), expected="", require_signature=True, what="bad.apk")


@pytest.mark.parametrize("case,message", [
    ("truncated", "truncated"),
    ("garbage after", "bad data archive"),
    ("bad crc", "bad data archive"),
    ("cut inside a file", "ends inside it"),
    ("not a tar", "bad data archive"),
])
def test_damaged_data_is_one_integrity_error(case: str, message: str, mode: str, tmp_path: Path) -> None:
    """Without a datahash to stop it first (an old or hand-made package), damage reaches the decompressor and the
    tar walk: each is one IntegrityError, and nothing is written outside the stage."""
    tar_bytes = _tar(_hardlinked_members(), cut=False)
    good = gzip.compress(tar_bytes, mtime=0)
    data = {
        "truncated": good[:len(good) // 2],
        "garbage after": good + b"PK\x03\x04 not gzip",
        "bad crc": good[:-8] + bytes([good[-8] ^ 1]) + good[-7:],
        "cut inside a file": gzip.compress(tar_bytes[:4096], mtime=0),  # the 200 KiB file's header, little more
        "not a tar": gzip.compress(b"x" * 5000, mtime=0),
    }[case]
    with pytest.raises(IntegrityError, match=message):
        _read(_damaged(tmp_path, data, datahash=False), tmp_path / "stage")
    assert all(p.name == "data.tar" for p in tmp_path.rglob("*") if p.is_file() and p.parent.name == "stage")
    with pytest.raises(IntegrityError, match="datahash"):  # with one, the damage is caught before any inflate
        _read(_tampered(tmp_path, good, data), tmp_path / "stage2")


def _tampered(tmp_path: Path, good: bytes, data: bytes) -> Path:
    """A package whose datahash is that of `good` but which carries `data`."""
    apk = tmp_path / "tampered.apk"
    apk.write_bytes(_assemble(good)[:-len(good)] + data)
    return apk


def test_decompression_bomb_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The limits of copa.pkg.streams hold here too (lowered so the test stays small): the ratio past the floor,
    then the absolute size."""
    zeros = _tar([_reg("usr/zeros", b"\0" * (8 << 20))], cut=False)
    apk = _damaged(tmp_path, gzip.compress(zeros, mtime=9))
    monkeypatch.setattr(apkfile, "RATIO_FLOOR", 1 << 20)
    with pytest.raises(IntegrityError, match="decompression bomb"):
        _read(apk, tmp_path / "s1")
    monkeypatch.setattr(apkfile, "RATIO_FLOOR", 1 << 40)
    monkeypatch.setattr(apkfile, "MAX_UNPACKED_BYTES", 4 << 20)
    with pytest.raises(IntegrityError, match="decompression bomb"):
        _read(apk, tmp_path / "s2")
    monkeypatch.setattr(apkfile, "MAX_UNPACKED_BYTES", 1 << 40)
    assert [f.path for f in _read(apk, tmp_path / "s3").files] == ["usr/zeros"]


def test_sparse_member_is_refused(tmp_path: Path) -> None:
    info = tarfile.TarInfo("usr/sparse")
    info.type, info.size = tarfile.GNUTYPE_SPARSE, 0
    raw = _tar([(info, b"")], cut=False)
    with pytest.raises(UnsafePathError, match="sparse"):
        _read(_damaged(tmp_path, gzip.compress(raw, mtime=0)), tmp_path / "s")


def _mutations(seed: bytes) -> Iterator[bytes]:
    rng = int.from_bytes(hashlib.sha256(seed).digest()[:8], "big")
    for i in range(120):
        rng = (rng * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        pos = rng % len(seed)
        if i % 3 == 0:
            yield seed[:pos]
        elif i % 3 == 1:
            yield seed[:pos] + bytes([seed[pos] ^ (1 << (rng >> 60) % 8)]) + seed[pos + 1:]
        else:
            yield seed[:pos] + seed[pos + 1 + (rng >> 48) % 64:]


def test_mutated_packages_fail_only_with_one_line_errors(tmp_path: Path) -> None:
    """Cut, flipped and shortened packages (no datahash, no signature required, so the damage reaches every
    parser): a value or copa's own one-line error, never another exception, and nothing outside the stage."""
    members = _hardlinked_members(300)  # small: mutations then land everywhere
    seed = _assemble(gzip.compress(_tar(members, cut=False), mtime=0), key_signed=False, datahash=False)
    apk = tmp_path / "m.apk"
    for n, raw in enumerate(_mutations(seed)):
        apk.write_bytes(raw)
        stage = tmp_path / "stages" / str(n)
        try:
            read_apk(apk, stage, Keys({}), expected="", require_signature=False, what="m.apk")
        except CopaError as e:
            assert str(e).strip() and "\n" not in str(e).strip()
    for p in (tmp_path / "stages").rglob("*"):
        assert p.is_dir() or p.name == "data.tar"


# Two repositories (main and community, as an Alpine image lists them): their indexes are fetched at once.


def test_two_repositories_plan_as_real_apk(tmp_path: Path) -> None:
    """An image listing two repositories, each holding newer builds of some of its packages: copa's plan (every
    package with a newer version, no report) equals what real apk upgrades from the same two repositories."""
    from tests.support import images
    from tests.test_alpine_e2e import copa

    base = alpine.alpine_rootfs()
    first = apkrepo.build_repo(base, [apkrepo.PackageUpdate(n) for n in ("zlib", "libcrypto3", "libssl3")],
                               tmp_path / "first")
    second = apkrepo.build_repo(base, [apkrepo.PackageUpdate("musl"), apkrepo.PackageUpdate("musl-utils")],
                                tmp_path / "second")
    keys = tmp_path / "keys"
    first.key.write_public(keys)
    with apkrepo.serve(first.directory) as url1, apkrepo.serve(second.directory) as url2:
        root = alpine.copy_rootfs(base, tmp_path / "oracle")
        before = alpine.installed_versions(root)
        alpine.run_apk(root, "--repository", url1, "--repository", url2, "--keys-dir", str(keys.resolve()),
                       "--no-cache", "--no-scripts", "upgrade")
        after = alpine.installed_versions(root)
        src, ref = alpine.alpine_layout()
        layout = images.copy_layout(src, tmp_path / "layout")
        apkrepo.add_key_layer(layout, ref, base, first.key, f"{url1}\n{url2}")  # two lines of etc/apk/repositories
        proc = copa("patch", "-i", f"oci:{layout}:{ref}", "--dry-run", "--json")
    planned = {u["name"]: (u["from"], u["to"]) for u in json.loads(proc.stdout)["updates"]}
    assert planned == {n: (before[n], v) for n, v in after.items() if before.get(n) != v}
    assert set(planned) == {"zlib", "libcrypto3", "libssl3", "musl", "musl-utils"}
