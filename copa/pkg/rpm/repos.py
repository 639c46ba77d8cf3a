"""Which rpm-md repositories an image's dnf (or yum) would use, read the way dnf 4 / libdnf reads them.

Sources: `/etc/dnf/dnf.conf` (or `/etc/yum.conf` on yum images) `[main]`, every `*.repo` file of its `reposdir`
(sorted, as dnf globs them), and the variables of `/etc/yum/vars` then `/etc/dnf/vars` (later wins). The semantics
below were checked against dnf 4.14's own parser (tests/test_rpm_repos.py runs it as the oracle):

* a line is `key=value` (a ':' separator, a key outside a section or without '=' makes dnf skip the whole file);
  '#' and ';' start comment lines only (no inline comments: `enabled=1 # x` is an invalid value); indented lines
  continue the previous value; a section repeated in one file merges, a repo id repeated in a later file is
  ignored, `[main]` in a .repo file is ignored;
* an invalid value (bad boolean, number) is ignored with a warning: the option keeps its default;
* list options (baseurl, gpgkey, exclude...) split on whitespace and commas; `exclude`/`excludepkgs` (one option
  under two names) and `includepkgs` append across keys, and an empty value clears what came before;
* gpgcheck, repo_gpgcheck, sslverify, skip_if_unavailable default to [main]'s values; priority (99) and cost
  (1000) do not; the main `exclude` applies to every repository on top of each repository's own;
* `$var` and `${var}` (name: letters, digits, '_') are replaced in every value; unknown ones stay as written,
  and a replacement is not scanned again. On yum-only images (yum.conf, no dnf.conf: Amazon Linux 2, CentOS 7)
  yum 3's rule applies instead: `$var` only, its name lowercased (not checked against yum, which is not here).

Each enabled repository becomes a frozen `RpmRepository`. The user's `--repository URL` / `--repositories-file`
replace the image's repositories, `--keyring` its keys, `--mirror FROM=TO` rewrites URL prefixes.
"""

from __future__ import annotations

import fnmatch
import logging
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

from copa.errors import IntegrityError, LocalIOError, NotFoundError, UsageError
from copa.net import redact_text
from copa.pkg.base import OSRelease, RepositoryOptions
from copa.pkg.fetch import Fetcher
from copa.pkg.openpgp import Keyring
from copa.pkg.repoauth import ClientTls, Login, LoginSource, PrefixLogin, RepoAuth, strip_userinfo
from copa.pkg.rpm.deps import EQUAL, Dep

log = logging.getLogger(__name__)

DNF_CONF = "etc/dnf/dnf.conf"
YUM_CONF = "etc/yum.conf"
DEFAULT_REPOSDIRS = ("/etc/yum.repos.d", "/etc/yum/repos.d", "/etc/distro.repos.d")
YUM_REPOSDIRS = ("/etc/yum.repos.d", "/etc/yum/repos.d")
VARSDIRS = ("/etc/yum/vars", "/etc/dnf/vars")  # dnf reads both, in this order: /etc/dnf/vars wins
KEY_DIR = "etc/pki/rpm-gpg"
# dnf's defaults for [main]'s installonlypkgs (packages installed side by side, never upgraded in place).
DEFAULT_INSTALLONLY = ("kernel", "kernel-PAE", "installonlypkg(kernel)", "installonlypkg(kernel-module)",
                       "installonlypkg(vm)", "multiversion(kernel)")

_TRUE = frozenset({"1", "yes", "true", "on"})
_FALSE = frozenset({"0", "no", "false", "off"})
_REPO_ID = re.compile(r"^[A-Za-z0-9_.:-]+$")  # what libdnf accepts as a repository id
_LIST_SPLIT = re.compile(r"[\s,]+")
_VAR_CHARS = re.compile(r"[A-Za-z0-9_]*")

