"""dpkg versions and status database, checked against the real dpkg on this machine."""

from __future__ import annotations

import hashlib
import itertools
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from copa.pkg.dpkg.status import (
    StatusEntry,
    StatusParseError,
    entry_from_control,
    format_status,
    merge_status,
    parse_status,
)
from copa.pkg.dpkg.version import InvalidVersionError, compare_versions, normalize_version

REAL_STATUS = Path("/var/lib/dpkg/status")


def _require(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} is required (apt-get install dpkg)"
    return path


# --- versions ----------------------------------------------------------------------------------------

EDGE_VERSIONS = [
    "1.0", "1.0-1", "1.0-0", "0:1.0", "1:1.0", "1:0.9", "2:0", "1.0~rc1", "1.0~rc1-1", "1.0~~", "1.0~", "1.0+b1",
    "1.0-1+b1", "1.0-1~bpo12+1", "2.36-9+deb12u1", "2.36-9+deb12u4", "2.36-9+deb12u10", "2.36-9~deb12u1",
    "3.0.11-1~deb12u2", "3.0.13-1~deb12u1", "1.2.13.dfsg-1", "1:1.2.13.dfsg-1", "1.34+dfsg-1.2",
    "1.34+dfsg-1.2+deb12u1", "5.2.15-2", "5.2.15-2+b2", "0.0", "0", "00", "1.01", "1.1", "1.0a", "1.0A",
    "1.0.", "1.0-a", "1:1.0-1:2", "7.88.1-10+deb12u5", "1.2.3+git20230101.abc-1", "10", "9", "1.0+", "a1.0",
]


def _dpkg_cmp(a: str, b: str) -> int:
    def holds(op: str) -> bool:
        return subprocess.run(["dpkg", "--compare-versions", a, op, b], check=False,
                              stderr=subprocess.DEVNULL).returncode == 0

    return -1 if holds("lt") else (1 if holds("gt") else 0)


def _real_versions() -> list[str]:
    return sorted({e.version for e in parse_status(REAL_STATUS.read_bytes(), str(REAL_STATUS))})


def test_compare_versions_matches_dpkg_on_edge_cases() -> None:
    _require("dpkg")
    valid = [v for v in EDGE_VERSIONS if _is_valid(v)]
    pairs = [(a, b) for i, a in enumerate(valid) for b in valid[i:]]
    mismatches = [(a, b, compare_versions(a, b), _dpkg_cmp(a, b)) for a, b in pairs
                  if compare_versions(a, b) != _dpkg_cmp(a, b)]
    assert not mismatches
    assert len(pairs) > 500


def test_compare_versions_matches_dpkg_on_real_versions() -> None:
    versions = _real_versions()
    rng = random.Random(1234)
    pairs = [(rng.choice(versions), rng.choice(versions)) for _ in range(300)]
    # neighbours in sorted-string order are the close calls (same upstream, different suffix)
    pairs += list(itertools.pairwise(versions))
    mismatches = [(a, b) for a, b in pairs if compare_versions(a, b) != _dpkg_cmp(a, b)]
    assert not mismatches


def _is_valid(version: str) -> bool:
    # dpkg's own syntax check: --compare-versions fails on a bad version, or only warns ("bad syntax") on
    # faults that dpkg refuses when it reads a control file (an invalid character). We refuse both.
    run = subprocess.run(["dpkg", "--compare-versions", version, "eq", version], check=False,
                         stderr=subprocess.PIPE, text=True)
    return run.returncode == 0 and "invalid character" not in run.stderr


@pytest.mark.parametrize("version", ["", " ", "1:", ":1.0", "a:1.0", "1.0 2", "1.0-", "1.0-1:2", "1.0_1"])
def test_invalid_versions_refused_like_dpkg(version: str) -> None:
    # dpkg --compare-versions takes "" as "no version" (lower than all); as a package version it is invalid
    assert not _is_valid(version) or version == ""
    with pytest.raises(InvalidVersionError):
        compare_versions(version, "1.0")


def test_normalize_version() -> None:
    assert normalize_version("0:1.0-1") == "1.0-1"
    assert normalize_version(" 1:2.0 ") == "1:2.0"
    assert normalize_version("0:1:2-3") == "0:1:2-3"


# --- status file -------------------------------------------------------------------------------------


def test_real_status_roundtrips_byte_identical() -> None:
    data = REAL_STATUS.read_bytes()
    entries = parse_status(data, str(REAL_STATUS))
    assert len(entries) == data.count(b"\nPackage: ") + data.startswith(b"Package: ")
    assert format_status(entries) == data
    # dpkg keeps the file sorted, so re-sorting through merge_status changes nothing either
    assert merge_status(entries, []) == data


