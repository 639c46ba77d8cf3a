"""Which apt repositories and keys to use: the image's own, or those the user names instead."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import TYPE_CHECKING

from copa.errors import LocalIOError, ResolutionError, UsageError
from copa.pkg.apt.openpgp import keyring_for_source
from copa.pkg.apt.packages import PackageRecord, RepositoryIndex, load_indexes
from copa.pkg.apt.preferences import PREFERENCES, PREFERENCES_DIR, Preferences
from copa.pkg.apt.sources import AptSource, apply_mirrors, parse_file, parse_repository_line
from copa.pkg.base import ImageContext, RepositoryOptions
from copa.pkg.fetch import Fetcher, fetcher_for
from copa.pkg.openpgp import Keyring
from copa.pkg.repoauth import APT_AUTH_CONF, APT_AUTH_DIR, RepoAuth, apt_auth_files

if TYPE_CHECKING:  # only annotations: the resolver (and networkx under it) loads with the adapter, not here
    from copa.pkg.dpkg.plan import Candidate, Installed

SOURCES_LIST = "etc/apt/sources.list"
SOURCES_DIR = "etc/apt/sources.list.d"
# Where apt looks for keys by default, and where Signed-By conventionally points.
KEY_PATHS = ("etc/apt/trusted.gpg",)
KEY_DIRS = ("etc/apt/trusted.gpg.d", "usr/share/keyrings", "etc/apt/keyrings")

_HINT = "pass --repository 'deb URL SUITE COMPONENT' (or --repositories-file) and --keyring FILE"


def user_sources(repos: RepositoryOptions) -> list[AptSource]:
    sources = [parse_repository_line(line) for line in repos.repositories]
    if repos.repositories_file is not None:
        path = repos.repositories_file
        try:
            text = path.read_text()
        except OSError as e:
            raise LocalIOError(f"cannot read --repositories-file {path}: {e.strerror}") from None
        sources.extend(parse_file(text, str(path), UsageError))
    return sources


def image_sources(ctx: ImageContext) -> list[AptSource]:
    return sources_in(ctx.root.read(SOURCES_LIST), ctx.root.under(SOURCES_DIR))


def sources_in(sources_list: bytes | None, sources_dir: Mapping[str, bytes]) -> list[AptSource]:
    """The sources of an image's sources.list and sources.list.d/ files (path -> content)."""
    sources: list[AptSource] = []
    listed = [(SOURCES_LIST, sources_list), *sorted(sources_dir.items())]
    for path, content in listed:
        if content is None or not (path.endswith(".list") or path.endswith(".sources")):
            continue
        sources.extend(parse_file(content.decode("utf-8", "replace"), "/" + path))
    return sources


def select_sources(ctx: ImageContext) -> tuple[list[AptSource], bool]:
    """The sources to use and whether they are the user's (True) or the image's own (False)."""
    user = user_sources(ctx.repos)
    sources = user or image_sources(ctx)
    if not sources:
        raise ResolutionError(f"image {ctx.os_release.pretty_name} lists no apt repositories; {_HINT}")
    return apply_mirrors(sources, ctx.repos.mirrors), bool(user)


def _image_key_root(ctx: ImageContext, sources: list[AptSource]) -> Path:
    """Copy the keyrings the image trusts into a directory laid out like the image's root."""
    return key_root(ctx.root.read, ctx.root.under, sources, ctx.workdir / "apt-keys-root")


def key_root(read: Callable[[str], bytes | None], under: Callable[[str], Mapping[str, bytes]],
             sources: Sequence[AptSource], root: Path) -> Path:
    """The keyrings an image trusts (read through `read`/`under`), copied to `root` laid out as in the image."""
    paths = list(KEY_PATHS) + [s.lstrip("/") for src in sources for s in src.signed_by
                               if s.startswith("/") and "\n" not in s]
    found = {p: c for p in paths if (c := read(p)) is not None}
    for directory in KEY_DIRS:
        found.update(under(directory))
    for path, content in found.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    root.mkdir(parents=True, exist_ok=True)
    return root


def keyrings_for_sources(repos: RepositoryOptions, image_root: Callable[[], Path]) -> Callable[[AptSource], Keyring]:
    """Which keys vouch for a source: --keyring's when given, else the image's own (`image_root()`, written on
    first need), for the user's sources too (a mirror of the image's own archive is signed by the same keys)."""
    if repos.keyrings:
        user_ring = Keyring.merge(Keyring.from_file(p) for p in _existing(repos.keyrings))
        return lambda _source: user_ring
    return lambda source: keyring_for_source(source, image_root())


def load_index(ctx: ImageContext, architecture: str, keep: Callable[[str], bool] | AbstractSet[str] | None = None,
               fetched: dict[str, bytes] | None = None) -> RepositoryIndex:
    sources, _from_user = select_sources(ctx)
    # Written before the Releases are fetched (in threads, which all read it), and only when the image's keys count.
    root = None if ctx.repos.keyrings else _image_key_root(ctx, sources)

    def image_root() -> Path:
        assert root is not None  # asked for only when the image's keys count
        return root

    return load_indexes(sources, architecture, keyrings_for_sources(ctx.repos, image_root), ctx.repos.allow_unsigned,
                        fetcher=apt_fetcher(ctx), keep=keep, fetched=fetched)


def image_auth(files: Mapping[str, bytes] | None = None, *, ctx: ImageContext | None = None) -> RepoAuth:
    """The logins of the image's /etc/apt/auth.conf{,.d/*.conf}, from the view or from captured files."""
    if ctx is not None:
        return apt_auth_files(ctx.root.read(APT_AUTH_CONF), ctx.root.under(APT_AUTH_DIR))
    files = files or {}
    parts = {p: c for p, c in files.items() if p.startswith(APT_AUTH_DIR + "/")}
    return apt_auth_files(files.get(APT_AUTH_CONF), parts)


def apt_fetcher(ctx: ImageContext) -> Fetcher:
    """The run's fetcher with what apt in the image would log in with: --repository-auth first, then the image's
    auth.conf files (and a source URL's own user:pass@, which the fetcher takes from the URL)."""
    return fetcher_for(ctx, image_auth(ctx=ctx))


def _existing(paths: tuple[Path, ...]) -> list[Path]:
    for p in paths:
        if not p.is_file():
            raise LocalIOError(f"--keyring {p} does not exist or is not a file")
    return list(paths)


class AptPolicy:
    """copa.pkg.dpkg.plan.Policy from the image's apt preferences and each record's releases."""

    def __init__(self, preferences: Preferences) -> None:
        self.preferences = preferences

    def priority(self, candidate: Candidate) -> int:
        releases = candidate.releases if isinstance(candidate, PackageRecord) else ()
        return self.preferences.priority(candidate.package, candidate.source_name, candidate.version, releases)

    def installed_priority(self, installed: Installed, same: Sequence[Candidate]) -> int:
        releases = [r for c in same if isinstance(c, PackageRecord) for r in c.releases]
        return self.preferences.installed_priority(installed.name, installed.source, installed.version, releases)


def image_policy(ctx: ImageContext, default_release: str = "") -> AptPolicy:
    """What apt in the image would make of NotAutomatic releases, APT::Default-Release and
    /etc/apt/preferences{,.d/*}."""
    return AptPolicy(Preferences.from_files(ctx.root.read(PREFERENCES), ctx.root.under(PREFERENCES_DIR),
                                            default_release))
