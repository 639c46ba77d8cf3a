"""Reading .rpm files against rpm 4.18: what copa reads from rpmbuild's packages (every payload compressor) equals
what `rpm -i` puts on disk and what `rpm -qp` says about each file; damaged and tampered packages are refused
with a copa error naming the package; the cpio reader on hostile and stripped archives; header signatures by
RSA and Ed25519 keys (rpmsign) verified as rpmkeys -K verifies them."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from copa.errors import CopaError, IntegrityError, LocalIOError, UnsupportedImageError
from copa.pkg.rpm.cpio import BadCpio, CpioReader
from copa.pkg.rpm.header import Header, installed_header
from copa.pkg.rpm.rpmfile import BadRpm, RpmContents, RpmHeaders, UnsupportedRpm, read_headers, read_rpm
from copa.pkg.rpm.signature import (
    BadSignature,
    UnsignedPackage,
    _verify_as_rpm,
    checker,
    key_files,
    verify_headers,
)
from copa.pkg.rpm.tags import DigestAlgo, FileFlag, Tag
from tests.support.rpmrepo import createrepo
from tests.support.rpmtools import (
    PAYLOADS,
    GpgKey,
    RpmFile,
    RpmSpec,
    build_rpm,
    init_root,
    make_gpg_key,
    sign_rpms,
    upstream_test_data,
)

pytestmark = pytest.mark.skipif(shutil.which("rpmbuild") is None, reason="rpmbuild not installed")

BIG = bytes(range(256)) * 1024  # 256 KiB: spooled, not inline


def _files(tag: str) -> tuple[RpmFile, ...]:
    return (
        RpmFile("/usr/bin/hello", b"#!/bin/sh\necho " + tag.encode() + b"\n", 0o755),
        RpmFile("/usr/bin/suid", b"s", 0o4755),
        RpmFile("/etc/hello.conf", b"a=1\n", attr="%config(noreplace)"),
        RpmFile("/etc/hello.d", kind="dir", mode=0o750),
        RpmFile("/etc/hello.d/plain.conf", b"b=1\n", attr="%config"),
        RpmFile("/var/log/hello.log", attr="%ghost"),
        RpmFile("/usr/share/hello", kind="dir", mode=0o755),
        RpmFile("/usr/share/hello/big", BIG),
        RpmFile("/usr/share/hello/big2", BIG[::-1]),
        RpmFile("/usr/share/hello/hard", kind="hardlink", target="/usr/share/hello/big"),
        RpmFile("/usr/share/hello/link", kind="symlink", target="big"),
        RpmFile("/usr/share/hello/abs", kind="symlink", target="/etc/hello.conf"),
        RpmFile("/usr/share/hello/empty", b""),
        RpmFile("/usr/share/hello/nonascii-\u00e9", b"e"),
        RpmFile("/usr/share/doc/hello/README", b"readme", attr="%doc"),
        RpmFile("/usr/share/licenses/hello/COPYING", b"MIT", attr="%license"),
        RpmFile("/usr/sbin/ping2", b"\x7fELF", 0o755, caps="cap_net_raw=ep"),
        RpmFile("/opt/owned", b"o", owner="nobody", group="nogroup"),
    )


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("rpms")
    return {comp: build_rpm(RpmSpec(f"hello-{comp}", "1.0", "1", epoch=1, arch="x86_64" if comp == "xz" else "noarch",
                                    files=_files(comp), payload=comp), out) for comp in PAYLOADS}


def _read(path: Path, tmp: Path, name: str | None = None) -> RpmContents:
    return read_rpm(path, tmp / "stage" / path.stem, name)


def _query_files(path: Path) -> list[list[str]]:
    fmt = "[%{FILENAMES}|%{FILEFLAGS}|%{FILEMODES}|%{FILEUSERNAME}|%{FILEGROUPNAME}|%{FILEMTIMES}|%{FILESIZES}|" \
          "%{FILELINKTOS}|%{FILEDIGESTS}|%{FILECAPS}|%{FILEINODES}\n]"
    out = subprocess.run(["rpm", "-qp", "--nosignature", "--qf", fmt, str(path)], capture_output=True, check=True)
    return [line.split("|") for line in out.stdout.decode("utf-8", "surrogateescape").splitlines()]


@pytest.mark.parametrize("comp", list(PAYLOADS))
def test_files_match_rpm_query(packages: dict[str, Path], tmp_path: Path, comp: str) -> None:
    contents = _read(packages[comp], tmp_path)
    assert contents.headers.nevra == f"hello-{comp}-1:1.0-1.{'x86_64' if comp == 'xz' else 'noarch'}"
    assert contents.digest_algo == DigestAlgo.SHA256
    rows = _query_files(packages[comp])
    assert [f"/{f.path}" for f in contents.files] == [r[0] for r in rows]
    for f, (_n, flags, mode, user, group, mtime, size, link, digest, caps, inode) in zip(contents.files, rows,
                                                                                       strict=True):
        assert (int(flags), stat.S_IMODE(int(mode)), f.user, f.group) == (f.flags, f.mode, user, group)
        assert (f.mtime, f.size, f.linkname if f.kind == "symlink" else "") == (int(mtime), int(size), link)
        assert (f.digest, f.caps, f.inode) == (digest, caps, int(inode))
    by = {f.path: f for f in contents.files}
    assert by["etc/hello.conf"].config and by["etc/hello.conf"].noreplace
    assert by["etc/hello.d/plain.conf"].config and not by["etc/hello.d/plain.conf"].noreplace
    assert by["var/log/hello.log"].ghost and not by["var/log/hello.log"].has_content
    assert by["usr/share/doc/hello/README"].flags & FileFlag.DOC
    assert by["usr/share/licenses/hello/COPYING"].flags & FileFlag.LICENSE
    assert by["usr/sbin/ping2"].caps == "cap_net_raw=ep"
    assert (by["usr/share/hello/hard"].kind, by["usr/share/hello/hard"].linkname) == ("hardlink", "usr/share/hello/big")
    assert by["usr/share/hello/big"].staged is not None and by["usr/share/hello/big"].inline is None  # spooled
    assert by["usr/bin/hello"].inline is not None  # small: in memory
    assert by["usr/bin/suid"].mode == 0o4755
    assert (by["opt/owned"].user, by["opt/owned"].group) == ("nobody", "nogroup")


def test_contents_equal_what_rpm_installs(packages: dict[str, Path], tmp_path: Path) -> None:
    for comp, path in packages.items():
        root = tmp_path / f"root-{comp}"
        init_root(root, [path])
        contents = _read(path, tmp_path)
        for f in contents.files:
            target = root / f.path
            if f.ghost:
                assert not os.path.lexists(target), f.path  # rpm creates no %ghost file
                continue
            st = target.lstat()
            assert stat.S_IMODE(st.st_mode) == f.mode, f.path
            if f.kind == "symlink":
                assert stat.S_ISLNK(st.st_mode) and os.readlink(target) == f.linkname
            elif f.kind == "dir":
                assert stat.S_ISDIR(st.st_mode)
            elif f.kind == "hardlink":
                assert st.st_ino == (root / f.linkname).stat().st_ino
            else:
                assert stat.S_ISREG(st.st_mode) and int(st.st_mtime) == f.mtime
                with f.open() as src:
                    assert src.read() == target.read_bytes(), f.path


def _reseal(src: Path, dst: Path, edit: bytes, replacement: bytes) -> Path:
    """A copy of `src` whose main header has `edit` replaced (same length) and whose signature header's
    SHA1HEADER/SHA256HEADER are recomputed: a package that passes the header digests but lies elsewhere."""
    assert len(edit) == len(replacement)
    blob = bytearray(src.read_bytes())
    with src.open("rb") as f:
        headers = read_headers(f, src.name)
    start = blob.index(headers.header_bytes)
    old = headers.header_bytes
    new = old.replace(edit, replacement, 1)
    assert new != old
    blob[start:start + len(old)] = new
    for algo in ("sha1", "sha256"):
        before = hashlib.new(algo, old).hexdigest().encode()
        at = blob.index(before)
        blob[at:at + len(before)] = hashlib.new(algo, new).hexdigest().encode()
    dst.write_bytes(bytes(blob))
    return dst


def test_tampered_packages_are_refused(packages: dict[str, Path], tmp_path: Path) -> None:
    good = packages["gzip"].read_bytes()
    with packages["gzip"].open("rb") as f:
        headers = read_headers(f, "x")
    payload_at = good.index(headers.header_bytes) + len(headers.header_bytes)

    def damaged(name: str, blob: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(blob)
        return path

    cases = {
        "payload": (good[:payload_at + 40] + bytes([good[payload_at + 40] ^ 1]) + good[payload_at + 41:], "payload"),
        "truncated": (good[:-30], ""),
        "header": (good[:payload_at - 20] + bytes([good[payload_at - 20] ^ 1]) + good[payload_at - 19:], "digest"),
        "lead": (b"\0" + good[1:], "not an rpm package"),
        "short": (good[:200], "ends inside"),
    }
    for case, (blob, message) in cases.items():
        with pytest.raises(IntegrityError) as info:
            _read(damaged(f"{case}.rpm", blob), tmp_path, "hello-gzip-1.0-1.noarch.rpm")
        assert "hello-gzip-1.0-1.noarch.rpm" in str(info.value) and message in str(info.value), case
        assert info.value.exit_code == 5


def test_resealed_header_lies_are_caught(packages: dict[str, Path], tmp_path: Path) -> None:
    src = packages["gzip"]
    digest = hashlib.sha256(b"#!/bin/sh\necho gzip\n").hexdigest().encode()
    # a file's digest in the header no longer matches its content
    lie = _reseal(src, tmp_path / "digest.rpm", digest, digest[:-1] + (b"0" if digest[-1:] != b"0" else b"1"))
    with pytest.raises(BadRpm, match="does not match its digest"):
        _read(lie, tmp_path)
    # the payload has a file the header does not list
    lie = _reseal(src, tmp_path / "name.rpm", b"suid\0", b"suix\0")
    with pytest.raises(BadRpm, match="not a file of the header"):
        _read(lie, tmp_path)
    # an unknown compressor: unsupported (exit 6), not corrupt
    lie = _reseal(src, tmp_path / "comp.rpm", b"cpio\0gzip\0", b"cpio\0gzap\0")
    with pytest.raises(UnsupportedRpm) as info:
        _read(lie, tmp_path)
    assert isinstance(info.value, UnsupportedImageError) and info.value.exit_code == 6
    assert "gzap" in str(info.value)


def test_headers_only(packages: dict[str, Path]) -> None:
    with packages["zstd"].open("rb") as f:
        headers = read_headers(f, "p")
    assert headers.header.string(Tag.PAYLOADCOMPRESSOR) == "zstd"
    assert headers.lead.type == 0 and headers.lead.major == 3
    assert Header.parse(headers.header_bytes) == headers.header


# --- cpio -------------------------------------------------------------------------------------------------------


def _newc(name: str, data: bytes, mode: int = 0o100644, ino: int = 1) -> bytes:
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
    head = b"070701" + b"".join(b"%08x" % v for v in fields) + name.encode() + b"\0"
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


_TRAILER = _newc("TRAILER!!!", b"", 0)


def test_cpio_newc_and_stripped() -> None:
    stripped = b"07070X" + b"%08x" % 1 + b"\0\0" + b"abcde" + b"\0\0\0"
    archive = _newc("./a", b"xyz") + stripped + _TRAILER
    sizes = {1: 5}
    entries = [(e, body.read()) for e, body in CpioReader(io.BytesIO(archive), "t", sizes.__getitem__)]
    assert [(e.name, e.index, data) for e, data in entries] == [("./a", -1, b"xyz"), ("", 1, b"abcde")]


@pytest.mark.parametrize(("archive", "problem"), [
    (b"070707" + b"0" * 100, "not a cpio newc"),
    (_newc("./a", b"xyz")[:-8], "truncated"),
    (_newc("./a", b"xyz"), "truncated"),  # no trailer
    (_newc("./a", b"xyz").replace(b"00000004", b"0000zz04", 1) + _TRAILER, "not hexadecimal"),
    (_newc("./a", b"x").replace(b"./a\0", b"./ab", 1) + _TRAILER, "not NUL-terminated"),
    (_newc("./a", b"x")[:-3] + b"\1\1\1" + _TRAILER, "padding"),
    (b"07070X00000001\0\0abc\0" + _TRAILER, "stripped cpio entry without a header"),
])
def test_cpio_hostile(archive: bytes, problem: str) -> None:
    with pytest.raises(BadCpio, match=problem):
        for _entry, body in CpioReader(io.BytesIO(archive), "t"):
            body.read()


# --- OpenPGP signatures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, GpgKey]]:
    """The same package signed with an RSA key and with an Ed25519 key, and left unsigned."""
    out = tmp_path_factory.mktemp("signed")
    keys = {"rsa": make_gpg_key(out / "gpg-rsa", "rsa3072"), "ed25519": make_gpg_key(out / "gpg-ed", "ed25519")}
    result = {}
    for algo, key in keys.items():
        path = build_rpm(RpmSpec(f"signed-{algo}", "1.0", "1", files=_files(algo)), out)
        sign_rpms([path], key)
        result[algo] = (path, key)
    return result


def _rpm_says(path: Path, key: GpgKey, tmp: Path) -> str:
    """rpm's own verdict (rpmkeys -K) with only `key` imported."""
    db = tmp / f"keydb-{key.fingerprint[-8:]}"
    if not db.exists():
        db.mkdir()
        subprocess.run(["rpm", "--dbpath", str(db), "--initdb"], check=True)
        subprocess.run(["rpmkeys", "--dbpath", str(db), "--import", str(key.public)], check=True)
    proc = subprocess.run(["rpmkeys", "--dbpath", str(db), "-Kv", str(path)], capture_output=True, text=True)
    return proc.stdout


