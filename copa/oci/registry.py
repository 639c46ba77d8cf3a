"""OCI distribution (registry) client: an image Source and a push sink, on copa.web.

One `RegistryClient` holds one HTTP session and one authenticator per registry host. Transient
failures (connection errors, 5xx, 429) are retried with exponential backoff; 4xx never are. Blob
bodies are streamed both ways and verified against their digests; a push writes blobs, then child
manifests, then the root manifest, so the tag appears last and a failed push leaves none.
"""

from __future__ import annotations

import contextvars
import email.utils
import hashlib
import io
import json
import logging
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar
from urllib.parse import quote, urljoin, urlsplit

from copa import events
from copa.errors import AuthError, CopaError, IntegrityError, NotFoundError, RegistryError, UsageError
from copa.net import describe_connection_error, is_permanent
from copa.oci.auth import Authenticator, Challenge, parse_www_authenticate, repository_scope
from copa.oci.bodies import blob_deadline, read_body, too_slow
from copa.oci.certs import (
    ClientPair,
    check_client_pair,
    client_cert_refusal,
    default_cert_dirs,
    host_cert_dir,
    merged_bundle,
    read_host_dir,
)
from copa.oci.credentials import lookup
from copa.oci.digest import Digest, verifying
from copa.oci.model import Descriptor, Document, Index, Manifest, ManifestFormatError, MediaType, Opaque, parse_document
from copa.oci.reference import Reference
from copa.web.errors import TooManyRedirects, WebError
from copa.web.response import Response
from copa.web.session import Session

if TYPE_CHECKING:
    # Types only: a patch's first request (this client's) must not wait for the layer codecs these import.
    from copa.oci.image import Bundle
    from copa.oci.layerstore import BlobHomes

T = TypeVar("T")

log = logging.getLogger(__name__)

MANIFEST_ACCEPT = ", ".join(
    (MediaType.OCI_INDEX, MediaType.OCI_MANIFEST, MediaType.DOCKER_LIST, MediaType.DOCKER_MANIFEST)
)
_MAX_MANIFEST = 8 << 20  # distribution refuses manifests over 4 MiB; anything far larger is not one
_MAX_RETRY_AFTER = 120.0
# Go's http client follows at most 10 redirects (skopeo's and Copacetic's limit).
MAX_REDIRECTS = 10
_MAX_ERROR_BODY = 64 << 10
_ERROR_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    """How to talk to registries.

    `insecure` hosts speak plain HTTP (localhost and 127.0.0.0/8 always do). `auth_file` defaults
    to $REGISTRY_AUTH_FILE, else ~/.docker/config.json. A blob larger than `chunk_size` is uploaded
    in chunks of that size. `retries` is how many times a transient failure is retried, waiting
    `backoff` * 2**attempt seconds (capped at `max_backoff`) unless the registry sends Retry-After.

    `client_cert`/`client_key` (--cert/--key) are presented to every registry. A registry's certs.d directory
    (`cert_dirs`/`host[:port]`, as skopeo and podman read it; None: copa.oci.certs.default_cert_dirs()) adds its
    `*.crt` CA files and, unless `client_cert` is given, its `NAME.cert`/`NAME.key` pair.
    """

    insecure: frozenset[str] = field(default_factory=frozenset)
    ca_bundle: str | None = None
    timeout: float = 60.0
    auth_file: str | None = None
    retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 30.0
    chunk_size: int = 32 << 20
    user_agent: str = "copa/0.1"
    client_cert: str | None = None
    client_key: str | None = None
    cert_dirs: tuple[str, ...] | None = None


class _Transient(RegistryError):
    """A failure worth retrying; `retry_after` is the registry's requested wait, if any."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _error_detail(resp: Response) -> tuple[str, str]:
    """(code, message) from the registry's JSON errors body, else the HTTP reason."""
    code, message = "", ""
    try:
        # A streamed error body is read bounded: a hostile registry could trickle it or never end it.
        raw = resp.content if resp.raw is None or resp.raw.closed else read_body(
            resp, _MAX_ERROR_BODY, _ERROR_SECONDS, "error body")
        doc: Any = json.loads(raw)
        first = doc["errors"][0]
        code, message = str(first.get("code", "")), str(first.get("message", ""))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError, WebError,
            CopaError):
        pass
    return code or (resp.reason or "").upper().replace(" ", "_") or "ERROR", message


def _retry_after(resp: Response) -> float | None:
    value = resp.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return min(float(value), _MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, min(when.timestamp() - time.time(), _MAX_RETRY_AFTER))


