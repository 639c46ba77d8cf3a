"""primary.xml as createrepo_c writes it, indexed by regular expressions: each package's name, the capabilities
it provides (its provides and its primary files) and its element's text, kept for a later parse; or no answer.

A distribution's primary is tens of thousands of <package> elements and the largest CPU cost of a cold rpm patch
on a real repository: the expat reader (`copa.pkg.rpm.repomd.iter_rows`) calls Python for every element, about 30
dependency entries a package, to make rows of which a patch reads a few hundred. The index needs far less: names
and provided capabilities. createrepo_c (and the tools built on its library: Pulp, Koji, OBS) writes one fixed
layout, so here each package is matched whole by one pattern of that layout, in C, and what the index needs is
taken from it; a package's full row is made only when it is asked for, by the expat reader over its element alone
(`copa.pkg.rpm.repomd.block_row`), in the namespace context the layout fixes.

The layout is strict and checked, not assumed: a document is read here only if every character of it fits, and
what fits is well-formed XML (fixed, balanced tags; attribute values and texts without markup and with only the
five predefined entities; no character XML forbids; strict UTF-8) whose packages the expat reader takes without
complaint (a name, a known checksum type over hex digits). Anything else (a comment, CDATA, a character reference,
single quotes, CR line ends, another attribute order, namespace or writer, malformed input) raises `NotCanonical`,
possibly after some packages, and the caller reads the document again with the expat reader, which judges it.
tests/test_rpm_primaryscan.py holds the two readings to the same packages and the same verdicts.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

_CHUNK = 1 << 20
_MAX_PACKAGE = 64 << 20  # a <package> larger than this is left to the expat reader, which streams it
# The root element as the layout has it: the namespace context a package's element is parsed in on its own.
ROOT = ('<metadata xmlns="http://linux.duke.edu/metadata/common" '
        'xmlns:rpm="http://linux.duke.edu/metadata/rpm">')


class NotCanonical(Exception):
    """The document is not in createrepo_c's layout (or not well-formed): read it with the expat reader."""


@dataclass(frozen=True, slots=True)
class Indexed:
    """One package as the index needs it: its name, the capabilities it provides (provides entries' names and
    primary's files, entities decoded) and its element's text (without the texts no row holds)."""

    name: str
    capabilities: tuple[str, ...]
    element: str


_ENTITY = r"&(?:amp|lt|gt|quot|apos);"
# An attribute value (double-quoted; no tab or newline, which a parser would turn into spaces) and a text.
_V = rf'[^"<&\t\n]*(?:{_ENTITY}[^"<&\t\n]*)*'
_T = rf"[^<&]*(?:{_ENTITY}[^<&]*)*"
_WS = r"[ \t\n]*"
_DEP_KINDS = ("provides", "requires", "conflicts", "obsoletes", "recommends", "suggests", "supplements",
              "enhances")
_ENTRY = (rf'<rpm:entry name="{_V}"(?: flags="{_V}")?(?: epoch="{_V}")?(?: ver="{_V}")?(?: rel="{_V}")?'
          rf'(?: pre="{_V}")?/>')  # attributes in createrepo_c's order, each but the name optional
_FORMAT_CHILD = "|".join((
    *(rf"<rpm:{t}>{_T}</rpm:{t}>|<rpm:{t}/>" for t in ("license", "vendor", "group", "buildhost", "sourcerpm")),
    rf'<rpm:header-range start="{_V}" end="{_V}"/>',
    *(rf"<rpm:{d}>(?:{_WS}{_ENTRY})*{_WS}</rpm:{d}>|<rpm:{d}/>" for d in _DEP_KINDS),
    rf'<file(?: type="{_V}")?>{_T}</file>',
))
# Texts no row holds, dropped from the kept element (a quarter of a distribution's primary).
_UNREAD = "".join(rf"(?:<{t}>{_T}</{t}>|<{t}/>)?{_WS}" for t in ("summary", "description", "packager", "url"))
_PACKAGE = re.compile(
    rf'{_WS}(<package type="rpm">{_WS}'
    rf"<name>({_T})</name>{_WS}"
    rf"<arch>{_T}</arch>{_WS}"
    rf'<version epoch="{_V}" ver="{_V}" rel="{_V}"/>{_WS}'
    # a checksum the expat reader's rows accept as it is written (a known type, lower-case hex)
    rf'<checksum type="(?:sha256|sha512|sha384|sha224|sha1|sha|md5)" pkgid="{_V}">[0-9a-f]+</checksum>{_WS})'
    rf"{_UNREAD}"
    rf'(<time file="{_V}" build="{_V}"/>{_WS}'
    rf'<size package="{_V}" installed="{_V}" archive="{_V}"/>{_WS}'
    rf'<location(?: xml:base="{_V}")? href="{_V}"/>{_WS}'
    rf"<format>((?:{_WS}(?:{_FORMAT_CHILD}))*){_WS}</format>{_WS}"
    r"</package>)")
