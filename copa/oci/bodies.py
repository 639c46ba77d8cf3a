"""Reading registry response bodies within a deadline.

The client's `timeout` bounds each socket read, not a whole body: a server that sends one byte a second never trips
it and holds a pull forever. Bodies are therefore read with `read1` (one socket read at a time, so a trickle
returns control) against a deadline for the whole body: `timeout` for small documents (manifests, tokens, tag lists,
error bodies), and `timeout` plus the time the blob's size takes at MIN_BLOB_RATE for blobs.
"""

from __future__ import annotations

import time

from copa.errors import IntegrityError, RegistryError
from copa.net import describe_connection_error
from copa.web.response import Response

# The slowest average rate a blob may arrive at once the first `timeout` seconds have passed: 32 KiB/s, so a
# 1 GiB layer is allowed more than nine hours, and a body that trickles a few bytes a second is cut off.
MIN_BLOB_RATE = 32 << 10
_CHUNK = 1 << 16


def blob_deadline(timeout: float, size: int) -> float:
    """The monotonic time by which a blob of `size` bytes must have been read."""
    return time.monotonic() + timeout + size / MIN_BLOB_RATE


def too_slow(what: str, count: int, started: float) -> RegistryError:
    return RegistryError(f"{what} arrived too slowly ({count} bytes in {time.monotonic() - started:.0f} s, past "
                         f"--timeout); the registry or the network is stalling: try again, or raise --timeout")


def read_chunk(resp: Response, size: int, what: str) -> bytes:
    """At most `size` bytes of the body, returning after one socket read (b"" at the end)."""
    try:
        return resp.raw.read1(size)
    except OSError as e:
        raise RegistryError(
            f"lost the connection while reading {what} ({describe_connection_error(e)}); try again"
        ) from None


def read_body(resp: Response, limit: int, seconds: float, what: str) -> bytes:
    """The whole body of a streamed response, at most `limit` bytes (IntegrityError beyond: no small document is
    that large) and within `seconds` (RegistryError). The response is closed."""
    started = time.monotonic()
    out = bytearray()
    try:
        while chunk := read_chunk(resp, _CHUNK, what):
            out += chunk
            if len(out) > limit:
                raise IntegrityError(f"{what} is larger than {limit} bytes, more than such a document ever is; "
                                     f"check the registry")
            if time.monotonic() - started > seconds:
                raise too_slow(what, len(out), started)
    finally:
        resp.close()
    return bytes(out)
