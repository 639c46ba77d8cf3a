"""The image's rpm database: found in its merged view, read as header blobs by instance number (hnum), and
written back after an upgrade in the format the image had.

Where: /var/lib/rpm (RHEL/UBI 8 and 9, Amazon Linux, CentOS) or /usr/lib/sysimage/rpm (Fedora, SUSE; on
some images /var/lib/rpm is a symlink to it: the files are written at their real path, never through a link).

Which backend: rpmdb.sqlite (rpm >= 4.16), BerkeleyDB Packages + index btrees (rpm <= 4.16 as RHEL 8,
Amazon Linux 2 and CentOS 7 ship it), ndb Packages.db (SUSE; its Index.db is deleted for rpm to rebuild).

What else is in the directory: BerkeleyDB's `__db.*` environment files (shared-memory regions with cached pages
of the old files: left in place they could hand rpm stale pages, so the layer deletes them, as
`rpmdb --rebuilddb` leaves none), sqlite's `-wal` (replayed, then deleted: its contents are in the new main
file) and `-shm`, and `.rpm.lock`, which rpm creates empty on its next run: left as the image has it.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from copa.errors import UnsupportedImageError
from copa.oci.layer import Entry
from copa.oci.rootfs import View
from copa.pkg.rpm.header import Header
from copa.pkg.rpm.rpmdb import sqlite

# The BerkeleyDB and ndb readers and writers are imported by the code paths of those formats only (most images,
# RHEL/UBI 9, hold rpmdb.sqlite).
from copa.pkg.rpm.rpmdb.indexes import INDEXES, HeaderTags, Tags, index_keys

DB_DIRS = ("var/lib/rpm", "usr/lib/sysimage/rpm")
SQLITE = "rpmdb.sqlite"
PACKAGES = "Packages"
NDB = "Packages.db"
NDB_INDEX = "Index.db"


@dataclass(frozen=True)
class Change:
    """What an upgrade does to the database directory: files to write (image path -> bytes, with the mode the
    image had) and files to delete."""

    files: tuple[tuple[str, bytes, int], ...]
    deleted: tuple[str, ...]
    hnums: tuple[int, ...]  # the instance numbers the added headers got, in order

    def entries(self) -> tuple[Entry, ...]:
        return (*(Entry.file(path, data, mode) for path, data, mode in self.files),
                *(Entry.whiteout(path) for path in self.deleted))


@dataclass(frozen=True)
class RpmDatabase:
    directory: str  # the real directory in the image, e.g. "var/lib/rpm"
    backend: str  # "sqlite", "bdb" or "ndb"
    files: Mapping[str, bytes]  # the database files read (name in the directory -> contents)
    modes: Mapping[str, int]
    others: tuple[str, ...]  # other file names in the directory (environment, locks)
    headers: Mapping[int, bytes]  # installed header blobs by hnum
    endian: str = "<"  # BerkeleyDB: the byte order of the files (and of the keys and index values rpm wrote)
    others_heads: Mapping[str, bytes] = field(default_factory=dict)  # first bytes of `others`, where captured

    def upgrade(self, removed: Sequence[int], added: Sequence[bytes]) -> Change:
        """The database with the headers `removed` (hnums) erased and `added` (installed header blobs, as
        copa.pkg.rpm.header.installed_header makes them) installed, as rpm -U leaves it: each new header takes
        the next instance number, in order."""
        unknown = [h for h in removed if h not in self.headers]
        if unknown:
            raise UnsupportedImageError(f"/{self.directory}: no installed header {unknown[0]} to remove")
        tagged: list[tuple[bytes, Tags]] = [(blob, HeaderTags(Header.parse(blob, "new installed header")))
                                            for blob in added]
        if self.backend == "sqlite":
            return self._upgrade_sqlite(removed, tagged)
        if self.backend == "ndb":
            return self._upgrade_ndb(removed, added)
        return self._upgrade_bdb(removed, tagged)

    def _is_bdb(self, name: str) -> bool:
        from copa.pkg.rpm.rpmdb import bdb

        head = self.others_heads.get(name, b"")
        return len(head) >= 16 and any(struct.unpack_from(e + "I", head, 12)[0] in (bdb.HASH_MAGIC, bdb.BTREE_MAGIC)
                                       for e in "<>")

    def _path(self, name: str) -> str:
        return f"{self.directory}/{name}"

    def _upgrade_sqlite(self, removed: Sequence[int], added: Sequence[tuple[bytes, Tags]]) -> Change:
        wal = self.files.get(SQLITE + "-wal")
        data, hnums = sqlite.write_upgrade(self.files[SQLITE], wal, removed, added, "/" + self._path(SQLITE))
        gone = tuple(self._path(n) for n in (SQLITE + "-shm", SQLITE + "-wal") if n in self.others or n in self.files)
        return Change(((self._path(SQLITE), data, self.modes.get(SQLITE, 0o644)),), gone, tuple(hnums))

    def _upgrade_ndb(self, removed: Sequence[int], added: Sequence[bytes]) -> Change:
        from copa.pkg.rpm.rpmdb import ndb

        blobs, generation, next_index = ndb.read_packages(self.files[NDB], "/" + self._path(NDB))
        for hnum in removed:
            del blobs[hnum]
        hnums = list(range(next_index, next_index + len(added)))
        blobs.update(zip(hnums, added, strict=True))
        data = ndb.write_packages(blobs, generation + 1, next_index + len(added))
        # Index.db is stamped with the generation it was built from: rpm rebuilds it when it is missing.
        gone = tuple(self._path(n) for n in (NDB_INDEX,) if n in self.others)
        return Change(((self._path(NDB), data, self.modes.get(NDB, 0o644)),), gone, tuple(hnums))

    def _upgrade_bdb(self, removed: Sequence[int], added: Sequence[tuple[bytes, Tags]]) -> Change:
        from copa.pkg.rpm.rpmdb import bdb

        e = self.endian
        what = "/" + self._path(PACKAGES)
        packages = bdb.read_hash(self.files[PACKAGES], what)
        zero = struct.pack(e + "I", 0)
        # Key 0 holds the last instance number given out; rpm takes the next one for each new header.
        last = struct.unpack(e + "I", packages[zero])[0] if len(packages.get(zero, b"")) == 4 else max(
            self.headers, default=0)
        hnums: list[int] = []
        for blob, _tags in added:
            last += 1
            hnums.append(last)
            packages[struct.pack(e + "I", last)] = blob
        packages[zero] = struct.pack(e + "I", last)
        for hnum in removed:
            del packages[struct.pack(e + "I", hnum)]
        out = [(self._path(PACKAGES), bdb.write_hash(packages, bdb.read_meta(self.files[PACKAGES], what)),
                self.modes.get(PACKAGES, 0o644))]
        gone = set(removed)
        for ix in INDEXES:
            raw = self.files.get(ix.name)
            if raw is None:
                continue  # rpm builds a missing index itself on its next open
            ix_what = "/" + self._path(ix.name)
            items = bdb.read_btree(raw, ix_what)
            changed: dict[bytes, list[tuple[int, int]]] = {}
            for key, value in items.items():
                pairs = list(bdb.pairs(value, e, ix_what))
                kept = [p for p in pairs if p[0] not in gone]
                if len(kept) != len(pairs):
                    changed[key] = kept
            for hnum, (_blob, tags) in zip(hnums, added, strict=True):
                for key, idx in index_keys(tags, ix, e):
                    if key not in changed:
                        changed[key] = list(bdb.pairs(items.get(key, b""), e, ix_what))
                    changed[key].append((hnum, idx))
            for key, pairs in changed.items():
                if pairs:
                    items[key] = bdb.pack_pairs(sorted(set(pairs)), e)  # rpm keeps a set sorted (hdrNumCmp)
                else:
                    items.pop(key, None)
            out.append((self._path(ix.name), bdb.write_btree(items, bdb.read_meta(raw, ix_what)),
                        self.modes.get(ix.name, 0o644)))
        known = {PACKAGES} | {ix.name for ix in INDEXES}
        for name in self.others:
            if name not in known and not name.startswith("__db.") and self._is_bdb(name):
                # An index only an older rpm kept (Filedigests, Pubkeys, ...): it would go stale.
                raise UnsupportedImageError(f"/{self._path(name)}: an rpm index copa does not know; the image's "
                                            "rpm is older than copa supports (RHEL/CentOS 7 and later are)")
        env = tuple(self._path(n) for n in self.others if n.startswith("__db."))
        return Change(tuple(out), env, tuple(hnums))


def find_directory(view: View, dbpath: str | None = None) -> str:
    """The real path of the directory holding the image's rpm database: `dbpath` when the caller knows it (the
    image's %_dbpath), else the first of DB_DIRS that has one."""
    for d in (dbpath.strip("/"),) if dbpath else DB_DIRS:
        real = view.resolve(d)
        node = view.get(real)
        if node is None or node.kind != "dir":
            continue
        if any(view.get(f"{real}/{n}") is not None for n in (SQLITE, PACKAGES, NDB)):
            return real
    where = f"/{dbpath.strip('/')}" if dbpath else "/var/lib/rpm or /usr/lib/sysimage/rpm"
    raise UnsupportedImageError(f"image has no rpm database in {where}")