# OCI architecture -> (dnf's $basearch, $arch). Variants of arm map to the hard-float base arch dnf uses.
_ARCHES = {
    ("amd64", ""): ("x86_64", "x86_64"),
    ("arm64", ""): ("aarch64", "aarch64"),
    ("arm64", "v8"): ("aarch64", "aarch64"),
    ("ppc64le", ""): ("ppc64le", "ppc64le"),
    ("s390x", ""): ("s390x", "s390x"),
    ("386", ""): ("i386", "i686"),
    ("arm", "v7"): ("armhfp", "armv7hl"),
    ("arm", ""): ("armhfp", "armv7hl"),
    ("riscv64", ""): ("riscv64", "riscv64"),
}


def rpm_architecture(oci_arch: str, oci_variant: str = "") -> tuple[str, str]:
    """($basearch, $arch) for an OCI platform: amd64 -> x86_64, arm64 -> aarch64."""
    return _ARCHES.get((oci_arch, oci_variant)) or _ARCHES.get((oci_arch, "")) or (oci_arch, oci_arch)


class Tree:
    """The files repository configuration is read from: an image's merged View, or the paths captured so far
    (a mapping) during the layer scan. Paths are relative to the image root, without a leading '/'."""

    def __init__(self, read: Callable[[str], bytes | None], under: Callable[[str], Mapping[str, bytes]]) -> None:
        self.read = read
        self.under = under

    @classmethod
    def of_mapping(cls, files: Mapping[str, bytes]) -> Tree:
        def under(prefix: str) -> dict[str, bytes]:
            pre = prefix.strip("/") + "/"
            return {p: c for p, c in sorted(files.items()) if p.startswith(pre)}

        return cls(lambda p: files.get(p.strip("/")), under)


# ---------------------------------------------------------------------------------------------------- INI reading


@dataclass(frozen=True, slots=True)
class _Section:
    name: str
    keys: tuple[tuple[str, str], ...]  # in order of first appearance; a key set again keeps its place, last value
    where: str


def parse_ini(text: str, path: str) -> list[_Section]:
    """libdnf's ini reading. Raises ValueError for what makes dnf skip the whole file."""
    sections: dict[str, dict[str, str]] = {}
    first_line: dict[str, int] = {}
    current: dict[str, str] | None = None
    last_key: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if line[0] in " \t" and current is not None and last_key is not None:
            current[last_key] += "\n" + stripped  # a continuation line
            continue
        if stripped.startswith("["):
            if not stripped.endswith("]"):
                raise ValueError(f"{path}:{number}: malformed section header {stripped!r}")
            name = stripped[1:-1].strip()
            current = sections.setdefault(name, {})
            first_line.setdefault(name, number)
            last_key = None
            continue
        key, sep, value = stripped.partition("=")
        if not sep or current is None:
            raise ValueError(f"{path}:{number}: expected 'key=value' inside a [section], got {stripped!r}")
        last_key = key.strip()
        current[last_key] = value.strip()
    return [_Section(n, tuple(k.items()), f"{path}:{first_line[n]}") for n, k in sections.items()]


def expand(text: str, variables: Mapping[str, str]) -> str:
    """libdnf's ConfigParser::substitute: `$name` / `${name}`; unknown names stay; replacements are not rescanned."""
    out: list[str] = []
    i = 0
    while True:
        start = text.find("$", i)
        if start < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:start])
        pos = start + 1
        bracket = pos < len(text) and text[pos] == "{"
        if bracket:
            pos += 1
        m = _VAR_CHARS.match(text, pos)
        end = m.end() if m else pos
        name = text[pos:end]
        if bracket and (end >= len(text) or text[end] != "}"):
            out.append(text[start:end])
            i = end
            continue
        value = variables.get(name) if name else None
        if value is None:
            out.append(text[start:end])
            i = end
            continue
        out.append(value)
        i = end + 1 if bracket else end


_YUM_VAR = re.compile(r"\$(\w+)")


def expand_yum(text: str, variables: Mapping[str, str]) -> str:
    """yum 3's varReplace (Amazon Linux 2, CentOS 7): `$name` only (no braces), the name looked up lowercased;
    unknown ones stay as written."""
    return _YUM_VAR.sub(lambda m: variables.get(m.group(1).lower(), m.group(0)), text)


def _split(value: str) -> list[str]:
    return [v for v in _LIST_SPLIT.split(value.strip()) if v]


