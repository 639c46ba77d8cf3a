"""Maintainer-script effects on a real Debian image, with the real apt as the oracle.

The bookworm fixture gets four packages at 1.0 (installed by dpkg, module bytecode compiled by the image's own
python3.11 in a chroot) and becomes an OCI image. A hermetic signed repository holds their upgrades:

    ca-certificates  the image's own package repacked from its files and scripts (a dpkg-repack): one Mozilla root
                     removed, one new self-made root added (and listed in its debconf config), version bumped
    libcopa1         2.0 adds libcopa.so.1.0.0 (built by gcc) without its soname link, with the ldconfig trigger
    python3-copamod  2.0 changes a module whose .pyc the image has
    copa-shell       2.0's postinst runs add-shell
    copa-tool        2.0's postinst creates a system user and group (adduser --system --group, with a home) and
                     registers an alternative with a slave (update-alternatives --install)

copa patches the image (OCI layout -> OCI layout); the real apt upgrades the same packages in a chroot copy of the
same rootfs, running the real postinsts and triggers (update-ca-certificates, openssl rehash, ldconfig, add-shell).
Every path either of them changed outside the package-manager state must be the same in both (type, mode, owner,
bytes or link target). Then the patched image is used from inside: OpenSSL trusts the new root and no longer the
removed one; ldconfig -p lists the new library.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import debimage, images
from tests.support.aptrepo import AptRepo, DebSpec, RepoServer, build_deb, make_key, write_indexes, write_release

ROOT = Path(__file__).resolve().parents[1]
REF = "effects"
SUITE = "bookworm"
REMOVED_CERT = "mozilla/ACCVRAIZ1.crt"
NEW_CERT = "mozilla/Copa_Effects_Test_Root.crt"
MULTIARCH = "usr/lib/x86_64-linux-gnu"
MODULE = "usr/lib/python3/dist-packages/copamod.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.live,  # the bookworm fixture is built from the Debian archive on a cold cache
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("chroot") is None or shutil.which("gcc") is None,
                       reason="needs root (chroot, mknod) and gcc"),
]

# Paths whose differences are not the scripts' effects, and why.
EXCLUDED = (
    "var/lib/dpkg/",  # the package database: status, info/, triggers; compared with dpkg's by other tests
    "var/cache/",  # debconf's answers database, ldconfig's aux-cache, apt's package caches
    "var/log/",  # apt and dpkg logs: when and how they ran
    "var/lib/apt/",  # apt's lists and extended_states: how packages were fetched
    "etc/apt/",  # the oracle's repository source and key, put there for apt and removed again
    "dev/",  # /dev/null, made for apt inside the chroot
    "tmp/",
    "run/",  # adduser's lock file /run/adduser: run-time state (a tmpfs in a running container)
)
ALTERNATIVES = "var/lib/dpkg/alternatives"  # update-alternatives' state is the scripts' doing: compared
# Accepted difference: apt leaves a changed module's old bytecode (no py3compile here) where copa deletes it; Python
# regenerates either on import.
PYC = re.compile(r"(^|/)__pycache__/[^/]+\.pyc$")


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{argv} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc  # type: ignore[no-any-return]


def _status_paragraph(root: Path, package: str) -> dict[str, str]:
    text = (root / "var/lib/dpkg/status").read_text()
    for para in text.split("\n\n"):
        if f"Package: {package}\n" in para + "\n":
            fields: dict[str, str] = {}
            key = ""
            for line in para.splitlines():
                if line.startswith((" ", "\t")):
                    fields[key] += "\n" + line
                else:
                    key, _, value = line.partition(":")
                    fields[key] = value.strip()
            return fields
    raise AssertionError(f"{package} is not installed in {root}")


def _self_signed(directory: Path, name: str) -> Path:
    key, pem = directory / f"{name}.key", directory / f"{name}.pem"
    _run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
          str(key), "-out", str(pem), "-subj", f"/CN={name}/O=copa effects test", "-days", "3650",
          "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    return pem


def _repack_ca_certificates(base: Path, work: Path, new_cert: Path) -> tuple[Path, str]:
    """ca-certificates rebuilt from the image's installed files and maintainer scripts (what dpkg-repack does),
    changed like a new upstream release: one root gone, one added, version bumped."""
    tree = work / "ca-certificates"
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "DEBIAN").mkdir(parents=True)
    info = base / "var/lib/dpkg/info"
    for line in (info / "ca-certificates.list").read_text().splitlines():
        rel = line.lstrip("/")
        if not rel or rel == ".":
            continue
        src, dst = base / rel, tree / rel
        if src.is_symlink():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(os.readlink(src))
        elif src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
            dst.chmod(src.stat().st_mode & 0o7777)
        elif src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    (tree / "usr/share/ca-certificates" / REMOVED_CERT).unlink()
    shutil.copy(new_cert, tree / "usr/share/ca-certificates" / NEW_CERT)
    for member in ("postinst", "postrm", "config", "templates", "triggers", "preinst", "prerm"):
        src = info / f"ca-certificates.{member}"
        if src.is_file():
            shutil.copy2(src, tree / "DEBIAN" / member)
    config = (tree / "DEBIAN/config").read_text()
    listed = re.search(r'^CERTS_LIST="([^"]*)"', config, re.M)
    assert listed is not None
    certs = [c.strip() for c in listed.group(1).split(",") if c.strip() and c.strip() != REMOVED_CERT]
    certs = sorted([*certs, NEW_CERT])
    (tree / "DEBIAN/config").write_text(config.replace(listed.group(0), f'CERTS_LIST="{", ".join(certs)}"'))
    fields = _status_paragraph(base, "ca-certificates")
    version = fields["Version"] + "+copa1"
    keep = ("Package", "Architecture", "Multi-Arch", "Priority", "Section", "Maintainer", "Depends", "Breaks",
            "Enhances", "Description")
    control = {k: fields[k] for k in keep if k in fields}
    control["Version"] = version
    control["Installed-Size"] = fields.get("Installed-Size", "1")
    order = ("Package", "Version", "Architecture", "Multi-Arch", "Maintainer", "Installed-Size", "Depends",
             "Breaks", "Enhances", "Priority", "Section", "Description")
    (tree / "DEBIAN/control").write_text("".join(f"{k}: {control[k]}\n" for k in order if k in control))
    out = work / "pool/main/ca-certificates" / f"ca-certificates_{version}_all.deb"
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tree), str(out)])
    return out, version


def _library(work: Path) -> bytes:
    src = work / "copa.c"
    src.write_text("int copa_answer(void) { return 42; }\n")
    out = work / "libcopa.so.1.0.0"
    _run(["gcc", "-shared", "-fPIC", "-O2", "-Wl,-soname,libcopa.so.1", "-o", str(out), str(src)])
    return out.read_bytes()


def _with_triggers(deb: Path, triggers: str) -> None:
    """Add a `triggers` control member (DebSpec has none): rebuild the .deb from its extracted tree."""
    tree = deb.with_suffix(".d")
    _run(["dpkg-deb", "-R", str(deb), str(tree)])
    (tree / "DEBIAN/triggers").write_text(triggers)
    deb.unlink()
    _run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tree), str(deb)])
    shutil.rmtree(tree)


TOOL_POSTINST = """#!/bin/sh
set -e
if [ "$1" = configure ]; then
    adduser --system --group --home /var/lib/copa-tool --quiet copa-tool
    update-alternatives --install /usr/bin/copa-tool copa-tool /usr/bin/copa-tool-2 20 \\
        --slave /usr/share/man/man1/copa-tool.1.gz copa-tool.1.gz /usr/share/man/man1/copa-tool-2.1.gz
