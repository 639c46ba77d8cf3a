"""OpenPGP certificates trusted for a repository or a package family: the one keyring type every adapter uses
(apt's Release signatures, rpm's repomd.xml.asc and header signatures), read with pysequoia."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pysequoia

from copa.errors import IntegrityError, LocalIOError


@dataclass(frozen=True, slots=True)
class Keyring:
    """A set of OpenPGP certificates (pysequoia.Cert) we trust for some repository."""

    certs: tuple[Any, ...]
    description: str

    @classmethod
    def from_bytes(cls, data: bytes, description: str) -> Keyring:
        try:
            certs = tuple(pysequoia.Cert.split_bytes(data))
        except Exception as e:  # pysequoia raises plain Exception subclasses for any parse failure
            raise IntegrityError(f"keyring {description} is not a valid OpenPGP keyring ({first_line(e)})") from e
        return cls(certs, description)

    @classmethod
    def from_file(cls, path: Path) -> Keyring:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise LocalIOError(f"cannot read keyring {path}: {e.strerror}; check the path") from e
        return cls.from_bytes(data, str(path))

    @classmethod
    def merge(cls, keyrings: Iterable[Keyring]) -> Keyring:
        rings = list(keyrings)
        certs = tuple(c for k in rings for c in k.certs)
        return cls(certs, ", ".join(k.description for k in rings if k.certs) or "(empty keyring)")

    def restricted_to(self, fingerprints: Sequence[str]) -> Keyring:
        """Only the certificates whose primary fingerprint ends with one of `fingerprints` (key IDs allowed)."""
        wanted = [f.lower().removeprefix("0x").rstrip("!") for f in fingerprints]
        certs = tuple(c for c in self.certs if any(str(c.fingerprint).lower().endswith(w) for w in wanted))
        return Keyring(certs, f"{self.description} restricted to {' '.join(fingerprints)}")

    @property
    def fingerprints(self) -> tuple[str, ...]:
        return tuple(str(c.fingerprint) for c in self.certs)


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
