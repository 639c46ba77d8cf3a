"""Damaged or unusual compressed input: what the readers make of it, checked on inputs built here with the
standard library and dpkg-deb (the oracles of what a valid stream is)."""

from __future__ import annotations

import gzip
import io
import lzma
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from copa.errors import IntegrityError
from copa.pkg.apt.packages import parse_packages_file
from copa.pkg.dpkg.debfile import BadDeb, read_deb
from copa.pkg.streams import xz_reader

PARAGRAPHS = [
    {"Package": f"p{i}", "Version": f"1.{i}", "Architecture": "amd64", "Filename": f"pool/p{i}.deb",
     "Size": str(100 + i), "SHA256": f"{i:064x}", "Provides": f"v{i}", "Description": "x\n more text"}
    for i in range(300)
]


def _index(eol: bytes) -> bytes:
    text = "\n\n".join("\n".join(f"{k}: {v}" for k, v in p.items()) for p in PARAGRAPHS) + "\n"
    return text.encode().replace(b"\n", eol)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("suffix", ["", ".gz", ".xz"])
def test_index_line_endings_and_compression(tmp_path: Path, eol: bytes, suffix: str) -> None:
    raw = _index(eol)
    packed = {"": raw, ".gz": gzip.compress(raw), ".xz": lzma.compress(raw)}[suffix]
    path = tmp_path / f"Packages{suffix}"
    path.write_bytes(packed)
    rows = list(parse_packages_file(path, path.name, "test index"))
    assert [(r[0], r[1], r[14], r[15]) for r in rows] == [
        (p["Package"], p["Version"], int(p["Size"]), p["SHA256"]) for p in PARAGRAPHS
    ]


def test_corrupt_index_is_an_integrity_error(tmp_path: Path) -> None:
    good = gzip.compress(_index(b"\n"))
    # Damage at many places: inflate fails in different ways (bad block, bad CRC, early end), each must map.
    for i in range(20, len(good) - 20, max(1, len(good) // 25)):
        packed = bytearray(good)
        packed[i] ^= 0x55
        path = tmp_path / "Packages.gz"
        path.write_bytes(bytes(packed))
        with pytest.raises(IntegrityError, match="corrupt"):
            list(parse_packages_file(path, path.name, "test index"))


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_gzip_members_read_and_damage_is_bad_deb(tmp_path: Path) -> None:
    control = _tar_gz({"./control": b"Package: t\nVersion: 1\nArchitecture: all\nMaintainer: x\nDescription: t\n"})
    payload = bytes(range(256)) * 4000  # incompressible enough that a flipped byte lands in deflate data
    data = _tar_gz({"./usr/share/t/blob": payload})
    good = tmp_path / "good.deb"
    good.write_bytes(_ar([("debian-binary", b"2.0\n"), ("control.tar.gz", control), ("data.tar.gz", data)]))
    # dpkg-deb is the oracle that this is a valid package.
    subprocess.run(["dpkg-deb", "--info", str(good)], check=True, capture_output=True)
    contents = read_deb(good, tmp_path / "stage-good")
    (blob,) = [f for f in contents.files if f.kind == "file"]
    with blob.open() as f:
        assert f.read() == payload
    for i, where in enumerate(range(30, len(data) - 30, max(1, len(data) // 30))):
        damaged = bytearray(data)
        damaged[where] ^= 0x55
        bad = tmp_path / f"bad{i}.deb"
        bad.write_bytes(_ar([("debian-binary", b"2.0\n"), ("control.tar.gz", control),
                             ("data.tar.gz", bytes(damaged))]))
        with pytest.raises(BadDeb):
            read_deb(bad, tmp_path / f"stage-bad{i}")


def _lzma_file(data: bytes, size: int) -> tuple[bytes, str]:
    """Oracle: what lzma.LZMAFile reads (and the error it stops with, by type)."""
    out = bytearray()
    try:
        with lzma.LZMAFile(io.BytesIO(data)) as f:
            while chunk := f.read(size):
                out += chunk
    except (EOFError, lzma.LZMAError) as e:
        return bytes(out), type(e).__name__
    return bytes(out), ""


def _xz_reader(data: bytes, size: int) -> tuple[bytes, str]:
    out = bytearray()
    try:
        with xz_reader(io.BytesIO(data)) as f:
            while chunk := f.read(size):
                out += chunk
    except (EOFError, lzma.LZMAError) as e:
        return bytes(out), type(e).__name__
    return bytes(out), ""


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(st.binary(max_size=3000) | st.sampled_from([b"\0" * 600_000, bytes(range(256)) * 4000]),
                      min_size=1, max_size=3),
       tail=st.sampled_from([b"", b"\0\0\0\0", b"garbage", b"\0" * 8 + b"x"]),
       cut=st.sampled_from([None, 10, 200, -30]), flip=st.sampled_from([None, 40, 100]),
       size=st.sampled_from([1, 4096, 1 << 20, -1]))
def test_xz_reader_reads_what_lzmafile_reads(parts: list[bytes], tail: bytes, cut: int | None, flip: int | None,
                                             size: int) -> None:
    # Concatenated streams, padding and trailing data, streams cut short and damaged, read in any sizes: the same
    # bytes, and the same error where LZMAFile fails, as the stdlib reader that dpkg's xz members used to go through.
    data = bytearray(b"".join(lzma.compress(p) for p in parts) + tail)
    if cut is not None:
        data = data[:cut]
    if flip is not None and flip < len(data):
        data[flip] ^= 0x55
    got, got_error = _xz_reader(bytes(data), size)
    want, want_error = _lzma_file(bytes(data), 1 << 20)  # read as the .deb reader read it: 1 MiB at a time
    # (What was read before an error depends on the read sizes: only the error is compared then.)
    if flip is None:  # valid streams, padding, trailing data, streams cut short: the same bytes, or the same error
        assert got_error == want_error and (got_error or got == want)
    elif not got_error:  # damaged, yet read to an end: what LZMAFile gave (it may fail later, in trailing data)
        assert want.startswith(got) and (want_error or got == want)
