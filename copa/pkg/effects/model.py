"""What the effects take in (the packages being installed) and give back (entries and notes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from copa.oci.layer import Entry


@dataclass(frozen=True, slots=True)
class Package:
    """One package the layer installs, as far as its scripts and triggers matter.

    `scripts` are keyed by the family's own names: dpkg's preinst/postinst/prerm/postrm/config, apk's
    .pre-install/.post-install/.pre-upgrade/.post-upgrade/.trigger. `triggers` are dpkg's `triggers` control
    file lines (`activate-noawait ldconfig`) or apk's trigger paths."""

    name: str
    old_version: str  # "" for a new install: scripts take their first-install branch
    new_version: str
    scripts: Mapping[str, bytes] = field(default_factory=dict)
    triggers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """Extra layer entries (effects win over the packages' entries at the same path) and, per package, what its
    scripts do that is reproduced only approximately or not at all."""

    entries: tuple[Entry, ...]
    notes: Mapping[str, tuple[str, ...]]
    done: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # per package: what was reproduced
