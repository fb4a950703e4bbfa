"""Atomic writes keep the permissions a plain write would give, and write through symlinks."""

from __future__ import annotations

import os
import stat

import pytest

from nlc.fileio import write_atomic


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_file_follows_the_umask(tmp_path, umask):
    write_atomic(tmp_path / "a.txt", "x")
    assert mode(tmp_path / "a.txt") == 0o644
    os.umask(0o077)
    write_atomic(tmp_path / "b.txt", "x")
    assert mode(tmp_path / "b.txt") == 0o600


def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    path = tmp_path / "tool.sh"
    path.write_text("old")
    path.chmod(0o755)
    write_atomic(path, "new")
    assert path.read_text() == "new" and mode(path) == 0o755
    assert [p.name for p in tmp_path.iterdir()] == ["tool.sh"]  # no temporary left behind
