"""End to end on a real Alpine 3.23 image (apk-tools 3), checked against the image's own apk.

A hermetic, signed repository holds newer builds of packages the image has (a dropped file, a brand-new
dependency, post-upgrade scripts, libcrypto3/libssl3 and busybox/busybox-binsh/ssl_client pinning each other,
zlib). `copa patch` (the real CLI) patches the image; the oracle is real `apk upgrade` on a copy of the same
rootfs from the same repository. The patched image is read back with `umoci unpack` (which verifies every
digest), compared file by file with the oracle, and read by apk itself (`info`, `audit`) and by syft.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import alpine, apkrepo, images
from tests.support.apkrepo import ApkRepo, PackageUpdate
from tests.support.registry import RunningRegistry
from tests.support.trivy import write_report

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "SOURCE_DATE_EPOCH": "1704067200"}
REAL_REPORT = Path(__file__).resolve().parents[2] / "shared" / "reports" / "trivy-alpine-3.21.0.json"

NEW_PKG = "copa-test-newdep"
NEW_FILE = "usr/share/copa-test-newdep/README"
DROPPED = "usr/bin/curl"
CURL_SCRIPT = b"#!/bin/sh\necho copa-test curl post-upgrade\n"
BUSYBOX_SCRIPT = b"#!/bin/sh\necho copa-test busybox post-upgrade\n"
REPORTED = ("busybox", "curl", "libcrypto3", "zlib")
# busybox's protected files: changed in the new build / edited in the image. securetty: edited, unchanged in the
# package; udhcpc.conf: both (-> .apk-new); busybox-paths.d: changed in the package only (replaced).
REBUILT_CONFFILES = ("etc/udhcpc/udhcpc.conf", "etc/busybox-paths.d/busybox")
EDITED_CONFFILES = ("etc/securetty", "etc/udhcpc/udhcpc.conf")
# What apk writes that is a log, not state: not reproduced.
NOT_REPRODUCED = {"var/log/apk.log"}


def copa(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "copa", *args], cwd=ROOT, env=ENV, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"copa {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def unpack(layout: Path, ref: str, dest: Path) -> Path:
    """umoci unpack (verifies every blob digest; keeps owners as root) -> the rootfs."""
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:{ref}", str(dest)], check=True, capture_output=True)
    return dest / "rootfs"


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """path -> (kind, content sha1 or link target, mode, uid, gid) for every entry below root."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                what: tuple[str, str] = ("link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                what = ("file", hashlib.sha1(path.read_bytes()).hexdigest())
            else:
                what = ("dir", "")
            out[str(path.relative_to(root))] = (*what, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return out


def last_layer(layout: Path, ref: str) -> tuple[str, list[tarfile.TarInfo]]:
    """(digest, members) of the top layer of oci:layout:ref."""
    index = json.loads((layout / "index.json").read_text())
    desc = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == ref)
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / desc["digest"].split(":")[1]).read_text())
    digest = manifest["layers"][-1]["digest"]
    with tarfile.open(blobs / digest.split(":")[1], "r:gz") as tar:
        return digest, tar.getmembers()


def records(root: Path) -> dict[str, str]:
    """name -> the package's whole record in lib/apk/db/installed."""
    out = {}
    for block in (root / "lib/apk/db/installed").read_text().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("P:"):
                out[line[2:]] = block
    return out


