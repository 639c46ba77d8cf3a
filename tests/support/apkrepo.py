"""A hermetic, signed apk (v2 format) repository built from an Alpine rootfs and served on 127.0.0.1.

Packages are NEWER builds of packages the image already has: their files are the image's own files (the paths
come from /lib/apk/db/installed), their .PKGINFO is the installed record with a raised release (-rN+1). The
format follows abuild (abuild-tar --hash, abuild-sign) as apk-tools reads it (src/extract_v2.c):

  .apk = gzip(signature tar, cut) + gzip(control tar, cut) + gzip(data tar)
    signature tar:  .SIGN.RSA256.<key>.rsa.pub = RSA-SHA256 over the control gzip member's bytes
                    (optionally .SIGN.RSA.<key>.rsa.pub, RSA-SHA1)
    control tar:    .PKGINFO (with `datahash` = sha256 of the data gzip member) and any .pre-install & co.
    data tar:       the files; regular files and symlinks carry a PAX `APK-TOOLS.checksum.SHA1` header
  "cut" = no end-of-archive blocks, so the tar parser runs on across the gzip members.
  The package's identity (APKINDEX `C:`) is "Q1" + base64(sha1(control gzip member)).

  APKINDEX.tar.gz = gzip(signature tar, cut) + gzip(tar of DESCRIPTION and APKINDEX); the signature covers the
  second member. Layout: URL/<arch>/APKINDEX.tar.gz and URL/<arch>/<name>-<version>.apk.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gzip
import hashlib
import http.server
import io
import os
import re
import secrets
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from copa.errors import CopaError

ARCH = "x86_64"
# Fixed build date for the new packages (matches the Debian fixtures' SOURCE_DATE_EPOCH).
BUILD_DATE = 1704067200
INSTALLED_DB = "lib/apk/db/installed"
SCRIPT_NAMES = (
    "pre-install", "post-install", "pre-upgrade", "post-upgrade", "pre-deinstall", "post-deinstall", "trigger",
)  # fmt: skip


class ApkRepoError(CopaError):
    """The hermetic apk repository could not be built."""


# ---------------------------------------------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True)
class RepoKey:
    """An RSA signing key. `name` is the public key's file name, which apk matches against `.SIGN.RSA*.<name>`."""

    name: str
    private_pem: bytes
    public_pem: bytes

    def private_key(self) -> RSAPrivateKey:
        key = serialization.load_pem_private_key(self.private_pem, password=None)
        assert isinstance(key, RSAPrivateKey)
        return key

    def write_public(self, keys_dir: Path) -> Path:
        """Write the public key as keys_dir/<name> (a directory apk can use as --keys-dir); returns its path."""
        keys_dir.mkdir(parents=True, exist_ok=True)
        path = keys_dir / self.name
        path.write_bytes(self.public_pem)
        return path


@functools.cache
def test_key() -> RepoKey:
    """A fresh 2048-bit key per process, named copa-test-<hex>.rsa.pub like abuild's <email>-<hex>.rsa.pub."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return RepoKey(f"copa-test-{secrets.token_hex(4)}.rsa.pub", private, public)


def sign(key: RepoKey, data: bytes, algorithm: str = "RSA256") -> bytes:
    """PKCS#1 v1.5 signature of `data` as abuild-sign makes it (RSA = SHA-1, RSA256 = SHA-256)."""
    digest: hashes.HashAlgorithm = hashes.SHA256() if algorithm == "RSA256" else hashes.SHA1()
    return key.private_key().sign(data, padding.PKCS1v15(), digest)


# ---------------------------------------------------------------------------------------------------- installed db


@dataclass(frozen=True, slots=True)
class DbFile:
    """One F:/R: entry of the installed database: a directory (`is_dir`) or a file below the last directory."""

    path: str
    is_dir: bool


@dataclass(frozen=True, slots=True)
class InstalledPackage:
    """One record of /lib/apk/db/installed: the single-letter fields (repeatable ones joined) and its paths."""

    fields: Mapping[str, str]
    files: tuple[DbFile, ...]

    @property
    def name(self) -> str:
        return self.fields["P"]

    @property
    def version(self) -> str:
        return self.fields["V"]


