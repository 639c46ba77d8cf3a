"""Credentials and TLS client certificates for package repositories.

Logins come from netrc-format files read as apt reads /etc/apt/auth.conf (apt-pkg/contrib/netrc.cc): tokens split
on spaces, tabs and newlines, no comments, unknown tokens ignored; `machine [scheme://]HOST[:PORT][/PATH]` opens an
entry whose `login`/`password` follow until the next `machine`. An entry without a scheme applies to https (and
tor+https) only, so a password is never sent in clear unless the file says `machine http://...`. A HOST entry
matches any port of that host when the URL names a port, and only the bare host when it does not; HOST:PORT
matches exactly; an entry with a path matches when HOST[:PORT]PATH of the URL starts with it (a plain string
prefix: `example.org/deb` covers `/debian`). Within a file the first matching entry wins; across files, the first
one that yields a login or password. A URL's own `user:pass@` wins over every file, as in apt.

Other families add per-repository logins (dnf's `username=`/`password=`, apk's `https://user:pass@host/...`) as
URL-prefix entries, and per-repository client certificates; --repository-cert applies to every https URL.
Nothing here is ever written into an image, and nothing here prints a password.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote

from copa.errors import LocalIOError, UsageError

if TYPE_CHECKING:
    from copa.pkg.base import RepositoryOptions

# Where apt reads logins in an image (Dir::Etc::netrc, Dir::Etc::netrcparts).
APT_AUTH_CONF = "etc/apt/auth.conf"
APT_AUTH_DIR = "etc/apt/auth.conf.d"

_KEYWORDS = ("machine", "login", "password")
_PART_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-:.")


@dataclass(frozen=True, slots=True)
class Login:
    user: str
    password: str

    def __repr__(self) -> str:  # a Login in a log line or traceback must not show the password
        return f"Login(user={self.user!r}, password=***)"


@dataclass(frozen=True, slots=True)
class Uri:
    """A URL cut as apt's URI::CopyFrom cuts it: host without brackets, port 0 when absent, path with query."""

    access: str
    user: str
    password: str
    host: str
    port: int
    path: str
    bare: str  # the URL as given, without its user:pass@

    @classmethod
    def parse(cls, url: str) -> Uri:
        access, colon, rest = url.partition(":")
        if not colon:
            return cls(url, "", "", "", 0, "/", url)
        rest = rest[2:] if rest.startswith("//") else rest
        slash = _host_end(rest)
        netloc, path = rest[:slash], rest[slash:] or "/"
        userinfo, at, hostport = netloc.rpartition("@")
        user = password = ""
        if at:
            u, _, p = userinfo.partition(":")
            user, password = unquote(u), unquote(p)
        host, port = _split_port(hostport)
        return cls(access, user, password, host, port, path, strip_userinfo(url)[0])


def _host_end(rest: str) -> int:
    bracket = False
    for i, c in enumerate(rest):
        if c == "[":
            bracket = True
        elif c == "]" and bracket:
            bracket = False
        elif c == "/" and not bracket:
            return i
    return len(rest)


def _split_port(hostport: str) -> tuple[str, int]:
    port_end, bracket, out = 0, False, list[str]()
    for c in hostport:
        if c == "[":
            bracket = True
            continue
        if c == "]" and bracket:
            bracket = False
            port_end = len(out)
            continue
        out.append(c)
    if bracket:
        return "", 0
    host = "".join(out)
    pos = host.rfind(":")
    if pos < 0 or pos < port_end:
        return host, 0
    digits = ""
    for c in host[pos + 1:]:  # atoi: leading digits only
        if not c.isdigit():
            break
        digits += c
    return host[:pos], int(digits) if digits else 0


