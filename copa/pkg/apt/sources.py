"""APT source definitions: the one-line `sources.list` form, deb822 `*.sources`, and CLI `--repository` lines.

Only `deb` entries matter to us (we install binaries); `deb-src` is parsed past and dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from copa.errors import CopaError, UnsupportedImageError, UsageError
from copa.net import redact, redact_text

_TRUE = frozenset({"yes", "true", "1", "on"})
_FALSE = frozenset({"no", "false", "0", "off"})
_URI_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


@dataclass(frozen=True, slots=True)
class AptSource:
    """One (URI, suite) pair. A suite ending in '/' is a flat repository and has no components."""

    uri: str
    suite: str
    components: tuple[str, ...]
    architectures: tuple[str, ...] = ()
    # Each entry is a keyring file path, an inline ASCII-armored key, or a key fingerprint.
    signed_by: tuple[str, ...] = ()
    trusted: bool = False
    check_valid_until: bool = True
    origin: str = ""  # "file:line" where it was defined, for messages
    # The URI as the image names it, when --mirror rewrote `uri`: apt in the image would see this host, so
    # `Pin: origin` preferences match against it.
    original_uri: str = ""

    @property
    def site(self) -> str:
        return urlsplit(self.original_uri or self.uri).hostname or ""

    @property
    def flat(self) -> bool:
        return self.suite.endswith("/")

    @property
    def dist_url(self) -> str:
        """The directory holding InRelease/Release."""
        if self.flat:
            return f"{self.uri}/{self.suite.rstrip('/')}" if self.suite != "./" else self.uri
        return f"{self.uri}/dists/{self.suite}"

    @property
    def description(self) -> str:
        return f"{redact(self.uri)} {self.suite}"

    def __str__(self) -> str:
        return self.description


def _bool(value: str, what: str, where: str, error: type[CopaError]) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise error(f"{where}: {what} must be yes or no, got {value!r}; fix the APT source entry")


def _check_uri(uri: str, where: str, error: type[CopaError]) -> str:
    if not _URI_RE.match(uri):
        raise error(f"{where}: {redact(uri)!r} is not a URI; expected e.g. 'http://host/debian' or 'file:/srv/mirror'")
    scheme = uri.split(":", 1)[0].lower()
    if scheme not in ("http", "https", "file"):
        raise error(f"{where}: URI scheme {scheme!r} is not supported; use http, https or file")
    return uri.rstrip("/")


def _split_list(value: str) -> tuple[str, ...]:
    return tuple(v for v in re.split(r"[\s,]+", value.strip()) if v)


def _one_line(line: str, where: str, error: type[CopaError]) -> AptSource | None:
    text = _strip_comment(line)
    if not text:
        return None
    kind, _, rest = text.partition(" ")
    kind = kind.strip()
    if kind == "deb-src":
        return None
    if kind != "deb":
        raise error(f"{where}: unknown entry type {kind!r}; expected 'deb URI suite component...'")
    rest = rest.strip()
    options: dict[str, str] = {}
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise error(f"{where}: unterminated '[' option list; close it with ']'")
        for item in rest[1:end].split():
            key, sep, value = item.partition("=")
            if not sep:
                raise error(f"{where}: option {item!r} is not key=value")
            options[key.rstrip("+-").lower()] = value
        rest = rest[end + 1 :].strip()
    words = rest.split()
    if len(words) < 2:
        raise error(f"{where}: expected 'deb [options] URI suite component...', got {redact_text(line.strip())!r}")
    uri, suite, components = words[0], words[1], tuple(words[2:])
    if suite.endswith("/") and components:
        raise error(f"{where}: flat repository suite {suite!r} must not list components")
    if not suite.endswith("/") and not components:
        raise error(f"{where}: suite {suite!r} needs at least one component (e.g. main)")
    return AptSource(
        uri=_check_uri(uri, where, error),
        suite=suite,
        components=components,
        architectures=_split_list(options.get("arch", "")),
        signed_by=_split_list(options.get("signed-by", "")),
        trusted=_bool(options["trusted"], "trusted", where, error) if "trusted" in options else False,
        check_valid_until=(
            _bool(options["check-valid-until"], "check-valid-until", where, error)
            if "check-valid-until" in options
            else True
        ),
        origin=where,
    )


def _strip_comment(line: str) -> str:
    # '#' starts a comment only at the start of a word; URIs may contain '#'-free fragments anyway.
    out = []
    for word in line.split():
        if word.startswith("#"):
            break
        out.append(word)
    return " ".join(out)


def parse_list(text: str, path: str, error: type[CopaError] = UnsupportedImageError) -> list[AptSource]:
    """Parse a one-line-style sources.list file."""
    sources = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        src = _one_line(line, f"{path}:{number}", error)
        if src is not None:
            sources.append(src)
    return sources


def parse_repository_line(line: str) -> AptSource:
    """A user-given `--repository 'deb [opts] URI suite comp...'`; errors are usage errors."""
    src = _one_line(line, "--repository", UsageError)
    if src is None:
        raise UsageError(f"--repository {redact_text(line)!r}: expected 'deb [options] URI suite component...'")
    return src


def _paragraphs(text: str) -> Iterable[tuple[int, list[tuple[int, str, str]]]]:
    """deb822 paragraphs as (first line, [(line, field, value)]); continuation lines are joined with newlines."""
    fields: list[tuple[int, str, str]] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if line.startswith("#"):
            continue
        if not line:
            if fields:
                yield start, fields
                fields = []
            continue
        if line[0] in " \t":
            if not fields:
                yield number, [(number, "", line)]  # reported as an error by the caller
                continue
            ln, key, value = fields[-1]
            cont = line[1:] if line[0] == " " else line.lstrip()
            fields[-1] = (ln, key, value + "\n" + ("" if cont.strip() == "." else cont))
            continue
        key, sep, value = line.partition(":")
        if not sep:
            yield number, [(number, "", line)]
            continue
        if not fields:
            start = number
        fields.append((number, key.strip(), value.strip()))
    if fields:
        yield start, fields


def _signed_by(value: str) -> tuple[str, ...]:
    stripped = value.strip()
    if "-----BEGIN PGP PUBLIC KEY BLOCK-----" in stripped:
        return (stripped + "\n",)
    return _split_list(stripped)


def parse_deb822(text: str, path: str, error: type[CopaError] = UnsupportedImageError) -> list[AptSource]:
    """Parse a deb822-style *.sources file; each paragraph expands to URIs x Suites."""
    sources: list[AptSource] = []
    for start, fields in _paragraphs(text):
        where = f"{path}:{start}"
        para: dict[str, str] = {}
        for number, key, value in fields:
            if not key:
                raise error(f"{path}:{number}: malformed line {value.strip()!r}; expected 'Field: value'")
            para[key.lower()] = value
        if "enabled" in para and not _bool(para["enabled"], "Enabled", where, error):
            continue
        types = _split_list(para.get("types", ""))
        if not types:
            raise error(f"{where}: paragraph has no Types field; add 'Types: deb'")
        unknown = [t for t in types if t not in ("deb", "deb-src")]
        if unknown:
            raise error(f"{where}: unknown Types {' '.join(unknown)!r}; expected deb or deb-src")
        if "deb" not in types:
            continue
        uris = _split_list(para.get("uris", ""))
        suites = _split_list(para.get("suites", ""))
        if not uris or not suites:
            raise error(f"{where}: paragraph needs both URIs and Suites")
        components = _split_list(para.get("components", ""))
        for suite in suites:
            if suite.endswith("/") and components:
                raise error(f"{where}: flat repository suite {suite!r} must not have Components")
            if not suite.endswith("/") and not components:
                raise error(f"{where}: suite {suite!r} needs Components (e.g. main)")
        trusted = _bool(para["trusted"], "Trusted", where, error) if "trusted" in para else False
        cvu = (
            _bool(para["check-valid-until"], "Check-Valid-Until", where, error)
            if "check-valid-until" in para
            else True
        )
        for uri in uris:
            checked = _check_uri(uri, where, error)
            for suite in suites:
                sources.append(
                    AptSource(
                        uri=checked,
                        suite=suite,
                        components=components,
                        architectures=_split_list(para.get("architectures", "")),
                        signed_by=_signed_by(para.get("signed-by", "")),
                        trusted=trusted,
                        check_valid_until=cvu,
                        origin=where,
                    )
                )
    return sources


def parse_file(text: str, path: str, error: type[CopaError] = UnsupportedImageError) -> list[AptSource]:
    """Dispatch on the file name the way apt does: *.sources is deb822, anything else one-line."""
    if path.endswith(".sources"):
        return parse_deb822(text, path, error)
    return parse_list(text, path, error)


def apply_mirrors(sources: Sequence[AptSource], mirrors: Sequence[tuple[str, str]]) -> list[AptSource]:
    """Rewrite URI prefixes (first match wins). Prefixes match on whole path segments only."""
    out = []
    for src in sources:
        uri = src.uri
        for old, new in mirrors:
            old_n = old.rstrip("/")
            if uri == old_n or uri.startswith(old_n + "/"):
                uri = new.rstrip("/") + uri[len(old_n) :]
                break
        out.append(replace(src, uri=uri, original_uri=src.original_uri or src.uri) if uri != src.uri else src)
    return out
