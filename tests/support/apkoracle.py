"""What real apk plans for an upgrade, read from `apk upgrade --simulate` on an Alpine rootfs.

copa's report semantics ("these packages to at least these versions, everything else only if it must move") are
apk's `apk upgrade NAME...` (the upgrade flag on the named packages only, not inherited by their dependencies as
`apk add --upgrade` does) with `NAME>=FIXED` added to /etc/apk/world, so that apk cannot silently keep a
reported package where it is. Checked by hand: `apk upgrade libssl3` alone keeps libssl3 when its new version
pins a libcrypto3 that is not flagged; with `libssl3>=NEW` in the world apk moves both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support import alpine

WORLD = "etc/apk/world"
# apk-tools 3 progress lines: "(1/2) Upgrading libcrypto3 (3.5.8-r0 -> 3.5.8-r2)", "(2/2) Installing x (1.0-r0)".
_CHANGE = re.compile(r"^\(\s*\d+/\d+\) (\w+) (\S+) \((?:(\S+) -> )?(\S+)\)$")


@dataclass(frozen=True, slots=True)
class Change:
    action: str  # Upgrading, Installing, Downgrading, Replacing, Purging, ...
    name: str
    old: str  # "" when installing
    new: str


@dataclass(frozen=True)
class OraclePlan:
    ok: bool
    changes: tuple[Change, ...]
    output: str  # apk's stdout + stderr, for the failure message

    def versions(self) -> dict[str, str]:
        return {c.name: c.new for c in self.changes if c.action != "Purging"}


def parse_changes(text: str) -> tuple[Change, ...]:
    out = []
    for line in text.splitlines():
        m = _CHANGE.match(line.strip())
        if m is not None:
            out.append(Change(m.group(1), m.group(2), m.group(3) or "", m.group(4)))
    return tuple(out)


def simulate_upgrade(root: Path, repository: Path | str, keys_dir: Path, fixes: Mapping[str, str],
                     base_world: Sequence[str]) -> OraclePlan:
    """`apk upgrade --simulate NAMES` on the writable rootfs `root`, its world set to `base_world` plus
    `NAME>=FIXED` for each fix; only `repository` (a directory or URL) and the keys in keys_dir are used."""
    world = [*base_world, *(f"{n}>={v}" for n, v in sorted(fixes.items()))]
    (root / WORLD).write_text("\n".join(world) + "\n")
    proc = alpine.run_apk(root, "--repository", str(repository), "--keys-dir", str(keys_dir.resolve()),
                          "--no-cache", "upgrade", "--simulate", *sorted(fixes), check=False)
    output = proc.stdout + proc.stderr
    return OraclePlan(proc.returncode == 0, parse_changes(proc.stdout), output)
