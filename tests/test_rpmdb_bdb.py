"""copa.pkg.rpm.rpmdb's BerkeleyDB reader and writer against the real tools.

Roots are made as RHEL 8 has them: rpm installs into sqlite, then each table becomes a BerkeleyDB file made by
db5.3_load (Packages a hash of 4-byte instance numbers, key 0 the last one; each index a btree of key -> the
packed (hnum, idx) pairs). The upgrade written by copa (from the installed header a real rpm -U wrote) must
dump (db5.3_dump, an independent reader) exactly as the files made from that rpm -U's own database, pass
db5.3_verify, and be read by Debian's rpm (bdb_ro backend: -qa, -qf, --whatprovides, -V) and by the rpm 4.16
of PyPI's rpm-inspector-rpm.
"""

from __future__ import annotations

import importlib.util
import shutil
import sqlite3
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from copa.errors import UnsupportedImageError
from copa.oci.rootfs import Node, View
from copa.pkg.rpm.rpmdb import bdb
from copa.pkg.rpm.rpmdb.indexes import INDEXES
from copa.pkg.rpm.rpmdb.installed import read_database
from tests.test_rpmdb_sqlite import DBPATH, BlobTags, fast_tmp, install, packages, qa, rpm

__all__ = ["fast_tmp", "packages"]  # fixtures shared with the sqlite tests

pytestmark = pytest.mark.skipif(shutil.which("db5.3_load") is None or shutil.which("rpmbuild") is None,
                                reason="needs db5.3-util, rpm and rpmbuild (scripts/setup installs them)")
BDB = "bdb_ro"
DBDIR = DBPATH.lstrip("/")


def _escape(data: bytes) -> str:
    return "".join(chr(b) if 32 < b < 127 and b != 92 else f"\\{b:02x}" for b in data)


def db_load(path: Path, kind: str, items: dict[bytes, bytes]) -> None:
    text = "".join(f"{_escape(k)}\n{_escape(v)}\n" for k, v in items.items())
    subprocess.run(["db5.3_load", "-T", "-t", kind, str(path)], input=text.encode(), check=True)


def to_bdb(root: Path) -> None:
    """Replace the root's rpmdb.sqlite by the BerkeleyDB files rpm 4.14 would have for the same rows."""
    db = root / DBDIR / "rpmdb.sqlite"
    conn = sqlite3.connect(db)
    conn.text_factory = bytes
    rows = conn.execute("SELECT hnum, blob FROM Packages").fetchall()
    (last,) = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'Packages'").fetchone()
    items = {struct.pack("<I", 0): struct.pack("<I", last)} | {struct.pack("<I", h): b for h, b in rows}
    db_load(root / DBDIR / "Packages", "hash", items)
    for ix in INDEXES:
        sets: dict[bytes, list[tuple[int, int]]] = {}
        for key, hnum, idx in conn.execute(f"SELECT key, hnum, idx FROM '{ix.name}'"):
            sets.setdefault(bytes(key), []).append((hnum, idx))
        db_load(root / DBDIR / ix.name, "btree",
                {k: b"".join(struct.pack("<II", *p) for p in sorted(v)) for k, v in sets.items()})
    conn.close()
    for name in ("rpmdb.sqlite", "rpmdb.sqlite-wal", "rpmdb.sqlite-shm"):
        (root / DBDIR / name).unlink(missing_ok=True)


def dump(path: Path) -> list[str]:
    """db5.3_dump's data lines (the header names the file's own page size and such)."""
    out = subprocess.run(["db5.3_dump", str(path)], check=True, capture_output=True, text=True).stdout
    return out.split("HEADER=END\n", 1)[1].splitlines()


def view_of(root: Path) -> View:
    nodes: dict[str, Node] = {}
    contents: dict[str, bytes] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        kind = "symlink" if p.is_symlink() else "dir" if p.is_dir() else "file"
        st = p.lstat()
        nodes[rel] = Node(rel, kind, st.st_mode, 0, 0, st.st_size, str(p.readlink()) if kind == "symlink" else "", 0)
        if kind == "file":
            contents[rel] = p.read_bytes()
    return View(nodes, contents)


