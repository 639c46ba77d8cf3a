"""copa.oci.tarstream against the oracles: Python's tarfile (what copa read every layer and package with before) and
GNU tar, member for member, over generated archives in every format and archives GNU tar itself writes."""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from copa.oci.tarstream import TarFormatError, TarStream, _checksum_ok

FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}


def _oracle(data: bytes) -> list[tuple[object, ...]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
        for m in tar:
            f = tar.extractfile(m) if m.isreg() else None
            out.append((m.name, m.type.decode("latin-1"), m.mode, m.uid, m.gid, m.size, int(m.mtime), m.linkname,
                        m.uname, m.gname, f.read() if f is not None else None))
    return out


def _ours(data: bytes, chunked: bool = False) -> list[tuple[object, ...]]:
    source: io.RawIOBase = _Trickle(data) if chunked else io.BytesIO(data)
    out = []
    with TarStream(source) as tar:  # type: ignore[arg-type]
        for m in tar:
            f = tar.extractfile(m)
            out.append((m.name, m.type, m.mode, m.uid, m.gid, m.size, int(m.mtime), m.linkname, m.uname, m.gname,
                        f.read() if f is not None else None))
    return out


class _Trickle(io.RawIOBase):
    """A source that returns at most a few hundred bytes a read: every boundary case of the buffer is met."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos, self._rng = data, 0, random.Random(len(data))

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = min(n if n >= 0 else len(self._data), self._rng.randint(1, 700))
        out = self._data[self._pos:self._pos + n]
        self._pos += len(out)
        return out

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


def _random_archive(rng: random.Random, fmt: int) -> bytes:
    buf = io.BytesIO()
    names: list[str] = []
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
        for i in range(rng.randint(1, 40)):
            depth = rng.randint(0, 6)
            parts = [rng.choice(["usr", "lib", "x" * rng.randint(1, 90), "é", "dir.d", "a b", "n\udcff"])
                     for _ in range(depth)]
            name = "/".join([*parts, f"f{i}-" + "y" * rng.choice([1, 5, 60, 120])])
            if fmt == tarfile.USTAR_FORMAT and (len(name.encode("utf-8", "surrogateescape")) > 250
                                                 or any(len(p) > 99 for p in name.split("/"))):
                name = f"short/{i}"
            if fmt != tarfile.PAX_FORMAT and "\udcff" in name and fmt == tarfile.USTAR_FORMAT:
                name = name.replace("\udcff", "z")
            kind = rng.choice(["file", "file", "file", "dir", "sym", "link", "fifo", "chr"])
            info = tarfile.TarInfo(name)
            info.mode = rng.choice([0o644, 0o755, 0o4755, 0o600, 0o1777])
            info.uid = rng.choice([0, 1000, 65534] + ([2**21, 2**30] if fmt != tarfile.USTAR_FORMAT else []))
            info.gid = rng.choice([0, 50, 100000 if fmt != tarfile.USTAR_FORMAT else 7])
            info.uname = rng.choice(["", "root", "ü" * 3 if fmt == tarfile.PAX_FORMAT else "bin"])
            info.gname = rng.choice(["", "staff"])
            info.mtime = rng.choice([0, 1700000000, 2**33 if fmt != tarfile.USTAR_FORMAT else 12345])
            content = b""
            if kind == "file":
                size = rng.choice([0, 1, 511, 512, 513, 4096, 70000, (1 << 20) + 17])
                content = rng.randbytes(size)
                info.size = size
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "sym":
                info.type = tarfile.SYMTYPE
                info.linkname = rng.choice(["../target", "/abs/" + "t" * rng.choice([5, 150]), "é"])
                if fmt == tarfile.USTAR_FORMAT:
                    info.linkname = info.linkname[:99]
            elif kind == "link" and names:
                info.type = tarfile.LNKTYPE
                info.linkname = rng.choice(names)
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            elif kind == "chr":
                info.type = tarfile.CHRTYPE
                info.devmajor, info.devminor = 1, 3
            if fmt == tarfile.USTAR_FORMAT and len(info.linkname.encode("utf-8", "surrogateescape")) > 99:
                info.linkname = "short/0"
            if fmt == tarfile.USTAR_FORMAT:
                try:
                    info.tobuf(fmt, "utf-8", "surrogateescape")
                except ValueError:  # ustar cannot split this name into prefix and name
                    info.name = f"short/{i}"
            if info.type == tarfile.REGTYPE:
                names.append(name)
            tar.addfile(info, io.BytesIO(content) if info.isreg() else None)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_generated_archives_read_as_tarfile_reads_them(fmt: str) -> None:
    rng = random.Random(f"tarstream-{fmt}")
    for _ in range(60):
        data = _random_archive(rng, FORMATS[fmt])
        expected = _oracle(data)
        assert _ours(data) == expected
        assert _ours(data, chunked=True) == expected


def test_global_pax_headers_and_v7_directories() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"uname": "globaluser", "comment": "x"}) as tar:
        for name in ("a", "b"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    data = buf.getvalue()
    assert _ours(data) == _oracle(data)
    assert {m[8] for m in _ours(data)} == {"globaluser"}
    # v7: a directory is a regular-file header (type NUL) whose name ends in a slash.
    v7 = tarfile.TarInfo("olddir/")
    v7.type = tarfile.AREGTYPE
    raw = v7.tobuf(format=tarfile.USTAR_FORMAT) + bytes(1024)
    assert _ours(raw) == _oracle(raw)
    assert _ours(raw)[0][:2] == ("olddir", "5")


@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar", "v7", "oldgnu"])
def test_archives_gnu_tar_writes(tmp_path: Path, fmt: str) -> None:
    tar_bin = shutil.which("tar")
    if tar_bin is None:
        pytest.skip("GNU tar is not installed")
    tree = tmp_path / "tree"
    rng = random.Random(fmt)
    small = fmt in ("ustar", "v7")  # names and link targets must fit the 100-byte fields
    for i in range(30):
        d = tree / ("deep/" * rng.randint(0, 1 if small else 3)) / ("n" * rng.choice([3] if small else [3, 80]))
        d.mkdir(parents=True, exist_ok=True)
        f = d / f"file{i}" if fmt in ("ustar", "v7") else d / (f"file{i}-" + "L" * rng.choice([1, 120]))
        f.write_bytes(rng.randbytes(rng.choice([0, 100, 5000, 300000])))
        if i % 5 == 0:
            os.symlink("../" + "t" * rng.choice([3, 90 if fmt in ("ustar", "v7") else 200]), d / f"link{i}")
        if i % 7 == 0:
            os.link(f, d / f"hard{i}")
    out = tmp_path / "t.tar"
    proc = subprocess.run([tar_bin, "--format", fmt, "-cf", str(out), "-C", str(tree), "."], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"tar --format {fmt} cannot store this tree: {proc.stderr.strip()}")
    data = out.read_bytes()
    expected = _oracle(data)
    assert len(expected) > 30
    assert _ours(data) == expected
    # And GNU tar's own listing names the same members, in the same order.
    listed = subprocess.run([tar_bin, "-tf", str(out)], capture_output=True, text=True, check=True).stdout.split("\n")
    assert [m[0] for m in _ours(data)] == [n.rstrip("/") for n in listed if n]


def test_refusals() -> None:
    info = tarfile.TarInfo("f")
    info.size = 2000
    good = info.tobuf() + b"x" * 2000 + bytes(48) + bytes(1024)
    assert _ours(good)[0][5] == 2000
    with pytest.raises(TarFormatError, match="truncated"):
        _ours(good[:1500])  # cut inside the content
    with pytest.raises(TarFormatError, match="truncated"):
        _ours(good[:300])  # cut inside the header
    broken = bytearray(good)
    broken[0] ^= 1
    with pytest.raises(TarFormatError, match="checksum"):
        _ours(bytes(broken))
    with pytest.raises(TarFormatError, match="empty"):
        _ours(b"")
    sparse = tarfile.TarInfo("s")
    sparse.type = tarfile.GNUTYPE_SPARSE
    with pytest.raises(TarFormatError, match="sparse"):
        _ours(sparse.tobuf(format=tarfile.GNU_FORMAT) + bytes(1024))
    # A pax header that is not followed by a member, and one with a broken record.
    pax = tarfile.TarInfo("p")
    pax.pax_headers = {"path": "x" * 10}
    head = pax.tobuf(format=tarfile.PAX_FORMAT)
    with pytest.raises(TarFormatError):
        _ours(head[:1024] + bytes(1024))
    # The archive ends without end-of-archive blocks: what was written is read, as tarfile reads it.
    assert _ours(good[:-1024]) == _oracle(good[:-1024])


@settings(max_examples=400, deadline=None)
@given(body=st.binary(min_size=512, max_size=512), which=st.sampled_from(["unsigned", "signed", "other"]),
       bias=st.sampled_from([0, 0x80, 0xFF]))
def test_the_header_checksum_is_the_plain_sum(body: bytes, which: str, bias: int) -> None:
    # The checksum over C's unsigned bytes, or (old tars) signed ones; anything else is refused. Oracle: the
    # definition, summed in Python. `bias` fills the block with high bytes, where the sums differ most.
    block = bytearray(body)
    if bias:
        block[:] = bytes(b | bias for b in block)
    block[148:156] = b" " * 8
    unsigned = sum(block)
    signed = sum(b - 256 if b > 127 else b for b in block)
    stored = {"unsigned": unsigned, "signed": signed, "other": unsigned + 1}[which]
    if stored < 0:
        return  # an octal field holds no negative number
    block[148:156] = b"%06o\0 " % stored
    assert _checksum_ok(bytes(block)) == (stored in (unsigned, signed))
