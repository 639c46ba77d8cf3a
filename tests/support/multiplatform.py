"""The multi-platform test image and the real tools that look at what copa made of it.

    layout, ref = multiplatform_layout()          # amd64, arm64, arm/v7, 386, a scratch ppc64le, 2 attestations
    push_index(layout, ref, registry.host, "app:1.0")
    root = unpack(registry.host, "app:1.0-patched-arm64", tmp / "arm64")   # umoci unpack of one platform's image
    installed(root)                                # dpkg-query --admindir (the host's dpkg reads a foreign db)
    apt_upgrade_plan(root, "arm64", tmp / "apt")   # what the host's apt upgrades in that root

Roots and layouts come from fixtures/build_foreign.py (cached under ~/.cache/copa-tests/); they are SHARED cache
entries: never write into them.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from copa.errors import CopaError
from tests.support import aptoracle
from tests.support import images as _images  # noqa: F401  (loads build_debian under the shared module name first)

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "fixtures" / "build_foreign.py"
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json"
)


class ToolError(CopaError):
    """skopeo, umoci or dpkg failed on a test image."""


def _load_builder() -> ModuleType:
    name = "copa_fixtures_build_foreign"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


builder = _load_builder()

MULTI_REF: str = builder.MULTI_REF
SCRATCH_FILE: str = builder.SCRATCH_FILE


@dataclass(frozen=True, slots=True)
class PlatformInfo:
    text: str  # linux/arm/v7
    architecture: str  # OCI: arm
    variant: str  # v7
    deb_arch: str  # armhf
    tag_suffix: str  # arm-v7, as Copacetic names per-platform tags
    file_machine: str  # what `file` says about its ELF binaries ("" for the scratch image)


AMD64 = PlatformInfo("linux/amd64", "amd64", "", "amd64", "amd64", "x86-64")
ARM64 = PlatformInfo("linux/arm64", "arm64", "", "arm64", "arm64", "ARM aarch64")
ARMHF = PlatformInfo("linux/arm/v7", "arm", "v7", "armhf", "arm-v7", "ARM, EABI5")
I386 = PlatformInfo("linux/386", "386", "", "i386", "386", "Intel 80386")
SCRATCH = PlatformInfo("linux/ppc64le", "ppc64le", "", "ppc64el", "ppc64le", "")
DEBIAN_PLATFORMS = (AMD64, ARM64, ARMHF, I386)  # the ones copa can patch
FOREIGN_PLATFORMS = (ARM64, ARMHF, I386)
ALL_PLATFORMS = (*DEBIAN_PLATFORMS, SCRATCH)
ATTESTED = (AMD64, ARM64)  # platforms with an unknown/unknown attestation manifest in the index


@functools.cache
def multiplatform_layout() -> tuple[Path, str]:
    """(OCI layout dir, ref name) of the multi-platform index."""
    return Path(builder.multiplatform_layout()), MULTI_REF


@functools.cache
def multiplatform_oracle_layout() -> tuple[Path, str]:
    """(OCI layout dir, ref name) of the same index made of the images installed with bookworm-updates and
    -security: nothing in it has a newer version."""
    return Path(builder.multiplatform_layout(oracle=True)), MULTI_REF


@functools.cache
def foreign_rootfs(deb_arch: str) -> Path:
    """The foreign root (bookworm point release) the multi-platform image's `deb_arch` image was made from."""
    return Path(builder.rootfs(builder.FOREIGN[deb_arch]))


@functools.cache
def foreign_oracle_rootfs(deb_arch: str) -> Path:
    """The same package set installed with bookworm-updates and bookworm-security, built the same way: what a
    full upgrade of foreign_rootfs(deb_arch) must yield."""
    return Path(builder.rootfs(builder.FOREIGN[deb_arch], suites=builder.ORACLE_SUITES))


