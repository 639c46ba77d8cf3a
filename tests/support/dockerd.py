"""A real Docker engine (Debian's docker.io `dockerd`) started by the tests in a private directory.

    with Dockerd(tmp / "docker") as engine:       # root needed, as for any dockerd
        engine.host                               # "unix:///.../docker.sock": DOCKER_HOST for copa
        engine.get("/images/app:1.0/json")        # the Engine API, parsed, as an oracle

Why these settings:
- `--data-root`/`--exec-root`/`--pidfile` in the private directory, `-H unix://` a socket there: nothing of the
  machine's /var/lib/docker or /var/run/docker.sock is touched, and the whole engine is one directory to delete.
- `--storage-driver vfs`: no overlay module needed; the images loaded by the tests are small.
- `--iptables=false --ip6tables=false --bridge=none`: the tests load images and never run containers, and a
  sandbox may have no netfilter; without them dockerd refuses to start there.
- The engine starts its own containerd under the exec root and stops it when it stops.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

from tests.support.registry import require_tool

START_TIMEOUT = 60.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=60)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._path))
        self.sock = sock


class Dockerd:
    def __init__(self, root: Path) -> None:
        self.binary = require_tool("dockerd", "docker.io")
        self.root = root
        self.socket = root / "docker.sock"
        self.log = root / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def __enter__(self) -> Dockerd:
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [
            self.binary, "--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=vfs",
            f"--data-root={self.root / 'data'}", f"--exec-root={self.root / 'exec'}",
            f"--pidfile={self.root / 'docker.pid'}", f"-H=unix://{self.socket}",
        ]  # fmt: skip
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, "TMPDIR": str(self.root)})
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.close()
                raise AssertionError(f"dockerd exited with {self.proc.returncode}: {self._log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.request("GET", "/_ping")[0] == 200:
                    return self
            time.sleep(0.2)
        self.close()
        raise AssertionError(f"dockerd did not answer within {START_TIMEOUT} s: {self._log_tail()}")

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-5:])
        return "(no log)"

    def request(self, method: str, path: str) -> tuple[int, bytes]:
        conn = _UnixConnection(self.socket)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def get(self, path: str) -> Any:
        status, body = self.request("GET", path)
        assert status == 200, f"GET {path}: HTTP {status} {body[:300]!r}"
        return json.loads(body)

    def image(self, name: str) -> dict[str, Any]:
        doc = self.get(f"/images/{quote(name, safe='/:@')}/json")
        assert isinstance(doc, dict)
        return doc

    def tags(self) -> set[str]:
        return {t for image in self.get("/images/json") for t in image.get("RepoTags") or () if t != "<none>:<none>"}

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # dockerd stops its containerd on SIGTERM
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)
