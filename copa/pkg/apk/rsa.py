"""RSA PKCS#1 v1.5 signature verification (RFC 8017 section 8.2.2), the one public-key operation apk v2 needs.

Why not `cryptography`: importing it (its Rust bindings and `serialization`, which pulls in the SSH key code) costs
about 20 ms of CPU, paid by every Alpine patch, warm or cold, for a handful of verifications of public data. A
verification is one modular exponentiation (Python's `pow`) and a byte comparison: the whole expected encoding
(0x00 0x01, 0xFF padding, 0x00, the hash's DigestInfo) is built and compared with the decrypted block, never
parsed, so a forged block with other bytes in the padding or after the digest cannot pass (the flaw of parsing
verifiers with small exponents). Only public data is handled, so timing does not matter.
`tests/test_small_patch_rsa.py` checks it against `cryptography` on keys, hashes and tampered inputs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

# DER of DigestInfo's AlgorithmIdentifier and the OCTET STRING header, by hash (RFC 8017 section 9.2, note 1).
_DIGEST_INFO = {
    "sha1": bytes.fromhex("3021300906052b0e03021a05000414"),
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
}
_RSA_ENCRYPTION = bytes.fromhex("2a864886f70d010101")  # OID 1.2.840.113549.1.1.1


class BadKey(ValueError):
    """The key is not a PEM RSA public key (the message says which)."""


@dataclass(frozen=True, slots=True)
class PublicKey:
    n: int
    e: int

    @property
    def size(self) -> int:
        """The modulus' length in bytes (k in RFC 8017)."""
        return (self.n.bit_length() + 7) // 8

    def verify(self, signature: bytes, message: bytes, algorithm: str) -> bool:
        """True if `signature` is this key's PKCS#1 v1.5 signature of `message` hashed with `algorithm`."""
        k = self.size
        # Exactly the modulus' length, as OpenSSL's RSA_verify (apk-tools) and `cryptography` require: a shorter
        # one whose missing leading bytes would be zeros is refused too.
        if len(signature) != k:
            return False
        s = int.from_bytes(signature, "big")
        if s >= self.n:
            return False
        digest_info = _DIGEST_INFO[algorithm] + hashlib.new(algorithm, message, usedforsecurity=False).digest()
        if k < len(digest_info) + 11:  # at least 8 bytes of 0xFF padding
            return False
        expected = b"\x00\x01" + b"\xff" * (k - len(digest_info) - 3) + b"\x00" + digest_info
        return pow(s, self.e, self.n).to_bytes(k, "big") == expected


def load_pem_public_key(pem: bytes) -> PublicKey:
    """A PEM `PUBLIC KEY` (SubjectPublicKeyInfo) or `RSA PUBLIC KEY` (PKCS#1). Raises BadKey with "not PEM" or
    "not RSA" in its message."""
    label, der = _pem(pem)
    if label == "RSA PUBLIC KEY":
        return _rsa_public_key(der)
    if label != "PUBLIC KEY":
        raise BadKey(f"not PEM: a {label} block, not a public key")
    spki = _Der(der).sequence()
    algorithm = spki.sequence()
    if algorithm.take(0x06) != _RSA_ENCRYPTION:
        raise BadKey("not RSA: another public-key algorithm")
    bits = spki.take(0x03)
    if not bits or bits[0] != 0:
        raise BadKey("not PEM: bad public key bits")
    return _rsa_public_key(bits[1:])


def _pem(pem: bytes) -> tuple[str, bytes]:
    text = pem.decode("ascii", "replace")
    begin = text.find("-----BEGIN ")
    head_end = text.find("-----", begin + 11) if begin >= 0 else -1
    if head_end < 0:
        raise BadKey("not PEM: no BEGIN line")
    label = text[begin + 11:head_end]
    end = text.find(f"-----END {label}-----", head_end)
    if end < 0:
        raise BadKey("not PEM: no END line")
    try:
        return label, base64.b64decode("".join(text[head_end + 5:end].split()), validate=True)
    except binascii.Error:
        raise BadKey("not PEM: bad base64") from None


def _rsa_public_key(der: bytes) -> PublicKey:
    body = _Der(der).sequence()
    n, e = body.integer(), body.integer()
    if n <= 0 or e < 3 or e % 2 == 0 or e >= n:
        raise BadKey("not PEM: an invalid RSA public key")
    return PublicKey(n, e)


class _Der:
    """A reader of the few DER forms a public key holds (definite lengths only, as DER requires)."""

    def __init__(self, data: bytes) -> None:
        self._data, self._at = data, 0

    def take(self, tag: int) -> bytes:
        d, at = self._data, self._at
        if at + 2 > len(d) or d[at] != tag:
            raise BadKey("not PEM: unexpected DER structure")
        length, at = d[at + 1], at + 2
        if length & 0x80:
            count = length & 0x7F
            if not 1 <= count <= 4 or at + count > len(d):
                raise BadKey("not PEM: bad DER length")
            length, at = int.from_bytes(d[at:at + count], "big"), at + count
        if at + length > len(d):
            raise BadKey("not PEM: truncated DER")
        self._at = at + length
        return d[at:at + length]

    def sequence(self) -> _Der:
        return _Der(self.take(0x30))

    def integer(self) -> int:
        value = self.take(0x02)
        if not value:
            raise BadKey("not PEM: empty DER integer")
        return int.from_bytes(value, "big", signed=True)