class _Options:
    """One section's raw values, read option by option with dnf's defaults and warnings."""

    def __init__(self, section: _Section, variables: Mapping[str, str], warnings: list[str], yum: bool = False
                 ) -> None:
        self.where = section.where
        replace_vars = expand_yum if yum else expand
        self.items = [(k, replace_vars(v, variables)) for k, v in section.keys]
        self.values = dict(self.items)
        self.warnings = warnings

    def _invalid(self, key: str, value: str, why: str) -> None:
        self.warnings.append(f"{self.where}: ignoring {key}={value!r} ({why}); dnf ignores it too")

    def flag(self, key: str, default: bool) -> bool:
        value = self.values.get(key)
        if value is None:
            return default
        low = value.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        self._invalid(key, value, "not a boolean")
        return default

    def number(self, key: str, default: int) -> int:
        value = self.values.get(key)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            self._invalid(key, value, "not a number")
            return default

    def text(self, key: str) -> str:
        return self.values.get(key, "")

    def words(self, key: str) -> list[str]:
        return _split(self.values.get(key, ""))

    def appended(self, keys: Iterable[str], start: Sequence[str] = ()) -> tuple[str, ...]:
        """A list option that appends across its key names; an empty value clears it."""
        wanted = set(keys)
        out = list(start)
        for key, value in self.items:
            if key not in wanted:
                continue
            if not value.strip():
                out = []
            else:
                out.extend(_split(value))
        return tuple(out)


# ----------------------------------------------------------------------------------------------------- the values


@dataclass(frozen=True, slots=True)
class RepoTls:
    """dnf's username/password and sslclientcert/sslclientkey/sslcacert (paths in the image), as [main] sets them
    for every repository and a repository overrides them."""

    username: str = ""
    password: str = field(default="", repr=False)
    sslclientcert: str = ""
    sslclientkey: str = ""
    sslcacert: str = ""

    def __bool__(self) -> bool:
        return any((self.username, self.password, self.sslclientcert, self.sslclientkey, self.sslcacert))


_TLS_KEYS = ("username", "password", "sslclientcert", "sslclientkey", "sslcacert")


def _tls_from(o: _Options, default: RepoTls) -> RepoTls:
    return RepoTls(**{k: o.values.get(k, getattr(default, k)) for k in _TLS_KEYS})


@dataclass(frozen=True, slots=True)
class MainConfig:
    """dnf.conf's [main]: what applies to every repository, and the defaults repositories inherit."""

    gpgcheck: bool = False  # libdnf's default; distributions ship gpgcheck=1 in dnf.conf
    repo_gpgcheck: bool = False
    sslverify: bool = True
    skip_if_unavailable: bool = False
    excludepkgs: tuple[str, ...] = ()  # hide these from every repository
    includepkgs: tuple[str, ...] = ()  # when set, only these from any repository
    reposdir: tuple[str, ...] = DEFAULT_REPOSDIRS
    installonlypkgs: tuple[str, ...] = DEFAULT_INSTALLONLY
    best: bool = False  # dnf's default; RHEL's dnf.conf sets best=True
    tls: RepoTls = field(default_factory=lambda: RepoTls())  # defaults of every repository's login and TLS files
    origin: str = ""  # the file read, or "" for the defaults
    yum: bool = False  # read from yum.conf: yum 3 reads the repository files too (its variable syntax)


@dataclass(frozen=True, slots=True)
class RpmRepository:
    """One enabled repository, variables expanded, user's mirrors applied."""

    id: str
    name: str
    baseurls: tuple[str, ...]  # without a trailing '/'
    mirrorlist: str = ""
    metalink: str = ""
    gpgcheck: bool = True  # packages must carry a signature by one of the keys
    repo_gpgcheck: bool = False  # repodata/repomd.xml must carry a detached signature (repomd.xml.asc)
    gpgkeys: tuple[str, ...] = ()  # file:///etc/pki/rpm-gpg/... (the image's) or http(s) URLs
    priority: int = 99  # lower wins: a package of a lower-priority repository hides the others' same name
    cost: int = 1000
    excludepkgs: tuple[str, ...] = ()  # the repository's own, globs on name / NEVRA forms
    includepkgs: tuple[str, ...] = ()
    module_hotfixes: bool = False  # packages of this repository ignore modular filtering
    sslverify: bool = True
    skip_if_unavailable: bool = False
    origin: str = ""  # "path:line" where it was defined, for messages
    original_urls: tuple[str, ...] = ()  # baseurls/mirrorlist/metalink as the image names them, if --mirror changed
    from_user: bool = False  # --repository / --repositories-file
    tls: RepoTls = field(default_factory=lambda: RepoTls())  # its login and TLS files
    # Logins written into its URLs (https://user:pass@host/...), taken out of them so that no message shows them.
    url_logins: tuple[PrefixLogin, ...] = field(default=(), repr=False)

    @property
    def description(self) -> str:
        return f"repository {self.id} ({self.origin})" if self.origin else f"repository {self.id}"


