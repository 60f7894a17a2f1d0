"""Which packed rows each process reads at each optimizer step: a deterministic, resumable order.

An epoch trains on every row exactly once. The rows form one or more segments (the stages of a
staged mixture, in order; one segment otherwise). Each segment's rows are shuffled per epoch and
cut into optimizer steps of ``G = batch_size x accumulation_steps x world_size`` rows; the last
step of a segment may be short (the trainer weights every step by its own number of target
tokens, so a short step counts each token like any other). No row is dropped and no step mixes
rows of two segments.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from model.errors import UserError

EMPTY = -1  # row index of a micro-batch slot with no row: the dataset returns a row with no targets


class StepPlan:
    """Which rows every optimizer step trains, for the whole run: built once per run.

    ``segments``: the number of rows (one segment) or a list of row ranges, consecutive from 0.
    Epoch e visits segment k's rows in the order ``default_rng(seed + e).permutation`` (one
    segment) or ``default_rng([seed + e, k]).permutation`` (several). Step s of a segment uses
    its next G rows; micro-batch m of rank r takes the ``batch_size`` slice at offset
    ``(m * world + r) * batch`` of them, so N ranks see exactly the rows one process with an
    N-times larger batch would. A slice short of rows (a short last step) is filled up with
    ``EMPTY`` (a row without targets), so every rank runs the same number of forward passes, all
    of the same shape (a compiled model never sees a new one). A run that resumes at step k reads
    the same rows it would have read without stopping (:meth:`sampler` from step k).
    """

    def __init__(
        self,
        segments: int | Sequence[range],
        batch_size: int,
        accumulation_steps: int,
        world_size: int,
        rank: int,
        seed: int,
    ):
        self.segments = [range(segments)] if isinstance(segments, int) else list(segments)
        self.num_rows = sum(len(s) for s in self.segments)
        self.batch, self.accum = batch_size, accumulation_steps
        self.world, self.rank, self.seed = world_size, rank, seed
        self.global_batch = batch_size * accumulation_steps * world_size
        if self.num_rows == 0:
            raise UserError("the training data has no rows; add data")
        # steps of each segment in one epoch, and where each segment starts within the epoch
        self.segment_steps = [math.ceil(len(s) / self.global_batch) for s in self.segments]
        self.segment_start = np.cumsum([0, *self.segment_steps[:-1]]).tolist()
        self.steps_per_epoch = sum(self.segment_steps)

    def locate(self, step: int) -> tuple[int, int, int]:
        """(epoch, segment, step within the segment) of a global optimizer step (0-based)."""
        epoch, s = divmod(step, self.steps_per_epoch)
        k = max(i for i, first in enumerate(self.segment_start) if first <= s)
        return epoch, k, s - self.segment_start[k]

    def step_rows(self, step: int, _cache: dict | None = None) -> np.ndarray:
        """The global batch of rows (all ranks) of optimizer step ``step``: G rows, or fewer at the
        end of a segment."""
        epoch, k, j = self.locate(step)
        cache = _cache if _cache is not None else {}
        if cache.get("key") != (epoch, k):
            seg = self.segments[k]
            rng = np.random.default_rng(
                self.seed + epoch if len(self.segments) == 1 else [self.seed + epoch, k]
            )
            cache["key"], cache["perm"] = (epoch, k), seg.start + rng.permutation(len(seg))
        return cache["perm"][j * self.global_batch : (j + 1) * self.global_batch]

    def micro_batches(self, start_step: int, total_steps: int) -> Iterator[list[int]]:
        """This rank's micro-batches (row indices) of steps ``start_step .. total_steps - 1``,
        ``accumulation_steps`` per step."""
        cache: dict = {}
        for step in range(start_step, total_steps):
            rows = self.step_rows(step, cache)
            for m in range(self.accum):
                off = (m * self.world + self.rank) * self.batch
                mine = rows[off : off + self.batch].tolist()
                yield mine + [EMPTY] * (self.batch - len(mine))

    def sampler(self, start_step: int, total_steps: int) -> StepSampler:
        """The DataLoader batch sampler of :meth:`micro_batches`."""
        return StepSampler(self, start_step, total_steps)


class StepSampler(torch.utils.data.Sampler):
    """A :class:`StepPlan` from ``start_step`` to ``total_steps`` as a DataLoader batch sampler."""

    def __init__(self, plan: StepPlan, start_step: int, total_steps: int):
        self.plan, self.start_step, self.total_steps = plan, start_step, total_steps

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.plan.accum

    def __iter__(self) -> Iterator[list[int]]:
        return self.plan.micro_batches(self.start_step, self.total_steps)
