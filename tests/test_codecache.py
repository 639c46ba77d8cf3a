"""copa.codecache: dataclasses' generated methods compiled once and kept beside the bytecode. The oracle is plain
`dataclasses` in a process without the hook: every behaviour of a set of dataclasses covering the features copa
and the standard library use must come out the same with the hook compiling, and with it loading from the file.
Each run is a process of its own (the hook is process-wide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Builds dataclasses of many shapes and prints what can be observed of them, as JSON.
_PROBE = r'''
import dataclasses, inspect, json, sys, typing
from dataclasses import InitVar, KW_ONLY, dataclass, field
if sys.argv[1] != "plain":
    from copa.codecache import install
    from pathlib import Path
    install(Path(sys.argv[2]))

@dataclass(frozen=True, slots=True)
class Point:
    x: int
    y: int = 0
    tags: tuple[str, ...] = ()

@dataclass(frozen=True)
class Record:
    """Documented."""
    name: str
    items: list[int] = field(default_factory=list)
    hidden: str = field(default="h", repr=False, compare=False)
    derived: int = field(init=False, default=0)
    def __post_init__(self) -> None:
        object.__setattr__(self, "derived", len(self.name))

@dataclass(order=True)
class Mutable:
    a: int
    b: "str" = "b"
    scale: InitVar[int] = 1
    def __post_init__(self, scale: int) -> None:
        self.a *= scale

@dataclass(eq=False, repr=False)
class Identity:
    v: int

@dataclass(frozen=True, kw_only=True)
class KwOnly:
    p: int
    q: str = "q"

@dataclass
class WithSentinel:
    a: int
    _: KW_ONLY
    b: int = 2

out = {}
p = Point(1, 2, ("t",))
out["point"] = [repr(p), p == Point(1, 2, ("t",)), hash(p) == hash(Point(1, 2, ("t",))), str(inspect.signature(Point))]
try:
    p.x = 5
except dataclasses.FrozenInstanceError as e:
    out["frozen"] = type(e).__name__
try:
    del p.x
except dataclasses.FrozenInstanceError as e:
    out["frozen_del"] = type(e).__name__
r = Record("abc", [1])
out["record"] = [repr(r), r == Record("abc", [1], hidden="other"), r.derived, Record.__doc__,
                 str(inspect.signature(Record)), sorted(Record.__init__.__annotations__)]
m = Mutable(2, scale=3)
out["mutable"] = [repr(m), m < Mutable(7), Mutable.__doc__, str(inspect.signature(Mutable)),
                  sorted(map(str, typing.get_type_hints(Mutable.__init__).items()))]
out["identity"] = [Identity(1) == Identity(1), "Identity object" in repr(Identity(1))]
out["kw"] = [repr(KwOnly(p=1)), str(inspect.signature(KwOnly))]
out["sentinel"] = [repr(WithSentinel(1, b=3)), str(inspect.signature(WithSentinel))]
try:
    KwOnly(1)
except TypeError as e:
    out["kw_error"] = str(e)
out["replace"] = repr(dataclasses.replace(p, y=9))
out["fields"] = [f.name for f in dataclasses.fields(Record)]
print(json.dumps(out, sort_keys=True))
'''


def _probe(mode: str, store: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    proc = subprocess.run([sys.executable, "-c", _PROBE, mode, str(store)], capture_output=True, text=True,
                          env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_dataclasses_behave_the_same_compiled_and_loaded(tmp_path: Path) -> None:
    store = tmp_path / "methods.marshal"
    plain = _probe("plain", store)
    assert not store.exists()
    compiled = _probe("hook", store)  # compiles each method, writes the file at exit
    assert store.is_file()
    loaded = _probe("hook", store)  # runs the stored code
    assert json.loads(compiled) == json.loads(plain)
    assert json.loads(loaded) == json.loads(plain)


def test_the_second_run_compiles_nothing(tmp_path: Path) -> None:
    store = tmp_path / "methods.marshal"
    _probe("hook", store)
    first = store.read_bytes()
    _probe("hook", store)
    assert store.read_bytes() == first  # nothing new: not written again


def test_a_damaged_or_foreign_file_is_ignored(tmp_path: Path) -> None:
    store = tmp_path / "methods.marshal"
    plain = json.loads(_probe("plain", store))
    for damaged in (b"", b"not marshal at all", store.read_bytes()[:10] if store.exists() else b"\x00" * 40):
        store.write_bytes(damaged)
        assert json.loads(_probe("hook", store)) == plain


def test_an_unwritable_place_is_no_error(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file, where a directory would have to be")
    assert json.loads(_probe("hook", blocked / "sub" / "methods.marshal")) == json.loads(
        _probe("plain", tmp_path / "x"))


def test_the_command_line_keeps_the_file_beside_its_bytecode(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(tmp_path / "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    proc = subprocess.run([sys.executable, "-m", "copa", "patch", "-i", "oci:/nonexistent:x", "-r", "/nonexistent"],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode != 0  # (an error run: the file is still written for what was imported)
    stored = list((tmp_path / "pycache").rglob("dataclass-methods.*.marshal"))
    assert len(stored) == 1 and stored[0].parent.name == "copa", stored
