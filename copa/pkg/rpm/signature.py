"""OpenPGP signatures of rpm packages: RSAHEADER (RSA keys) or DSAHEADER (DSA, ECDSA and EdDSA keys) in the
signature header hold one binary OpenPGP v4 signature packet over the main header's bytes as in the file, magic
included (what `rpmsign --addsign` makes since rpm 4.14, and what rpm -K checks first).

The main header lists every file's digest and, since rpm 4.14, the payload's: a valid header signature, with
the digests rpmfile.read_rpm checks, vouches for the whole package. Verification is pysequoia's (Sequoia's
standard policy: weak hashes such as SHA-1 and expired or revoked keys are refused), against the trusted
distribution keys (armored RPM-GPG-KEY-* files, or binary keyrings).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pysequoia

from copa.errors import IntegrityError, LocalIOError
from copa.pkg.rpm.rpmfile import HeaderCheck, RpmHeaders
from copa.pkg.rpm.tags import Tag

KEY_HINT = "pass the distribution's RPM-GPG-KEY file with --keyring, or --allow-unsigned-repositories to skip the check"


class UnsignedPackage(IntegrityError):
    pass


class BadSignature(IntegrityError):
    pass


def _first_line(e: BaseException) -> str:
    # pysequoia's messages carry a Rust backtrace after the first line.
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


@dataclass(frozen=True, slots=True)
class RpmKeys:
    """The OpenPGP certificates (pysequoia.Cert) trusted to sign packages."""

    certs: tuple[Any, ...]
    description: str

    @classmethod
    def from_bytes(cls, data: bytes, description: str) -> RpmKeys:
        """Armored or binary, one key or several (some RPM-GPG-KEY files hold more than one)."""
        try:
            certs = tuple(pysequoia.Cert.split_bytes(data))
        except Exception as e:  # pysequoia raises plain exceptions for any parse failure
            raise IntegrityError(f"{description} is not an OpenPGP key file ({_first_line(e)})") from None
        if not certs:
            raise IntegrityError(f"{description} holds no OpenPGP key")
        return cls(certs, description)

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> RpmKeys:
        certs: list[Any] = []
        names: list[str] = []
        for path in paths:
            try:
                data = path.read_bytes()
            except OSError as e:
                raise LocalIOError(f"cannot read key file {path}: {e.strerror or e}; check the path") from None
            certs += cls.from_bytes(data, str(path)).certs
            names.append(str(path))
        return cls(tuple(certs), ", ".join(names) or "(no keys)")

    @property
    def fingerprints(self) -> tuple[str, ...]:
        return tuple(str(c.fingerprint).lower() for c in self.certs)


@dataclass(frozen=True, slots=True)
class Signer:
    certificate: str  # primary key fingerprint of the trusted certificate that verified the signature
    signing_key: str  # the (sub)key that made it


def header_signatures(headers: RpmHeaders) -> tuple[bytes, ...]:
    """The package's header-only signature packets (rpm writes one; a re-signed package may carry both)."""
    sig = headers.signature
    return tuple(b for b in (sig.bin(Tag.RSAHEADER), sig.bin(Tag.DSAHEADER)) if b)


def verify_headers(headers: RpmHeaders, keys: RpmKeys) -> Signer:
    """The signer of the package's main header among `keys`; an unsigned package, a signature by a key not in
    `keys`, or one that does not verify raise an IntegrityError naming the package."""
    what = headers.what
    packets = header_signatures(headers)
    if not packets:
        raise UnsignedPackage(f"{what} is not signed (no RSAHEADER or DSAHEADER signature); {KEY_HINT}")
    if not keys.certs:
        raise BadSignature(f"{what}: no trusted keys to check its signature with; {KEY_HINT}")
    certs = list(keys.certs)
    problems: list[str] = []
    for packet in packets:
        try:
            sig = pysequoia.Sig.from_bytes(packet)
        except Exception as e:  # not a signature packet
            problems.append(f"malformed signature ({_first_line(e)})")
            continue
        issuer = str(sig.issuer_fingerprint or sig.issuer_key_id or "?").upper()
        try:
            result = pysequoia.verify(bytes=headers.header_bytes, store=lambda _ids: certs, signature=sig)
        except Exception as e:  # no matching key, bad signature, policy (weak hash), expired key...
            problems.append(f"signature by key {issuer[-16:]} does not verify with {keys.description} "
                            f"({_first_line(e)})")
            continue
        if result.valid_sigs:
            valid = result.valid_sigs[0]
            return Signer(str(valid.certificate).lower(), str(valid.signing_key).lower())
        problems.append("no valid signature")
    raise BadSignature(f"{what}: {problems[0]}; the package is tampered or signed by an untrusted key; {KEY_HINT}")


def checker(keys: RpmKeys) -> HeaderCheck:
    """A header check for rpmfile.read_rpm: the package must be signed by one of `keys`."""

    def check(headers: RpmHeaders) -> None:
        verify_headers(headers, keys)

    return check
