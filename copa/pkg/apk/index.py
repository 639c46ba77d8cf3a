"""APKINDEX.tar.gz: a signature gzip member, then one member holding DESCRIPTION and APKINDEX.

APKINDEX is a list of records separated by blank lines, one `X:value` line per field (the letters
apk-tools' apk_pkg_write_index_header writes). Records are parsed into `ApkRecord`; the raw lines are
kept so the installed database can be written with exactly the text the repository has.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from copa.errors import IntegrityError
from copa.pkg.apk.signing import Keys, find_signature, gunzip, split_members, tar_members, verify
from copa.pkg.apk.version import satisfies

_DEP_OPS = "<>=~"


@dataclass(frozen=True, slots=True)
class Dependency:
    name: str
    op: str = ""  # "", "<", "<=", "=", ">=", ">", "~", "><" (checksum)
    version: str = ""
    conflict: bool = False
    tag: str = ""  # name@tag pins to a tagged repository

    def matches(self, provided_version: str | None) -> bool:
        """Whether a package/provides entry of that version satisfies the version part (conflicts aside)."""
        if not self.op:
            return True
        if provided_version is None or self.op == "><":
            return self.op == "><"
        return satisfies(provided_version, self.op, self.version)

    def __str__(self) -> str:
        tag = f"@{self.tag}" if self.tag else ""
        return f"{'!' if self.conflict else ''}{self.name}{tag}{self.op}{self.version}"


# A dependency word: the name (up to the first operator character), the run of operator characters, the version.
_DEPENDENCY = re.compile(f"([^{_DEP_OPS}]*)([{_DEP_OPS}]*)(.*)", re.DOTALL)
# Parsed words by their text: an index repeats the same few thousand words (so:libc.musl-x86_64.so.1, /bin/sh) in
# tens of thousands of records, and a Dependency is immutable, so one object serves them all.
_PARSED: dict[str, Dependency] = {}
_PARSED_MAX = 1 << 16


def parse_dependency(word: str) -> Dependency:
    known = _PARSED.get(word)
    if known is not None:
        return known
    conflict = word.startswith("!")
    m = _DEPENDENCY.fullmatch(word[1:] if conflict else word)
    assert m is not None  # every string matches
    name, op, version = m.groups()
    name, _, tag = name.partition("@")
    if not name or (op and not version) or (version and not op):
        raise ValueError(f"bad apk dependency {word!r}")
    dep = Dependency(name, op, version, conflict, tag)
    if len(_PARSED) < _PARSED_MAX:
        _PARSED[word] = dep
    return dep


def parse_dependencies(text: str) -> tuple[Dependency, ...]:
    return tuple(map(parse_dependency, text.split()))


@dataclass(frozen=True, slots=True)
class ApkRecord:
    """One package of an index (or of the installed database's header). One read from an index may have only its
    name, version, arch, provides, text and repository set at first; the other fields are read from its text when
    first asked for (`parse_index`, `_complete`)."""

    checksum: str  # C: "Q1" + base64(sha1 of the control segment's gzip bytes)
    name: str  # P:
    version: str  # V:
    arch: str = ""  # A:
    size: int = 0  # S: the .apk file's size
    installed_size: int = 0  # I:
    description: str = ""  # T:
    url: str = ""  # U:
    license: str = ""  # L:
    origin: str = ""  # o:
    maintainer: str = ""  # m:
    build_time: int = 0  # t:
    commit: str = ""  # c:
    depends: tuple[Dependency, ...] = ()  # D:
    provides: tuple[Dependency, ...] = ()  # p:
    install_if: tuple[Dependency, ...] = ()  # i:
    provider_priority: int | None = None  # k:
    # The record's text ("X:value" lines) as the index has it: one string, where the (field, value) pairs `lines`
    # gives were ~1 KB of tuples a record (25 000 records in main and community; only the chosen ones' are read).
    text: str = ""
    repository: str = ""  # base URL of the repository it came from ("" for the installed database)

    @property
    def lines(self) -> tuple[tuple[str, str], ...]:
        """The record's (field, value) lines in order (lines without a field ignored, as apk does)."""
        return tuple(_FIELD_LINE.findall(self.text))

    @property
    def identity(self) -> bytes:
        """The raw package hash C: encodes (sha1 for 'Q1')."""
        return decode_hash(self.checksum)

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.apk"

    def provided(self) -> Iterator[tuple[str, str | None]]:
        """(name, version or None) for the package itself and each p: entry."""
        yield self.name, self.version
        for p in self.provides:
            yield p.name, p.version or None


def decode_hash(text: str) -> bytes:
    """apk's 'Q1<base64 sha1>' / 'Q2<base64 sha256>' encoding, or plain hex, to raw bytes."""
    if text.startswith(("Q1", "Q2")):
        try:
            return base64.b64decode(text[2:], validate=True)
        except ValueError:
            raise IntegrityError(f"bad apk checksum {text!r}; the index is corrupt") from None
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise IntegrityError(f"bad apk checksum {text!r}; the index is corrupt") from None


def encode_hash(raw: bytes) -> str:
    prefix = "Q1" if len(raw) == 20 else "Q2"
    return prefix + base64.b64encode(raw).decode()


def record_from_lines(lines: list[tuple[str, str]], repository: str = "", text: str | None = None) -> ApkRecord:
    """The record of `lines`; `text`: the text they were read from, when there is one (else it is written)."""
    f = dict(reversed(lines))  # the first line of a field wins
    if "P" not in f or "V" not in f:
        raise ValueError("record without P: or V:")
    return ApkRecord(
        checksum=f.get("C", ""), name=f["P"], version=f["V"], arch=f.get("A", ""),
        size=int(f.get("S", "0") or 0), installed_size=int(f.get("I", "0") or 0), description=f.get("T", ""),
        url=f.get("U", ""), license=f.get("L", ""), origin=f.get("o", ""), maintainer=f.get("m", ""),
        build_time=int(f.get("t", "0") or 0), commit=f.get("c", ""),
        depends=parse_dependencies(f.get("D", "")), provides=parse_dependencies(f.get("p", "")),
        install_if=parse_dependencies(f.get("i", "")),
        provider_priority=int(f["k"]) if f.get("k") else None,
        text=text if text is not None else format_record(lines), repository=repository,
    )


# A field line: one character, a colon, the value (to the end of the line).
_FIELD_LINE = re.compile(r"^([^\n]):([^\n]*)", re.MULTILINE)


def split_records(text: str) -> Iterator[list[tuple[str, str]]]:
    """Blank-line separated blocks of `X:value` lines (a line without 'X:' is ignored, as apk does)."""
    for block, _chunk in _blocks(text):
        yield block


def _blocks(text: str) -> Iterator[tuple[list[tuple[str, str]], str]]:
    """Each record's lines, with the text they were read from."""
    for chunk in text.split("\n\n"):
        # (A chunk may start with the newlines of a longer run of blank lines: they are empty lines, ignored.)
        block: list[tuple[str, str]] = _FIELD_LINE.findall(chunk)
        if block:
            yield block, chunk


def parse_index(text: str, repository: str = "", what: str = "APKINDEX") -> list[ApkRecord]:
    """Every record of an index. Main and community hold ~25 000, of which a patch looks at a few hundred: a record
    that cannot be refused (`_plain`) is made with only what every record is asked for (name, version, arch,
    provides) and the rest is read from its text on first use (`_complete`); any other is read whole, so the first
    bad record is the error it always was."""
    out = []
    for n, (block, chunk) in enumerate(_blocks(text), 1):
        f = dict(reversed(block))  # the first line of a field wins
        if "P" in f and "V" in f and _plain(f):
            out.append(_indexed(f, chunk, repository))
            continue
        try:
            out.append(record_from_lines(block, repository, chunk))
        except ValueError as e:
            raise IntegrityError(f"{what}: record {n} is malformed ({e}); the index is corrupt") from None
    return out


# A dependency word parse_dependency takes: a name before any @tag, and an operator only with a version after it;
# its parts as parse_dependency finds them (conflict mark, name, tag, operator, version). A leading "!" is always the
# conflict mark (possessive: never given back to the name, as parse_dependency strips it before reading the name).
_WORD = r"(!?+)([^<>=~@\s]+)(?:@([^<>=~\s]*))?(?:([<>=~]+)([^<>=~\s]\S*))?"
_WORD_PLAIN = re.sub(r"\((?!\?)", "(?:", _WORD)
_WORDS = re.compile(rf"\s*(?:{_WORD_PLAIN}(?:\s+{_WORD_PLAIN})*)?\s*")
_WORD_PARTS = re.compile(_WORD)


def _plain(f: dict[str, str]) -> bool:
    """Whether record_from_lines takes these fields as they are: the numbers plain decimal digits (or empty) and
    every dependency word one parse_dependency takes. (int() takes more, such as "+5": such a record is read whole,
    which decides.)"""
    get = f.get
    for key in ("S", "I", "t", "k"):
        value = get(key)
        if value and not value.isdecimal():
            return False
    words = _WORDS.fullmatch
    for key in ("D", "p", "i"):  # (a loop, not all() over a generator: this runs for every record of an index)
        value = get(key)
        if value is not None and words(value) is None:
            return False
    return True


# The fields a record read from an index gets on first use (all but those every record is asked for).
_LATER = ("checksum", "size", "installed_size", "description", "url", "license", "origin", "maintainer",
          "build_time", "commit", "depends", "install_if", "provider_priority")


def _indexed(f: dict[str, str], text: str, repository: str) -> ApkRecord:
    record: ApkRecord = object.__new__(ApkRecord)
    put = object.__setattr__  # (a frozen record is filled the way its own __init__ fills it)
    put(record, "name", f["P"])
    put(record, "version", f["V"])
    put(record, "arch", f.get("A", ""))
    # The provides, which every record is asked for: their words split by one pattern (they passed `_plain`), the
    # same Dependency values parse_dependency makes (findall gives "" for a part a word does not have).
    provides = f.get("p")
    put(record, "provides", tuple([Dependency(name, op, version, conflict == "!", tag)
                                   for conflict, name, tag, op, version in _WORD_PARTS.findall(provides)])
        if provides else ())
    put(record, "text", text)
    put(record, "repository", repository)
    return record


def _complete(record: ApkRecord, name: str) -> Any:
    """`__getattr__` of ApkRecord, called only for a field not yet set (one of _LATER, on a record from
    `_indexed`): every such field read from the record's text as record_from_lines reads it (which cannot fail:
    the fields passed `_plain`). Two threads doing this at once set the same values."""
    if name not in _LATER:
        raise AttributeError(name)
    text = object.__getattribute__(record, "text")
    whole = record_from_lines(_FIELD_LINE.findall(text), object.__getattribute__(record, "repository"), text)
    for field_name in _LATER:
        object.__setattr__(record, field_name, object.__getattribute__(whole, field_name))
    return object.__getattribute__(whole, name)


# Set after the class is made, not in its body, so that type checkers still refuse attributes it does not have.
setattr(ApkRecord, "__getattr__", _complete)  # noqa: B010


def format_record(lines: Iterable[tuple[str, str]]) -> str:
    return "".join(f"{k}:{v}\n" for k, v in lines)


@dataclass(frozen=True)
class RepositoryIndex:
    url: str  # repository base URL (packages are at <url>/<arch>/<name>-<version>.apk)
    description: str
    records: tuple[ApkRecord, ...]
    signed_by: str  # key name, "" if accepted unsigned


def read_apkindex(data: bytes, keys: Keys, allow_unsigned: bool, url: str, what: str) -> RepositoryIndex:
    """Verify and parse an APKINDEX.tar.gz held in memory (indexes are a few MB at most)."""
    first, _ = split_members(data, 1, what)
    first_files = tar_members(gunzip(first[0], what), what)
    signature = find_signature(first_files)
    # An unsigned index is just the gzip stream(s) holding DESCRIPTION and APKINDEX.
    signed = data[len(first[0]):] if signature is not None else data
    trusted = verify(signature, signed, keys, allow_unsigned, what)
    # The index proper may span several gzip members (concatenated streams are one tar).
    files = tar_members(_gunzip_all(signed, what), what)
    if "APKINDEX" not in files:
        raise IntegrityError(f"{what}: has no APKINDEX file; is the URL an apk repository?")
    text = files["APKINDEX"].decode("utf-8", "replace")
    description = files.get("DESCRIPTION", b"").decode("utf-8", "replace").strip()
    return RepositoryIndex(url, description, tuple(parse_index(text, url, what)),
                           signature.key_name if signature is not None and trusted else "")


def _gunzip_all(data: bytes, what: str) -> bytes:
    out = bytearray()
    rest = data
    while rest:
        members, offset = split_members(rest, 1, what)
        out += gunzip(members[0], what)
        rest = rest[offset:]
    return bytes(out)
