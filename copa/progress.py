"""Progress renderers for the CLI (`--progress`): the sinks of copa.events, chosen by mode.

* tty: rich live bars on stderr (description, bytes, rate, ETA), steps printed as lines above them; the bars vanish
  when the run ends, so the final screen holds the steps and the summary. rich rather than tqdm: one Progress shows
  many concurrent bars (parallel downloads, platforms) and prints lines above them from any thread, and it restores
  the cursor when stopped; tqdm needs one bar object per line with manual positions and `tqdm.write` juggling.
* plain: one line per step and per finished task (size and seconds): no carriage returns, nothing per chunk.
* json: one JSON object per line ({"event": "step"|"start"|"advance"|"done", ...}); advances at most every 0.2 s
  per task (and the last value always arrives with "done").
* quiet: nothing (errors are printed by the CLI anyway).
* auto: tty when the stream is a terminal, else plain.
"""

from __future__ import annotations

import json
import os
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

from copa import events
from copa.errors import UsageError
from copa.events import Finish, Kind, TaskInfo

if TYPE_CHECKING:
    from rich.progress import TaskID

MODES = ("auto", "plain", "tty", "quiet", "json")

_DOING = {Kind.LAYER_READ: "reading", Kind.DOWNLOAD: "downloading", Kind.LAYER_WRITE: "writing",
          Kind.PUSH: "pushing"}
_DONE = {Kind.LAYER_READ: "read", Kind.DOWNLOAD: "downloaded", Kind.LAYER_WRITE: "wrote", Kind.PUSH: "pushed"}
_JSON_INTERVAL = 0.2
_LABEL_WIDTH = 48


def human_size(n: int) -> str:
    """Decimal units, as rich's download column shows them: 980 B, 12.3 kB, 8.9 MB."""
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def _scoped(text: str, scope: str | None) -> str:
    return f"[{scope}] {text}" if scope else text


class Reporter:
    """A sink of copa.events that is also the `progress(message)` callable copa.api.patch takes.

    `close` stops any live display and leaves the terminal as it was; it is idempotent and safe to call from an
    error or interrupt handler. The base class reports nothing (quiet)."""

    def __call__(self, message: str) -> None:
        self.step(message, events.current_scope())

    def step(self, message: str, scope: str | None) -> None:
        pass

    def start(self, task: TaskInfo) -> None:
        pass

    def advance(self, task: TaskInfo, completed: int) -> None:
        pass

    def done(self, task: TaskInfo, finish: Finish) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class _Lines(Reporter):
    """Writes whole lines under a lock; a stream that fails (a closed pipe) ends the reporting, not the patch."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._broken = False

    def _write(self, line: str) -> None:
        with self._lock:
            if self._broken:
                return
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                self._broken = True


class PlainReporter(_Lines):
    def step(self, message: str, scope: str | None) -> None:
        self._write("copa: " + _scoped(message, scope))

    def done(self, task: TaskInfo, finish: Finish) -> None:
        if not finish.ok:
            return  # a failure that matters is the CLI's error line; a recovered one (a by-hash 404) is noise
        what = f"{_DONE[task.kind]} {task.label}"
        note = f", {finish.note}" if finish.note else ""
        self._write(f"copa: {_scoped(what, task.scope)} ({human_size(finish.completed)} in "
                    f"{finish.seconds:.1f}s{note})")


class JsonReporter(_Lines):
    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._origin = time.monotonic()
        self._last: dict[int, float] = {}

    def _event(self, doc: dict[str, Any]) -> None:
        self._write(json.dumps(doc, separators=(",", ":")))

    def step(self, message: str, scope: str | None) -> None:
        self._event({"event": "step", "message": message, "scope": scope,
                     "time": round(time.monotonic() - self._origin, 3)})

    def start(self, task: TaskInfo) -> None:
        with self._lock:
            self._last[task.id] = time.monotonic()
        self._event({"event": "start", "id": task.id, "kind": task.kind.value, "label": task.label,
                     "total": task.total, "scope": task.scope})

    def advance(self, task: TaskInfo, completed: int) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(task.id, 0.0) < _JSON_INTERVAL:
                return
            self._last[task.id] = now
        self._event({"event": "advance", "id": task.id, "bytes": completed})

    def done(self, task: TaskInfo, finish: Finish) -> None:
        with self._lock:
            self._last.pop(task.id, None)
        self._event({"event": "done", "id": task.id, "kind": task.kind.value, "bytes": finish.completed,
                     "seconds": round(finish.seconds, 3), "ok": finish.ok, "note": finish.note})


def _short(label: str) -> str:
    # The end of a label names the thing (Packages.xz, the .deb); a long repository URL before it can go.
    return label if len(label) <= _LABEL_WIDTH else "…" + label[-(_LABEL_WIDTH - 1):]


class TtyReporter(Reporter):
    def __init__(self, stream: TextIO) -> None:
        # rich is imported here, not with the module: only a terminal needs it, and importing it takes ~90 ms,
        # which plain, json and quiet runs (and `copa --version`) would pay before their first request.
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.table import Column

        self._console = Console(file=stream, force_terminal=True, highlight=False)
        self._progress = Progress(
            TextColumn("{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis")),
            BarColumn(bar_width=24),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self._console,
            transient=True,  # the bars go when the run ends: the final screen is the steps and the summary
            refresh_per_second=8,
        )
        self._ids: dict[int, TaskID] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._progress.start()

    def step(self, message: str, scope: str | None) -> None:
        with self._lock:
            if not self._closed:
                self._progress.console.print("==> " + _scoped(message, scope), markup=False)

    def start(self, task: TaskInfo) -> None:
        description = _scoped(f"{_DOING[task.kind]} {_short(task.label)}", task.scope)
        with self._lock:
            if not self._closed:
                self._ids[task.id] = self._progress.add_task(description, total=task.total)

    def advance(self, task: TaskInfo, completed: int) -> None:
        tid = self._ids.get(task.id)
        if tid is not None:
            self._progress.update(tid, completed=completed)

    def done(self, task: TaskInfo, finish: Finish) -> None:
        with self._lock:
            tid = self._ids.pop(task.id, None)
            if tid is not None and not self._closed:
                self._progress.remove_task(tid)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        # Stopping the live display removes the bars and shows the cursor again.
        self._progress.stop()


def make_reporter(mode: str, stream: TextIO) -> Reporter:
    """The renderer for `--progress mode` writing to `stream` (stderr); close it when the run ends."""
    if mode == "auto":
        mode = "tty" if is_terminal(stream) else "plain"
    if mode == "tty":
        return TtyReporter(stream)
    if mode == "plain":
        return PlainReporter(stream)
    if mode == "json":
        return JsonReporter(stream)
    if mode == "quiet":
        return Reporter()
    raise UsageError(f"unknown --progress {mode!r}: use one of {', '.join(MODES)}")


def is_terminal(stream: TextIO) -> bool:
    """Whether live bars belong on `stream` (what --progress auto asks; the sweep's view asks it too)."""
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False
