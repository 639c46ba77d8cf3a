"""Property tests for every parser of foreign input: whatever the bytes, the parser returns a value or raises its
own error (a CopaError subclass, which the CLI turns into one line and an exit code), never another exception.

Inputs are valid seeds (real files where this machine makes them cheaply: the hermetic repository's Release,
Packages and .debs, the hermetic image's dpkg status; small hand-written ones for the rest) run through random
mutations (bit flips, truncation, cut-and-splice, inserted tokens that parsers treat specially), plus arbitrary
bytes. A parser is called the way copa calls it, and the parsed value is then used (every field read, every
iterator drained), because lazy parsers fail late.

Bounds: EXAMPLES per parser (the whole file runs in about 10 s); `-m sweep` runs SWEEP_EXAMPLES. A failing input
hypothesis finds is printed; it becomes a case in tests/test_fuzz_corpus.py.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from copa.bulk.config import parse_config
from copa.errors import CopaError
from copa.oci.auth import parse_www_authenticate
from copa.oci.digest import Digest, verifying
from copa.oci.image import Image
from copa.oci.model import Descriptor, ImageConfig, Manifest, MediaType, Platform, parse_document, parse_manifest
from copa.oci.reference import Reference
from copa.oci.rootfs import scan
from copa.pkg.apk.index import parse_index, read_apkindex
from copa.pkg.apk.installed import parse_installed
from copa.pkg.apk.repos import parse_repositories
from copa.pkg.apk.signing import Keys
from copa.pkg.apt.conf import parse_into
from copa.pkg.apt.packages import IndexText
from copa.pkg.apt.preferences import parse_preferences
from copa.pkg.apt.release import Release
from copa.pkg.apt.sources import parse_file as parse_sources_file
from copa.pkg.dpkg.config import parse_diversions, parse_filters
from copa.pkg.dpkg.debfile import read_deb
from copa.pkg.dpkg.status import parse_status
from copa.pkg.repoauth import NetrcFile, Uri
from copa.pkg.rpm.cpio import CpioReader
from copa.pkg.rpm.header import Entry, Header, Value
from copa.pkg.rpm.repomd import iter_packages, parse_repomd
from copa.pkg.rpm.repos import parse_ini
from copa.pkg.rpm.tags import Type
from copa.report.load import parse_report
from tests.support import debimage
from tests.support.trivy import write_report

EXAMPLES = 100
SWEEP_EXAMPLES = 2000
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SWEEP = settings(FUZZ, max_examples=SWEEP_EXAMPLES, derandomize=False)

# Tokens parsers give meaning to: separators, escapes, huge numbers, format magics, odd text.
TOKENS = [b"\n", b"\n\n", b" ", b":", b"\x00", b"\xff", b"\xc3", b"-1", b"99999999999999999999", b"0x", b"{", b"}",
          b"[", b"]", b'"', b",", b"<", b">", b"&", b"=", b"/", b"../", b"\\u0000", b"\\ud800", b"1e999", b"NaN",
          b"null", b"true", b"070701", b"TRAILER!!!", b"\x8e\xad\xe8\x01", b"\x1f\x8b", b"\x28\xb5\x2f\xfd",
          b"ustar\x00", b"<?xml", b"<!DOCTYPE x [<!ENTITY a 'aaaa'>]>", b"&a;", b"Package: ", b"Version: ",
          b"SHA256:", b" 1 ", b"P:", b"V:", b"C:Q1", b"F:", b"R:", b"Z:Q1", b"a:", b"M:", b"\r\n", b"\t"]


def _mutate(seed: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    data = bytearray(seed)
    for op, pos, arg in ops:
        at = pos % (len(data) + 1)
        if op == 0 and data:  # flip bits of a byte
            data[at % len(data)] ^= (arg % 255) + 1
        elif op == 1:  # truncate
            del data[at:]
        elif op == 2:  # insert a token
            data[at:at] = TOKENS[arg % len(TOKENS)]
        elif op == 3:  # delete a span
            del data[at:at + arg % 64 + 1]
        elif op == 4:  # duplicate a span (repeated fields, records)
            data[at:at] = data[at:at + arg % 256 + 1]
        elif op == 5:  # overwrite with a big or negative number's digits
            data[at:at + 2] = str([-1, 0, 2**31, 2**32, 2**63, 10**30][arg % 6]).encode()
    return bytes(data)


_OPS = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1 << 20), st.integers(0, 1 << 10)), max_size=8)


def inputs(*seeds: bytes) -> st.SearchStrategy[bytes]:
    """Mutations of the seeds, and now and then bytes from nowhere."""
    mutated = st.builds(_mutate, st.sampled_from(seeds), _OPS)
    return st.one_of(mutated, mutated, mutated, st.binary(max_size=512))


# Seeds must parse without an error (set by test_seed_parses): mutations then start deep inside each parser.
STRICT = {"on": False}


def holds(fn: Callable[[], Any], documented: tuple[type[Exception], ...] = ()) -> None:
    """The property: a value or the parser's own error (or an exception its docstring names for its caller)."""
    try:
        fn()
    except documented:
        assert not STRICT["on"], "a seed does not parse"
    except CopaError as e:
        assert not STRICT["on"], f"a seed does not parse: {e}"
        assert str(e).strip() and "\n" not in str(e).strip(), f"error message is not one line: {e!r}"


