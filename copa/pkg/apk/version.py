"""apk version order and dependency constraints, as apk-tools' src/version.c defines them.

A version is digit{.digit}...{letter}{_suffix{number}}...{~hash}{-rN}. Tokens compare in turn; a digit
field with a leading zero compares as a string (Gentoo rule); pre-release suffixes (_alpha _beta _pre
_rc) sort before the bare version and post-release ones (_cvs _svn _git _hg _p) after it.
"""

from __future__ import annotations

import enum

_MASK64 = (1 << 64) - 1


class _T(enum.IntEnum):
    INITIAL_DIGIT = 0
    DIGIT = 1
    LETTER = 2
    SUFFIX = 3
    SUFFIX_NO = 4
    COMMIT_HASH = 5
    REVISION_NO = 6
    END = 7
    INVALID = 8


# Suffix ranks; NONE (5) is the pivot between pre- and post-release suffixes.
_SUFFIXES = {"alpha": 1, "beta": 2, "pre": 3, "rc": 4, "cvs": 6, "svn": 7, "git": 8, "hg": 9, "p": 10}
_SUFFIX_NONE = 5
_HEX = frozenset("0123456789abcdef")


class _Tokens:
    __slots__ = ("number", "pos", "suffix", "text", "token", "value")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.token = _T.INITIAL_DIGIT
        self.number = 0
        self.suffix = 0
        self.value = ""
        self._digits()

    def _digits(self) -> None:
        start = self.pos
        n = 0
        while self.pos < len(self.text) and self.text[self.pos].isascii() and self.text[self.pos].isdigit():
            n = (n * 10 + ord(self.text[self.pos]) - 48) & _MASK64
            self.pos += 1
        self.number = n
        self.value = self.text[start:self.pos]
        if not self.value:
            self.token = _T.INVALID

    def _span(self, allowed: frozenset[str] | None) -> str:
        start = self.pos
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if not ("a" <= c <= "z" if allowed is None else c in allowed):
                break
            self.pos += 1
        return self.text[start:self.pos]

    def next(self) -> None:
        if self.pos >= len(self.text):
            self.token = _T.END
            return
        c = self.text[self.pos]
        t = self.token
        if "a" <= c <= "z":
            if t > _T.DIGIT:
                self.token = _T.INVALID
                return
            self.value = c
            self.token = _T.LETTER
            self.pos += 1
        elif c == "." or "0" <= c <= "9":
            if c == ".":
                if t > _T.DIGIT:
                    self.token = _T.INVALID
                    return
                self.pos += 1
            if t in (_T.INITIAL_DIGIT, _T.DIGIT):
                self.token = _T.DIGIT
            elif t == _T.SUFFIX:
                self.token = _T.SUFFIX_NO
            else:
                self.token = _T.INVALID
                return
            self._digits()
        elif c == "_":
            if t > _T.SUFFIX_NO:
                self.token = _T.INVALID
                return
            self.pos += 1
            self.value = self._span(None)
            self.suffix = _SUFFIXES.get(self.value, 0)
            self.token = _T.SUFFIX if self.suffix else _T.INVALID
        elif c == "~":
            if t >= _T.COMMIT_HASH:
                self.token = _T.INVALID
                return
            self.pos += 1
            self.value = self._span(_HEX)
            self.token = _T.COMMIT_HASH if self.value else _T.INVALID
        elif c == "-":
            if t >= _T.REVISION_NO or not self.text.startswith("-r", self.pos):
                self.token = _T.INVALID
                return
            self.pos += 2
            self.token = _T.REVISION_NO
            self._digits()
        else:
            self.token = _T.INVALID


def _string_order(a: str, b: str) -> int:
    ab, bb = a.encode(), b.encode()
    return (ab > bb) - (ab < bb)


def _token_cmp(a: _Tokens, b: _Tokens) -> int:
    t = a.token
    if t == _T.DIGIT and (a.value[:1] == "0" or b.value[:1] == "0"):
        return _string_order(a.value, b.value)
    if t in (_T.DIGIT, _T.INITIAL_DIGIT, _T.SUFFIX_NO, _T.REVISION_NO):
        x, y = a.number, b.number
    elif t == _T.LETTER:
        x, y = ord(a.value[0]), ord(b.value[0])
    elif t == _T.SUFFIX:
        x, y = a.suffix, b.suffix
    else:
        return _string_order(a.value, b.value)
    return (x > y) - (x < y)


def _compare(a: str, b: str, fuzzy: bool) -> int:
    ta, tb = _Tokens(a), _Tokens(b)
    while ta.token == tb.token and ta.token < _T.END:
        r = _token_cmp(ta, tb)
        if r:
            return r
        ta.next()
        tb.next()
    if ta.token == tb.token or (tb.token == _T.END and fuzzy):
        return 0
    # Equal so far: the longer version is newer, unless what it has next is a pre-release suffix.
    if ta.token == _T.SUFFIX and ta.suffix < _SUFFIX_NONE:
        return -1
    if tb.token == _T.SUFFIX and tb.suffix < _SUFFIX_NONE:
        return 1
    if ta.token > tb.token:
        return -1
    if tb.token > ta.token:
        return 1
    return 0


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as `apk version -t a b` prints <, = or > (empty versions are equal to each other)."""
    return _compare(a, b, False)


def is_valid(version: str) -> bool:
    t = _Tokens(version)
    while t.token < _T.END:
        t.next()
    return t.token == _T.END


# Dependency operators: bit masks as apk-tools has them.
LESS, EQUAL, GREATER, FUZZY = 1, 2, 4, 8
_OPS = {"<": LESS, ">": GREATER, "=": EQUAL, "~": FUZZY | EQUAL}


def op_mask(op: str) -> int:
    mask = 0
    for c in op:
        if c not in _OPS:
            raise ValueError(f"bad version operator {op!r}")
        mask |= _OPS[c]
    return mask


def satisfies(version: str, op: str, wanted: str) -> bool:
    """Whether `version` meets the constraint `op wanted` (e.g. '>=', '1.2-r0'; '~' matches a prefix)."""
    if not op:
        return True
    mask = op_mask(op)
    r = _compare(version, wanted, bool(mask & FUZZY))
    bit = LESS if r < 0 else GREATER if r > 0 else EQUAL
    return bool(mask & bit)
