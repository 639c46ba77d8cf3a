"""copa.pkg.rpm.rpmdb.sqlite against real rpm: packages built by rpmbuild, installed by rpm into temporary roots.

The upgrade test gives copa the installed header a real `rpm -U` wrote (so it compares database mechanics, not
header building) and checks the result against that rpm's database table by table, then lets rpm query and
verify it. This module also holds the rpmbuild/rpm helpers and a private header reader the BerkeleyDB tests use.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sqlite3
import struct
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from copa.errors import UnsupportedImageError
from copa.pkg.rpm.rpmdb import sqlite as rpmsqlite
from copa.pkg.rpm.rpmdb.indexes import INDEXES

pytestmark = pytest.mark.skipif(shutil.which("rpmbuild") is None or shutil.which("rpm") is None,
                                reason="needs rpm and rpmbuild (scripts/setup installs them)")

DBPATH = "/var/lib/rpm"

FOO_SPEC = """\
Name: foo
Version: %{ver}
Release: 1
Summary: test
License: MIT
Group: Applications/Test
BuildArch: noarch
AutoReqProv: no
Provides: foo-cap = %{ver}
Provides: libfoo.so.1()(64bit)
Requires: bar >= 1
Requires(pre): /bin/sh
Requires(post): baz
Requires(preun): qux
Conflicts: oldfoo
Obsoletes: foo-legacy < 1
Recommends: rec1
Suggests: sug1
Supplements: sup1
Enhances: enh1
%description
test
%install
mkdir -p %{buildroot}/usr/bin %{buildroot}/etc/foo %{buildroot}/usr/share/foo/a %{buildroot}/usr/share/foo/b
echo v%{ver} > %{buildroot}/usr/bin/foo
echo conf > %{buildroot}/etc/foo/foo.conf
echo a > %{buildroot}/usr/share/foo/a/same
echo b > %{buildroot}/usr/share/foo/b/same
for i in $(seq 1 0%{?extra}); do
  echo $i > %{buildroot}/usr/share/foo/a/file-with-a-long-name-$i
  mkdir %{buildroot}/usr/share/foo/d$i && echo $i > %{buildroot}/usr/share/foo/d$i/same
