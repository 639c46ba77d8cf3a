"""A private podman image store for tests: copa's `-l podman` and the checks both use it through the environment.

    store = PodmanStore(tmp / "podman")          # nothing shared with the machine's own containers storage
    load(..., env=store.env)                     # or subprocess.run(copa ..., env=store.env)
    store.inspect("localhost/app:1.0")           # `podman image inspect`, parsed
    with store.service() as host: ...            # `podman system service`: the Docker Engine API on this store

Why these settings:
- CONTAINERS_STORAGE_CONF (graphroot, runroot, driver vfs): podman reads it for every command, so the copa under
  test, which runs plain `podman load`, lands in this store without knowing about it. vfs needs no overlay module.
- CONTAINERS_CONF: libpod's own state (tmp_dir, static_dir, volume_path) also under the store, no events journal
  (events_logger none) and no systemd (cgroup_manager cgroupfs), so nothing is written outside `root`.
- TMPDIR inside the store: podman stages archives there (/var/tmp by default).
- The machine's /etc/containers/policy.json, as a user's `podman load` would use (c/image checks it on every copy,
  local archives included); golang-github-containers-common, a podman dependency, installs a permissive one.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.dockerd import answers
from tests.support.registry import free_port, require_tool


class PodmanStore:
    """A podman store under `root` (created; `close` deletes it)."""

    def __init__(self, root: Path) -> None:
        self.binary = require_tool("podman", "podman")
        self.root = root
        for d in ("storage", "run", "tmp", "libpod", "volumes", "libpod-tmp"):
            (root / d).mkdir(parents=True, exist_ok=True)
        storage_conf = root / "storage.conf"
        storage_conf.write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{root / "storage"}"\nrunroot = "{root / "run"}"\n'
        )
        containers_conf = root / "containers.conf"
        containers_conf.write_text(
            "[engine]\n"
            'events_logger = "none"\n'
            'cgroup_manager = "cgroupfs"\n'
            f'tmp_dir = "{root / "libpod-tmp"}"\n'
            f'static_dir = "{root / "libpod"}"\n'
            f'volume_path = "{root / "volumes"}"\n'
        )
        self.env: dict[str, str] = {
            **os.environ,
            "CONTAINERS_STORAGE_CONF": str(storage_conf),
            "CONTAINERS_CONF": str(containers_conf),
            "TMPDIR": str(root / "tmp"),
        }

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([self.binary, *args], capture_output=True, text=True, env=self.env,
                              stdin=subprocess.DEVNULL, check=False, timeout=600)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def inspect(self, name: str) -> dict[str, Any]:
        docs = json.loads(self.run("image", "inspect", name).stdout)
        assert isinstance(docs, list) and len(docs) == 1, docs
        doc = docs[0]
        assert isinstance(doc, dict)
        return doc

    def names(self) -> set[str]:
        """Every name in the store (`podman images`)."""
        out = self.run("images", "--format", "{{.Repository}}:{{.Tag}}").stdout
        return {line for line in out.splitlines() if line and "<none>" not in line}

    @contextlib.contextmanager
    def service(self, tcp: bool = False) -> Iterator[str]:
        """podman's Docker-compatible API on a unix socket in the store (or plain HTTP on a loopback port); yields
        its DOCKER_HOST."""
        sock = self.root / "podman.sock"
        host = f"tcp://127.0.0.1:{free_port()}" if tcp else f"unix://{sock}"
        log = (self.root / "service.log").open("wb")
        proc = subprocess.Popen([self.binary, "system", "service", "--time=0", host], env=self.env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while not (_tcp_answers(host) if tcp else answers(sock)):
                assert proc.poll() is None, f"podman system service exited with {proc.returncode}"
                assert time.monotonic() < deadline, "podman system service did not answer within 30 s"
                time.sleep(0.1)
            yield host
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()

    def close(self) -> None:
        # Images only: nothing is mounted (no container is ever created), so the tree can simply go.
        shutil.rmtree(self.root, ignore_errors=True)



def _tcp_answers(host: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", int(host.rpartition(":")[2]), timeout=5)
    try:
        conn.request("GET", "/_ping")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
