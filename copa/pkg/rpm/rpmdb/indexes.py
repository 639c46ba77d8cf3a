"""Which values of an installed header rpm puts in each index, as lib/rpmdb.c's tag2index does.

Every index (sqlite table or BerkeleyDB btree) maps a key to (hnum, idx) pairs: idx is the value's position in
the tag's array. Found by installing real packages with rpm and dumping the tables (tests/test_rpmdb_sqlite.py
compares every table with what rpm -U wrote):

* every value of the tag is indexed, duplicates too (a basename twice in a package is two rows), except
* Requirename leaves out install-only prerequisites (Requires(pre)/(post), rpmlib(), ...): rpm never needs to
  find the package by them after installation; a requirement also needed at erase time stays;
* Triggername keeps only the first of equal names (one row per triggering package, whatever the trigger types).

Keys are raw bytes: strings as stored (rpm does not require UTF-8), Installtid as the 4-byte integer in the
native order of the image's machine (big-endian on s390x), Sigmd5 as its 16 raw bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from copa.pkg.rpm.header import Header
from copa.pkg.rpm.tags import Type

NAME = 1000
GROUP = 1016
PROVIDENAME = 1047
REQUIREFLAGS = 1048
REQUIRENAME = 1049
CONFLICTNAME = 1054
TRIGGERNAME = 1066
OBSOLETENAME = 1090
BASENAMES = 1117
DIRNAMES = 1118
INSTALLTID = 1128
SIGMD5 = 261
SHA1HEADER = 269
RECOMMENDNAME = 5046
SUGGESTNAME = 5049
SUPPLEMENTNAME = 5052
ENHANCENAME = 5055
FILETRIGGERNAME = 5069
TRANSFILETRIGGERNAME = 5079

# rpmds.h sense flags: a requirement only needed while installing (_INSTALL_ONLY_MASK) unless also needed to erase
# (_ERASE_ONLY_MASK; rpm 4.19's preuntrans/postuntrans bits were unused before, so one mask serves every version).
_SCRIPT_PRE, _SCRIPT_POST, _SCRIPT_PREUN, _SCRIPT_POSTUN = 1 << 9, 1 << 10, 1 << 11, 1 << 12
_PRETRANS, _POSTTRANS, _RPMLIB, _KEYRING = 1 << 7, 1 << 5, 1 << 24, 1 << 26
_PREUNTRANS, _POSTUNTRANS = 1 << 20, 1 << 21
_INSTALL_ONLY = _SCRIPT_PRE | _SCRIPT_POST | _RPMLIB | _KEYRING | _PRETRANS | _POSTTRANS
_ERASE_ONLY = _SCRIPT_PREUN | _SCRIPT_POSTUN | _PREUNTRANS | _POSTUNTRANS


@dataclass(frozen=True, slots=True)
class Index:
    name: str  # the sqlite table / BerkeleyDB file name
    tag: int
    binary: bool  # sqlite key column is BLOB (else TEXT)


# In the order rpm's dbiTags lists them (after Packages).
INDEXES = (
    Index("Name", NAME, False),
    Index("Basenames", BASENAMES, False),
    Index("Group", GROUP, False),
    Index("Requirename", REQUIRENAME, False),
    Index("Providename", PROVIDENAME, False),
    Index("Conflictname", CONFLICTNAME, False),
    Index("Obsoletename", OBSOLETENAME, False),
    Index("Triggername", TRIGGERNAME, False),
    Index("Dirnames", DIRNAMES, False),
    Index("Installtid", INSTALLTID, True),
    Index("Sigmd5", SIGMD5, True),
    Index("Sha1header", SHA1HEADER, False),
    Index("Filetriggername", FILETRIGGERNAME, False),
    Index("Transfiletriggername", TRANSFILETRIGGERNAME, False),
    Index("Recommendname", RECOMMENDNAME, False),
    Index("Suggestname", SUGGESTNAME, False),
    Index("Supplementname", SUPPLEMENTNAME, False),
    Index("Enhancename", ENHANCENAME, False),
)


class Tags(Protocol):
    """What the index layer needs of a header: a tag's values, None when the header lacks the tag.
    Strings (and string arrays, i18n strings: the first, C-locale value) as raw bytes, integers as ints, a BIN
    tag as one bytes value."""

    def index_values(self, tag: int) -> Sequence[bytes] | Sequence[int] | None: ...


@dataclass(frozen=True)
class HeaderTags:
    """A parsed header's values as the index layer takes them."""

    header: Header

    def index_values(self, tag: int) -> Sequence[bytes] | Sequence[int] | None:
        entry = self.header.entry(tag)
        if entry is None:
            return None
        if entry.type in (Type.STRING, Type.STRING_ARRAY, Type.I18NSTRING):
            # Header decodes with surrogateescape: encoding the same way gives back the stored bytes.
            found = [s.encode("utf-8", "surrogateescape") for s in self.header.strings(tag)]
            return found[:1] if entry.type == Type.I18NSTRING else found
        if entry.type == Type.BIN:
            return [self.header.bin(tag) or b""]
        return self.header.ints(tag)


def index_keys(tags: Tags, index: Index, endian: str = "<") -> list[tuple[bytes, int]]:
    """(key, idx) rows of one installed header in one index, in the order rpm adds them; integer keys in the
    byte order of the machine that runs the image's rpm (`endian`: "<" or ">")."""
    values: Sequence[bytes | int] | None = tags.index_values(index.tag)
    if not values:
        return []
    flags: Sequence[bytes] | Sequence[int] = ()
    if index.tag == REQUIRENAME:
        flags = tags.index_values(REQUIREFLAGS) or ()
    rows: list[tuple[bytes, int]] = []
    seen: set[bytes] = set()
    for i, value in enumerate(values):
        key: bytes = struct.pack(endian + "I", value & 0xFFFFFFFF) if isinstance(value, int) else value
        if index.tag == REQUIRENAME and i < len(flags):
            flag = flags[i]
            if isinstance(flag, int) and flag & _INSTALL_ONLY and not flag & _ERASE_ONLY:
                continue
        if index.tag == TRIGGERNAME:
            if key in seen:
                continue
            seen.add(key)
        rows.append((key, i))
    return rows


def all_keys(tags: Tags) -> dict[str, list[tuple[bytes, int]]]:
    return {ix.name: index_keys(tags, ix) for ix in INDEXES}
