"""Shared fixtures: real registries (docker-registry on 127.0.0.1) started by the tests themselves, and the hermetic
Debian setup (a signed repository, its server, the base image; module-scoped, and a module's own fixture of the same
name takes precedence)."""

from tests.support.hermetic import base, repo, server  # noqa: F401  (pytest fixtures)
from tests.support.registry import (  # noqa: F401  (pytest fixtures)
    anon_registry,
    basic_registry,
    other_registry,
    tiny_layout,
    token_registry,
)
