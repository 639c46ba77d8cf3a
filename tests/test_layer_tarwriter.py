"""The layer's tar writer (copa.oci.layer._TarWriter) against tarfile's stream writer, which wrote every layer before
it: the same bytes for the same members (the layer digest must not move with the writer)."""

from __future__ import annotations

import io
import random
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from copa.oci.layer import _TarWriter


def _members(rng: random.Random) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    out: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for i in range(rng.randint(1, 60)):
        name = "/".join(rng.choice(["usr", "lib", "é", "n" * rng.choice([3, 120])]) for _ in range(rng.randint(0, 4)))
        info = tarfile.TarInfo(f"{name}/f{i}" if name else f"f{i}")
        info.mtime = rng.choice([0, 1700000000, 2**33])
        info.mode = rng.choice([0o644, 0o755, 0o4755])
        info.uid, info.gid = rng.choice([(0, 0), (1000, 1000), (2**22, 7)])
        info.uname, info.gname = rng.choice([("", ""), ("root", "root"), ("ü", "g")])
        if rng.random() < 0.2:
            info.pax_headers = {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}
        kind = rng.choice(["file", "file", "dir", "sym", "link"])
        data: bytes | None = None
        if kind == "file":
            data = rng.randbytes(rng.choice([0, 1, 511, 512, 513, 10240, 70000, (1 << 20) + 3]))
            info.size = len(data)
        elif kind == "dir":
            info.type = tarfile.DIRTYPE
        elif kind == "sym":
            info.type, info.linkname = tarfile.SYMTYPE, "../" + "t" * rng.choice([3, 150])
        else:
            info.type, info.linkname = tarfile.LNKTYPE, "f0"
        out.append((info, data))
    return out


@pytest.mark.parametrize("seed", range(8))
def test_same_bytes_as_tarfile(seed: int) -> None:
    members = _members(random.Random(seed))
    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    got = io.BytesIO()
    writer = _TarWriter(got)
    for info, data in members:
        writer.add(info, io.BytesIO(data) if data is not None else None)
    writer.close()
    assert got.getvalue() == expected.getvalue()


def test_content_shorter_than_declared_is_refused() -> None:
    from copa.errors import UnsafePathError

    info = tarfile.TarInfo("f")
    info.size = 10
    with pytest.raises(UnsafePathError, match="shorter than its declared size"):
        _TarWriter(io.BytesIO()).add(info, io.BytesIO(b"12345"))


# == the parallel gzip writer =====================================================================================


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from([0, 1, 511, 1 << 19, (1 << 20) - 1, 1 << 20, (1 << 20) + 7, 3 << 19]), max_size=6),
       st.integers(min_value=0, max_value=2**32))
def test_parallel_gzip_is_fixed_blocks_whatever_the_writes(cuts: list[int], seed: int) -> None:
    """However the stream is cut into writes (bytes, bytearrays, views; empty ones; pieces across block
    boundaries), the output is the gzip member of each fixed-size block of it, in order: what the layer's
    determinism rests on."""
    from isal import igzip

    from copa.oci.layer import _GZIP_BLOCK, _GZIP_LEVEL, _ParallelGzip

    rnd = random.Random(seed)
    data = rnd.randbytes(sum(cuts))
    out = io.BytesIO()
    gz = _ParallelGzip(out)
    pos = 0
    for n in cuts:
        piece = data[pos:pos + n]
        gz.write(rnd.choice([bytes, bytearray, memoryview])(piece))
        pos += n
    gz.close()
    blocks = [data[i:i + _GZIP_BLOCK] for i in range(0, len(data), _GZIP_BLOCK)] or [b""]
    assert out.getvalue() == b"".join(igzip.compress(b, _GZIP_LEVEL, mtime=0) for b in blocks)


def test_parallel_gzip_adds_no_empty_member_after_blocks_already_written() -> None:
    """A stream of whole blocks whose last one was compressed and written out before close: close adds nothing (an
    extra empty member there made the layer's bytes depend on the threads' timing). An empty stream is one empty
    member."""
    import time

    from isal import igzip

    from copa.oci.layer import _GZIP_BLOCK, _GZIP_LEVEL, _ParallelGzip

    data = bytes(range(256)) * (_GZIP_BLOCK // 256)
    out = io.BytesIO()
    gz = _ParallelGzip(out)
    gz.write(data)
    deadline = time.monotonic() + 10
    while not out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
        gz.write(b"")  # (a write hands what is compressed to the file)
    assert out.getvalue(), "the block was not written out before close"
    gz.close()
    assert out.getvalue() == igzip.compress(data, _GZIP_LEVEL, mtime=0)
    empty = io.BytesIO()
    _ParallelGzip(empty).close()
    assert empty.getvalue() == igzip.compress(b"", _GZIP_LEVEL, mtime=0)
