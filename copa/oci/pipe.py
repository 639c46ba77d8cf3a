"""A stream read in a thread of its own, a few chunks ahead of its consumer.

Reading a layer is a chain: the blob (network or disk), its digest check, inflating, the diff_id hash, then the tar
walk. All but the last run in C without the GIL, the tar walk in Python with it: in one thread they take turns; with
the chain up to the hash in this reader thread, inflating overlaps the walk on a second core. At most `depth` chunks
wait between the two, so memory stays bounded whatever the layer size.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import queue
import threading
from typing import BinaryIO

CHUNK = 1 << 20
_DEPTH = 4


class _End:
    pass


_END = _End()


class ReadAheadStream(io.RawIOBase):
    """`source` read by a thread into a bounded queue; reads and errors reach the consumer in order. Use as a
    context manager: leaving it stops the thread (and waits for it) before the caller closes `source`."""

    def __init__(self, source: BinaryIO, chunk: int = CHUNK, depth: int = _DEPTH) -> None:
        super().__init__()
        self._source = source
        self._chunk = chunk
        self._queue: queue.Queue[bytes | BaseException | _End] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._current = memoryview(b"")
        self._done = False
        # The thread reports progress (events) in the caller's context: the platform scope of a multi-platform run.
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._run,), name="copa-read", daemon=True)
        self._thread.start()

    def _put(self, item: bytes | BaseException | _End) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._source.read(self._chunk)
                if not data:
                    break
                if not self._put(data):
                    return
            self._put(_END)
        except BaseException as e:  # handed to the consumer, raised there as if read there
            self._put(e)

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while chunk := self.read(self._chunk):
                parts.append(chunk)
            return b"".join(parts)
        if not self._current:
            if self._done:
                return b""
            item = self._queue.get()
            if isinstance(item, _End):
                self._done = True
                return b""
            if isinstance(item, BaseException):
                self._done = True
                raise item
            if size >= len(item):
                return item  # the whole chunk: no copy
            self._current = memoryview(item)
        out = self._current[:size]
        self._current = self._current[size:]
        return bytes(out)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def __enter__(self) -> ReadAheadStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):  # unblock a put waiting for room
                self._queue.get_nowait()
            self._thread.join(timeout=0.05)
