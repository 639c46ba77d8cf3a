"""The patched Alpine image, run: the image's own apk (inside the image, buildah with chroot isolation) reads what
copa wrote, and agrees with an image made from real `apk upgrade` (the oracle of test_alpine_e2e).

The image and repository are test_alpine_e2e's (its fixtures are reused): busybox-binsh is rebuilt as a virtual
(I:0) package, so the patched image has no /bin/sh, exactly as after apk's own upgrade. Every command here is
therefore an absolute binary of the image, run without a shell.

Each check also runs on a deliberately wrong image and must fail there: a copy of the patched image in which one
protected file the update changed was left at its old content (the database records the new one), and the
unpatched image for the versions apk reports.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import alpine, images
from tests.support.apkrepo import ApkRepo
from tests.support.buildah import Buildah, Container, NoShellError, Run, buildah_store  # noqa: F401  (pytest fixture)
from tests.test_alpine_e2e import (  # noqa: F401  (pytest fixtures, shared with the end-to-end test)
    REBUILT_CONFFILES,
    Patched,
    keys,
    layout,
    oracle,
    patched,
    repo,
    report,
    source_root,
    url,
)

pytestmark = [pytest.mark.slow]

APK = "/sbin/apk"
# Files buildah provides to every container (bind-mounted or written by `buildah run`): apk audit lists them as
# changed in any image, so they say nothing about the patch.
RUNTIME_FILES = ("etc/hosts", "etc/resolv.conf", "etc/hostname", "etc/mtab")


def apk(ctr: Container, *args: str) -> Run:
    """The image's own apk, offline: no index is fetched (the repository's port changes from run to run)."""
    return ctr.run(APK, "--no-network", "--no-cache", *args)


def audit(ctr: Container, *args: str) -> list[str]:
    result = apk(ctr, "audit", *args)
    assert result.rc == 0, f"apk audit failed:\n{result}"
    return sorted(ln for ln in result.stdout.splitlines() if ln.strip())


def not_in_oracle(ctr: Container, oracle_ctr: Container, *args: str) -> list[str]:
    """What `apk audit ARGS` reports in `ctr` and not in the image apk upgraded itself."""
    return sorted(set(audit(ctr, *args)) - set(audit(oracle_ctr, *args)))


def versions(ctr: Container) -> dict[str, str]:
    """{name: version} from `apk info -v` inside the image."""
    result = apk(ctr, "info", "-v")
    assert result.rc == 0, f"apk info -v failed:\n{result}"
    out = {}
    for word in result.stdout.split():
        name, _, rel = word.rpartition("-r")
        base, _, ver = name.rpartition("-")
        out[base] = f"{ver}-r{rel}"
    return out


@pytest.fixture(scope="module")
def patched_ctr(buildah_store: Buildah, patched: Patched) -> Iterator[Container]:  # noqa: F811
    with buildah_store.from_layout(patched.layout, "patched") as ctr:
        yield ctr


@pytest.fixture(scope="module")
def oracle_ctr(buildah_store: Buildah, oracle: Path,  # noqa: F811
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """The rootfs real apk upgraded, as a one-layer image."""
    out = tmp_path_factory.mktemp("alpine-oracle-image") / "layout"
    images.builder.make_oci_layout(oracle, out, "oracle", cmd=None)
    with buildah_store.from_layout(out, "oracle") as ctr:
        yield ctr


@pytest.fixture
def left_behind(buildah_store: Buildah, patched: Patched) -> Iterator[tuple[Container, str, str]]:  # noqa: F811
    """The patched image with files that do not match the database: a protected file the new busybox changed put
    back to its old content (a patch that updated the database but not that file), and a damaged byte in the
    busybox binary (a patch layer whose file is not the package's). Yields (container, conffile, binary)."""
    conffile = REBUILT_CONFFILES[1]  # changed by the new build, not edited in the image: apk replaces it
    binary = "bin/busybox"
    with buildah_store.from_layout(patched.layout, "patched") as ctr:
        (ctr.rootfs / conffile).write_bytes((alpine.alpine_rootfs() / conffile).read_bytes())
        target = ctr.rootfs / binary
        data = bytearray(target.read_bytes())
        data[-1] ^= 0x01
        target.write_bytes(bytes(data))
        yield ctr, conffile, binary


def test_the_patched_image_has_no_shell_as_after_apk(patched_ctr: Container, oracle_ctr: Container) -> None:
    """Why everything here runs absolute binaries: /bin/sh went with the virtual busybox-binsh, in both."""
    assert not patched_ctr.has_shell and not oracle_ctr.has_shell
    assert patched_ctr.exists(APK)
    with pytest.raises(NoShellError):
        patched_ctr.sh("true")


def test_apk_audit_shows_nothing_apk_upgrade_would_not(patched_ctr: Container, oracle_ctr: Container) -> None:
    assert not_in_oracle(patched_ctr, oracle_ctr) == []
    # The whole system (every package file's checksum against the database), not only the protected paths.
    extra = [ln for ln in not_in_oracle(patched_ctr, oracle_ctr, "--system") if ln.split()[-1] not in RUNTIME_FILES]
    assert extra == []


def test_apk_audit_catches_files_not_matching_the_database(left_behind: tuple[Container, str, str],
                                                          oracle_ctr: Container) -> None:
    ctr, conffile, binary = left_behind
    assert not_in_oracle(ctr, oracle_ctr) == [f"U {conffile}"]
    assert f"U {binary}" in not_in_oracle(ctr, oracle_ctr, "--system")


def test_apk_reports_the_new_versions(patched_ctr: Container, oracle_ctr: Container, repo: ApkRepo,  # noqa: F811
                                      buildah_store: Buildah) -> None:  # noqa: F811
    mine = versions(patched_ctr)
    assert mine == versions(oracle_ctr)
    assert {p.name: mine.get(p.name) for p in repo.packages} == {p.name: p.version for p in repo.packages}
    # The same check on the unpatched image fails: apk there still has the old builds.
    with buildah_store.from_layout(*alpine.alpine_layout()) as before:
        old = versions(before)
    assert all(old.get(p.name) != p.version for p in repo.packages)


def test_apk_runs_on_the_rebuilt_libraries(patched_ctr: Container, repo: ApkRepo) -> None:  # noqa: F811
    """apk links libcrypto3 and zlib, both replaced by the patch: the image's dynamic loader resolves them."""
    loader = "/lib/ld-musl-x86_64.so.1"
    listed = patched_ctr.run(loader, "--list", APK)
    assert listed.rc == 0, str(listed)
    needed = {"libcrypto.so.3", "libz.so.1"}
    assert needed <= {ln.split()[0] for ln in listed.stdout.splitlines() if " => " in ln}, listed.stdout
    assert {"libcrypto3", "zlib"} <= {p.name for p in repo.packages}
    version = patched_ctr.run(APK, "--version")
    assert version.rc == 0 and version.stdout.startswith("apk-tools "), str(version)
    release = (alpine.alpine_rootfs() / "etc/alpine-release").read_text()
    busybox = patched_ctr.run("/bin/busybox", "cat", "/etc/alpine-release")
    assert busybox.rc == 0 and busybox.stdout == release, str(busybox)
