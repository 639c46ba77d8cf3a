"""Shared fixtures: real registries (docker-registry on 127.0.0.1) started by the tests themselves."""

from tests.support.registry import (  # noqa: F401  (pytest fixtures)
    anon_registry,
    basic_registry,
    other_registry,
    tiny_layout,
    token_registry,
)
