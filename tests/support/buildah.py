"""Run commands inside an image, with no daemon: buildah with vfs storage and chroot isolation.

    with Buildah(tmp / "buildah") as b:                       # a private store, removed on exit
        with b.from_layout(layout, "bookworm") as ctr:        # or b.from_registry("127.0.0.1:PORT/app:1.0")
            rc, out, err = ctr.run("dpkg", "--audit")
            ctr.rootfs                                        # the container's files on the host (writable)

Why these settings:
- `--storage-driver vfs` with a private `--root`/`--runroot`: no overlay module, no fuse, nothing shared with the
  machine's own containers storage, and the whole store is one directory to delete. vfs copies every layer per
  container (hundreds of MB for the Debian image), so containers are removed as soon as a test is done with them
  and the store when the session ends.
- `--isolation chroot`: needs no OCI runtime (runc/crun) and no user namespaces; it runs in the host's network
  namespace, so `apt-get update` inside reaches the same mirror the host's apt uses (the fixture images' sources
  name that mirror), and a registry or repository served on 127.0.0.1 by the test process.
- Our own permissive signature policy (`--signature-policy`): the test images are unsigned local layouts and
  registries, and a machine's /etc/containers/policy.json may be missing (buildah without containers-common) or
  stricter; the tests must not depend on it.
- TMPDIR inside the store: buildah stages pulled blobs in a temporary directory (/var/tmp by default).
- stdin is /dev/null: CI has no terminal, and nothing here may wait for input.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

import pytest

from copa.errors import CopaError

BUILDAH = "buildah"
ISOLATION = "chroot"
PERMISSIVE_POLICY = {"default": [{"type": "insecureAcceptAnything"}]}
SHELL = "/bin/sh"


class BuildahError(CopaError):
    """buildah itself failed (not a command run inside the container)."""


class NoShellError(CopaError):
    """The image has no /bin/sh (distroless, or a package update removed it): run absolute binaries instead."""


class Run(NamedTuple):
    rc: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.rc}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


def require_buildah() -> str:
    """Tests never skip for a missing tool: install it (scripts/setup does, this covers a bare machine)."""
    path = shutil.which(BUILDAH)
    if path is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "buildah"], check=True, capture_output=True,
                       stdin=subprocess.DEVNULL, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        path = shutil.which(BUILDAH)
    assert path is not None, "buildah missing even after apt-get install buildah"
    return path


class Buildah:
    """A private buildah store under `root` (created; deleted by `close`)."""

    def __init__(self, root: Path) -> None:
        self.binary = require_buildah()
        self.root = root
        self.storage, self.runroot, self.tmp = root / "storage", root / "run", root / "tmp"
        self.links = root / "layouts"
        for d in (self.storage, self.runroot, self.tmp, self.links):
            d.mkdir(parents=True, exist_ok=True)
        self.policy = root / "policy.json"
        self.policy.write_text(json.dumps(PERMISSIVE_POLICY))
        self.containers: list[Container] = []

    # -- plumbing

    def argv(self, *args: str) -> list[str]:
        return [self.binary, "--storage-driver", "vfs", "--root", str(self.storage), "--runroot", str(self.runroot),
                *args]

    def call(self, *args: str, check: bool = True, timeout: float = 900, env: Mapping[str, str] | None = None,
             ) -> Run:
        environ = {**os.environ, "TMPDIR": str(self.tmp), "BUILDAH_ISOLATION": ISOLATION, **(env or {})}
        try:
            proc = subprocess.run(self.argv(*args), capture_output=True, text=True, errors="replace", env=environ,
                                  stdin=subprocess.DEVNULL, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise BuildahError(f"buildah {' '.join(args)} did not finish within {timeout} s") from exc
        result = Run(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-5:])
            raise BuildahError(f"buildah {' '.join(args)} exited {proc.returncode}: {tail}")
        return result

    # -- containers

    def from_image(self, transport_ref: str, *, tls_verify: bool = True) -> Container:
        """A working container from `transport_ref` (oci:DIR:REF, docker://HOST/REPO:TAG, ...)."""
        name = f"copa-test-{uuid.uuid4().hex[:12]}"
        self.call("from", "--quiet", "--name", name, "--signature-policy", str(self.policy),
                  f"--tls-verify={'true' if tls_verify else 'false'}", transport_ref)
        ctr = Container(self, name)
        self.containers.append(ctr)
        return ctr

    def from_layout(self, layout: Path, ref: str) -> Container:
        """A container from oci:LAYOUT:REF.

        buildah 1.28 names an image pulled from an OCI layout after the layout's path and fails when that path is
        not a valid image name (`~/.cache/...`: a component starting with a dot, or upper case letters), so the
        layout is reached through a symlink with a plain name inside the store.
        """
        link = self.links / f"l{uuid.uuid4().hex[:12]}"
        link.symlink_to(layout.resolve(), target_is_directory=True)
        return self.from_image(f"oci:{link}:{ref}")

    def from_registry(self, host_repo_tag: str) -> Container:
        """A container from a plain-HTTP test registry (`127.0.0.1:PORT/repo:tag`)."""
        return self.from_image(f"docker://{host_repo_tag}", tls_verify=False)

    def close(self) -> None:
        """Remove every container and image, then the whole store (vfs stores are big)."""
        try:
            for ctr in list(self.containers):
                ctr.remove()
            self.call("rm", "--all", check=False)
            self.call("rmi", "--all", "--force", check=False)
        finally:
            _no_mounts_under(self.root)
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Buildah:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class Container:
    def __init__(self, buildah: Buildah, name: str) -> None:
        self.buildah = buildah
        self.name = name
        self._rootfs: Path | None = None
        self.removed = False

    @property
    def rootfs(self) -> Path:
        """The container's root directory on the host (`buildah mount`; with vfs a plain, writable directory).
        Change files here to make a deliberately broken copy of an image: the image itself is not touched."""
        if self._rootfs is None:
            self._rootfs = Path(self.buildah.call("mount", self.name).stdout.strip())
        return self._rootfs

    def exists(self, path: str) -> bool:
        """Is there a file (or a symlink, even dangling) at the absolute `path` inside the container?"""
        return os.path.lexists(self.rootfs / path.lstrip("/"))

    @property
    def has_shell(self) -> bool:
        target = self.rootfs / SHELL.lstrip("/")
        # /bin/sh is usually a symlink (to dash, busybox, ...): resolve it inside the container, not on the host.
        for _ in range(10):
            if not target.is_symlink():
                return target.is_file()
            link = os.readlink(target)
            target = (self.rootfs / link.lstrip("/")) if link.startswith("/") else target.parent / link
        return False

    def run(self, *argv: str, env: Mapping[str, str] | None = None, workdir: str | None = None,
            timeout: float = 600) -> Run:
        """Run argv inside the container (executed directly, no shell); returns (rc, stdout, stderr).

        A non-zero exit of the command is returned, not raised. buildah's own failures raise BuildahError: 125, or
        a command that could not start (no such binary in the image: buildah then exits 1, like a failed check
        would, so a test could otherwise mistake a missing binary for a failing check).
        """
        opts = ["--isolation", ISOLATION]
        for key, value in (env or {}).items():
            opts += ["--env", f"{key}={value}"]
        if workdir:
            opts += ["--workingdir", workdir]
        result = self.buildah.call("run", *opts, self.name, "--", *argv, check=False, timeout=timeout)
        if result.rc == 125 or "process failed to start" in result.stderr:
            raise BuildahError(f"buildah could not run {argv!r} in {self.name}: {result.stderr.strip()}")
        return result

    def sh(self, script: str, *, env: Mapping[str, str] | None = None, timeout: float = 600) -> Run:
        """`/bin/sh -c script` inside the container; NoShellError if the image has no /bin/sh."""
        if not self.has_shell:
            raise NoShellError(f"{self.name} has no {SHELL}; run an absolute binary of the image instead")
        return self.run(SHELL, "-c", script, env=env, timeout=timeout)

    def remove(self) -> None:
        if self.removed:
            return
        self.buildah.call("rm", self.name, check=False)
        self.removed = True
        if self in self.buildah.containers:
            self.buildah.containers.remove(self)

    def __enter__(self) -> Container:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.remove()


def _no_mounts_under(path: Path) -> None:
    """Refuse to delete a tree something is still mounted in (a bind mount left by a killed `buildah run` would
    make rmtree delete through it into the host)."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mount_point = line.split()[4]
            if mount_point.startswith(prefix):
                raise BuildahError(f"{mount_point} is still mounted; unmount it, then remove {path}")


class _Shared:
    store: Buildah | None = None
    users = 0


@pytest.fixture(scope="session")
def buildah_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Buildah]:
    """One private store for the whole test session, in pytest's temporary directory, deleted at the end.

    Test modules import this fixture, so pytest makes one fixture per module; they share one store (counted
    references) so an image pulled by one module, or its base layer, is not pulled and copied again by the next.
    The directory name is short and lower-case: buildah derives image names from paths (see from_layout).
    """
    if _Shared.store is None:
        _Shared.store = Buildah(tmp_path_factory.mktemp("buildah"))
    store = _Shared.store
    _Shared.users += 1
    try:
        yield store
    finally:
        _Shared.users -= 1
        if _Shared.users == 0:
            _Shared.store = None
            store.close()