def _headers_of(path: Path) -> RpmHeaders:
    with path.open("rb") as f:
        return read_headers(f, path.name)


@pytest.mark.parametrize("algo", ["rsa", "ed25519"])
def test_signature_verifies_as_rpm_says(signed: dict[str, tuple[Path, GpgKey]], tmp_path: Path, algo: str) -> None:
    path, key = signed[algo]
    other_path, other = signed["ed25519" if algo == "rsa" else "rsa"]
    assert "Signature, key ID" in _rpm_says(path, key, tmp_path) and ": OK" in _rpm_says(path, key, tmp_path)
    signer = verify_headers(_headers_of(path), key_files([key.public]))
    assert signer.certificate == key.fingerprint.lower()
    # both keys trusted: still the right one
    both = key_files([other.public, key.public])
    assert verify_headers(_headers_of(path), both).certificate == key.fingerprint.lower()
    # only the other key: rpm says NOKEY, copa refuses
    assert "NOKEY" in _rpm_says(path, other, tmp_path)
    with pytest.raises(BadSignature) as info:
        verify_headers(_headers_of(path), key_files([other.public]))
    assert path.name in str(info.value) and key.fingerprint[-16:].upper() in str(info.value)
    assert info.value.exit_code == 5
    # read_rpm with the check: the whole package, verified
    contents = read_rpm(path, tmp_path / "stage", check=checker(key_files([key.public])))
    assert contents.headers.nevra == f"signed-{algo}-1.0-1.noarch"
    with pytest.raises(BadSignature):
        read_rpm(other_path, tmp_path / "stage2", check=checker(key_files([key.public])))


