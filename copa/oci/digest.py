"""Content digests as a value type, and a reader that verifies a stream as it is consumed."""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from typing import BinaryIO

from copa.errors import IntegrityError, UsageError

_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")


class InvalidDigest(UsageError):
    pass


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        m = _DIGEST_RE.match(text)
        if not m:
            raise InvalidDigest(f"invalid digest {text!r}: expected 'sha256:<64 hex digits>'")
        algorithm, hexpart = m.group(1), m.group(2)
        expected = _HEX_LENGTH.get(algorithm)
        if expected is None:
            raise InvalidDigest(f"unsupported digest algorithm in {text!r}: use sha256 or sha512")
        if len(hexpart) != expected or not re.fullmatch(r"[0-9a-f]+", hexpart):
            raise InvalidDigest(f"invalid {algorithm} digest {text!r}: expected {expected} lowercase hex digits")
        return cls(algorithm, hexpart)

    @classmethod
    def of_bytes(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


class VerifyingReader(io.RawIOBase):
    """Wraps a stream; hashes and counts every byte read, and raises IntegrityError on mismatch.

    The check fires when the underlying stream reaches EOF (or when more bytes than expected arrive),
    so a consumer that reads to the end can never see unverified content pass silently.
    """

    def __init__(self, raw: BinaryIO, digest: Digest, size: int | None, what: str) -> None:
        super().__init__()
        self._raw = raw
        self._digest = digest
        self._size = size
        self._what = what
        self._hash = digest.hasher()
        self._count = 0
        self._verified = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer)
        readinto = getattr(self._raw, "readinto", None)
        if readinto is not None:  # straight into the caller's buffer: a layer's bytes copied once less
            n = readinto(view) or 0
            chunk: bytes | memoryview = view[:n]
        else:
            chunk = self._raw.read(len(view))
            n = len(chunk)
            view[:n] = chunk
        if n == 0:
            self._finish()
            return 0
        self._hash.update(chunk)
        self._count += n
        if self._size is not None and self._count > self._size:
            raise IntegrityError(f"{self._what}: more than the expected {self._size} bytes; the source is corrupt")
        return n

    def _finish(self) -> None:
        if self._verified:
            return
        if self._size is not None and self._count != self._size:
            raise IntegrityError(
                f"{self._what}: got {self._count} bytes, expected {self._size}; the source is truncated or corrupt"
            )
        actual = self._hash.hexdigest()
        if actual != self._digest.hex:
            raise IntegrityError(
                f"{self._what}: digest mismatch, expected {self._digest} but content hashes to "
                f"{self._digest.algorithm}:{actual}"
            )
        self._verified = True

    def drain(self) -> None:
        """Read the rest of the stream so the digest is checked even if the consumer stopped early."""
        while self.read(1 << 20):
            pass

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


def verifying(raw: BinaryIO, digest: Digest, size: int | None, what: str) -> BinaryIO:
    """A buffered, verified view of `raw`."""
    return io.BufferedReader(VerifyingReader(raw, digest, size, what), buffer_size=1 << 16)
