"""Hermetic rpm-md repositories for tests, made by the real tools, served on 127.0.0.1, and dnf as the oracle that
reads them. Packages and keys come from tests/support/rpmtools.py.

    key = make_gpg_key(tmp / "gpg")
    repo = build_repo(tmp / "repo", [rpm_spec("hello", "1.0", lines=("Requires: bash >= 4",))], key=key)
    with RepoServer(repo.root) as server:     # tests/support/aptrepo.py's directory server, on 127.0.0.1
        dnf_query(server.url, tmp / "dnf", "--qf", "%{name}")

Metadata by `createrepo_c` (modules added with `modifyrepo_c`), repomd.xml signed by `gpg --detach-sign --armor`
with the key's throwaway GNUPGHOME.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.aptrepo import RepoServer
from tests.support.rpmtools import GpgKey, RpmSpec, build_rpm, run

__all__ = ["RepoServer", "RpmRepo", "build_repo", "createrepo", "dnf_query"]


def createrepo(directory: Path, *args: str) -> Path:
    """repodata/ for the .rpm files under `directory` (createrepo_c, with `args` such as "--no-database");
    returns the repodata directory."""
    run(["createrepo_c", "--quiet", *args, str(directory)])
    return directory / "repodata"


@dataclass(frozen=True)
class RpmRepo:
    root: Path
    key: GpgKey | None

    @property
    def repomd(self) -> Path:
        return self.root / "repodata" / "repomd.xml"


def build_repo(dest: Path, pkgs: Sequence[RpmSpec], *, key: GpgKey | None = None, modules_yaml: str | None = None,
               compress: str = "gz", checksum: str = "sha256", rpms: Sequence[Path] = ()) -> RpmRepo:
    """createrepo_c over the built packages (and `rpms` already built); `compress` is createrepo_c's
    --general-compress-type, `checksum` its --checksum."""
    dest.mkdir(parents=True, exist_ok=True)
    for pkg in pkgs:
        build_rpm(pkg, dest)
    for rpm in rpms:
        shutil.copy(rpm, dest / rpm.name)
    createrepo(dest, "--no-database", "--unique-md-filenames", f"--general-compress-type={compress}",
               f"--checksum={checksum}")
    if modules_yaml is not None:
        source = dest.parent / f".{dest.name}-modules.yaml"
        source.write_text(modules_yaml)
        run(["modifyrepo_c", "--mdtype=modules", f"--compress-type={compress}", f"--checksum={checksum}",
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
    return [line for line in run(cmd).splitlines() if line.strip()]