def with_variant(layout: Path, ref: str, architecture: str, variant: str, dest: Path) -> Path:
    """A copy of the index layout at `dest` whose `architecture` entry says `variant` (e.g. arm64 as v8, as Docker
    Hub's official images list it); only the index changes, the images stay the same."""
    shutil.copytree(layout, dest)
    top = json.loads((dest / "index.json").read_text())
    entry = next(m for m in top["manifests"] if m.get("annotations", {}).get(
        "org.opencontainers.image.ref.name") == ref)
    index = json.loads((dest / "blobs/sha256" / entry["digest"].removeprefix("sha256:")).read_bytes())
    for m in index["manifests"]:
        if m["platform"]["architecture"] == architecture:
            m["platform"]["variant"] = variant
    data = json.dumps(index).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (dest / "blobs/sha256" / digest.removeprefix("sha256:")).write_bytes(data)
    entry.update(digest=digest, size=len(data))
    (dest / "index.json").write_text(json.dumps(top))
    return dest


def run(*argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise ToolError(f"{' '.join(str(a) for a in argv)} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc


def push_index(layout: Path, ref: str, host: str, repo_tag: str) -> str:
    """skopeo copy --all of oci:layout:ref to host/repo_tag, digests preserved; returns the index digest."""
    with tempfile.TemporaryDirectory(prefix="copa-push-") as tmp:
        digest_file = Path(tmp) / "digest"
        run("skopeo", "copy", "--quiet", "--all", "--preserve-digests", "--dest-tls-verify=false",
            f"--digestfile={digest_file}", f"oci:{layout}:{ref}", f"docker://{host}/{repo_tag}")
        return digest_file.read_text().strip()


def raw_manifest(host: str, ref: str) -> dict[str, Any]:
    """The manifest or index at host/ref (REPO:TAG or REPO@DIGEST), as skopeo inspect --raw reads it."""
    doc = json.loads(run("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{host}/{ref}").stdout)
    assert isinstance(doc, dict)
    return doc


def manifest_digest(host: str, ref: str) -> str:
    """The digest of the manifest bytes the registry serves for host/ref."""
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{host}/{ref}"],
                         capture_output=True, check=True).stdout
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def inspect_platform(host: str, ref: str, platform: PlatformInfo, *, config: bool = False) -> dict[str, Any]:
    """skopeo inspect --override-arch/--override-variant: the image skopeo picks for `platform` from an index (its
    summary, whose Digest is the index's own, or with `config` its config document)."""
    argv = ["skopeo", "inspect", *(["--config"] if config else []), "--tls-verify=false", "--override-os=linux",
            f"--override-arch={platform.architecture}"]
    if platform.variant:
        argv.append(f"--override-variant={platform.variant}")
    doc = json.loads(run(*argv, f"docker://{host}/{ref}").stdout)
    assert isinstance(doc, dict)
    return doc


def manifest_status(host: str, repo: str, reference: str) -> int:
    """HTTP status of GET /v2/REPO/manifests/REFERENCE: 200, or 404 when the tag does not exist."""
    request = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{reference}",
                                     headers={"Accept": MANIFEST_TYPES})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def tags(host: str, repo: str) -> set[str]:
    """The repository's tags (an empty set for a repository nothing was pushed to)."""
    try:
        with urllib.request.urlopen(f"http://{host}/v2/{repo}/tags/list", timeout=10) as resp:
            doc = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return set()
        raise
    return set(doc.get("tags") or [])


def unpack(host: str, ref: str, dest: Path) -> Path:
    """Copy one image (not an index) from the registry with skopeo and `umoci unpack` it; returns its rootfs."""
    dest.mkdir(parents=True)
    run("skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{host}/{ref}", f"oci:{dest / 'oci'}:img")
    run("umoci", "unpack", f"--image={dest / 'oci'}:img", dest / "bundle")
    shutil.rmtree(dest / "oci")
    return dest / "bundle/rootfs"


def installed(root: Path) -> dict[tuple[str, str], str]:
    """{(package, architecture): version} of the installed packages, read by the host's dpkg-query."""
    out = run("dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W",
              "-f=${Package}\t${Architecture}\t${Version}\t${db:Status-Abbrev}\n").stdout
    found: dict[tuple[str, str], str] = {}
    for line in out.splitlines():
        package, arch, version, status = line.split("\t")
        if status.strip() == "ii":
            found[(package, arch)] = version
    return found


