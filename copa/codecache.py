"""The methods `dataclasses` writes for copa's value types, compiled once and kept beside copa's bytecode.

copa's values are frozen dataclasses (~130 of them are created in a patch's imports). For each, `dataclasses`
writes the source of __init__, __repr__, __eq__, __hash__, __setattr__ and __delattr__ and compiles it with `exec`:
~730 compilations, 80 ms of the 160 ms a patch spends importing its modules, every run. Python keeps a module's
bytecode in __pycache__; it cannot keep these, for they are made at run time. This keeps them the same way: a file
beside copa's bytecode (or under PYTHONPYCACHEPREFIX) maps each generated source text to its code object, and
`dataclasses` is given an `exec` that runs the stored code for a source it has seen, compiling only new ones.

The source text is the key, so a changed class simply compiles anew; the code is what `compile` makes of that text,
with the flags `dataclasses` itself compiles with. The file has the trust of the bytecode beside it (whoever can
write there can change copa itself); it is never put in copa's download cache, which holds what others serve.
Applied by the command line, which owns its process (like copa.memory), never by the library: a program calling
copa keeps `dataclasses` as it is. Unreadable, corrupt or stale files are ignored; without a writable place
(PYTHONDONTWRITEBYTECODE, a read-only install) everything is compiled as before.
"""

from __future__ import annotations

import atexit
import builtins
import dataclasses
import marshal
import os
import sys
import threading
from pathlib import Path
from types import CodeType
from typing import Any

# More entries than this (sources of classes gone since) and the file is written anew with this run's alone.
_MAX_ENTRIES = 5000


class _Store:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.codes: dict[str, CodeType] = _load(path) if path is not None else {}
        self.used: set[str] = set()
        self.new = False
        self.lock = threading.Lock()

    def code(self, source: str) -> CodeType:
        code = self.codes.get(source)
        if code is None:
            # dont_inherit: the flags of dataclasses' own exec (no `from __future__ import annotations` of ours).
            code = compile(source, "<string>", "exec", dont_inherit=True)
            with self.lock:
                self.codes[source] = code
                self.new = True
        self.used.add(source)
        return code

    def save(self) -> None:
        if not self.new or self.path is None or sys.dont_write_bytecode:
            return
        import importlib.util
        import tempfile
        with self.lock:
            keep = self.codes if len(self.codes) <= _MAX_ENTRIES else {s: self.codes[s] for s in self.used}
            data = importlib.util.MAGIC_NUMBER + marshal.dumps(dict(keep))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                os.chmod(tmp, 0o644)  # readable by every user of the installation, as its bytecode is
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            pass  # a read-only install: compiled anew next time, as without this


def _load(path: Path) -> dict[str, CodeType]:
    import importlib.util

    try:
        data = path.read_bytes()
    except OSError:
        return {}
    magic = importlib.util.MAGIC_NUMBER
    if not data.startswith(magic):
        return {}
    try:
        loaded = marshal.loads(data[len(magic):])
    except (ValueError, EOFError, TypeError):
        return {}
    if not isinstance(loaded, dict):
        return {}
    return {s: c for s, c in loaded.items() if isinstance(s, str) and isinstance(c, CodeType)}


def location() -> Path | None:
    """Where the compiled methods are kept: beside copa's bytecode, as importlib places it."""
    tag = sys.implementation.cache_tag
    if tag is None:
        return None
    here = Path(__file__).resolve().parent
    # (Code compiled under -O differs: it is kept apart, as bytecode is.)
    level = f".opt-{sys.flags.optimize}" if sys.flags.optimize else ""
    name = f"dataclass-methods.{tag}{level}.marshal"
    if sys.pycache_prefix:
        return Path(sys.pycache_prefix) / str(here).lstrip(os.sep) / name
    return here / "__pycache__" / name


_installed: _Store | None = None


def install(path: Path | None = None) -> None:
    """Give `dataclasses` the caching exec (once per process); the file is written when the process exits."""
    global _installed
    if _installed is not None or "exec" in vars(dataclasses):
        return  # done already, or someone else's hook is in place
    store = _installed = _Store(path if path is not None else location())
    run = builtins.exec

    def cached_exec(source: Any, globals: dict[str, Any] | None = None,
                    locals: dict[str, Any] | None = None) -> None:
        if isinstance(source, str):
            source = store.code(source)
        run(source, globals, locals)

    dataclasses.exec = cached_exec  # type: ignore[attr-defined]
    atexit.register(store.save)
