"""Real .rpm packages, signing keys, signatures and rpm databases for the RPM family's tests, made by the real
tools (rpmbuild, gpg, rpmsign, rpm --root), never by copa's own code. Repositories (createrepo_c, modules,
signed repomd.xml), serving them and dnf as their oracle are tests/support/rpmrepo.py's, built on this module.

    spec = RpmSpec("hello", "1.0", "1", files=(RpmFile("/usr/bin/hello", b"#!/bin/sh\\n", 0o755),))
    same = rpm_spec("hello", "1.0", "1", files={"/usr/bin/hello": "#!/bin/sh\\n"})  # the short form
    rpm = build_rpm(spec, tmp_path)                       # tmp_path/hello-1.0-1.noarch.rpm
    key = make_gpg_key(tmp_path / "gpg", "ed25519")
    sign_rpms([rpm], key)                                 # rpmsign --addsign, in place
    key.sign_detached(tmp_path / "file")                  # tmp_path/file.asc, armored
    init_root(tmp_path / "root", [rpm])                   # rpm --root ... -i: files and rpmdb.sqlite

Builds are reproducible: SOURCE_DATE_EPOCH fixes build time and clamps mtimes; no brp scripts, no build-id
links, no automatic dependencies, so the header holds only what the spec says.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BUILD_DATE = 1704067200  # 2024-01-01, as the other fixtures
PAYLOADS = {"gzip": "w9.gzdio", "xz": "w6.xzdio", "zstd": "w19.zstdio", "bzip2": "w9.bzdio", "none": "w0.ufdio"}


@dataclass(frozen=True, slots=True)
class RpmFile:
    """One %files entry. `path` is absolute as in the package; `kind` is file, dir, symlink or hardlink (then
    `target` is the path of the file it links to, which must come earlier); `attr` is a %files directive such as
    "%config(noreplace)", "%config", "%ghost", "%doc", "%license", "%dir" (implied for dirs) or ""."""

    path: str
    content: bytes = b""
    mode: int = 0o644
    kind: str = "file"
    target: str = ""
    attr: str = ""
    owner: str = "root"
    group: str = "root"
    caps: str = ""  # %caps(...) text, e.g. "cap_net_raw=ep"
    sparse_size: int = 0  # instead of `content`: a file of this many zero bytes, sparse on disk (huge files)


@dataclass(frozen=True, slots=True)
class RpmSpec:
    name: str
    version: str
    release: str = "1"
    epoch: int | None = None
    arch: str = "noarch"  # or x86_64 (built with --target)
    summary: str = "copa test package"
    files: tuple[RpmFile, ...] = ()
    requires: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    obsoletes: tuple[str, ...] = ()
    recommends: tuple[str, ...] = ()
    scripts: tuple[tuple[str, str], ...] = ()  # ("post", "echo hi"), ("preun", ...) ...
    payload: str = "gzip"  # a key of PAYLOADS, or rpm's own spelling ("w1.zstdio")
    license: str = "MIT"
    extra: tuple[str, ...] = field(default=())  # more preamble lines, verbatim

    @property
    def nevra(self) -> str:
        evr = f"{self.epoch}:{self.version}" if self.epoch is not None else self.version
        return f"{self.name}-{evr}-{self.release}.{self.arch}"

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-{self.release}.{self.arch}.rpm"


def rpm_spec(name: str, version: str, release: str = "1", *, epoch: int | None = None, arch: str = "noarch",
             lines: Sequence[str] = (), files: Mapping[str, bytes | str] | None = None) -> RpmSpec:
    """The short form the repository tests write: preamble lines verbatim ("Requires: x >= 1",
    "Requires(pre): y", "Suggests: z"...) and files as {path: content}, each a plain 0644 file."""
    return RpmSpec(name, version, release, epoch=epoch, arch=arch, extra=tuple(lines),
                   files=tuple(RpmFile(path, content.encode() if isinstance(content, str) else content)
                               for path, content in (files or {}).items()))


def run(args: Sequence[str], env: dict[str, str] | None = None) -> str:
    """The command's stdout; a failure raises with its output."""
    proc = subprocess.run(list(args), capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def _spec_text(spec: RpmSpec, src: Path) -> str:
    lines = [f"Name: {spec.name}", f"Version: {spec.version}", f"Release: {spec.release}",
             f"Summary: {spec.summary}", f"License: {spec.license}"]
    if spec.epoch is not None:
        lines.append(f"Epoch: {spec.epoch}")
    if spec.arch == "noarch":
        lines.append("BuildArch: noarch")
    lines.append("AutoReqProv: no")
    for tag, values in (("Requires", spec.requires), ("Provides", spec.provides), ("Conflicts", spec.conflicts),
                        ("Obsoletes", spec.obsoletes), ("Recommends", spec.recommends)):
        lines += [f"{tag}: {v}" for v in values]
    lines += list(spec.extra)
    lines += ["", "%description", spec.summary, "", "%install", f"cp -a {src}/. %{{buildroot}}/", ""]
    for which, body in spec.scripts:
        lines += [f"%{which}", body, ""]
    lines.append("%files")
    for f in spec.files:
        attr = f"%attr({f.mode & 0o7777:o},{f.owner},{f.group})" if f.kind != "symlink" else ""
        caps = f"%caps({f.caps}) " if f.caps else ""
        directive = f.attr or ("%dir" if f.kind == "dir" else "")
        lines.append(" ".join(x for x in (directive, attr, caps + f.path) if x))
    return "\n".join(lines) + "\n"


def _stage(spec: RpmSpec, src: Path) -> None:
    for f in spec.files:
        p = src / f.path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        if f.kind == "dir":
            p.mkdir(exist_ok=True)
        elif f.kind == "symlink":
            p.symlink_to(f.target)
        elif f.kind == "hardlink":
            os.link(src / f.target.lstrip("/"), p)
        elif f.sparse_size:
            with p.open("wb") as out:
                out.truncate(f.sparse_size)
        else:
            p.write_bytes(f.content)
        if f.kind != "symlink":
            os.utime(p, (BUILD_DATE, BUILD_DATE))


def build_rpm(spec: RpmSpec, out_dir: Path) -> Path:
    """rpmbuild -bb of a generated .spec in a private %_topdir; the package lands in out_dir/<filename>."""
    out_dir.mkdir(parents=True, exist_ok=True)
    top = out_dir / f".rpmbuild-{spec.name}-{spec.version}-{spec.release}"
    shutil.rmtree(top, ignore_errors=True)
    src = top / "SRC"
    src.mkdir(parents=True)
    _stage(spec, src)
    spec_path = top / f"{spec.name}.spec"
    spec_path.write_text(_spec_text(spec, src))
    defines = {
        "_topdir": str(top), "_binary_payload": PAYLOADS.get(spec.payload, spec.payload), "__os_install_post": "%{nil}",
        "_build_id_links": "none", "debug_package": "%{nil}", "_buildhost": "copa-test",
        "use_source_date_epoch_as_buildtime": "1", "clamp_mtime_to_source_date_epoch": "1",
        "source_date_epoch_from_changelog": "0", "_rpmfilename": "%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}.rpm",
        "_rpmdir": str(out_dir),
    }
    args = ["rpmbuild", "-bb", "--quiet"]
    for k, v in defines.items():
        args += ["--define", f"{k} {v}"]
    if spec.arch != "noarch":
        args += ["--target", spec.arch]
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(BUILD_DATE), "LC_ALL": "C"}
    run([*args, str(spec_path)], env)
    shutil.rmtree(top, ignore_errors=True)
    return out_dir / spec.filename