def read_installed(root: Path) -> dict[str, InstalledPackage]:
    """The installed packages of an Alpine rootfs by name, parsed from ROOT/lib/apk/db/installed."""
    packages: dict[str, InstalledPackage] = {}
    text = (root / INSTALLED_DB).read_text(encoding="utf-8")
    for record in text.split("\n\n"):
        fields: dict[str, str] = {}
        files: list[DbFile] = []
        directory = ""
        for line in record.splitlines():
            key, sep, value = line.partition(":")
            if not sep or len(key) != 1:
                continue
            if key == "F":
                directory = value
                files.append(DbFile(value, True))
            elif key == "R":
                files.append(DbFile(f"{directory}/{value}" if directory else value, False))
            elif key not in ("a", "M", "Z") and key not in fields:  # per-file lines belong to the files above
                fields[key] = value
        if "P" in fields:
            packages[fields["P"]] = InstalledPackage(fields, tuple(files))
    return packages


def bump_release(version: str, by: int = 1) -> str:
    """1.2.3-r0 -> 1.2.3-r1: the next package release of the same upstream version."""
    match = re.fullmatch(r"(.*)-r(\d+)", version)
    if match is None:
        return f"{version}-r{by}"
    return f"{match.group(1)}-r{int(match.group(2)) + by}"


# ---------------------------------------------------------------------------------------------------- tar pieces


