"""Which apk repositories and keys to use: the image's /etc/apk/repositories, or the user's instead.

A repositories line is `[@tag] URL`: the index is at URL/<arch>/APKINDEX.tar.gz (or URL itself when it
names an index file) and packages beside it. Tagged repositories serve only packages pinned to them
(`name@tag` in /etc/apk/world, `s:` in the installed database), so they are used only when an installed
package is pinned to that tag.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from copa.errors import LocalIOError, NotFoundError, ResolutionError
from copa.pkg.apk.index import RepositoryIndex, read_apkindex
from copa.pkg.apk.signing import KEYS_DIR, Keys
from copa.pkg.base import ImageContext
from copa.pkg.fetch import Fetcher, fetcher_for
from copa.pkg.repoauth import Login, PrefixLogin, RepoAuth, strip_userinfo

REPOSITORIES = "etc/apk/repositories"
REPOSITORIES_DIR = "etc/apk/repositories.d"
ARCH_FILE = "etc/apk/arch"
INDEX_NAME = "APKINDEX.tar.gz"
_GOARCH = {
    ("amd64", ""): "x86_64", ("arm64", ""): "aarch64", ("arm64", "v8"): "aarch64", ("arm", "v7"): "armv7",
    ("arm", "v6"): "armhf", ("arm", ""): "armhf", ("386", ""): "x86", ("ppc64le", ""): "ppc64le",
    ("s390x", ""): "s390x", ("riscv64", ""): "riscv64", ("loong64", ""): "loongarch64",
}
_HINT = "pass --repository URL (e.g. the distribution's main repository) and --keyring FILE"


@dataclass(frozen=True, slots=True)
class Repository:
    url: str  # base URL, without the arch
    tag: str  # "" for untagged
    index_url: str
    # A login written into the repositories line (https://user:pass@host/...), as apk-tools accepts it: taken out
    # of the URLs above so that no message shows it, and sent for the URLs under `url`.
    login: Login | None = field(default=None, repr=False, compare=False)

    def package_url(self, arch: str, filename: str) -> str:
        return f"{self.url.rstrip('/')}/{arch}/{filename}"


def parse_repositories(text: str, arch: str) -> list[Repository]:
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        tag = ""
        if words[0].startswith("@"):
            tag, words = words[0][1:], words[1:]
        # apk-tools 3 allows a type word ("v2"/"v3") before the URL; keep the URL.
        if len(words) > 1 and words[0] in ("v2", "v3", "ndx"):
            words = words[1:]
        if not words:
            continue
        out.append(repository_for(words[0], arch, tag))
    return out


def repository_for(url: str, arch: str, tag: str = "") -> Repository:
    if url.endswith((".tar.gz", ".adb")):
        # An index file named directly: packages live beside it, without the arch directory.
        base = posixpath.dirname(url)
        return Repository(posixpath.dirname(base) if posixpath.basename(base) == arch else base, tag, url)
    base = url.rstrip("/")
    return Repository(base, tag, f"{base}/{arch}/{INDEX_NAME}")


def image_arch(ctx: ImageContext) -> str:
    text = (ctx.root.read(ARCH_FILE) or b"").decode("utf-8", "replace").split()
    if text:
        return text[0]
    arch = arch_for(ctx.architecture, ctx.variant)
    if arch is None:
        raise ResolutionError(f"unknown apk architecture for {ctx.architecture}{ctx.variant and '/' + ctx.variant}; "
                              "the image has no /etc/apk/arch")
    return arch


def arch_for(oci_arch: str, oci_variant: str) -> str | None:
    """apk's name of an OCI architecture (and variant), None if apk has none."""
    return _GOARCH.get((oci_arch, oci_variant)) or _GOARCH.get((oci_arch, ""))


def apply_mirrors(url: str, mirrors: Iterable[tuple[str, str]]) -> str:
    for old, new in mirrors:
        if url.startswith(old):
            return new + url[len(old):]
    return url


