"""The fixture cache keeps an entry a running session may be using when the archive moves under it.

Debian's mirrors update several times a day; a suite that runs across an update builds the new state's fixture
while earlier tests still hold the old one's path (a fresh-machine CI run lost its multi-platform layout this way).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.images import builder


def _build(marker: str) -> Callable[[Path], None]:
    def build(tmp: Path) -> None:
        (tmp / "content").write_text(marker)
    return build


def test_an_entry_in_use_survives_a_new_archive_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPA_TESTS_CACHE", str(tmp_path))
    params = {"name": "demo"}
    first = builder.cached("probe", params, _build("one"), archive="state-1")
    second = builder.cached("probe", params, _build("two"), archive="state-2")
    assert second != first
    assert (first / "content").read_text() == "one", "an entry used minutes ago was pruned"
    # Used again: still the same entry, not rebuilt.
    assert builder.cached("probe", params, _build("never"), archive="state-1") == first
    # Long unused entries of older states do go when a newer state is built.
    old = time.time() - builder.IN_USE_SECONDS - 60
    for entry in (first, second):
        os.utime(entry / "meta.json", (old, old))
    third = builder.cached("probe", params, _build("three"), archive="state-3")
    assert (third / "content").read_text() == "three"
    assert not first.exists() and not second.exists()