@dataclass(frozen=True, slots=True)
class GpgKey:
    home: Path  # GNUPGHOME holding the secret key
    uid: str
    fingerprint: str
    public: Path  # armored public key, as an RPM-GPG-KEY-* file

    def sign_detached(self, path: Path) -> Path:
        """gpg --detach-sign --armor: path.asc next to `path` (as repomd.xml.asc)."""
        run(["gpg", "--homedir", str(self.home), "--batch", "--yes", "--local-user", self.fingerprint,
              "--detach-sign", "--armor", str(path)])
        return path.with_name(path.name + ".asc")


def make_gpg_key(home: Path, algo: str = "ed25519", uid: str = "copa test <rpm@copa.test>",
                 gpg_args: Sequence[str] = ()) -> GpgKey:
    """A throwaway signing key without a passphrase (`algo` as gpg's --quick-gen-key takes it: ed25519,
    rsa3072...); the armored public key is written next to it. `gpg_args` go to the key generation, e.g.
    ("--cert-digest-algo", "SHA1") for a key self-signed the way old distribution keys are."""
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    run(["gpg", "--batch", "--passphrase", "", *gpg_args, "--quick-gen-key", uid, algo, "sign", "never"], env)
    listing = run(["gpg", "--batch", "--with-colons", "--list-secret-keys"], env)
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    public = home / "RPM-GPG-KEY-copa-test"
    public.write_text(run(["gpg", "--batch", "--armor", "--export", fingerprint], env))
    return GpgKey(home, uid, fingerprint, public)


