"""A copa.oci.rootfs.View of a directory tree on disk, and applying layer entries to such a tree: lets the effects
be run on roots built by real tools (ldconfig -r, dpkg) and their output compared with those tools' output."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

from copa.oci.layer import Entry, Kind
from copa.oci.rootfs import Node, View

CAPTURE = ("etc", "usr/share/ca-certificates", "usr/local/share/ca-certificates", "var/lib/dpkg",
           "var/cache/debconf/config.dat")


def view_of(root: Path, capture: Iterable[str] = CAPTURE) -> View:
    prefixes = tuple(capture)
    nodes: dict[str, Node] = {}
    contents: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                kind, link = "symlink", os.readlink(full)
            elif stat.S_ISDIR(st.st_mode):
                kind, link = "dir", ""
            elif stat.S_ISREG(st.st_mode):
                kind, link = "file", ""
            else:
                kind, link = "other", ""
            nodes[rel] = Node(rel, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size, link, 0)
            if kind == "file" and any(rel == p or rel.startswith(p + "/") for p in prefixes):
                contents[rel] = full.read_bytes()
    return View(nodes, contents)


def apply(root: Path, entries: Iterable[Entry]) -> None:
    """Write layer entries into a tree as an unpacker would (whiteouts delete)."""
    for e in sorted(entries, key=lambda e: e.path):
        target = root / e.path.lstrip("/")
        if e.kind is Kind.WHITEOUT or ((target.is_symlink() or target.exists()) and e.kind is not Kind.DIR):
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.is_symlink() or target.exists():
                target.unlink()
            if e.kind is Kind.WHITEOUT:
                continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if e.kind is Kind.DIR:
            target.mkdir(exist_ok=True)
            os.chmod(target, e.mode & 0o7777)
        elif e.kind is Kind.SYMLINK:
            os.symlink(e.linkname, target)
        elif e.kind is Kind.HARDLINK:
            os.link(root / e.linkname, target)
        else:
            assert e.content is not None
            with e.content() as src:
                target.write_bytes(src.read())
            os.chmod(target, e.mode & 0o7777)
