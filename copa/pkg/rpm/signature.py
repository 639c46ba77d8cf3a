"""OpenPGP signatures of rpm packages: RSAHEADER (RSA keys) or DSAHEADER (DSA, ECDSA and EdDSA keys) in the
signature header hold one binary OpenPGP v4 signature packet over the main header's bytes as in the file, magic
included (what `rpmsign --addsign` makes since rpm 4.14, and what rpm -K checks first).

The main header lists every file's digest and, since rpm 4.14, the payload's: a valid header signature, with
the digests rpmfile.read_rpm checks, vouches for the whole package. Verification is pysequoia's, against the
trusted distribution keys (armored RPM-GPG-KEY-* files, or binary keyrings).

Sequoia's standard policy refuses a key whose self-signatures use SHA-1 (old distribution keys were made that
way), which rpm 4.18 accepts: rpm checks the package's signature with the key material and does not judge the
key's self-signatures. When Sequoia refuses, the signature is checked as rpm checks it (`_verify_as_rpm`: the v4
signature's hash over the header and its hashed part, RSA PKCS#1 v1.5 or Ed25519, by the trusted certificate's
primary key or subkey the signature names), with `cryptography`. On that path, as in rpm 4.18's own OpenPGP
code, the key's expiry and revocation are not judged, and a SHA-1 data signature counts (MD5 does not).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pysequoia
from pysequoia.packet import PacketPile

from copa.errors import IntegrityError
from copa.pkg.openpgp import Keyring
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


def key_files(paths: Iterable[Path]) -> Keyring:
    """The keys of RPM-GPG-KEY files (armored or binary, one key or several each); a file holding no key is an
    error, as it would leave nothing to verify with."""
    rings = []
    for path in paths:
        ring = Keyring.from_file(path)
        if not ring.certs:
            raise IntegrityError(f"{path} holds no OpenPGP key")
        rings.append(ring)
    return Keyring.merge(rings)


@dataclass(frozen=True, slots=True)
class Signer:
    certificate: str  # primary key fingerprint of the trusted certificate that verified the signature
    signing_key: str  # the (sub)key that made it


def header_signatures(headers: RpmHeaders) -> tuple[bytes, ...]:
    """The package's header-only signature packets (rpm writes one; a re-signed package may carry both)."""
    sig = headers.signature
    return tuple(b for b in (sig.bin(Tag.RSAHEADER), sig.bin(Tag.DSAHEADER)) if b)


def verify_headers(headers: RpmHeaders, keys: Keyring) -> Signer:
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
            signer = _verify_as_rpm(packet, headers.header_bytes, certs)
            if signer is not None:
                return signer
            problems.append(f"signature by key {issuer[-16:]} does not verify with {keys.description} "
                            f"({_first_line(e)})")
            continue
        if result.valid_sigs:
            valid = result.valid_sigs[0]
            return Signer(str(valid.certificate).lower(), str(valid.signing_key).lower())
        problems.append("no valid signature")
    raise BadSignature(f"{what}: {problems[0]}; the package is tampered or signed by an untrusted key; {KEY_HINT}")


# --- rpm's own check, for keys Sequoia's policy refuses ------------------------------------------------------

_PK_RSA = (1, 3)  # RSA, RSA sign-only
_PK_EDDSA = 22  # EdDSA (legacy, v4), Ed25519 only
_ED25519_OID = bytes.fromhex("2b06010401da470f01")
# OpenPGP hash ids -> cryptography's hash classes (by name: cryptography is imported only when this check runs,
# for a key Sequoia's policy refuses, not at every start of an rpm patch).
_HASHES = {2: "SHA1", 8: "SHA256", 9: "SHA384", 10: "SHA512", 11: "SHA224"}


def _packet_body(packet: bytes) -> bytes | None:
    """The body of one OpenPGP packet (old or new format header), None if it is not exactly one packet."""
    if not packet or not packet[0] & 0x80:
        return None
    if packet[0] & 0x40:  # new format
        first = packet[1] if len(packet) > 1 else 256
        if first < 192:
            start, length = 2, first
        elif first < 224 and len(packet) > 2:
            start, length = 3, ((first - 192) << 8) + packet[2] + 192
        elif first == 255 and len(packet) >= 6:
            start, length = 6, int.from_bytes(packet[2:6], "big")
        else:
            return None  # partial lengths never appear in a signature packet
    else:
        size = {0: 1, 1: 2, 2: 4}.get(packet[0] & 3)
        if size is None or len(packet) < 1 + size:
            return None
        start, length = 1 + size, int.from_bytes(packet[1:1 + size], "big")
    return packet[start:start + length] if len(packet) == start + length else None


def _mpis(data: bytes, count: int) -> list[bytes] | None:
    out, pos = [], 0
    for _ in range(count):
        if pos + 2 > len(data):
            return None
        n = (int.from_bytes(data[pos:pos + 2], "big") + 7) // 8
        if pos + 2 + n > len(data):
            return None
        out.append(data[pos + 2:pos + 2 + n])
        pos += 2 + n
    return out