def _drain(value: Any, depth: int = 0) -> None:
    """Touch everything a parsed value holds (lazy fields, iterators, properties)."""
    if depth > 6:
        return
    if isinstance(value, (str, bytes, int, float, bool)) or value is None:
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _drain(k, depth + 1)
            _drain(v, depth + 1)
        return
    if isinstance(value, (list, tuple, set, frozenset)) or hasattr(value, "__next__"):
        for v in value:
            _drain(v, depth + 1)
        return
    fields = getattr(value, "__dataclass_fields__", None)
    if fields:
        for name in fields:
            if not name.startswith("_"):
                _drain(getattr(value, name, None), depth + 1)


# --------------------------------------------------------------------------------------------- seeds


def _repo_file(rel: str) -> bytes:
    return (debimage.hermetic_repo().root / rel).read_bytes()


STATUS_SEED = b"""Package: app
Status: install ok installed
Priority: optional
Section: misc
Installed-Size: 12
Maintainer: copa tests <copa@example.invalid>
Architecture: amd64
Version: 1:1.0-1+b2
Depends: libc6 (>= 2.36), libfoo1 (= 1.0) | bar:any
Conffiles:
 /etc/conf/edited.conf 0123456789abcdef0123456789abcdef
 /etc/conf/gone.conf 0123456789abcdef0123456789abcdef obsolete remove-on-upgrade
Description: an app
 long text
 .
 more

Package: libfoo1
Status: hold ok installed
Architecture: amd64
Multi-Arch: same
Source: foo (1.0)
Version: 1.0
"""

APK_INDEX_SEED = b"""C:Q1hdUdkh3AeDBKBzsJ5sRyuSmA2bA=
P:musl
V:1.2.4-r2
A:x86_64
S:383152
I:622592
T:the musl c library
U:https://musl.libc.org/
L:MIT
o:musl
m:Maintainer <m@example.invalid>
t:1698745424
c:de1a3a8f0ab7a5e5b4a5b6c7d8e9f0a1b2c3d4e5
D:so:libc.musl-x86_64.so.1 !conflict pc:foo>=1.0 cmd:sh=1.0
p:so:libc.musl-x86_64.so.1=1 cmd:ldd
i:busybox
k:100

"""