class RegistryClient:
    """HTTP access to OCI distribution registries, with auth, retries and error mapping."""

    def __init__(self, options: RegistryOptions | None = None) -> None:
        self.options = options or RegistryOptions()
        self.session = Session()
        self.session.headers["User-Agent"] = self.options.user_agent
        self.session.max_redirects = MAX_REDIRECTS
        self._auth: dict[str, Authenticator] = {}
        # Checked now: a wrong --cert/--key is a usage error, not a failed handshake later.
        self._client = check_client_pair(self.options.client_cert, self.options.client_key)
        if self._client is not None:
            self.session.cert = self._client.as_cert()  # token servers see it too, as with skopeo
        self._tls: dict[str, tuple[bool | str, ClientPair | None]] = {}
        self._tls_lock = threading.Lock()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def close(self) -> None:
        self.session.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- addressing -------------------------------------------------------------------------

    def _tls_for(self, ref: Reference) -> tuple[bool | str, ClientPair | None]:
        """(verify, client pair) for requests to `ref`'s registry: the options plus its certs.d directory."""
        with self._tls_lock:  # blobs are fetched from pool threads
            found = self._tls.get(ref.registry)
            if found is None:
                found = self._tls[ref.registry] = self._host_tls(ref.registry)
            return found

    def _host_tls(self, registry: str) -> tuple[bool | str, ClientPair | None]:
        verify: bool | str = self.options.ca_bundle or True
        client = self._client
        dirs = self.options.cert_dirs
        bases = default_cert_dirs() if dirs is None else tuple(Path(d) for d in dirs)
        directory = host_cert_dir(registry, bases)
        if directory is not None:
            host = read_host_dir(directory)
            if host.ca_files:
                if self._tmp is None:
                    self._tmp = tempfile.TemporaryDirectory(prefix="copa-ca-")
                name = hashlib.sha256(registry.encode()).hexdigest()[:16]
                verify = str(merged_bundle(self.options.ca_bundle, host.ca_files, Path(self._tmp.name) / f"{name}.pem"))
            client = client or host.client
        return verify, client

    def _request_tls(self, ref: Reference) -> dict[str, Any]:
        verify, client = self._tls_for(ref)
        return {"verify": verify, "cert": client.as_cert() if client is not None else None}

    def base_url(self, ref: Reference) -> str:
        plain = ref.is_local or ref.registry in self.options.insecure or ref.api_host in self.options.insecure
        return f"{'http' if plain else 'https'}://{ref.api_host}"

    def repo_url(self, ref: Reference, tail: str) -> str:
        return f"{self.base_url(ref)}/v2/{ref.repository}/{tail}"

    # -- retries ----------------------------------------------------------------------------

    def retrying(self, fn: Callable[[], T]) -> T:
        """Call `fn`, retrying on transient registry failures with exponential backoff."""
        attempt = 0
        while True:
            try:
                return fn()
            except _Transient as e:
                if attempt >= self.options.retries:
                    suffix = f" (gave up after {attempt + 1} attempts)" if attempt else ""
                    raise RegistryError(e.message + suffix) from None
                if e.retry_after is not None and e.retry_after > self.options.timeout:
                    raise RegistryError(f"{e.message} (it asks to wait {e.retry_after:g} s, longer than --timeout "
                                        f"{self.options.timeout:g} s)") from None
                if e.retry_after is not None:
                    delay = e.retry_after
                else:
                    delay = min(self.options.max_backoff, self.options.backoff * (2**attempt))
                    delay *= 1 + random.random() / 4  # jitter, so parallel clients do not retry in step
                time.sleep(delay)
                attempt += 1

    # -- auth -------------------------------------------------------------------------------

    def _authenticator(self, ref: Reference) -> Authenticator:
        auth = self._auth.get(ref.registry)
        if auth is None:
            challenge = self.retrying(lambda: self._ping(ref))
            auth = Authenticator(
                ref.registry,
                challenge,
                lambda: lookup(ref.registry, self.options.auth_file),
                self.session,
                self.options.timeout,
                self._tls_for(ref)[0],
            )
            self._auth[ref.registry] = auth
        return auth

    def _ping(self, ref: Reference) -> Challenge | None:
        url = f"{self.base_url(ref)}/v2/"
        try:
            # Streamed: only the status and headers count, so a body that never ends cannot hold us.
            resp = self.session.get(url, timeout=self.options.timeout, stream=True, **self._request_tls(ref))
        except WebError as e:
            raise self._connection_error(ref, e) from None
        with resp:
            if resp.status_code == 200:
                return None
            if resp.status_code == 401:
                return _pick_challenge(resp.headers.get("WWW-Authenticate", ""))
            if resp.status_code == 429 or resp.status_code >= 500:
                raise _Transient(
                    f"registry {ref.registry} answered {resp.status_code} to GET /v2/; try again later",
                    _retry_after(resp),
                )
            raise RegistryError(
                f"registry {ref.registry} answered {resp.status_code} to GET /v2/: "
                "it does not look like an OCI distribution registry; check the address"
            )

    def _connection_error(self, ref: Reference, e: BaseException) -> RegistryError:
        if isinstance(e, TooManyRedirects):
            return RegistryError(f"registry {ref.registry} redirected more than {MAX_REDIRECTS} times (a redirect "
                                 f"loop); check the registry address and any proxy in front of it")
        client = self._tls.get(ref.registry, (True, self._client))[1]
        refusal = client_cert_refusal(e, ref.registry, client)
        if refusal is not None:
            return RegistryError(refusal)
        reason = describe_connection_error(e)
        hint = "check the address or --insecure"
        if reason == "TLS handshake failed":
            hint = "pass --insecure for a plain-HTTP registry, or --ca-bundle for a private CA"
        message = f"cannot reach registry {ref.registry}: {reason}; {hint}"
        # Only what may pass is retried: a TLS failure or an unknown host fails the same way every time.
        return RegistryError(message) if is_permanent(e) else _Transient(message)

    # -- requests ---------------------------------------------------------------------------

    def send(
        self,
        method: str,
        ref: Reference,
        url: str,
        *,
        actions: str = "pull",
        extra_scopes: tuple[str, ...] = (),
        headers: dict[str, str] | None = None,
        data: bytes | _SizedBody | Iterator[bytes] | None = None,
        stream: bool = False,
        retry: bool = True,
    ) -> Response:
        """One authenticated request. Raises AuthError on 401/403 and retries transient failures
        (when `retry`); returns any other response for the caller to interpret.

        `data` is bytes (replayable) or a one-shot streamed body, which callers retry themselves."""

        def once() -> Response:
            return self._send_once(method, ref, url, actions, extra_scopes, headers, data, stream)

        return self.retrying(once) if retry else once()

    def _send_once(
        self,
        method: str,
        ref: Reference,
        url: str,
        actions: str,
        extra_scopes: tuple[str, ...],
        headers: dict[str, str] | None,
        data: bytes | _SizedBody | Iterator[bytes] | None,
        stream: bool,
    ) -> Response:
        auth = self._authenticator(ref)
        scopes = (repository_scope(ref.repository, actions), *extra_scopes)
        replayable = data is None or isinstance(data, bytes)
        for attempt in (0, 1):
            h = dict(headers or {})
            value = auth.header(scopes, ref.repository)
            if value:
                h["Authorization"] = value
            try:
                resp = self.session.request(
                    method, url, headers=h, data=data, stream=stream, timeout=self.options.timeout,
                    **self._request_tls(ref),
                )
            except WebError as e:
                raise self._connection_error(ref, e) from None
            if resp.status_code == 401 and attempt == 0 and replayable:
                if auth.challenge is None:
                    # /v2/ was open but this repository is not: learn its challenge now.
                    auth.challenge = _pick_challenge(resp.headers.get("WWW-Authenticate", ""))
                    if auth.challenge is not None:
                        resp.close()
                        continue
                elif auth.challenge.scheme == "bearer":
                    # The token may have expired; a fresh one settles it either way.
                    auth.invalidate(scopes)
                    resp.close()
                    continue
            break
        if resp.status_code in (401, 403):
            code, _ = _error_detail(resp)
            resp.close()
            raise AuthError(
                f"registry {ref.registry} refused credentials for repository {ref.repository} "
                f"({resp.status_code} {code}): run docker login or set REGISTRY_AUTH_FILE"
            )
        if resp.status_code == 429 or resp.status_code >= 500:
            code, message = _error_detail(resp)
            retry_after = _retry_after(resp)
            resp.close()
            detail = f": {message}" if message else ""
            raise _Transient(
                f"registry {ref.registry} answered {method} for repository {ref.repository} with "
                f"{resp.status_code} {code}{detail}; try again later",
                retry_after,
            )
        return resp

    def fail(self, resp: Response, ref: Reference, what: str) -> RegistryError:
        """The error for an unexpected response: NotFoundError for 404, else RegistryError."""
        code, message = _error_detail(resp)
        resp.close()
        detail = f": {message}" if message else ""
        if resp.status_code == 404:
            return NotFoundError(
                f"registry {ref.registry} has no {what} in repository {ref.repository} "
                f"({resp.status_code} {code}): check the image name, tag and digest"
            )
        return RegistryError(
            f"registry {ref.registry} rejected {what} in repository {ref.repository} "
            f"({resp.status_code} {code}{detail}); check the image and the registry's limits"
        )


