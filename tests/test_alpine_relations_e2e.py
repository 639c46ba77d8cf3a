"""End to end: packages that move together, world constraints and directory records, against real apk.

The image is the Alpine fixture plus a layer trusting a hermetic repository and a layer adding `zlib<1.3.2-r2` to
/etc/apk/world. The repository has: libcrypto3 -r2 with the libssl3 -r2 that pins it (the report names only
libcrypto3: the installed libssl3's exact pin breaks, so it moves along), c-ares 1.34.8-r1 and 1.35.0-r0 next to an
nghttp2-libs that needs `c-ares<1.35`, zlib -r1 and -r2 (the world caps it at -r1), and a ca-certificates whose
directories change: /etc/ca-certificates 0755 -> 0750, /usr/local/share/ca-certificates root:root -> root:bin,
and a new 0700 directory.

The oracle is real `apk upgrade NAMES` (world + `NAME>=FIXED`, see tests/support/apkoracle.py) on a copy of the same
rootfs. The patched image must have apk's files, apk's /lib/apk/db/installed byte for byte, and `apk audit` (also
with --check-permissions and --system) must say of it exactly what it says of apk's own result. Re-patching with
the full report an image patched with half of it gives the single full patch layer again.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import alpine, apkrepo, images
from tests.support.apkrepo import ApkRepo, PackageUpdate
from tests.support.trivy import write_report
from tests.test_alpine_e2e import NOT_REPRODUCED, copa, last_layer, tree, unpack

pytestmark = pytest.mark.slow

WORLD_EXTRA = "zlib<1.3.2-r2"
NEW_DIR = "usr/share/copa-test/private"
DIRS = {"etc/ca-certificates": (0o750, 0, 0), "usr/local/share/ca-certificates": (0o755, 0, 1), NEW_DIR: (0o700, 0, 0)}
UPDATES = (
    PackageUpdate("libcrypto3", bump=2), PackageUpdate("libssl3", bump=2),
    PackageUpdate("c-ares"), PackageUpdate("c-ares", version="1.35.0-r0"),
    PackageUpdate("nghttp2-libs", depends=("c-ares<1.35", "so:libc.musl-x86_64.so.1")),
    PackageUpdate("zlib"), PackageUpdate("zlib", bump=2),
    PackageUpdate("ca-certificates", dirs=DIRS, files={f"{NEW_DIR}/README": b"private\n"}),
)  # fmt: skip
FIXES = {"libcrypto3": "3.5.8-r2", "c-ares": "1.34.8-r1", "nghttp2-libs": "1.69.0-r1", "zlib": "1.3.2-r1",
         "ca-certificates": "20260909-r1"}
HALF = ("libcrypto3", "zlib")
# What apk plans for FIXES (and copa must): libssl3 follows libcrypto3, c-ares stays below 1.35, zlib at -r1.
EXPECTED = {**FIXES, "libssl3": "3.5.8-r2"}


def _report(path: Path, names: tuple[str, ...] | list[str], base: Path) -> Path:
    installed = alpine.installed_versions(base)
    return write_report(path, {n: (installed[n], FIXES[n]) for n in names}, os_version="3.23.6", family="alpine")


def _world(root: Path) -> str:
    return (root / "etc/apk/world").read_text().rstrip("\n") + f"\n{WORLD_EXTRA}\n"


def add_world_layer(layout: Path, ref: str, work: Path) -> None:
    """A layer whose /etc/apk/world adds WORLD_EXTRA (owners and modes as the image has them)."""
    base = alpine.alpine_rootfs()
    tar_path = work / "world.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("etc", "etc/apk"):
            tar.add(base / directory, arcname=directory, recursive=False)
        info = tar.gettarinfo(str(base / "etc/apk/world"), arcname="etc/apk/world")
        data = _world(base).encode()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    subprocess.run(["umoci", "raw", "add-layer", f"--image={layout}:{ref}", str(tar_path)], check=True,
                   capture_output=True)


@dataclass(frozen=True)
class Setup:
    repo: ApkRepo
    url: str
    keys: Path
    layout: Path
    ref: str
    work: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("relations")
    repo = apkrepo.build_repo(alpine.alpine_rootfs(), UPDATES, work / "repo")
    keys = work / "keys"
    repo.key.write_public(keys)
    src, ref = alpine.alpine_layout()
    with apkrepo.serve(repo.directory) as url:
        layout = images.copy_layout(src, work / "layout")
        apkrepo.add_key_layer(layout, ref, alpine.alpine_rootfs(), repo.key, url)
        add_world_layer(layout, ref, work)
        yield Setup(repo, url, keys, layout, ref, work)


@pytest.fixture(scope="module")
def oracle(setup: Setup) -> Path:
    """Real apk's upgrade of FIXES on a copy of the image's rootfs (world restored afterwards: copa never edits it)."""
    root = alpine.copy_rootfs(alpine.alpine_rootfs(), setup.work / "oracle")
    setup.repo.key.write_public(root / "etc/apk/keys")
    (root / "etc/apk/repositories").write_text(f"{setup.url}\n")
    world = _world(alpine.alpine_rootfs())
    (root / "etc/apk/world").write_text(world + "".join(f"{n}>={v}\n" for n, v in sorted(FIXES.items())))
    alpine.run_apk(root, "--repository", setup.url, "--keys-dir", str(setup.keys.resolve()), "--no-cache",
                   "--no-scripts", "upgrade", *sorted(FIXES))
    (root / "etc/apk/world").write_text(world)
    return root


@dataclass(frozen=True)
class Patched:
    result: dict[str, Any]
    layout: Path
    rootfs: Path


def _patch(setup: Setup, image: str, report: Path, name: str) -> Patched:
    out = setup.work / name
    proc = copa("patch", "-i", image, "-r", str(report), "--oci-dir", str(out), "-t", "patched", "--json")
    return Patched(json.loads(proc.stdout), out, unpack(out, "patched", setup.work / f"{name}-bundle"))


@pytest.fixture(scope="module")
def patched(setup: Setup) -> Patched:
    report = _report(setup.work / "full.json", list(FIXES), alpine.alpine_rootfs())
    return _patch(setup, f"oci:{setup.layout}:{setup.ref}", report, "full")


def test_plan_is_apks(patched: Patched, oracle: Path) -> None:
    before = alpine.installed_versions(alpine.alpine_rootfs())
    changed = {n: v for n, v in alpine.installed_versions(oracle).items() if before.get(n) != v}
    assert changed == EXPECTED
    updates = {u["name"]: u for u in patched.result["updates"]}
    assert {n: u["to"] for n, u in updates.items()} == changed
    assert updates["libssl3"]["kind"] == "sibling"
    assert updates["libssl3"]["reason"] == "libssl3-3.5.8-r0 pins libcrypto3=3.5.8-r0, which moves to 3.5.8-r2"
    assert all("reason" not in u for n, u in updates.items() if n in FIXES)


def test_files_and_database_equal_apks(patched: Patched, oracle: Path) -> None:
    mine, theirs = tree(patched.rootfs), tree(oracle)
    diff = {p: (mine.get(p), theirs.get(p)) for p in set(mine) | set(theirs)
            if p not in NOT_REPRODUCED and mine.get(p) != theirs.get(p)}
    assert diff == {}
    db = "lib/apk/db/installed"
    assert (patched.rootfs / db).read_bytes() == (oracle / db).read_bytes()
    # The directory records are the new build's, as apk writes them (and apk leaves an existing directory's mode
    # and owner as they were on disk: `apk audit --check-permissions` below shows it the same for both).
    text = (patched.rootfs / db).read_text()
    assert "F:etc/ca-certificates\nM:0:0:750\n" in text
    assert "F:usr/local/share/ca-certificates\nM:0:1:755\n" in text
    assert f"F:{NEW_DIR}\nM:0:0:700\n" in text
    assert oct((patched.rootfs / NEW_DIR).stat().st_mode & 0o7777) == "0o700"


@pytest.mark.parametrize("args", [(), ("--check-permissions",), ("--system",), ("--check-permissions", "--system")])
def test_apk_audit_says_what_it_says_of_apks_own_upgrade(patched: Patched, oracle: Path, args: tuple[str, ...],
                                                         tmp_path: Path) -> None:
    # apk writes into its root (lock, cache): audit private copies.
    mine = alpine.copy_rootfs(patched.rootfs, tmp_path / "mine")
    theirs = alpine.copy_rootfs(oracle, tmp_path / "theirs")
    ours = sorted(alpine.run_apk(mine, "audit", *args).stdout.splitlines())
    assert ours == sorted(alpine.run_apk(theirs, "audit", *args).stdout.splitlines())
    if "--check-permissions" in args and "--system" in args:
        # Not vacuous: apk itself leaves the changed directories' modes and owners on disk as they were.
        assert {"m etc/ca-certificates/", "m usr/local/share/ca-certificates/"} <= set(ours)


def test_repatch_with_the_full_report_is_one_full_patch(setup: Setup, patched: Patched) -> None:
    half = _report(setup.work / "half.json", HALF, alpine.alpine_rootfs())
    first = _patch(setup, f"oci:{setup.layout}:{setup.ref}", half, "half")
    assert {u["name"] for u in first.result["updates"]} == {*HALF, "libssl3"}
    # The report of the half-patched image still names every fix (scanned before them, it is the same report).
    full = _report(setup.work / "full-again.json", list(FIXES), alpine.alpine_rootfs())
    second = _patch(setup, f"oci:{first.layout}:patched", full, "again")
    assert {u["name"]: u["to"] for u in second.result["updates"]} == EXPECTED

    def layers(layout: Path) -> list[str]:
        index = json.loads((layout / "index.json").read_text())
        desc = index["manifests"][0]
        manifest = json.loads((layout / "blobs/sha256" / desc["digest"].split(":")[1]).read_text())
        return [m["digest"] for m in manifest["layers"]]

    original = layers(setup.layout)
    assert layers(second.layout)[:-1] == original == layers(patched.layout)[:-1]
    assert last_layer(second.layout, "patched")[0] == last_layer(patched.layout, "patched")[0]
    assert tree(second.rootfs) == tree(patched.rootfs)


def test_a_fix_the_world_holds_back_fails_naming_it(setup: Setup, tmp_path: Path) -> None:
    installed = alpine.installed_versions(alpine.alpine_rootfs())
    report = write_report(tmp_path / "r.json", {"zlib": (installed["zlib"], "1.3.2-r2"),
                                                "libcrypto3": (installed["libcrypto3"], "3.5.8-r2")},
                          os_version="3.23.6", family="alpine")
    image = f"oci:{setup.layout}:{setup.ref}"
    proc = copa("patch", "-i", image, "-r", str(report), "--dry-run", check=False)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("copa: error: ")]
    assert proc.returncode == 7 and len(errors) == 1, proc.stderr
    assert "zlib" in errors[0] and f"/etc/apk/world holds it at {WORLD_EXTRA}" in errors[0]
    proc = copa("patch", "-i", image, "-r", str(report), "--dry-run", "--json", "--ignore-errors")
    result = json.loads(proc.stdout)
    assert {u["name"]: u["to"] for u in result["updates"]} == {"libcrypto3": "3.5.8-r2", "libssl3": "3.5.8-r2"}
    assert [(s["name"], s["reason"]) for s in result["skipped"]] == [("zlib", "held by the image's package manager")]
    # The text summary says why libssl3 moves.
    proc = copa("patch", "-i", image, "-r", str(report), "--dry-run", "--ignore-errors")
    assert "libssl3-3.5.8-r0 pins libcrypto3=3.5.8-r0" in proc.stdout
