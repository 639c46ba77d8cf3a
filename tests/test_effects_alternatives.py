"""copa/pkg/effects/alternatives against the real update-alternatives (dpkg's, run with --root on a temporary
tree): the same calls applied to a copy by copa must leave the same administrative files and symlinks."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from copa.pkg.effects import alternatives, scripts
from copa.pkg.effects.merged import Merged
from tests.support.rootview import apply, view_of

pytestmark = pytest.mark.skipif(shutil.which("update-alternatives") is None, reason="needs dpkg's update-alternatives")

FILES = ("usr/bin/a1", "usr/bin/a2", "usr/bin/a3", "usr/share/man/man1/a1.1.gz", "usr/share/man/man1/a3.1.gz",
         "usr/bin/a1-extra", "usr/bin/plainfile")


def _root(tmp: Path, name: str) -> Path:
    root = tmp / name
    for d in ("etc/alternatives", "var/lib/dpkg/alternatives"):
        (root / d).mkdir(parents=True)
    for f in FILES:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_bytes(b"")
    return root


def _real(root: Path, line: str) -> None:
    subprocess.run(["update-alternatives", "--root", str(root), "--log", "/dev/null", "--quiet",
                    *scripts.commands(line)[0].argv], check=False, capture_output=True)


def _tree(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            out[rel] = ("->", os.readlink(p)) if p.is_symlink() else p.read_bytes()
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            p = Path(dirpath) / name
            if p.is_symlink():
                out[p.relative_to(root).as_posix()] = ("->", os.readlink(p))
    out.pop("dev/null", None)  # --log is taken inside --root
    return out


SLAVE = "--slave /usr/share/man/man1/foo.1.gz foo.1.gz /usr/share/man/man1/{}.1.gz"
INSTALL = "update-alternatives --install /usr/bin/foo foo /usr/bin/{} {} " + SLAVE
CASES: dict[str, tuple[list[str], list[str]]] = {
    "fresh": ([], [INSTALL.format("a1", 20, "a1")]),
    "lower priority joins": ([INSTALL.format("a1", 20, "a1")], [INSTALL.format("a2", 10, "a2")]),
    "higher priority wins, missing slave file": (
        [INSTALL.format("a1", 20, "a1")], [INSTALL.format("a2", 50, "a2")]),
    "equal priorities: first by name": ([INSTALL.format("a2", 20, "a2")], [INSTALL.format("a1", 20, "a1")]),
    "second slave added": ([INSTALL.format("a1", 20, "a1")], [
        INSTALL.format("a3", 30, "a3") + " --slave /usr/bin/foo-extra foo-extra /usr/bin/a1-extra"]),
    "priority changed": ([INSTALL.format("a1", 20, "a1"), INSTALL.format("a2", 30, "a2")],
                         [INSTALL.format("a1", 40, "a1")]),
    "slave dropped by the only choice": ([INSTALL.format("a1", 20, "a1")],
                                         ["update-alternatives --install /usr/bin/foo foo /usr/bin/a1 20"]),
    "manual kept": ([INSTALL.format("a1", 20, "a1"), INSTALL.format("a2", 10, "a2"),
                     "update-alternatives --set foo /usr/bin/a2"], [INSTALL.format("a3", 90, "a3")]),
    "manual choice removed": ([INSTALL.format("a1", 20, "a1"), INSTALL.format("a2", 10, "a2"),
                               "update-alternatives --set foo /usr/bin/a2"],
                              ["update-alternatives --remove foo /usr/bin/a2"]),
    "current removed": ([INSTALL.format("a1", 20, "a1"), INSTALL.format("a2", 10, "a2")],
                        ["update-alternatives --remove foo /usr/bin/a1"]),
    "last removed": ([INSTALL.format("a1", 20, "a1")], ["update-alternatives --remove foo /usr/bin/a1"]),
    "unknown removed": ([INSTALL.format("a1", 20, "a1")], ["update-alternatives --remove foo /usr/bin/a3"]),
    "missing path refused": ([], ["update-alternatives --install /usr/bin/foo foo /usr/bin/nothere 5"]),
    "real file at the link kept": ([], [
        "update-alternatives --install /usr/bin/plainfile plain /usr/bin/a1 5"]),
    "two groups": ([INSTALL.format("a1", 20, "a1")], [
        "update-alternatives --install /usr/bin/bar bar /usr/bin/a3 5", INSTALL.format("a2", 70, "a2")]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_as_update_alternatives(tmp_path: Path, case: str) -> None:
    before, calls = CASES[case]
    real = _root(tmp_path, "real")
    for line in before:
        _real(real, line)
    ours = tmp_path / "ours"
    shutil.copytree(real, ours, symlinks=True)
    for line in calls:
        _real(real, line)
    merged = Merged(view_of(ours), [])
    alt = alternatives.Alternatives(merged, None)
    for line in calls:
        call = alternatives.parse_call(scripts.commands(line)[0].argv)
        assert call is not None
        alt.apply(call)
    start = _tree(ours)
    apply(ours, alt.entries())
    assert _tree(ours) == _tree(real)
    # The case means something: the real tool changed the tree (except where it refuses or has nothing to do).
    assert (start == _tree(real)) == (case in ("unknown removed", "missing path refused"))


def test_unresolvable_calls_are_not_taken() -> None:
    for line in ('update-alternatives --install /usr/bin/foo foo "$BIN" 10',
                 "update-alternatives --install /usr/bin/foo foo /usr/lib/$ARCH/foo 10",
                 "update-alternatives --set foo /usr/bin/a1",
                 "update-alternatives --install /usr/bin/foo foo /usr/bin/a1 ten"):
        assert alternatives.parse_call(scripts.commands(line)[0].argv) is None, line


def test_admin_file_round_trip() -> None:
    host = Path("/var/lib/dpkg/alternatives")
    if not host.is_dir():
        pytest.skip("no dpkg alternatives on this host")
    for f in sorted(host.iterdir()):
        text = f.read_bytes()
        group = alternatives.parse(f.name, text.decode())
        assert group is not None, f
        assert alternatives.render(group) == text, f