def _pick_challenge(header: str) -> Challenge | None:
    challenges = parse_www_authenticate(header)
    for scheme in ("bearer", "basic"):
        for c in challenges:
            if c.scheme == scheme:
                return c
    return challenges[0] if challenges else None


# -- reading ---------------------------------------------------------------------------------


class _ResponseStream(io.RawIOBase):
    """A streamed response body whose transport errors become RegistryError. With `reopen`, a body cut part-way
    (a reset, a proxy closing early) is resumed from where it stopped, up to `resumes` times: a layer stream can
    not be restarted by the caller (its consumer has taken the bytes), and without this one reset in a large
    layer failed the whole run."""

    def __init__(self, resp: Response, what: str,
                 reopen: Callable[[int], Response] | None = None, resumes: int = 0,
                 backoff: float = 0.5, deadline: float | None = None) -> None:
        super().__init__()
        self._resp = resp
        self._what = what
        self._deadline = deadline  # monotonic time by which the whole body must have arrived (bodies.blob_deadline)
        self._started = time.monotonic()
        self._reopen = reopen
        self._resumes = resumes
        self._backoff = backoff
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer)
        attempt = 0
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise too_slow(self._what, self._offset, self._started)
        while True:
            try:
                # read1: one socket read, so a body trickling a byte at a time comes back here to meet the deadline.
                n = self._resp.raw.readinto1(view)
                break
            except OSError as e:
                failure: BaseException = e
            # Resumed with a Range request; the verifying reader above still hashes every byte in order.
            while attempt < self._resumes and self._reopen is not None:
                time.sleep(self._backoff * (2**attempt))
                attempt += 1
                try:
                    resp = self._reopen(self._offset)
                except RegistryError as e:
                    failure = e
                    continue
                self._resp.close()
                self._resp = resp
                if self._deadline is not None:  # the resumed body gets the allowance afresh: the backoff used it
                    self._deadline = time.monotonic() + (self._deadline - self._started)
                    self._started = time.monotonic()
                break
            else:
                detail = failure.message if isinstance(failure, RegistryError) else describe_connection_error(failure)
                raise RegistryError(f"lost the connection while reading {self._what} ({detail}); try again") from None
        self._offset += n
        return n

    def close(self) -> None:
        try:
            self._resp.close()
        finally:
            super().close()


def _read_limited(resp: Response, limit: int, what: str, seconds: float) -> bytes:
    return read_body(resp, limit, seconds, what)


