"""The paths an installed header lists (copa/pkg/rpm/install.py owned_paths, owned_files), against posixpath.

The plan reads the file list of every installed header; owned_paths normalises each directory once instead of every
DIRNAME + BASENAME. The oracle is the stdlib's posixpath.normpath of the two joined, stripped of its leading slashes,
for any header: DIRNAMES with and without their trailing slash, with ".", "..", "//", empty; BASENAMES with a slash,
".", "..", empty; DIRINDEXES out of range or fewer than the names."""

from __future__ import annotations

import posixpath

from hypothesis import given, settings
from hypothesis import strategies as st

from copa.pkg.rpm.header import Header, Value
from copa.pkg.rpm.install import owned_files, owned_paths
from copa.pkg.rpm.tags import Tag, Type

_PART = st.sampled_from(["", "/", "//", ".", "..", "a", "b", "usr", "lib64", "a.b", "..a", "./", "../"])
_NAME = st.lists(_PART, min_size=1, max_size=5).map("".join)


def _header(dirs: list[str], names: list[str], index: list[int]) -> Header:
    n = len(names)
    built = Header((), b"").append([
        Value.strings(Tag.BASENAMES, names), Value.strings(Tag.DIRNAMES, dirs),
        *([Value.ints(Tag.DIRINDEXES, Type.INT32, index)] if index else []),  # (a tag cannot hold 0 values)
        Value.ints(Tag.FILEFLAGS, Type.INT32, list(range(n))),
        Value.strings(Tag.FILEDIGESTS, [f"{i:064x}" for i in range(n)]),
        Value.ints(Tag.FILEMODES, Type.INT16, [0o100644 + i for i in range(n)]),
        Value.ints(Tag.FILESTATES, Type.CHAR, [i % 3 for i in range(n)]),
    ])
    return Header.parse(built.to_bytes())


@settings(max_examples=400, deadline=None)
@given(dirs=st.lists(_NAME, min_size=1, max_size=6), names=st.lists(_NAME, min_size=1, max_size=12),
       index=st.lists(st.integers(0, 8), max_size=12))
def test_owned_paths_normalise_as_posixpath(dirs: list[str], names: list[str], index: list[int]) -> None:
    h = _header(dirs, names, index)
    expected = tuple(posixpath.normpath((dirs[index[i]] if i < len(index) and index[i] < len(dirs) else "/") + base)
                     .lstrip("/") for i, base in enumerate(names))
    assert owned_paths(h) == expected
    owned = owned_files(h)
    assert tuple(f.path for f in owned) == expected
    assert [(f.flags, f.digest, f.mode, f.state) for f in owned] == [
        (i, f"{i:064x}", 0o100644 + i, i % 3) for i in range(len(names))]


def test_a_packages_usual_file_list() -> None:
    """rpm's own shape (every DIRNAME ends in "/"), the case the per-directory prefix is for."""
    h = _header(["/", "/usr/bin/", "/usr/share/doc/a/", "/etc/../etc/"], ["bin", "a", "README", "a.conf", "x"],
                [1, 1, 2, 3, 0])
    assert owned_paths(h) == ("usr/bin/bin", "usr/bin/a", "usr/share/doc/a/README", "etc/a.conf", "x")