APK_INSTALLED_SEED = APK_INDEX_SEED.rstrip(b"\n") + b"""
r:other
q:1
F:lib
R:ld-musl-x86_64.so.1
a:0:0:755
Z:Q1+7Xk4yIeV6HqyFYGUhMhlCsobkY=
R:libc.musl-x86_64.so.1
F:etc
M:0:0:755

"""

REPOMD_SEED = b"""<?xml version="1.0" encoding="UTF-8"?>
<repomd xmlns="http://linux.duke.edu/metadata/repo" xmlns:rpm="http://linux.duke.edu/metadata/rpm">
  <revision>1700000000</revision>
  <data type="primary">
    <checksum type="sha256">a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90</checksum>
    <open-checksum type="sha256">a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90</open-checksum>
    <location href="repodata/primary.xml.gz"/>
    <timestamp>1700000000</timestamp>
    <size>1234</size>
    <open-size>5678</open-size>
  </data>
</repomd>
"""

PRIMARY_SEED = b"""<?xml version="1.0" encoding="UTF-8"?>
<metadata xmlns="http://linux.duke.edu/metadata/common" xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="1">
<package type="rpm">
  <name>openssl-libs</name>
  <arch>x86_64</arch>
  <version epoch="1" ver="3.0.7" rel="27.el9"/>
  <checksum type="sha256" pkgid="YES">a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90</checksum>
  <summary>libs</summary>
  <packager>someone</packager>
  <url>https://www.openssl.org/</url>
  <time file="1700000000" build="1699999999"/>
  <size package="2200000" installed="6500000" archive="6600000"/>
  <location href="Packages/o/openssl-libs-3.0.7-27.el9.x86_64.rpm"/>
  <format>
    <rpm:license>ASL 2.0</rpm:license>
    <rpm:sourcerpm>openssl-3.0.7-27.el9.src.rpm</rpm:sourcerpm>
    <rpm:header-range start="4504" end="38120"/>
    <rpm:provides><rpm:entry name="libcrypto.so.3()(64bit)"/><rpm:entry name="openssl-libs" flags="EQ" epoch="1"
      ver="3.0.7" rel="27.el9"/></rpm:provides>
    <rpm:requires><rpm:entry name="libc.so.6(GLIBC_2.34)(64bit)"/><rpm:entry name="/bin/sh" pre="1"/></rpm:requires>
    <rpm:obsoletes><rpm:entry name="openssl" flags="LT" epoch="1" ver="1.1"/></rpm:obsoletes>
    <file>/etc/pki/tls/openssl.cnf</file>
  </format>
</package>
</metadata>
"""

MANIFEST_SEED = json.dumps({
    "schemaVersion": 2, "mediaType": MediaType.OCI_MANIFEST,
    "config": {"mediaType": MediaType.OCI_CONFIG, "size": 2, "digest": "sha256:" + "a" * 64},
    "layers": [{"mediaType": MediaType.OCI_LAYER_GZIP, "size": 10, "digest": "sha256:" + "b" * 64,
                "urls": ["https://x.invalid/b"], "annotations": {"k": "v"}}],
    "annotations": {"org.opencontainers.image.ref.name": "x"}}).encode()