class RegistrySource:
    """An image in a registry, read through `client`. Implements copa.oci.image.Source."""

    def __init__(self, client: RegistryClient, ref: Reference) -> None:
        self.client = client
        self.ref = ref
        self._root: Manifest | Index | None = None

    @property
    def description(self) -> str:
        return str(self.ref)

    def root(self) -> Manifest | Index:
        if self._root is None:
            root = self._get_manifest(self.ref.identifier, self.ref.digest, None)
            if isinstance(root, Opaque):
                raise ManifestFormatError(f"{self.ref} is a {root.media_type}, not a container image")
            self._root = root
        return self._root

    def fetch_manifest(self, desc: Descriptor) -> Document:
        return self._get_manifest(str(desc.digest), desc.digest, desc)

    def _get_manifest(self, identifier: str, digest: Digest | None, desc: Descriptor | None) -> Document:
        ref = self.ref
        what = f"tag {identifier}" if digest is None else f"manifest {identifier}"
        # An index entry of another type (an artifact) is asked for by its own type as well.
        extra = desc.media_type if desc is not None and desc.media_type not in MediaType.ALL_MANIFESTS else ""
        accept = f"{MANIFEST_ACCEPT}, {extra}" if extra else MANIFEST_ACCEPT

        def once() -> tuple[bytes, str, str]:
            resp = self.client.send(
                "GET",
                ref,
                self.client.repo_url(ref, f"manifests/{identifier}"),
                headers={"Accept": accept},
                stream=True,
                retry=False,
            )
            if resp.status_code != 200:
                raise self.client.fail(resp, ref, what)
            content_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            header_digest = resp.headers.get("Docker-Content-Digest", "")
            try:
                raw = _read_limited(resp, _MAX_MANIFEST, f"{what} from {ref.registry}", self.client.options.timeout)
            except RegistryError as e:
                raise _Transient(e.message) from None
            return raw, content_type, header_digest

        raw, content_type, header_digest = self.client.retrying(once)
        if digest is not None:
            actual = Digest.of_bytes(raw, digest.algorithm)
            if actual != digest:
                raise IntegrityError(
                    f"registry {ref.registry} served {what} hashing to {actual}, not {digest}; the registry is corrupt"
                )
        elif header_digest.startswith("sha256:") and header_digest != str(Digest.of_bytes(raw)):
            raise IntegrityError(
                f"registry {ref.registry} served {what} hashing to {Digest.of_bytes(raw)} but announced "
                f"{header_digest}; the registry or a proxy altered it"
            )
        if desc is not None and desc.size != len(raw):
            raise IntegrityError(f"{what} from {ref.registry} is {len(raw)} bytes, expected {desc.size}")
        media_type = content_type if content_type in MediaType.ALL_MANIFESTS else (desc.media_type if desc else "")
        return parse_document(raw, media_type)

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        ref = self.ref
        what = f"blob {desc.digest}"
        resp = self.client.send(
            "GET",
            ref,
            self.client.repo_url(ref, f"blobs/{desc.digest}"),
            headers={"Accept-Encoding": "identity"},
            stream=True,
        )
        if resp.status_code != 200:
            raise self.client.fail(resp, ref, what)
        resp.raw.decode_content = True
        stream = _ResponseStream(resp, f"{what} from {ref}", lambda offset: self._resume_blob(desc, offset),
                                 self.client.options.retries, self.client.options.backoff,
                                 blob_deadline(self.client.options.timeout, desc.size))
        return verifying(
            stream,  # type: ignore[arg-type]
            desc.digest,
            desc.size,
            f"{what} from {ref}",
        )

    def _resume_blob(self, desc: Descriptor, offset: int) -> Response:
        """The blob's body from byte `offset` on: a 206 to `Range`, or a whole 200 body with the first bytes
        skipped (a registry may ignore Range; its redirect target, a CDN, may too)."""
        ref = self.ref
        resp = self.client.send("GET", ref, self.client.repo_url(ref, f"blobs/{desc.digest}"),
                                headers={"Accept-Encoding": "identity", "Range": f"bytes={offset}-"}, stream=True)
        if resp.status_code == 206 and resp.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            resp.raw.decode_content = True
            return resp
        if resp.status_code != 200:
            raise self.client.fail(resp, ref, f"blob {desc.digest}")
        resp.raw.decode_content = True
        left = offset
        try:
            while left:
                skipped = resp.raw.read(min(left, 1 << 20))
                if not skipped:
                    raise RegistryError(f"blob {desc.digest} from {ref} ended before byte {offset}")
                left -= len(skipped)
        except OSError as e:
            resp.close()
            raise RegistryError(describe_connection_error(e)) from None
        return resp


def head_manifest(client: RegistryClient, ref: Reference) -> Descriptor | None:
    """The descriptor of `ref`'s manifest (by tag or digest), or None when it does not exist."""
    resp = client.send(
        "HEAD", ref, client.repo_url(ref, f"manifests/{ref.identifier}"), headers={"Accept": MANIFEST_ACCEPT}
    )
    with resp:
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise client.fail(resp, ref, f"manifest {ref.identifier}")
        digest_text = resp.headers.get("Docker-Content-Digest", "")
        if not digest_text and ref.digest is None:
            raise RegistryError(
                f"registry {ref.registry} gave no Docker-Content-Digest for {ref}; fetch the manifest instead"
            )
        return Descriptor(
            media_type=resp.headers.get("Content-Type", "").split(";")[0].strip(),
            digest=Digest.parse(digest_text) if digest_text else ref.digest,  # type: ignore[arg-type]
            size=int(resp.headers.get("Content-Length", "0") or 0),
        )


def tag_exists(client: RegistryClient, ref: Reference) -> bool:
    return head_manifest(client, ref) is not None