def dpkg_audit(root: Path) -> str:
    """`dpkg --audit` on the root's database: empty when dpkg finds nothing wrong."""
    proc = run("dpkg", f"--admindir={root}/var/lib/dpkg", "--audit", check=False)
    return (proc.stdout + proc.stderr).strip() + ("" if proc.returncode == 0 else f" (exit {proc.returncode})")


def file_type(path: Path) -> str:
    """What file(1) says about `path` (not following a symlink: pass the real file)."""
    return run("file", "-b", path).stdout.strip()


_INST = re.compile(r"^Inst (\S+) (?:\[\S+\] )?\((\S+) [^\[]*\[([^\]]+)\]\)", re.M)


def apt_upgrade_plan(root: Path, deb_arch: str, state: Path) -> frozenset[tuple[str, str, str]]:
    """(package, version, architecture) of every package the host's apt would upgrade in `root`, reading the
    image's own deb822 sources (bookworm, -updates, -security), for APT::Architecture=deb_arch: `apt-get -s
    upgrade` with apt's state private to `state`."""
    state.mkdir(parents=True, exist_ok=True)
    (state / "sources.list.d").mkdir(exist_ok=True)
    for source in (root / "etc/apt/sources.list.d").glob("*.sources"):
        shutil.copyfile(source, state / "sources.list.d" / source.name)
    empty = state / "empty.list"
    empty.write_text("")
    for argv in (("apt-get", "-q", "update"), ("apt-get", "-s", "upgrade")):
        proc = aptoracle.apt(state, root, None, *argv, image_conf=False, architectures=(deb_arch,), sources_list=empty)
    return frozenset((m[1].split(":")[0], m[2], m[3]) for m in _INST.finditer(proc.stdout))


def dpkg_db_files(root: Path) -> dict[str, bytes]:
    """The status file's paragraphs by package (key `status:<pkg>`) and every info file by name."""
    out: dict[str, bytes] = {}
    for para in (root / "var/lib/dpkg/status").read_text().split("\n\n"):
        if para.strip():
            name = para.split("\n", 1)[0].removeprefix("Package: ")
            arch = re.search(r"^Architecture: (\S+)", para, re.M)
            out[f"status:{name}:{arch[1] if arch else ''}"] = para.strip("\n").encode()
    for path in sorted((root / "var/lib/dpkg/info").iterdir()):
        out[f"info/{path.name}"] = path.read_bytes()
    return out


def tree_differences(expected: Path, actual: Path, ignore: frozenset[str] = frozenset()) -> list[str]:
    """Every path (relative, minus `ignore`) whose type, mode, owner, content or link target differs between the
    two trees, or that only one has. Modification times are not compared."""
    def entries(root: Path) -> dict[str, Path]:
        found = {str(p.relative_to(root)): p for p in root.rglob("*")}
        return {k: v for k, v in found.items() if k not in ignore}

    want, got = entries(expected), entries(actual)
    out = [f"only in {expected}: {k}" for k in sorted(want.keys() - got.keys())]
    out += [f"only in {actual}: {k}" for k in sorted(got.keys() - want.keys())]
    for key in sorted(want.keys() & got.keys()):
        a, b = want[key].lstat(), got[key].lstat()
        if (a.st_mode, a.st_uid, a.st_gid) != (b.st_mode, b.st_uid, b.st_gid):
            out.append(f"{key}: mode/owner {a.st_mode:o} {a.st_uid}:{a.st_gid} != {b.st_mode:o} {b.st_uid}:{b.st_gid}")
        elif want[key].is_symlink():
            if os.readlink(want[key]) != os.readlink(got[key]):
                out.append(f"{key}: link target")
        elif want[key].is_file() and want[key].read_bytes() != got[key].read_bytes():
            out.append(f"{key}: content")
    return out
