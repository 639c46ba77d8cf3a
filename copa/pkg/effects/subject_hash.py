"""OpenSSL's subject-name hash (X509_NAME_hash_ex): the name of the `HASH.N` links in a certificate directory.

The hash is the first four bytes, little-endian, of the SHA-1 of the name's canonical encoding (x509_name_canon):
every RDN set re-encoded in DER, string values of the usual directory-string types converted to UTF8String with
leading and trailing white space dropped, inner white-space runs collapsed to one space and ASCII letters
lower-cased; other value types kept byte for byte; the outer SEQUENCE header left out. Checked against
`openssl x509 -hash` over Mozilla's whole root store."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from copa.pkg.effects.der import tlv

_SPACE = b" \t\n\v\f\r"
_UTF8 = 0x0C
_PEM = re.compile(rb"-----BEGIN (TRUSTED CERTIFICATE|CERTIFICATE|X509 CERTIFICATE)-----(.*?)-----END \1-----", re.S)
_ANY_PEM = re.compile(rb"-----BEGIN [A-Z0-9 ]+-----")
# Tags of the string types OpenSSL canonicalises (ASN1_MASK_CANON), with how each decodes. T61String is taken as
# Latin-1, as OpenSSL's ASN1_STRING_to_UTF8 does.
_CANON = {0x0C: "utf-8", 0x13: "latin-1", 0x14: "latin-1", 0x16: "latin-1", 0x1A: "latin-1",
          0x1C: "utf-32-be", 0x1E: "utf-16-be"}


def _encode(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(raw))) + raw + content


def canonical_string(raw: bytes) -> bytes:
    """asn1_string_canon over UTF-8 bytes: trim, collapse white space, lower-case ASCII only."""
    start, end = 0, len(raw)
    while start < end and raw[start] in _SPACE:
        start += 1
    while end > start and raw[end - 1] in _SPACE:
        end -= 1
    out = bytearray()
    i = start
    while i < end:
        c = raw[i]
        if c >= 0x80:
            out.append(c)
            i += 1
        elif c in _SPACE:
            out.append(0x20)
            while i < end and raw[i] in _SPACE:
                i += 1
        else:
            out.append(c + 32 if 0x41 <= c <= 0x5A else c)
            i += 1
    return bytes(out)


def _canonical_atv(data: bytes, start: int, end: int) -> bytes:
    _, oid_start, oid_end = tlv(data, start)
    oid = data[start:oid_end]
    tag, value_start, value_end = tlv(data, oid_end)
    value = data[oid_end:value_end]
    encoding = _CANON.get(tag)
    if encoding is not None:
        text = data[value_start:value_end].decode(encoding, "surrogatepass")
        value = _encode(_UTF8, canonical_string(text.encode("utf-8", "surrogatepass")))
    del oid_start
    return _encode(0x30, oid + value)


def canonical_name(name_der: bytes) -> bytes:
    """x509_name_canon's encoding of a DER Name: the canonical RDN sets, concatenated."""
    tag, pos, end = tlv(name_der, 0)
    if tag != 0x30:
        raise ValueError("a Name is a SEQUENCE")
    out = bytearray()
    while pos < end:
        set_tag, set_pos, set_end = tlv(name_der, pos)
        if set_tag != 0x31:
            raise ValueError("an RDN is a SET")
        atvs = []
        while set_pos < set_end:
            _, atv_start, atv_end = tlv(name_der, set_pos)
            atvs.append(_canonical_atv(name_der, atv_start, atv_end))
            set_pos = atv_end
        out += _encode(0x31, b"".join(sorted(atvs)))  # DER orders a SET OF by the elements' encodings
        pos = set_end
    return bytes(out)


def name_hash(name_der: bytes) -> int:
    digest = hashlib.sha1(canonical_name(name_der), usedforsecurity=False).digest()
    return int.from_bytes(digest[:4], "little")


def pem_certificates(data: bytes) -> list[bytes]:
    """The DER bytes of every CERTIFICATE block of a PEM file (also TRUSTED CERTIFICATE, as OpenSSL reads)."""
    out = []
    for m in _PEM.finditer(data):
        try:
            out.append(base64.b64decode(b"".join(m.group(2).split()), validate=True))
        except binascii.Error:
            continue
    return out


def subject_of(cert_der: bytes) -> bytes:
    """The DER subject Name of a DER certificate: tbsCertificate's sixth field (fifth without a version).

    Read directly rather than through a full X.509 parser: a root store holds certificates (negative serial
    numbers, old encodings) that strict parsers refuse, and OpenSSL hashes them all the same."""
    _, pos, _ = tlv(cert_der, 0)  # Certificate
    _, pos, end = tlv(cert_der, pos)  # tbsCertificate
    fields: list[tuple[int, int, int]] = []
    while pos < end and len(fields) < 6:
        tag, _, nxt = tlv(cert_der, pos)
        fields.append((tag, pos, nxt))
        pos = nxt
    if fields and fields[0][0] != 0xA0:
        fields.insert(0, (0xA0, 0, 0))  # v1: no explicit version
    if len(fields) < 6 or fields[5][0] != 0x30:
        raise ValueError("not an X.509 certificate")
    return cert_der[fields[5][1]:fields[5][2]]


def subject_hash(cert_der: bytes) -> int:
    return name_hash(subject_of(cert_der))


def fingerprint(cert_der: bytes) -> bytes:
    """SHA-1 of the DER certificate: how `openssl rehash` tells duplicates apart."""
    return hashlib.sha1(cert_der, usedforsecurity=False).digest()


def load_single(data: bytes) -> bytes | None:
    """The DER certificate of a file holding exactly one certificate (what `openssl rehash` links), else None.

    A file holding a CRL or a key instead, or several certificates (a bundle), gets no hash link."""
    blocks = _ANY_PEM.findall(data)
    certs = pem_certificates(data)
    if len(blocks) != 1 or len(certs) != 1:
        return None
    try:
        subject_of(certs[0])
    except (ValueError, IndexError):
        return None
    return certs[0]