def test_real_status_views_agree_with_dpkg_query() -> None:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${Architecture}\t${Version}\t${db:Status-Abbrev}\t"
         "${source:Package}\t${source:Version}\t${Multi-Arch}\n"],
        check=True, capture_output=True, text=True).stdout
    expected = {}
    for line in out.splitlines():
        name, arch, version, _abbrev, src, src_version, ma = line.split("\t")
        expected[(name, arch)] = (version, src, src_version, ma or "no")
    entries = parse_status(REAL_STATUS.read_bytes(), str(REAL_STATUS))
    got = {e.key: (e.version, *e.source, e.multi_arch) for e in entries}
    assert got == expected
    assert all(e.status == ("install", "ok", "installed") for e in entries if e.installed)


def test_conffiles_parsed() -> None:
    data = (b"Package: a\nStatus: install ok installed\nVersion: 1\n"
            b"Conffiles:\n /etc/a 0123456789abcdef0123456789abcdef\n"
            b" /etc/with space.conf fedcba9876543210fedcba9876543210 obsolete\n"
            b" /etc/dpkg/x newconffile remove-on-upgrade\nDescription: x\n")
    (entry,) = parse_status(data, "s")
    c = entry.conffiles
    assert [x.path for x in c] == ["/etc/a", "/etc/with space.conf", "/etc/dpkg/x"]
    assert (c[1].obsolete, c[1].remove_on_upgrade) == (True, False)
    assert (c[2].md5, c[2].remove_on_upgrade) == ("newconffile", True)
    assert format_status([entry]) == data + b"\n"


def test_final_paragraph_without_trailing_newline() -> None:
    data = b"Package: a\nVersion: 1\n\nPackage: b\nDescription: x\n y"
    entries = parse_status(data, "s")
    assert [e.package for e in entries] == ["a", "b"]
    assert entries[1].get("Description") == "x\n y"
    assert format_status(entries) == b"Package: a\nVersion: 1\n\nPackage: b\nDescription: x\n y\n\n"


@pytest.mark.parametrize(("data", "message"), [
    (b"Package: a\nnot a field\n", "s:2: field name 'not a field' must be followed by a colon"),
    (b" leading continuation\n", "s:1: continuation line outside a field"),
    (b"Package: a\nVersion: 1\nversion: 2\n", "s:3: duplicate value for field 'version'"),
    (b"Package: a\n\nVersion: 1\nStatus: x\n", "s:3: paragraph has no Package field"),
    (b"Package: a\n:1\n", "s:2: field name '' must be followed by a colon"),
])
def test_parse_errors_name_file_and_line(data: bytes, message: str) -> None:
    with pytest.raises(StatusParseError) as info:
        parse_status(data, "s")
    assert message in str(info.value)


# --- entry_from_control / merge_status against dpkg itself --------------------------------------------

CONTROL_FOO = """\
Package: foo-test
Version: 0:1.2-3~deb12u1
Architecture: amd64
Maintainer: Test <t@example.org>
Installed-Size: 12
Depends: libc6 (>= 2.34),libfoo1(<<3) | Bar,
  baz:any , qux (>= 0:1.0)
Pre-Depends: dpkg(>= 1.15)
Recommended: rec
Section: misc
Priority: optional
Multi-Arch: foreign
Essential: no
Source: foo-src (1.2-3)
Homepage: https://example.org/
X-Custom: hello
Built-Using: gcc-12 (= 12.2.0-14)
Provides: foo-virtual (= 1.2), other
Description: test package
 Long description.
 .
 More.
"""


def _control(name: str, version: str, arch: str = "amd64", extra: str = "") -> str:
    return (f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: T <t@example.org>\n"
            f"{extra}Description: {name} test\n")


def _build_deb(work: Path, control: str, files: dict[str, bytes], conffiles: list[str]) -> Path:
    _require("dpkg-deb")
    pkgdir = work / f"build-{len(list(work.iterdir()))}"
    (pkgdir / "DEBIAN").mkdir(parents=True)
    (pkgdir / "DEBIAN" / "control").write_text(control)
    if conffiles:
        (pkgdir / "DEBIAN" / "conffiles").write_text("".join(c + "\n" for c in conffiles))
    for rel, content in files.items():
        target = pkgdir / rel.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    deb = work / f"{pkgdir.name}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(pkgdir), str(deb)],
                   check=True, capture_output=True)
    return deb


def _new_root(work: Path) -> Path:
    root = work / "root"
    admin = root / "var" / "lib" / "dpkg"
    for sub in ("info", "updates", "triggers"):
        (admin / sub).mkdir(parents=True)
    (admin / "status").write_bytes(b"")
    return root