# A tag list page is small JSON; a registry answering with more is not answering a tag list.
_MAX_TAGS_PAGE = 8 << 20
_LINK_NEXT = re.compile(r'<([^>]*)>\s*;(?:[^,]*?;)?\s*rel="?next"?', re.IGNORECASE)


def list_tags(client: RegistryClient, ref: Reference, *, page_size: int = 1000, limit: int = 100_000) -> list[str]:
    """Every tag of `ref`'s repository, in the registry's order: GET /v2/<name>/tags/list?n=`page_size`, then each
    `Link: <URL>; rel="next"` page as the distribution spec describes (relative URLs resolved against the page's).

    A repository with more than `limit` tags, a `next` link to another host (credentials would follow it) or one
    the registry already sent (a loop) is an error: the sweep would otherwise never end."""
    first = _with_query(client.repo_url(ref, "tags/list"), n=str(page_size))
    url: str | None = first
    seen: set[str] = set()
    tags: list[str] = []
    while url is not None:
        seen.add(url)
        resp = client.send("GET", ref, url, headers={"Accept": "application/json"}, stream=True)
        if resp.status_code != 200:
            raise client.fail(resp, ref, "tag list")
        link = resp.headers.get("Link", "")
        body = _read_limited(resp, _MAX_TAGS_PAGE, f"the tag list of {ref.registry}/{ref.repository}",
                             client.options.timeout)
        try:
            doc: Any = json.loads(body)
            page = doc.get("tags") or []  # distribution answers "tags": null for a repository with none
        except (ValueError, AttributeError):
            page = None
        if not isinstance(page, list) or not all(isinstance(t, str) for t in page):
            raise RegistryError(f"registry {ref.registry} answered the tag list of {ref.repository} with something "
                                f"that is not {{\"tags\": [...]}}; check the registry")
        tags.extend(page)
        if len(tags) > limit:
            raise RegistryError(f"repository {ref.registry}/{ref.repository} has more than {limit} tags; "
                                f"name the tags with strategy: list instead")
        found = _LINK_NEXT.search(link)
        url = urljoin(url, found.group(1)) if found else None
        if url is not None:
            if urlsplit(url)[:2] != urlsplit(first)[:2]:
                raise RegistryError(f"registry {ref.registry} sent the next page of {ref.repository}'s tag list to "
                                    f"another host ({urlsplit(url).netloc}); refusing to follow it")
            if url in seen:
                raise RegistryError(f"registry {ref.registry} sent the same tag list page of {ref.repository} "
                                    f"twice; check the registry")
    return tags


# -- writing ---------------------------------------------------------------------------------


class _SizedBody:
    """Exactly `size` bytes of `stream`, with a length so it is sent with Content-Length, not chunked.

    With `final`, reading the last byte also reads past it, so a verifying stream checks its
    digest before the last chunk leaves and a corrupt source fails the upload."""

    def __init__(self, stream: BinaryIO, size: int, what: str, final: bool) -> None:
        self._stream = stream
        self._remaining = size
        self._size = size
        self._what = what
        self._final = final

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(1 << 16):
            yield chunk

    def read(self, n: int = -1) -> bytes:
        if self._remaining <= 0:
            return b""
        want = self._remaining if n is None or n < 0 else min(n, self._remaining)
        chunk = self._stream.read(want)
        if not chunk:
            raise IntegrityError(f"{self._what}: source ended {self._remaining} bytes early; the source is truncated")
        self._remaining -= len(chunk)
        if self._remaining == 0 and self._final and self._stream.read(1):
            raise IntegrityError(f"{self._what}: source has more bytes than its descriptor says; it is corrupt")
        return chunk


def _with_query(url: str, **params: str) -> str:
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


def _mount_source(mount: Reference | None, target: Reference) -> Reference | None:
    """The repository blobs can be mounted from into `target`'s: another repository of the same registry."""
    if mount is not None and mount.registry == target.registry and mount.repository != target.repository:
        return mount
    return None


def _push_scopes(mount_from: Reference | None) -> tuple[str, ...]:
    """The scopes a push asks for besides the target's pull and push: pull from the mount source."""
    return (repository_scope(mount_from.repository, "pull"),) if mount_from is not None else ()


def _blob_exists(client: RegistryClient, target: Reference, extra_scopes: tuple[str, ...], desc: Descriptor) -> bool:
    resp = client.send("HEAD", target, client.repo_url(target, f"blobs/{desc.digest}"), actions="pull,push",
                       extra_scopes=extra_scopes)
    with resp:
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        raise client.fail(resp, target, f"blob {desc.digest}")


