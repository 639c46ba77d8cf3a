"""Stale Python bytecode: Debian packages ship no .pyc (py3compile writes them in the postinst), so a changed
module's old `__pycache__/<stem>.cpython-*.pyc` would stay beside the new source. Python checks a .pyc's recorded
source mtime and size and recompiles on a mismatch, but a .pyc whose recorded values happen to match (mtimes
clamped by SOURCE_DATE_EPOCH, equal sizes) would be run in place of the new code: the old ones are deleted rather
than recompiled, and Python writes fresh ones on import (where it can)."""

from __future__ import annotations

import posixpath
import re

from copa.oci.layer import Entry, Kind
from copa.pkg.effects.merged import Merged

_PYC = re.compile(r"^(?P<stem>.+)\.(cpython|pypy)[0-9a-z_-]*(\.opt-[12])?\.pyc$")


def stale(merged: Merged) -> tuple[list[Entry], list[str]]:
    """Whiteouts for the cached bytecode of every .py the layer writes or deletes; the modules' paths."""
    # Grouped by directory: one listing of each __pycache__ serves all of its modules (python3.11's stdlib
    # directory holds hundreds of them, and a listing per module made this quadratic).
    stems: dict[str, set[str]] = {}
    for path in merged.layer_paths():
        if path.endswith(".py"):
            directory, name = posixpath.split(path)
            stems.setdefault(directory, set()).add(name[:-3])
    found: list[tuple[str, str]] = []  # (module path, its stale .pyc)
    for directory, names in stems.items():
        cache_dir = posixpath.join(directory, "__pycache__")
        if merged.kind(cache_dir) != "dir":
            continue
        for pyc in merged.listdir(cache_dir):
            m = _PYC.match(pyc)
            if m is None or m.group("stem") not in names:
                continue
            full = posixpath.join(cache_dir, pyc)
            entry = merged.layer.get(full)
            if entry is not None and entry.kind is not Kind.WHITEOUT:
                continue  # the package ships its own bytecode (apk packages do): it is current
            if entry is None:
                found.append((posixpath.join(directory, m.group("stem") + ".py"), full))
    found.sort()  # the order of the layer's own paths, as a walk over them gives
    return [Entry.whiteout(full) for _, full in found], sorted({module for module, _ in found})