def _dpkg_install(root: Path, *debs: Path) -> bytes:
    _require("dpkg")
    subprocess.run(["dpkg", f"--root={root}", "--force-not-root", "--force-bad-path", "--force-script-chrootless",
                    "--force-depends", "--no-triggers", "-i", *map(str, debs)],
                   check=True, capture_output=True)
    return (root / "var" / "lib" / "dpkg" / "status").read_bytes()


def _our_entry(deb: Path, files: dict[str, bytes], conffiles: list[str]) -> StatusEntry:
    # Read the control file out of the .deb (not our input text) as the patcher will.
    out = deb.parent / f"{deb.stem}-ctrl"
    subprocess.run(["dpkg-deb", "-e", str(deb), str(out)], check=True)
    control = (out / "control").read_bytes()
    return entry_from_control(control, [(c, hashlib.md5(files[c]).hexdigest()) for c in conffiles])


# Essential/Protected, Multi-Arch: no (not written), the obsolete < and > relations, the nickname
# Optional merged into Suggests, trailing blanks, a tab continuation line, Origin/Bugs placement.
CONTROL_ESS = (
    "Package: ess-test\nVersion: 1.0-1\nArchitecture: amd64\nEssential: yes\nProtected: yes\nMulti-Arch: no\n"
    "Maintainer: T <t@example.org>  \nBugs: debbugs://bugs.example.org\nOrigin: Example\n"
    "Conflicts: old (< 2), older (> 1:0.5)\nReplaces: old\nEnhances: x\nBreaks: y (<< 3~)\nSuggests: z\n"
    "Optional: zz\nX-Trailing: value   \nDescription: ess\n\tcontinued with tab\n"
)


def test_entry_from_control_matches_dpkg_fresh_install(tmp_path: Path) -> None:
    files = {"/etc/foo/foo.conf": b"a=1\n", "/etc/foo/other.conf": b"b=2\n", "/usr/share/foo/x": b"hi\n"}
    conffiles = ["/etc/foo/foo.conf", "/etc/foo/other.conf"]
    deb = _build_deb(tmp_path, CONTROL_FOO, files, conffiles)
    deb_ess = _build_deb(tmp_path, CONTROL_ESS, {}, [])
    root = _new_root(tmp_path)
    dpkg_status = _dpkg_install(root, deb, deb_ess)
    ours = merge_status([], [_our_entry(deb, files, conffiles), _our_entry(deb_ess, {}, [])])
    assert ours.decode() == dpkg_status.decode()
    assert ours == dpkg_status


def test_merge_status_matches_dpkg_with_existing_packages(tmp_path: Path) -> None:
    root = _new_root(tmp_path)
    subprocess.run(["dpkg", f"--root={root}", "--force-not-root", "--add-architecture", "i386"], check=True)
    first = [
        (_control("zzz-last", "1.0-1"), {}, []),
        (_control("aaa-first", "2:1.0", "all", "Priority: required\nSection: libs\n"), {}, []),
        # changes from arch all to amd64 in the upgrade below (dpkg replaces the single instance)
        (_control("mid-pkg", "1.0-1", "all"), {"/etc/mid.conf": b"old\n"}, ["/etc/mid.conf"]),
        (_control("libsame", "1.0-1", "amd64", "Multi-Arch: same\n"), {}, []),
        (_control("libsame", "1.0-1", "i386", "Multi-Arch: same\n"), {}, []),
    ]
    debs = [_build_deb(tmp_path, c, f, cf) for c, f, cf in first]
    before = _dpkg_install(root, *debs)
    old_entries = parse_status(before, "status")
    assert [e.key for e in old_entries] == [("aaa-first", "all"), ("libsame", "amd64"), ("libsame", "i386"),
                                            ("mid-pkg", "all"), ("zzz-last", "amd64")]

    second = [
        (_control("mid-pkg", "1.1-1", "amd64", "Depends: aaa-first (>= 2:1.0)\n"),
         {"/etc/mid.conf": b"new\n"}, ["/etc/mid.conf"]),
        (_control("libsame", "1.0-2", "i386", "Multi-Arch: same\n"), {}, []),
        (_control("libsame", "1.0-2", "amd64", "Multi-Arch: same\n"), {}, []),
        (_control("b-new", "0.1", "amd64", "Multi-Arch: allowed\n"), {"/etc/b.conf": b"b\n"}, ["/etc/b.conf"]),
        (_control("Zcaps", "1", "all"), {}, []),
    ]
    debs2 = [_build_deb(tmp_path, c, f, cf) for c, f, cf in second]
    after = _dpkg_install(root, *debs2)
    new_entries = [_our_entry(d, f, cf) for d, (_, f, cf) in zip(debs2, second, strict=True)]
    ours = merge_status(old_entries, new_entries)
    assert ours.decode() == after.decode()
    assert ours == after
