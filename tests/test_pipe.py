"""copa.oci.pipe.ReadAheadStream: the bytes of its source in order, the source's errors raised at the read that
meets them, and a consumer that stops early stops the reader thread (nothing left running against a closed blob)."""

from __future__ import annotations

import io
import random
import threading

import pytest

from copa.oci.pipe import ReadAheadStream


class _Failing(io.RawIOBase):
    def __init__(self, good: bytes) -> None:
        self._good = io.BytesIO(good)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._good.read(n)
        if not data:
            raise OSError("the blob broke off")
        return data


class _Endless(io.RawIOBase):
    def __init__(self) -> None:
        self.reads = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        self.reads += 1
        return b"x" * (n if n > 0 else 1)


def test_same_bytes_any_read_size() -> None:
    rng = random.Random(3)
    data = rng.randbytes(3_000_000)
    with ReadAheadStream(io.BytesIO(data), chunk=65536) as s:  # type: ignore[arg-type]
        got = []
        while chunk := s.read(rng.choice([1, 511, 4096, 70000, 1 << 20])):
            got.append(chunk)
    assert b"".join(got) == data
    with ReadAheadStream(io.BytesIO(data)) as s:  # type: ignore[arg-type]
        assert s.read() == data


def test_source_errors_reach_the_consumer_after_what_came_before() -> None:
    with ReadAheadStream(_Failing(b"a" * 100), chunk=40) as s:  # type: ignore[arg-type]
        assert s.read(100) + s.read(100) + s.read(100) == b"a" * 100
        with pytest.raises(OSError, match="broke off"):
            s.read(10)


def test_an_early_stop_ends_the_reader_and_bounds_what_it_read() -> None:
    source = _Endless()
    before = threading.active_count()
    with ReadAheadStream(source, chunk=1024, depth=4) as s:  # type: ignore[arg-type]
        assert s.read(10) == b"x" * 10
    assert threading.active_count() == before
    assert source.reads < 20  # a few chunks ahead, not the whole endless stream
