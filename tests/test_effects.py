"""copa/pkg/effects against the real tools: OpenSSL's subject hash, ldconfig's cache and links, the host's own
ld.so.cache, and the shell-script reader on the host's real maintainer scripts."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from copa.oci.layer import Entry, Kind
from copa.pkg.effects import ldcache, libraries, scripts, shells
from copa.pkg.effects.merged import Merged
from copa.pkg.effects.subject_hash import canonical_string, load_single, subject_hash
from tests.support.rootview import apply, view_of

MOZILLA = Path("/usr/share/ca-certificates/mozilla")
MULTIARCH = Path("/lib/x86_64-linux-gnu")
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None or not MOZILLA.is_dir(),
                                   reason="needs openssl and ca-certificates on the host")
needs_ldconfig = pytest.mark.skipif(shutil.which("ldconfig") is None or not MULTIARCH.is_dir(),
                                    reason="needs an x86-64 Debian host's ldconfig and libraries")


@needs_openssl
def test_subject_hash_is_openssls_for_the_whole_root_store() -> None:
    certs = sorted(MOZILLA.glob("*.crt"))
    assert len(certs) > 100
    proc = subprocess.run(["sh", "-c", 'for f in "$@"; do openssl x509 -hash -noout -in "$f"; done', "sh",
                           *map(str, certs)], capture_output=True, text=True, check=True)
    want = proc.stdout.split()
    got = []
    for cert in certs:
        der = load_single(cert.read_bytes())
        assert der is not None, cert
        got.append(f"{subject_hash(der):08x}")
    assert got == want


@needs_openssl
def test_subject_hash_canonicalises_case_and_spaces(tmp_path: Path) -> None:
    """Names OpenSSL must fold together: case, runs of spaces, leading/trailing spaces (the oracle says so)."""
    subjects = ["/CN=Copa  Test   Root/O=Example", "/CN=  copa test root /O=EXAMPLE", "/CN=Other/O=Example"]
    hashes = []
    for i, subject in enumerate(subjects):
        key, pem = tmp_path / f"k{i}.pem", tmp_path / f"c{i}.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", str(key), "-out", str(pem), "-subj", subject, "-days", "1", "-utf8"],
                       check=True, capture_output=True)
        want = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(pem)], capture_output=True, text=True,
                              check=True).stdout.strip()
        der = load_single(pem.read_bytes())
        assert der is not None
        assert f"{subject_hash(der):08x}" == want
        hashes.append(want)
    assert hashes[0] == hashes[1] != hashes[2]
    assert canonical_string(b"  A\t B  ") == b"a b"


def test_host_cache_round_trips_byte_for_byte() -> None:
    data = Path("/etc/ld.so.cache").read_bytes()
    cache = ldcache.parse(data)
    assert cache.entries and cache.generator.startswith(b"ldconfig")
    assert ldcache.write(cache) == data
    assert list(ldcache.sort_entries(cache.entries)) == list(cache.entries)  # ldconfig's own order is ours too


def test_libcmp_is_numeric() -> None:
    assert ldcache.libcmp("libfoo.so.10", "libfoo.so.9") > 0
    assert ldcache.libcmp("libfoo.so.1.2", "libfoo.so.1.2.3") < 0
    assert ldcache.libcmp("libfoo.so", "libfoo.so") == 0


def _lib_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    lib = root / "usr/lib/x86_64-linux-gnu"
    for d in (lib, root / "etc/ld.so.conf.d", root / "usr/local/lib"):
        d.mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "etc/ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf\n\n")
    (root / "etc/ld.so.conf.d/libc.conf").write_text("# libc default configuration\n/usr/local/lib\n")
    (root / "etc/ld.so.conf.d/x86_64-linux-gnu.conf").write_text(
        "# Multiarch support\n/usr/local/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n")
    for name in ("libz.so.1", "liblzma.so.5", "libc.so.6"):
        real = (MULTIARCH / name).resolve()
        shutil.copy2(real, lib / real.name)
        if real.name != name:
            (lib / name).symlink_to(real.name)
    subprocess.run(["ldconfig", "-r", str(root)], check=True)
    return root


def _host_lib(name: str) -> Entry:
    real = (MULTIARCH / name).resolve()
    return Entry.file(f"usr/lib/x86_64-linux-gnu/{real.name}", real.read_bytes(), 0o644)


@needs_ldconfig
def test_cache_and_links_equal_ldconfigs(tmp_path: Path) -> None:
    """A layer adds a library without its soname link, adds one with it, and deletes one whose link stays behind:
    the effect's links and cache, written into the root, are what `ldconfig -r` then leaves unchanged."""
    root = _lib_root(tmp_path)
    lzma_real = (MULTIARCH / "liblzma.so.5").resolve().name
    layer = [_host_lib("libbz2.so.1.0"), _host_lib("libzstd.so.1"),
             Entry("usr/lib/x86_64-linux-gnu/libzstd.so.1", Kind.SYMLINK, 0o777,
                   linkname=(MULTIARCH / "libzstd.so.1").resolve().name),
             Entry.whiteout(f"usr/lib/x86_64-linux-gnu/{lzma_real}")]
    results = libraries.reproduce(Merged(view_of(root), layer), [], "amd64", None)
    effect = [e for r in results.values() for e in r.entries]
    mine = next(e for e in effect if e.path == "etc/ld.so.cache")
    assert mine.content is not None
    with mine.content() as f:
        my_cache = f.read()
    apply(root, layer)
    apply(root, [e for e in effect if e.path != "etc/ld.so.cache"])
    lib = root / "usr/lib/x86_64-linux-gnu"
    before = {p.name: os.readlink(p) if p.is_symlink() else "" for p in lib.iterdir()}
    assert before["libbz2.so.1.0"] == (MULTIARCH / "libbz2.so.1.0").resolve().name  # the soname link, created
    assert "liblzma.so.5" not in before  # the dangling link, removed
    subprocess.run(["ldconfig", "-r", str(root)], check=True)
    after = {p.name: os.readlink(p) if p.is_symlink() else "" for p in lib.iterdir()}
    assert after == before  # ldconfig finds nothing left to do
    assert my_cache == (root / "etc/ld.so.cache").read_bytes()
    listing = subprocess.run(["ldconfig", "-C", str(root / "etc/ld.so.cache"), "-p"], capture_output=True,
                             text=True, check=True).stdout
    assert "libbz2.so.1.0 (libc6,x86-64) => /lib/x86_64-linux-gnu/libbz2.so.1.0" in listing
    assert "liblzma" not in listing


