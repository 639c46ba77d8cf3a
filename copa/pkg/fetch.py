"""HTTP(S) and file:// downloads into the content-addressed cache, with bounded retries and parallelism: what
every package adapter downloads (indexes, packages) goes through here.

Retries happen only where trying again can help: connection failures, timeouts, 5xx and 429. A 404 is a
NotFoundError at once (callers use it to fall back, e.g. from InRelease to Release). Every download that has a
known sha256 is streamed to disk and verified before it becomes visible in the cache.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar
from urllib.parse import unquote, urljoin, urlparse

from copa import events
from copa.errors import LocalIOError, NotFoundError, RegistryError
from copa.net import describe_connection_error, is_permanent, redact, redact_text
from copa.pkg.cache import Cache
from copa.pkg.repoauth import RepoAuth, strip_userinfo, user_auth
from copa.web.errors import BodyError, ConnectError, TimedOut, TlsError, WebError
from copa.web.response import Response
from copa.web.session import Session

if TYPE_CHECKING:
    from copa.pkg.base import ImageContext, RepositoryOptions

T = TypeVar("T")

_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_TRANSIENT = (
    ConnectError,
    TimedOut,
    BodyError,
)
_MAX_REDIRECTS = 10  # as apt's http method


class _Retryable(Exception):
    """Internal: a transient failure worth another attempt."""


@dataclass(frozen=True, slots=True)
class FetchItem:
    url: str
    sha256: str
    size: int | None
    what: str


class Fetcher:
    def __init__(
        self,
        cache: Cache | None = None,
        *,
        session: Session | None = None,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.5,
        workers: int = 6,
        verify: bool | str = True,
        auth: RepoAuth | None = None,
    ) -> None:
        self.cache = cache if cache is not None else Cache()
        self.timeout = timeout
        self.verify = verify  # True, or a CA bundle file for repositories behind a private CA
        self.retries = retries
        self.backoff = backoff
        self.workers = workers
        self._session = session
        self._lock = threading.Lock()
        # Downloads report progress in the scope (platform) the fetcher was made for, also from pool threads.
        self.scope = events.current_scope()
        # Logins and client certificates, looked up per request URL (never set on the session: a session-wide
        # login would be sent to every host, and to wherever a redirect points).
        self.auth = auth if auth is not None else RepoAuth()

    def with_auth(self, more: RepoAuth) -> Fetcher:
        """This fetcher (same cache, settings and connections) consulting `more` after its own credentials."""
        if not more:
            return self
        twin = Fetcher(self.cache, session=self.session, timeout=self.timeout, retries=self.retries,
                       backoff=self.backoff, workers=self.workers, verify=self.verify, auth=self.auth.then(more))
        twin.scope = self.scope
        return twin

    def _get(self, url: str, what: str) -> tuple[Response, bool]:
        """The response for `url`, following redirects here so that each hop gets the login and certificate of
        its own URL (as apt looks auth.conf up again for a redirect target); and whether a login was sent."""
        for _ in range(_MAX_REDIRECTS + 1):
            login = self.auth.login_for(url)
            bare, _userinfo = strip_userinfo(url)
            resp = self.session.get(
                bare, stream=True, timeout=self.timeout, allow_redirects=False,
                auth=(login.user, login.password) if login is not None else None,
                cert=self.auth.cert_for(bare), verify=self.auth.ca_for(bare) or self.verify,
            )
            if not resp.is_redirect:
                return resp, login is not None
            url = urljoin(bare, resp.location or "")
            resp.close()
        raise RegistryError(f"{what}: more than {_MAX_REDIRECTS} redirects from {redact(url)}; "
                            "check the repository URL")

    def _tls_hint(self, e: BaseException, url: str) -> str:
        # The server ending the handshake (an alert such as TLS 1.3's "certificate required", or just closing) is
        # what a server that wants a client certificate does; anything else (a certificate our side cannot verify,
        # a plain-HTTP server answering) calls for the CA bundle or the URL.
        text = str(e).lower()
        rejected = "certificate verify failed" not in text and any(
            s in text for s in ("certificate required", "handshake failure", "bad certificate", "unknown ca",
                                "eof occurred", "connection reset", "unexpected eof"))
        if not rejected:
            return "pass --ca-bundle for a private CA"
        if self.auth.cert_for(url) is None:
            return "if the repository requires a client certificate, pass --repository-cert and --repository-key"
        return "the repository did not accept the client certificate (--repository-cert) or TLS settings"

    @property
    def session(self) -> Session:
        with self._lock:
            if self._session is None:
                # Index files are checksummed as served: the session asks for no on-the-fly compression.
                s = Session(pool_size=max(self.workers, 10))
                s.headers["User-Agent"] = "copa-apt/0.1"
                s.verify = self.verify
                self._session = s
            return self._session

    @contextmanager
    def _open(self, url: str, what: str) -> Iterator[BinaryIO]:
        parsed = urlparse(url)
        if parsed.scheme == "file":
            path = Path(unquote(parsed.path))
            try:
                f = path.open("rb")
            except FileNotFoundError as e:
                raise NotFoundError(f"{what}: {path} does not exist; check the file: repository path") from e
            except OSError as e:
                raise LocalIOError(f"{what}: cannot read {path}: {e.strerror}") from e
            with f:
                yield f
            return
        if parsed.scheme not in ("http", "https"):
            raise RegistryError(f"{what}: unsupported URL scheme in {redact(url)}; use http, https or file")
        try:
            resp, sent_login = self._get(url, what)
        except _TRANSIENT as e:
            if is_permanent(e):
                hint = self._tls_hint(e, url) if isinstance(e, TlsError) \
                    else "check the repository URL"
                raise RegistryError(f"{what}: cannot fetch {redact(url)}: {describe_connection_error(e)}; {hint}") \
                    from None
            raise _Retryable(f"{describe_connection_error(e)}: {e}") from e
        except WebError as e:
            reason = redact_text(describe_connection_error(e))
            raise RegistryError(f"{what}: request to {redact(url)} failed: {reason}") from None
        with resp:
            if resp.status_code in _RETRY_STATUS:
                raise _Retryable(f"HTTP {resp.status_code}")
            if resp.status_code in (404, 410):
                raise NotFoundError(
                    f"{what}: {redact(url)} not found (HTTP {resp.status_code}); check the repository URL")
            if resp.status_code in (401, 403):
                raise RegistryError(_refused(what, url, resp.status_code, sent_login))
            if resp.status_code != 200:
                raise RegistryError(f"{what}: {redact(url)} returned HTTP {resp.status_code}")
            # The raw stream: bytes exactly as stored on the server (no transparent decompression).
            yield resp.raw  # type: ignore[misc]

    def _with_retries(self, url: str, what: str, consume: Callable[[BinaryIO], T]) -> T:
        delay = self.backoff
        for attempt in range(1, self.retries + 1):
            try:
                with self._open(url, what) as stream:
                    return consume(stream)
            except _Retryable as e:
                reason = str(e)
            except _TRANSIENT as e:  # failure mid-stream: start the download over
                reason = f"{type(e).__name__}: {e}"
            if attempt < self.retries:
                time.sleep(delay)
                delay *= 2
        raise RegistryError(
            f"{what}: {redact(url)} failed after {self.retries} attempts ({reason}); check the network")

    @property
    def progress_scope(self) -> str | None:
        # The current scope (the platform) when one is set; a pool thread has none, and the fetcher's own applies.
        return events.current_scope() or self.scope

    def get_bytes(self, url: str, what: str, limit: int = 64 << 20) -> bytes:
        """A small document (InRelease, Release.gpg) read whole, refusing anything absurdly large."""

        def consume(stream: BinaryIO) -> bytes:
            # Read to the end: one read(n) of the raw stream returns what arrived before a connection closed early
            # without complaint; only the read after it raises the short body (IncompleteRead), which is retried.
            # Accepted, a cut InRelease failed its signature check as tampered with (exit 5) instead.
            data = bytearray()
            while chunk := stream.read(limit + 1 - len(data)):
                data += chunk
                if len(data) > limit:
                    raise RegistryError(f"{what}: {redact(url)} is larger than {limit} bytes; refusing it")
            return bytes(data)

        name = url.rsplit("/", 1)[-1]
        label = what if what.endswith(name) else f"{what}: {name}"
        with events.task(events.Kind.DOWNLOAD, label, None, scope=self.progress_scope) as task:
            return self._with_retries(url, what, lambda s: consume(events.counted(s, task.restarted())))

    def fetch(self, item: FetchItem) -> Path:
        """The verified cached file for `item`, downloading it only if the cache does not hold it."""
        hit = self.cache.lookup(item.sha256, item.size)
        if hit is not None:
            return hit
        # Platforms patched at once ask for the same files (indexes, Architecture: all packages): one thread
        # downloads, the others wait for it and find the file in the cache.
        with inflight(item.sha256):
            hit = self.cache.lookup(item.sha256, item.size)
            if hit is not None:
                return hit
            with events.task(events.Kind.DOWNLOAD, item.what, item.size, scope=self.progress_scope) as task:
                return self._with_retries(item.url, item.what, lambda s: self.cache.store_stream(
                    events.counted(s, task.restarted()), item.sha256, item.size, item.what))

    def fetch_all(self, items: Sequence[FetchItem]) -> list[Path]:
        """Fetch in parallel; the first failure (in item order) is raised after all workers finish."""
        if len(items) <= 1:
            return [self.fetch(i) for i in items]
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="copa-fetch") as pool:
            futures = [pool.submit(self.fetch, i) for i in items]
        return [fut.result() for fut in futures]


_inflight_locks: dict[str, threading.Lock] = {}
_inflight_guard = threading.Lock()


@contextmanager
def inflight(key: str) -> Iterator[None]:
    """Held while `key` (a file of the cache) is downloaded: a second download of it waits, then finds it there."""
    with _inflight_guard:
        lock = _inflight_locks.setdefault(key, threading.Lock())
    with lock:
        yield


_default: Fetcher | None = None
_default_lock = threading.Lock()


def default_fetcher() -> Fetcher:
    global _default
    with _default_lock:
        if _default is None:
            _default = Fetcher()
        return _default


def fetcher_for(ctx: ImageContext, image_auth: RepoAuth | None = None) -> Fetcher:
    """The fetcher a patch run uses: the user's cache directory, --timeout and --ca-bundle, the user's repository
    credentials (--repository-auth, --repository-cert/-key) and after them `image_auth`, what the image's own
    package manager configuration holds (its adapter reads it)."""
    fetcher = make_fetcher(ctx.cache_dir, ctx.timeout, ctx.ca_bundle, ctx.repos)
    return fetcher.with_auth(image_auth) if image_auth is not None else fetcher


def make_fetcher(cache_dir: Path | None, timeout: float, ca_bundle: str | None,
                 repos: RepositoryOptions | None = None) -> Fetcher:
    auth = user_auth(repos) if repos is not None else None
    return Fetcher(Cache(cache_dir) if cache_dir else None, timeout=timeout, verify=ca_bundle or True, auth=auth)


def _refused(what: str, url: str, status: int, sent_login: bool) -> str:
    if sent_login:
        return (f"{what}: {redact(url)} refused the credentials (HTTP {status}); check the login for this "
                "repository in --repository-auth or the image's configuration")
    return (f"{what}: {redact(url)} requires credentials (HTTP {status}); pass --repository-auth FILE "
            "(netrc lines: machine HOST[/PATH] login USER password PASS)")
