"""The image's apt configuration (/etc/apt/apt.conf and apt.conf.d/*), as apt.conf(5) describes its syntax.

Only what changes the plan is looked up (APT::Default-Release, APT::Get::Upgrade-By-Source-Package,
APT::Install-Recommends), but the whole syntax is read so that a nested scope or a comment never turns into a
wrong value: `A::B "v";`, scopes `A { B "v"; C { D "w"; }; };`, lists `A { "x"; "y"; };`, comments `//`, `#` and
`/* */`, and the `#clear` / `#include` directives (the first honoured, the second ignored: an image's include would
name a host path). Later files override earlier ones, in apt's order: apt.conf.d/ files with a plain name and no
extension or `.conf`, sorted, then apt.conf.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

APT_CONF = "etc/apt/apt.conf"
APT_CONF_DIR = "etc/apt/apt.conf.d"
_FILE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{};]|[^\s{};"]+')
_TRUE = {"1", "yes", "true", "with", "on", "enable"}
_FALSE = {"0", "no", "false", "without", "off", "disable"}


@dataclass(frozen=True)
class AptConfig:
    """Scalar values by lowercased full key (`apt::default-release`); list items are keyed `key::` + index."""

    values: Mapping[str, str] = field(default_factory=dict)

    def get(self, key: str, default: str = "") -> str:
        return self.values.get(key.lower(), default)

    def flag(self, key: str, default: bool) -> bool:
        value = self.values.get(key.lower())
        if value is None:
            return default
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        return default  # apt warns and keeps the default for anything else

    @classmethod
    def from_files(cls, main: bytes | None, directory: Mapping[str, bytes]) -> AptConfig:
        values: dict[str, str] = {}
        texts: list[tuple[str, bytes]] = []
        for path in sorted(directory):
            name = path.rsplit("/", 1)[-1]
            if "/" in path[len(APT_CONF_DIR) + 1:] or not _FILE_NAME.fullmatch(name):
                continue
            if "." in name and not name.endswith(".conf"):
                continue
            texts.append(("/" + path, directory[path]))
        if main is not None:
            texts.append(("/" + APT_CONF, main))
        for what, content in texts:
            parse_into(values, content.decode("utf-8", "replace"), what)
        return cls(values)


def _strip_comments(text: str) -> str:
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = text.find('"', i + 1)
            j = n - 1 if j < 0 else j
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif text.startswith("//", i) or (c == "#" and not text.startswith(("#clear", "#include"), i)):
            j = text.find("\n", i)
            i = n if j < 0 else j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_into(values: dict[str, str], text: str, what: str) -> None:
    """Add one file's settings to `values` (full lowercased key -> value); a syntax error skips the rest of that
    file with a warning (apt refuses to run instead, so an image that works has none)."""
    tokens = _TOKEN.findall(_strip_comments(text))
    scope: list[str] = []
    pending: list[str] = []  # tokens of the statement being read
    counters: dict[str, int] = {}
    for tok in tokens:
        if tok == "{":
            if len(pending) != 1:
                log.warning("%s: unexpected '{'; ignoring the rest of the file", what)
                return
            scope.append(pending[0].lower())
            pending = []
        elif tok == "}":
            if not scope:
                log.warning("%s: unbalanced '}'; ignoring the rest of the file", what)
                return
            if pending:  # a last statement without its ';'
                _statement(values, scope, pending, counters)
                pending = []
            scope.pop()
        elif tok == ";":
            if pending:
                _statement(values, scope, pending, counters)
            pending = []
        else:
            pending.append(tok)


def _unquote(tok: str) -> str:
    return tok[1:-1] if len(tok) >= 2 and tok[0] == tok[-1] == '"' else tok


def _statement(values: dict[str, str], scope: list[str], words: list[str], counters: dict[str, int]) -> None:
    if words[0] == "#clear":
        for name in words[1:]:
            prefix = "::".join([*scope, name.lower()])
            for key in [k for k in values if k == prefix or k.startswith(prefix + "::")]:
                del values[key]
        return
    if words[0] == "#include":
        return
    if len(words) == 1 and words[0].startswith('"'):
        base = "::".join(scope)
        index = counters.get(base, 0)
        counters[base] = index + 1
        values[f"{base}::{index}"] = _unquote(words[0])
        return
    key = "::".join([*scope, words[0].lower()])
    values[key] = _unquote(words[1]) if len(words) > 1 else ""
