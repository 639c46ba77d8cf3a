"""Which tags of a repository a PatchConfig image patches: Copacetic's strategies (pkg/bulk/discover.go).

- list: the listed tags. Copacetic's docs say missing ones are warned about and skipped; so are they here
  (copa.bulk.plan looks each one up with a HEAD request), rather than failing the sweep later.
- pattern: tags the regex matches (searched, not anchored: Go's MatchString), minus `exclude` (exact names), ordered
  oldest to newest, the newest `maxTags` kept.
- latest: the newest tag after `exclude`.

Order (`order_tags`) is Copacetic's: tags are parsed as Masterminds/semver v3.4 `NewVersion` parses them (coerce
mode: an optional `v`, one to three numeric parts, leading zeros allowed, so "20.04" is 20.4.0 and "3.19" is
3.19.0), pre-releases ("1.0.0-rc1", "1.25.3-alpine", and copa's own "1.0.0-patched") are dropped, the rest
sorted by version. Where no tag parses as semver at all, the docs' lexical fallback applies (Copacetic's code
would find nothing): date tags such as "bookworm-20240110" sort right that way. Equal versions ("1.2", "v1.2.0")
are ordered by their text, so the choice is stable (Go's sort.Sort is not).

A sweep writing into its source repository would find its own results on the next run. Semver results are
pre-releases and drop out; `outputs_of` finds the others (the tag template applied to another tag of the
repository, with Copacetic's re-patch counter `-N` or a per-platform `-ARCH[-VARIANT]` suffix).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from copa.bulk.config import TagStrategy

# Masterminds/semver v3 looseSemVerRegex (what NewVersion matches in its default coerce mode), ASCII only as Go's is.
_SEMVER = re.compile(
    r"v?([0-9]+)(\.[0-9]+)?(\.[0-9]+)?"
    r"(-([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?"
    r"(\+([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?",
    re.ASCII,
)
_UINT64_MAX = (1 << 64) - 1
# Copacetic's ArchTagSuffixes(): its validPlatforms normalised by containerd (linux/arm is arm/v7, arm64/v8 is arm64).
ARCH_SUFFIXES = ("386", "amd64", "arm-v5", "arm-v6", "arm-v7", "arm64", "ppc64le", "s390x", "riscv64")


@dataclass(frozen=True, slots=True)
class SemVer:
    major: int
    minor: int
    patch: int
    prerelease: str
    original: str

    @property
    def key(self) -> tuple[int, int, int]:
        """The order of stable versions (pre-releases never take part in a selection)."""
        return (self.major, self.minor, self.patch)


def parse_semver(tag: str) -> SemVer | None:
    """`tag` as Masterminds/semver's NewVersion reads it, or None where NewVersion returns an error."""
    m = _SEMVER.fullmatch(tag)
    if m is None:
        return None
    parts = [int(m.group(1)), int((m.group(2) or ".0")[1:]), int((m.group(3) or ".0")[1:])]
    if any(p > _UINT64_MAX for p in parts):  # strconv.ParseUint fails
        return None
    pre = m.group(5) or ""
    if pre and not _valid_prerelease(pre):
        return None
    # Build metadata ("+...") cannot occur in a tag (the tag grammar has no '+'), and its rules equal the regex's.
    return SemVer(parts[0], parts[1], parts[2], pre, tag)


def _valid_prerelease(pre: str) -> bool:
    """validatePrerelease: no empty identifier, no numeric one with a leading zero."""
    return all(part and not (part.isdigit() and len(part) > 1 and part[0] == "0") for part in pre.split("."))


def order_tags(tags: Iterable[str]) -> list[str]:
    """`tags` oldest to newest as Copacetic orders them: stable semver tags by version, the others left out; when no
    tag is semver at all (stable or pre-release), all of them in lexical (byte) order."""
    unique = sorted(set(tags))
    versions = [(v, t) for t in unique if (v := parse_semver(t)) is not None]
    if not versions:
        return unique
    stable = [(v.key, t) for v, t in versions if not v.prerelease]
    return [t for _, t in sorted(stable)]


def outputs_of(tags: Iterable[str], render: Callable[[str], str]) -> set[str]:
    """The tags among `tags` that are patch results of another tag of the same list: render(source) itself, with
    Copacetic's re-patch counter (`-1`, `-2`...), or with a per-platform suffix (`-amd64`, `-arm-v7`...)."""
    present = set(tags)
    found: set[str] = set()
    for source in present:
        base = render(source)
        if base == source:
            continue
        for tag in present:
            if tag == base or (tag.startswith(base + "-") and _is_suffix(tag[len(base) + 1:])):
                found.add(tag)
    return found


def _is_suffix(rest: str) -> bool:
    if rest.isdigit() and rest.isascii():
        return True
    # "-N-ARCH": a re-patch's platform images
    head, _, tail = rest.partition("-")
    return rest in ARCH_SUFFIXES or (head.isdigit() and head.isascii() and tail in ARCH_SUFFIXES)


@dataclass(frozen=True, slots=True)
class Selection:
    tags: tuple[str, ...]  # what to patch, oldest first
    missing: tuple[str, ...] = ()  # listed tags the repository does not have (skipped)
    note: str = ""  # why nothing was selected, when nothing was


def select_tags(strategy: TagStrategy, available: Iterable[str]) -> Selection:
    """The tags `strategy` picks among the repository's `available` tags."""
    present = list(dict.fromkeys(available))
    if strategy.strategy == "list":
        have = set(present)
        tags = tuple(t for t in strategy.list if t in have)
        missing = tuple(t for t in strategy.list if t not in have)
        note = "" if tags else "none of the listed tags exists"
        return Selection(tags, missing, note)
    candidates = present
    if strategy.strategy == "pattern":
        candidates = [t for t in candidates if strategy.matches(t)]
        if not candidates:
            return Selection((), note=f"no tag matches pattern {strategy.pattern!r}")
    excluded = set(strategy.exclude)
    candidates = [t for t in candidates if t not in excluded]
    if not candidates:
        return Selection((), note="every candidate tag is excluded" if present else "the repository has no tags")
    ordered = order_tags(candidates)
    if not ordered:
        what = "matching tag" if strategy.strategy == "pattern" else "tag"
        return Selection((), note=f"no {what} is a stable semantic version (pre-releases are skipped)")
    if strategy.strategy == "latest":
        return Selection((ordered[-1],))
    if strategy.max_tags and len(ordered) > strategy.max_tags:
        ordered = ordered[-strategy.max_tags:]
    return Selection(tuple(ordered))


def next_patch_tag(base: str, existing: Iterable[str]) -> str:
    """Copacetic's re-patch tag (pkg/bulk/skip.go): `base` when the target repository has neither `base` nor
    `base-N`, else `base-(highest N + 1)` (`base` itself counting as 0). `base-386` is the 386 platform's image of
    `base`, not re-patch 386."""
    highest = -1
    for tag in existing:
        if tag == base:
            highest = max(highest, 0)
            continue
        rest = tag[len(base) + 1:] if tag.startswith(base + "-") else ""
        if rest.isascii() and rest.isdigit() and rest not in ARCH_SUFFIXES:
            highest = max(highest, int(rest))
    return base if highest < 0 else f"{base}-{highest + 1}"
