"""The layer writer, checked with GNU tar as the independent reader."""

import gzip
import hashlib
import io
import os
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from copa.errors import LocalIOError, UnsafePathError
from copa.oci.layer import Compression, Entry, Kind, ParentCheck, write_layer


def _entries() -> list[Entry]:
    return [
        Entry("usr/bin/tool", Kind.FILE, 0o755, size=5, content=lambda: io.BytesIO(b"hello"), mtime=1000),
        Entry("usr/", Kind.DIR, 0o755),
        Entry("usr/bin", Kind.DIR, 0o755),
        Entry("usr/bin/alias", Kind.SYMLINK, 0o777, linkname="tool"),
        Entry("usr/bin/hard", Kind.HARDLINK, 0o755, linkname="usr/bin/tool"),
        Entry.whiteout("etc/removed.conf"),
        Entry.file("./etc/new.conf", b"x=1\n", 0o600),
        Entry("var/lib/owned", Kind.FILE, 0o640, uid=101, gid=102, size=3, content=lambda: io.BytesIO(b"abc")),
    ]


def test_layer_is_what_gnu_tar_reads(tmp_path: Path) -> None:
    blob = write_layer(_entries(), tmp_path, default_mtime=42)
    data = blob.path.read_bytes()
    assert blob.digest.hex == hashlib.sha256(data).hexdigest() and blob.size == len(data)
    raw = gzip.decompress(data)
    assert blob.diff_id.hex == hashlib.sha256(raw).hexdigest()
    listing = subprocess.run(["tar", "-tvzf", str(blob.path), "--numeric-owner"], check=True,
                             capture_output=True, text=True).stdout.splitlines()
    names = [line.split()[5] for line in listing]
    # Sorted, except that a hardlink follows its target.
    assert names == ["etc/.wh.removed.conf", "etc/new.conf", "usr/", "usr/bin/", "usr/bin/alias", "usr/bin/tool",
                     "usr/bin/hard", "var/lib/owned"]
    by_name = {line.split()[5]: line for line in listing}
    assert by_name["usr/bin/tool"].startswith("-rwxr-xr-x 0/0")
    assert by_name["var/lib/owned"].startswith("-rw-r----- 101/102")
    assert "usr/bin/alias -> tool" in by_name["usr/bin/alias"]
    assert "link to usr/bin/tool" in by_name["usr/bin/hard"]
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "-xzf", str(blob.path), "-C", str(out)], check=True)
    assert (out / "usr/bin/tool").read_bytes() == b"hello"
    with tarfile.open(blob.path) as tar:
        assert tar.getmember("usr/bin/tool").mtime == 1000
        assert tar.getmember("etc/new.conf").mtime == 42


def test_same_input_same_digest(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_layer(_entries(), tmp_path / "a")
    second = write_layer(list(reversed(_entries())), tmp_path / "b")
    assert first.digest == second.digest and first.diff_id == second.diff_id


def test_zstd_and_clamp(tmp_path: Path) -> None:
    blob = write_layer(_entries(), tmp_path, compression=Compression.ZSTD, default_mtime=5000, clamp_mtime=100)
    raw = zstandard.ZstdDecompressor().stream_reader(blob.path.open("rb")).read()
    assert blob.diff_id.hex == hashlib.sha256(raw).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        assert {m.mtime for m in tar.getmembers()} == {100}


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([Entry.file("../etc/passwd", b"x")], "climbs out"),
        ([Entry.file("usr/../../x", b"x")], "climbs out"),
        ([Entry("a", Kind.SYMLINK, linkname="/etc"), Entry.file("a/passwd", b"x")], "through the symlink"),
        ([Entry.file("x", b"1"), Entry.file("./x", b"2")], "twice"),
        ([Entry("h", Kind.HARDLINK, linkname="../../etc/shadow")], "climbs out"),
    ],
)
def test_unsafe_paths_are_refused(tmp_path: Path, entries: list[Entry], message: str) -> None:
    with pytest.raises(UnsafePathError, match=message) as e:
        write_layer(entries, tmp_path)
    assert e.value.exit_code == 5
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_base_symlinks_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafePathError, match="through the symlink 'lib'"):
        write_layer([Entry.file("lib/x.so", b"x")], tmp_path, is_base_symlink=lambda p: p == "lib")


def _gzip_workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("copa-gzip")]


def _big(path: str, size: int, data: bytes | None = None) -> Entry:
    payload = data if data is not None else os.urandom(size)  # incompressible: fills the disk as written
    return Entry(path, Kind.FILE, 0o644, size=size, content=lambda: io.BytesIO(payload))


def test_failed_layer_leaves_nothing_behind(tmp_path: Path) -> None:
    # The second file is shorter than it claims: the write fails midway, after the gzip workers started.
    entries = [_big("a/big", 3 << 20), _big("b/short", 100, b"only ten b")]
    with pytest.raises(UnsafePathError, match="shorter"):
        write_layer(entries, tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert _gzip_workers() == []


def test_full_disk_is_a_local_error(tmp_path: Path) -> None:
    """A real full file system (a 1 MiB tmpfs): exit 8 with a hint, no half-written layer, no workers left."""
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        with pytest.raises(LocalIOError, match="free space") as err:
            write_layer([_big("a/big", 4 << 20)], small)
        assert err.value.exit_code == 8
        assert list(small.iterdir()) == []
        assert _gzip_workers() == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


_PARTS = st.sampled_from(["a", "b", "c"])
_PATHS = st.lists(_PARTS, min_size=1, max_size=5).map("/".join)


@settings(max_examples=300, deadline=None)
@given(kinds=st.dictionaries(_PATHS, st.sampled_from(["dir", "file", "symlink", "fifo"]), max_size=12),
       paths=st.lists(_PATHS, max_size=30))
def test_parent_check_refuses_what_the_plain_walk_refuses(kinds: dict[str, str], paths: list[str]) -> None:
    # The oracle: every ancestor looked up, every time. The check remembers directories found fine; the answer
    # for each path, in any order, must not depend on that.
    def plain(path: str) -> str | None:
        parts = path.split("/")
        for i in range(len(parts) - 1, 0, -1):
            parent = "/".join(parts[:i])
            kind = kinds.get(parent)
            if kind is not None and kind != "dir":
                return f"x /{path} would go below /{parent}, which is not a directory in the image (a {kind}); " \
                       "refusing it"
        return None

    check = ParentCheck(kinds.get)
    for path in paths:
        expected = plain(path)
        if expected is None:
            check(path, "x")
        else:
            with pytest.raises(UnsafePathError) as e:
                check(path, "x")
            assert str(e.value) == expected