@dataclass(frozen=True, slots=True)
class RepoSetup:
    """What dnf would work with: [main], the enabled repositories (in dnf's reading order) and the variables."""

    main: MainConfig
    repos: tuple[RpmRepository, ...]
    variables: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # what dnf would warn about and skip (bad values, unreadable files)
    from_user: bool = False

    def visible(self, repo: RpmRepository, name: str, evr: tuple[str, str, str] = ("0", "", ""), arch: str = ""
                ) -> bool:
        """Whether dnf would offer this package of `repo` at all (excludepkgs / includepkgs of main and repo)."""
        spellings = package_spellings(name, *evr, arch)
        excluded = self.main.excludepkgs + repo.excludepkgs
        if any(fnmatch.fnmatchcase(s, pattern) for pattern in excluded for s in spellings):
            return False
        for included in (self.main.includepkgs, repo.includepkgs):
            if included and not any(fnmatch.fnmatchcase(s, p) for p in included for s in spellings):
                return False
        return True


def package_spellings(name: str, epoch: str, version: str, release: str, arch: str) -> tuple[str, ...]:
    """The forms a dnf package spec (as in excludepkgs) matches: name, name.arch, name-ver, name-ver-rel[.arch],
    name-epoch:ver-rel[.arch]."""
    out = [name]
    if arch:
        out.append(f"{name}.{arch}")
    if version:
        out.append(f"{name}-{version}")
        if release:
            out += [f"{name}-{version}-{release}", f"{name}-{epoch or '0'}:{version}-{release}"]
            if arch:
                out += [f"{name}-{version}-{release}.{arch}", f"{name}-{epoch or '0'}:{version}-{release}.{arch}"]
    return tuple(out)


# ------------------------------------------------------------------------------------------------------ variables


def releasever_for(os_release: OSRelease, provided: str | None = None) -> str:
    """$releasever: the `system-release(releasever)` the image's rpmdb provides when the caller knows it (dnf's
    own source), else os-release's VERSION_ID: its major number on RHEL-likes (VERSION_ID=9.3 -> 9, as their
    redhat-release packages provide), all of it on Fedora and Amazon Linux (2, 2023)."""
    if provided:
        return provided
    version = os_release.version_id
    if os_release.id in ("fedora", "amzn"):
        return version
    return version.split(".", 1)[0]


# What dnf 4 asks the rpmdb for, in this order, to find $releasever (dnf.const.DISTROVERPKG).
DISTROVERPKG = ("system-release(releasever)", "system-release", "distribution-release(releasever)",
                "distribution-release", "redhat-release", "suse-release")


def detect_releasever(installed: Iterable[tuple[str, str, Iterable[Dep]]]) -> str | None:
    """$releasever as dnf's detect_releasever finds it in the image's rpmdb: the first package (database order)
    providing one of DISTROVERPKG; the provide's version when it is `= version` and the package is not named as
    the provide, else the package's version. `installed` is (name, version, provides) per installed package;
    pass the result to `read_setup` as `provided_releasever`."""
    packages = list(installed)
    for wanted in DISTROVERPKG:
        for name, version, provides in packages:
            match = next((d for d in provides if d.name == wanted), None)
            if match is None:
                continue
            if match.flags == EQUAL and match.evr and name != wanted:
                return match.evr
            return version
    return None


