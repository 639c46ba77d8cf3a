"""Which Debian mirrors the tests may use: the ones this machine's apt already uses.

Only the Debian archive is reachable from the test machines, and its host must never be written into the
repo, so we read it from the environment (COPA_DEBIAN_MIRROR / COPA_SECURITY_MIRROR) or from the
machine's own apt sources (deb822 *.sources, one-line *.list, and /etc/apt/sources.list).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from copa.errors import CopaError

APT_ETC = Path("/etc/apt")
SUITE = "bookworm"
SECURITY_SUITE = "bookworm-security"


class MirrorNotFoundError(CopaError):
    """No apt source on this machine serves the suite the fixtures need."""


@dataclass(frozen=True, slots=True)
class AptSource:
    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    origin: str  # file it came from, for error messages


def _deb822_paragraphs(text: str) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    key = ""
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields:
                yield fields
            fields, key = {}, ""
            continue
        if raw[0] in " \t" and key:  # continuation line (e.g. an inline Signed-By key block)
            fields[key] += "\n" + raw.strip()
            continue
        name, sep, value = raw.partition(":")
        if sep:
            key = name.strip().lower()
            fields[key] = value.strip()


def _parse_sources(path: Path, text: str) -> Iterator[AptSource]:
    for para in _deb822_paragraphs(text):
        if para.get("enabled", "yes").lower() == "no":
            continue
        yield AptSource(
            types=tuple(para.get("types", "").split()),
            uris=tuple(para.get("uris", "").split()),
            suites=tuple(para.get("suites", "").split()),
            components=tuple(para.get("components", "").split()),
            origin=str(path),
        )


def _parse_list(path: Path, text: str) -> Iterator[AptSource]:
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        kind, rest = words[0], words[1:]
        if rest and rest[0].startswith("["):  # one-line options: "[arch=amd64 signed-by=...]"
            while rest and not rest[0].endswith("]"):
                rest = rest[1:]
            rest = rest[1:]
        if len(rest) < 2:
            continue
        yield AptSource((kind,), (rest[0],), (rest[1],), tuple(rest[2:]), str(path))


def apt_sources(etc: Path = APT_ETC) -> list[AptSource]:
    """Every enabled source apt on this machine would read (files with other suffixes are ignored, as apt does)."""
    found: list[AptSource] = []
    main_list = etc / "sources.list"
    if main_list.is_file():
        found.extend(_parse_list(main_list, main_list.read_text(errors="replace")))
    parts = etc / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".sources":
                found.extend(_parse_sources(path, path.read_text(errors="replace")))
            elif path.suffix == ".list":
                found.extend(_parse_list(path, path.read_text(errors="replace")))
    return found


def find_mirror(suite: str, component: str = "main", etc: Path = APT_ETC) -> str:
    """The first URI serving `suite`/`component` for binary packages, without a trailing slash."""
    sources = apt_sources(etc)
    for src in sources:
        if "deb" in src.types and suite in src.suites and component in src.components and src.uris:
            return src.uris[0].rstrip("/")
    raise MirrorNotFoundError(
        f"no apt source in {etc} serves '{suite} {component}' (read {len(sources)} entries); "
        f"add one there or set the mirror URL in the environment"
    )


def debian_mirror() -> str:
    """The Debian main archive URI (serving bookworm main): env COPA_DEBIAN_MIRROR, else the apt sources."""
    env = os.environ.get("COPA_DEBIAN_MIRROR", "").strip()
    if env:
        return env.rstrip("/")
    try:
        return find_mirror(SUITE)
    except MirrorNotFoundError as exc:
        raise MirrorNotFoundError(f"{exc.message} (COPA_DEBIAN_MIRROR)") from None


def security_mirror() -> str:
    """The Debian security archive URI (serving bookworm-security main): env COPA_SECURITY_MIRROR, else apt."""
    env = os.environ.get("COPA_SECURITY_MIRROR", "").strip()
    if env:
        return env.rstrip("/")
    try:
        return find_mirror(SECURITY_SUITE)
    except MirrorNotFoundError as exc:
        raise MirrorNotFoundError(f"{exc.message} (COPA_SECURITY_MIRROR)") from None
