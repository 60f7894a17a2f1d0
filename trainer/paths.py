"""Default locations, resolved from the repository root, never from the working directory.

Set ``MINIGPT_HOME`` to move every default (out/, checkpoints/, dataset/) elsewhere.
"""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def home() -> Path:
    """The folder that default paths hang from: $MINIGPT_HOME, else the repo root."""
    env = os.environ.get("MINIGPT_HOME")
    return Path(env).expanduser().resolve() if env else REPO_ROOT


def repo_path(*parts: str) -> Path:
    """``home() / parts``: e.g. ``repo_path("out")``."""
    return home().joinpath(*parts)


def shared_data() -> Path:
    """The shared real data folder (TinyStories, MMLU, ...) that tests and benchmarks read:
    $MINIGPT_SHARED_DATA, else $MINIGPT_SHARED/data, else ``../shared/data`` beside the repo."""
    if env := os.environ.get("MINIGPT_SHARED_DATA"):
        return Path(env).expanduser()
    shared = os.environ.get("MINIGPT_SHARED")
    return (Path(shared).expanduser() if shared else REPO_ROOT.parent / "shared") / "data"
