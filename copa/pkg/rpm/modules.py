"""Modularity (RHEL 8's AppStream): which packages of modular repositories dnf 4 offers at all.

A repository's `modules` metadata (modules.yaml) holds YAML documents: `modulemd` v2 (name, stream, version,
context, arch, the NEVRAs it ships under artifacts.rpms, profiles, dependencies) and `modulemd-defaults` (a
module's default stream). The image records its choices in /etc/dnf/modules.d/NAME.module (INI: stream=,
state=enabled|disabled); /etc/dnf/modules.defaults.d/*.yaml may add defaults.

dnf 4's modular filtering, as libdnf applies it to every available package:
* a stream is active when its module is enabled with that stream, or when the module has no state (neither
  enabled nor disabled) and the stream is the default; a disabled module has no active stream;
* a package whose NEVRA is an artifact of some module is offered only if one of its modules' active streams
  (any version, and any context once one of them fits the image's platform) lists it;
* a package listed by no module is hidden when an active stream ships a package of the same name (the "ursine"
  package would otherwise win over the module's);
* packages of a repository with module_hotfixes=1 are never filtered.

YAML needs a parser: modules.yaml uses block and flow collections, quoting, multi-line strings and anchors a
line-based reader would get wrong. PyYAML's BaseLoader keeps every scalar a string (a stream "1.10" stays
"1.10", not the float 1.1) and constructs no objects.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from copa.errors import IntegrityError
from copa.pkg.fetch import Fetcher
from copa.pkg.rpm.repomd import LoadedRepomd, RpmPackage, fetch_entry, open_decompressed
from copa.pkg.rpm.repos import RpmRepository, parse_ini

log = logging.getLogger(__name__)

MODULES_DIR = "etc/dnf/modules.d"
DEFAULTS_DIR = "etc/dnf/modules.defaults.d"


@dataclass(frozen=True, slots=True)
class ModuleStream:
    """One modulemd document: a build (version, context) of a module's stream for one arch."""

    name: str
    stream: str
    version: int
    context: str
    arch: str
    artifacts: frozenset[str]  # NEVRAs "name-epoch:version-release.arch"
    profiles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Each alternative of `dependencies`: module -> streams it needs ("" list: any; "-x" excludes x).
    requires: tuple[Mapping[str, tuple[str, ...]], ...] = ()

    @property
    def nsvca(self) -> str:
        return f"{self.name}:{self.stream}:{self.version}:{self.context}:{self.arch}"


@dataclass(frozen=True, slots=True)
class ModuleDefaults:
    module: str
    stream: str
    profiles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModuleState:
    """One [section] of /etc/dnf/modules.d/*.module."""

    name: str
    stream: str
    state: str  # enabled, disabled, or "" (dnf's "unknown": defaults apply)
    profiles: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModuleMetadata:
    streams: tuple[ModuleStream, ...] = ()
    defaults: Mapping[str, ModuleDefaults] = field(default_factory=dict)

    def merged(self, other: ModuleMetadata) -> ModuleMetadata:
        return ModuleMetadata(self.streams + other.streams, {**other.defaults, **self.defaults})


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _profiles(value: Any, key: str | None) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        return {}
    out = {}
    for name, body in value.items():
        items = body.get(key) if key and isinstance(body, dict) else body
        out[str(name)] = _strings(items)
    return out