class _Pusher:
    def __init__(self, client: RegistryClient, target: Reference, bundle: Bundle) -> None:
        self.client = client
        self.target = target
        self.bundle = bundle
        mount = bundle.mount_from
        self.mount_from = _mount_source(mount if isinstance(mount, Reference) else None, target)
        self.extra_scopes = _push_scopes(self.mount_from)

    def send(self, method: str, url: str, **kw: Any) -> Response:
        return self.client.send(method, self.target, url, actions="pull,push", extra_scopes=self.extra_scopes, **kw)

    def blob_exists(self, desc: Descriptor) -> bool:
        return _blob_exists(self.client, self.target, self.extra_scopes, desc)

    def location(self, resp: Response, what: str) -> str:
        loc = resp.location or ""
        if not loc:
            raise RegistryError(
                f"registry {self.target.registry} gave no upload Location for {what} in repository "
                f"{self.target.repository}; the registry is not OCI-compliant"
            )
        return urljoin(resp.url, loc)

    def mount(self, desc: Descriptor) -> str | None:
        """Mount from `mount_from`; None when mounted, else the upload session the registry opened."""
        assert self.mount_from is not None
        url = _with_query(
            self.client.repo_url(self.target, "blobs/uploads/"),
            mount=str(desc.digest),
            **{"from": self.mount_from.repository},
        )
        resp = self.send("POST", url, headers={"Content-Length": "0"})
        with resp:
            if resp.status_code == 201:
                return None
            if resp.status_code == 202:
                return self.location(resp, f"blob {desc.digest}")
            raise self.client.fail(resp, self.target, f"mount of blob {desc.digest}")

    def start_upload(self, desc: Descriptor) -> str:
        resp = self.send(
            "POST", self.client.repo_url(self.target, "blobs/uploads/"), headers={"Content-Length": "0"}, retry=False
        )
        with resp:
            if resp.status_code != 202:
                raise self.client.fail(resp, self.target, f"upload of blob {desc.digest}")
            return self.location(resp, f"blob {desc.digest}")

    def upload(self, desc: Descriptor, session: str | None, task: events.Task = events.NO_TASK) -> None:
        # A failed upload session cannot be trusted (part of the body may have landed), so each
        # retry starts over with a fresh session and a fresh read of the blob.
        pending = [session] if session else []

        def once() -> None:
            location = pending.pop() if pending else self.start_upload(desc)
            stream = events.counted(self.bundle.open_blob(desc), task.restarted())
            try:
                if desc.size > self.client.options.chunk_size:
                    location = self.patch_chunks(desc, location, stream)
                    self.finish(desc, location, b"", 0)
                else:
                    self.finish(desc, location, _SizedBody(stream, desc.size, f"blob {desc.digest}", True), desc.size)
            finally:
                stream.close()

        self.client.retrying(once)

    def patch_chunks(self, desc: Descriptor, location: str, stream: BinaryIO) -> str:
        chunk_size = self.client.options.chunk_size
        offset = 0
        while offset < desc.size:
            n = min(chunk_size, desc.size - offset)
            final = offset + n == desc.size
            body = _SizedBody(stream, n, f"blob {desc.digest}", final)
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(n),
                "Content-Range": f"{offset}-{offset + n - 1}",
            }
            resp = self.send("PATCH", location, headers=headers, data=body, retry=False)
            with resp:
                if resp.status_code != 202:
                    raise self.client.fail(resp, self.target, f"chunk {offset}-{offset + n - 1} of blob {desc.digest}")
                location = self.location(resp, f"blob {desc.digest}")
            offset += n
        return location

    def finish(self, desc: Descriptor, location: str, body: _SizedBody | bytes, size: int) -> None:
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        resp = self.send("PUT", _with_query(location, digest=str(desc.digest)), headers=headers, data=body, retry=False)
        with resp:
            if resp.status_code != 201:
                raise self.client.fail(resp, self.target, f"upload of blob {desc.digest}")

    def put_manifest(self, identifier: str, doc: Document) -> None:
        resp = self.send(
            "PUT",
            self.client.repo_url(self.target, f"manifests/{identifier}"),
            headers={"Content-Type": doc.media_type},
            data=doc.raw,
        )
        with resp:
            if resp.status_code != 201:
                raise self.client.fail(resp, self.target, f"manifest {identifier}")
            echoed = resp.headers.get("Docker-Content-Digest", "")
            if echoed.startswith("sha256:") and echoed != str(doc.digest):
                raise IntegrityError(
                    f"registry {self.target.registry} stored manifest {identifier} as {echoed}, not {doc.digest}; "
                    "a proxy or the registry altered it"
                )


# A patch layer this large is uploaded while it is written; a smaller one goes up whole once written (its upload
# is a few milliseconds: an upload session opened for it would save nothing).
STREAM_START = 1 << 20
# The upload wakes once this much more of the file is flushed, and sends all of it there is, in reads of at most
# _STREAM_READ: few large sends, for the thread needs the GIL for each while the writer's thread holds it for up
# to its switch interval (with 256 KiB pieces the upload fell ~25 ms behind a 7 MB layer's write).
_STREAM_PIECE = 256 << 10
_STREAM_READ = 4 << 20


class _Abandoned(Exception):
    """The layer's writing failed: the streamed request is cut off, and its session left to expire."""


