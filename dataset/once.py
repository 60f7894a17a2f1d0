"""One builder per cache folder under torchrun: one process builds what is missing, the others wait.

The token store and the in-process mixture preparation are content-addressed caches written
atomically (temporary folder, then rename), so concurrent builders stay correct; but N processes
building the same thing at once spend N times the work on the cores the data loaders need.
:func:`build_once` runs the build on one process per cache folder:

- the global rank 0 when every process sees the same cache folder (a shared filesystem): rank 0
  writes a probe file ``.probe-<random>`` into the folder and every process looks for it;
- else the local rank 0 of each node (``LOCAL_RANK``, as torchrun sets it), for a folder on each
  node's own disk. (Nodes that share a folder among themselves but not with rank 0 then build
  concurrently, which the atomic rename keeps correct.)

The others wait in a collective of a gloo group with a long timeout (a build may take longer
than the default group's timeout), then every process raises the builder's UserError, if any,
so all ranks stop with the same line. Without a process group (one process, or a process group
not yet started) the build simply runs in this process.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from model.errors import UserError

T = TypeVar("T")
WAIT = timedelta(days=2)  # how long the others wait for a build (the builder's own time)
_GROUP: dict[str, Any] = {}


def _dist():
    """torch.distributed when a process group of more than one process is running, else None."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    dist = _dist()
    return dist.get_rank() if dist is not None else 0


def _group(dist) -> Any:
    """A gloo group over every rank with a long timeout (made once, by every rank together)."""
    if "group" not in _GROUP or _GROUP.get("world") is not dist.group.WORLD:
        _GROUP["group"] = dist.new_group(backend="gloo", timeout=WAIT)
        _GROUP["world"] = dist.group.WORLD
    return _GROUP["group"]


def release() -> None:
    """Destroy the builders' gloo group and forget it. Called by :func:`trainer.runtime.cleanup`
    before the default group goes: a group still referenced at interpreter shutdown is freed
    there, where gloo's worker threads abort the process ("terminate called without an active
    exception")."""
    group = _GROUP.pop("group", None)
    _GROUP.pop("world", None)
    dist = _dist()
    if group is not None and dist is not None:
        dist.destroy_process_group(group)


def from_rank0(compute: Callable[[], T]) -> T:
    """``compute()`` run on rank 0 only and its result given to every rank (e.g. a cache key that
    hashes the inputs: one pass over them instead of one per process). A UserError on rank 0 is
    raised on every rank."""
    dist = _dist()
    if dist is None:
        return compute()
    group = _group(dist)
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", compute())
        except UserError as e:
            box[0] = ("error", str(e))
    dist.broadcast_object_list(box, src=0, group=group)
    kind, value = box[0]
    if kind == "error":
        raise UserError(value)
    return value


def shared_folder(folder: Path) -> bool:
    """Whether every process sees the same ``folder`` (True without a process group): rank 0
    writes a probe file there, every process looks for it, rank 0 removes it."""
    dist = _dist()
    if dist is None:
        return True
    group = _group(dist)
    box: list[Any] = [None]
    probe = None
    if dist.get_rank() == 0:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{uuid.uuid4().hex}"
        probe.write_text("probe\n")
        box[0] = probe.name
    dist.broadcast_object_list(box, src=0, group=group)
    seen: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(seen, (folder / box[0]).is_file(), group=group)
    if probe is not None:
        probe.unlink(missing_ok=True)
    return all(seen)


def build_once(folder: Path, ready: Callable[[], bool], build: Callable[[], None]) -> bool:
    """Make ``ready()`` true on every process, running ``build()`` on one process per copy of the
    cache ``folder`` (module docstring) while the others wait. Returns whether a build ran now
    for this process's copy (False when it was ready already). Every process raises the
    builder's UserError (the first, in rank order) if a build failed."""
    dist = _dist()
    if dist is None:
        if ready():
            return False
        build()
        return True
    group = _group(dist)
    have = ready()
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, have, group=group)
    if all(everyone):
        return False
    builder = dist.get_rank() == 0 if shared_folder(folder) else int(os.environ.get("LOCAL_RANK", "0")) == 0
    error = ""
    if builder and not have:
        try:
            build()
        except UserError as e:
            error = str(e)
        except Exception as e:  # noqa: BLE001 - the others must not wait for a builder that died
            error = f"building {folder} failed on rank {dist.get_rank()}: {type(e).__name__}: {e}"
            dist.all_gather_object([None] * dist.get_world_size(), error, group=group)
            raise
    errors: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error, group=group)
    failed = next((e for e in errors if e), "")
    if failed:
        raise UserError(failed)
    if not ready():  # a rank whose copy of the folder no builder wrote (should not happen)
        build()
    return not have
