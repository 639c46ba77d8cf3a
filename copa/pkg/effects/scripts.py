"""The commands a maintainer script runs, read (never run) from its text: which of them copa's effects reproduce,
and which are left undone. A rough shell reader: it knows line continuations, comments, here-documents, command
separators, shell keywords and function definitions, which is what package scripts are made of."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

_KEYWORDS = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "for", "in", "case", "esac", "!",
             "{", "}", "time", "exec", "function", "select", "[[", "]]", ";;", "nohup", "command", "env"}
# Builtins and utilities that only compute, print or test: they change no file of the image.
_QUIET = {"set", "echo", "printf", "test", "[", "true", "false", "exit", "return", "local", "export", "shift", ":",
          ".", "source", "read", "unset", "trap", "cd", "eval", "break", "continue", "readonly", "umask", "wait",
          "type", "hash", "getopts", "which", "grep", "egrep", "fgrep", "sed", "awk", "cut", "tr", "sort", "uniq",
          "head", "tail", "cat", "basename", "dirname", "readlink", "realpath", "stat", "id", "getent", "dpkg",
          "dpkg-query", "dpkg-divert", "dpkg-maintscript-helper", "cmp", "diff", "wc", "expr", "seq", "uname",
          "sleep", "logger", "md5sum", "sha256sum", "find", "ls", "pidof", "ps", "debconf-escape"}
_DEBCONF = re.compile(r"^db_[a-z_]+$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_FUNCTION = re.compile(r"^\s*(?:function\s+)?([A-Za-z_][A-Za-z0-9_-]*)\s*\(\s*\)")
_HEREDOC = re.compile(r"<<-?\s*['\"]?([A-Za-z_][A-Za-z0-9_]*)['\"]?")
_REDIRECT = re.compile(r"\d*(>>|>&|<&|>\||<>|>|<)\s*&?[^\s;&|()]*")
_NAME = re.compile(r"^[A-Za-z_./][A-Za-z0-9_.+/-]*$")
_CASE_PATTERN = re.compile(r"^\(?[^()\s;]+(\s*\|\s*[^()\s;]+)*\)")


@dataclass(frozen=True, slots=True)
class Command:
    name: str  # the program, as written
    argv: tuple[str, ...]  # its words as far as they could be split (quotes removed); variables left as written
    line: str  # the logical line it was read from


def logical_lines(text: str) -> list[str]:
    """Lines with continuations joined, comments and here-document bodies dropped."""
    out: list[str] = []
    pending = ""
    heredoc: str | None = None
    for raw in text.splitlines():
        if heredoc is not None:
            if raw.strip() == heredoc:
                heredoc = None
            continue
        line = pending + raw
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        m = _HEREDOC.search(line)
        if m is not None:
            heredoc = m.group(1)
            line = line[:m.start()]
        stripped = _strip_comment(line).strip()
        if stripped:
            out.append(stripped)
    return out


def _strip_comment(line: str) -> str:
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


@functools.lru_cache(maxsize=512)
def commands(text: str) -> tuple[Command, ...]:
    """Every simple command a script can run, in text order (both branches of every test included). Kept per text:
    each effect asks about the same scripts (four to five parses of every script made this a third of the effects'
    time in a Debian patch)."""
    lines = logical_lines(text)
    functions = {m.group(1) for line in lines if (m := _FUNCTION.match(line))}
    out: list[Command] = []
    for line in lines:
        body = _REDIRECT.sub(" ", _CASE_PATTERN.sub("", _FUNCTION.sub("", line)))
        for segment in _segments(body):
            words = _words(segment)
            while words and (words[0] in _KEYWORDS or _ASSIGNMENT.match(words[0])):
                if words[0] in ("for", "case", "select"):
                    words = []  # `for x in ...` / `case $1 in`: a list, not a command
                    break
                words = words[1:]
            if not words or words[0].endswith(")") or words[0] in functions:
                continue
            out.append(Command(words[0], tuple(words[1:]), line))
    return tuple(out)


def _segments(line: str) -> list[str]:
    """The line cut at command separators (; & | && || ( ) ` $( ) outside quotes."""
    out: list[str] = []
    current: list[str] = []
    quote = ""
    for ch in line:
        if quote:
            current.append(ch)
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            current.append(ch)
        elif ch in ";&|()`":
            text = "".join(current)
            out.append(text[:-1] if text.endswith("$") else text)
            # What follows a closing parenthesis continues the command that held the $(...) (its arguments).
            current = ["\0"] if ch == ")" else []
        else:
            current.append(ch)
    out.append("".join(current))
    return [segment for segment in out if not segment.startswith("\0")]


# The words shlex.split(segment, posix=True) gives, found with regular expressions: shlex's character-by-character
# reader was the largest cost of reproducing effects. A word is a run of unquoted characters, 'single-quoted' text,
# "double-quoted" text (where a backslash escapes only " and itself) and backslash escapes, up to shlex's whitespace
# (space, tab, CR, LF). tests/test_effects.py compares the two on generated text.
_SHLEX_WORD = re.compile(r"""(?:[^ \t\r\n'"\\]+|'[^']*'|"(?:[^"\\]|\\.)*"|\\.)+""", re.S)
_SHLEX_PART = re.compile(r"""[^'"\\]+|'([^']*)'|"((?:[^"\\]|\\.)*)"|\\(.)""", re.S)
_DQ_ESCAPE = re.compile(r'\\([\\"])')
_SHLEX_BLANKS = re.compile(r"[ \t\r\n]*")


def _words(segment: str) -> list[str]:
    words = []
    at = _SHLEX_BLANKS.match(segment).end()  # type: ignore[union-attr]  # matches the empty string at least
    while at < len(segment):
        m = _SHLEX_WORD.match(segment, at)
        if m is None:
            return segment.split()  # an unclosed quote or a final backslash: shlex raises ValueError
        words.append(_unquote(m.group()))
        at = _SHLEX_BLANKS.match(segment, m.end()).end()  # type: ignore[union-attr]
    return words


def _unquote(word: str) -> str:
    if "'" not in word and '"' not in word and "\\" not in word:
        return word
    out = []
    for m in _SHLEX_PART.finditer(word):
        single, double, escaped = m.groups()
        if single is not None:
            out.append(single)
        elif double is not None:
            out.append(_DQ_ESCAPE.sub(r"\1", double))
        elif escaped is not None:
            out.append(escaped)
        else:
            out.append(m.group())
    return "".join(out)


_TRIVIAL = re.compile(r"^\s*(#.*|set -e|set -eu|exit 0|)\s*$")


def busy(text: str) -> bool:
    """Whether a script does anything beyond the shebang, comments, `set -e` and `exit 0`."""
    return any(not _TRIVIAL.match(line) for line in text.splitlines()[1:])


def unhandled(text: str, handled: set[str]) -> list[str]:
    """The commands of a script that change something and that no effect reproduces (sorted, unique)."""
    names: set[str] = set()
    for c in commands(text):
        name = c.name
        if name in _QUIET or name in handled or _DEBCONF.match(name):
            continue
        if "$" in name or "`" in name:
            names.add("a command named by a variable")
        elif _NAME.match(name):
            names.add(name)
    return sorted(names)
