"""The patched Debian image, run: dpkg and apt inside the image itself (buildah, chroot isolation) accept it.

The other end-to-end tests read the patched image from the outside (files, database bytes, host dpkg with
--root). Here the image's own dpkg and apt, its own openssl and python3.11, run inside it: copa never executes
anything from the image, so this is the first time the image's tools see what copa wrote.

Every check is also run on a deliberately wrong image and must fail there, so none of them passes vacuously:
  - the unpatched image: apt still plans upgrades for the reported packages, openssl reports the old version;
  - a status database claiming a package's new version while its files and file list were never written
    (dpkg --audit must name the package, openssl/python must still report the old library);
  - the patched image with one package's status set back to its old version while another package pins it
    exactly (apt-get check must report the broken dependency).

The Debian archive is live (the mirror from this machine's apt sources, which the fixture builder also writes into
the image's own debian.sources), so `apt-get update` runs inside a container once per module and its lists are
copied into the others.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import images
from tests.support.buildah import Buildah, Container, Run, buildah_store  # noqa: F401  (pytest fixture)
from tests.support.trivy import dpkg_versions, fixed_packages, write_report

pytestmark = [pytest.mark.live, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "SOURCE_DATE_EPOCH": "1704067200"}
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
# The fixture builder accepts a frozen mirror snapshot whose Release has expired; apt inside the image must too.
APT_OPTS = ("-o", "Acquire::Check-Valid-Until=false", "-q")
LISTS = "var/lib/apt/lists"
STATUS = "var/lib/dpkg/status"


def copa(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "copa", *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise AssertionError(f"copa {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


# ------------------------------------------------------------------------------------------ status file editing


def paragraphs(text: str) -> list[str]:
    return [p for p in text.strip("\n").split("\n\n") if p.strip()]


def field(paragraph: str, name: str) -> str:
    for line in paragraph.splitlines():
        if line.startswith(f"{name}: "):
            return line[len(name) + 2 :]
    return ""


def replace_paragraph(status: Path, package: str, new: str) -> None:
    paras = paragraphs(status.read_text())
    hits = [i for i, p in enumerate(paras) if field(p, "Package") == package]
    assert len(hits) == 1, f"{package} is not in {status} exactly once"
    paras[hits[0]] = new
    status.write_text("\n\n".join(paras) + "\n")


def paragraph_of(status: Path, package: str) -> str:
    return next(p for p in paragraphs(status.read_text()) if field(p, "Package") == package)


def set_version(paragraph: str, version: str) -> str:
    return re.sub(r"(?m)^Version: .*$", f"Version: {version}", paragraph)


def upstream(version: str) -> str:
    """'3.0.22-1~deb12u2' -> '3.0.22' (no epoch, no Debian revision)."""
    return version.split(":", 1)[-1].rsplit("-", 1)[0]


# ------------------------------------------------------------------------------------------ checks, run on any image


def dpkg_audit(ctr: Container) -> Run:
    return ctr.run("dpkg", "--audit")


def apt_check(ctr: Container) -> Run:
    return ctr.run("apt-get", *APT_OPTS, "check", env=APT_ENV)


def planned_upgrades(ctr: Container, names: list[str]) -> tuple[list[str], Run]:
    """The `Inst` lines of `apt-get -s install --only-upgrade NAMES`: what apt would still do."""
    result = ctr.run("apt-get", *APT_OPTS, "-s", "install", "--only-upgrade", *names, env=APT_ENV)
    assert result.rc == 0, f"apt-get -s install failed:\n{result}"
    return [ln for ln in result.stdout.splitlines() if ln.startswith("Inst ")], result


def openssl_versions(ctr: Container) -> tuple[str, str]:
    """(program version, library version) as `openssl version` prints them."""
    result = ctr.run("openssl", "version")
    assert result.rc == 0, f"openssl version failed:\n{result}"
    m = re.match(r"OpenSSL (\S+) .*\(Library: OpenSSL (\S+) ", result.stdout)
    assert m, f"unexpected `openssl version` output: {result.stdout!r}"
    return m.group(1), m.group(2)


def python_ssl_version(ctr: Container) -> str:
    """The OpenSSL version python3.11's ssl module loaded (libpython, _ssl and libssl3 all work together)."""
    result = ctr.run("python3.11", "-c", "import ssl; print(ssl.OPENSSL_VERSION)")
    assert result.rc == 0, f"python3.11 -c 'import ssl' failed:\n{result}"
    return result.stdout.split()[1]


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def fixes() -> dict[str, tuple[str, str]]:
    found = fixed_packages(dpkg_versions(images.debian_rootfs()), dpkg_versions(images.oracle_rootfs()))
    assert len(found) >= 3, "bookworm-security should have newer versions of several fixture packages"
    return found