def variables_for(tree: Tree, os_release: OSRelease, oci_arch: str, oci_variant: str = "",
                  provided_releasever: str | None = None, varsdirs: Sequence[str] = VARSDIRS) -> dict[str, str]:
    basearch, arch = rpm_architecture(oci_arch, oci_variant)
    variables = {"arch": arch, "basearch": basearch}
    releasever = releasever_for(os_release, provided_releasever)
    if releasever:
        variables["releasever"] = releasever
    # Files in the vars directories come last: dnf lets them override even $releasever.
    for directory in varsdirs:
        for path, content in tree.under(directory.strip("/")).items():
            rel = path[len(directory.strip("/")) + 1:]
            if "/" in rel:
                continue
            first = content.decode("utf-8", "replace").split("\n", 1)[0]  # dnf reads only the first line
            variables[rel] = first
    # dnf >= 4.18's derived variables; older dnf leaves them as written (no image relies on that).
    rv = variables.get("releasever", "")
    if rv:
        major, _, minor = rv.partition(".")
        variables.setdefault("releasever_major", major)
        variables.setdefault("releasever_minor", minor)
    return variables


# ------------------------------------------------------------------------------------------------- config reading


def _main_from(sections: list[_Section], variables: Mapping[str, str], warnings: list[str], origin: str,
               yum: bool) -> MainConfig:
    section = next((s for s in sections if s.name == "main"), None)
    default = MainConfig(reposdir=YUM_REPOSDIRS if yum else DEFAULT_REPOSDIRS, origin=origin, yum=yum)
    if section is None:
        return default
    o = _Options(section, variables, warnings, yum)
    return MainConfig(
        gpgcheck=o.flag("gpgcheck", default.gpgcheck),
        repo_gpgcheck=o.flag("repo_gpgcheck", default.repo_gpgcheck),
        sslverify=o.flag("sslverify", default.sslverify),
        skip_if_unavailable=o.flag("skip_if_unavailable", default.skip_if_unavailable),
        excludepkgs=o.appended(("exclude", "excludepkgs")),
        includepkgs=o.appended(("includepkgs",)),
        reposdir=tuple(o.words("reposdir")) if "reposdir" in o.values else default.reposdir,
        installonlypkgs=o.appended(("installonlypkgs",), DEFAULT_INSTALLONLY),
        best=o.flag("best", default.best),
        tls=_tls_from(o, default.tls),
        origin=origin,
        yum=yum,
    )


def read_main(tree: Tree, variables: Mapping[str, str], warnings: list[str]) -> MainConfig:
    """dnf.conf's [main], or yum.conf's on images with yum only (RHEL 8+ links yum.conf to dnf.conf anyway)."""
    for path, yum in ((DNF_CONF, False), (YUM_CONF, True)):
        content = tree.read(path)
        if content is None:
            continue
        try:
            sections = parse_ini(content.decode("utf-8", "replace"), "/" + path)
        except ValueError as e:
            warnings.append(f"{e}; dnf cannot read /{path} either, using its defaults")
            return MainConfig(reposdir=YUM_REPOSDIRS if yum else DEFAULT_REPOSDIRS, origin="/" + path, yum=yum)
        return _main_from(sections, variables, warnings, "/" + path, yum)
    return MainConfig()