def inspector_rpm() -> Path | None:
    spec = importlib.util.find_spec("rpm_inspector_rpm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "rpm"


@pytest.fixture()
def roots(fast_tmp: Path, packages: dict[str, Path]) -> tuple[Path, Path]:
    before = fast_tmp / "before"
    install(before, packages["bar"], packages["foo1"])
    after = fast_tmp / "after"
    shutil.copytree(before, after, symlinks=True)
    install(after, packages["foo2"], upgrade=True)
    for root in (before, after):
        to_bdb(root)
    # BerkeleyDB's environment as rpm 4.14 leaves it: copa must not carry it into the patched image.
    (before / DBDIR / "__db.001").write_bytes(b"\0" * 4096)
    return before, after


def test_read_matches_rpm_qa(roots: tuple[Path, Path]) -> None:
    before, _ = roots
    db = read_database(view_of(before))
    assert db.backend == "bdb" and sorted(db.headers) == [1, 2]
    assert {BlobTags(b).nevra() for b in db.headers.values()} == qa(before, BDB)
    inspector = inspector_rpm()
    if inspector is not None:
        out = subprocess.run([str(inspector), "--rcfile", str(inspector.parent / "rpmrc"), "--root", str(before),
                              "--dbpath", DBPATH, "--define", "_db_backend bdb_ro", "-qa"],
                             capture_output=True, text=True, check=True).stdout
        assert sorted(out.split()) == ["bar-1.0-1.noarch", "foo-1.0-1.noarch"]


def test_upgrade_equals_rpm_U(roots: tuple[Path, Path], fast_tmp: Path) -> None:
    before, after = roots
    db = read_database(view_of(before))
    new = read_database(view_of(after))
    foo1 = next(h for h, b in db.headers.items() if BlobTags(b).string(1000) == "foo")
    blob = new.headers[max(new.headers)]
    change = db.upgrade([foo1], [blob])
    assert change.hnums == (3,)
    assert db.upgrade([foo1], [blob]) == change  # same inputs, same bytes
    assert change.deleted == (f"{DBDIR}/__db.001",)
    ours = fast_tmp / "ours"
    shutil.copytree(after, ours, symlinks=True)
    for path, data, mode in change.files:
        (ours / path).write_bytes(data)
        assert mode == 0o644
    assert sorted(Path(p).name for p, _, _ in change.files) == sorted(["Packages", *(ix.name for ix in INDEXES)])
    for path, _, _ in change.files:
        subprocess.run(["db5.3_verify", "-q", str(ours / path)], check=True)
        assert dump(ours / path) == dump(after / path), path
    assert qa(ours, BDB) == {("bar", "", "1.0", "1", "noarch"), ("foo", "", "2.0", "1", "noarch")}
    assert rpm(ours, "-q", "--whatprovides", "libfoo.so.1()(64bit)", backend=BDB).split() == ["foo-2.0-1.noarch"]
    assert rpm(ours, "-qf", "/usr/share/foo/b/same", backend=BDB).split() == ["foo-2.0-1.noarch"]
    assert rpm(ours, "-q", "--whatrequires", "bar", backend=BDB).split() == ["foo-2.0-1.noarch"]
    rpm(ours, "-V", "--nodeps", "foo", "bar", backend=BDB)
    subprocess.run(["rpmdb", "--root", str(ours), "--dbpath", DBPATH, "--define", f"_db_backend {BDB}",
                    "--verifydb"], check=True)
    inspector = inspector_rpm()
    if inspector is not None:
        out = subprocess.run([str(inspector), "--rcfile", str(inspector.parent / "rpmrc"), "--root", str(ours),
                              "--dbpath", DBPATH, "--define", "_db_backend bdb_ro", "-q", "--whatprovides",
                              "foo-cap"], capture_output=True, text=True, check=True).stdout
        assert out.split() == ["foo-2.0-1.noarch"]
    # rpm converts it to sqlite as it would the image's own (what a later dnf in the image may do).
    converted = fast_tmp / "converted"
    shutil.copytree(ours, converted, symlinks=True)
    subprocess.run(["rpmdb", "--root", str(converted), "--dbpath", DBPATH, "--rebuilddb"], check=True,
                   capture_output=True)
    assert (converted / DBDIR / "rpmdb.sqlite").exists() and qa(converted) == qa(ours, BDB)
    # Entries for the layer: the files, and a whiteout for the stale environment.
    kinds = {(e.path, e.kind.value) for e in change.entries()}
    assert (f"{DBDIR}/__db.001", "whiteout") in kinds and (f"{DBDIR}/Packages", "file") in kinds


def test_large_databases_round_trip(tmp_path: Path) -> None:
    """Multi-level btrees, overflow items and chained hash buckets, each read back by db5.3_dump after our
    writer made them and by our reader after db5.3_load made them."""
    # Small pages make deep trees and long chains from few items.
    btree = {f"/usr/share/doc/pkg-{i:05d}/".encode(): struct.pack("<II", i, 0) * (1 + (i % 100 == 0) * 40)
             for i in range(3000)}
    hashed = {struct.pack("<I", i): bytes([i % 251]) * (20 + (i * 37) % 1500) for i in range(400)}
    for name, kind, items in (("Bt", "btree", btree), ("Hash", "hash", hashed)):
        ours = tmp_path / f"ours-{name}"
        writer = bdb.write_btree if kind == "btree" else bdb.write_hash
        ours.write_bytes(writer(items, bdb.new_meta(kind, pagesize=512)))
        subprocess.run(["db5.3_verify", "-q", str(ours)], check=True)
        theirs = tmp_path / f"theirs-{name}"
        db_load(theirs, kind, items)
        assert sorted(dump(ours)) == sorted(dump(theirs))
        reader = bdb.read_btree if kind == "btree" else bdb.read_hash
        assert reader(theirs.read_bytes(), name) == items
        # BerkeleyDB itself goes on from our layout (as rpm in the patched image will): hash buckets split
        # into new doublings, btree pages split, and the result verifies and reads back.
        more = {b"more-%05d" % i: b"x" * (i % 700) for i in range(2000)}
        db_load(ours, kind, more)
        subprocess.run(["db5.3_verify", "-q", str(ours)], check=True)
        assert reader(ours.read_bytes(), name) == items | more
    assert (tmp_path / "ours-Bt").read_bytes()[512 + 24] >= 3  # the root's level: a three-level tree at least


def test_damaged_files_are_exit_6(roots: tuple[Path, Path]) -> None:
    before, _ = roots
    data = (before / DBDIR / "Packages").read_bytes()
    for bad in (data[:100], b"x" * 8192, data[:4096] + b"\xff" * (len(data) - 4096)):
        with pytest.raises(UnsupportedImageError) as err:
            bdb.read_hash(bad, "/var/lib/rpm/Packages")
        assert err.value.exit_code == 6 and "\n" not in err.value.message


def _sample_files() -> dict[str, bytes]:
    btree = {b"/usr/lib/%05d/" % i: struct.pack("<II", i, 0) * (1 + (i % 50 == 0) * 30) for i in range(300)}
    hashed = {struct.pack("<I", i): bytes([i % 251]) * (20 + (i * 37) % 1500) for i in range(60)}
    return {"btree": bdb.write_btree(btree, bdb.new_meta("btree", pagesize=512)),
            "hash": bdb.write_hash(hashed, bdb.new_meta("hash", pagesize=512))}


_SAMPLES = _sample_files()


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["btree", "hash"]), flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)),
                                                                min_size=1, max_size=6),
       cut=st.integers(0, 1 << 20) | st.none())