def read_database(view: View, dbpath: str | None = None) -> RpmDatabase:
    directory = find_directory(view, dbpath)
    # The directory's own files, from the view's sorted paths (testing the dirname of every path of the image took
    # ~10 ms on a 30 000-path image, at every plan).
    below = len(directory) + 1
    names = [p[below:] for p in view.paths_below(directory)
             if "/" not in p[below:] and view.nodes[p].kind in ("file", "hardlink")]
    files: dict[str, bytes] = {}
    modes: dict[str, int] = {}

    def need(name: str) -> bytes:
        data = view.read(f"{directory}/{name}")
        if data is None:
            raise UnsupportedImageError(f"/{directory}/{name} was not read from the image (too large?); "
                                        "copa cannot patch this rpm database")
        files[name] = data
        node = view.get(f"{directory}/{name}")
        modes[name] = node.mode & 0o7777 if node is not None else 0o644
        return data

    if SQLITE in names:
        need(SQLITE)
        if SQLITE + "-wal" in names:
            need(SQLITE + "-wal")
        blobs = sqlite.read_headers(files[SQLITE], files.get(SQLITE + "-wal") or None, f"/{directory}/{SQLITE}")
        return RpmDatabase(directory, "sqlite", files, modes, tuple(n for n in names if n not in files), blobs)
    if PACKAGES in names:
        from copa.pkg.rpm.rpmdb import bdb

        data = need(PACKAGES)
        what = f"/{directory}/{PACKAGES}"
        meta = bdb.read_meta(data, what)
        for ix in INDEXES:
            if ix.name in names:
                need(ix.name)
        headers: dict[int, bytes] = {}
        for key, blob in bdb.read_hash(data, what).items():
            if len(key) != 4:
                raise UnsupportedImageError(f"{what}: a key of {len(key)} bytes; the rpm database is damaged")
            hnum = struct.unpack(meta.endian + "I", key)[0]
            if hnum:  # key 0 holds the last instance number, not a header
                headers[hnum] = blob
        others = tuple(n for n in names if n not in files)
        heads = {n: (view.read(f"{directory}/{n}") or b"")[:64] for n in others}
        return RpmDatabase(directory, "bdb", files, modes, others, headers, meta.endian, heads)
    from copa.pkg.rpm.rpmdb import ndb

    need(NDB)
    blobs, _generation, _next = ndb.read_packages(files[NDB], f"/{directory}/{NDB}")
    return RpmDatabase(directory, "ndb", files, modes, tuple(n for n in names if n not in files), blobs)