def _repo_from(section: _Section, main: MainConfig, variables: Mapping[str, str], warnings: list[str],
               from_user: bool) -> RpmRepository | None:
    """An enabled repository, or None (disabled, or one dnf would not load)."""
    if not _REPO_ID.match(section.name):
        warnings.append(f"{section.where}: bad repository id {section.name!r}; dnf skips it")
        return None
    o = _Options(section, variables, warnings, main.yum)
    if not o.flag("enabled", True):
        return None
    baseurls = tuple(_normal_url(u) for u in o.words("baseurl"))
    mirrorlist, metalink = o.text("mirrorlist"), o.text("metalink")
    if not baseurls and not mirrorlist and not metalink:
        warnings.append(f"{section.where}: repository {section.name} has no baseurl, mirrorlist or metalink; "
                        "dnf cannot use it either")
        return None
    return RpmRepository(
        id=section.name,
        name=o.text("name") or section.name,
        baseurls=baseurls,
        mirrorlist=mirrorlist,
        metalink=metalink,
        gpgcheck=o.flag("gpgcheck", main.gpgcheck),
        repo_gpgcheck=o.flag("repo_gpgcheck", main.repo_gpgcheck),
        gpgkeys=tuple(o.words("gpgkey")),
        priority=o.number("priority", 99),
        cost=o.number("cost", 1000),
        excludepkgs=o.appended(("exclude", "excludepkgs")),
        includepkgs=o.appended(("includepkgs",)),
        module_hotfixes=o.flag("module_hotfixes", False),
        sslverify=o.flag("sslverify", main.sslverify),
        skip_if_unavailable=o.flag("skip_if_unavailable", main.skip_if_unavailable),
        origin=section.where,
        from_user=from_user,
        tls=_tls_from(o, main.tls),
    )


def _normal_url(url: str) -> str:
    """dnf takes a bare path as a file: URL."""
    if url.startswith("/"):
        url = "file://" + url
    return url.rstrip("/")


def parse_repo_file(text: str, path: str, main: MainConfig, variables: Mapping[str, str], warnings: list[str],
                    from_user: bool = False) -> list[tuple[str, RpmRepository | None]]:
    """(repo id, enabled repository or None) for each section of a .repo file but [main]."""
    sections = parse_ini(text, path)
    return [(s.name, _repo_from(s, main, variables, warnings, from_user)) for s in sections if s.name != "main"]


def image_repositories(tree: Tree, main: MainConfig, variables: Mapping[str, str], warnings: list[str]
                       ) -> list[RpmRepository]:
    seen: set[str] = set()
    repos: list[RpmRepository] = []
    for directory in main.reposdir:
        rel = directory.strip("/")
        files = sorted((p, c) for p, c in tree.under(rel).items()
                       if p.endswith(".repo") and "/" not in p[len(rel) + 1:])
        for path, content in files:
            try:
                entries = parse_repo_file(content.decode("utf-8", "replace"), "/" + path, main, variables, warnings)
            except ValueError as e:
                warnings.append(f"{e}; dnf skips the whole file")
                continue
            for repo_id, repo in entries:
                if repo_id in seen:
                    warnings.append(f"/{path}: repository {repo_id} is defined more than once; the first counts")
                    continue
                seen.add(repo_id)
                if repo is None:
                    continue
                local = [u for u in repo.baseurls if u.startswith("file:")]
                if local:
                    # A path inside the image (a mounted DVD, a baked-in repository): not something to read from
                    # the machine copa runs on.
                    warnings.append(f"{repo.description}: {local[0]} is a path in the image; skipped "
                                    "(pass --repository for a copy of it)")
                    repo = replace(repo, baseurls=tuple(u for u in repo.baseurls if not u.startswith("file:")))
                    if not (repo.baseurls or repo.mirrorlist or repo.metalink):
                        continue
                repos.append(repo)
    return repos


def user_repositories(options: RepositoryOptions, main: MainConfig, variables: Mapping[str, str],
                      warnings: list[str]) -> list[RpmRepository]:
    """--repository URL (a baseurl each) and --repositories-file (.repo format)."""
    repos: list[RpmRepository] = []
    for number, url in enumerate(options.repositories, 1):
        url = expand(url.strip(), variables)
        scheme = urlsplit(url).scheme
        if scheme not in ("http", "https", "file") and not url.startswith("/"):
            raise UsageError(f"--repository {redact_text(url)!r}: expected a repository URL (http, https or file) "
                             "holding repodata/repomd.xml")
        repos.append(RpmRepository(id=f"copa-repository-{number}", name=redact_text(url), baseurls=(_normal_url(url),),
                                   gpgcheck=True, origin="--repository", from_user=True))
    path = options.repositories_file
    if path is not None:
        try:
            text = path.read_text()
        except OSError as e:
            raise LocalIOError(f"cannot read --repositories-file {path}: {e.strerror}") from None
        try:
            entries = parse_repo_file(text, str(path), main, variables, warnings, from_user=True)
        except ValueError as e:
            raise UsageError(f"--repositories-file: {e}; expected dnf's .repo format") from None
        seen = {r.id for r in repos}
        for repo_id, repo in entries:
            if repo is not None and repo_id not in seen:
                seen.add(repo_id)
                repos.append(repo)
    return repos