def test_unsigned_and_tampered_signatures(signed: dict[str, tuple[Path, GpgKey]], packages: dict[str, Path],
                                          tmp_path: Path) -> None:
    path, key = signed["rsa"]
    keys = key_files([key.public])
    with pytest.raises(UnsignedPackage) as info:
        verify_headers(_headers_of(packages["gzip"]), keys)
    assert "not signed" in str(info.value) and info.value.exit_code == 5
    # the header changed and its digests recomputed: only the signature can tell
    resealed = _reseal(path, tmp_path / "resealed.rpm", b"copa test package", b"copa test packagf")
    _headers_of(resealed)  # digests pass
    assert "BAD" in _rpm_says(resealed, key, tmp_path)
    with pytest.raises(BadSignature, match="does not verify"):
        verify_headers(_headers_of(resealed), keys)
    # a damaged signature packet (the signature header has no digest of its own)
    blob = bytearray(path.read_bytes())
    packet = _headers_of(path).signature.bin(Tag.RSAHEADER)
    assert packet is not None
    at = blob.index(packet) + len(packet) - 10
    blob[at] ^= 0xFF
    damaged = tmp_path / "damaged.rpm"
    damaged.write_bytes(bytes(blob))
    with pytest.raises(BadSignature):
        verify_headers(_headers_of(damaged), keys)