def _subpacket_issuer(area: bytes) -> bytes:
    """The issuer key id (subpacket 16) or fingerprint's last 8 bytes (33) in a subpacket area."""
    pos = 0
    while pos < len(area):
        first = area[pos]
        if first < 192:
            length, pos = first, pos + 1
        elif first < 255 and pos + 1 < len(area):
            length, pos = ((first - 192) << 8) + area[pos + 1] + 192, pos + 2
        elif pos + 5 <= len(area):
            length, pos = int.from_bytes(area[pos + 1:pos + 5], "big"), pos + 5
        else:
            return b""
        kind, body = area[pos] & 0x7F if pos < len(area) else 0, area[pos + 1:pos + length]
        if kind == 16 and len(body) == 8:
            return body
        if kind == 33 and len(body) == 21:
            return body[-8:]
        pos += length
    return b""


def _verify_as_rpm(packet: bytes, data: bytes, certs: list[Any]) -> Signer | None:
    """A v4 signature over `data` checked with the key material alone, as rpm 4.18 checks it; None unless it
    verifies with a key of `certs` whose id the signature names."""
    body = _packet_body(packet)
    if body is None or len(body) < 6 or body[0] != 4 or body[1] != 0x00:  # v4, binary document
        return None
    pk_algo, hash_algo = body[2], body[3]
    hashed_len = int.from_bytes(body[4:6], "big")
    hashed_end = 6 + hashed_len
    if len(body) < hashed_end + 2:
        return None
    unhashed_len = int.from_bytes(body[hashed_end:hashed_end + 2], "big")
    rest = hashed_end + 2 + unhashed_len
    if len(body) < rest + 2 or hash_algo not in _HASHES:
        return None
    issuer = _subpacket_issuer(body[6:hashed_end]) or _subpacket_issuer(body[hashed_end + 2:rest])
    left16, signature = body[rest:rest + 2], body[rest + 2:]
    from cryptography.hazmat.primitives import hashes

    digest = hashes.Hash(getattr(hashes, _HASHES[hash_algo])())
    digest.update(data)
    digest.update(body[:hashed_end])
    digest.update(b"\x04\xff" + struct.pack(">I", hashed_end))
    value = digest.finalize()
    if value[:2] != left16 or not issuer:
        return None
    for cert in certs:
        for key in _key_packets(cert):
            fingerprint = hashlib.sha1(b"\x99" + struct.pack(">H", len(key)) + key, usedforsecurity=False).digest()
            if fingerprint[-8:] == issuer and _check(key, pk_algo, hash_algo, value, signature):
                return Signer(str(cert.fingerprint).lower(), fingerprint.hex())
    return None


def _key_packets(cert: Any) -> list[bytes]:
    try:
        return [bytes(p.body) for p in PacketPile.from_bytes(bytes(cert))
                if str(p.tag) in ("Tag.PublicKey", "Tag.PublicSubkey")]
    except Exception:  # a certificate pysequoia cannot split into packets offers no key to check with
        return []


def _check(key: bytes, pk_algo: int, hash_algo: int, value: bytes, signature: bytes) -> bool:
    """Whether `signature` (the packet's MPIs) over the digest `value` verifies with the v4 key packet body."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    if len(key) < 6 or key[0] != 4 or (key[5] != pk_algo and not (key[5] in _PK_RSA and pk_algo in _PK_RSA)):
        return False
    material = key[6:]
    try:
        if pk_algo in _PK_RSA:
            numbers = _mpis(material, 2)
            sig = _mpis(signature, 1)
            if numbers is None or sig is None:
                return False
            n, e = (int.from_bytes(x, "big") for x in numbers)
            public = rsa.RSAPublicNumbers(e, n).public_key()
            raw = sig[0].rjust((n.bit_length() + 7) // 8, b"\0")
            public.verify(raw, value, padding.PKCS1v15(), Prehashed(getattr(hashes, _HASHES[hash_algo])()))
            return True
        if pk_algo == _PK_EDDSA:
            oid_len = material[0] if material else 0
            if material[1:1 + oid_len] != _ED25519_OID:
                return False
            point = _mpis(material[1 + oid_len:], 1)
            rs = _mpis(signature, 2)
            if point is None or rs is None or len(point[0]) != 33 or point[0][0] != 0x40:
                return False
            Ed25519PublicKey.from_public_bytes(point[0][1:]).verify(
                rs[0].rjust(32, b"\0") + rs[1].rjust(32, b"\0"), value)
            return True
    except (InvalidSignature, ValueError):
        return False
    return False


def checker(keys: Keyring) -> HeaderCheck:
    """A header check for rpmfile.read_rpm: the package must be signed by one of `keys`."""

    def check(headers: RpmHeaders) -> None:
        verify_headers(headers, keys)

    return check
