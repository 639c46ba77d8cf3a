"""A content-addressed file cache: files are stored under their sha256 and reused across runs.

A file only ever appears under its final name after its size and digest were verified (write to a temporary
name in the same directory, then rename), so a present file is trusted on a size check alone.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from copa.errors import IntegrityError, LocalIOError

_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    env = os.environ.get("COPA_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "copa"


class Cache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else default_cache_dir()

    def path_for(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def lookup(self, sha256: str, size: int | None) -> Path | None:
        path = self.path_for(sha256)
        try:
            st = path.stat()
        except OSError:
            return None
        if size is not None and st.st_size != size:
            return None
        return path

    def store_stream(self, stream: BinaryIO, sha256: str, size: int | None, what: str) -> Path:
        """Copy `stream` into the cache, verifying size and sha256 before it becomes visible."""
        final = self.path_for(sha256)
        tmp = self._tmp_in(final.parent)
        try:
            hasher = hashlib.sha256()
            count = 0
            with os.fdopen(tmp[0], "wb") as out:
                while True:
                    chunk = stream.read(_CHUNK)
                    if not chunk:
                        break
                    count += len(chunk)
                    if size is not None and count > size:
                        raise IntegrityError(f"{what}: more than the expected {size} bytes; the source is corrupt")
                    hasher.update(chunk)
                    out.write(chunk)
            if size is not None and count != size:
                raise IntegrityError(f"{what}: got {count} bytes, expected {size}; the download is truncated")
            actual = hasher.hexdigest()
            if actual != sha256:
                raise IntegrityError(
                    f"{what}: sha256 mismatch, expected {sha256} but got {actual}; the repository or mirror "
                    "serves corrupt or tampered content"
                )
            os.replace(tmp[1], final)
        except BaseException:
            Path(tmp[1]).unlink(missing_ok=True)
            raise
        return final

    def store_named(self, name: str, data: bytes) -> Path:
        """Store a small derived artefact under a caller-chosen name."""
        return self.write_named(name, lambda out: out.write(data))

    def write_named(self, name: str, write: Callable[[BinaryIO], object]) -> Path:
        """Store a derived artefact (e.g. a parsed index) written by `write`, all or nothing."""
        final = self.root / "derived" / name
        fd, tmp = self._tmp_in(final.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return final

    def named(self, name: str) -> Path:
        return self.root / "derived" / name

    def _tmp_in(self, directory: Path) -> tuple[int, str]:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            return tempfile.mkstemp(dir=directory, prefix=".tmp-")
        except OSError as e:
            raise LocalIOError(
                f"cannot write to cache directory {directory}: {e.strerror}; set COPA_CACHE_DIR to a writable path"
            ) from e
