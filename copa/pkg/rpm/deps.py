"""RPM dependencies as types: `name [op evr]` capabilities and rich (boolean) dependencies, and whether a
provide satisfies a require, as rpm's rpmdsCompare decides it.

A require `foo >= 1.2` is met by a provide `foo = 1.2-3` when the two version ranges overlap; a side without a
release ignores the other's release, and a missing epoch is 0 (rpm >= 4.x). Rich dependencies (rpm >= 4.13):
`(a or b)`, `(a and b)`, `(a if b [else c])`, `(a unless b [else c])`, `(a with b)`, `(a without b)`, nested.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

Compare = Callable[[str, str], int]

_OPS = {"<": 2, "<=": 2 | 8, "=": 8, "==": 8, ">=": 4 | 8, ">": 4}
LESS, GREATER, EQUAL = 2, 4, 8


@dataclass(frozen=True, slots=True)
class Dep:
    """One capability: `name`, optionally with a comparison to `evr` ("[epoch:]version[-release]")."""

    name: str
    flags: int = 0  # LESS | GREATER | EQUAL bits, as rpm's RPMSENSE_* low bits; 0 when unversioned
    evr: str = ""

    @classmethod
    def parse(cls, text: str) -> Dep:
        parts = text.split()
        if len(parts) == 3 and parts[1] in _OPS:
            return cls(parts[0], _OPS[parts[1]], parts[2])
        return cls(text.strip())

    @property
    def rich(self) -> bool:
        return self.name.startswith("(")

    def __str__(self) -> str:
        if not self.flags:
            return self.name
        op = {2: "<", 10: "<=", 8: "=", 12: ">=", 4: ">"}.get(self.flags & 14, "?")
        return f"{self.name} {op} {self.evr}"


def split_evr(evr: str) -> tuple[str, str, str]:
    """("epoch" or "", version, release or "")."""
    epoch, sep, rest = evr.partition(":")
    if not sep:
        epoch, rest = "", evr
    version, _, release = rest.partition("-")
    return epoch, version, release


def compare_evr(a: str, b: str, vercmp: Compare) -> int:
    """EVR order with rpm's rules for partial EVRs: a missing epoch is 0, a missing release on either side is
    not compared."""
    ea, va, ra = split_evr(a)
    eb, vb, rb = split_evr(b)
    ia, ib = int(ea or 0), int(eb or 0)
    if ia != ib:
        return -1 if ia < ib else 1
    c = vercmp(va, vb)
    if c or not ra or not rb:
        return c
    return vercmp(ra, rb)


def overlaps(provide: Dep, require: Dep, vercmp: Compare) -> bool:
    """Does `provide` meet `require` (same name assumed)? rpmdsCompare: unversioned sides always match; otherwise
    the ranges [op evr] must intersect."""
    if not provide.flags or not require.flags or not provide.evr or not require.evr:
        return True
    sense = compare_evr(provide.evr, require.evr, vercmp)
    p, r = provide.flags, require.flags
    if sense < 0:
        return bool(p & GREATER) or bool(r & LESS)
    if sense > 0:
        return bool(p & LESS) or bool(r & GREATER)
    return bool((p & EQUAL and r & EQUAL) or (p & LESS and r & LESS) or (p & GREATER and r & GREATER))


# --- rich dependencies -----------------------------------------------------------------------------------

_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_KEYWORDS = frozenset({"and", "or", "if", "else", "unless", "with", "without"})


@dataclass(frozen=True, slots=True)
class Rich:
    op: str  # "and", "or", "if", "unless", "with", "without", or "dep" for a leaf
    args: tuple[Rich, ...] = ()
    dep: Dep | None = None

    def leaves(self) -> list[Dep]:
        if self.dep is not None:
            return [self.dep]
        return [d for a in self.args for d in a.leaves()]


class RichSyntaxError(ValueError):
    pass


def parse_rich(text: str) -> Rich:
    tokens = _TOKEN.findall(text)
    pos = 0

    def expr() -> Rich:
        nonlocal pos
        if pos >= len(tokens):
            raise RichSyntaxError(f"rich dependency {text!r} ends early")
        if tokens[pos] == "(":
            pos += 1
            first = expr()
            if pos < len(tokens) and tokens[pos] in _KEYWORDS:
                op = tokens[pos]
                if op == "else":
                    raise RichSyntaxError(f"rich dependency {text!r}: 'else' without 'if' or 'unless'")
                args = [first]
                while pos < len(tokens) and tokens[pos] == op:
                    pos += 1
                    args.append(expr())
                    if op in ("if", "unless"):
                        if pos < len(tokens) and tokens[pos] == "else":
                            pos += 1
                            args.append(expr())
                        break
                first = Rich(op, tuple(args))
            if pos >= len(tokens) or tokens[pos] != ")":
                raise RichSyntaxError(f"rich dependency {text!r}: missing ')'")
            pos += 1
            return first
        # a leaf: name [op evr]
        name = tokens[pos]
        pos += 1
        if pos + 1 < len(tokens) and tokens[pos] in _OPS:
            dep = Dep(name, _OPS[tokens[pos]], tokens[pos + 1])
            pos += 2
        else:
            dep = Dep(name)
        return Rich("dep", dep=dep)

    tree = expr()
    if pos != len(tokens):
        raise RichSyntaxError(f"rich dependency {text!r}: unexpected {tokens[pos]!r}")
    return tree


def rich_ok(tree: Rich, met: Callable[[Dep], bool]) -> bool:
    """Evaluate a rich dependency as a Requires against what is installed (`met` for each leaf)."""
    if tree.dep is not None:
        return met(tree.dep)
    args = tree.args
    if tree.op == "and":
        return all(rich_ok(a, met) for a in args)
    if tree.op == "or":
        return any(rich_ok(a, met) for a in args)
    if tree.op == "with":  # both by the same package: approximated as both met
        return all(rich_ok(a, met) for a in args)
    if tree.op == "without":
        return rich_ok(args[0], met) and not rich_ok(args[1], met)
    if tree.op == "if":
        if rich_ok(args[1], met):
            return rich_ok(args[0], met)
        return rich_ok(args[2], met) if len(args) > 2 else True
    if tree.op == "unless":
        if not rich_ok(args[1], met):
            return rich_ok(args[0], met)
        return rich_ok(args[2], met) if len(args) > 2 else True
    return False