@pytest.fixture(scope="module")
def patched_layout(fixes: dict[str, tuple[str, str]], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    work = tmp_path_factory.mktemp("run-patched")
    report = write_report(work / "trivy.json", fixes)
    layout, ref = images.debian_layout()
    copa("patch", "-i", f"oci:{layout}:{ref}", "-r", str(report), "--oci-dir", str(work / "out"), "-t", "patched")
    return work / "out", "patched"


@pytest.fixture(scope="module")
def unpatched(buildah_store: Buildah) -> Iterator[Container]:  # noqa: F811
    layout, ref = images.debian_layout()
    with buildah_store.from_layout(layout, ref) as ctr:
        yield ctr


@pytest.fixture(scope="module")
def apt_lists(unpatched: Container, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`apt-get update` inside the unpatched image (its own sources: the machine's mirror, reached through the
    host's network, which chroot isolation shares); every Debian container here gets a copy of these lists."""
    result = unpatched.run("apt-get", *APT_OPTS, "update", env=APT_ENV)
    assert result.rc == 0, f"apt-get update inside the image failed:\n{result}"
    assert not re.search(r"^(W|E): ", result.stdout + result.stderr, re.M), f"apt-get update complained:\n{result}"
    saved = tmp_path_factory.mktemp("apt") / "lists"
    shutil.copytree(unpatched.rootfs / LISTS, saved, symlinks=True)
    return saved


def with_lists(ctr: Container, lists: Path) -> Container:
    target = ctr.rootfs / LISTS
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(lists, target, symlinks=True)
    return ctr


@pytest.fixture(scope="module")
def patched(buildah_store: Buildah, patched_layout: tuple[Path, str], apt_lists: Path) -> Iterator[Container]:  # noqa: F811
    with buildah_store.from_layout(*patched_layout) as ctr:
        yield with_lists(ctr, apt_lists)


@pytest.fixture(scope="module")
def claims_without_files(buildah_store: Buildah, fixes: dict[str, tuple[str, str]]) -> Iterator[tuple[Container, str]]:  # noqa: F811
    """The unpatched image whose status claims the new version of one reported package (the oracle's paragraph)
    while the package's files and file list were never written: a patch that updated the database only."""
    name = "libssl3" if "libssl3" in fixes else sorted(fixes)[0]
    layout, ref = images.debian_layout()
    with buildah_store.from_layout(layout, ref) as ctr:
        replace_paragraph(ctr.rootfs / STATUS, name, paragraph_of(images.oracle_rootfs() / STATUS, name))
        info = ctr.rootfs / "var/lib/dpkg/info"
        removed = [info / f"{n}.{kind}" for n in (name, f"{name}:amd64") for kind in ("list", "md5sums")
                   if (info / f"{n}.{kind}").exists()]
        assert any(p.suffix == ".list" for p in removed), f"no file list of {name} in the image"
        for p in removed:
            p.unlink()
        yield ctr, name


@pytest.fixture
def stale_pin(buildah_store: Buildah, patched_layout: tuple[Path, str], apt_lists: Path,  # noqa: F811
              fixes: dict[str, tuple[str, str]]) -> Iterator[tuple[Container, str, str]]:
    """The patched image with one reported package's status set back to its old version while another installed
    package depends on exactly its new version (python3.11-minimal pins libpython3.11-minimal, perl pins
    perl-base, ...): a patch that left one package of a source behind. Yields (container, pinned, pinner)."""
    with buildah_store.from_layout(*patched_layout) as ctr:
        with_lists(ctr, apt_lists)
        status = ctr.rootfs / STATUS
        pins = [(name, field(p, "Package")) for p in paragraphs(status.read_text())
                for name, op in re.findall(r"([a-z0-9][a-z0-9+.-]*)(?::\w+)? \((=) [^)]*\)", field(p, "Depends"))
                if op == "=" and name in fixes]
        if not pins:
            pytest.skip(f"no reported package is pinned with (= version) by another one: {sorted(fixes)}")
        pinned, pinner = sorted(pins)[0]
        replace_paragraph(status, pinned, set_version(paragraph_of(status, pinned), fixes[pinned][0]))
        yield ctr, pinned, pinner


# ------------------------------------------------------------------------------------------ dpkg --audit


def test_dpkg_audit_is_silent_in_the_patched_image(patched: Container) -> None:
    result = dpkg_audit(patched)
    assert result.rc == 0 and result.stdout == "" and result.stderr == "", str(result)


def test_dpkg_audit_catches_a_status_claiming_files_never_written(claims_without_files: tuple[Container, str]) -> None:
    ctr, name = claims_without_files
    result = dpkg_audit(ctr)
    assert result.stdout != "" and name in result.stdout, f"dpkg --audit did not notice {name}:\n{result}"


def test_dpkg_verify_adds_nothing_to_the_original(patched: Container, unpatched: Container) -> None:
    """dpkg --verify (md5sums of every package file) reports no more than for the original image (which lacks
    the apt cache directories Debian's images delete)."""
    before = set(unpatched.run("dpkg", "--verify").stdout.splitlines())
    after = patched.run("dpkg", "--verify")
    assert set(after.stdout.splitlines()) - before == set(), str(after)


# ------------------------------------------------------------------------------------------ apt


def test_apt_get_check_passes_in_the_patched_image(patched: Container) -> None:
    result = apt_check(patched)
    assert result.rc == 0, str(result)
    assert not re.search(r"^(W|E): ", result.stdout + result.stderr, re.M), str(result)


def test_apt_get_check_catches_a_stale_pinned_package(stale_pin: tuple[Container, str, str]) -> None:
    ctr, pinned, pinner = stale_pin
    result = apt_check(ctr)
    assert result.rc != 0, f"apt-get check accepted {pinned} behind {pinner}'s exact pin:\n{result}"
    assert pinner in result.stdout + result.stderr, str(result)


def test_apt_plans_nothing_more_for_the_reported_packages(patched: Container,
                                                         fixes: dict[str, tuple[str, str]]) -> None:
    """apt, reading the image's own sources now, would not upgrade any reported package further: copa chose apt's
    candidates and dpkg's state agrees with the files."""
    planned, result = planned_upgrades(patched, sorted(fixes))
    assert planned == [], f"apt still plans upgrades after patching:\n{result.stdout}"
    assert re.search(r"^0 upgraded, 0 newly installed, 0 to remove", result.stdout, re.M), result.stdout


def test_apt_plans_the_upgrades_in_the_unpatched_image(unpatched: Container, apt_lists: Path,
                                                       fixes: dict[str, tuple[str, str]]) -> None:
    planned, result = planned_upgrades(unpatched, sorted(fixes))
    names = {ln.split()[1] for ln in planned}
    assert set(fixes) <= names, f"apt plans {sorted(names)} for the unpatched image:\n{result.stdout}"


# ------------------------------------------------------------------------------------------ smoke


def test_openssl_runs_the_new_library(patched: Container, unpatched: Container,
                                      fixes: dict[str, tuple[str, str]]) -> None:
    if "openssl" not in fixes or "libssl3" not in fixes:
        pytest.skip(f"the archive has no newer openssl/libssl3 than the image today: {sorted(fixes)}")
    want = (upstream(fixes["openssl"][1]), upstream(fixes["libssl3"][1]))
    assert openssl_versions(patched) == want
    assert openssl_versions(unpatched) == (upstream(fixes["openssl"][0]), upstream(fixes["libssl3"][0])) != want


def test_python_loads_the_new_libssl(patched: Container, unpatched: Container,
                                     claims_without_files: tuple[Container, str],
                                     fixes: dict[str, tuple[str, str]]) -> None:
    if "libssl3" not in fixes:
        pytest.skip(f"the archive has no newer libssl3 than the image today: {sorted(fixes)}")
    new, old = upstream(fixes["libssl3"][1]), upstream(fixes["libssl3"][0])
    assert python_ssl_version(patched) == new
    assert python_ssl_version(unpatched) == old
    # The database-only "patch" claims the new version, but what runs is still the old library.
    ctr, name = claims_without_files
    assert name == "libssl3" and python_ssl_version(ctr) == old