def scripts(root: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(root / "lib/apk/db/scripts.tar.gz") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def source_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rootfs the repository is built from: the image's, with the configuration files the new busybox build
    changes. (ssl_client's install_if pin busybox=<version> follows the rebuilt busybox in the builder itself.)"""
    root = alpine.copy_rootfs(alpine.alpine_rootfs(), tmp_path_factory.mktemp("src") / "root")
    for path in REBUILT_CONFFILES:  # the new busybox ships changed configuration files
        with (root / path).open("ab") as f:
            f.write(b"# changed by the new busybox build\n")
    return root


def edit_conffiles(root: Path) -> None:
    """What the image's user changed in /etc (a protected path): apk keeps these and ships <file>.apk-new."""
    for path in EDITED_CONFFILES:
        with (root / path).open("ab") as f:
            f.write(b"# edited in the image\n")


def add_edit_layer(layout: Path, ref: str, work: Path) -> None:
    root = alpine.copy_rootfs(alpine.alpine_rootfs(), work / "edited")
    edit_conffiles(root)
    tar_path = work / "edits.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted({str(p) for e in EDITED_CONFFILES for p in Path(e).parents if str(p) != "."}):
            tar.add(root / path, arcname=path, recursive=False)
        for path in EDITED_CONFFILES:
            tar.add(root / path, arcname=path)
    subprocess.run(["umoci", "raw", "add-layer", f"--image={layout}:{ref}", str(tar_path)], check=True,
                   capture_output=True)


UPDATES = (
    PackageUpdate("curl", drop_files=(DROPPED,), add_depends=(NEW_PKG,), scripts={"post-upgrade": CURL_SCRIPT}),
    PackageUpdate(NEW_PKG, new=True, files={NEW_FILE: b"brand new\n"}),
    PackageUpdate("libcrypto3"),
    PackageUpdate("libssl3"),
    PackageUpdate("zlib"),
    # busybox had a trigger and scripts: both must leave the database. busybox-binsh (only the /bin/sh symlink)
    # is built with I:0 on purpose (abuild would write I:1), which apk treats as a virtual package: nothing
    # unpacked, the old /bin/sh removed. copa must do the same. The I:1 case is test_symlink_only_package_*.
    PackageUpdate("busybox", scripts={"post-upgrade": BUSYBOX_SCRIPT}),
    PackageUpdate("busybox-binsh", installed_size=0),
    PackageUpdate("ssl_client"),
)


@pytest.fixture(scope="module")
def repo(source_root: Path, tmp_path_factory: pytest.TempPathFactory) -> ApkRepo:
    return apkrepo.build_repo(source_root, UPDATES, tmp_path_factory.mktemp("apkrepo"))


@pytest.fixture(scope="module")
def url(repo: ApkRepo) -> Iterator[str]:
    with apkrepo.serve(repo.directory) as base:
        yield base


@pytest.fixture(scope="module")
def keys(repo: ApkRepo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    repo.key.write_public(directory)
    return directory


@pytest.fixture(scope="module")
def layout(url: str, repo: ApkRepo, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The alpine image plus a layer trusting the repository key and listing only the repository."""
    src, ref = alpine.alpine_layout()
    work = images.copy_layout(src, tmp_path_factory.mktemp("layout") / "layout")
    apkrepo.add_key_layer(work, ref, alpine.alpine_rootfs(), repo.key, url)
    add_edit_layer(work, ref, work.parent)
    return work, ref


@pytest.fixture(scope="module")
def report(repo: ApkRepo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    fixes = {p.name: (p.old_version or "", p.version) for p in repo.packages if p.name in REPORTED}
    return write_report(tmp_path_factory.mktemp("report") / "trivy.json", fixes, os_version="3.23.6",
                        family="alpine")


@pytest.fixture(scope="module")
def oracle(url: str, keys: Path, repo: ApkRepo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real apk upgrade on a copy of the rootfs carrying what the key layer adds."""
    root = alpine.copy_rootfs(alpine.alpine_rootfs(), tmp_path_factory.mktemp("oracle") / "root")
    repo.key.write_public(root / "etc/apk/keys")
    (root / "etc/apk/repositories").write_text(f"{url}\n")
    edit_conffiles(root)
    alpine.oracle_upgrade(root, url, keys)
    return root


@dataclass(frozen=True)
class Patched:
    result: dict[str, Any]
    layout: Path
    rootfs: Path


@pytest.fixture(scope="module")
def patched(layout: tuple[Path, str], report: Path, tmp_path_factory: pytest.TempPathFactory) -> Patched:
    work = tmp_path_factory.mktemp("patched")
    out = work / "out"
    proc = copa("patch", "-i", f"oci:{layout[0]}:{layout[1]}", "-r", str(report), "--oci-dir", str(out),
                "-t", "patched", "--json")
    return Patched(json.loads(proc.stdout), out, unpack(out, "patched", work / "bundle"))


# ------------------------------------------------------------------------------------------ the patch vs apk


def test_plan_is_what_apk_upgraded(patched: Patched, oracle: Path, repo: ApkRepo) -> None:
    before = alpine.installed_versions(alpine.alpine_rootfs())
    after = alpine.installed_versions(oracle)
    changed = {n: v for n, v in after.items() if before.get(n) != v}
    assert changed == {p.name: p.version for p in repo.packages}  # apk took every rebuilt package
    updates = {u["name"]: u for u in patched.result["updates"]}
    assert {n: u["to"] for n, u in updates.items()} == changed
    kinds = {n: u["kind"] for n, u in updates.items()}
    assert {n for n, k in kinds.items() if k == "reported"} == set(REPORTED)
    assert kinds["libssl3"] == kinds["busybox-binsh"] == kinds["ssl_client"] == "sibling"
    assert kinds[NEW_PKG] == "new" and updates[NEW_PKG]["from"] == ""
    assert "post-upgrade" in updates["curl"]["scripts"]
    assert all(len(updates[n]["vulnerabilities"]) == 2 for n in REPORTED)


def test_files_equal_apk(patched: Patched, oracle: Path) -> None:
    """Every path of the patched image (content, mode, owner, link target) is what apk left, and nothing else."""
    mine, theirs = tree(patched.rootfs), tree(oracle)
    diff = {p: (mine.get(p), theirs.get(p)) for p in set(mine) | set(theirs)
            if p not in NOT_REPRODUCED and mine.get(p) != theirs.get(p)}
    assert diff == {}
    assert not os.path.lexists(patched.rootfs / DROPPED) and (patched.rootfs / NEW_FILE).read_bytes() == b"brand new\n"
    assert not os.path.lexists(patched.rootfs / "bin/sh")  # the I:0 busybox-binsh, as apk does it
    assert (patched.rootfs / "etc/udhcpc/udhcpc.conf.apk-new").is_file()
    assert (patched.rootfs / "etc/apk/world").read_bytes() == (alpine.alpine_rootfs() / "etc/apk/world").read_bytes()


def test_layer_whites_out_the_dropped_files(patched: Patched) -> None:
    _, members = last_layer(patched.layout, "patched")
    names = {m.name for m in members}
    assert {"usr/bin/.wh.curl", "bin/.wh.sh"} <= names
    assert not any(n.endswith(".wh..wh..opq") for n in names)
    assert "etc/apk/world" not in names and not any(n.startswith("var/log") for n in names)


def test_database_equals_apk(patched: Patched, oracle: Path, repo: ApkRepo) -> None:
    mine, theirs = records(patched.rootfs), records(oracle)
    for p in repo.packages:
        assert mine[p.name] == theirs[p.name], f"installed record of {p.name} differs from apk's"
    # apk-tools 3 records no install time, so the whole database is byte for byte apk's.
    db = "lib/apk/db/"
    assert (patched.rootfs / db / "installed").read_bytes() == (oracle / db / "installed").read_bytes()
    assert scripts(patched.rootfs) == scripts(oracle)
    names = [n for n, _ in scripts(patched.rootfs)]
    assert not any(n.startswith(f"busybox-{repo.package('busybox').old_version}.") for n in names)
    assert any(n.startswith(f"curl-{repo.package('curl').version}.X1") and n.endswith(".post-upgrade") for n in names)
    assert (patched.rootfs / db / "scripts.tar.gz").read_bytes() == (oracle / db / "scripts.tar.gz").read_bytes()
    assert (patched.rootfs / db / "triggers").read_bytes() == (oracle / db / "triggers").read_bytes()


def test_apk_reads_the_patched_database(patched: Patched, oracle: Path, repo: ApkRepo, tmp_path: Path) -> None:
    root = alpine.copy_rootfs(patched.rootfs, tmp_path / "root")  # apk writes (lock, cache dirs) into its root
    versions = alpine.installed_versions(root)
    assert versions == alpine.installed_versions(oracle)
    assert all(versions[p.name] == p.version for p in repo.packages)
    assert alpine.audit(root) == alpine.audit(alpine.copy_rootfs(oracle, tmp_path / "oracle"))
    assert alpine.run_apk(root, "audit", "--system").stdout == ""


def test_push_and_syft(patched: Patched, layout: tuple[Path, str], report: Path, repo: ApkRepo,
                       anon_registry: RunningRegistry) -> None:
    images.push_layout(layout[0], layout[1], anon_registry.host, "alpine:1")
    src = f"{anon_registry.host}/alpine:1"
    copa("patch", "-i", src, "-r", str(report), "-t", "1-patched", "--push")
    work = patched.layout.parent / "pulled"
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{src}-patched",
                    f"oci:{work}:x"], check=True, capture_output=True)
    # Same original, same packages, same SOURCE_DATE_EPOCH: the same layer through the registry as into a layout.
    assert last_layer(work, "x")[0] == last_layer(patched.layout, "patched")[0]
    syft = shutil.which("syft") or str(Path(sys.executable).parent / "syft")
    env = {**os.environ, "SYFT_REGISTRY_INSECURE_USE_HTTP": "true", "SYFT_CHECK_FOR_APP_UPDATE": "false"}
    out = subprocess.run([syft, "scan", f"registry:{src}-patched", "-o", "json", "-q"],
                         check=True, capture_output=True, text=True, env=env).stdout
    found = {(a["name"], a["version"]) for a in json.loads(out)["artifacts"] if a.get("type") == "apk"}
    for p in repo.packages:
        assert (p.name, p.version) in found, f"syft does not see {p.name} {p.version}"
        assert p.old_version is None or (p.name, p.old_version) not in found


# ------------------------------------------------------------------------------------------ the test repository


def _record_fields(record: str) -> dict[str, str]:
    return {ln[0]: ln[2:] for ln in record.splitlines() if ln[1:2] == ":"}


def test_rebuilt_pins_follow_as_abuild_writes_them(repo: ApkRepo) -> None:
    """Exact pins on a package rebuilt in the same repository name its new version (install_if and depends)."""
    busybox = repo.package("busybox")
    ssl_client = _record_fields(repo.package("ssl_client").index_record)
    binsh = _record_fields(repo.package("busybox-binsh").index_record)
    assert ssl_client["i"] == f"busybox={busybox.version} libssl3"
    assert f"busybox={busybox.version}" in binsh["D"].split()
    assert binsh["I"] == "0"  # the explicit virtual build
    assert int(_record_fields(busybox.index_record)["I"]) > 1


def test_symlink_only_package_is_not_virtual(tmp_path: Path) -> None:
    """busybox-binsh (only the /bin/sh symlink) built as abuild builds it gets I:1 like Alpine's own: real apk
    keeps /bin/sh, and copa does what apk does."""
    base = alpine.alpine_rootfs()
    built = apkrepo.build_repo(base, [PackageUpdate("busybox-binsh")], tmp_path / "repo")
    assert _record_fields(built.package("busybox-binsh").index_record)["I"] == "1"
    keys = tmp_path / "keys"
    key = built.key.write_public(keys)
    layout, ref = alpine.alpine_layout()
    out = tmp_path / "out"
    oracle = alpine.copy_rootfs(base, tmp_path / "oracle")
    with apkrepo.serve(built.directory) as url:
        alpine.oracle_upgrade(oracle, url, keys)
        copa("patch", "-i", f"oci:{layout}:{ref}", "--oci-dir", str(out), "-t", "patched", "--repository", url,
             "--keyring", str(key), "--cache-dir", str(tmp_path / "cache"))
    rootfs = unpack(out, "patched", tmp_path / "bundle")
    assert os.readlink(rootfs / "bin/sh") == os.readlink(oracle / "bin/sh") == "/bin/busybox"
    assert records(rootfs)["busybox-binsh"] == records(oracle)["busybox-binsh"]
    assert "I:1" in records(oracle)["busybox-binsh"].splitlines()
    mine, theirs = tree(rootfs), tree(oracle)
    assert {p: (mine.get(p), theirs.get(p)) for p in set(mine) | set(theirs)
            if p not in NOT_REPRODUCED and mine.get(p) != theirs.get(p)} == {}


# ------------------------------------------------------------------------------------------ distroless


def test_distroless_with_user_repository(url: str, keys: Path, repo: ApkRepo, report: Path, tmp_path: Path) -> None:
    layout, ref = alpine.distroless_layout()
    src = f"oci:{layout}:{ref}"
    out = tmp_path / "out"
    key = keys / repo.key.name
    copa("patch", "-i", src, "-r", str(report), "--oci-dir", str(out), "-t", "patched",
         "--repository", url, "--keyring", str(key))
    rootfs = unpack(out, "patched", tmp_path / "bundle")
    oracle = alpine.copy_rootfs(alpine.distroless_rootfs(), tmp_path / "oracle")
    alpine.oracle_upgrade(oracle, url, keys)
    mine, theirs = records(rootfs), records(oracle)
    assert set(mine) == set(theirs)
    for name in theirs:
        assert mine[name] == theirs[name], f"installed record of {name} differs from apk's"
    assert not os.path.lexists(rootfs / "sbin/apk")
    # --repository replaced the image's list for this run only: the image keeps its own.
    repositories = "etc/apk/repositories"
    assert (rootfs / repositories).read_bytes() == (alpine.distroless_rootfs() / repositories).read_bytes()
    assert alpine.installed_versions(rootfs) == alpine.installed_versions(oracle)


# ------------------------------------------------------------------------------------------ bad input


def _gzip_members(raw: bytes) -> list[bytes]:
    members = []
    while raw:
        d = zlib.decompressobj(31)
        d.decompress(raw)
        members.append(raw[: len(raw) - len(d.unused_data)])
        raw = d.unused_data
    return members


def _retar(data: bytes, change: Callable[[tarfile.TarInfo, bytes], tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=buf, mode="w",
                                                                    format=tarfile.PAX_FORMAT) as dst:
        for m in src:
            f = src.extractfile(m) if m.isreg() else None
            info, content = change(m, f.read() if f is not None else b"")
            dst.addfile(info, io.BytesIO(content) if info.isreg() else None)
    return buf.getvalue()


def tamper(repo: ApkRepo, directory: Path, name: str, *, data: Callable[[tarfile.TarInfo, bytes],
           tuple[tarfile.TarInfo, bytes]] | None = None, control_extra: bytes = b"", fix_datahash: bool = True,
           fix_checksum: bool = True) -> None:
    """Copy the repository to `directory` and rewrite package `name`: its data tar through `data`, its .PKGINFO
    with `control_extra` appended. The package is re-signed with the repository key, and the index keeps the
    package's size right (so the check under test is the one that fires) and its C: only if `fix_checksum`."""
    shutil.copytree(repo.directory, directory)
    pkg = repo.package(name)
    path = directory / apkrepo.ARCH / pkg.path.name
    _sig, control, data_member = _gzip_members(path.read_bytes())
    if data is not None:
        data_member = gzip.compress(_retar(gzip.decompress(data_member), data), mtime=0)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(control))) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}  # type: ignore[union-attr]
    pkginfo = files[".PKGINFO"].decode()
    if fix_datahash:
        lines = [ln for ln in pkginfo.splitlines() if not ln.startswith("datahash = ")]
        pkginfo = "\n".join([*lines, f"datahash = {hashlib.sha256(data_member).hexdigest()}"]) + "\n"
    files[".PKGINFO"] = pkginfo.encode() + control_extra
    body = b"".join(apkrepo._member(n, c, 0o644 if n == ".PKGINFO" else 0o755) for n, c in files.items())
    new_control = apkrepo._gzip(body)
    signature = apkrepo._gzip(apkrepo._member(f".SIGN.RSA256.{repo.key.name}",
                                              apkrepo.sign(repo.key, new_control)))
    path.write_bytes(signature + new_control + data_member)
    checksum = "Q1" + base64.b64encode(hashlib.sha1(new_control).digest()).decode()
    out = []
    for p in repo.packages:
        record = p.index_record
        if p.name == name:
            lines = [f"S:{path.stat().st_size}" if ln.startswith("S:") else
                     f"C:{checksum}" if ln.startswith("C:") and fix_checksum else ln for ln in record.splitlines()]
            record = "\n".join(lines) + "\n"
        out.append(record)
    apkrepo.write_index(directory / apkrepo.ARCH, out, repo.key)