INDEX_SEED = json.dumps({
    "schemaVersion": 2, "mediaType": MediaType.OCI_INDEX,
    "manifests": [{"mediaType": MediaType.OCI_MANIFEST, "size": 10, "digest": "sha256:" + "c" * 64,
                   "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}}]}).encode()
CONFIG_SEED = json.dumps({
    "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
    "config": {"Env": ["PATH=/usr/bin"], "Labels": {"a": "b"}},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "d" * 64]},
    "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "x", "empty_layer": True}]}).encode()

NATIVE_SEED = json.dumps({
    "apiVersion": "v1alpha1", "metadata": {"os": {"type": "debian", "version": "12"}, "config": {"arch": "amd64"}},
    "updates": [{"name": "app", "installedVersion": "1.0", "fixedVersion": "2.0", "vulnerabilityID": "CVE-1"}]
}).encode()
GRYPE_SEED = json.dumps({
    "matches": [{"vulnerability": {"id": "CVE-1", "fix": {"versions": ["2.0"], "state": "fixed"}},
                 "artifact": {"name": "app", "version": "1.0", "type": "deb"}}],
    "source": {"type": "image", "target": {"userInput": "x", "config": "e30="}},
    "distro": {"name": "debian", "version": "12"}}).encode()


def _trivy_seed() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        return write_report(Path(d) / "t.json", debimage.FIXES).read_bytes()


def _header_seed() -> bytes:
    values = [Value.string(1000, "name"), Value.string(1001, "1.0"), Value.int32(1009, 5, 6),
              Value.strings(1027, ["/a", "/b/c"]), Value.bin(259, b"\x01\x02\x03"),
              Value.ints(1030, Type.INT16, [0o100644, 0o40755]), Value.strings(1004, ["summary"], Type.I18NSTRING)]
    plain = Header((), b"").append(values)
    # The immutable region rpm >= 4.0 writes: a first entry pointing at a trailer that counts every entry.
    n = len(plain.entries) + 1
    trailer = struct.pack(">IIiI", 63, Type.BIN, -16 * n, 16)
    return Header((Entry(63, Type.BIN, len(plain.data), 16), *plain.entries), plain.data + trailer).to_bytes()


def _newc(name: str, body: bytes, mode: int = 0o100644) -> bytes:
    fields = [1, mode, 0, 0, 1, 0, len(body), 0, 0, 0, 0, len(name) + 1, 0]
    head = b"070701" + b"".join(b"%08x" % f for f in fields) + name.encode() + b"\0"
    head += b"\0" * (-len(head) % 4)
    return head + body + b"\0" * (-len(body) % 4)


CPIO_SEED = _newc("./usr/bin/app", b"#!/bin/sh\n") + _newc("./usr/lib", b"", 0o40755) + _newc("TRAILER!!!", b"")


def _tar_seed() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.size, info.linkname = kind, len(data), link
            tar.addfile(info, io.BytesIO(data) if data else None)
        add("etc", tarfile.DIRTYPE)
        add("etc/os-release", data=b"ID=debian\nVERSION_ID=12\n")
        add("etc/.wh.gone")
        add("usr/.wh..wh..opq")
        add("bin", tarfile.SYMTYPE, link="usr/bin")
        add("etc/hard", tarfile.LNKTYPE, link="etc/os-release")
        add("var/lib/dpkg/status", data=STATUS_SEED)
    return out.getvalue()


def _apkindex_seed() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in (("DESCRIPTION", b"v3.19\n"), ("APKINDEX", APK_INDEX_SEED)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(out.getvalue(), mtime=0)


# --------------------------------------------------------------------------------------------- the properties

# Built once at import (a second or so): hypothesis draws from them.
REPO_RELEASE = _repo_file(f"dists/{debimage.SUITE}/Release")
REPO_PACKAGES = _repo_file(f"dists/{debimage.SUITE}/main/binary-amd64/Packages")
DEB_SEED = (debimage.hermetic_repo().deb("app", "2.0")).read_bytes()
TRIVY_SEED = _trivy_seed()
HEADER_SEED = _header_seed()
TAR_SEED = _tar_seed()
APKINDEX_SEED = _apkindex_seed()


def check_status(data: bytes) -> None:
    holds(lambda: _drain(parse_status(data, "/var/lib/dpkg/status")))


def check_release(data: bytes) -> None:
    holds(lambda: _drain(Release.parse(data.decode("utf-8", "replace"), "Release")))


def check_packages(data: bytes) -> None:
    def run() -> None:
        index = IndexText("Packages", data=data)
        _drain(list(index.rows()))
        _drain(index.provides())
    holds(run)


def check_apk_index(data: bytes) -> None:
    holds(lambda: _drain(parse_index(data.decode("utf-8", "replace"), "http://repo.invalid", "APKINDEX")))


def check_apkindex_archive(data: bytes) -> None:
    holds(lambda: _drain(read_apkindex(data, Keys({}), True, "http://repo.invalid", "APKINDEX.tar.gz")))


def check_apk_installed(data: bytes) -> None:
    holds(lambda: _drain(parse_installed(data.decode("utf-8", "replace"))))


def check_rpm_header(data: bytes) -> None:
    def run() -> None:
        header = Header.parse(data)
        for tag in header.tags:
            value = header.value(tag)
            _drain(value)
            entry = header.entry(tag)
            assert entry is not None
            if entry.type in (Type.STRING, Type.STRING_ARRAY, Type.I18NSTRING):
                header.strings(tag)
            elif entry.type == Type.BIN:
                header.bin(tag)
            elif entry.type != Type.NULL:
                header.ints(tag)
        header.immutable()
        header.to_bytes()
    holds(run)


def check_cpio(data: bytes) -> None:
    def run() -> None:
        for entry, body in CpioReader(io.BytesIO(data), "payload"):
            _drain(entry)
            body.read(1 << 16)
    holds(run)


def check_repomd(data: bytes) -> None:
    holds(lambda: _drain(parse_repomd(data, "repomd.xml")))


def check_primary(data: bytes) -> None:
    holds(lambda: _drain(list(iter_packages(io.BytesIO(data), "primary.xml"))))


def check_manifest(data: bytes) -> None:
    holds(lambda: _drain(parse_manifest(data)))
    holds(lambda: _drain(parse_document(data, MediaType.OCI_INDEX)))


def check_config(data: bytes) -> None:
    holds(lambda: _drain(ImageConfig.parse(data)))


def check_platform(data: bytes) -> None:
    holds(lambda: _drain(Platform.parse(data.decode("utf-8", "replace"))))


def check_report(data: bytes) -> None:
    holds(lambda: _drain(parse_report(data, "report.json")))


class _MemSource:
    """A Source over blobs in memory: the only way to hand scan() bytes no image tool would write."""

    description = "fuzz"

    def __init__(self, blobs: dict[Digest, bytes]) -> None:
        self._blobs = blobs

    def open_blob(self, desc: Descriptor) -> Any:
        return verifying(io.BytesIO(self._blobs[desc.digest]), desc.digest, desc.size, "fuzz blob")


def scan_layer(data: bytes, media_type: str = MediaType.OCI_LAYER) -> None:
    """A layer through the merged view, its captured files read: the blob's own digest is its diff_id (and its
    descriptor's), so only its content is hostile."""
    layer = Digest.of_bytes(data)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [str(layer)]}}).encode()
    manifest = parse_manifest(json.dumps({
        "schemaVersion": 2, "mediaType": MediaType.OCI_MANIFEST,
        "config": {"mediaType": MediaType.OCI_CONFIG, "size": len(config), "digest": str(Digest.of_bytes(config))},
        "layers": [{"mediaType": media_type, "size": len(data), "digest": str(layer)}]}).encode())
    assert isinstance(manifest, Manifest)
    source = _MemSource({layer: data, Digest.of_bytes(config): config})
    image = Image.load(source, manifest)  # type: ignore[arg-type]  # reads blobs only, the protocol's rest unused
    view = scan(image, capture=["etc", "var/lib/dpkg"])
    view.read("etc/os-release")
    view.read("var/lib/dpkg/status")
    view.read("etc/hard")


def check_layer(data: bytes) -> None:
    holds(lambda: scan_layer(data))


def check_layer_gzip(data: bytes) -> None:
    """The same through gzip: a stream cut or damaged inside a member fails in the decompressor."""
    holds(lambda: scan_layer(data, MediaType.OCI_LAYER_GZIP))


def check_deb(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.deb"
        path.write_bytes(data)
        stage = Path(d) / "stage"
        stage.mkdir()
        holds(lambda: _drain(read_deb(path, stage)))
        for staged in stage.rglob("*"):  # nothing lands outside the stage directory
            assert staged.resolve().is_relative_to(Path(d).resolve())


# Configuration files read from the image (as hostile as its packages) and from the user.


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def check_apt_sources(data: bytes) -> None:
    holds(lambda: _drain(parse_sources_file(_text(data), "/etc/apt/sources.list")))


def check_apt_deb822(data: bytes) -> None:
    holds(lambda: _drain(parse_sources_file(_text(data), "/etc/apt/sources.list.d/x.sources")))


def check_apt_preferences(data: bytes) -> None:
    holds(lambda: _drain(parse_preferences(_text(data), "/etc/apt/preferences")))


def check_apt_conf(data: bytes) -> None:
    values: dict[str, str] = {}
    holds(lambda: parse_into(values, _text(data), "/etc/apt/apt.conf"))


def check_dpkg_diversions(data: bytes) -> None:
    holds(lambda: _drain(parse_diversions(data)))


def check_dpkg_filters(data: bytes) -> None:
    holds(lambda: _drain(parse_filters(data)))


def check_dnf_ini(data: bytes) -> None:
    holds(lambda: _drain(parse_ini(_text(data), "/etc/yum.repos.d/x.repo")), (ValueError,))  # dnf skips the file


def check_apk_repositories(data: bytes) -> None:
    holds(lambda: _drain(parse_repositories(_text(data), "x86_64")))


def check_netrc(data: bytes) -> None:
    def run() -> None:
        netrc = NetrcFile.parse(_text(data), "auth.conf")
        netrc.check()
        netrc.match(Uri.parse("https://deb.example.invalid/debian/dists/x"))
    holds(run)


def check_bulk_config(data: bytes) -> None:
    holds(lambda: _drain(parse_config(data, "fleet.yaml")))


def check_reference(data: bytes) -> None:
    holds(lambda: _drain(Reference.parse(_text(data))))


def check_challenge(data: bytes) -> None:
    holds(lambda: _drain(parse_www_authenticate(_text(data))))


SOURCES_SEED = b"""deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://deb.example.invalid/debian bookworm main
deb-src http://deb.example.invalid/debian bookworm main
"""
DEB822_SEED = b"""Types: deb deb-src
URIs: http://deb.example.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
Architectures: amd64 arm64
Enabled: yes
"""
PREFERENCES_SEED = b"""Package: *
Pin: release a=bookworm-backports
Pin-Priority: 500

Package: app libfoo*
Pin: version 2.0*
Pin-Priority: 1001
"""
APT_CONF_SEED = b"""APT::Install-Recommends "false";
APT { Get { Upgrade-By-Source-Package "true"; }; };
Dir::Etc::trusted "/etc/apt/trusted.gpg";
#clear APT::Never-MarkAuto-Sections;
APT::Default-Release "bookworm";
"""
DIVERSIONS_SEED = b"/usr/bin/man\n/usr/bin/man.REAL\n:\n/usr/bin/tool\n/usr/bin/tool.victim\ndiverter\n"
FILTERS_SEED = (b"path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\n"
                b"path-exclude=/usr/share/man/*\n")
DNF_SEED = b"""[baseos]
name=BaseOS $releasever - $basearch
baseurl=https://cdn.example.invalid/$releasever/$basearch/baseos/os
        https://mirror.example.invalid/baseos
gpgcheck=1
enabled=1
gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-redhat-release
priority=10
excludepkgs=kernel*
"""
APK_REPOS_SEED = b"https://dl-cdn.example.invalid/alpine/v3.19/main\n@edge https://dl-cdn.example.invalid/alpine/edge/community\n#x\n"
NETRC_SEED = (b"machine deb.example.invalid/debian login u password p\n"
              b"machine https://other.invalid:8443 login a password b\n")
BULK_SEED = b"""apiVersion: copa.sh/v1alpha1
kind: PatchConfig
images:
  - name: "nginx"
    image: "docker.io/library/nginx"
    tags:
      strategy: "pattern"
      pattern: '^1\\.2[0-9]\\.[0-9]+$'
      maxTags: 3
    target:
      tag: "{{ .SourceTag }}-patched"
"""
REFERENCE_SEED = b"registry.example.invalid:5000/ns/app:1.0@sha256:" + b"a" * 64
CHALLENGE_SEED = b'Bearer realm="https://auth.example.invalid/token",service="registry",scope="repository:a/b:pull"'


TARGETS: dict[str, tuple[Callable[[bytes], None], tuple[bytes, ...]]] = {
    "dpkg-status": (check_status, (STATUS_SEED,)),
    "apt-release": (check_release, (REPO_RELEASE,)),
    "apt-packages": (check_packages, (REPO_PACKAGES, STATUS_SEED)),
    "apk-index": (check_apk_index, (APK_INDEX_SEED,)),
    "apk-index-archive": (check_apkindex_archive, (APKINDEX_SEED,)),
    "apk-installed": (check_apk_installed, (APK_INSTALLED_SEED,)),
    "rpm-header": (check_rpm_header, (HEADER_SEED,)),
    "rpm-cpio": (check_cpio, (CPIO_SEED,)),
    "rpm-repomd": (check_repomd, (REPOMD_SEED,)),
    "rpm-primary": (check_primary, (PRIMARY_SEED,)),
    "oci-manifest": (check_manifest, (MANIFEST_SEED, INDEX_SEED)),
    "oci-config": (check_config, (CONFIG_SEED,)),
    "oci-platform": (check_platform, (b"linux/arm/v7", b"linux/amd64")),
    "report": (check_report, (TRIVY_SEED, NATIVE_SEED, GRYPE_SEED)),
    "layer-tar": (check_layer, (TAR_SEED,)),
    "layer-tar-gzip": (check_layer_gzip, (gzip.compress(TAR_SEED, mtime=0),)),
    "deb": (check_deb, (DEB_SEED,)),
    "apt-sources": (check_apt_sources, (SOURCES_SEED,)),
    "apt-deb822": (check_apt_deb822, (DEB822_SEED,)),
    "apt-preferences": (check_apt_preferences, (PREFERENCES_SEED,)),
    "apt-conf": (check_apt_conf, (APT_CONF_SEED,)),
    "dpkg-diversions": (check_dpkg_diversions, (DIVERSIONS_SEED,)),
    "dpkg-filters": (check_dpkg_filters, (FILTERS_SEED,)),
    "dnf-ini": (check_dnf_ini, (DNF_SEED,)),
    "apk-repositories": (check_apk_repositories, (APK_REPOS_SEED,)),
    "repository-auth": (check_netrc, (NETRC_SEED,)),
    "bulk-config": (check_bulk_config, (BULK_SEED,)),
    "reference": (check_reference, (REFERENCE_SEED,)),
    "www-authenticate": (check_challenge, (CHALLENGE_SEED,)),
}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_seed_parses(target: str) -> None:
    """The unmutated seeds are valid: the mutations start from inputs that reach deep into each parser."""
    check, seeds = TARGETS[target]
    STRICT["on"] = True
    try:
        for seed in seeds:
            check(seed)
    finally:
        STRICT["on"] = False


def _property(target: str, config: settings) -> Callable[[], None]:
    check, seeds = TARGETS[target]

    @config
    @given(inputs(*seeds))
    def prop(data: bytes) -> None:
        check(data)

    return prop


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_any_input_gives_a_value_or_a_copa_error(target: str) -> None:
    _property(target, FUZZ)()


@pytest.mark.sweep
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_sweep(target: str) -> None:
    _property(target, SWEEP)()