def apply_mirrors(repos: Sequence[RpmRepository], mirrors: Sequence[tuple[str, str]]) -> list[RpmRepository]:
    """--mirror FROM=TO on baseurls, mirrorlist, metalink and http(s) gpgkey URLs (first matching prefix wins,
    on whole path segments)."""
    if not mirrors:
        return list(repos)
    out = []
    for repo in repos:
        baseurls = tuple(mirror_url(u, mirrors) for u in repo.baseurls)
        mirrorlist = mirror_url(repo.mirrorlist, mirrors) if repo.mirrorlist else ""
        metalink = mirror_url(repo.metalink, mirrors) if repo.metalink else ""
        keys = tuple(mirror_url(k, mirrors) if not k.startswith("file:") else k for k in repo.gpgkeys)
        changed = (baseurls, mirrorlist, metalink) != (repo.baseurls, repo.mirrorlist, repo.metalink)
        original = repo.original_urls or tuple(u for u in (*repo.baseurls, repo.mirrorlist, repo.metalink) if u)
        out.append(replace(repo, baseurls=baseurls, mirrorlist=mirrorlist, metalink=metalink, gpgkeys=keys,
                           original_urls=original if changed else repo.original_urls))
    return out


def mirror_url(url: str, mirrors: Sequence[tuple[str, str]]) -> str:
    for old, new in mirrors:
        old_n = old.rstrip("/")
        if url == old_n or url.startswith(old_n + "/") or (url.startswith(old_n) and url[len(old_n)] in "?#"):
            return new.rstrip("/") + url[len(old_n):]
    return url


def _without_userinfo(repo: RpmRepository) -> RpmRepository:
    logins = list(repo.url_logins)

    def bare(url: str) -> str:
        stripped, login = strip_userinfo(url)
        if login is not None:
            logins.append(PrefixLogin(stripped, login))
        return stripped

    baseurls = tuple(bare(u) for u in repo.baseurls)
    mirrorlist, metalink = bare(repo.mirrorlist), bare(repo.metalink)
    original = tuple(strip_userinfo(u)[0] for u in repo.original_urls)
    if len(logins) == len(repo.url_logins):
        return repo
    return replace(repo, baseurls=baseurls, mirrorlist=mirrorlist, metalink=metalink, original_urls=original,
                   url_logins=tuple(logins))


def read_setup(tree: Tree, os_release: OSRelease, oci_arch: str, oci_variant: str, options: RepositoryOptions,
               provided_releasever: str | None = None) -> RepoSetup:
    """The repositories to use: the user's when given, else the image's enabled ones."""
    warnings: list[str] = []
    variables = variables_for(tree, os_release, oci_arch, oci_variant, provided_releasever)
    main = read_main(tree, variables, warnings)
    user = user_repositories(options, main, variables, warnings)
    # The user's repositories replace the image's even when they enable none (then there is nothing to use).
    from_user = bool(options.repositories or options.repositories_file is not None)
    repos = user if from_user else image_repositories(tree, main, variables, warnings)
    if options.allow_unsigned:
        # --allow-unsigned-repositories: no signature is required of repodata or packages (checksums still are).
        repos = [replace(r, gpgcheck=False, repo_gpgcheck=False) for r in repos]
    repos = [_without_userinfo(r) for r in apply_mirrors(repos, options.mirrors)]
    for w in warnings:
        log.warning("%s", w)
    return RepoSetup(main, tuple(repos), variables, tuple(warnings), from_user)


# ------------------------------------------------------------------------------------------------------------ keys


