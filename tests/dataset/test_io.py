"""dataset.io's atomic writers: whole or nothing, and files other users can read as usual."""

from __future__ import annotations

import os
import stat

import pytest

from dataset.io import atomic_dir, atomic_write


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_files_and_folders_get_the_modes_plain_ones_would(tmp_path, umask):
    """mkstemp / mkdtemp create private (0600 / 0700) temporaries; what lands must have the mode
    open() / mkdir() give under the user's umask, so an export or a prepared split is readable by
    whoever reads ordinary files there (an lm-eval container, a teammate)."""
    before = os.umask(umask)
    try:
        (tmp_path / "plain.txt").write_text("x")
        (tmp_path / "plain_dir").mkdir()
        atomic_write(tmp_path / "a.txt", lambda p: p.write_text("x"))
        with atomic_dir(tmp_path / "d") as d:
            (d / "f.txt").write_text("x")
    finally:
        os.umask(before)

    def mode(p):
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(tmp_path / "a.txt") == mode(tmp_path / "plain.txt") == 0o666 & ~umask
    assert mode(tmp_path / "d") == mode(tmp_path / "plain_dir") == 0o777 & ~umask
    assert (tmp_path / "d" / "f.txt").read_text() == "x"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")

    def fail(p):
        p.write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