def select_repositories(ctx: ImageContext, arch: str, pinned_tags: set[str]) -> list[Repository]:
    lines = list(ctx.repos.repositories)
    if ctx.repos.repositories_file is not None:
        try:
            lines.append(ctx.repos.repositories_file.read_text())
        except OSError as e:
            raise LocalIOError(f"cannot read --repositories-file {ctx.repos.repositories_file}: {e.strerror}") from None
    if lines:
        repos = parse_repositories("\n".join(lines), arch)
    else:
        texts = [ctx.root.read(REPOSITORIES) or b"", *ctx.root.under(REPOSITORIES_DIR).values()]
        repos = parse_repositories("\n".join(t.decode("utf-8", "replace") for t in texts), arch)
    repos = [r for r in repos if not r.tag or r.tag in pinned_tags]
    if not repos:
        raise ResolutionError(f"image {ctx.os_release.pretty_name} lists no apk repositories; {_HINT}")
    out = []
    for r in repos:
        url, login = strip_userinfo(apply_mirrors(r.url, ctx.repos.mirrors))
        index_url, index_login = strip_userinfo(apply_mirrors(r.index_url, ctx.repos.mirrors))
        out.append(Repository(url, r.tag, index_url, login or index_login))
    return out


def apk_fetcher(ctx: ImageContext, repos: Sequence[Repository]) -> Fetcher:
    """The run's fetcher (the user's --repository-auth and client certificate first) with the logins of the
    repositories' URLs."""
    return fetcher_for(ctx, RepoAuth(tuple(PrefixLogin(r.url, r.login) for r in repos if r.login is not None)))


def trusted_keys(ctx: ImageContext) -> Keys:
    if ctx.repos.keyrings:
        for p in ctx.repos.keyrings:
            if not p.is_file():
                raise LocalIOError(f"--keyring {p} does not exist or is not a file")
        return Keys.from_files(ctx.repos.keyrings)
    return Keys.from_image(ctx.root.under(KEYS_DIR))


def load_indexes(ctx: ImageContext, repos: list[Repository], keys: Keys, fetcher: Fetcher
                 ) -> list[tuple[Repository, RepositoryIndex]]:
    from copa.pkg.apk.prefetch import ApkAhead

    # Bodies the early download fetched while the image was read (unverified, as any download: checked below).
    ahead = ctx.ahead if isinstance(ctx.ahead, ApkAhead) else None
    early = ahead.indexes if ahead is not None else {}
    # And those it verified and parsed: taken only when verified with these very keys (the body is the one below).
    parsed = ahead.parsed if ahead is not None and ahead.keys == keys else {}

    def fetch(repo: Repository) -> bytes:
        if repo.index_url in early:
            return early[repo.index_url]
        try:
            return fetcher.get_bytes(repo.index_url, f"apk index {repo.index_url}")
        except NotFoundError as e:
            raise ResolutionError(f"{e.message}; {_HINT}") from None

    # Every repository's index at once (an image lists main and community, or several Wolfi ones): the waits for
    # the servers overlap. The first failure in the image's order is raised once all are done.
    if len(repos) > 1:
        with ThreadPoolExecutor(max_workers=min(len(repos), fetcher.workers), thread_name_prefix="copa-fetch") as pool:
            futures = [pool.submit(fetch, repo) for repo in repos]
        bodies = [f.result() for f in futures]
    else:
        bodies = [fetch(repo) for repo in repos]
    return [(repo, _index(parsed, repo, data, keys, ctx.repos.allow_unsigned)) for repo, data in zip(repos, bodies,
                                                                                                      strict=True)]


def _index(parsed: Mapping[str, RepositoryIndex], repo: Repository, data: bytes, keys: Keys,
           allow_unsigned: bool) -> RepositoryIndex:
    done = parsed.get(repo.index_url)
    # The early parse verified a signature by one of `keys` (never an unsigned index) of the body `data` is, for
    # the same repository URL: what read_apkindex would return here.
    if done is not None and done.url == repo.url and done.signed_by:
        return done
    return read_apkindex(data, keys, allow_unsigned, repo.url, f"apk index {repo.index_url}")
