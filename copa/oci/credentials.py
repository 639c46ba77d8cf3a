"""Registry credentials from a docker config.json: `auths`, `credHelpers` and `credsStore`.

Looked up lazily, only when a registry asks for authentication, so a broken credential helper
never gets in the way of an anonymous pull.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from copa.errors import AuthError, LocalIOError
from copa.oci.reference import DOCKER_HUB

# docker login writes Docker Hub under this legacy key, and credential helpers expect it too.
_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")
_HELPER_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Credential:
    """Username/password, or an identity (OAuth2 refresh) token from `docker login` with a token server."""

    username: str = ""
    password: str = ""
    identity_token: str = ""

    def __repr__(self) -> str:
        # Never let a secret reach a log or a traceback.
        return f"Credential(username={self.username!r}, password=***, identity_token=***)"


def default_auth_file() -> Path:
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if env:
        return Path(env)
    docker_config = os.environ.get("DOCKER_CONFIG")
    if docker_config:
        return Path(docker_config) / "config.json"
    return Path.home() / ".docker" / "config.json"


def _normalise(key: str) -> str:
    """`https://host:port/v1/` -> `host:port`, as docker matches config keys."""
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key.split("/", 1)[0]


def _host_keys(registry: str) -> tuple[str, ...]:
    return _HUB_KEYS if registry == DOCKER_HUB else (registry,)


def _helper_server(registry: str) -> str:
    return _HUB_KEYS[0] if registry == DOCKER_HUB else registry


def _load_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise LocalIOError(f"cannot read registry auth file {path}: {e.strerror}; fix its permissions") from None
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise LocalIOError(f"registry auth file {path} is not valid JSON ({e}); fix or remove it") from None
    if not isinstance(doc, dict):
        raise LocalIOError(f"registry auth file {path} is not a JSON object; fix or remove it")
    return doc


def _from_auths_entry(entry: Any, path: Path, key: str) -> Credential | None:
    if not isinstance(entry, dict):
        return None
    identity = str(entry.get("identitytoken") or "")
    username = str(entry.get("username") or "")
    password = str(entry.get("password") or "")
    encoded = entry.get("auth")
    if encoded:
        try:
            decoded = base64.b64decode(str(encoded), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise LocalIOError(
                f"registry auth file {path}: 'auth' for {key} is not base64; run docker login again"
            ) from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise LocalIOError(
                f"registry auth file {path}: 'auth' for {key} lacks 'user:password'; run docker login again"
            )
    if not (username or password or identity):
        # An empty entry is what docker writes when a credsStore holds the secret.
        return None
    return Credential(username, password, identity)


def run_helper(helper: str, server: str) -> Credential | None:
    """`docker-credential-<helper> get`: server URL on stdin, JSON {Username, Secret} on stdout."""
    import subprocess  # here: only a credential helper runs one, and a patch's first request does not wait for it

    program = f"docker-credential-{helper}"
    exe = shutil.which(program)
    if exe is None:
        raise AuthError(f"credential helper {program} is not on PATH; install it or edit the registry auth file")
    try:
        proc = subprocess.run(
            [exe, "get"], input=server.encode(), capture_output=True, timeout=_HELPER_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AuthError(f"credential helper {program} failed for {server}: {e}; check the helper") from None
    if proc.returncode != 0:
        message = proc.stdout.decode(errors="replace").strip() or proc.stderr.decode(errors="replace").strip()
        if "credentials not found" in message.lower():
            return None
        raise AuthError(f"credential helper {program} failed for {server}: {message[:200]}; check the helper")
    try:
        doc = json.loads(proc.stdout)
        username, secret = str(doc.get("Username", "")), str(doc.get("Secret", ""))
    except (ValueError, AttributeError):
        raise AuthError(f"credential helper {program} printed invalid JSON for {server}; check the helper") from None
    if username == "<token>":
        return Credential(identity_token=secret)
    return Credential(username, secret)


def lookup(registry: str, auth_file: str | Path | None = None) -> Credential | None:
    """Credentials for `registry` (a Reference.registry), or None for anonymous access."""
    path = Path(auth_file) if auth_file else default_auth_file()
    doc = _load_config(path)
    keys = _host_keys(registry)
    helpers = doc.get("credHelpers")
    if isinstance(helpers, dict):
        for key in keys:
            if helpers.get(key):
                return run_helper(str(helpers[key]), _helper_server(registry))
    auths = doc.get("auths")
    if isinstance(auths, dict):
        by_host = {_normalise(str(k)): (str(k), v) for k, v in auths.items()}
        for key in keys:
            hit = by_host.get(_normalise(key))
            if hit is not None:
                cred = _from_auths_entry(hit[1], path, hit[0])
                if cred is not None:
                    return cred
    store = doc.get("credsStore")
    if store:
        return run_helper(str(store), _helper_server(registry))
    return None
