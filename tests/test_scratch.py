"""copa.scratch: a scratch directory handed to Removals is gone once they are waited for, and only then is the
wait over; without Removals it goes when the `with` ends."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from copa.scratch import Removals, scratch_dir


def _fill(path: Path) -> None:
    for i in range(50):
        (path / f"d{i}").mkdir()
        (path / f"d{i}" / "f").write_bytes(os.urandom(1 << 12))


def test_removed_in_the_background_and_waited_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started, release = threading.Event(), threading.Event()
    real = shutil.rmtree

    def slow_rmtree(path: Path, ignore_errors: bool = False) -> None:
        started.set()
        release.wait(10)
        real(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(shutil, "rmtree", slow_rmtree)
    with Removals() as removals:
        with scratch_dir(tmp_path, "adapter-", removals) as work:
            assert work.parent == tmp_path and work.name.startswith("adapter-")
            _fill(work)
        assert started.wait(10)
        assert work.exists()  # the `with` did not wait for the removal
        release.set()
    assert not work.exists()
    assert list(tmp_path.iterdir()) == []


def test_without_removals_it_goes_at_once(tmp_path: Path) -> None:
    with scratch_dir(tmp_path, "x-", None) as work:
        _fill(work)
    assert not work.exists()


def test_removed_after_a_failure_too(tmp_path: Path) -> None:
    with Removals() as removals, pytest.raises(RuntimeError), scratch_dir(tmp_path, "x-", removals) as work:
        _fill(work)
        raise RuntimeError("the patch failed")
    assert not work.exists()
