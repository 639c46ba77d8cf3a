"""Debian version comparison, as `dpkg --compare-versions` does it.

python-debian's pure-Python comparator implements the same algorithm as dpkg's verrevcmp; the tests check it
against the real dpkg binary on version pairs with epochs, tildes and security suffixes.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from functools import total_ordering

from debian.debian_support import version_compare

from copa.errors import CopaError

# dpkg's own syntax check (lib/dpkg/parsehelp.c parseversion): epoch digits, upstream starts with a digit
# (dpkg only warns about that, so we accept it too), and only these characters anywhere.
_VERSION_RE = re.compile(r"^(?:(\d+):)?([A-Za-z0-9.+~:-]+?)(?:-([A-Za-z0-9.+~]+))?$")


class InvalidVersionError(CopaError, ValueError):
    """A string that dpkg would refuse as a version."""


@total_ordering
@dataclass(frozen=True, slots=True)
class DpkgVersion:
    epoch: int
    upstream: str
    revision: str

    @classmethod
    def parse(cls, text: str) -> DpkgVersion:
        s = text.strip()
        m = _VERSION_RE.match(s)
        if not s or m is None:
            raise InvalidVersionError(f"invalid Debian version {text!r}: expected [epoch:]upstream[-revision]")
        epoch_s, upstream, revision = m.group(1), m.group(2), m.group(3)
        if epoch_s is None and ":" in upstream:
            raise InvalidVersionError(f"invalid Debian version {text!r}: a colon needs a numeric epoch before it")
        if upstream.endswith("-"):
            raise InvalidVersionError(f"invalid Debian version {text!r}: empty revision after '-'")
        if epoch_s is not None and len(epoch_s) > 9:
            raise InvalidVersionError(f"invalid Debian version {text!r}: epoch is too big")
        return cls(int(epoch_s) if epoch_s else 0, upstream, revision or "")

    def __str__(self) -> str:
        # dpkg's vdew_nonambig: the epoch is shown when non-zero or when leaving it out would be ambiguous.
        show_epoch = self.epoch != 0 or ":" in self.upstream or ":" in self.revision
        prefix = f"{self.epoch}:" if show_epoch else ""
        suffix = f"-{self.revision}" if self.revision else ""
        return f"{prefix}{self.upstream}{suffix}"

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, DpkgVersion):
            return NotImplemented
        return compare_versions(str(self), str(other)) < 0


def normalize_version(text: str) -> str:
    """The version as dpkg writes it back (leading `0:` dropped, whitespace trimmed)."""
    return str(DpkgVersion.parse(text))


@functools.lru_cache(maxsize=1 << 16)  # a plan compares the same few thousand pairs over and over
def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as dpkg orders Debian versions a and b. Raises InvalidVersionError on a malformed one."""
    va, vb = DpkgVersion.parse(a), DpkgVersion.parse(b)
    # Feed python-debian the explicit epoch so its own parser cannot read the version differently from ours.
    r = int(version_compare(_explicit(va), _explicit(vb)))
    return (r > 0) - (r < 0)


def _explicit(v: DpkgVersion) -> str:
    return f"{v.epoch}:{v.upstream}" + (f"-{v.revision}" if v.revision else "")
