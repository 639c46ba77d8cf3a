"""rpmdb.sqlite (rpm >= 4.16): read the headers, and write an upgrade as rpm's sqlite backend does.

The database is the image's file as bytes. Reading copies it (and a non-empty -wal beside it, whose transactions
rpm had not checkpointed) to a private temporary directory and opens it there: sqlite then replays the WAL
itself, and nothing of the image is ever opened in place. Writing works on that copy with rpm's own statements
(Packages rows by AUTOINCREMENT hnum, index rows (key, hnum, idx)) in one transaction; closing the last
connection checkpoints the WAL into the main file, whose bytes are the result. No VACUUM: rpm never runs one,
freed pages stay on sqlite's free list, and PRAGMA integrity_check is content with that.
"""

from __future__ import annotations

import sqlite3
import struct
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from copa.errors import CopaError, UnsupportedImageError
from copa.pkg.rpm.header import Header
from copa.pkg.rpm.rpmdb.indexes import INDEXES, INSTALLTID, Tags, index_keys

_MAGIC = b"SQLite format 3\x00"
_BATCH = 500  # hnums a DELETE names at once (sqlite allows 32766 parameters; older builds 999)


def _damaged(what: str, detail: object) -> UnsupportedImageError:
    return UnsupportedImageError(f"{what}: the rpm database is damaged ({detail}); rebuild it in the image "
                                 "(rpmdb --rebuilddb) and try again")


def _open(directory: Path, db: bytes, wal: bytes | None, what: str) -> sqlite3.Connection:
    if not db.startswith(_MAGIC):
        raise _damaged(what, "not an sqlite database")
    path = directory / "rpmdb.sqlite"
    path.write_bytes(db)
    if wal:
        (directory / "rpmdb.sqlite-wal").write_bytes(wal)
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.text_factory = bytes
        # The file is the image's: its schema's triggers and views must not run functions, and a damaged page
        # should fail as damaged rather than be trusted.
        conn.execute("PRAGMA trusted_schema = OFF")
        conn.execute("PRAGMA cell_size_check = ON")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        raise _damaged(what, e) from None
    return conn


def _int_order(conn: sqlite3.Connection) -> str:
    """The byte order rpm wrote integer keys in (its machine's: big-endian for s390x images), from an installed
    header's INSTALLTID and its Installtid row."""
    row = conn.execute("SELECT i.key, p.blob FROM Installtid AS i JOIN Packages AS p ON i.hnum = p.hnum "
                       "LIMIT 1").fetchone()
    if row is None or not isinstance(row[0], bytes) or not isinstance(row[1], bytes) or len(row[0]) != 4:
        return "<"
    try:
        tid = Header.parse(row[1], "installed header").integer(INSTALLTID)
    except CopaError:
        return "<"
    return ">" if tid is not None and row[0] == struct.pack(">I", tid) != struct.pack("<I", tid) else "<"


def read_headers(db: bytes, wal: bytes | None = None, what: str = "/var/lib/rpm/rpmdb.sqlite") -> dict[int, bytes]:
    """The installed header blobs by hnum."""
    with tempfile.TemporaryDirectory(prefix="copa-rpmdb-") as tmp:
        conn = _open(Path(tmp), db, wal, what)
        try:
            rows = conn.execute("SELECT hnum, blob FROM Packages ORDER BY hnum").fetchall()
        except sqlite3.DatabaseError as e:
            raise _damaged(what, e) from None
        finally:
            conn.close()
    out: dict[int, bytes] = {}
    for hnum, blob in rows:
        if not isinstance(hnum, int) or not isinstance(blob, bytes):
            raise _damaged(what, f"Packages row {hnum!r} is not (integer, blob)")
        out[hnum] = blob
    return out


def write_upgrade(db: bytes, wal: bytes | None, removed: Iterable[int], added: Sequence[tuple[bytes, Tags]],
                  what: str = "/var/lib/rpm/rpmdb.sqlite") -> tuple[bytes, list[int]]:
    """The database with the headers `removed` (hnums) erased and `added` (installed blob, its tags) installed,
    in rpm -U's order: each new header is added (taking the next hnum) before the old ones go.
    Returns the new main file (WAL checkpointed into it) and the hnums given to the new headers."""
    with tempfile.TemporaryDirectory(prefix="copa-rpmdb-") as tmp:
        conn = _open(Path(tmp), db, wal, what)
        try:
            tables = {r[0].decode() for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "Packages" not in tables:
                raise _damaged(what, "no Packages table")
            indexes = [ix for ix in INDEXES if ix.name in tables]
            known = {ix.name for ix in INDEXES} | {"Packages"}
            for table in sorted(tables - known):
                columns = {r[1] for r in conn.execute(f"PRAGMA table_info('{table}')")}
                if b"hnum" in columns:  # an index of a newer rpm: its rows for the new headers are unknown to us
                    raise UnsupportedImageError(f"{what}: index table {table!r} is unknown to copa; the image's "
                                                "rpm is newer than copa supports")
            endian = _int_order(conn) if "Installtid" in tables else "<"
            # A private copy whose bytes are read back once the connection closes: nothing to make durable, so no
            # fsync (each costs a disk round trip; the file's contents are the same either way).
            conn.execute("PRAGMA synchronous = OFF")
            conn.execute("BEGIN IMMEDIATE")
            hnums: list[int] = []
            for blob, tags in added:
                cur = conn.execute("INSERT INTO Packages (hnum, blob) VALUES (NULL, ?)", (blob,))
                hnum = cur.lastrowid
                assert hnum is not None
                hnums.append(hnum)
                for ix in indexes:
                    rows = [(key, hnum, idx) for key, idx in index_keys(tags, ix, endian)]
                    if rows:  # (most headers have no key for most indexes: no statement for those)
                        # CAST keeps a TEXT key's bytes as they are: rpm binds raw strings, not necessarily UTF-8.
                        value = "?" if ix.binary else "CAST(? AS TEXT)"
                        conn.executemany(f"INSERT INTO '{ix.name}' (key, hnum, idx) VALUES ({value}, ?, ?)", rows)
            # The old headers' rows, one statement per table for all of them (the tables are indexed by hnum; a
            # statement per header and table was most of the write: 50 headers x 18 tables).
            gone = list(removed)
            seen: set[int] = set()
            for start in range(0, len(gone), _BATCH):
                batch = gone[start:start + _BATCH]
                marks = ", ".join("?" * len(batch))
                present = {r[0] for r in conn.execute(f"SELECT hnum FROM Packages WHERE hnum IN ({marks})", batch)}
                for hnum in batch:  # (named twice: the second time it is gone, as a statement per header found)
                    if hnum not in present or hnum in seen:
                        raise _damaged(what, f"no installed header {hnum} to remove")
                    seen.add(hnum)
                for ix in indexes:
                    conn.execute(f"DELETE FROM '{ix.name}' WHERE hnum IN ({marks})", batch)
                conn.execute(f"DELETE FROM Packages WHERE hnum IN ({marks})", batch)
            conn.execute("COMMIT")
            # What rpm's sqlite backend runs when it closes a database it wrote.
            conn.execute("PRAGMA optimize")
            conn.execute("PRAGMA wal_checkpoint = TRUNCATE")
        except sqlite3.DatabaseError as e:
            raise _damaged(what, e) from None
        finally:
            conn.close()
        return (Path(tmp) / "rpmdb.sqlite").read_bytes(), hnums
