"""Atomic writes: a reader sees all of a result or none of it, and a replaced directory never vanishes."""

from __future__ import annotations

import sys

import pytest

from unigap.fsutil import _exchange, atomic_directory, write_text_atomic


def test_overwrite_swaps_the_new_directory_in_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "data"
    with atomic_directory(target) as tmp:
        (tmp / "old.txt").write_text("old")
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (target / "old.txt").read_text() == "old"  # the old one is served until the swap
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_a_failing_build_changes_nothing(tmp_path):
    target = tmp_path / "data"
    with atomic_directory(target) as tmp:
        (tmp / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target, overwrite=True) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("killed")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
    with pytest.raises(FileExistsError, match="not empty"):
        with atomic_directory(target):
            pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux-only")
def test_exchange_swaps_two_directories_in_one_step(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    write_text_atomic(a / "from_a", "1")
    write_text_atomic(b / "from_b", "2")
    assert _exchange(a, b)
    assert [p.name for p in a.iterdir()] == ["from_b"] and [p.name for p in b.iterdir()] == ["from_a"]
    assert not _exchange(a, tmp_path / "missing")
