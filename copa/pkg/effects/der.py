"""Reading DER (X.509 certificates and names): the elements of a byte string, without a full ASN.1 parser."""

from __future__ import annotations


def tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at `pos`."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """(tag, start, end) of each element in data[start:end], the content of a constructed element."""
    out = []
    while start < end:
        tag, s, e = tlv(data, start)
        out.append((tag, s, e))
        start = e
    return out