def test_key_files(tmp_path: Path, signed: dict[str, tuple[Path, GpgKey]]) -> None:
    both = tmp_path / "both.asc"
    both.write_bytes(signed["rsa"][1].public.read_bytes() + signed["ed25519"][1].public.read_bytes())
    assert len(key_files([both]).certs) == 2
    (tmp_path / "junk").write_bytes(b"not a key")
    with pytest.raises(IntegrityError):
        key_files([tmp_path / "junk"])
    with pytest.raises(LocalIOError):
        key_files([tmp_path / "missing"])


@pytest.mark.slow
def test_huge_file_stripped_cpio(tmp_path: Path) -> None:
    """A file of 4 GiB and more: rpmbuild writes LONGFILESIZES and rpm's stripped cpio entries ("07070X" + the
    file's header index); its zeros are staged as a sparse hole."""
    size = (4 << 30) + 5
    path = build_rpm(RpmSpec("huge", "1", "1", payload="w1.zstdio", files=(
        RpmFile("/opt/a", b"a"), RpmFile("/opt/huge", sparse_size=size), RpmFile("/opt/z", b"zz"))), tmp_path)
    headers = _headers_of(path)
    assert Tag.LONGFILESIZES in headers.header
    contents = read_rpm(path, tmp_path / "stage")
    by = {f.path: f for f in contents.files}
    assert (by["opt/huge"].size, by["opt/a"].inline, by["opt/z"].inline) == (size, b"a", b"zz")
    staged = by["opt/huge"].staged
    assert staged is not None and staged.stat().st_size == size and staged.stat().st_blocks * 512 < 1 << 20
    with staged.open("rb") as f:
        f.seek(by["opt/huge"].offset + size - 3)
        assert f.read() == b"\0\0\0"
    with by["opt/huge"].open() as f:
        assert f.read(1 << 20) == bytes(1 << 20)


