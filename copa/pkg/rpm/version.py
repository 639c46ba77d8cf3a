"""RPM version order, as rpm 4.18's rpmvercmp() and rpmverCmp() define it.

`rpmvercmp` compares one field (a version or a release): the strings are cut into runs of ASCII digits and
runs of ASCII letters, everything else only separating them. Digit runs compare as numbers (leading zeros
dropped, the longer run wins), letter runs bytewise, and a digit run beats a letter run. `~` sorts before
anything, even the end of the string (1.0~rc1 < 1.0); `^` sorts after the end but before any other segment
(1.0 < 1.0^post1 < 1.0.1). When every segment matched, the string with something left over wins.

`compare_versions` compares "[epoch:]version[-release]" strings as Trivy and rpm print them (1:1.1.1k-4.el8):
epoch first (missing = 0), then version, then release; a missing release sorts below any release, as with
rpm's `rpm.ver()` objects. (Whether a dependency is met, where a missing release matches any, is deps.py's.)
"""

from __future__ import annotations

from dataclasses import dataclass

_DIGITS = frozenset(b"0123456789")
_LETTERS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_ALNUM = _DIGITS | _LETTERS
_TILDE, _CARET = ord("~"), ord("^")


def rpmvercmp(a: str, b: str) -> int:
    """-1, 0 or 1 as `a` sorts before, with, or after `b` (one version or release field)."""
    if a == b:
        return 0
    # rpm works on C strings: bytes, ASCII-only classes, strcmp for letter runs.
    one, two = a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape")
    i = j = 0
    n1, n2 = len(one), len(two)
    while i < n1 or j < n2:
        while i < n1 and one[i] not in _ALNUM and one[i] not in (_TILDE, _CARET):
            i += 1
        while j < n2 and two[j] not in _ALNUM and two[j] not in (_TILDE, _CARET):
            j += 1
        c1 = one[i] if i < n1 else 0
        c2 = two[j] if j < n2 else 0
        if c1 == _TILDE or c2 == _TILDE:
            if c1 != _TILDE:
                return 1
            if c2 != _TILDE:
                return -1
            i, j = i + 1, j + 1
            continue
        if c1 == _CARET or c2 == _CARET:
            if not c1:
                return -1
            if not c2:
                return 1
            if c1 != _CARET:
                return 1
            if c2 != _CARET:
                return -1
            i, j = i + 1, j + 1
            continue
        if not (c1 and c2):
            break
        # The segment's type is the first string's: the second one's run of that type may be empty.
        kind = _DIGITS if c1 in _DIGITS else _LETTERS
        e1, e2 = i, j
        while e1 < n1 and one[e1] in kind:
            e1 += 1
        while e2 < n2 and two[e2] in kind:
            e2 += 1
        if e2 == j:
            return 1 if kind is _DIGITS else -1  # a number is newer than letters
        s1, s2 = one[i:e1], two[j:e2]
        if kind is _DIGITS:
            s1, s2 = s1.lstrip(b"0"), s2.lstrip(b"0")
            if len(s1) != len(s2):
                return 1 if len(s1) > len(s2) else -1
        if s1 != s2:
            return 1 if s1 > s2 else -1
        i, j = e1, e2
    if i >= n1 and j >= n2:
        return 0
    return -1 if i >= n1 else 1


@dataclass(frozen=True, slots=True)
class EVR:
    epoch: int  # 0 when the string has none
    version: str
    release: str | None  # None when the string has none

    @classmethod
    def parse(cls, text: str) -> EVR:
        """Split as rpm's parseEVR does: an epoch is the leading digits when a ':' follows them (any other ':'
        stays in the version), the release follows the last '-' (neither a version nor a release holds one)."""
        s = text.strip()
        epoch = 0
        digits = len(s) - len(s.lstrip("0123456789"))
        if s[digits:digits + 1] == ":":
            epoch = int(s[:digits] or "0")
            s = s[digits + 1:]
        version, dash, release = s.rpartition("-")
        if not dash:
            return cls(epoch, s, None)
        return cls(epoch, version, release)

    def __str__(self) -> str:
        text = f"{self.epoch}:{self.version}" if self.epoch else self.version
        return text if self.release is None else f"{text}-{self.release}"


def compare_evr(a: EVR, b: EVR) -> int:
    if a.epoch != b.epoch:
        return -1 if a.epoch < b.epoch else 1
    rc = rpmvercmp(a.version, b.version)
    if rc:
        return rc
    if a.release is None or b.release is None:
        # A missing release sorts below any release, even an empty one or "~" (rpm's rpmverCmp).
        return (b.release is None) - (a.release is None)
    return rpmvercmp(a.release, b.release)


def compare_versions(a: str, b: str) -> int:
    """The order of two "[epoch:]version[-release]" strings, as `rpm.ver(a) < rpm.ver(b)` decides it."""
    if a == b:
        return 0
    return compare_evr(EVR.parse(a), EVR.parse(b))
