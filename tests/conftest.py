"""Shared fixtures: the real public data in ../shared/data (never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainer.paths import REPO_ROOT

SHARED_DATA = Path(os.environ.get("MINIGPT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data: under CI a missing file fails the test, elsewhere it skips."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        msg = f"real test data missing: {path} (set MINIGPT_SHARED_DATA to the shared/data folder)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def shared_data() -> Path:
    """The ../shared/data folder itself (fails under CI=true when absent)."""
    return shared_file()