def test_rpmtools_builds_what_the_spec_says(tmp_path: Path) -> None:
    """tests/support/rpmtools, which the RPM tests build on: relations, scripts, epoch, arch, repodata."""
    spec = RpmSpec("tool", "2.0", "3.el9", epoch=4, arch="x86_64", requires=("bash >= 4", "(a or b)"),
                   provides=("tool-api = 2",), conflicts=("oldtool < 1",), obsoletes=("tool-legacy",),
                   recommends=("tool-doc",), scripts=(("post", "echo configured"),),
                   files=(RpmFile("/usr/bin/tool", b"t", 0o755),))
    path = build_rpm(spec, tmp_path / "repo")
    assert path.name == spec.filename == "tool-2.0-3.el9.x86_64.rpm"
    h = _headers_of(path).header
    assert (h.integer(Tag.EPOCH), h.string(Tag.ARCH)) == (4, "x86_64")
    assert {"bash", "(a or b)", "/bin/sh"} <= set(h.strings(Tag.REQUIRENAME))
    assert "tool-api" in h.strings(Tag.PROVIDENAME) and h.strings(Tag.CONFLICTNAME) == ("oldtool",)
    assert h.strings(Tag.OBSOLETENAME) == ("tool-legacy",) and h.strings(Tag.RECOMMENDNAME) == ("tool-doc",)
    assert h.string(Tag.POSTIN) == "echo configured"
    assert spec.nevra == "tool-4:2.0-3.el9.x86_64"
    repodata = createrepo(tmp_path / "repo")
    assert (repodata / "repomd.xml").is_file()
    if shutil.which("dnf"):
        out = subprocess.run(["dnf", "-q", "--releasever=9", "--setopt=reposdir=/nonexistent",
                              f"--setopt=cachedir={tmp_path / 'cache'}", f"--repofrompath=t,file://{tmp_path / 'repo'}",
                              "--repo=t", "repoquery", "--qf", "%{name}-%{evr}.%{arch}"],
                             capture_output=True, text=True, check=True).stdout.split()
        assert out == ["tool-4:2.0-3.el9.x86_64"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_packages_fail_with_copa_errors(packages: dict[str, Path], tmp_path: Path,
                                               data: st.DataObject) -> None:
    """Any damage to any part of a package (every compressor) is a copa error, never a stray exception."""
    comp = data.draw(st.sampled_from(sorted(packages) + ["bzip2"] * 3))
    blob = bytearray(packages[comp].read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del blob[data.draw(st.integers(0, len(blob) - 1)):]
    path = tmp_path / f"mutant-{comp}.rpm"
    path.write_bytes(bytes(blob))
    try:
        read_rpm(path, tmp_path / "stage-mutant")
    except CopaError as e:
        assert path.name in str(e)
        # damage is the package's fault (5), or makes it look like a format copa does not read (6); never the
        # local disk's (a bz2 "Invalid data stream" is an OSError without errno)
        assert isinstance(e, IntegrityError | UnsupportedRpm), e


@pytest.mark.live
def test_rpm_upstream_test_packages(tmp_path: Path) -> None:
    """rpm's own test packages (made by older rpms: no payload digest, legacy signatures, i386/ppc64, IMA file
    signatures in the signature header): read as rpm reads them, the corrupted one refused, source packages
    unsupported, the signed one verified with rpm's test key, and each installed header equal to rpm's."""
    data = upstream_test_data()
    key = key_files([data / "keys/rpm.org-rsa-2048-test.pub"])
    for path in sorted((data / "SRPMS").glob("*.rpm")):
        with pytest.raises(UnsupportedRpm, match="source package"):
            read_rpm(path, tmp_path / "stage")
    with pytest.raises(BadRpm):
        read_rpm(data / "RPMS/hello-2.0-1.x86_64-corrupted.rpm", tmp_path / "stage")
    packages = [p for p in sorted((data / "RPMS").glob("*.rpm")) if "corrupted" not in p.name]
    assert len(packages) >= 8
    for path in packages:
        contents = read_rpm(path, tmp_path / "stage" / path.stem)
        rows = _query_files(path)
        assert [f"/{f.path}" for f in contents.files] == [r[0] for r in rows if r[0]], path.name
        for f, row in zip(contents.files, rows, strict=False):
            assert (f.digest, int(row[1])) == (row[8], f.flags), (path.name, f.path)
        root = tmp_path / f"root-{path.stem}"
        init_root(root, [path], "--ignorearch", "--ignoreos", "--nosignature")
        with sqlite3.connect(root / "var/lib/rpm/rpmdb.sqlite") as db:
            blob = bytes(db.execute("select blob from Packages").fetchone()[0])
        theirs = Header.parse(blob)
        headers = contents.headers
        ours = installed_header(headers.header, headers.signature, install_time=theirs.integer(Tag.INSTALLTIME) or 0,
                                install_tid=theirs.integer(Tag.INSTALLTID) or 0)
        assert ours.to_bytes(magic=False) == blob, path.name
    signed = data / "RPMS/hello-2.0-1.x86_64-signed.rpm"
    assert verify_headers(_headers_of(signed), key).certificate == "771b18d3d7baa28734333c424344591e1964c5fc"
    with pytest.raises(UnsignedPackage):
        verify_headers(_headers_of(data / "RPMS/hello-2.0-1.x86_64.rpm"), key)


def test_key_self_signed_with_sha1_is_accepted_as_rpm_accepts_it(tmp_path: Path) -> None:
    """Old distribution keys bind their user ids with SHA-1 self-signatures. Sequoia's policy refuses such a key;
    rpm 4.18 checks the package signature with the key material and accepts it, and so does copa."""
    key = make_gpg_key(tmp_path / "gpg", "rsa2048", gpg_args=("--cert-digest-algo", "SHA1",
                                                              "--faked-system-time", "20140101T000000"))
    path = build_rpm(RpmSpec("oldkey", "1", "1", files=(RpmFile("/o", b"o"),)), tmp_path)
    sign_rpms([path], key)
    assert "Signature, key ID" in _rpm_says(path, key, tmp_path) and ": OK" in _rpm_says(path, key, tmp_path)
    keys = key_files([key.public])
    assert verify_headers(_headers_of(path), keys).certificate == key.fingerprint.lower()
    resealed = _reseal(path, tmp_path / "resealed.rpm", b"copa test package", b"copa test packagf")
    with pytest.raises(BadSignature):
        verify_headers(_headers_of(resealed), keys)


@pytest.mark.parametrize("algo", ["rsa", "ed25519"])
def test_rpm_style_check_alone(signed: dict[str, tuple[Path, GpgKey]], algo: str) -> None:
    """The check used when Sequoia's policy refuses a key, on its own: right key, wrong key, other data."""
    path, key = signed[algo]
    headers = _headers_of(path)
    packet = headers.signature.bin(Tag.RSAHEADER) or headers.signature.bin(Tag.DSAHEADER)
    assert packet is not None
    mine = list(key_files([key.public]).certs)
    other = list(key_files([signed["ed25519" if algo == "rsa" else "rsa"][1].public]).certs)
    found = _verify_as_rpm(packet, headers.header_bytes, mine)
    assert found is not None and found.certificate == key.fingerprint.lower()
    assert _verify_as_rpm(packet, headers.header_bytes, other) is None
    assert _verify_as_rpm(packet, headers.header_bytes[:-1] + b"\1", mine) is None
    assert _verify_as_rpm(packet[:-1], headers.header_bytes, mine) is None
