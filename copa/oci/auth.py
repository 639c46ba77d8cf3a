"""Registry authentication: the /v2/ challenge, Bearer tokens per scope, and Basic auth.

Docker's token flow: the registry answers 401 with `WWW-Authenticate: Bearer realm=...,service=...`;
we ask the realm for a token covering the scopes a request needs ("repository:app:pull",
"repository:app:pull,push", plus "repository:other:pull" to mount from another repository),
sending our credentials (Basic to the realm, or an OAuth2 refresh token), and then send
`Authorization: Bearer <token>`. Tokens are kept per scope set until the registry rejects one.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from copa.errors import AuthError, RegistryError
from copa.net import describe_connection_error
from copa.oci.bodies import read_body
from copa.oci.credentials import Credential
from copa.web.errors import WebError
from copa.web.session import Session, basic_authorization

# A token answer is a small JSON object (real ones are a few KiB of JWT).
_MAX_TOKEN_BODY = 1 << 20

_PARAM_RE = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')
_SCHEME_RE = re.compile(r"\s*([A-Za-z][A-Za-z0-9_-]*)(?:\s+|$)")


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # lowercase: "bearer", "basic"
    params: Mapping[str, str] = field(default_factory=dict)


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse `WWW-Authenticate` (possibly several challenges) into Challenge values."""
    out: list[Challenge] = []
    pos = 0
    text = header.strip()
    while pos < len(text):
        m = _SCHEME_RE.match(text, pos)
        if not m:
            break
        scheme = m.group(1).lower()
        pos = m.end()
        params: dict[str, str] = {}
        while pos < len(text):
            pm = _PARAM_RE.match(text, pos)
            if not pm:
                break
            # A bare token followed by a space (not '=') starts the next challenge.
            value = pm.group(2) if pm.group(2) is not None else pm.group(3)
            params[pm.group(1).lower()] = re.sub(r"\\(.)", r"\1", value or "")
            pos = pm.end()
        out.append(Challenge(scheme, params))
        while pos < len(text) and text[pos] in ", ":
            pos += 1
    return out


def repository_scope(repository: str, actions: str) -> str:
    return f"repository:{repository}:{actions}"


CredentialLookup = Callable[[], Credential | None]


class Authenticator:
    """Authorization headers for one registry host, from its /v2/ challenge."""

    def __init__(
        self,
        registry: str,
        challenge: Challenge | None,
        credentials: CredentialLookup,
        session: Session,
        timeout: float,
        verify: bool | str,
    ) -> None:
        self.registry = registry
        self.challenge = challenge
        self._credentials = credentials
        self._credential_cache: tuple[Credential | None] | None = None
        self._session = session
        self._timeout = timeout
        self._verify = verify
        self._tokens: dict[tuple[str, ...], str] = {}
        self._lock = threading.Lock()

    def credential(self) -> Credential | None:
        if self._credential_cache is None:
            self._credential_cache = (self._credentials(),)
        return self._credential_cache[0]

    def header(self, scopes: tuple[str, ...], repository: str) -> str | None:
        """The Authorization header value for a request needing `scopes`, or None (anonymous)."""
        if self.challenge is None:
            return None
        if self.challenge.scheme == "basic":
            cred = self.credential()
            if cred is None or not (cred.username or cred.password):
                raise AuthError(
                    f"registry {self.registry} requires credentials for repository {repository} "
                    "(401 UNAUTHORIZED): run docker login or set REGISTRY_AUTH_FILE"
                )
            return basic_authorization(cred.username, cred.password)
        if self.challenge.scheme == "bearer":
            key = tuple(sorted(scopes))
            with self._lock:
                token = self._tokens.get(key)
            if token is None:
                token = self._fetch_token(key, repository)
                with self._lock:
                    self._tokens[key] = token
            return f"Bearer {token}"
        raise AuthError(
            f"registry {self.registry} asks for unsupported authentication {self.challenge.scheme!r}; "
            "use a registry offering Basic or Bearer token auth"
        )

    def invalidate(self, scopes: tuple[str, ...]) -> None:
        """Forget a token the registry rejected, so the next request fetches a fresh one."""
        with self._lock:
            self._tokens.pop(tuple(sorted(scopes)), None)

    def _fetch_token(self, scopes: tuple[str, ...], repository: str) -> str:
        assert self.challenge is not None
        realm = self.challenge.params.get("realm", "")
        if not realm:
            raise RegistryError(f"registry {self.registry} sent a Bearer challenge without a realm; check the registry")
        service = self.challenge.params.get("service", "")
        cred = self.credential()
        try:
            if cred is not None and cred.identity_token:
                # OAuth2 refresh-token grant, as docker does after `docker login` to a token server.
                form = {
                    "grant_type": "refresh_token",
                    "refresh_token": cred.identity_token,
                    "service": service,
                    "scope": " ".join(scopes),
                    "client_id": "copa",
                }
                resp = self._session.post(realm, data=form, timeout=self._timeout, verify=self._verify, stream=True)
            else:
                params: list[tuple[str, str]] = [("service", service)] if service else []
                params += [("scope", s) for s in scopes]
                auth = (cred.username, cred.password) if cred is not None and cred.username else None
                resp = self._session.get(realm, params=params, auth=auth, timeout=self._timeout, verify=self._verify,
                                         stream=True)
        except WebError as e:
            raise RegistryError(
                f"cannot reach token server {realm} for registry {self.registry}: {describe_connection_error(e)}; "
                "check the network"
            ) from None
        if resp.status_code in (401, 403):
            resp.close()
            raise AuthError(
                f"registry {self.registry} refused credentials for repository {repository} "
                f"({resp.status_code} from token server {realm}): run docker login or set REGISTRY_AUTH_FILE"
            )
        if resp.status_code != 200:
            resp.close()
            raise RegistryError(
                f"token server {realm} for registry {self.registry} answered HTTP {resp.status_code}; try again later"
            )
        # Streamed and bounded: a token server that trickles or never ends its answer must not hold the pull.
        body = read_body(resp, _MAX_TOKEN_BODY, self._timeout, f"the token from {realm}")
        try:
            doc: Any = json.loads(body)
            token = str(doc.get("token") or doc.get("access_token") or "")
        except (ValueError, AttributeError, RecursionError):
            token = ""
        if not token:
            raise RegistryError(
                f"token server {realm} for registry {self.registry} returned no token; check the server"
            )
        return token
