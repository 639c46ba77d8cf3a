"""Pytest fixtures of the hermetic Debian setup (tests/support/debimage.py), shared by the modules that patch it:
the signed repository, its server on 127.0.0.1 and the base image. tests/conftest.py registers them; each module
gets its own instances, and a module that defines a fixture of the same name uses its own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import debimage
from tests.support.aptrepo import AptRepo, RepoServer


@pytest.fixture(scope="module")
def repo() -> AptRepo:
    return debimage.hermetic_repo()


@pytest.fixture(scope="module")
def server(repo: AptRepo) -> Iterator[RepoServer]:
    with RepoServer(repo.root) as s:
        yield s


@pytest.fixture(scope="module")
def base() -> debimage.BaseImage:
    return debimage.base_image()
