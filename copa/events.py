"""Progress events: what the engine and the package adapters report while they work, without knowing who shows it.

Code where time goes reports two things: a `step` (a line: "planning updates") and a `task` (something with a size
that advances: a layer read, a download, the patch layer written, a blob pushed). They go to the one current `Sink`
(the CLI installs a renderer from copa.progress with `use`); without one, `task` hands out a shared do-nothing task
and `counted` returns the stream itself, so a library user pays one attribute lookup per call.

Platforms of an index may be patched concurrently in threads, so every event carries a `scope` (e.g. the platform).
It is a context variable set with `scope(...)`; since executor threads do not inherit context variables, work handed
to a pool is wrapped with `carry(fn)`, or a long-lived helper (a Fetcher) records the scope it was made in and passes
it explicitly with `task(..., scope=...)`.
"""

from __future__ import annotations

import contextvars
import enum
import io
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO, ParamSpec, Protocol, TypeVar, cast

P = ParamSpec("P")
R = TypeVar("R")


class Kind(enum.StrEnum):
    """What a task is; renderers may word or group by it, the JSON stream names it."""

    LAYER_READ = "layer-read"  # a base layer's compressed blob read (bytes: compressed, total: descriptor size)
    DOWNLOAD = "download"  # a repository index or package download (total: the index's size when known)
    LAYER_WRITE = "layer-write"  # the patch layer written (bytes: file contents put into it)
    PUSH = "push"  # a blob uploaded to a registry (done note "exists" or "mounted" when no byte was sent)


@dataclass(frozen=True, slots=True)
class TaskInfo:
    id: int
    kind: Kind
    label: str
    total: int | None
    scope: str | None


@dataclass(frozen=True, slots=True)
class Finish:
    completed: int  # bytes done when the task ended
    seconds: float
    ok: bool  # False: it ended with an exception (the error, if fatal, is reported by whoever catches it)
    note: str = ""  # how it ended when that is not "did all the work": "exists", "mounted", "stopped early"


class Sink(Protocol):
    """Receives events, possibly from several threads at once: implementations lock what they share."""

    def step(self, message: str, scope: str | None) -> None: ...

    def start(self, task: TaskInfo) -> None: ...

    def advance(self, task: TaskInfo, completed: int) -> None: ...

    def done(self, task: TaskInfo, finish: Finish) -> None: ...


_sink: Sink | None = None
_sink_lock = threading.Lock()
_ids = itertools.count(1)
_scope: contextvars.ContextVar[str | None] = contextvars.ContextVar("copa_progress_scope", default=None)


@contextmanager
def use(sink: Sink) -> Iterator[Sink]:
    """Send events to `sink` while the block runs (process-wide: worker threads report to it too)."""
    global _sink
    with _sink_lock:
        previous, _sink = _sink, sink
    try:
        yield sink
    finally:
        with _sink_lock:
            _sink = previous


@contextmanager
def scope(name: str | None) -> Iterator[None]:
    """Events reported in this block (in this thread, and in work wrapped by `carry`) carry `name`."""
    token = _scope.set(name)
    try:
        yield
    finally:
        _scope.reset(token)


def current_scope() -> str | None:
    return _scope.get()


def carry(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn` running with the scope that is current now, wherever it is later called (pool.submit(carry(f), x))."""
    captured = _scope.get()

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        token = _scope.set(captured)
        try:
            return fn(*args, **kwargs)
        finally:
            _scope.reset(token)

    return run


def step(message: str, scope: str | None = None) -> None:
    sink = _sink
    if sink is not None:
        sink.step(message, scope if scope is not None else _scope.get())


class Task:
    """A started task; `advance` by bytes done, `done` once (a `with` block ends it, marking a failure on error)."""

    def __init__(self, info: TaskInfo | None, sink: Sink | None) -> None:
        self.info = info
        self.completed = 0
        self._sink = sink
        self._started = time.monotonic()
        self._ended = False

    @property
    def active(self) -> bool:
        return self._sink is not None

    def advance(self, n: int) -> None:
        if self._sink is not None and n and self.info is not None:
            self.completed += n
            self._sink.advance(self.info, self.completed)

    def reset(self) -> None:
        """Start counting again from zero (a retried download or upload reads its source again)."""
        if self._sink is not None and self.info is not None and self.completed:
            self.completed = 0
            self._sink.advance(self.info, 0)

    def restarted(self) -> Task:
        """`reset`, returning the task: for a retried attempt's `counted(stream, task.restarted())`."""
        self.reset()
        return self

    def done(self, note: str = "", ok: bool = True) -> None:
        if self._sink is None or self.info is None or self._ended:
            return
        self._ended = True
        self._sink.done(self.info, Finish(self.completed, time.monotonic() - self._started, ok, note))

    def __enter__(self) -> Task:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.done()
        elif issubclass(kind, GeneratorExit):
            # A generator holding the task was closed by its consumer: it stopped reading, nothing failed.
            self.done("stopped early")
        else:
            self.done("failed", ok=False)


# What `task` hands out when nobody listens; also a default for an optional task argument.
NO_TASK = Task(None, None)


def task(kind: Kind, label: str, total: int | None = None, *, scope: str | None = None) -> Task:
    """Start a task; `scope` defaults to the current one (see `scope`/`carry`)."""
    sink = _sink
    if sink is None:
        return NO_TASK
    info = TaskInfo(next(_ids), kind, label, total, scope if scope is not None else _scope.get())
    sink.start(info)
    return Task(info, sink)


class _Counted(io.RawIOBase):
    """Reads through to `inner`, advancing `task` by every byte read; closing closes `inner`."""

    def __init__(self, inner: BinaryIO, task: Task) -> None:
        super().__init__()
        self._inner = inner
        self._task = task

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        data = self._inner.read(-1 if size is None else size)
        self._task.advance(len(data))
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        readinto = getattr(self._inner, "readinto", None)
        if readinto is None:
            data = self.read(len(buffer))
            memoryview(buffer)[: len(data)] = data
            return len(data)
        n: int = readinto(buffer) or 0
        self._task.advance(n)
        return n

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            super().close()


def counted(stream: BinaryIO, task: Task) -> BinaryIO:
    """`stream`, advancing `task` as it is read (the stream itself when nobody listens)."""
    if not task.active:
        return stream
    return cast(BinaryIO, _Counted(stream, task))
