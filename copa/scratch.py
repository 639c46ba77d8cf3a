"""Scratch directories removed on a thread of their own.

A patch's staged package files are done with once its layer is written, but removing them is not free: unlinking
a 90 MB staging directory takes ~30 ms (the kernel frees its page cache), and on the main thread that came between
the layer and the push. Handed to `Removals`, the removal overlaps the push, which mostly waits on the registry;
whoever made the Removals waits for them at its end, so nothing outlives the run.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Removals:
    """Directories being removed in the background; `wait()` (or leaving the `with`) waits for every one."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []

    def remove(self, path: Path) -> None:
        # ignore_errors: what cannot go here (a read-only directory) is left to the caller's own cleanup, which
        # removes the parent directory this one is in.
        thread = threading.Thread(target=shutil.rmtree, args=(path,), kwargs={"ignore_errors": True},
                                  name="copa-cleanup")
        thread.start()
        self._threads.append(thread)

    def wait(self) -> None:
        while self._threads:
            self._threads.pop().join()

    def __enter__(self) -> Removals:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.wait()


@contextmanager
def scratch_dir(parent: Path, prefix: str, removals: Removals | None) -> Iterator[Path]:
    """A new directory under `parent`, removed when the `with` ends: by `removals` if given, else at once."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        if removals is not None:
            removals.remove(path)
        else:
            shutil.rmtree(path, ignore_errors=True)
