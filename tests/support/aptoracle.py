"""The host's real apt as an oracle: run on an image's sources.list, preferences{,.d} and dpkg status (and, when
asked, its apt.conf.d), with state, lists and caches private to a directory, so nothing is written into the image."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path


def apt(state: Path, rootfs: Path, lists: Path | None, *argv: str, image_conf: bool = True,
        refuse_warnings: bool = False, check: bool = True, architectures: Sequence[str] = ("amd64",),
        sources_list: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `argv` (apt-get, apt-cache) with APT_CONFIG pointing at a private configuration, which sets Dir before
    apt reads any apt.conf.d. `image_conf`: apt reads the image's etc/apt/apt.conf.d (else an empty one of its
    own). `refuse_warnings`: W:/E: lines on stderr fail the call ("N: Ignoring file" is expected). `check`: a
    non-zero exit fails it. `architectures`: APT::Architectures, the first the native one; apt also reads the
    image's var/lib/dpkg/arch through dpkg, which is not asked here. `sources_list`: read instead of the image's
    etc/apt/sources.list."""
    for d in ("etc/apt/apt.conf.d", "var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "dpkg"):
        (state / d).mkdir(parents=True, exist_ok=True)
    # apt locks the directory of the status file: give it a copy.
    shutil.copyfile(rootfs / "var/lib/dpkg/status", state / "dpkg/status")
    options = {
        "Dir": f"{state}/",
        "Dir::State::status": f"{state}/dpkg/status",
        "Dir::State::lists": f"{lists or state / 'var/lib/apt/lists'}/",
        "Dir::Cache::pkgcache": "",  # no cache files: the policy is computed afresh each time anyway
        "Dir::Cache::srcpkgcache": "",
        "Dir::Etc::sourcelist": str(sources_list or rootfs / "etc/apt/sources.list"),
        "Dir::Etc::sourceparts": f"{state}/sources.list.d",  # absent: only the image's sources.list
        "Dir::Etc::parts": f"{rootfs if image_conf else state}/etc/apt/apt.conf.d",
        "Dir::Etc::preferences": f"{rootfs}/etc/apt/preferences",
        "Dir::Etc::preferencesparts": f"{rootfs}/etc/apt/preferences.d",
        "APT::Architecture": architectures[0],
        "Debug::NoLocking": "1",
    }
    if os.geteuid() == 0:
        options["APT::Sandbox::User"] = "root"  # the private directory is not _apt's to write
    conf = state / "apt.conf"
    arches = " ".join(f'"{a}";' for a in architectures)
    conf.write_text("".join(f'{k} "{v}";\n' for k, v in options.items()) + f"APT::Architectures {{ {arches} }};\n")
    proc = subprocess.run(argv, capture_output=True, text=True,
                          env={**os.environ, "APT_CONFIG": str(conf), "LC_ALL": "C"})
    if check:
        assert proc.returncode == 0, f"{' '.join(argv)}: {proc.stderr}"
    if refuse_warnings:
        assert not re.search(r"^[WE]:", proc.stderr, re.M), proc.stderr
    return proc


def simulated_installs(stdout: str) -> frozenset[tuple[str, str]]:
    """(package, version) of every `Inst` line of `apt-get -s`; a foreign-architecture package as name:arch."""
    return frozenset((m[1], m[2]) for m in re.finditer(r"^Inst (\S+) (?:\[\S+\] )?\((\S+) ", stdout, re.M))