_PROLOG = re.compile(
    r'(?:<\?xml version="1\.0" encoding="(?i:utf-8)"\?>)?' + _WS
    + r'<metadata xmlns="http://linux\.duke\.edu/metadata/common" xmlns:rpm="http://linux\.duke\.edu/metadata/rpm"'
    + r'(?: packages="[0-9]*")?>')
_ROOT_TAG = re.compile("<metadata[^>]*>")
_END = re.compile(rf"{_WS}</metadata>{_WS}")
# XML 1.0 forbids C0 controls but tab, newline and CR; a CR is normalised by a parser, so it is not read here.
_CONTROLS = bytes(b for b in range(0x20) if b not in b"\t\n")
# Within a matched package (so every "<" starts one of the layout's tags): the provides entries' names, the files.
_ENTRY_NAME = re.compile(r'<rpm:entry name="([^"]*)"')
_FILE = re.compile(r'<file(?: type="[^"]*")?>([^<]+)</file>')
_UNESCAPE = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&apos;": "'"}
_REF = re.compile(_ENTITY)


def _unescape(value: str) -> str:
    return _REF.sub(lambda m: _UNESCAPE[m.group()], value) if "&" in value else value


def _texts(stream: BinaryIO) -> Iterator[str]:
    """The document as strict UTF-8 text, chunk by chunk, with no character XML forbids and no "]]>" (which the
    layout never holds: a text may not, and an attribute value that does is left to the expat reader; a byte-order
    mark is left to it too)."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    first = True
    tail = ""  # (the end of the chunk before: a "]]>" across two chunks)
    try:
        while chunk := stream.read(_CHUNK):
            if (first and chunk.startswith(b"\xef\xbb\xbf")) or len(chunk.translate(None, _CONTROLS)) != len(chunk):
                raise NotCanonical
            first = False
            text = decoder.decode(chunk)
            if "\ufffe" in text or "\uffff" in text or "]]>" in tail + text[:2] or "]]>" in text:
                raise NotCanonical
            tail = (tail + text[-2:])[-2:]
            yield text
        yield decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise NotCanonical from None


def _indexed(m: re.Match[str]) -> Indexed:
    head, name, tail, body = m.group(1, 2, 3, 4)
    escaped = "&" in head or "&" in body
    # The last provides list counts, as in a row (every "<" here starts one of the layout's tags).
    full, empty = body.rfind("<rpm:provides>"), body.rfind("<rpm:provides/>")
    caps = _ENTRY_NAME.findall(body, full, body.find("</rpm:provides>", full)) if full > empty else []
    caps += _FILE.findall(body)
    if escaped:
        name, caps = _unescape(name), [_unescape(c) for c in caps]
    name = name.strip()
    if not name:
        raise NotCanonical  # (the expat reader's error)
    return Indexed(name, tuple(caps), head + tail)


def canonical_packages(stream: BinaryIO) -> Iterator[Indexed]:
    """Every rpm package of primary.xml, in document order; raises NotCanonical, possibly after some packages, when
    the document is not in the layout."""
    texts = _texts(stream)
    buffer = ""
    for text in texts:
        buffer += text
        if len(buffer) >= 4096 or _ROOT_TAG.search(buffer):
            break
    m = _PROLOG.match(buffer)
    if m is None:
        raise NotCanonical
    pos = m.end()
    while True:
        end = buffer.find("</package>", pos)
        if end < 0:
            rest = buffer[pos:]
            more = next(texts, None)
            if more is None:
                if not _END.fullmatch(rest):
                    raise NotCanonical
                return
            if len(rest) > _MAX_PACKAGE:
                raise NotCanonical
            buffer, pos = rest + more, 0
            continue
        end += len("</package>")
        m = _PACKAGE.fullmatch(buffer, pos, end)
        if m is None:
            raise NotCanonical
        yield _indexed(m)
        pos = end