def sign_rpms(paths: Iterable[Path], key: GpgKey) -> None:
    """rpmsign --addsign in place: an OpenPGP signature over the main header (RSAHEADER or, for RSA keys...,
    whichever tag rpm picks for the key's algorithm)."""
    args = ["rpmsign", "--addsign", "--define", f"_gpg_name {key.fingerprint}", "--define", f"_gpg_path {key.home}",
            "--define", "__gpg /usr/bin/gpg"]
    run([*args, *map(str, paths)], {**os.environ, "GNUPGHOME": str(key.home)})


def rpm_root_args(root: Path) -> list[str]:
    return ["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "--define", "_db_backend sqlite"]


def init_root(root: Path, rpms: Sequence[Path], *extra: str) -> None:
    """A root with an rpm database (var/lib/rpm/rpmdb.sqlite) and the packages' files really installed, their
    scripts not run (`extra`: more rpm flags)."""
    root.mkdir(parents=True, exist_ok=True)
    run([*rpm_root_args(root), "--initdb"])
    if rpms:
        run([*rpm_root_args(root), "-i", "--nodeps", "--noscripts", "--notriggers", *extra, *map(str, rpms)])



# rpm's own test suite packages (built by many rpm versions over the years: old gzip payloads without payload
# digests, a signed one and its key, a corrupted one, hard links, caps, IMA signatures, source packages), taken
# from Debian's source of rpm 4.18 at test time, never stored in this repository.
UPSTREAM_TARBALL = "pool/main/r/rpm/rpm_4.18.0+dfsg.orig.tar.xz"
UPSTREAM_SHA256 = "d0d9c58c036bc6308de6e195e898c10bf53eaef6f962c48b403e7cd262f4eb4d"


def upstream_test_data() -> Path:
    """rpm-4.18.0/tests/data (RPMS/, SRPMS/, keys/), downloaded once from the Debian archive into
    ~/.cache/copa-tests and checked by sha256."""
    import hashlib
    import tarfile

    import requests

    from tests.support.mirror import debian_mirror

    cache = Path(os.environ.get("COPA_TEST_CACHE", Path.home() / ".cache" / "copa-tests"))
    data = cache / "rpm-4.18.0-testdata"
    if (data / "RPMS").is_dir():
        return data
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / "rpm_4.18.0+dfsg.orig.tar.xz"
    if not tarball.is_file():
        with requests.get(f"{debian_mirror()}/{UPSTREAM_TARBALL}", timeout=120, stream=True) as response:
            response.raise_for_status()
            part = tarball.with_suffix(".part")
            with part.open("wb") as out:
                for chunk in response.iter_content(1 << 20):
                    out.write(chunk)
            part.rename(tarball)
    if hashlib.sha256(tarball.read_bytes()).hexdigest() != UPSTREAM_SHA256:
        tarball.unlink()
        raise RuntimeError(f"{tarball} has an unexpected sha256; deleted it, run again")
    staging = cache / "rpm-4.18.0-testdata.part"
    shutil.rmtree(staging, ignore_errors=True)
    prefix = "rpm-4.18.0/tests/data/"
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()
                   and m.name[len(prefix):].split("/")[0] in ("RPMS", "SRPMS", "keys")]
        for m in members:
            m.name = m.name[len(prefix):]
        tar.extractall(staging, members=members, filter="data")
    staging.rename(data)
    return data