def strip_userinfo(url: str) -> tuple[str, Login | None]:
    """The URL without `user:pass@`, and that login (None when the URL has none)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url, None
    end = _host_end(rest)
    userinfo, at, hostport = rest[:end].rpartition("@")
    if not at:
        return url, None
    u, _, p = userinfo.partition(":")
    return f"{scheme}://{hostport}{rest[end:]}", Login(unquote(u), unquote(p))


class LoginSource(Protocol):
    def match(self, uri: Uri) -> Login | None:
        """The login of the first entry matching `uri` (fields may be empty), None if none matches."""
        ...


@dataclass(frozen=True, slots=True)
class NetrcFile:
    """One auth.conf/netrc file: its tokens, and the line each came from (for the user's messages)."""

    name: str
    tokens: tuple[str, ...] = field(repr=False)  # logins and passwords among them
    lines: tuple[int, ...] = field(repr=False)

    @classmethod
    def parse(cls, text: str, name: str) -> NetrcFile:
        tokens: list[str] = []
        lines: list[int] = []
        for number, line in enumerate(text.split("\n"), 1):
            # apt splits on space and tab only (a stray \r or \v stays part of a token), after dropping \r\n at the end.
            for token in line.rstrip("\r\n").replace("\t", " ").split(" "):
                if token:
                    tokens.append(token)
                    lines.append(number)
        return cls(name, tuple(tokens), tuple(lines))

    def check(self) -> None:
        """Stricter than apt, for the user's own file: what apt would silently ignore is most likely a mistake."""
        if "machine" not in self.tokens:
            raise UsageError(f"--repository-auth {self.name}: no 'machine' entry; expected netrc lines like "
                             "'machine HOST[/PATH] login USER password PASS'")
        seen_machine = False
        for i, token in enumerate(self.tokens):
            where = f"--repository-auth {self.name}:{self.lines[i]}"
            if token == "default" or token == "macdef":
                raise UsageError(f"{where}: {token!r} entries are not supported (apt ignores them); "
                                 "name each repository host with 'machine HOST'")
            if token not in _KEYWORDS:
                continue
            if token == "machine":
                seen_machine = True
            elif not seen_machine:
                raise UsageError(f"{where}: {token!r} before any 'machine'; start the entry with 'machine HOST'")
            if i + 1 >= len(self.tokens):
                raise UsageError(f"{where}: {token!r} without a value at the end of the file; complete the entry")

    def match(self, uri: Uri) -> Login | None:
        # apt's state machine, token by token, including its quirks (a value equal to a keyword in an entry that
        # does not match is read as that keyword), so the same file selects the same login as apt.
        lookfor = f"{uri.host}:{uri.port}{uri.path}" if uri.port else f"{uri.host}{uri.path}"
        host_part = lookfor[: len(lookfor) - len(uri.path)]
        state = "no"
        user = password = ""
        for token in self.tokens:
            if state == "no":
                if token == "machine":
                    state = "machine"
            elif state == "machine":
                state = "no"
                scheme_given = "://" in token
                if scheme_given:
                    if not token.startswith(uri.access + "://"):
                        continue
                    token = token[len(uri.access) + 3:]
                if "/" not in token:
                    good = (uri.port != 0 and uri.host == token) or host_part == token
                else:
                    good = lookfor.startswith(token)
                if good and not scheme_given and uri.access not in ("https", "tor+https"):
                    good = False  # apt warns: credentials match but the protocol is not encrypted
                if good:
                    state = "good"
            elif state == "good":
                if token == "login":
                    state = "login"
                elif token == "password":
                    state = "password"
                elif token == "machine":
                    return Login(user, password)
            elif state == "login":
                user, state = token, "good"
            else:
                password, state = token, "good"
        return Login(user, password) if state == "good" else None


@dataclass(frozen=True, slots=True)
class PrefixLogin:
    """A login for every URL under a repository's URL (dnf's username/password, apk's URL userinfo)."""

    prefix: str
    login: Login

    def match(self, uri: Uri) -> Login | None:
        return self.login if _under(uri.bare, self.prefix) else None


def _under(url: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    return url == prefix or url.startswith(prefix + "/") or url.startswith(prefix + "?")


@dataclass(frozen=True, slots=True)
class ClientTls:
    """TLS settings for https URLs under `prefix` ("" for every one): a client certificate and its key, and
    optionally the CA bundle the server is checked against (dnf's sslcacert)."""

    prefix: str
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    def applies(self, url: str) -> bool:
        return url.startswith("https://") and (not self.prefix or _under(url, self.prefix))


@dataclass(frozen=True, slots=True)
class RepoAuth:
    """Every login source and TLS setting of a run, in the order they are consulted."""

    logins: tuple[LoginSource, ...] = ()
    tls: tuple[ClientTls, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.logins or self.tls)

    def then(self, other: RepoAuth) -> RepoAuth:
        """These sources first, then `other`'s."""
        return RepoAuth(self.logins + other.logins, self.tls + other.tls)

    def login_for(self, url: str) -> Login | None:
        uri = Uri.parse(url)
        if uri.user or uri.password:
            return Login(uri.user, uri.password)
        for source in self.logins:
            found = source.match(uri)
            if found is not None and (found.user or found.password):
                return found
        return None

    def cert_for(self, url: str) -> tuple[str, str] | str | None:
        """What copa.web takes as `cert=`: (cert, key), a file with both, or None."""
        for tls in self.tls:
            if tls.cert is not None and tls.applies(url):
                return (str(tls.cert), str(tls.key)) if tls.key is not None else str(tls.cert)
        return None

    def ca_for(self, url: str) -> str | None:
        for tls in self.tls:
            if tls.ca is not None and tls.applies(url):
                return str(tls.ca)
        return None


def user_auth(repos: RepositoryOptions) -> RepoAuth:
    """--repository-auth FILE and --repository-cert/--repository-key, checked now: a missing or malformed file is
    the user's mistake to hear about before any download."""
    logins: tuple[LoginSource, ...] = ()
    if repos.auth_file is not None:
        path = repos.auth_file
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise LocalIOError(f"--repository-auth {path} does not exist; pass an existing netrc-format file") \
                from None
        except OSError as e:
            raise LocalIOError(f"cannot read --repository-auth {path}: {e.strerror}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"--repository-auth {path} is not a text file; expected netrc lines like "
                             "'machine HOST login USER password PASS'") from None
        netrc = NetrcFile.parse(text, str(path))
        netrc.check()
        logins = (netrc,)
    tls: tuple[ClientTls, ...] = ()
    if repos.client_cert is not None:
        for flag, p in (("--repository-cert", repos.client_cert), ("--repository-key", repos.client_key)):
            if p is not None and not p.is_file():
                raise LocalIOError(f"{flag} {p} does not exist or is not a file")
        tls = (ClientTls("", repos.client_cert, repos.client_key),)
    return RepoAuth(logins, tls)


def apt_auth_files(auth_conf: bytes | None, auth_dir: Mapping[str, bytes]) -> RepoAuth:
    """The logins of an image's /etc/apt/auth.conf and auth.conf.d/*.conf, in apt's order (auth.conf, then the
    parts sorted by name; apt skips hidden names, other extensions and names with characters run-parts refuses)."""
    files: list[NetrcFile] = []
    if auth_conf is not None:
        files.append(NetrcFile.parse(auth_conf.decode("utf-8", "replace"), "/" + APT_AUTH_CONF))
    for path in sorted(auth_dir):
        name = path.rsplit("/", 1)[-1]
        if path != f"{APT_AUTH_DIR}/{name}" or not _apt_part_name(name):
            continue
        files.append(NetrcFile.parse(auth_dir[path].decode("utf-8", "replace"), "/" + path))
    return RepoAuth(tuple(files))


def _apt_part_name(name: str) -> bool:
    return (not name.startswith(".") and "." in name and name.rsplit(".", 1)[1] == "conf"
            and all(c in _PART_NAME_CHARS for c in name))


def logins_from_urls(urls: Iterable[str]) -> RepoAuth:
    """Logins written into repository URLs (`https://user:pass@host/...`), each for the URLs under it."""
    out: list[LoginSource] = []
    for url in urls:
        bare, login = strip_userinfo(url)
        if login is not None:
            out.append(PrefixLogin(bare, login))
    return RepoAuth(tuple(out))
