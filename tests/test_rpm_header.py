"""RPM headers against rpm 4.18: byte-identical round trips of rpmbuild's signature and main headers, the values
rpm's own queries print, the installed header equal to rpm's rpmdb.sqlite blob, and hostile headers refused."""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import sqlite3
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from copa.errors import IntegrityError
from copa.pkg.rpm.header import (
    MAGIC,
    BadHeader,
    Entry,
    Header,
    Value,
    installed_header,
    merged_signature_values,
    transaction_color,
)
from copa.pkg.rpm.tags import Sig, Tag, Type
from tests.support.rpmtools import RpmFile, RpmSpec, build_rpm, init_root, make_gpg_key, sign_rpms

pytestmark = pytest.mark.skipif(shutil.which("rpmbuild") is None, reason="rpmbuild not installed")

SPECS = (
    RpmSpec("hello", "1.0", "1", epoch=2, files=(
        RpmFile("/usr/bin/hello", b"#!/bin/sh\necho hi\n", 0o755),
        RpmFile("/etc/hello.conf", b"a=1\n", attr="%config(noreplace)"),
        RpmFile("/var/log/hello.log", attr="%ghost"),
        RpmFile("/usr/share/hello", kind="dir", mode=0o755),
        RpmFile("/usr/share/hello/data", b"x" * 100000),
        RpmFile("/usr/share/hello/link", kind="symlink", target="data"),
        RpmFile("/usr/share/hello/hard", kind="hardlink", target="/usr/share/hello/data"),
    ), requires=("bash >= 4",), provides=("hi = 1.0",), scripts=(("post", "echo post"),), payload="xz"),
    RpmSpec("meta", "3.0.7", "27.el9", files=(), requires=("hello",)),
    RpmSpec("archpkg", "2.28", "225.el8_8.6", arch="x86_64", payload="zstd",
            files=(RpmFile("/usr/lib64/libx.so.1", b"\x7fELF" + bytes(range(256)) * 40, 0o755),)),
    RpmSpec("reloc", "1", "1", files=(RpmFile("/opt/reloc/a", b"a"), RpmFile("/srv/s/b", b"b")),
            extra=("Prefix: /opt/reloc", "Prefix: /srv/s")),  # rpm records INSTPREFIXES
    RpmSpec("signedrsa", "1", "1", files=(RpmFile("/opt/r", b"r"),), payload="gzip"),
    RpmSpec("signeded", "1", "1", files=(RpmFile("/opt/e", b"e"),), payload="bzip2"),
)


@dataclass(frozen=True)
class Built:
    path: Path
    signature: Header
    signature_raw: bytes
    main: Header
    main_raw: bytes


def read_headers(path: Path) -> Built:
    """The lead (96 bytes), the signature header padded to 8 bytes, the main header."""
    with path.open("rb") as f:
        lead = f.read(96)
        assert lead[:4] == b"\xed\xab\xee\xdb"
        sig, sig_raw = Header.read(f, path.name)
        f.read(-len(sig_raw) % 8)
        main, main_raw = Header.read(f, path.name)
    return Built(path, sig, sig_raw, main, main_raw)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    out = tmp_path_factory.mktemp("rpms")
    paths = {s.name: build_rpm(s, out) for s in SPECS}
    sign_rpms([paths["signedrsa"]], make_gpg_key(out / "gpg-rsa", "rsa2048"))
    sign_rpms([paths["signeded"]], make_gpg_key(out / "gpg-ed", "ed25519"))
    return {name: read_headers(p) for name, p in paths.items()}


