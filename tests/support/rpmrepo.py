"""A hermetic rpm-md repository for tests, made by the real tools, and dnf as the oracle that reads it.

    key = make_gpg_key(tmp / "gpg")
    repo = build_repo(tmp / "repo", [Pkg("hello", "1.0", lines=("Requires: bash >= 4",))], key=key)
    with RepoServer(repo.root) as server:     # tests/support/aptrepo.py's directory server, on 127.0.0.1
        dnf_query(server.url, tmp / "dnf", "--qf", "%{name}")

Packages are built by `rpmbuild -bb` from a generated spec, metadata by `createrepo_c` (modules added with
`modifyrepo_c`), repomd.xml signed by `gpg --detach-sign --armor` with a throwaway GNUPGHOME.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.aptrepo import RepoServer

__all__ = ["GpgKey", "Pkg", "RepoServer", "RpmRepo", "build_repo", "build_rpm", "dnf_query", "make_gpg_key"]

SOURCE_DATE_EPOCH = "1704067200"


@dataclass(frozen=True)
class Pkg:
    name: str
    version: str
    release: str = "1"
    epoch: int | None = None
    arch: str = "noarch"
    lines: tuple[str, ...] = ()  # preamble lines: "Requires: x >= 1", "Requires(pre): y", "Provides: z = 2"...
    files: Mapping[str, bytes | str] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-{self.release}.{self.arch}.rpm"


def _run(args: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, env=dict(env) if env else None, cwd=cwd,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def build_rpm(pkg: Pkg, out_dir: Path) -> Path:
    work = out_dir / f".build-{pkg.name}-{pkg.version}-{pkg.release}.{pkg.arch}"
    shutil.rmtree(work, ignore_errors=True)
    src = work / "src"
    src.mkdir(parents=True)
    for path, content in pkg.files.items():
        target = src / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode() if isinstance(content, str) else content)
    spec = [f"Name: {pkg.name}", f"Version: {pkg.version}", f"Release: {pkg.release}", "Summary: copa test",
            "License: MIT", "AutoReqProv: no"]
    if pkg.epoch is not None:
        spec.append(f"Epoch: {pkg.epoch}")
    spec.append(f"BuildArch: {pkg.arch}")
    spec += list(pkg.lines)
    spec += ["", "%description", "copa test package", "", "%install", f"cp -a {src}/. %{{buildroot}}/", "",
             "%files"]
    spec += [f"/{p.lstrip('/')}" for p in pkg.files]
    spec_path = work / f"{pkg.name}.spec"
    spec_path.write_text("\n".join(spec) + "\n")
    env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
    _run(["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {work / 'top'}", "--define", "__os_install_post %{nil}",
          "--define", "_build_id_links none", "--define", "debug_package %{nil}",
          "--target", pkg.arch, str(spec_path)], env=env)
    built = next((work / "top" / "RPMS").rglob("*.rpm"))
    out = out_dir / built.name
    shutil.move(built, out)
    shutil.rmtree(work)
    return out


@dataclass(frozen=True)
class GpgKey:
    home: Path
    fingerprint: str
    armored: Path  # the public key, as a RPM-GPG-KEY-* file

    def sign_detached(self, path: Path) -> Path:
        _run(["gpg", "--homedir", str(self.home), "--batch", "--yes", "--detach-sign", "--armor", str(path)])
        return path.with_name(path.name + ".asc")


def make_gpg_key(home: Path, uid: str = "copa rpm tests <rpm@example.invalid>") -> GpgKey:
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    _run(["gpg", "--homedir", str(home), "--batch", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign",
          "never"])
    listing = _run(["gpg", "--homedir", str(home), "--batch", "--with-colons", "--list-keys", uid])
    fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    armored = home / "RPM-GPG-KEY-copa-test"
    armored.write_text(_run(["gpg", "--homedir", str(home), "--batch", "--armor", "--export", fpr]))
    return GpgKey(home, fpr, armored)


@dataclass(frozen=True)
class RpmRepo:
    root: Path
    key: GpgKey | None

    @property
    def repomd(self) -> Path:
        return self.root / "repodata" / "repomd.xml"


def build_repo(dest: Path, pkgs: Sequence[Pkg], *, key: GpgKey | None = None, modules_yaml: str | None = None,
               compress: str = "gz", checksum: str = "sha256", rpms: Sequence[Path] = ()) -> RpmRepo:
    """createrepo_c over the built packages (and `rpms` already built); `compress` is createrepo_c's
    --general-compress-type, `checksum` its --checksum."""
    dest.mkdir(parents=True, exist_ok=True)
    for pkg in pkgs:
        build_rpm(pkg, dest)
    for rpm in rpms:
        shutil.copy(rpm, dest / rpm.name)
    _run(["createrepo_c", "--quiet", "--no-database", "--unique-md-filenames",
          f"--general-compress-type={compress}", f"--checksum={checksum}", str(dest)])
    if modules_yaml is not None:
        source = dest.parent / f".{dest.name}-modules.yaml"
        source.write_text(modules_yaml)
        _run(["modifyrepo_c", "--mdtype=modules", f"--compress-type={compress}", f"--checksum={checksum}",
              str(source), str(dest / "repodata")])
        source.unlink()
    repo = RpmRepo(dest, key)
    if key is not None:
        key.sign_detached(repo.repomd)
    return repo


def dnf_query(url: str, work: Path, *args: str, setopts: Sequence[str] = (), root: Path | None = None) -> list[str]:
    """`dnf repoquery` against the repository at `url` only, with a private cache and an empty installroot
    (or `root`, holding e.g. /etc/dnf/modules.d)."""
    installroot = root or work / "root"
    installroot.mkdir(parents=True, exist_ok=True)
    cmd = ["dnf", "-q", "--installroot", str(installroot), f"--setopt=cachedir={work / 'cache'}",
           "--setopt=reposdir=/nonexistent", "--releasever", "9", "--nogpgcheck", "--disableplugin=*",
           f"--repofrompath=t,{url}", "--repo", "t"]
    for opt in setopts:
        cmd.append(f"--setopt={opt}")
    cmd += ["repoquery", *args]
    return [line for line in _run(cmd).splitlines() if line.strip()]