def _flip_first_file(m: tarfile.TarInfo, content: bytes) -> tuple[tarfile.TarInfo, bytes]:
    if m.isreg() and content:
        content = bytes([content[0] ^ 0xFF]) + content[1:]
    return m, content


def _escape(m: tarfile.TarInfo, content: bytes) -> tuple[tarfile.TarInfo, bytes]:
    if m.isreg():
        m.name = "../../../tmp/copa-escape-" + Path(m.name).name
    return m, content


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("control", "control checksum"),
        ("datahash", "datahash"),
        ("file", "SHA1"),
        ("escape", "climbs out"),
    ],
)
def test_tampered_package_is_refused(case: str, message: str, repo: ApkRepo, keys: Path, report: Path,
                                     tmp_path: Path) -> None:
    if case == "control":  # signed by the key, but not the package the signed index names
        tamper(repo, tmp_path / "repo", "zlib", control_extra=b"# changed\n", fix_checksum=False)
    elif case == "datahash":  # data changed under an unchanged, signed control segment
        tamper(repo, tmp_path / "repo", "zlib", data=_flip_first_file, fix_datahash=False)
    elif case == "file":  # datahash and index consistent, but a file does not match its own SHA1 header
        tamper(repo, tmp_path / "repo", "zlib", data=_flip_first_file)
    else:
        tamper(repo, tmp_path / "repo", "zlib", data=_escape)
    layout, ref = alpine.alpine_layout()
    out = tmp_path / "out"
    with apkrepo.serve(tmp_path / "repo") as bad:
        proc = copa("patch", "-i", f"oci:{layout}:{ref}", "-r", str(report), "--oci-dir", str(out),
                    "--repository", bad, "--keyring", str(keys / repo.key.name), "--cache-dir",
                    str(tmp_path / "cache"), check=False)
    assert proc.returncode == 5, proc.stderr
    assert all(ln.startswith("copa: ") for ln in proc.stderr.splitlines()), proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("copa: error: ")]
    assert len(errors) == 1 and message in errors[0] and "zlib" in errors[0], proc.stderr
    assert not out.exists()
    assert not list(Path("/tmp").glob("copa-escape-*"))


