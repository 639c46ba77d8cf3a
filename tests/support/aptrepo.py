"""A hermetic, signed APT repository for tests, and a small HTTP server for it.

    key = make_key(tmp / "key")
    repo = build_repo(tmp / "repo", [DebSpec("hello", "1.0-1", files={"usr/bin/hello": "#!/bin/sh\n"})], key=key)
    with RepoServer(repo.root) as server:
        source = repo.source(server.url)          # an AptSource trusting repo.key
        line = repo.line(server.url)              # "deb [signed-by=...] http://127.0.0.1:PORT stable main"

.debs are built by the real `dpkg-deb --build --root-owner-group`, Packages by the real `dpkg-scanpackages`; the
Release file and its signatures (InRelease, Release.gpg) are written here with pysequoia.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import lzma
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import partial
from pathlib import Path
from typing import Any

import pysequoia

from copa.pkg.apt.sources import AptSource


@dataclass(frozen=True)
class DebSpec:
    name: str
    version: str
    arch: str = "amd64"
    files: Mapping[str, bytes | str] = field(default_factory=dict)  # path inside the package -> content
    control: Mapping[str, str] = field(default_factory=dict)  # extra fields: Depends, Source, Multi-Arch...
    conffiles: tuple[str, ...] = ()  # absolute paths, e.g. "/etc/hello.conf" (must also be in files)
    scripts: Mapping[str, str] = field(default_factory=dict)  # preinst/postinst/prerm/postrm -> shell text
    component: str = "main"

    @property
    def deb_name(self) -> str:
        version = self.version.split(":", 1)[-1]  # the epoch is not part of pool file names
        return f"{self.name}_{version}_{self.arch}.deb"


def build_deb(spec: DebSpec, out_dir: Path) -> Path:
    """Build `spec` with dpkg-deb into out_dir; files are owned by root:root."""
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / f".build-{spec.deb_name}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "DEBIAN").mkdir(parents=True)
    for rel, content in spec.files.items():
        target = work / rel.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode() if isinstance(content, str) else content)
        executable = "/bin/" in f"/{rel}" or "/sbin/" in f"/{rel}"
        target.chmod(0o755 if executable else 0o644)
    control = {
        "Package": spec.name,
        "Version": spec.version,
        "Architecture": spec.arch,
        "Maintainer": "copa tests <tests@example.invalid>",
        "Installed-Size": "1",
        **spec.control,
    }
    control.setdefault("Description", f"test package {spec.name}\n synthetic package built by the copa test suite")
    (work / "DEBIAN" / "control").write_text("".join(f"{k}: {v}\n" for k, v in control.items()))
    if spec.conffiles:
        (work / "DEBIAN" / "conffiles").write_text("".join(f"{c}\n" for c in spec.conffiles))
    for name, text in spec.scripts.items():
        script = work / "DEBIAN" / name
        script.write_text(text)
        script.chmod(0o755)
    out = out_dir / spec.deb_name
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(work), str(out)],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(work)
    return out


@dataclass(frozen=True)
class SigningKey:
    tsk: Any  # pysequoia.Tsk
    keyring: Path  # binary public keyring (.gpg)
    armored: Path  # ASCII-armored public key (.asc)
    fingerprint: str

    def sign_clear(self, data: bytes) -> bytes:
        return bytes(pysequoia.sign(self.tsk.signer(), data, mode=pysequoia.SignatureMode.CLEAR))

    def sign_detached(self, data: bytes) -> bytes:
        return bytes(pysequoia.sign(self.tsk.signer(), data, mode=pysequoia.SignatureMode.DETACHED))


def make_key(directory: Path, uid: str = "copa test repository <repo@example.invalid>") -> SigningKey:
    """A throwaway signing key; its public half is written as a binary keyring and an armored file."""
    directory.mkdir(parents=True, exist_ok=True)
    tsk = pysequoia.Tsk.generate(uid)
    cert = tsk.extract_certificate()
    keyring = directory / "repo-keyring.gpg"
    armored = directory / "repo-key.asc"
    keyring.write_bytes(bytes(cert))
    armored.write_text(str(cert))
    return SigningKey(tsk, keyring, armored, str(cert.fingerprint))


@dataclass(frozen=True)
class AptRepo:
    root: Path
    suite: str
    components: tuple[str, ...]
    architectures: tuple[str, ...]
    key: SigningKey | None
    debs: Mapping[str, Path]  # "name_version_arch" -> .deb path inside root

    @property
    def dist(self) -> Path:
        return self.root / "dists" / self.suite

    @property
    def file_url(self) -> str:
        return self.root.as_uri()

    def source(self, url: str | None = None, **overrides: Any) -> AptSource:
        fields: dict[str, Any] = {
            "uri": (url or self.file_url).rstrip("/"),
            "suite": self.suite,
            "components": self.components,
            "signed_by": (str(self.key.keyring),) if self.key else (),
            "origin": "tests/support/aptrepo.py",
        }
        fields.update(overrides)
        return AptSource(**fields)

    def line(self, url: str | None = None) -> str:
        opt = f"[signed-by={self.key.keyring}] " if self.key else "[trusted=yes] "
        return f"deb {opt}{(url or self.file_url).rstrip('/')} {self.suite} {' '.join(self.components)}"

    def deb(self, name: str, version: str, arch: str = "amd64") -> Path:
        return self.debs[f"{name}_{version}_{arch}"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_repo(
    dest: Path,
    debs: Sequence[DebSpec],
    *,
    key: SigningKey | None = None,
    suite: str = "stable",
    codename: str | None = None,
    architectures: Sequence[str] = ("amd64",),
    inrelease: bool = True,
    detached: bool = False,
    by_hash: bool = False,
    compress: Sequence[str] = ("xz", "gz"),
    date: datetime | None = None,
    valid_until: datetime | None = None,
    release_fields: Mapping[str, str] | None = None,
) -> AptRepo:
    """Build debs into dest/pool, write Packages indexes, a Release, and sign it with `key` (unless None).

    `release_fields` adds Release fields (e.g. {"NotAutomatic": "yes", "ButAutomaticUpgrades": "yes"}) or replaces
    the defaults (Origin, Label...)."""
    dest.mkdir(parents=True, exist_ok=True)
    components = tuple(sorted({d.component for d in debs})) or ("main",)
    built: dict[str, Path] = {}
    for spec in debs:
        path = build_deb(spec, dest / "pool" / spec.component / spec.name)
        built[f"{spec.name}_{spec.version}_{spec.arch}"] = path
    write_indexes(dest, suite, components, architectures, compress=compress, by_hash=by_hash)
    repo = AptRepo(dest, suite, components, tuple(architectures), key, built)
    write_release(
        repo,
        codename=codename or suite,
        inrelease=inrelease,
        detached=detached,
        by_hash=by_hash,
        date=date,
        valid_until=valid_until,
        fields=release_fields,
    )
    return repo


def write_indexes(
    root: Path,
    suite: str,
    components: Sequence[str],
    architectures: Sequence[str],
    *,
    compress: Sequence[str] = ("xz", "gz"),
    by_hash: bool = False,
) -> None:
    for comp in components:
        for arch in architectures:
            directory = root / "dists" / suite / comp / f"binary-{arch}"
            directory.mkdir(parents=True, exist_ok=True)
            pool = f"pool/{comp}"
            if (root / pool).is_dir():
                scanned = subprocess.run(
                    ["dpkg-scanpackages", "-m", "-a", arch, pool, "/dev/null"],
                    cwd=root,
                    check=True,
                    capture_output=True,
                ).stdout
            else:
                scanned = b""
            (directory / "Packages").write_bytes(scanned)
            if "xz" in compress:
                (directory / "Packages.xz").write_bytes(lzma.compress(scanned))
            if "gz" in compress:
                (directory / "Packages.gz").write_bytes(gzip.compress(scanned, mtime=0))
            if by_hash:
                hashed = directory / "by-hash" / "SHA256"
                hashed.mkdir(parents=True, exist_ok=True)
                for f in directory.iterdir():
                    if f.is_file():
                        shutil.copyfile(f, hashed / _sha256(f))


def write_release(
    repo: AptRepo,
    *,
    codename: str | None = None,
    inrelease: bool = True,
    detached: bool = False,
    by_hash: bool = False,
    date: datetime | None = None,
    valid_until: datetime | None = None,
    fields: Mapping[str, str] | None = None,
) -> bytes:
    """(Re)write dists/SUITE/Release over the current index files and sign it; returns the Release bytes.
    `fields` replace the default header fields of the same name, or are added after them."""
    dist = repo.dist
    for stale in ("Release", "InRelease", "Release.gpg"):
        (dist / stale).unlink(missing_ok=True)
    entries = []
    for f in sorted(dist.rglob("*")):
        if f.is_file() and "by-hash" not in f.parts:
            entries.append(f" {_sha256(f)} {f.stat().st_size:>16} {f.relative_to(dist).as_posix()}")
    header = {
        "Origin": "copa-tests",
        "Label": "copa-tests",
        "Suite": repo.suite,
        "Codename": codename or repo.suite,
        "Date": format_datetime(date or datetime.now(UTC), usegmt=True),
    }
    if valid_until is not None:
        header["Valid-Until"] = format_datetime(valid_until, usegmt=True)
    header |= {
        "Architectures": " ".join(repo.architectures),
        "Components": " ".join(repo.components),
        "Description": "hermetic repository for copa tests",
    }
    if by_hash:
        header["Acquire-By-Hash"] = "yes"
    header |= fields or {}
    lines = [f"{k}: {v}" for k, v in header.items()]
    lines.append("SHA256:")
    release = ("\n".join(lines + entries) + "\n").encode()
    (dist / "Release").write_bytes(release)
    if repo.key is not None:
        if inrelease:
            (dist / "InRelease").write_bytes(repo.key.sign_clear(release))
        if detached:
            (dist / "Release.gpg").write_bytes(repo.key.sign_detached(release))
    return release


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean; requests are recorded in server.requests instead

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        with self.server.lock:
            self.server.requests.append(path)
            queue = self.server.failures.get(path)
            status = queue.pop(0) if queue else None
        if status is not None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    requests: list[str]
    failures: dict[str, list[int]]
    lock: threading.Lock


class RepoServer:
    """Serves a directory on 127.0.0.1. `failures[path] = [503, 503]` makes the next requests fail (fault injection);
    `requests` lists every path asked for, so tests can assert what did (or did not) touch the network."""

    def __init__(self, root: Path) -> None:
        handler = partial(_Handler, directory=str(root))
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.requests = []
        self._server.failures = {}
        self._server.lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="aptrepo-http", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def requests(self) -> list[str]:
        return self._server.requests

    @property
    def failures(self) -> dict[str, list[int]]:
        return self._server.failures

    def __enter__(self) -> RepoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def copy_repo(repo: AptRepo, dest: Path) -> AptRepo:
    """A private copy of a built repository (cheaper than rebuilding it), e.g. for a test that tampers with it."""
    shutil.copytree(repo.root, dest, symlinks=True)
    debs = {k: dest / p.relative_to(repo.root) for k, p in repo.debs.items()}
    return AptRepo(dest, repo.suite, repo.components, repo.architectures, repo.key, debs)
