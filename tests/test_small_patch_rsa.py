"""copa.pkg.apk.rsa (PKCS#1 v1.5 verification of apk signatures) against `cryptography` as the oracle: the same keys
load to the same numbers, every signature `cryptography` makes verifies, and every altered or malformed one that
`cryptography` refuses is refused."""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from copa.pkg.apk.rsa import _DIGEST_INFO, BadKey, load_pem_public_key

HASHES = {"sha1": hashes.SHA1(), "sha256": hashes.SHA256()}


@pytest.fixture(scope="module", params=[(1024, 65537), (2048, 65537), (2048, 3), (4096, 65537)],
                ids=lambda p: f"{p[0]}-e{p[1]}")
def key(request: pytest.FixtureRequest) -> rsa.RSAPrivateKey:
    bits, e = request.param
    return rsa.generate_private_key(public_exponent=e, key_size=bits)


def oracle_verifies(private: rsa.RSAPrivateKey, signature: bytes, message: bytes, algorithm: str) -> bool:
    try:
        private.public_key().verify(signature, message, padding.PKCS1v15(), HASHES[algorithm])
        return True
    except InvalidSignature:
        return False


def pem(private: rsa.RSAPrivateKey, fmt: serialization.PublicFormat) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.PEM, fmt)


def raw_sign(private: rsa.RSAPrivateKey, block: bytes) -> bytes:
    """The private-key operation on an arbitrary block: signatures over malformed encodings."""
    numbers = private.private_numbers()
    k = (numbers.public_numbers.n.bit_length() + 7) // 8
    return pow(int.from_bytes(block, "big"), numbers.d, numbers.public_numbers.n).to_bytes(k, "big")


def test_keys_load_to_the_oracles_numbers(key: rsa.RSAPrivateKey) -> None:
    numbers = key.public_key().public_numbers()
    for fmt in (serialization.PublicFormat.SubjectPublicKeyInfo, serialization.PublicFormat.PKCS1):
        loaded = load_pem_public_key(pem(key, fmt))
        assert (loaded.n, loaded.e) == (numbers.n, numbers.e)


@pytest.mark.parametrize("algorithm", sorted(HASHES))
def test_signatures_agree_with_the_oracle(key: rsa.RSAPrivateKey, algorithm: str) -> None:
    public = load_pem_public_key(pem(key, serialization.PublicFormat.SubjectPublicKeyInfo))
    other = "sha1" if algorithm == "sha256" else "sha256"
    for size in (0, 1, 1000, 70000):
        message = os.urandom(size)
        signature = key.sign(message, padding.PKCS1v15(), HASHES[algorithm])
        flipped_sig = bytes([signature[0] ^ 0x01]) + signature[1:]
        flipped_msg = message[:-1] + bytes([message[-1] ^ 0x80]) if message else b"x"
        cases = [(signature, message, algorithm), (signature, message, other), (flipped_sig, message, algorithm),
                 (signature, flipped_msg, algorithm), (signature + b"\x00", message, algorithm),
                 (signature[1:], message, algorithm), (b"", message, algorithm)]
        for sig, msg, alg in cases:
            assert public.verify(sig, msg, alg) == oracle_verifies(key, sig, msg, alg), (size, alg)
        assert public.verify(signature, message, algorithm)


def test_malformed_encodings_are_refused_as_the_oracle_refuses(key: rsa.RSAPrivateKey) -> None:
    public = load_pem_public_key(pem(key, serialization.PublicFormat.SubjectPublicKeyInfo))
    message = b"APKINDEX"
    k = public.size
    info = _DIGEST_INFO["sha256"] + hashlib.sha256(message).digest()

    def block(prefix: bytes, tail: bytes) -> bytes:
        return prefix + b"\xff" * (k - len(prefix) - 1 - len(tail)) + b"\x00" + tail

    good = block(b"\x00\x01", info)
    blocks = {
        "well formed": good,
        "block type 2": block(b"\x00\x02", info),
        "digest info without NULL parameters": block(b"\x00\x01", bytes.fromhex("302f300b0609608648016503040201")
                                                     + bytes.fromhex("0420") + hashlib.sha256(message).digest()),
        "a zero in the padding": good[:5] + b"\x00" + good[6:],
        "trailing byte": block(b"\x00\x01", info + b"\x00"),
    }
    # The Bleichenbacher shape: the digest right after the separator, garbage after it, padding cut short.
    forged = b"\x00\x01\xff\xff\xff\xff\xff\xff\xff\xff\x00" + info
    blocks["garbage at the end"] = forged + os.urandom(k - len(forged))
    for what, em in blocks.items():
        assert len(em) == k, what
        signature = raw_sign(key, em)
        expected = oracle_verifies(key, signature, message, "sha256")
        assert public.verify(signature, message, "sha256") == expected, what
        assert expected == (em == good), what
    n = key.public_key().public_numbers().n
    assert not public.verify(n.to_bytes(k, "big"), message, "sha256")  # s >= n
    assert not oracle_verifies(key, n.to_bytes(k, "big"), message, "sha256")


def test_keys_that_are_not_rsa_or_not_pem() -> None:
    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(BadKey, match=r"^not RSA"):
        load_pem_public_key(ec_pem)
    good = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    body = good.split(b"\n")
    for bad in (b"", b"garbage", good.replace(b"PUBLIC KEY", b"CERTIFICATE"), b"\n".join(body[:3]),
                b"\n".join([body[0], body[1][:-8], *body[2:]]), good.replace(b"M", b"!", 1)):
        with pytest.raises(BadKey, match=r"^not PEM"):
            load_pem_public_key(bad)
        with pytest.raises(ValueError):  # the oracle refuses it too
            serialization.load_pem_public_key(bad)


def test_a_signature_without_its_leading_zero_byte_is_refused_as_the_oracle_refuses() -> None:
    # The integer is the same, the length is not the modulus': OpenSSL's RSA_verify (and cryptography) refuse it.
    # (Found by a CI run: the random signatures of the test above start with a zero byte about once in 100 runs.)
    private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    public = load_pem_public_key(pem(private, serialization.PublicFormat.SubjectPublicKeyInfo))
    for i in range(20000):
        message = i.to_bytes(4, "big")
        signature = private.sign(message, padding.PKCS1v15(), hashes.SHA256())
        if signature[0] == 0:
            break
    else:
        pytest.fail("no signature with a leading zero byte in 20000 tries")
    assert public.verify(signature, message, "sha256") and oracle_verifies(private, signature, message, "sha256")
    assert not oracle_verifies(private, signature[1:], message, "sha256")
    assert not public.verify(signature[1:], message, "sha256")
