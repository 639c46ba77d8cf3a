"""Read-only descriptors of spool files, shared while a layer is written.

A patch layer's file contents are slices of a few spool files (a package's unpacked data each): a Debian patch
reads thousands of them. Opening the spool file for each slice (open, fstat, isatty, seek, close) cost a quarter of
the layer write, most of it waiting to take the GIL back after each of those calls while the compressing threads
ran. Inside `shared_descriptors()`, a slice opened by `descriptor()` uses the one descriptor kept for its path,
read with pread (no position to share); all are closed when the `with` ends. Outside it, each slice has a
descriptor of its own. The spool files must not change meanwhile (they are written before the layer is).
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class _Shared:
    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()  # (a context copied into another thread shares this object)

    def get(self, path: Path) -> int:
        with self._lock:
            fd = self._fds.get(path)
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            return fd

    def close(self) -> None:
        with self._lock:
            fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            os.close(fd)


_current: contextvars.ContextVar[_Shared | None] = contextvars.ContextVar("copa_shared_descriptors", default=None)


@contextmanager
def shared_descriptors() -> Iterator[None]:
    """Slices opened in this context (this thread, and contexts copied from it) share one descriptor per file."""
    shared = _Shared()
    token = _current.set(shared)
    try:
        yield
    finally:
        _current.reset(token)
        shared.close()


def descriptor(path: Path) -> tuple[int, bool]:
    """A read-only descriptor of `path`, and whether the caller owns it (must close it): not when shared."""
    shared = _current.get()
    if shared is not None:
        return shared.get(path), False
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC), True
