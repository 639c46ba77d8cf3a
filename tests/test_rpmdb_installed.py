"""copa.pkg.rpm.rpmdb.installed: finding the database in an image's view, and what an upgrade writes there."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from copa.errors import UnsupportedImageError
from copa.pkg.rpm.header import Header
from copa.pkg.rpm.rpmdb.indexes import HeaderTags, all_keys
from copa.pkg.rpm.rpmdb.installed import read_database
from tests.test_rpmdb_bdb import view_of
from tests.test_rpmdb_sqlite import BlobTags, fast_tmp, install, packages, qa

__all__ = ["fast_tmp", "packages"]

SYSIMAGE = "usr/lib/sysimage/rpm"


def _install(root: Path, *pkgs: Path, upgrade: bool = False) -> None:
    # The database where Fedora keeps it, with /var/lib/rpm a symlink to it.
    import subprocess

    subprocess.run(["rpm", "--root", str(root), "--dbpath", "/" + SYSIMAGE, "-U" if upgrade else "-i", "--nodeps",
                    "--noscripts", "--notriggers", *map(str, pkgs)], check=True, capture_output=True)


def test_sysimage_behind_a_symlink(fast_tmp: Path, packages: dict[str, Path]) -> None:
    before = fast_tmp / "before"
    _install(before, packages["bar"], packages["foo1"])
    (before / "var/lib").mkdir(parents=True)
    (before / "var/lib/rpm").symlink_to("../../usr/lib/sysimage/rpm")
    after = fast_tmp / "after"
    shutil.copytree(before, after, symlinks=True)
    _install(after, packages["foo2"], upgrade=True)
    db = read_database(view_of(before))
    assert (db.directory, db.backend, sorted(db.headers)) == (SYSIMAGE, "sqlite", [1, 2])
    blob = read_database(view_of(after)).headers[3]
    # copa's header reader gives the index layer the same keys as the tests' independent one.
    assert all_keys(HeaderTags(Header.parse(blob))) == all_keys(BlobTags(blob))
    foo1 = next(h for h, b in db.headers.items() if BlobTags(b).string(1000) == "foo")
    change = db.upgrade([foo1], [blob])
    assert change.hnums == (3,)
    # rpm leaves -wal/-shm at times; the new main file holds everything, so they go.
    assert set(change.deleted) <= {f"{SYSIMAGE}/rpmdb.sqlite-wal", f"{SYSIMAGE}/rpmdb.sqlite-shm"}
    assert [(p, m) for p, _, m in change.files] == [(f"{SYSIMAGE}/rpmdb.sqlite", 0o644)]
    (after / SYSIMAGE / "rpmdb.sqlite").write_bytes(change.files[0][1])
    assert qa(after) == {("bar", "", "1.0", "1", "noarch"), ("foo", "", "2.0", "1", "noarch")}


def test_uncheckpointed_wal_is_read_and_folded_in(fast_tmp: Path, packages: dict[str, Path]) -> None:
    root = fast_tmp / "root"
    install(root, packages["bar"], packages["foo1"])
    dbdir = root / "var/lib/rpm"
    snapshot = fast_tmp / "snapshot"
    # A transaction still in the WAL when the image was built: bar erased (as rpm -e would, every table).
    conn = sqlite3.connect(dbdir / "rpmdb.sqlite", isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    conn.execute("BEGIN")
    for t in tables:
        if t not in ("Packages", "sqlite_sequence", "sqlite_stat1"):
            conn.execute(f"DELETE FROM '{t}' WHERE hnum = 1")
    conn.execute("DELETE FROM Packages WHERE hnum = 1")
    conn.execute("COMMIT")
    shutil.copytree(root, snapshot, symlinks=True)
    conn.close()
    assert (snapshot / "var/lib/rpm/rpmdb.sqlite-wal").stat().st_size > 0
    db = read_database(view_of(snapshot))
    assert sorted(db.headers) == [2]
    change = db.upgrade([2], [])
    assert sorted(change.deleted) == ["var/lib/rpm/rpmdb.sqlite-shm", "var/lib/rpm/rpmdb.sqlite-wal"]
    for name in ("rpmdb.sqlite-wal", "rpmdb.sqlite-shm"):
        (snapshot / "var/lib/rpm" / name).unlink()
    (snapshot / "var/lib/rpm/rpmdb.sqlite").write_bytes(change.files[0][1])
    assert qa(snapshot) == set()


def test_damaged_ndb_and_missing_databases_are_exit_6(tmp_path: Path) -> None:
    (tmp_path / "ndb/var/lib/rpm").mkdir(parents=True)
    (tmp_path / "ndb/var/lib/rpm/Packages.db").write_bytes(b"RpmP" + bytes(60))
    with pytest.raises(UnsupportedImageError, match=r"\(ndb\) is damaged") as err:
        read_database(view_of(tmp_path / "ndb"))
    assert err.value.exit_code == 6
    (tmp_path / "none/var/lib/rpm").mkdir(parents=True)
    with pytest.raises(UnsupportedImageError, match="no rpm database"):
        read_database(view_of(tmp_path / "none"))
    with pytest.raises(UnsupportedImageError, match="no rpm database in /usr/lib/sysimage/rpm"):
        read_database(view_of(tmp_path / "ndb"), dbpath="/usr/lib/sysimage/rpm")


def test_indexes_copa_does_not_know_are_refused(fast_tmp: Path, packages: dict[str, Path]) -> None:
    """An index of a newer (sqlite) or older (BerkeleyDB) rpm would go stale: refused, exit 6."""
    from tests.test_rpmdb_bdb import db_load, to_bdb

    root = fast_tmp / "root"
    install(root, packages["bar"])
    conn = sqlite3.connect(root / "var/lib/rpm/rpmdb.sqlite")
    conn.execute("CREATE TABLE 'Newindex' (key TEXT NOT NULL, hnum INTEGER NOT NULL, idx INTEGER NOT NULL)")
    conn.commit()
    conn.close()
    with pytest.raises(UnsupportedImageError, match="Newindex") as err:
        read_database(view_of(root)).upgrade([1], [])
    assert err.value.exit_code == 6
    old = fast_tmp / "old"
    install(old, packages["bar"])
    to_bdb(old)
    db_load(old / "var/lib/rpm/Filedigests", "btree", {b"\x01" * 16: bytes(8)})
    with pytest.raises(UnsupportedImageError, match="Filedigests"):
        read_database(view_of(old)).upgrade([1], [])
    (old / "var/lib/rpm/Filedigests").unlink()
    (old / "var/lib/rpm/.dbenv.lock").write_bytes(b"")
    assert read_database(view_of(old)).upgrade([1], []).hnums == ()