def parse_modules_yaml(stream: BinaryIO | str | bytes, what: str) -> ModuleMetadata:
    """modulemd v2 and modulemd-defaults v1 documents; other document kinds (translations, obsoletes) are
    skipped."""
    # Imported here: only a repository with modules metadata (RHEL 8 AppStream) or an image with module defaults
    # needs a YAML parser, and loading it costs every other rpm patch time after the image is read.
    import yaml

    # BaseLoader: every scalar stays a string; the C loader when libyaml is there (modules.yaml can be megabytes).
    loader: Any = getattr(yaml, "CBaseLoader", yaml.BaseLoader)
    streams: list[ModuleStream] = []
    defaults: dict[str, ModuleDefaults] = {}
    try:
        for doc in yaml.load_all(stream, Loader=loader):
            if not isinstance(doc, dict):
                continue
            kind, data = _str(doc.get("document")), doc.get("data")
            if not isinstance(data, dict):
                continue
            if kind == "modulemd" and _str(doc.get("version")) == "2":
                streams.append(_stream(data, what))
            elif kind == "modulemd-defaults":
                module = _str(data.get("module"))
                if module:
                    defaults[module] = ModuleDefaults(module, _str(data.get("stream")),
                                                      _profiles(data.get("profiles"), None))
            elif kind == "modulemd":
                log.debug("%s: modulemd version %s skipped", what, doc.get("version"))
    except yaml.YAMLError as e:
        raise IntegrityError(f"{what}: modules metadata is not valid YAML ({str(e).splitlines()[0]})") from None
    return ModuleMetadata(tuple(streams), defaults)


def _stream(data: dict[str, Any], what: str) -> ModuleStream:
    name, stream = _str(data.get("name")), _str(data.get("stream"))
    if not name or not stream:
        raise IntegrityError(f"{what}: a modulemd document without name or stream")
    artifacts = data.get("artifacts")
    rpms = _strings(artifacts.get("rpms")) if isinstance(artifacts, dict) else ()
    requires: list[dict[str, tuple[str, ...]]] = []
    deps = data.get("dependencies")
    for alt in deps if isinstance(deps, list) else ():
        req = alt.get("requires") if isinstance(alt, dict) else None
        if isinstance(req, dict):
            requires.append({str(k): _strings(v) for k, v in req.items()})
    version = _str(data.get("version"))
    return ModuleStream(
        name=name,
        stream=stream,
        version=int(version) if version.isdigit() else 0,
        context=_str(data.get("context")),
        arch=_str(data.get("arch")),
        artifacts=frozenset(rpms),
        profiles=_profiles(data.get("profiles"), "rpms"),
        requires=tuple(requires),
    )



def parse_module_states(files: Mapping[str, bytes]) -> dict[str, ModuleState]:
    """/etc/dnf/modules.d/*.module (path -> content). A file dnf cannot read is skipped, as dnf does."""
    states: dict[str, ModuleState] = {}
    for path, content in sorted(files.items()):
        if not path.endswith(".module"):
            continue
        try:
            sections = parse_ini(content.decode("utf-8", "replace"), "/" + path)
        except ValueError as e:
            log.warning("%s; skipped", e)
            continue
        for section in sections:
            values = dict(section.keys)
            state = values.get("state", "").strip().lower()
            states[section.name] = ModuleState(
                name=values.get("name", section.name).strip() or section.name,
                stream=values.get("stream", "").strip(),
                state="enabled" if state in ("enabled", "installed") else state,
                profiles=tuple(p for p in values.get("profiles", "").replace(",", " ").split() if p),
            )
    return states


def local_defaults(files: Mapping[str, bytes]) -> dict[str, ModuleDefaults]:
    """/etc/dnf/modules.defaults.d/*.yaml: defaults the image sets over the repositories'."""
    out: dict[str, ModuleDefaults] = {}
    for path, content in sorted(files.items()):
        if path.endswith(".yaml"):
            out.update(parse_modules_yaml(content, "/" + path).defaults)
    return out


def split_nevra(nevra: str) -> tuple[str, str, str, str, str]:
    """'name-epoch:version-release.arch' -> (name, epoch, version, release, arch); epoch "0" when absent."""
    rest, _, arch = nevra.rpartition(".")
    rest, _, release = rest.rpartition("-")
    name, _, evr = rest.rpartition("-")
    epoch, sep, version = evr.partition(":")
    if not sep:
        epoch, version = "0", evr
    return name, epoch or "0", version, release, arch


def package_nevra(pkg: RpmPackage) -> str:
    return f"{pkg.name}-{pkg.epoch or '0'}:{pkg.version}-{pkg.release}.{pkg.arch}"