fi
"""


def _specs(libso: bytes) -> tuple[list[DebSpec], list[DebSpec]]:
    old = [
        DebSpec("libcopa1", "1.0", files={"usr/share/doc/libcopa1/README": "1.0\n"}),
        DebSpec("python3-copamod", "1.0", files={MODULE: "VALUE = 1\n"}),
        DebSpec("copa-shell", "1.0", files={"usr/bin/copash": "#!/bin/sh\nexec /bin/sh \"$@\"\n"}),
        DebSpec("copa-tool", "1.0", files={"usr/bin/copa-tool-1": "#!/bin/sh\n"}),
    ]
    new = [
        DebSpec("libcopa1", "2.0", files={"usr/share/doc/libcopa1/README": "2.0\n", f"{MULTIARCH}/libcopa.so.1.0.0":
                                          libso}),
        DebSpec("python3-copamod", "2.0", files={MODULE: "VALUE = 2  # changed\n"}),
        DebSpec("copa-shell", "2.0", files={"usr/bin/copash": "#!/bin/sh\nexec /bin/sh \"$@\"  # 2.0\n"},
                scripts={"postinst": "#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n"
                                     "    add-shell /bin/copash\nfi\n"}),
        DebSpec("copa-tool", "2.0", files={"usr/bin/copa-tool-2": "#!/bin/sh\n# 2.0\n",
                                           "usr/share/man/man1/copa-tool-2.1.gz": "man\n"},
                scripts={"postinst": TOOL_POSTINST}),
    ]
    return old, new


class Setup:
    def __init__(self, work: Path) -> None:
        self.work = work
        base = images.debian_rootfs()
        self.root = debimage.copy_rootfs(base, work / "base")
        self.new_ca = _self_signed(work, "Copa_Effects_Test_Root")
        libso = _library(work)
        old, new = _specs(libso)
        debimage.dpkg_install(self.root, [build_deb(s, work / "old-debs") for s in old])
        _run(["chroot", str(self.root), "python3.11", "-m", "compileall", "-q", "/" + MODULE])
        assert list((self.root / MODULE).parent.glob("__pycache__/copamod.cpython-311.pyc"))
        images.builder.make_oci_layout(self.root, work / "layout", REF, cmd=None)
        self.layout = work / "layout"
        repo_root = work / "repo"
        ca_deb, self.ca_version = _repack_ca_certificates(self.root, repo_root, self.new_ca)
        for spec in new:
            deb = build_deb(spec, repo_root / "pool/main" / spec.name)
            if spec.name == "libcopa1":
                _with_triggers(deb, "activate-noawait ldconfig\n")
        key = make_key(work / "key")
        write_indexes(repo_root, SUITE, ("main",), ("amd64",))
        self.repo = AptRepo(repo_root, SUITE, ("main",), ("amd64",), key, {"ca-certificates": ca_deb})
        write_release(self.repo, codename=SUITE)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return Setup(tmp_path_factory.mktemp("effects"))


@pytest.fixture(scope="module")
def server(setup: Setup) -> Iterator[RepoServer]:
    with RepoServer(setup.repo.root) as s:
        yield s


UPGRADED = ("ca-certificates", "libcopa1", "python3-copamod", "copa-shell", "copa-tool")


@pytest.fixture(scope="module")
def patched(setup: Setup, server: RepoServer) -> dict[str, object]:
    out = setup.work / "patched-layout"
    assert setup.repo.key is not None
    proc = subprocess.run([sys.executable, "-m", "copa", "patch", "-i", f"oci:{setup.layout}:{REF}", "--oci-dir",
                           str(out), "-t", "patched", "--json", "--repository", f"deb {server.url} {SUITE} main",
                           "--keyring", str(setup.repo.key.keyring)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    result["rootfs"] = debimage.unpack_layout(out, "patched", setup.work / "bundle")
    return result


@pytest.fixture(scope="module")
def oracle(setup: Setup, server: RepoServer) -> Path:
    """The real apt in a chroot copy of the same rootfs: real postinsts, real triggers."""
    root = debimage.copy_rootfs(setup.root, setup.work / "oracle")
    assert setup.repo.key is not None
    (root / "dev").mkdir(exist_ok=True)
    _run(["mknod", "-m", "666", str(root / "dev/null"), "c", "1", "3"])
    shutil.copy(setup.repo.key.keyring, root / "etc/apt/trusted.gpg.d/copa-effects.gpg")
    (root / "etc/apt/copa-effects.list").write_text(f"deb {server.url} {SUITE} main\n")
    opts = ["-o", "Dir::Etc::SourceList=/etc/apt/copa-effects.list", "-o", "Dir::Etc::SourceParts=/nonexistent",
            "-o", "Acquire::Languages=none"]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"}
    _run(["chroot", str(root), "apt-get", *opts, "update"], env=env)
    _run(["chroot", str(root), "apt-get", *opts, "install", "-y", "--only-upgrade", *UPGRADED], env=env)
    for extra in ("dev/null", "etc/apt/trusted.gpg.d/copa-effects.gpg", "etc/apt/copa-effects.list"):
        (root / extra).unlink()
    return root


def _snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if (rel.startswith(EXCLUDED) or f"{rel}/".startswith(EXCLUDED)) and not rel.startswith(ALTERNATIVES):
                continue
            st = full.lstat()
            if full.is_symlink():
                out[rel] = ("symlink", os.readlink(full), st.st_uid, st.st_gid)
            elif full.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777, st.st_uid, st.st_gid)
            else:
                out[rel] = ("file", st.st_mode & 0o7777, st.st_uid, st.st_gid,
                            hashlib.sha256(full.read_bytes()).hexdigest())
    return out


def test_versions(patched: dict[str, object], setup: Setup) -> None:
    updates = {u["name"]: u for u in patched["updates"]}  # type: ignore[attr-defined]
    assert set(updates) == set(UPGRADED)
    assert updates["ca-certificates"]["to"] == setup.ca_version
    note = updates["ca-certificates"].get("scripts", "")
    assert "update-ca-certificates" in note, updates
    tool = updates["copa-tool"].get("scripts", "")
    assert "adduser --system copa-tool" in tool and "update-alternatives --install copa-tool" in tool, tool
    assert "not reproduced" not in tool, tool


def test_changes_equal_apts(patched: dict[str, object], oracle: Path, setup: Setup) -> None:
    base, mine, theirs = _snapshot(setup.root), _snapshot(Path(str(patched["rootfs"]))), _snapshot(oracle)
    apt_changed = {p for p in set(base) | set(theirs) if base.get(p) != theirs.get(p)}
    copa_changed = {p for p in set(base) | set(mine) if base.get(p) != mine.get(p)}
    # The scripts did change things: the check can fail.
    assert "etc/ssl/certs/ca-certificates.crt" in apt_changed and "etc/ld.so.cache" in apt_changed
    assert f"{MULTIARCH}/libcopa.so.1" in apt_changed and "etc/shells" in apt_changed
    assert "etc/ca-certificates.conf" in apt_changed
    assert {f"{ALTERNATIVES}/copa-tool", "etc/passwd", "etc/shadow", "etc/group", "etc/gshadow", "var/lib/copa-tool",
            "usr/bin/copa-tool", "etc/alternatives/copa-tool", "etc/alternatives/copa-tool.1.gz"} <= apt_changed
    diffs = [f"{p}: copa={mine.get(p)} apt={theirs.get(p)}" for p in sorted(apt_changed | copa_changed)
             if not PYC.search(p) and mine.get(p) != theirs.get(p)]
    assert not diffs, "copa's image differs from apt's:\n" + "\n".join(diffs)
    stale = "usr/lib/python3/dist-packages/__pycache__/copamod.cpython-311.pyc"
    assert stale in base and stale in theirs and stale not in mine  # the accepted difference, as stated


def _in_root(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def test_patched_image_trusts_the_new_root_only(patched: dict[str, object], setup: Setup) -> None:
    root = Path(str(patched["rootfs"]))
    shutil.copy(setup.new_ca, root / "tmp/new.pem")
    shutil.copy(setup.root / "usr/share/ca-certificates" / REMOVED_CERT, root / "tmp/removed.pem")
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    new = _in_root(root, "openssl", "verify", "-CAfile", bundle, "/tmp/new.pem")
    assert new.returncode == 0, new.stdout + new.stderr
    gone = _in_root(root, "openssl", "verify", "-CAfile", bundle, "/tmp/removed.pem")
    assert gone.returncode != 0
    by_dir = _in_root(root, "openssl", "verify", "-CApath", "/etc/ssl/certs", "/tmp/new.pem")
    assert by_dir.returncode == 0, by_dir.stdout + by_dir.stderr  # the hash link is there
    # Before the patch, the image trusted the removed root and not the new one: the checks can fail.
    old = _in_root(setup.root, "openssl", "verify", "-CAfile", bundle, "/usr/share/ca-certificates/" + REMOVED_CERT)
    assert old.returncode == 0


def test_patched_image_finds_the_new_library(patched: dict[str, object], setup: Setup) -> None:
    listing = _in_root(Path(str(patched["rootfs"])), "ldconfig", "-p")
    assert listing.returncode == 0, listing.stderr
    assert "libcopa.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libcopa.so.1" in listing.stdout
    assert "libcopa" not in _in_root(setup.root, "ldconfig", "-p").stdout
