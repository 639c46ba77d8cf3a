"""The image as it will look with the patch layer on top: the merged view below, the layer's entries above.

Effects read the result of the upgrade (a certificate the package added, a library it removed) without writing
anything to disk, and add their own entries on top as they go, so later effects see earlier ones."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator

from copa.oci.layer import Entry, Kind, clean_path
from copa.oci.rootfs import View, resolve_path

_READ_LIMIT = 256 << 20  # a layer file larger than this is not read by an effect (no library or cert is)


def _ancestors(path: str) -> Iterator[str]:
    parent = posixpath.dirname(path)
    while parent:
        yield parent
        parent = posixpath.dirname(parent)


class Merged:
    def __init__(self, view: View, entries: Iterable[Entry]) -> None:
        self.view = view
        self.layer: dict[str, Entry] = {}
        self._children: dict[str, set[str]] | None = None
        self.add(entries)

    def add(self, entries: Iterable[Entry]) -> None:
        for e in entries:
            path = clean_path(e.path)
            if path:
                self.layer[path] = e
                if self._children is not None:
                    self._children.setdefault(posixpath.dirname(path), set()).add(posixpath.basename(path))

    # ------------------------------------------------------------------ nodes

    def kind(self, path: str) -> str | None:
        """'file', 'dir', 'symlink', 'hardlink' or None (absent), without following a final symlink."""
        path = clean_path(path)
        entry = self.layer.get(path)
        if entry is not None:
            return None if entry.kind is Kind.WHITEOUT else entry.kind.value
        for parent in _ancestors(path):
            above = self.layer.get(parent)
            if above is not None and above.kind is not Kind.DIR:
                return None  # a whiteout or a non-directory in the layer hides everything below it
        node = self.view.nodes.get(path)
        return node.kind if node is not None else None

    def exists(self, path: str) -> bool:
        return self.kind(path) is not None

    def linkname(self, path: str) -> str | None:
        path = clean_path(path)
        if self.kind(path) != "symlink":
            return None
        entry = self.layer.get(path)
        if entry is not None:
            return entry.linkname
        node = self.view.nodes.get(path)
        return node.linkname if node is not None else None

    def mode(self, path: str) -> int | None:
        path = clean_path(path)
        entry = self.layer.get(path)
        if entry is not None:
            return None if entry.kind is Kind.WHITEOUT else entry.mode
        node = self.view.nodes.get(path)
        return node.mode if node is not None and self.exists(path) else None

    def owner(self, path: str) -> tuple[int, int]:
        path = clean_path(path)
        entry = self.layer.get(path)
        if entry is not None:
            return entry.uid, entry.gid
        node = self.view.nodes.get(path)
        return (node.uid, node.gid) if node is not None else (0, 0)

    def resolve(self, path: str, follow_last: bool = True) -> str:
        return resolve_path(path, self.linkname, follow_last)

    def target_kind(self, path: str) -> str | None:
        """The kind of what `path` finally names (symlinks followed); None for absent or dangling."""
        try:
            real = self.resolve(path)
        except Exception:  # a symlink loop: as absent as a dangling link
            return None
        return self.kind(real)

    def changed(self, path: str) -> bool:
        """Whether the layer writes or deletes exactly this path (or deletes a directory above it)."""
        path = clean_path(path)
        if path in self.layer:
            return True
        return any(self.layer.get(p) is not None and self.layer[p].kind is not Kind.DIR for p in _ancestors(path))

    # ------------------------------------------------------------------ contents

    def read(self, path: str) -> bytes | None:
        """Content of a regular file (symlinks and hardlinks followed); None if absent or not known (a file of the
        image outside the captured paths)."""
        try:
            real = self.resolve(path)
        except Exception:
            return None
        entry = self.layer.get(real)
        if entry is not None:
            if entry.kind is Kind.HARDLINK:
                return self.read(entry.linkname)
            if entry.kind is not Kind.FILE or entry.content is None or entry.size > _READ_LIMIT:
                return None
            with entry.content() as f:
                return f.read()
        if not self.exists(real):
            return None
        return self.view.contents.get(real)

    # ------------------------------------------------------------------ directories

    def listdir(self, directory: str) -> list[str]:
        """Names in a directory of the merged result (the directory's own symlinks followed), sorted bytewise."""
        real = self.resolve(directory)
        if self._children is None:
            children: dict[str, set[str]] = {}
            for p in self.view.nodes:
                children.setdefault(posixpath.dirname(p), set()).add(posixpath.basename(p))
            for p in self.layer:
                children.setdefault(posixpath.dirname(p), set()).add(posixpath.basename(p))
            self._children = children
        names = self._children.get(real, set())
        return sorted((n for n in names if self.exists(posixpath.join(real, n) if real else n)),
                      key=lambda n: n.encode("utf-8", "surrogateescape"))

    def layer_paths(self) -> list[str]:
        return sorted(self.layer)