@pytest.fixture(scope="module")
def rpmdb_blobs(built: dict[str, Built], tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("root")
    init_root(root, [b.path for b in built.values()], "--nosignature")
    with sqlite3.connect(root / "var/lib/rpm/rpmdb.sqlite") as db:
        blobs = [bytes(row[0]) for row in db.execute("select blob from Packages")]
    return {Header.parse(b).string(Tag.NAME) or "": b for b in blobs}


def _query(path: Path, fmt: str) -> str:
    return subprocess.run(["rpm", "-qp", "--nosignature", "--qf", fmt, str(path)], capture_output=True, text=True,
                          check=True).stdout


def test_round_trip_is_byte_identical(built: dict[str, Built]) -> None:
    for b in built.values():
        for header, raw in ((b.signature, b.signature_raw), (b.main, b.main_raw)):
            assert header.to_bytes() == raw
            assert Header.parse(raw) == header
            assert Header.parse(raw[8:]) == header  # rpmdb blobs have no magic
            assert header.to_bytes(magic=False) == raw[8:]
            assert header.immutable() is header  # a package's headers are all region
        assert b.signature.region is not None and b.signature.region.tag == Tag.HEADERSIGNATURES
        assert b.main.region is not None and b.main.region.tag == Tag.HEADERIMMUTABLE
        assert b.main.region.entries == len(b.main.entries)
        # the signature header's digests cover exactly the main header's bytes
        assert b.signature.string(Tag.SHA256HEADER) == hashlib.sha256(b.main_raw).hexdigest()
        assert b.signature.string(Tag.SHA1HEADER) == hashlib.sha1(b.main_raw).hexdigest()


def test_values_match_rpm_queries(built: dict[str, Built]) -> None:
    for b in built.values():
        h = b.main
        fmt = "%{NAME}|%{VERSION}|%{RELEASE}|%{EPOCH}|%{ARCH}|%{SOURCERPM}|%{PAYLOADCOMPRESSOR}|[%{FILEMODES} ]|" \
              "[%{BASENAMES} ]|[%{DIRNAMES} ]|[%{DIRINDEXES} ]|[%{REQUIRENAME} ]|[%{FILEUSERNAME} ]|%{SUMMARY}"
        name, version, release, epoch, arch, srpm, comp, modes, bases, dirs, idx, reqs, users, summary = \
            _query(b.path, fmt).split("|")
        assert (h.string(Tag.NAME), h.string(Tag.VERSION), h.string(Tag.RELEASE)) == (name, version, release)
        assert str(h.integer(Tag.EPOCH)) == epoch if epoch != "(none)" else Tag.EPOCH not in h
        assert (h.string(Tag.ARCH), h.string(Tag.SOURCERPM), h.string(Tag.PAYLOADCOMPRESSOR)) == (arch, srpm, comp)
        assert " ".join(map(str, h.ints(Tag.FILEMODES))) == modes.strip()
        assert " ".join(h.strings(Tag.BASENAMES)) == bases.strip()
        assert " ".join(h.strings(Tag.DIRNAMES)) == dirs.strip()
        assert " ".join(map(str, h.ints(Tag.DIRINDEXES))) == idx.strip()
        assert " ".join(h.strings(Tag.REQUIRENAME)) == reqs.strip()
        assert " ".join(h.strings(Tag.FILEUSERNAME)) == users.strip()
        assert h.string(Tag.SUMMARY) == summary  # an I18NSTRING: the C locale's text
        assert h.bin(Tag.HEADERIMMUTABLE) is not None


def test_signature_tags(built: dict[str, Built]) -> None:
    assert Tag.RSAHEADER in built["signedrsa"].signature
    assert Tag.DSAHEADER in built["signeded"].signature  # rpm 4.18 files EdDSA signatures as DSAHEADER
    assert Tag.RSAHEADER not in built["hello"].signature and Tag.DSAHEADER not in built["hello"].signature
    for b in built.values():
        sig = b.signature
        size = sig.integer(Sig.SIZE)
        assert size == b.path.stat().st_size - 96 - len(b.signature_raw) - (-len(b.signature_raw) % 8)
        assert sig.bin(Sig.MD5) is not None and len(sig.bin(Sig.MD5) or b"") == 16
        assert (sig.bin(Sig.RESERVEDSPACE) or b"x").strip(b"\0") == b""


def test_installed_header_equals_rpms_database_blob(built: dict[str, Built], rpmdb_blobs: dict[str, bytes]) -> None:
    assert set(rpmdb_blobs) == set(built)
    for name, b in built.items():
        blob = rpmdb_blobs[name]
        theirs = Header.parse(blob, f"rpmdb {name}")
        time, tid = theirs.integer(Tag.INSTALLTIME), theirs.integer(Tag.INSTALLTID)
        assert time is not None and tid is not None
        ours = installed_header(b.main, b.signature, install_time=time, install_tid=tid)
        assert ours.to_bytes(magic=False) == blob, name
        # the immutable region of the record is the package's header as it was in the file
        assert theirs.immutable().to_bytes() == b.main_raw
        assert hashlib.sha256(theirs.immutable().to_bytes()).hexdigest() == theirs.string(Tag.SHA256HEADER)


def test_relocated_install(built: dict[str, Built], tmp_path: Path) -> None:
    """rpm -i --relocate rewrites the file names: the new ones follow the region (with ORIG* copies of the old),
    the region stays the package's header, and the later entries are the ones that count."""
    root = tmp_path / "root"
    init_root(root, [built["reloc"].path], "--relocate", "/opt/reloc=/opt/moved")
    with sqlite3.connect(root / "var/lib/rpm/rpmdb.sqlite") as db:
        blob = bytes(db.execute("select blob from Packages").fetchone()[0])
    h = Header.parse(blob)
    assert h.tags.count(Tag.DIRNAMES) == 2
    assert h.strings(Tag.DIRNAMES) == ("/opt/moved/", "/srv/s/")
    assert h.strings(Tag.INSTPREFIXES) == ("/opt/moved", "/srv/s")
    assert h.immutable().to_bytes() == built["reloc"].main_raw
    assert h.immutable().strings(Tag.DIRNAMES) == ("/opt/reloc/", "/srv/s/")


def test_merged_signature_tags(built: dict[str, Built]) -> None:
    tags = {v.tag for v in merged_signature_values(built["signedrsa"].main, built["signedrsa"].signature)}
    assert tags == {Tag.SIGSIZE, Tag.SIGMD5, Tag.RSAHEADER, Tag.SHA1HEADER, Tag.SHA256HEADER, Tag.ARCHIVESIZE}
    tags = {v.tag for v in merged_signature_values(built["signeded"].main, built["signeded"].signature)}
    assert Tag.DSAHEADER in tags and Sig.RESERVEDSPACE not in tags


def test_append_aligns_and_sorts(built: dict[str, Built]) -> None:
    base = built["meta"].main
    h = base.append([Value.string(Tag.INSTPREFIXES, "x"), Value.ints(Tag.FILESTATES, Type.CHAR, [1, 2, 3]),
                     Value.int32(Tag.INSTALLTIME, 7), Value.ints(Tag.LONGSIZE, Type.INT64, [1 << 40])])
    added = h.entries[len(base.entries):]
    assert [e.tag for e in added] == sorted(e.tag for e in added)
    assert all(e.offset % e.type.size == 0 for e in added)
    assert h.integer(Tag.INSTALLTIME) == 7 and h.ints(Tag.FILESTATES) == (1, 2, 3)
    assert h.integer(Tag.LONGSIZE) == 1 << 40 and h.string(Tag.INSTPREFIXES) == "x"
    assert Header.parse(h.to_bytes()) == h
    assert h.immutable() == base
    with pytest.raises(ValueError):
        h.append([Value.int32(Tag.INSTALLTIME, 8)])


# --- hostile headers ------------------------------------------------------------------------------------------


def _blob(entries: list[tuple[int, int, int, int]], data: bytes) -> bytes:
    return MAGIC + struct.pack(">II", len(entries), len(data)) + b"".join(struct.pack(">iIiI", *e)
                                                                          for e in entries) + data


@pytest.mark.parametrize(("entries", "data", "problem"), [
    ([(1000, 6, 0, 1)], b"abc", "not NUL-terminated"),
    ([(1000, 6, 10, 1)], b"abc\0", "outside"),
    ([(1000, 6, -1, 1)], b"abc\0", "outside"),
    ([(1000, 4, 0, 2)], b"\0\0\0\0", "past"),
    ([(1000, 4, 2, 1)], b"\0\0\0\0\0\0", "misaligned"),
    ([(1000, 8, 0, 3)], b"a\0b\0", "not NUL-terminated"),
    ([(1000, 6, 0, 2)], b"a\0b\0", "count"),
    ([(1000, 12, 0, 1)], b"a\0", "unknown type"),
    ([(1000, 7, 0, 0)], b"a\0", "outside"),
    ([(63, 7, 0, 16)], b"\0" * 16, "region trailer"),
    ([(63, 7, 8, 16)], b"\0" * 16, "region tag"),
    ([(63, 7, 0, 16)], struct.pack(">iIiI", 63, 7, -48, 16), "region trailer"),
])
def test_hostile_headers_are_refused(entries: list[tuple[int, int, int, int]], data: bytes, problem: str) -> None:
    with pytest.raises(BadHeader) as info:
        Header.parse(_blob(entries, data), "evil-1.0-1.x86_64.rpm")
    assert problem in str(info.value) and "evil-1.0-1.x86_64.rpm" in str(info.value)
    assert info.value.exit_code == 5


@pytest.mark.parametrize("blob", [b"", MAGIC, MAGIC + struct.pack(">II", 0, 0), MAGIC + struct.pack(">II", 70000, 0),
                                  MAGIC + struct.pack(">II", 1, 1 << 30), _blob([(1000, 6, 0, 1)], b"a\0")[:-1],
                                  b"\0" * 8 + _blob([(1000, 6, 0, 1)], b"a\0")[8:]])
def test_bad_sizes_are_refused(blob: bytes) -> None:
    with pytest.raises(BadHeader):
        Header.parse(blob)
    with pytest.raises(BadHeader):
        Header.read(io.BytesIO(blob))
    with pytest.raises(BadHeader):
        Header.parse(_blob([(1000, 6, 0, 1)], b"a\0") + b"x")  # one blob, one header


def test_region_data_behind_the_trailer() -> None:
    """A region entry whose data lies behind the trailer (rpm appends changed tags' data there): the header reads,
    cutting out its region does not."""
    h = Header.parse(_blob([(63, 7, 0, 16), (1000, 6, 16, 1), (1001, 6, 18, 1)],
                           struct.pack(">iIiI", 63, 7, -32, 16) + b"a\0b\0"), "odd")
    assert h.string(1000) == "a" and h.region is not None and h.region.entries == 2
    with pytest.raises(BadHeader, match="outside the header's immutable region"):
        h.immutable()


def test_wrong_type_access_is_a_copa_error() -> None:
    h = Header.parse(_blob([(1000, 4, 0, 1), (1001, 6, 4, 1)], b"\0\0\0\x05v\0"))
    assert h.ints(1000) == (5,) and h.string(1001) == "v" and h.strings(1002) == () and h.integer(1002) is None
    for call in (lambda: h.string(1000), lambda: h.ints(1001), lambda: h.bin(1001)):
        with pytest.raises(BadHeader):
            call()


def test_error_class_is_the_callers() -> None:
    class BadDatabase(IntegrityError):
        exit_code = 6

    with pytest.raises(BadDatabase):
        Header.parse(b"\0" * 20, "rpmdb record 3", BadDatabase)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_headers_parse_or_fail_cleanly(built: dict[str, Built], data: st.DataObject) -> None:
    raw = bytearray(data.draw(st.sampled_from([b.main_raw for b in built.values()] +
                                              [b.signature_raw for b in built.values()])))
    for _ in range(data.draw(st.integers(1, 6))):
        # Index and length fields are the interesting bytes: hit them more often than the data.
        pos = data.draw(st.one_of(st.integers(8, min(len(raw) - 1, 8 + 8 + 16 * 12)), st.integers(0, len(raw) - 1)))
        raw[pos] = data.draw(st.integers(0, 255))
    try:
        h = Header.parse(bytes(raw), "mutant")
    except BadHeader:
        return
    for e in h.entries:
        for call in (h.strings, h.ints, h.bin, h.raw):
            with contextlib.suppress(BadHeader):
                call(e.tag)
    assert isinstance(h.entries[0], Entry)


def test_transaction_color_as_rpms_platform_macros() -> None:
    platforms = Path("/usr/lib/rpm/platform")
    seen = 0
    for macros in sorted(platforms.glob("*-linux/macros")):
        for line in macros.read_text().splitlines():
            if line.startswith("%_transaction_color"):
                arch = macros.parent.name.removesuffix("-linux")
                assert transaction_color(arch) == int(line.split()[1]), arch
                seen += 1
    assert seen > 20


_TEXT = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=12)
_VALUES = st.one_of(
    st.tuples(st.just(Type.INT16), st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=5)),
    st.tuples(st.just(Type.INT32), st.lists(st.integers(0, 0xFFFFFFFF), min_size=1, max_size=5)),
    st.tuples(st.just(Type.INT64), st.lists(st.integers(0, (1 << 64) - 1), min_size=1, max_size=3)),
    st.tuples(st.just(Type.CHAR), st.lists(st.integers(0, 255), min_size=1, max_size=7)),
    st.tuples(st.just(Type.STRING), _TEXT),
    st.tuples(st.just(Type.STRING_ARRAY), st.lists(_TEXT, min_size=1, max_size=5)),
    st.tuples(st.just(Type.BIN), st.binary(min_size=1, max_size=9)),
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.integers(1100, 6000), _VALUES, min_size=1, max_size=8))
def test_append_round_trip(values: dict[int, tuple[Type, object]]) -> None:
    base = Header.parse(_blob([(1000, 6, 0, 1)], b"name\0"))
    made = []
    for tag, (type_, v) in values.items():
        if type_ == Type.STRING:
            made.append(Value.string(tag, str(v)))
        elif type_ == Type.STRING_ARRAY:
            made.append(Value.strings(tag, list(v)))
        elif type_ == Type.BIN:
            made.append(Value.bin(tag, bytes(v)))
        else:
            made.append(Value.ints(tag, type_, list(v)))
    h = base.append(made)
    again = Header.parse(h.to_bytes())
    assert again == h and again.string(1000) == "name"
    for tag, (type_, v) in values.items():
        got = (again.string(tag) if type_ == Type.STRING else again.strings(tag) if type_ == Type.STRING_ARRAY
               else again.bin(tag) if type_ == Type.BIN else again.ints(tag))
        assert got == (tuple(v) if isinstance(v, list) else v)
