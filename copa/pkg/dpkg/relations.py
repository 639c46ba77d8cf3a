"""Debian package relationship fields (Depends, Pre-Depends, Breaks, Provides) as types.

`libc6 (>= 2.34), libssl3 (= 3.0.15-1~deb12u1) | libssl-dev, foo:any [amd64]` becomes a tuple of
clauses, each a tuple of alternatives. Architecture restrictions ([amd64]) and build profiles (<...>)
only appear in source relations; they are dropped here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_REL = re.compile(
    r"^\s*(?P<name>[a-z0-9][a-z0-9+.-]*)(?::(?P<arch>[a-z0-9-]+))?\s*"
    r"(?:\(\s*(?P<op><<|<=|=|>=|>>|<|>)\s*(?P<version>[^)\s]+)\s*\))?\s*(?:\[[^\]]*\])?\s*(?:<[^>]*>\s*)*$"
)
_OPS = {"<": "<=", ">": ">="}  # obsolete spellings, as dpkg reads them


@dataclass(frozen=True, slots=True)
class Relation:
    name: str
    arch: str = ""  # "any", "native" or an architecture
    op: str = ""
    version: str = ""

    def version_ok(self, version: str, compare: Callable[[str, str], int]) -> bool:
        if not self.op:
            return True
        c = compare(version, self.version)
        return {"<<": c < 0, "<=": c <= 0, "=": c == 0, ">=": c >= 0, ">>": c > 0}[self.op]

    def __str__(self) -> str:
        text = self.name + (f":{self.arch}" if self.arch else "")
        return text + (f" ({self.op} {self.version})" if self.op else "")


Clause = tuple[Relation, ...]


def parse_relations(text: str) -> tuple[Clause, ...]:
    clauses: list[Clause] = []
    for part in " ".join(text.split()).split(","):
        if not part.strip():
            continue
        alternatives = []
        for alt in part.split("|"):
            m = _REL.match(alt)
            if m is None:
                continue  # an unparsable alternative cannot be satisfied; dpkg would have refused the package
            op = m.group("op") or ""
            alternatives.append(Relation(m.group("name"), m.group("arch") or "", _OPS.get(op, op),
                                         m.group("version") or ""))
        if alternatives:
            clauses.append(tuple(alternatives))
    return tuple(clauses)


@dataclass(frozen=True, slots=True)
class Provided:
    name: str
    version: str  # "" when unversioned


def parse_provides(text: str) -> tuple[Provided, ...]:
    out = []
    for clause in parse_relations(text):
        for rel in clause:
            out.append(Provided(rel.name, rel.version if rel.op == "=" else ""))
    return tuple(out)
