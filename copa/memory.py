"""Process-wide memory settings, applied by the command line (which owns its process), never by the library.

Cyclic garbage collection: a patch allocates millions of short-lived objects (tar headers, index rows, path
strings), and with CPython's default thresholds (700, 10, 10) the collector ran ~270 times in a cold Debian patch,
twice over every object alive (the image's path index, the imports): 50-60 ms of the main thread. Nearly all of it
is freed by reference counting; cycles are rare. Thresholds of (10000, 10, 10) still collect them, in ~17 ms.

glibc gives every thread that allocates while another holds the main heap an arena of its own, and freed memory
stays mapped in each: a patch's download, unpack, gzip and read-ahead threads left ~40 MB more resident than the
same work in two arenas (peak RSS of a 22-package Debian patch 155 MB -> 115 MB, no measurable time cost). Two
arenas, as MALLOC_ARENA_MAX=2 would set, unless the user set that variable. Other C libraries (musl) have no
arenas to limit: nothing is done there."""

from __future__ import annotations

import gc
import os
import sys

_M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
ARENAS = 2


def limit_malloc_arenas() -> bool:
    """Cap glibc's malloc arenas; True if it was done. Call before threads start."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    import ctypes  # here: only the command line pays for importing it

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, ARENAS))


GC_THRESHOLDS = (10_000, 10, 10)


def fewer_collections() -> None:
    """Collect cyclic garbage less often (see the module's note); a library caller keeps its own settings."""
    gc.set_threshold(*GC_THRESHOLDS)