@dataclass(frozen=True)
class ModularFilter:
    """The outcome of dnf's modular filtering, ready to ask about packages."""

    active: frozenset[tuple[str, str]]  # (module, stream)
    active_artifacts: frozenset[str]
    modular_artifacts: frozenset[str]  # every NEVRA some module lists
    hidden_names: frozenset[str]  # names active streams ship: non-modular packages of these names are hidden

    def visible(self, pkg: RpmPackage, repo: RpmRepository | None = None) -> bool:
        if repo is not None and repo.module_hotfixes:
            return True
        nevra = package_nevra(pkg)
        if nevra in self.modular_artifacts:
            return nevra in self.active_artifacts
        return pkg.name not in self.hidden_names

    def filter(self, packages: Iterable[tuple[RpmPackage, RpmRepository]]) -> Iterator[RpmPackage]:
        for pkg, repo in packages:
            if self.visible(pkg, repo):
                yield pkg


def active_streams(metadata: ModuleMetadata, states: Mapping[str, ModuleState]) -> frozenset[tuple[str, str]]:
    """(module, stream) pairs dnf treats as active: enabled ones, and the defaults of modules without a state."""
    modules = {s.name for s in metadata.streams}
    out = set()
    for module in modules:
        state = states.get(module)
        if state is not None and state.state == "disabled":
            continue
        if state is not None and state.state == "enabled" and state.stream:
            out.add((module, state.stream))
            continue
        default = metadata.defaults.get(module)
        if default is not None and default.stream:
            out.add((module, default.stream))
    return frozenset(out)


def _platform_ok(stream: ModuleStream, platform: str | None) -> bool:
    """Whether one of the stream's dependency alternatives accepts the image's platform stream (e.g. el8). With
    no platform known (no PLATFORM_ID), dnf activates no stream that requires one."""
    if not stream.requires:
        return True
    for alt in stream.requires:
        wanted = alt.get("platform")
        if wanted is None or not wanted:
            return True
        if platform is None:
            continue
        excluded = {w[1:] for w in wanted if w.startswith("-")}
        included = [w for w in wanted if not w.startswith("-")]
        if platform in excluded:
            continue
        if not included or any(fnmatch.fnmatchcase(platform, w) for w in included):
            return True
    return False


def build_filter(metadata: ModuleMetadata, states: Mapping[str, ModuleState], platform: str | None = None
                 ) -> ModularFilter:
    """`platform` is the image's platform stream (os-release PLATFORM_ID "platform:el8" -> "el8", see
    `platform_of`); None when the image names none."""
    chosen = active_streams(metadata, states)
    # A chosen stream is active when one of its contexts fits the platform; dnf then offers the artifacts of all
    # its contexts (checked against dnf with two contexts for el8 and el9 on an el8 image).
    active = {(s.name, s.stream) for s in metadata.streams
              if (s.name, s.stream) in chosen and _platform_ok(s, platform)}
    modular: set[str] = set()
    active_artifacts: set[str] = set()
    for stream in metadata.streams:
        modular |= stream.artifacts
        if (stream.name, stream.stream) in active:
            active_artifacts |= stream.artifacts
    hidden = {split_nevra(n)[0] for n in active_artifacts if not n.endswith((".src", ".nosrc"))}
    return ModularFilter(frozenset(active), frozenset(active_artifacts), frozenset(modular), frozenset(hidden))


def platform_of(os_release_text: str) -> str | None:
    """'el8' from os-release's PLATFORM_ID="platform:el8"."""
    for line in os_release_text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "PLATFORM_ID":
            value = value.strip().strip("\"'")
            return value.partition(":")[2] or None
    return None


def load_modules(loaded: LoadedRepomd, fetcher: Fetcher) -> ModuleMetadata:
    """The repository's `modules` metadata (checksum-verified through repomd), or nothing for a plain one."""
    entry = loaded.repomd.entries.get("modules")
    if entry is None:
        return ModuleMetadata()
    what = f"{loaded.repo.description}: modules"
    path = fetch_entry(loaded, entry, fetcher)
    with open_decompressed(path, entry, what) as stream:
        return parse_modules_yaml(stream, what)
