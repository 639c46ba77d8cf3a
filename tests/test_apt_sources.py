"""APT source parsing, checked against apt itself (`apt-get --print-uris update`) as the oracle."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from copa.errors import UnsupportedImageError, UsageError
from copa.pkg.apt.openpgp import keyring_for_source, resolve_in_root
from copa.pkg.apt.sources import AptSource, apply_mirrors, parse_deb822, parse_file, parse_list, parse_repository_line
from copa.pkg.openpgp import Keyring

DEB822 = """\
# a comment before the paragraph
Types: deb deb-src
URIs: http://example.invalid/debian file:/srv/mirror
Suites: bookworm bookworm-updates
Components: main contrib
Architectures: amd64 arm64
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://example.invalid/disabled
Suites: stable
Components: main
Enabled: no

Types: deb-src
URIs: http://example.invalid/src-only
Suites: stable
Components: main
"""

ONE_LINE = """\
# comment
deb [arch=amd64 signed-by=/x.gpg] http://example.invalid/y stable main  # trailing comment

deb-src [signed-by=/x.gpg] http://example.invalid/y stable main
deb http://example.invalid/z/ sid main non-free-firmware
"""


def _apt_package_uris(etc: Path, tmp: Path) -> set[str]:
    lists = tmp / "lists"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        [
            "apt-get",
            "-o", "Dir::Etc::SourceList=/dev/null",
            "-o", f"Dir::Etc::SourceParts={etc}",
            "-o", f"Dir::State::Lists={lists}",
            "-o", "APT::Architectures=amd64",
            "--print-uris",
            "update",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout  # fmt: skip
    uris = re.findall(r"^'([^']+)'", out, re.M)
    return {u for u in uris if re.search(r"/binary-(?!all/)[^/]+/Packages\.xz$", u)}


def _our_package_uris(sources: list[AptSource]) -> set[str]:
    return {
        f"{s.dist_url}/{c}/binary-{a}/Packages.xz"
        for s in sources
        for c in s.components
        for a in (s.architectures or ("amd64",))
    }


def test_matches_apt_on_both_formats(tmp_path: Path) -> None:
    etc = tmp_path / "sources.list.d"
    etc.mkdir()
    (etc / "a.sources").write_text(DEB822)
    (etc / "b.list").write_text(ONE_LINE)
    ours = parse_file(DEB822, str(etc / "a.sources")) + parse_file(ONE_LINE, str(etc / "b.list"))
    assert _our_package_uris(ours) == _apt_package_uris(etc, tmp_path)
    assert len(ours) == 4 + 2  # 2 URIs x 2 suites; disabled and deb-src-only paragraphs dropped


def test_fields_and_origins() -> None:
    srcs = parse_list(ONE_LINE, "/etc/apt/sources.list")
    assert srcs[0] == AptSource(
        uri="http://example.invalid/y",
        suite="stable",
        components=("main",),
        architectures=("amd64",),
        signed_by=("/x.gpg",),
        origin="/etc/apt/sources.list:2",
    )
    assert srcs[1].uri == "http://example.invalid/z" and srcs[1].origin.endswith(":5")
    d = parse_deb822(DEB822, "a.sources")
    assert d[0].signed_by == ("/usr/share/keyrings/debian-archive-keyring.gpg",)
    assert d[0].architectures == ("amd64", "arm64") and d[0].origin == "a.sources:2"


def test_trusted_and_check_valid_until() -> None:
    (a,) = parse_list("deb [trusted=yes check-valid-until=no] file:///srv/m ./\n", "l")
    assert a.trusted and not a.check_valid_until and a.flat and a.dist_url == "file:///srv/m"
    (b,) = parse_deb822("Types: deb\nURIs: http://h/x\nSuites: s\nComponents: main\nTrusted: yes\n", "x.sources")
    assert b.trusted and b.dist_url == "http://h/x/dists/s"


def test_inline_signed_by_key_verifies_as_keyring(tmp_path: Path) -> None:
    from tests.support.aptrepo import make_key

    key = make_key(tmp_path)
    armored = key.armored.read_text().strip().splitlines()
    body = "\n".join(" " + (line if line else ".") for line in armored)
    text = f"Types: deb\nURIs: http://h/x\nSuites: s\nComponents: main\nSigned-By:\n{body}\n"
    (src,) = parse_deb822(text, "inline.sources")
    assert len(src.signed_by) == 1 and src.signed_by[0].startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    ring = keyring_for_source(src)
    assert ring.fingerprints == (key.fingerprint,)


def test_fingerprint_signed_by_restricts_keyring(tmp_path: Path) -> None:
    from tests.support.aptrepo import make_key

    k1, k2 = make_key(tmp_path / "1"), make_key(tmp_path / "2")
    both = tmp_path / "both.gpg"
    both.write_bytes(k1.keyring.read_bytes() + k2.keyring.read_bytes())
    assert len(Keyring.from_file(both).certs) == 2
    src = AptSource("http://h", "s", ("main",), signed_by=(str(both), k2.fingerprint.upper()))
    assert keyring_for_source(src).fingerprints == (k2.fingerprint,)


def test_signed_by_resolves_inside_image_root(tmp_path: Path) -> None:
    from tests.support.aptrepo import make_key

    root = tmp_path / "rootfs"
    key = make_key(root / "usr/share/keyrings")
    (root / "etc/apt/keyrings").mkdir(parents=True)
    # an absolute symlink inside the image must resolve inside the image, not on the host
    (root / "etc/apt/keyrings/repo.gpg").symlink_to("/usr/share/keyrings/repo-keyring.gpg")
    assert resolve_in_root(root, "/etc/apt/keyrings/repo.gpg") == root / "usr/share/keyrings/repo-keyring.gpg"
    src = AptSource("http://h", "s", ("main",), signed_by=("/etc/apt/keyrings/repo.gpg",))
    assert keyring_for_source(src, root).fingerprints == (key.fingerprint,)
    # without Signed-By, the image's trusted.gpg.d is used
    (root / "etc/apt/trusted.gpg.d").mkdir(parents=True)
    (root / "etc/apt/trusted.gpg.d/x.asc").write_bytes(key.armored.read_bytes())
    assert keyring_for_source(AptSource("http://h", "s", ("main",)), root).fingerprints == (key.fingerprint,)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("deb http://h/x\n", "expected 'deb"),
        ("deb [arch=amd64 http://h/x s main\n", "unterminated"),
        ("deb ftp://h/x s main\n", "scheme"),
        ("deb http://h/x s\n", "needs at least one component"),
        ("debx http://h/x s main\n", "unknown entry type"),
        ("deb [trusted=maybe] http://h/x s main\n", "yes or no"),
    ],
)
def test_one_line_errors_name_file_and_line(text: str, needle: str) -> None:
    with pytest.raises(UnsupportedImageError, match=needle) as e:
        parse_list("# header\n" + text, "/etc/apt/sources.list")
    assert "/etc/apt/sources.list:2" in str(e.value)


@pytest.mark.parametrize(
    ("text", "needle", "line"),
    [
        ("Types: deb\nURIs: http://h\nComponents: main\n", "URIs and Suites", 1),
        ("Types: deb\nURIs: http://h\nSuites: s\n", "needs Components", 1),
        ("\n\nTypes: rpm\nURIs: http://h\nSuites: s\n", "unknown Types", 3),
        ("Types: deb\nURIs: http://h\nbogus line\n", "malformed line", 3),
        ("URIs: http://h\nSuites: s\nComponents: main\n", "no Types", 1),
    ],
)
def test_deb822_errors(text: str, needle: str, line: int) -> None:
    with pytest.raises(UnsupportedImageError, match=needle) as e:
        parse_deb822(text, "x.sources")
    assert f"x.sources:{line}" in str(e.value)


def test_repository_line() -> None:
    src = parse_repository_line("deb [signed-by=/k.asc] http://h/debian bookworm main contrib")
    assert (src.uri, src.suite, src.components, src.signed_by) == (
        "http://h/debian",
        "bookworm",
        ("main", "contrib"),
        ("/k.asc",),
    )
    for bad in ("http://h/debian bookworm main", "deb http://h/debian", "deb-src http://h s main", ""):
        with pytest.raises(UsageError, match="--repository"):
            parse_repository_line(bad)


def test_apply_mirrors_matches_whole_segments() -> None:
    srcs = [
        AptSource("http://a.invalid/debian", "s", ("main",)),
        AptSource("http://a.invalid/debian-security", "s", ("main",)),
        AptSource("http://b.invalid/other", "s", ("main",)),
    ]
    out = apply_mirrors(srcs, [("http://a.invalid/debian/", "file:///srv/mirror/debian")])
    assert [s.uri for s in out] == [
        "file:///srv/mirror/debian",
        "http://a.invalid/debian-security",
        "http://b.invalid/other",
    ]
    assert out[2] is srcs[2]
    # `Pin: origin` preferences in the image name the image's hosts, not the mirror's.
    assert [s.site for s in out] == ["a.invalid", "a.invalid", "b.invalid"]
    again = apply_mirrors(out, [("file:///srv/mirror", "http://c.invalid/m")])
    assert again[0].uri == "http://c.invalid/m/debian" and again[0].site == "a.invalid"
