"""/etc/shells: what `add-shell` (debianutils) does for a shell's postinst: each path, and its twin through the
real directory (bookworm's add-shell adds `/usr/bin/bash` beside `/bin/bash` on a merged-/usr system), appended
when no line equals it; mode and owner of the file kept. `remove-shell` is reproduced the same way."""

from __future__ import annotations

import posixpath

from copa.oci.layer import Entry
from copa.pkg.effects.merged import Merged

SHELLS = "etc/shells"


def _twin(merged: Merged, path: str) -> str:
    """`$(dirname "$(realpath -m "$i")")/$(basename "$i")`, inside the image root."""
    try:
        real = merged.resolve(path)
    except Exception:
        return path
    return "/" + posixpath.join(posixpath.dirname(real), posixpath.basename(path)).lstrip("/")


def add_shells(merged: Merged, paths: list[str], mtime: int | None) -> Entry | None:
    current = merged.read(SHELLS)
    if current is None:
        return None
    lines = current.decode("utf-8", "surrogateescape").split("\n")
    text = current.decode("utf-8", "surrogateescape")
    for path in paths:
        for j in dict.fromkeys((path, _twin(merged, path))):
            if j not in lines:
                text += j + "\n"
                lines.append(j)
    if text.encode("utf-8", "surrogateescape") == current:
        return None
    return Entry.file(SHELLS, text.encode("utf-8", "surrogateescape"), (merged.mode(SHELLS) or 0o644) & 0o7777,
                      mtime=mtime)


def remove_shells(merged: Merged, paths: list[str], mtime: int | None) -> Entry | None:
    current = merged.read(SHELLS)
    if current is None:
        return None
    drop = set(paths) | {_twin(merged, p) for p in paths}
    lines = current.decode("utf-8", "surrogateescape").split("\n")
    kept = [line for line in lines if line not in drop]
    if kept == lines:
        return None
    return Entry.file(SHELLS, "\n".join(kept).encode("utf-8", "surrogateescape"),
                      (merged.mode(SHELLS) or 0o644) & 0o7777, mtime=mtime)