class StreamedUpload:
    """A layer uploaded while it is written (copa.oci.layer.LayerWatch): once `STREAM_START` bytes are written, an
    upload session of `target`'s repository is opened and the growing file goes to it in one PATCH whose body
    (chunked transfer coding) follows the file as the writer flushes it, as `docker push` sends every blob; `push`
    then only closes the session with the digest (PUT ?digest=), which the registry checks. Anything that goes wrong
    here (no push access, a registry or proxy that refuses such a body, a dropped connection) just makes
    `location()` None: the push then uploads the blob whole, as always, and reports what goes wrong. Nothing is
    tagged by this: an unfinished session is left for the registry to expire.

    (Chunks with Content-Range, one request per piece, were used before: a chunk had to be large, registries set
    minimum chunk sizes (ECR's 5 MiB), so the last piece, up to a whole chunk, was still sent after the write.)"""

    def __init__(self, client: RegistryClient, target: Reference, start: int | None = None) -> None:
        self._client = client
        self._target = target
        self._start = STREAM_START if start is None else start
        self._cond = threading.Condition()
        self._file: BinaryIO | None = None
        self._size = 0  # bytes of the file written and flushed so far
        self._final: int | None = None  # the whole size once written; -1 when the writing failed
        self._thread: threading.Thread | None = None
        self._sent = 0
        self._location: str | None = None
        self._failed = False

    # -- the layer writer's side (LayerWatch) --------------------------------------------------------------------

    def started(self, path: Path) -> None:
        # Opened now, on the writer's thread: the file is renamed when complete, and an open file stays readable.
        try:
            self._file = path.open("rb")
        except OSError as e:
            log.debug("streamed upload: %s", e)

    def grew(self, size: int) -> None:
        with self._cond:
            self._size = size
            if self._thread is None and self._file is not None and size >= self._start:
                self._thread = threading.Thread(target=self._run, name="copa-stream", daemon=True,
                                                 args=(contextvars.copy_context(),))
                self._thread.start()
            self._cond.notify_all()

    def ended(self, size: int | None) -> None:
        with self._cond:
            self._final = -1 if size is None else size
            if size is not None:
                self._size = size
            started = self._thread is not None
            self._cond.notify_all()
        if not started and self._file is not None:
            self._file.close()

    # -- the push's side -----------------------------------------------------------------------------------------

    def location(self) -> str | None:
        """Once the upload has ended: the session to close with the digest, if every byte of the layer went up;
        None if it was not streamed (too small) or something failed."""
        if self._thread is None:
            return None
        self._thread.join()
        if self._failed or self._final is None or self._sent != self._final:
            return None
        return self._location

    # -- the upload ----------------------------------------------------------------------------------------------

    def _run(self, context: contextvars.Context) -> None:
        assert self._file is not None
        try:
            with self._file as f:
                context.run(self._send_all, f)
        except Exception as e:  # whatever fails here only costs the overlap: the push then uploads the blob whole
            log.debug("streamed upload to %s: %s", self._target, e)
            self._failed = True

    def _send_all(self, f: BinaryIO) -> None:
        target, client = self._target, self._client
        resp = client.send("POST", target, client.repo_url(target, "blobs/uploads/"), actions="pull,push",
                           headers={"Content-Length": "0"}, retry=False)
        with resp:
            if resp.status_code != 202 or not resp.location:
                raise RegistryError(f"upload session: HTTP {resp.status_code}")
            location = urljoin(resp.url, resp.location)
        # No Content-Length: the body is sent with chunked transfer coding, as long as the file grows.
        resp = client.send("PATCH", target, location, actions="pull,push",
                           headers={"Content-Type": "application/octet-stream"}, data=self._pieces(f), retry=False)
        with resp:
            if resp.status_code != 202 or not resp.location:
                raise RegistryError(f"streamed upload: HTTP {resp.status_code}")
            # What the registry holds: the close (PUT ?digest=) checks it against the layer's digest anyway.
            held = _range_end(resp.headers.get("Range", ""))
            if held is not None and held != self._sent:
                raise RegistryError(f"streamed upload: the registry holds {held} of {self._sent} bytes")
            self._location = urljoin(resp.url, resp.location)

    def _pieces(self, f: BinaryIO) -> Iterator[bytes]:
        """The file from the start, each piece once the writer has flushed it; ends with the layer."""
        while True:
            with self._cond:
                while self._final is None and self._size - self._sent < _STREAM_PIECE:
                    self._cond.wait()
                final, size = self._final, self._size
            if final == -1:
                raise _Abandoned("the layer was not written")
            end = size if final is None else final
            if end <= self._sent:
                return  # everything sent
            f.seek(self._sent)
            while self._sent < end:
                piece = f.read(min(end - self._sent, _STREAM_READ))
                if not piece:
                    raise _Abandoned("the layer file is shorter than written")
                self._sent += len(piece)
                yield piece


class CheckedAhead:
    """Whether the push target's repository holds `blobs` already (the base layers a patched image keeps), asked
    while the patch is still being made: a HEAD each, a few at once, with the very scopes the push asks for, so
    that its token is at hand too. The push then asks only about what it learns nothing of here (the new config
    and patch layer): against a remote registry, one round trip fewer between the layer's end and the tag.

    Nothing here fails the patch: a check that fails is no answer, and the push asks again. The checks run on
    threads of their own that end with the last check (not a pool's, which would idle until shut down: the
    command leaves its process quickest when no other thread is left, copa.cli.run)."""

    def __init__(self, client: RegistryClient, target: Reference, mount_from: Reference | None,
                 blobs: Sequence[Descriptor]) -> None:
        self._client, self._target = client, target
        self._scopes = _push_scopes(_mount_source(mount_from, target))  # the push's: one token serves both
        self._todo = list({d.digest: d for d in blobs if not d.urls}.values())  # (foreign layers are not pushed)
        self._lock = threading.Lock()
        self._answers: dict[Digest, bool] = {}
        self._threads = [threading.Thread(target=contextvars.copy_context().run, args=(self._work,),
                                          name=f"copa-check_{i}")
                         for i in range(min(len(self._todo), _PUSH_WORKERS))]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._todo:
                    return
                desc = self._todo.pop()
            try:
                found = _blob_exists(self._client, self._target, self._scopes, desc)
            except Exception as e:  # whatever fails here only costs the round trip: the push asks again
                log.debug("early check of blob %s in %s: %s", desc.digest, self._target, e)
                continue
            with self._lock:
                self._answers[desc.digest] = found

    def answers(self) -> dict[Digest, bool]:
        """Once every check has ended: the blobs known to be there (True) or not (False)."""
        for thread in self._threads:
            thread.join()
        with self._lock:
            return dict(self._answers)

    def cancel(self) -> None:
        """No push follows: the checks not yet started are dropped (those under way end on their own)."""
        with self._lock:
            self._todo.clear()