def repository_keyring(repo: RpmRepository, tree: Tree, options: RepositoryOptions, fetcher: Fetcher | None
                       ) -> Keyring:
    """The keys that vouch for `repo`: --keyring's when given (they replace the image's), else the repository's
    gpgkey entries (file: URLs read from the image, http(s) ones downloaded, as dnf imports them); a user's
    --repository without --keyring trusts every key of the image's /etc/pki/rpm-gpg (a mirror of the image's own
    distribution is signed by its keys)."""
    if options.keyrings:
        rings = []
        for path in options.keyrings:
            if not path.is_file():
                raise LocalIOError(f"--keyring {path} does not exist or is not a file")
            rings.append(Keyring.from_file(path))
        return Keyring.merge(rings)
    if repo.from_user and not repo.gpgkeys:
        return Keyring.merge(Keyring.from_bytes(c, "/" + p) for p, c in tree.under(KEY_DIR).items())
    rings = [_key(url, repo, tree, fetcher) for url in repo.gpgkeys]
    return Keyring.merge(rings)


def _key(url: str, repo: RpmRepository, tree: Tree, fetcher: Fetcher | None) -> Keyring:
    parts = urlsplit(url)
    if parts.scheme == "file" or url.startswith("/"):
        # Always the image's file, never the host's: the path is normalized inside the image root.
        path = posixpath.normpath("/" + unquote(parts.path if parts.scheme else url)).lstrip("/")
        content = tree.read(path)
        if content is None:
            raise IntegrityError(f"{repo.description}: gpgkey /{path} is not in the image; pass --keyring FILE "
                                 "with the repository's signing key")
        return Keyring.from_bytes(content, "/" + path)
    if parts.scheme in ("http", "https"):
        if fetcher is None:
            raise IntegrityError(f"{repo.description}: gpgkey {url} needs a download; pass --keyring FILE")
        try:
            data = fetcher.get_bytes(url, f"{repo.description}: gpgkey", limit=1 << 20)
        except NotFoundError as e:
            raise IntegrityError(f"{e}; pass --keyring FILE with the repository's signing key") from None
        return Keyring.from_bytes(data, url)
    raise UsageError(f"{repo.description}: gpgkey {url!r} is neither a file: nor an http(s) URL")


# ------------------------------------------------------------------------------------------- logins, certificates


def repository_auth(setup: RepoSetup, tree: Tree, workdir: Path | None) -> RepoAuth:
    """Each repository's username/password (sent, as librepo sends them, only when a username is set) and its
    sslclientcert/sslclientkey/sslcacert, for the URLs under its baseurls, mirrorlist and metalink. The files are
    the image's (read from `tree`, copied under `workdir` for the TLS library); one missing in the image is
    skipped with a warning, as the request then fails with a TLS error that names the repository. Without a
    `workdir` (the early prefetch) only the logins."""
    logins: list[LoginSource] = []
    tls: list[ClientTls] = []
    for number, repo in enumerate(setup.repos):
        logins += repo.url_logins
        t = repo.tls
        if not t:
            continue
        urls = [u for u in (*repo.baseurls, repo.mirrorlist, repo.metalink) if u.startswith(("http://", "https://"))]
        if t.username:
            logins += [PrefixLogin(u, Login(t.username, t.password)) for u in urls]
        files = {k: _tls_file(getattr(t, k), k, repo, tree, workdir / "repo-tls" / str(number))
                 for k in ("sslclientcert", "sslclientkey", "sslcacert") if getattr(t, k)} if workdir else {}
        if files and workdir is not None:
            tls += [ClientTls(u, files.get("sslclientcert"), files.get("sslclientkey"), files.get("sslcacert"))
                    for u in urls]
    return RepoAuth(tuple(logins), tuple(tls))


def _tls_file(path: str, key: str, repo: RpmRepository, tree: Tree, directory: Path) -> Path | None:
    if repo.from_user:  # a --repositories-file names files of the machine copa runs on
        if not Path(path).is_file():
            raise LocalIOError(f"--repositories-file: {repo.description}: {key} {path} does not exist")
        return Path(path)
    inside = posixpath.normpath("/" + path).lstrip("/")  # the image's file, never the host's
    content = tree.read(inside)
    if content is None:
        log.warning("%s: %s /%s is not in the image; ignored", repo.description, key, inside)
        return None
    target = directory / key
    directory.mkdir(parents=True, exist_ok=True)
    target.touch(mode=0o600)
    target.write_bytes(content)
    return target