def test_damage_is_an_unsupported_image_not_a_crash(kind: str, flips: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(_SAMPLES[kind])
    for pos, value in flips:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[:cut % len(data)]
    reader = bdb.read_btree if kind == "btree" else bdb.read_hash
    try:
        reader(bytes(data), "/var/lib/rpm/X")
    except UnsupportedImageError as e:
        assert "\n" not in e.message


def test_big_endian_files_keep_their_byte_order(tmp_path: Path) -> None:
    """An s390x image's rpmdb is big-endian (BerkeleyDB's byte order is the writer's): read as it is, written
    back in the same order."""
    for kind, items in (("hash", {struct.pack(">I", i): b"h" * (i * 97 % 3000) for i in range(40)}),
                        ("btree", {b"k%04d" % i: struct.pack(">II", i, 1) * (1 + i % 200) for i in range(300)})):
        theirs = tmp_path / f"theirs-{kind}"
        text = "".join(f"{_escape(k)}\n{_escape(v)}\n" for k, v in items.items())
        subprocess.run(["db5.3_load", "-T", "-t", kind, "-c", "db_lorder=4321", str(theirs)], input=text.encode(),
                       check=True)
        meta = bdb.read_meta(theirs.read_bytes(), kind)
        assert meta.endian == ">"
        reader = bdb.read_btree if kind == "btree" else bdb.read_hash
        assert reader(theirs.read_bytes(), kind) == items
        writer = bdb.write_btree if kind == "btree" else bdb.write_hash
        ours = tmp_path / f"ours-{kind}"
        ours.write_bytes(writer(items, meta))
        subprocess.run(["db5.3_verify", "-q", str(ours)], check=True)
        assert bdb.read_meta(ours.read_bytes(), kind).endian == ">"
        assert sorted(dump(ours)) == sorted(dump(theirs))
