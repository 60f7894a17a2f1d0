"""Default locations, resolved from the repository root, never from the working directory.

Set ``MINIGPT_HOME`` to move every default (out/, checkpoints/, dataset/) elsewhere.
"""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def home() -> Path:
    """The folder that default paths hang from: $MINIGPT_HOME, else the repo root."""
    env = os.environ.get("MINIGPT_HOME")
    return Path(env).expanduser().resolve() if env else REPO_ROOT


def repo_path(*parts: str) -> Path:
    """``home() / parts``: e.g. ``repo_path("out")``."""
    return home().joinpath(*parts)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Run ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A crash (even kill -9) at any point leaves either the old file or the new one, never a
    half-written mix; a failed ``write`` leaves no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
