"""Which packed rows each process reads at each optimizer step: a deterministic, resumable order."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from model.errors import UserError


class StepSampler(torch.utils.data.Sampler):
    """Micro-batches of row indices for this rank, from a given global step on.

    Epoch e visits rows in the order ``default_rng(seed + e).permutation(num_rows)``. Optimizer
    step s of an epoch uses the next ``batch_size * accumulation_steps * world_size`` rows;
    micro-batch m of rank r takes its ``batch_size`` slice at offset ``(m * world + r) * batch``,
    so N ranks see exactly the rows one process with an N-times larger batch would. A run that
    resumes at step k therefore reads the same rows it would have read without stopping.
    """

    def __init__(
        self,
        num_rows: int,
        batch_size: int,
        accumulation_steps: int,
        world_size: int,
        rank: int,
        seed: int,
        total_steps: int,
        start_step: int = 0,
    ):
        self.num_rows, self.batch, self.accum = num_rows, batch_size, accumulation_steps
        self.world, self.rank, self.seed = world_size, rank, seed
        self.total_steps, self.start_step = total_steps, start_step
        self.global_batch = batch_size * accumulation_steps * world_size
        self.steps_per_epoch = num_rows // self.global_batch
        if self.steps_per_epoch == 0:
            raise UserError(
                f"the data has {num_rows} rows, fewer than one global batch of {self.global_batch} "
                "(batch_size x accumulation_steps x world_size); lower --batch_size or add data"
            )

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.accum

    def __iter__(self) -> Iterator[list[int]]:
        perm_epoch, perm = -1, None
        for step in range(self.start_step, self.total_steps):
            epoch, s = divmod(step, self.steps_per_epoch)
            if epoch != perm_epoch:
                perm = np.random.default_rng(self.seed + epoch).permutation(self.num_rows)
                perm_epoch = epoch
            base = s * self.global_batch
            for m in range(self.accum):
                off = base + (m * self.world + self.rank) * self.batch
                yield perm[off : off + self.batch].tolist()
