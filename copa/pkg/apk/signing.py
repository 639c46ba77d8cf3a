"""apk v2 signatures: a first gzip member holding `.SIGN.RSA.<key>` (SHA-1) or `.SIGN.RSA256.<key>` (SHA-256),
a PKCS#1 v1.5 signature over the raw compressed bytes of the gzip member(s) that follow it.

The key is found by file name, as apk-tools does: /etc/apk/keys/<key> of the image, or a --keyring file of
that name.
"""

from __future__ import annotations

import io
import tarfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from copa.errors import IntegrityError, LocalIOError
from copa.pkg.apk.rsa import BadKey, PublicKey, load_pem_public_key

KEYS_DIR = "etc/apk/keys"
_SIGN_PREFIXES = ((".SIGN.RSA256.", "sha256"), (".SIGN.RSA.", "sha1"))


@dataclass(frozen=True, slots=True)
class Signature:
    key_name: str
    algorithm: str  # "sha1" | "sha256"
    value: bytes


@dataclass(frozen=True)
class Keys:
    """Trusted RSA public keys by file name."""

    by_name: Mapping[str, bytes]

    @classmethod
    def from_image(cls, files: Mapping[str, bytes]) -> Keys:
        """From the image's /etc/apk/keys (`files` as View.under(KEYS_DIR) returns them)."""
        return cls({path.rsplit("/", 1)[-1]: content for path, content in files.items()})

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> Keys:
        out: dict[str, bytes] = {}
        for p in paths:
            try:
                out[p.name] = p.read_bytes()
            except OSError as e:
                raise LocalIOError(f"cannot read --keyring {p}: {e.strerror}; pass an RSA public key file") from None
        return cls(out)

    def public_key(self, name: str, what: str) -> PublicKey | None:
        pem = self.by_name.get(name)
        if pem is None:
            return None
        try:
            return load_pem_public_key(pem)
        except BadKey as e:
            if str(e).startswith("not RSA"):
                raise IntegrityError(f"{what}: trusted key {name} is not an RSA key; apk v2 signatures need RSA") \
                    from None
            raise IntegrityError(f"{what}: trusted key {name} is not a PEM public key; fix the keyring") from None


def split_members(data: bytes, count: int, what: str) -> tuple[list[bytes], int]:
    """The raw bytes of the first `count` gzip members of `data`, and the offset where the rest begins."""
    members: list[bytes] = []
    offset = 0
    for _ in range(count):
        if offset >= len(data):
            raise IntegrityError(f"{what}: has {len(members)} gzip segments, expected {count}; the file is corrupt")
        d = zlib.decompressobj(wbits=31)
        try:
            d.decompress(data[offset:], 0)
        except zlib.error as e:
            raise IntegrityError(f"{what}: bad gzip data ({e}); the file is corrupt") from None
        if not d.eof:
            raise IntegrityError(f"{what}: gzip segment {len(members) + 1} is truncated; the file is corrupt")
        end = len(data) - len(d.unused_data)
        members.append(data[offset:end])
        offset = end
    return members, offset


def gunzip(member: bytes, what: str, limit: int = 256 << 20) -> bytes:
    d = zlib.decompressobj(wbits=31)
    try:
        out = d.decompress(member, limit)
    except zlib.error as e:
        raise IntegrityError(f"{what}: bad gzip data ({e}); the file is corrupt") from None
    if d.unconsumed_tail:
        raise IntegrityError(f"{what}: decompresses to more than {limit} bytes; refusing it")
    return out


def tar_members(data: bytes, what: str) -> dict[str, bytes]:
    """Regular files of a (possibly unterminated, as apk cuts them) tar held in memory."""
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for m in tar:
                if m.isreg():
                    f = tar.extractfile(m)
                    out[m.name] = f.read() if f is not None else b""
    except tarfile.TarError as e:
        raise IntegrityError(f"{what}: bad tar data ({e}); the file is corrupt") from None
    return out


def find_signature(members: Mapping[str, bytes]) -> Signature | None:
    for name, value in members.items():
        for prefix, algorithm in _SIGN_PREFIXES:
            if name.startswith(prefix):
                return Signature(name[len(prefix):], algorithm, value)
    return None


def verify(signature: Signature | None, signed: bytes, keys: Keys, allow_unsigned: bool, what: str) -> bool:
    """True if a trusted key verified `signed`; False if unverified but allowed; IntegrityError otherwise."""
    if signature is None:
        if allow_unsigned:
            return False
        raise IntegrityError(f"{what}: is not signed; pass --allow-unsigned only for a repository you trust")
    key = keys.public_key(signature.key_name, what)
    if key is None:
        if allow_unsigned:
            return False
        raise IntegrityError(
            f"{what}: signed by {signature.key_name}, which is not a trusted key; add it with --keyring FILE "
            "(named as the key)"
        )
    if not key.verify(signature.value, signed, signature.algorithm):
        raise IntegrityError(
            f"{what}: signature by {signature.key_name} does not verify; the repository or mirror serves "
            "corrupt or tampered content"
        )
    return True
