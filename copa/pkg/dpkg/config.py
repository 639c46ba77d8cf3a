"""dpkg configuration that changes where (and whether) package files land: diversions and path filters.

Diversions (/var/lib/dpkg/diversions, written by dpkg-divert) send a package's file to another path unless the
package is the one that set the diversion up; ':' as the package means a local diversion, which applies to every
package. Path filters (path-exclude / path-include in /etc/dpkg/dpkg.cfg and /etc/dpkg/dpkg.cfg.d/*, as slim
images ship them) keep matching files from being unpacked; dpkg still lists them in info/<pkg>.list.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from copa.errors import UnsupportedImageError
from copa.oci.rootfs import View

DIVERSIONS = "var/lib/dpkg/diversions"
DPKG_CFG = "etc/dpkg/dpkg.cfg"
DPKG_CFG_D = "etc/dpkg/dpkg.cfg.d"
LOCAL = ":"  # the package field of a diversion made by the admin, not by a package
# dpkg's config directory loader (dpkg_options_load_dir) skips names with other characters (.dpkg-old, ~...).
_CFG_NAME = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class Diversion:
    divert_to: str  # package path, without the leading slash
    package: str  # the diverting package, or LOCAL


@dataclass(frozen=True, slots=True)
class Filter:
    pattern: str  # fnmatch glob on the absolute path, e.g. "/usr/share/doc/*"
    include: bool


@dataclass(frozen=True, slots=True)
class DpkgConfig:
    diversions: dict[str, Diversion] = field(default_factory=dict)  # package path (no leading slash) -> diversion
    filters: tuple[Filter, ...] = ()

    def target(self, path: str, package: str) -> str:
        """Where a file `package` ships as `path` goes (both without the leading slash): src/main/help.c
        namenodetouse, diverted unless `package` set the diversion up itself."""
        d = self.diversions.get(path)
        if d is None or d.package == package:
            return path
        return d.divert_to

    def excluded(self, path: str, is_dir: bool) -> bool:
        """Whether dpkg skips unpacking `path` (no leading slash): src/main/filters.c filter_should_skip."""
        if not self.filters:
            return False
        name = "/" + path
        skip = False
        for f in self.filters:  # the last matching filter wins
            # fnmatch with flags 0: '*' matches '/' as well, and there is no case folding (fnmatchcase).
            if fnmatch.fnmatchcase(name, f.pattern):
                skip = not f.include
        if skip and is_dir:
            # Keep a directory an include filter could bring files back into: its literal prefix starts the path.
            for f in self.filters:
                if f.include:
                    prefix = re.split(r"[*?\[\\]", f.pattern, maxsplit=1)[0].rstrip("/")
                    if name.startswith(prefix):
                        return False
        return skip


def parse_diversions(data: bytes, path: str = "/" + DIVERSIONS) -> dict[str, Diversion]:
    """dpkg's diversions file: three lines per diversion (path, divert-to, package or ':')."""
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 3:
        raise UnsupportedImageError(f"{path}: {len(lines)} lines is not a whole number of diversions (3 lines "
                                    "each); the image's dpkg database is damaged")
    out: dict[str, Diversion] = {}
    for i in range(0, len(lines), 3):
        original, divert_to, package = lines[i:i + 3]
        if not original.startswith("/") or not divert_to.startswith("/") or not package:
            raise UnsupportedImageError(f"{path}:{i + 1}: malformed diversion {original!r} -> {divert_to!r}; "
                                        "the image's dpkg database is damaged")
        out[original.lstrip("/")] = Diversion(divert_to.lstrip("/"), package)
    return out


def parse_filters(data: bytes) -> list[Filter]:
    """path-exclude / path-include options of one dpkg config file, in file order."""
    out = []
    for raw in data.decode("utf-8", "surrogateescape").splitlines():
        # lib/dpkg/options.c dpkg_options_load_file: the name is a run of [A-Za-z0-9-], one separator character
        # follows (then an optional '=' and blanks), and the value may be quoted.
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z0-9-]*).=?\s*(.*)$", line)
        if m is None or m.group(1) not in ("path-exclude", "path-include"):
            continue
        value = m.group(2)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out.append(Filter(value, m.group(1) == "path-include"))
    return out


def read_config(root: View) -> DpkgConfig:
    """The image's diversions and path filters, read in dpkg's order (dpkg_options_load): dpkg.cfg.d/* by name,
    then dpkg.cfg."""
    raw = root.read(DIVERSIONS)
    diversions = parse_diversions(raw) if raw else {}
    filters: list[Filter] = []
    for path, content in sorted(root.under(DPKG_CFG_D).items(), key=lambda pc: pc[0].encode()):
        name = path[len(DPKG_CFG_D) + 1:]
        if _CFG_NAME.fullmatch(name):  # also rules out files in subdirectories
            filters.extend(parse_filters(content))
    main = root.read(DPKG_CFG)
    if main is not None:
        filters.extend(parse_filters(main))
    return DpkgConfig(diversions, tuple(filters))