def _pad(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


def _member(name: str, data: bytes, mode: int = 0o644) -> bytes:
    """One tar entry (header + padded data), ustar, owned by root, no end-of-archive blocks."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, BUILD_DATE
    info.uname = info.gname = "root"
    return info.tobuf(format=tarfile.USTAR_FORMAT) + data + _pad(len(data))


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def _names(path: Path) -> dict[int, str]:
    names: dict[int, str] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            parts = line.split(":")
            if len(parts) >= 3 and parts[2].isdigit():
                names.setdefault(int(parts[2]), parts[0])
    return names


@dataclass(frozen=True, slots=True)
class _Owners:
    users: Mapping[int, str]
    groups: Mapping[int, str]


def installed_size(regular_bytes: int, entries: int) -> int:
    """abuild's installed size: the regular files' bytes, but at least 1 for a package with any content (a
    symlink-only package such as busybox-binsh is I:1 in Alpine's index), because apk treats I:0 as a virtual
    package and unpacks nothing. Only a package with an empty data segment gets 0."""
    return max(regular_bytes, 1) if entries else regular_bytes


def _data_tar(root: Path, paths: Sequence[DbFile], extra: Mapping[str, bytes], owners: _Owners, out: BinaryIO,
              dirs: Mapping[str, tuple[int, int, int]] | None = None) -> int:
    """Write the data segment (one gzip member) for `paths` read from `root` plus `extra` files; returns the
    installed size (`installed_size`). `dirs` overrides directories' (mode, uid, gid)."""
    size = 0
    with (
        gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for entry in paths:
            src = root / entry.path
            if not os.path.lexists(src):
                raise ApkRepoError(f"{entry.path} is in the installed database but not in {root}; rebuild the rootfs")
            info = tar.gettarinfo(str(src), arcname=entry.path)
            info.mtime = BUILD_DATE
            if info.isdir() and dirs and entry.path in dirs:
                info.mode, info.uid, info.gid = dirs[entry.path]
            info.uname = owners.users.get(info.uid, "")
            info.gname = owners.groups.get(info.gid, "")
            if info.islnk():  # apk packages carry hard-linked files as plain copies here; keep it simple
                info.type, info.linkname, info.size = tarfile.REGTYPE, "", src.stat().st_size
            if info.isreg():
                with src.open("rb") as f:
                    digest = hashlib.file_digest(f, "sha1").hexdigest()
                info.pax_headers = {"APK-TOOLS.checksum.SHA1": digest}
                size += info.size
                with src.open("rb") as f:
                    tar.addfile(info, f)
            elif info.issym():
                info.pax_headers = {"APK-TOOLS.checksum.SHA1": hashlib.sha1(info.linkname.encode()).hexdigest()}
                tar.addfile(info)
            else:
                tar.addfile(info)
        written = {e.path for e in paths}
        for name, data in extra.items():
            parents = [str(p) for p in reversed(Path(name).parents) if str(p) != "."]
            for parent in parents:  # apk refuses a file whose directory has no entry in the archive
                if parent not in written:
                    written.add(parent)
                    dinfo = tarfile.TarInfo(parent)
                    dinfo.type, dinfo.mode, dinfo.mtime = tarfile.DIRTYPE, 0o755, BUILD_DATE
                    dinfo.uname = dinfo.gname = "root"
                    if dirs and parent in dirs:
                        dinfo.mode, dinfo.uid, dinfo.gid = dirs[parent]
                        dinfo.uname = owners.users.get(dinfo.uid, "")
                        dinfo.gname = owners.groups.get(dinfo.gid, "")
                    tar.addfile(dinfo)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, BUILD_DATE
            info.uname = info.gname = "root"
            info.pax_headers = {"APK-TOOLS.checksum.SHA1": hashlib.sha1(data).hexdigest()}
            size += len(data)
            tar.addfile(info, io.BytesIO(data))
    return installed_size(size, len(paths) + len(extra))


# ---------------------------------------------------------------------------------------------------- packages


@dataclass(frozen=True, slots=True)
class PackageUpdate:
    """What to build: a newer `name` from the rootfs, or (with `new=True`) a brand-new package.

    drop_files: paths (relative, as in the db) left out of the new version.
    add_depends: extra `depend` entries (e.g. the name of a brand-new package built in the same repo).
    scripts: {"post-upgrade": b"#!/bin/sh\\n..."}; names from SCRIPT_NAMES.
    files: extra regular files {path: content} (the only content of a brand-new package).
    installed_size: force the I:/size value instead of abuild's (`installed_size`); 0 makes a package apk treats
        as virtual (installs its record, unpacks none of its files), which abuild never produces for one with files.
    version: the new version itself instead of a release bump (e.g. a new upstream "1.35.0-r0").
    depends: the new version's whole `depend` list instead of the installed one's (e.g. ("libcurl~8.22",));
        `add_depends` still adds to it.
    dirs: directory metadata in the data tar {path: (mode, uid, gid)}, overriding what the rootfs has (a
        directory whose mode or owner changes in the new build).
    """

    name: str
    bump: int = 1
    drop_files: tuple[str, ...] = ()
    add_depends: tuple[str, ...] = ()
    scripts: Mapping[str, bytes] = field(default_factory=dict)
    new: bool = False
    new_version: str = "1.0-r0"
    files: Mapping[str, bytes] = field(default_factory=dict)
    installed_size: int | None = None
    version: str = ""
    depends: tuple[str, ...] | None = None
    dirs: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)

    def new_version_of(self, old: str) -> str:
        return self.version or bump_release(old, self.bump)


@dataclass(frozen=True, slots=True)
class BuiltPackage:
    name: str
    old_version: str | None  # None for a brand-new package
    version: str
    path: Path
    checksum: str  # APKINDEX C: value, "Q1" + base64(sha1(control member))
    index_record: str
    files: tuple[str, ...]  # paths in the data segment, directories included


def _pkginfo_lines(fields: Mapping[str, str], version: str, size: int, depends: Sequence[str]) -> list[str]:
    lines = [
        "# Generated by copa tests (abuild layout)",
        f"pkgname = {fields['P']}",
        f"pkgver = {version}",
        f"pkgdesc = {fields.get('T', '')}",
        f"url = {fields.get('U', '')}",
        f"builddate = {BUILD_DATE}",
        f"packager = {fields.get('m', 'copa tests')}",
        f"size = {size}",
        f"arch = {fields.get('A', ARCH)}",
        f"origin = {fields.get('o', fields['P'])}",
    ]
    for key, label in (("c", "commit"), ("m", "maintainer"), ("L", "license")):
        if fields.get(key):
            lines.append(f"{label} = {fields[key]}")
    for key, label in (("r", "replaces"), ("p", "provides")):
        lines += [f"{label} = {v}" for v in fields.get(key, "").split()]
    lines += [f"depend = {d}" for d in depends]
    if fields.get("i"):
        lines.append(f"install_if = {fields['i']}")
    if fields.get("k"):
        lines.append(f"provider_priority = {fields['k']}")
    return lines


def _retarget(values: str, old: str, new: str) -> str:
    """Rewrite `name=OLD` pins (provides like cmd:apk=3.0.8-r0) to the new version."""
    return " ".join(v[: -len(old)] + new if v.endswith(f"={old}") else v for v in values.split())


def _follow(values: Sequence[str], bumped: Mapping[str, tuple[str, str]]) -> list[str]:
    """Exact `other=OLD` pins on a package rebuilt in the same run follow it to its new version, as abuild writes
    them from the subpackages it builds together (ssl_client's install_if `busybox=<ver> libssl3`, depends of
    split packages on their origin's exact version)."""
    out = []
    for value in values:
        name, sep, version = value.partition("=")
        if sep and name in bumped and version == bumped[name][0]:
            value = f"{name}={bumped[name][1]}"
        out.append(value)
    return out


def build_package(
    root: Path, update: PackageUpdate, out_dir: Path, key: RepoKey, *, sha1_signature: bool = False,
    bumped: Mapping[str, tuple[str, str]] | None = None,
) -> BuiltPackage:  # fmt: skip
    """Build one signed v2 .apk into out_dir. `bumped` maps other rebuilt names to (old, new) versions so that
    `name=old` dependency pins on them follow."""
    installed = read_installed(root)
    if update.new:
        fields: dict[str, str] = {
            "P": update.name, "V": update.new_version, "A": ARCH, "T": f"{update.name} (copa test package)",
            "U": "https://example.invalid/copa", "L": "MIT", "o": update.name, "m": "copa tests <copa@example.invalid>",
        }  # fmt: skip
        old_version: str | None = None
        version = update.new_version
        paths: list[DbFile] = []
    else:
        if update.name not in installed:
            raise ApkRepoError(f"{update.name} is not installed in {root}; pick one of {', '.join(sorted(installed))}")
        pkg = installed[update.name]
        fields = dict(pkg.fields)
        old_version = pkg.version
        version = update.new_version_of(old_version)
        fields["p"] = _retarget(fields.get("p", ""), old_version, version)
        drop = {p.strip("/") for p in update.drop_files}
        paths = [f for f in pkg.files if f.path not in drop]
    # Explicit depends are taken as written (a pin on an older version stays one); inherited ones follow.
    inherited = _follow(fields.get("D", "").split(), bumped or {})
    depends = (inherited if update.depends is None else list(update.depends)) + list(update.add_depends)
    if fields.get("i"):
        fields["i"] = " ".join(_follow(fields["i"].split(), bumped or {}))
    owners = _Owners(_names(root / "etc/passwd"), _names(root / "etc/group"))

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=out_dir) as data:
        size = _data_tar(root, paths, update.files, owners, data, update.dirs)
        if update.installed_size is not None:
            size = update.installed_size
        data.seek(0)
        datahash = hashlib.file_digest(data, "sha256").hexdigest()
        pkginfo = "\n".join([*_pkginfo_lines(fields, version, size, depends), f"datahash = {datahash}"]) + "\n"
        control_tar = _member(".PKGINFO", pkginfo.encode())
        for script, body in sorted(update.scripts.items()):
            if script not in SCRIPT_NAMES:
                raise ApkRepoError(f"unknown script {script!r}; use one of {', '.join(SCRIPT_NAMES)}")
            control_tar += _member(f".{script}", body, 0o755)
        control = _gzip(control_tar)
        signatures = _member(f".SIGN.RSA256.{key.name}", sign(key, control, "RSA256"))
        if sha1_signature:
            signatures += _member(f".SIGN.RSA.{key.name}", sign(key, control, "RSA"))
        path = out_dir / f"{update.name}-{version}.apk"
        with path.open("wb") as out:
            out.write(_gzip(signatures))
            out.write(control)
            data.seek(0)
            shutil.copyfileobj(data, out)
    checksum = "Q1" + base64.b64encode(hashlib.sha1(control).digest()).decode()
    record = _index_record(fields, version, checksum, path.stat().st_size, size, depends)
    files = tuple(f.path for f in paths) + tuple(update.files)
    return BuiltPackage(update.name, old_version, version, path, checksum, record, files)


def _index_record(
    fields: Mapping[str, str], version: str, checksum: str, file_size: int, installed_size: int, depends: Sequence[str]
) -> str:
    lines = [
        f"C:{checksum}", f"P:{fields['P']}", f"V:{version}", f"A:{fields.get('A', ARCH)}", f"S:{file_size}",
        f"I:{installed_size}", f"T:{fields.get('T', '')}", f"U:{fields.get('U', '')}", f"L:{fields.get('L', '')}",
        f"o:{fields.get('o', fields['P'])}", f"m:{fields.get('m', '')}", f"t:{BUILD_DATE}",
    ]  # fmt: skip
    if fields.get("c"):
        lines.append(f"c:{fields['c']}")
    if depends:
        lines.append(f"D:{' '.join(depends)}")
    for key in ("p", "i", "k", "r"):
        if fields.get(key):
            lines.append(f"{key}:{fields[key]}")
    return "\n".join(lines) + "\n"


def write_index(arch_dir: Path, records: Sequence[str], key: RepoKey, *, sha1_signature: bool = False) -> Path:
    """Write arch_dir/APKINDEX.tar.gz for `records` (index record texts), signed with `key`."""
    description = b"copa-test hermetic repository"
    body = _member("DESCRIPTION", description) + _member("APKINDEX", "\n".join(records).encode() + b"\n")
    index = _gzip(body + b"\0" * (2 * tarfile.BLOCKSIZE))
    signatures = _member(f".SIGN.RSA256.{key.name}", sign(key, index, "RSA256"))
    if sha1_signature:
        signatures += _member(f".SIGN.RSA.{key.name}", sign(key, index, "RSA"))
    path = arch_dir / "APKINDEX.tar.gz"
    path.write_bytes(_gzip(signatures) + index)
    return path


@dataclass(frozen=True, slots=True)
class ApkRepo:
    """A built repository directory: serve `directory`; apk wants `URL` (it appends /<arch>/APKINDEX.tar.gz)."""

    directory: Path
    key: RepoKey
    packages: tuple[BuiltPackage, ...]

    @property
    def arch_dir(self) -> Path:
        return self.directory / ARCH

    def package(self, name: str) -> BuiltPackage:
        return next(p for p in self.packages if p.name == name)


def build_repo(
    root: Path, updates: Sequence[PackageUpdate], directory: Path, key: RepoKey | None = None, *,
    sha1_signature: bool = False,
) -> ApkRepo:  # fmt: skip
    """Build newer versions of `updates` from `root` (plus brand-new packages) into directory/<arch>/, signed."""
    key = key or test_key()
    installed = read_installed(root)
    bumped: dict[str, tuple[str, str]] = {}
    for u in updates:  # with several new versions of one name, pins follow the first
        if not u.new and u.name in installed:
            bumped.setdefault(u.name, (installed[u.name].version, u.new_version_of(installed[u.name].version)))
    arch_dir = directory / ARCH
    built = tuple(build_package(root, u, arch_dir, key, sha1_signature=sha1_signature, bumped=bumped) for u in updates)
    write_index(arch_dir, [p.index_record for p in built], key, sha1_signature=sha1_signature)
    return ApkRepo(directory, key, built)


# ---------------------------------------------------------------------------------------------------- serving


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve `directory` over plain HTTP on 127.0.0.1 (a thread); yields the base URL (no trailing slash)."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="apk-repo", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# ---------------------------------------------------------------------------------------------------- image layer


def write_key_layer(root: Path, key: RepoKey, repo_url: str, out: BinaryIO) -> None:
    """A layer tar trusting `key` (etc/apk/keys/<name>) and pointing etc/apk/repositories at `repo_url` only."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("etc", "etc/apk", "etc/apk/keys"):
            info = tar.gettarinfo(str(root / directory), arcname=directory)
            info.mtime, info.uname, info.gname = BUILD_DATE, "", ""
            tar.addfile(info)
        for name, data in (
            (f"etc/apk/keys/{key.name}", key.public_pem),
            ("etc/apk/repositories", f"{repo_url}\n".encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, BUILD_DATE
            tar.addfile(info, io.BytesIO(data))


def add_key_layer(layout_dir: Path, ref_name: str, root: Path, key: RepoKey, repo_url: str) -> None:
    """Append the `write_key_layer` layer to oci:layout_dir:ref_name (a writable copy!) with umoci raw add-layer."""
    with tempfile.NamedTemporaryFile(prefix="copa-apk-key-", suffix=".tar") as tmp:
        write_key_layer(root, key, repo_url, tmp)  # type: ignore[arg-type]
        tmp.flush()
        proc = subprocess.run(
            ["umoci", "raw", "add-layer", f"--image={layout_dir}:{ref_name}",
             "--history.created_by=copa-tests: trust the hermetic apk repository", tmp.name],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise ApkRepoError(f"umoci raw add-layer into {layout_dir}:{ref_name} failed: {proc.stderr.strip()}")