done
%triggerin -- bar
true
%triggerun -- bar
true
%triggerin -- baz
true
%filetriggerin -- /usr/lib
true
%transfiletriggerin -- /usr/share
true
%files
/usr/bin/foo
%config /etc/foo/foo.conf
/usr/share/foo
"""

BAR_SPEC = """\
Name: bar
Version: 1.0
Release: 1
Summary: bar
License: MIT
BuildArch: noarch
AutoReqProv: no
%description
bar
%install
mkdir -p %{buildroot}/usr/bin
echo bar > %{buildroot}/usr/bin/bar
%files
/usr/bin/bar
"""


def rpmbuild(top: Path, spec: str, name: str, **defines: str) -> Path:
    top.mkdir(parents=True, exist_ok=True)
    spec_path = top / f"{name}.spec"
    spec_path.write_text(spec)
    # No post-install processing (strip, build ids, byte-compiling): seconds saved, nothing to compare lost.
    args = ["rpmbuild", "-bb", "--define", f"_topdir {top}", "--define", "_binary_payload w.gzdio",
            "--define", "__spec_install_post %{nil}", "--define", "_build_id_links none"]
    for key, value in defines.items():
        args += ["--define", f"{key} {value}"]
    subprocess.run([*args, str(spec_path)], check=True, capture_output=True)
    version = defines.get("ver", "1.0")
    return top / "RPMS" / "noarch" / f"{name}-{version}-1.noarch.rpm"


def rpm(root: Path, *args: str, backend: str | None = None, check: bool = True) -> str:
    cmd = ["rpm", "--root", str(root), "--dbpath", DBPATH]
    if backend:
        cmd += ["--define", f"_db_backend {backend}"]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd + list(args)}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def install(root: Path, *packages: Path, upgrade: bool = False) -> None:
    # No scripts: the temporary roots have no shell; the database is what is being compared.
    rpm(root, "-U" if upgrade else "-i", "--nodeps", "--noscripts", "--notriggers", *map(str, packages))


def _memory_dir() -> str | None:
    # rpm and rpmbuild fsync every file and database page: on a tmpfs the roots cost a tenth of the time.
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@pytest.fixture()
def fast_tmp(tmp_path: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="copa-rpmdb-", dir=_memory_dir() or tmp_path) as d:
        yield Path(d)


_BUILT: dict[str, Path] = {}


def _build_packages() -> dict[str, Path]:
    """Built once per test process: the three rpm test modules import this fixture, and pytest would give each
    module its own copy of a session fixture."""
    if not _BUILT:
        top = Path(tempfile.mkdtemp(prefix="copa-rpmbuild-", dir=_memory_dir()))
        atexit.register(shutil.rmtree, top, True)
        _BUILT.update({
            "bar": rpmbuild(top, BAR_SPEC, "bar"),
            "foo1": rpmbuild(top, FOO_SPEC, "foo", ver="1.0", extra="150"),
            "foo2": rpmbuild(top, FOO_SPEC, "foo", ver="2.0", extra="20"),
        })
    return dict(_BUILT)


@pytest.fixture(scope="session")
def packages() -> dict[str, Path]:
    return _build_packages()


# A private, minimal reader of installed header blobs for the tests: copa's own is copa.pkg.rpm.header.
_STRING, _BIN, _STRING_ARRAY, _I18N = 6, 7, 8, 9


class BlobTags:
    def __init__(self, blob: bytes) -> None:
        il, dl = struct.unpack(">II", blob[:8])
        store = blob[8 + 16 * il:]
        assert len(store) == dl
        self.entries: dict[int, tuple[int, int, int]] = {}
        self.store = store
        for i in range(il):
            tag, typ, off, count = struct.unpack(">IIiI", blob[8 + 16 * i:24 + 16 * i])
            self.entries[tag] = (typ, off, count)

    def index_values(self, tag: int) -> Sequence[bytes] | Sequence[int] | None:
        if tag not in self.entries:
            return None
        typ, off, count = self.entries[tag]
        if typ in (_STRING, _STRING_ARRAY, _I18N):
            out: list[bytes] = []
            pos = off
            for _ in range(count if typ != _STRING else 1):
                end = self.store.index(b"\0", pos)
                out.append(self.store[pos:end])
                pos = end + 1
            return out[:1] if typ == _I18N else out
        if typ == _BIN:
            return [self.store[off:off + count]]
        if typ == 4:
            return list(struct.unpack(f">{count}I", self.store[off:off + 4 * count]))
        raise AssertionError(f"tag {tag} type {typ}")

    def string(self, tag: int) -> str:
        values = self.index_values(tag)
        return values[0].decode() if values and isinstance(values[0], bytes) else ""

    def nevra(self) -> tuple[str, str, str, str, str]:
        epoch = self.index_values(1003)
        return (self.string(1000), str(epoch[0]) if epoch else "", self.string(1001), self.string(1002),
                self.string(1022))


def qa(root: Path, backend: str | None = None) -> set[tuple[str, ...]]:
    out = rpm(root, "-qa", "--qf", r"%{NAME} %{EPOCH} %{VERSION} %{RELEASE} %{ARCH}\n", backend=backend)
    return {tuple("" if f == "(none)" else f for f in line.split(" ")) for line in out.splitlines()}


def table_rows(db: Path) -> dict[str, set[tuple[object, ...]]]:
    conn = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
    conn.text_factory = bytes
    try:
        out = {ix.name: set(conn.execute(f"SELECT key, typeof(key), hnum, idx FROM '{ix.name}'"))
               for ix in INDEXES}
        out["Packages"] = set(conn.execute("SELECT hnum, blob FROM Packages"))
        out["sqlite_sequence"] = set(conn.execute("SELECT * FROM sqlite_sequence"))
    finally:
        conn.close()
    return out


@pytest.fixture()
def roots(fast_tmp: Path, packages: dict[str, Path]) -> tuple[Path, Path]:
    """(before, after): bar and foo-1.0 installed; the same upgraded to foo-2.0 by rpm -U."""
    before = fast_tmp / "before"
    install(before, packages["bar"], packages["foo1"])
    after = fast_tmp / "after"
    shutil.copytree(before, after, symlinks=True)
    install(after, packages["foo2"], upgrade=True)
    return before, after


def test_read_matches_rpm_qa(roots: tuple[Path, Path]) -> None:
    before, _ = roots
    db = before / DBPATH.lstrip("/") / "rpmdb.sqlite"
    headers = rpmsqlite.read_headers(db.read_bytes())
    assert sorted(headers) == [1, 2]
    assert {BlobTags(b).nevra() for b in headers.values()} == qa(before)


def test_upgrade_equals_rpm_U(roots: tuple[Path, Path], fast_tmp: Path) -> None:
    before, after = roots
    dbdir = DBPATH.lstrip("/")
    old = rpmsqlite.read_headers((before / dbdir / "rpmdb.sqlite").read_bytes())
    new = rpmsqlite.read_headers((after / dbdir / "rpmdb.sqlite").read_bytes())
    foo1 = next(h for h, b in old.items() if BlobTags(b).string(1000) == "foo")
    blob = new[max(new)]
    data, hnums = rpmsqlite.write_upgrade((before / dbdir / "rpmdb.sqlite").read_bytes(), None, [foo1],
                                          [(blob, BlobTags(blob))])
    assert hnums == [3]
    # Same inputs, same bytes: the layer's digest depends on it.
    again = rpmsqlite.write_upgrade((before / dbdir / "rpmdb.sqlite").read_bytes(), None, [foo1],
                                    [(blob, BlobTags(blob))])
    assert again == (data, hnums)
    # The patched root: rpm -U's files with copa's database.
    ours = fast_tmp / "ours"
    shutil.copytree(after, ours, symlinks=True)
    for f in (ours / dbdir).iterdir():
        f.unlink()
    (ours / dbdir / "rpmdb.sqlite").write_bytes(data)
    assert table_rows(ours / dbdir / "rpmdb.sqlite") == table_rows(after / dbdir / "rpmdb.sqlite")
    conn = sqlite3.connect(f"file:{ours / dbdir / 'rpmdb.sqlite'}?immutable=1", uri=True)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    assert qa(ours) == qa(after) == {("bar", "", "1.0", "1", "noarch"), ("foo", "", "2.0", "1", "noarch")}
    assert rpm(ours, "-q", "--whatprovides", "libfoo.so.1()(64bit)").split() == ["foo-2.0-1.noarch"]
    assert rpm(ours, "-q", "--whatrequires", "bar").split() == ["foo-2.0-1.noarch"]
    assert rpm(ours, "-qf", "/usr/share/foo/b/same").split() == ["foo-2.0-1.noarch"]
    assert rpm(ours, "-qf", "/usr/share/foo/a/file-with-a-long-name-20").split() == ["foo-2.0-1.noarch"]
    assert "foo" not in rpm(ours, "-qf", "/usr/share/foo/a/file-with-a-long-name-150", check=False)
    rpm(ours, "-V", "--nodeps", "foo", "bar")
    subprocess.run(["rpmdb", "--root", str(ours), "--dbpath", DBPATH, "--verifydb"], check=True)
    # rpm's own reopen leaves the tables as they were.
    assert table_rows(ours / dbdir / "rpmdb.sqlite") == table_rows(after / dbdir / "rpmdb.sqlite")


def test_instance_numbers_are_never_reused(roots: tuple[Path, Path], packages: dict[str, Path]) -> None:
    """rpm -e of the newest package leaves its number used: the next install takes the one after (sqlite's
    AUTOINCREMENT sequence, not MAX(hnum) + 1), as rpm does."""
    before, after = roots
    dbdir = DBPATH.lstrip("/")
    rpm(before, "-e", "--nodeps", "--noscripts", "foo")
    blob = rpmsqlite.read_headers((after / dbdir / "rpmdb.sqlite").read_bytes())[3]
    _data, hnums = rpmsqlite.write_upgrade((before / dbdir / "rpmdb.sqlite").read_bytes(), None, [],
                                           [(blob, BlobTags(blob))])
    install(before, packages["foo2"])
    assert hnums == [3] and sorted(rpmsqlite.read_headers((before / dbdir / "rpmdb.sqlite").read_bytes())) == [1, 3]


def test_integer_keys_follow_the_images_byte_order(roots: tuple[Path, Path]) -> None:
    """An s390x image's rpm wrote Installtid keys big-endian: new rows follow the rows already there."""
    before, after = roots
    db = before / DBPATH.lstrip("/") / "rpmdb.sqlite"
    conn = sqlite3.connect(db)
    for key, hnum in conn.execute("SELECT key, hnum FROM Installtid").fetchall():
        conn.execute("UPDATE Installtid SET key = ? WHERE hnum = ?", (bytes(reversed(key)), hnum))
    conn.commit()
    conn.close()
    blob = rpmsqlite.read_headers((after / DBPATH.lstrip("/") / "rpmdb.sqlite").read_bytes())[3]
    tid = BlobTags(blob).index_values(1128)
    assert tid and isinstance(tid[0], int)
    data, _ = rpmsqlite.write_upgrade(db.read_bytes(), None, [], [(blob, BlobTags(blob))])
    db.write_bytes(data)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT key FROM Installtid WHERE hnum = 3").fetchall() == [(struct.pack(">I", tid[0]),)]
    conn.close()


def test_damaged_database_is_exit_6() -> None:
    with pytest.raises(UnsupportedImageError) as err:
        rpmsqlite.read_headers(b"SQLite format 3\x00" + b"\xff" * 5000)
    assert err.value.exit_code == 6 and "\n" not in err.value.message
    with pytest.raises(UnsupportedImageError):
        rpmsqlite.read_headers(b"not a database")
