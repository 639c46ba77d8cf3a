"""An upgrade whose Obsoletes erase the provider of an installed package's requirement, against real dnf.

copa's resolver refuses such a plan as dnf does without --allowerasing (copa/pkg/rpm/plan.py fix_broken, which
only looks when something is erased); the same upgrade without the dependent package, or with a replacement that
provides the capability, goes through in both. The cases run in one small world of packages built by rpmbuild and
installed by the real rpm (the helpers of tests/test_rpm_dnf_oracle.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_rpm_dnf_oracle import World, _spec, copa_plan, dnf_plan, make_world

pytestmark = pytest.mark.skipif(shutil.which("dnf") is None or shutil.which("rpmbuild") is None,
                                reason="needs dnf and rpmbuild as the oracle")

OLD = [_spec("host", "1.0"), _spec("plug-old", "1.0", provides=("plugin-api = 1",)),
       _spec("api-user", "1.0", requires=("plugin-api",)),
       _spec("host2", "1.0"), _spec("plug2-old", "1.0", provides=("plugin2-api = 1",)),
       _spec("api2-user", "1.0", requires=("plugin2-api",)),
       _spec("lone", "1.0"), _spec("lone-plug", "1.0")]
NEW = [_spec("host", "2.0", obsoletes=("plug-old < 2",)),  # erases the only provider of plugin-api
       _spec("host2", "2.0", obsoletes=("plug2-old < 2",), provides=("plugin2-api = 2",)),  # takes it over
       _spec("lone", "2.0", obsoletes=("lone-plug < 2",))]  # erases a package nobody needs


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield make_world(tmp_path_factory.mktemp("rpm-erasure"), OLD, {"main": (NEW, 99)})


@pytest.mark.parametrize("names", [("host",), ("host2",), ("lone",), ("host", "lone")])
def test_an_erased_provider_fails_the_plan_as_in_dnf(world: World, tmp_path: Path, names: tuple[str, ...]) -> None:
    theirs = dnf_plan(world, tmp_path, names)
    assert copa_plan(world, names) == theirs
    assert (theirs is None) == ("host" in names)  # (the oracle refuses exactly the case that breaks api-user)
