"""What the user says about package repositories (--repository, --keyring, --mirror, ...): the CLI builds it before a
patch's first registry request, so it lives apart from the adapter types of copa.pkg.base."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class RepositoryOptions:
    """What the user says about package repositories; each adapter reads what applies to it."""

    repositories: tuple[str, ...] = ()
    repositories_file: Path | None = None
    keyrings: tuple[Path, ...] = ()
    mirrors: tuple[tuple[str, str], ...] = ()
    allow_unsigned: bool = False
    # --repository-auth: netrc-format credentials (apt's auth.conf syntax) for package repositories; read by copa
    # only, never written into the image. --repository-cert/--repository-key: a TLS client certificate for them.
    auth_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
