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
    out: list[Entry] = []
    modules: list[str] = []
    for path in merged.layer_paths():
        if not path.endswith(".py"):
            continue
        directory, name = posixpath.split(path)
        stem = name[:-3]
        cache_dir = posixpath.join(directory, "__pycache__")
        if merged.kind(cache_dir) != "dir":
            continue
        for pyc in merged.listdir(cache_dir):
            m = _PYC.match(pyc)
            full = posixpath.join(cache_dir, pyc)
            if m is None or m.group("stem") != stem:
                continue
            entry = merged.layer.get(full)
            if entry is not None and entry.kind is not Kind.WHITEOUT:
                continue  # the package ships its own bytecode (apk packages do): it is current
            if entry is None:
                out.append(Entry.whiteout(full))
                modules.append(path)
    return out, sorted(set(modules))