def test_index_signed_by_an_unknown_key(repo: ApkRepo, url: str, report: Path, tmp_path: Path) -> None:
    layout, ref = alpine.alpine_layout()
    out = tmp_path / "out"
    # The image's own keys (Alpine's) do not include the test key.
    proc = copa("patch", "-i", f"oci:{layout}:{ref}", "-r", str(report), "--oci-dir", str(out),
                "--repository", url, check=False)
    assert proc.returncode == 5, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("copa: error: ")]
    assert len(errors) == 1 and repo.key.name in errors[0] and "not a trusted key" in errors[0]
    assert not out.exists()


# ------------------------------------------------------------------------------------------ a real Trivy report


def test_real_trivy_report_drives_a_dry_run(layout: tuple[Path, str], tmp_path: Path) -> None:
    doc = json.loads(REAL_REPORT.read_text())
    src = f"oci:{layout[0]}:{layout[1]}"
    installed = alpine.installed_versions(alpine.alpine_rootfs())
    named = {v["PkgName"] for r in doc["Results"] for v in r.get("Vulnerabilities") or []}
    assert named and named <= set(installed)
    # As scanned, the report is for Alpine 3.21.0 and this image is 3.23: refused as a report for another release.
    proc = copa("patch", "-i", src, "-r", str(REAL_REPORT), "--dry-run", check=False)
    assert proc.returncode == 3 and "3.21" in proc.stderr and "Traceback" not in proc.stderr
    # Relabelled to the image's release, every fix is older than what this 3.23 image has.
    release = dict(line.split("=", 1) for line in
                   (alpine.alpine_rootfs() / "etc/os-release").read_text().splitlines() if "=" in line)
    doc["Metadata"]["OS"]["Name"] = release["VERSION_ID"].strip('"')
    relabelled = tmp_path / "relabelled.json"
    relabelled.write_text(json.dumps(doc))
    proc = copa("patch", "-i", src, "-r", str(relabelled), "--dry-run", "--json")
    result = json.loads(proc.stdout)
    assert result["upToDate"] and result["updates"] == []
    skipped = {s["name"]: s for s in result["skipped"]}
    assert set(skipped) == named and {s["reason"] for s in skipped.values()} == {"installed version already fixed"}
    for name, s in skipped.items():
        assert alpine.apk_version_compare(installed[name], s["detail"].split(" >= ")[1]) >= 0
    # The same report with fixes one release past the image: libcrypto3/libssl3 are in the test repository,
    # musl/musl-utils are not.
    for r in doc["Results"]:
        for v in r.get("Vulnerabilities") or []:
            v["FixedVersion"] = apkrepo.bump_release(installed[v["PkgName"]])
    shifted = tmp_path / "shifted.json"
    shifted.write_text(json.dumps(doc))
    proc = copa("patch", "-i", src, "-r", str(shifted), "--dry-run", check=False)
    assert proc.returncode == 7 and "musl" in proc.stderr and "--ignore-errors" in proc.stderr
    proc = copa("patch", "-i", src, "-r", str(shifted), "--dry-run", "--json", "--ignore-errors")
    result = json.loads(proc.stdout)
    assert {u["name"] for u in result["updates"]} == {"libcrypto3", "libssl3"}
    skipped = {s["name"]: s["reason"] for s in result["skipped"]}
    missing = "no repository has the fixed version"
    assert skipped == {"musl": missing, "musl-utils": missing}
