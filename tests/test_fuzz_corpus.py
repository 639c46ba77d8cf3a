"""Inputs the fuzzers (tests/test_fuzz_parsers.py, benchmarks/fuzz/) found crashing a parser, kept as cases after
the fix: each must end in the parser's own error (a CopaError subclass with its exit code), never another exception.

Each case names what it attacks and the exception it used to raise.
"""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from copa.errors import IntegrityError, UnsupportedImageError
from copa.oci.model import MediaType
from copa.pkg.apt.release import Release
from copa.pkg.rpm.repomd import parse_repomd
from tests.test_fuzz_parsers import scan_layer

RELEASE_HEAD = "Origin: copa-tests\nSuite: stable\nCodename: stable\nArchitectures: amd64\nComponents: main\n"
SHA256 = "SHA256:\n " + "a" * 64 + " 10 main/binary-amd64/Packages\n"


def test_release_date_past_time_t() -> None:
    """Was OverflowError (email.utils cannot hold the year): a Date far in the future is an unparseable date."""
    text = RELEASE_HEAD + "Date: Mon, 07 Dec 214748364826 07:37:02 GMT\n" + SHA256
    with pytest.raises(IntegrityError, match="unparseable date"):
        Release.parse(text, "Release")


def test_release_valid_until_past_time_t() -> None:
    dates = "Date: Mon, 07 Dec 2026 07:37:02 GMT\nValid-Until: Sat, 01 Jan 99999999999 00:00:00 GMT\n"
    text = RELEASE_HEAD + dates + SHA256
    with pytest.raises(IntegrityError, match="unparseable date"):
        Release.parse(text, "Release")


def test_repomd_in_an_unknown_encoding() -> None:
    """Was LookupError from expat: the XML declaration names an encoding Python does not have."""
    data = b'<?xml version="1.0" encoding="TTF-8"?>\n<repomd xmlns="http://linux.duke.edu/metadata/repo"/>\n'
    with pytest.raises(IntegrityError, match="unsupported encoding"):
        parse_repomd(data, "repomd.xml")


def test_repomd_in_a_multibyte_encoding() -> None:
    """Was ValueError ('multi-byte encodings are not supported', expat), found by atheris: UTF-7 declared."""
    data = b'<?xml version="1.0" encoding="UTF-7"?>\n<repomd xmlns="http://linux.duke.edu/metadata/repo"/>\n'
    with pytest.raises(IntegrityError, match="unsupported encoding"):
        parse_repomd(data, "repomd.xml")


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _cut_inside(name: str) -> bytes:
    """A tar whose captured member's header claims more bytes than the stream holds (a truncated layer whose
    digest, computed over the truncated bytes, matches: the descriptor vouches for nothing but the bytes)."""
    whole = _tar([("etc/os-release", b"ID=debian\n" * 100), (name, b"x" * 4096)])
    start = whole.index(b"ID=debian")
    return whole[: start + 100]


def test_layer_cut_inside_a_captured_member() -> None:
    """Was tarfile.ReadError ('unexpected end of data') raised from the member read in rootfs._live, outside the
    handler in rootfs._members."""
    with pytest.raises(UnsupportedImageError, match="not a valid tar stream"):
        scan_layer(_cut_inside("etc/passwd"))


def test_gzip_layer_damaged_inside_a_captured_member() -> None:
    """The same read through gzip: damage inside the member's compressed bytes fails in the decompressor there."""
    raw = gzip.compress(_tar([("etc/os-release", bytes(range(256)) * 64)]), mtime=0)
    damaged = raw[:40] + bytes(b ^ 0x55 for b in raw[40:200]) + raw[200:]
    with pytest.raises((IntegrityError, UnsupportedImageError)):
        scan_layer(damaged, MediaType.OCI_LAYER_GZIP)