@needs_ldconfig
def test_no_library_change_no_cache_change(tmp_path: Path) -> None:
    root = _lib_root(tmp_path)
    layer = [Entry.file("usr/lib/x86_64-linux-gnu/README", b"not a library\n")]
    assert libraries.reproduce(Merged(view_of(root), layer), [], "amd64", None) == {}


def test_script_reader_on_real_scripts() -> None:
    postinst = Path("/var/lib/dpkg/info/ca-certificates.postinst")
    if not postinst.is_file():
        pytest.skip("needs ca-certificates installed on the host")
    left = scripts.unhandled(postinst.read_text(), set())
    assert "update-ca-certificates" in left and "dpkg-trigger" in left
    assert not any(word.startswith(("-", "'", "[", "<", "!")) or word.isdigit() for word in left)
    text = 'set -e\ncase "$1" in\n  configure)\n    add-shell /bin/copash\n    update-alternatives --install \\\n' \
           '      /usr/bin/ed ed /bin/copash 10 || true\n  ;;\nesac\n'
    names = [(c.name, c.argv) for c in scripts.commands(text)]
    assert ("add-shell", ("/bin/copash",)) in names
    assert ("update-alternatives", ("--install", "/usr/bin/ed", "ed", "/bin/copash", "10")) in names


def test_add_shell_adds_the_usr_twin(tmp_path: Path) -> None:
    """bookworm's add-shell (/usr/sbin/add-shell, read for this) adds the path and its merged-/usr twin."""
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "bin").symlink_to("usr/bin")
    (root / "etc/shells").write_text("# /etc/shells: valid login shells\n/bin/sh\n/usr/bin/sh\n")
    entry = shells.add_shells(Merged(view_of(root), []), ["/bin/copash", "/bin/sh"], None)
    assert entry is not None and entry.content is not None
    with entry.content() as f:
        assert f.read().decode().splitlines()[-2:] == ["/bin/copash", "/usr/bin/copash"]
    if shutil.which("add-shell") and os.geteuid() == 0:
        subprocess.run(["add-shell", "/bin/copash", "/bin/sh"], env={**os.environ, "DPKG_ROOT": str(root)},
                       check=True)
        with entry.content() as f:
            assert f.read() == (root / "etc/shells").read_bytes()


@settings(max_examples=600, deadline=None)
@given(st.text(alphabet=" \t\r\n\x0b\x0c\xa0abc$=-/.'\"\\", max_size=40))
def test_script_words_are_shlex_words(segment: str) -> None:
    # oracle: shlex.split itself (posix), which the fast path for lines without quotes or escapes stands in for
    try:
        expected = shlex.split(segment, posix=True)
    except ValueError:
        expected = segment.split()
    assert scripts._words(segment) == expected
