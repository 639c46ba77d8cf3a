"""copa.pkg.streams.open_slice over copa.openfiles' descriptors: a slice reads what the file holds at those offsets,
however it is read (read(n), read(), readinto, readall), shared descriptor or its own; a file that ends early is
an error (or an early end, without `truncated`); every descriptor is closed when its owner is done."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from copa.openfiles import shared_descriptors
from copa.pkg.streams import open_slice

DATA = os.urandom(200_000)


class Short(Exception):
    pass


@pytest.fixture(scope="module")
def spool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spool") / "data"
    path.write_bytes(DATA)
    return path


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _read_all(f: object, how: list[int]) -> bytes:
    """Read `f` to its end by the mix of calls `how` names (0: readinto, -1: read(), n > 0: read(n))."""
    out = bytearray()
    i = 0
    while True:
        step = how[i % len(how)] if how else -1
        i += 1
        if step == 0:
            buf = bytearray(7919)
            n = f.readinto(buf)  # type: ignore[attr-defined]
            chunk = bytes(buf[:n])
        else:
            chunk = f.read(step)  # type: ignore[attr-defined]
        if not chunk:
            return bytes(out)
        out += chunk


@settings(max_examples=150, deadline=None)
@given(offset=st.integers(0, len(DATA)), size=st.integers(0, 70_000), shared=st.booleans(),
       how=st.lists(st.sampled_from([-1, 0, 3, 511, 4096, 65536, 1 << 20]), max_size=6))
def test_a_slice_reads_the_files_bytes(spool: Path, offset: int, size: int, shared: bool, how: list[int]) -> None:
    expected = DATA[offset:offset + size]
    whole = offset + size <= len(DATA)

    def read(truncated: bool) -> bytes:
        with open_slice(spool, offset, size, (lambda: Short()) if truncated else None) as f:
            return _read_all(f, how)

    def both() -> None:
        assert read(False) == expected  # without `truncated`: ends where the file does
        if whole:
            assert read(True) == expected
        else:
            with pytest.raises(Short):
                read(True)

    if shared:
        with shared_descriptors():
            both()
    else:
        both()


def test_slices_share_one_descriptor_per_file_and_it_is_closed(spool: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_bytes(b"x" * 100)
    before = _open_fds()
    with shared_descriptors():
        slices = [open_slice(p, i, 10) for i in range(50) for p in (spool, other)]
        assert _open_fds() == before + 2
        assert [s.read() for s in slices[:2]] == [DATA[:10], b"x" * 10]
        for s in slices:
            s.close()
        assert _open_fds() == before + 2  # kept until the `with` ends
    assert _open_fds() == before


def test_outside_a_session_each_slice_closes_its_own(spool: Path) -> None:
    before = _open_fds()
    slices = [open_slice(spool, i, 10) for i in range(20)]
    assert _open_fds() == before + 20
    for s in slices:
        s.close()
        s.close()  # twice is harmless
    assert _open_fds() == before


def test_a_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), shared_descriptors():
        open_slice(tmp_path / "gone", 0, 1)
