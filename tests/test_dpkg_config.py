"""The image's dpkg configuration during an upgrade (diversions, path-exclude/path-include), with real dpkg as the
oracle: the quirks image (tests/support/debimage.py) is patched by copa through the CLI and, separately, upgraded
by `dpkg -i` reading the image's own /etc/dpkg; the two trees must be the same."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from copa.errors import UnsupportedImageError
from copa.pkg.dpkg.config import Diversion, DpkgConfig, Filter, parse_diversions, parse_filters
from tests.support import debimage
from tests.support.aptrepo import AptRepo, RepoServer
from tests.support.trivy import write_report
from tests.test_dpkg_hermetic import copa


@pytest.fixture(scope="module")
def repo() -> AptRepo:
    return debimage.quirks_repo()


@pytest.fixture(scope="module")
def base() -> debimage.BaseImage:
    return debimage.quirks_image()


@pytest.fixture(scope="module")
def patched(base: debimage.BaseImage, repo: AptRepo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("patched")
    report = write_report(work / "trivy.json", debimage.QUIRKS_FIXES)
    with RepoServer(repo.root) as server:
        proc = copa("patch", "-i", base.image_ref, "-r", str(report), "--oci-dir", str(work / "layout"), "-t", "p",
                    "--json", *debimage.copa_args(server.url, repo))
    assert proc.returncode == 0, proc.stderr
    assert {u["name"] for u in json.loads(proc.stdout)["updates"]} == set(debimage.QUIRKS_FIXES)
    return debimage.unpack_layout(work / "layout", "p", work / "bundle")


@pytest.fixture(scope="module")
def oracle(base: debimage.BaseImage, repo: AptRepo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    debs = [repo.deb(s.name, s.version) for s in debimage.QUIRKS_UPGRADES]
    return debimage.dpkg_oracle_with_image_config(base.rootfs, tmp_path_factory.mktemp("oracle") / "rootfs", debs)


def test_patched_tree_equals_dpkg(patched: Path, oracle: Path) -> None:
    diff = debimage.tree_diff(debimage.tree(patched), debimage.tree(oracle))
    assert not diff, "patched image differs from dpkg's result:\n" + "\n".join(diff)


def test_diverted_files_land_where_dpkg_puts_them(patched: Path, oracle: Path) -> None:
    for root in (patched, oracle):  # the oracle says the same: the comparison above can fail on these
        usr_bin = root / "usr/bin"
        assert (usr_bin / "man").read_text() == debimage.STUB
        assert (usr_bin / "man.REAL").read_text() == "man 2.0\n"
        assert (usr_bin / "old-man").read_text() == debimage.STUB
        assert not (usr_bin / "old-man.REAL").exists()
        assert (usr_bin / "tool").read_text() == "diverter's tool 2.0\n"
        assert (usr_bin / "tool.victim").read_text() == "victim's tool 2.0\n"


def test_excluded_paths_stay_out_but_are_listed(patched: Path, oracle: Path, base: debimage.BaseImage) -> None:
    assert (base.rootfs / "usr/share/man/man1/docs.1").is_file()  # installed before the filters came
    for root in (patched, oracle):
        assert (root / "usr/share/doc/docs/copyright").read_text() == "copyright 2.0\n"
        for gone in ("usr/share/doc/docs/README", "usr/share/man/man1/docs.1", "usr/share/locale/de"):
            assert not (root / gone).exists(), gone
        assert "/usr/share/man/man1/docs.1\n" in (root / "var/lib/dpkg/info/docs.list").read_text()


def test_dpkg_verify_agrees(patched: Path, oracle: Path) -> None:
    out = [subprocess.run(["dpkg", f"--root={r}", "--verify"], capture_output=True, text=True).stdout
           for r in (patched, oracle)]
    assert out[0] == out[1]


# --------------------------------------------------------------------------------------------- parsing


def test_parse_diversions() -> None:
    data = b"/usr/bin/man\n/usr/bin/man.REAL\n:\n/usr/bin/tool\n/usr/bin/tool.victim\ndiverter\n"
    got = parse_diversions(data)
    assert got == {"usr/bin/man": Diversion("usr/bin/man.REAL", ":"),
                   "usr/bin/tool": Diversion("usr/bin/tool.victim", "diverter")}
    config = DpkgConfig(got)
    assert config.target("usr/bin/man", "man-db") == "usr/bin/man.REAL"  # local: for every package
    assert config.target("usr/bin/tool", "victim") == "usr/bin/tool.victim"
    assert config.target("usr/bin/tool", "diverter") == "usr/bin/tool"  # the diverting package's own file
    assert config.target("usr/bin/other", "victim") == "usr/bin/other"


def test_damaged_diversions_are_an_image_error() -> None:
    with pytest.raises(UnsupportedImageError, match="3 lines each"):
        parse_diversions(b"/usr/bin/man\n/usr/bin/man.REAL\n")


@pytest.mark.parametrize(("path", "is_dir", "skipped"), [
    ("usr/share/doc/a/README", False, True),
    ("usr/share/doc/a/copyright", False, False),  # the later include wins
    ("usr/share/doc/a", True, False),  # kept: an include filter may bring files back into it
    ("usr/share/doc", True, False),  # not matched at all
    ("usr/share/man/man1", True, True),
    ("usr/share/man/man1/x.1.gz", False, True),
    ("usr/bin/x", False, False),
])
def test_filters_like_dpkg(path: str, is_dir: bool, skipped: bool) -> None:
    config = DpkgConfig(filters=tuple(parse_filters(debimage.QUIRKS_FILTERS.encode())))
    assert config.excluded(path, is_dir) is skipped


def test_filter_syntax() -> None:
    text = b"# comment\npath-exclude=/a/*\npath-include \"/a/b\"\nforce-unsafe-io\nno-debsig\n"
    assert parse_filters(text) == [Filter("/a/*", False), Filter("/a/b", True)]
