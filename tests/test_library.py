"""The library entry point, `copa.patch(image=..., ...)`, on the hermetic Debian image: the same result as the
CLI, as values (PatchResult) instead of text, and the engine's pieces importable on their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import copa
from copa.errors import ResolutionError
from copa.oci.layout import LayoutSource
from copa.pkg.base import RepositoryOptions, UpdateKind
from tests.support import debimage
from tests.support.aptrepo import AptRepo, RepoServer
from tests.support.trivy import write_report
from tests.support.validate import validate


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[RepoServer, AptRepo]]:
    repo = debimage.hermetic_repo()
    with RepoServer(repo.root) as s:
        yield s, repo


def _repos(server: tuple[RepoServer, AptRepo]) -> RepositoryOptions:
    s, repo = server
    assert repo.key is not None
    return RepositoryOptions(keyrings=(Path(repo.key.keyring),), mirrors=((debimage.REPO_URL, s.url),))


def test_patch_as_a_library(server: tuple[RepoServer, AptRepo], tmp_path: Path) -> None:
    base = debimage.base_image()
    fixes = {k: v for k, v in debimage.FIXES.items() if k != debimage.MISSING_FIX}
    report = write_report(tmp_path / "r.json", fixes)
    out = tmp_path / "layout"
    result = copa.patch(image=base.image_ref, report=str(report), oci_dir=str(out), tag="lib", repos=_repos(server))
    assert not result.up_to_date and result.target == f"oci:{out}:lib" and result.digest
    reported = {u.name: u for u in result.updates if u.kind is UpdateKind.REPORTED}
    for name, (old, new) in fixes.items():
        if name == debimage.HELD:
            continue
        assert (reported[name].old_version, reported[name].new_version) == (old, new)
    source = LayoutSource(out, "lib")
    assert str(source.root().digest) == result.digest
    validate(source)


def test_library_raises_typed_errors(server: tuple[RepoServer, AptRepo], tmp_path: Path) -> None:
    base = debimage.base_image()
    report = write_report(tmp_path / "r.json", {debimage.MISSING_FIX: ("1.0", "9.0")})
    with pytest.raises(ResolutionError) as e:
        copa.patch(image=base.image_ref, report=str(report), oci_dir=str(tmp_path / "x"), repos=_repos(server))
    assert e.value.exit_code == 7 and debimage.MISSING_FIX in str(e.value)
    assert not (tmp_path / "x").exists()