def _range_end(value: str) -> int | None:
    """The byte count a `Range: 0-N` answer says the session holds (N + 1), if it says."""
    first, sep, last = value.partition("-")
    if not sep or not first.strip().isdigit() or not last.strip().isdigit():
        return None
    return int(last) + 1


def _mount_known(pusher: _Pusher, desc: Descriptor, homes: BlobHomes) -> bool:
    """Mount `desc` from another repository of the registry where this process (or the sweep sharing its cache)
    pushed or found it. A home that does not mount (blob gone, no pull access there) is forgotten, and the next is
    tried; the upload sessions such answers open are left to the registry to expire."""
    target = pusher.target
    for repository in homes.candidates(desc.digest, target.registry, target.repository):
        url = _with_query(pusher.client.repo_url(target, "blobs/uploads/"), mount=str(desc.digest),
                          **{"from": repository})
        try:
            resp = pusher.client.send("POST", target, url, actions="pull,push", headers={"Content-Length": "0"},
                                      extra_scopes=(repository_scope(repository, "pull"),))
        except AuthError:
            homes.forget(desc.digest, target.registry, repository)
            continue
        with resp:
            if resp.status_code == 201:
                return True
        homes.forget(desc.digest, target.registry, repository)
    return False


def push(client: RegistryClient, target: Reference, bundle: Bundle, homes: BlobHomes | None = None) -> Digest:
    """Write `bundle` to `target`: blobs (mounted or uploaded unless present), child manifests by
    digest, then the root by tag (or digest) last. Returns the root manifest's digest.

    `homes` (copa.oci.layerstore.BlobHomes), when given, records where blobs were pushed, so that a blob another
    repository of the same registry holds is mounted from there rather than uploaded again (identical patch layers
    across a sweep); without it only `bundle.mount_from` is tried."""
    root_digest = bundle.root.digest
    if target.digest is not None and target.digest != root_digest:
        raise UsageError(f"cannot push to {target}: the image's digest is {root_digest}; drop the @digest")
    if homes is None:
        from copa.oci.layerstore import BlobHomes

        homes = BlobHomes.disabled()
    pusher = _Pusher(client, target, bundle)
    known = bundle.checked() if bundle.checked is not None else {}
    # Foreign (non-distributable) layers stay where their urls point.
    _each_blob(pusher, [d for d in bundle.iter_blobs() if not d.urls], homes, known)
    for child in bundle.children:
        pusher.put_manifest(str(child.digest), child)
    for tag, manifest in bundle.child_tags:
        pusher.put_manifest(tag, manifest)
    pusher.put_manifest(target.tag or str(root_digest), bundle.root)
    return root_digest


def _finish_streamed(pusher: _Pusher, desc: Descriptor) -> bool:
    """Close the upload session a StreamedUpload filled with this blob (the registry checks the digest); False when
    there is none or it does not close: the blob is then uploaded as usual."""
    streamed = pusher.bundle.streamed.get(desc.digest)
    location = streamed() if streamed is not None else None
    if location is None:
        return False
    try:
        pusher.finish(desc, location, b"", 0)
    except CopaError as e:
        log.debug("streamed upload of %s not accepted: %s", desc.digest, e)
        return False
    return True


# Blobs pushed at once: each blob's existence check, mount or upload is a few round trips that wait on the registry
# (the config, the base layers' checks and the patch layer's upload of a small patch overlap instead of following
# one another: 9 round trips in a row become 3). A few, not one per blob: an index of many platforms has dozens.
_PUSH_WORKERS = 4


def _each_blob(pusher: _Pusher, blobs: list[Descriptor], homes: BlobHomes, known: Mapping[Digest, bool]) -> None:
    """Push every blob of `blobs`, several at once; the first failure in blob order is raised once the blobs being
    pushed have finished (those not yet started are not). `known`: whether the target holds a blob, where that was
    asked already (CheckedAhead)."""
    target = pusher.target

    def one(desc: Descriptor) -> None:
        with events.task(events.Kind.PUSH, f"blob {desc.digest.hex[:12]}", desc.size) as task:
            exists = known.get(desc.digest)
            # A layer sent while it was written is in its upload session already: closing the session is the one
            # round trip left, where asking first would add one whatever the answer.
            if not exists and _finish_streamed(pusher, desc):
                task.advance(desc.size)  # uploaded, while the layer was being written
                task.done("streamed while written")
                homes.add(desc.digest, target.registry, target.repository)
                return
            if exists is None:
                exists = pusher.blob_exists(desc)
            if exists:
                task.done("exists")
                homes.add(desc.digest, target.registry, target.repository)
                return
            session = None
            if pusher.mount_from is not None:
                session = pusher.mount(desc)  # None: mounted; else the upload session the registry opened
                if session is None:
                    task.done("mounted")
                    homes.add(desc.digest, target.registry, target.repository)
                    return
            if _mount_known(pusher, desc, homes):
                task.done("mounted")
            else:
                pusher.upload(desc, session, task)
            homes.add(desc.digest, target.registry, target.repository)

    if len(blobs) <= 1:
        for desc in blobs:
            one(desc)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(len(blobs), _PUSH_WORKERS), thread_name_prefix="copa-push") as pool:
        # Each worker runs in a copy of this thread's context: progress events keep their platform label.
        futures = [pool.submit(contextvars.copy_context().run, one, desc) for desc in blobs]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
