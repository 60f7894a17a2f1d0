"""Learning-rate schedules: pure functions of the optimizer step (0-based) and the run length.

"The last step" is ``total_steps - 1``; every schedule reaches its end value exactly there.
Each schedule also has a :class:`Schedule` (its LR function plus the banner lines that describe
it once the run length is known), built by :func:`pretrain_schedule` / :func:`midtrain_schedule`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial


def _cosine(frac: float, hi: float, lo: float) -> float:
    return lo + 0.5 * (hi - lo) * (1.0 + math.cos(math.pi * min(max(frac, 0.0), 1.0)))


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    """W = round(warmup_ratio * total_steps), kept below the run length."""
    return min(round(warmup_ratio * total_steps), max(total_steps - 1, 0))


def get_pretrain_lr(step: int, total_steps: int, lr: float, warmup_ratio: float) -> float:
    """Linear warmup from lr/W up to lr over W steps, then cosine down to lr/10 at the last step."""
    w = warmup_steps_for(total_steps, warmup_ratio)
    if step < w:
        return lr * (step + 1) / w
    return _cosine((step - w) / max(total_steps - 1 - w, 1), lr, lr / 10)


def get_midtrain_lr(step: int, total_steps: int, lr: float, warmup_ratio: float) -> float:
    """Re-warmup: lr/10 at step 0, linear up to lr at step W, cosine down to lr/10 at the last step.

    Starting at lr/10 rather than 0 or lr: the checkpoint already sits in a good basin, so a
    small non-zero LR makes progress at once while the optimizer's moments (fresh for a new
    data distribution) settle, and the ramp avoids the loss spike of jumping straight to peak.
    With warmup_ratio 0 the run starts at lr (no warmup).
    """
    w = warmup_steps_for(total_steps, warmup_ratio)
    if step < w:
        return lr / 10 + (lr - lr / 10) * step / w
    return _cosine((step - w) / max(total_steps - 1 - w, 1), lr, lr / 10)


def wsd_phases(total_steps: int, warmup_ratio: float, decay_ratio: float) -> tuple[int, int]:
    """(W warmup steps, D decay steps) of a warmup-stable-decay run."""
    w = warmup_steps_for(total_steps, warmup_ratio)
    return w, max(min(round(decay_ratio * total_steps), total_steps - w), 1)


def get_wsd_lr(step: int, total_steps: int, lr: float, warmup_ratio: float, decay_ratio: float) -> float:
    """Warmup-stable-decay (MiniCPM, arXiv:2404.06395): lr/10 -> lr over W steps, constant lr,
    then a linear decay to lr/10 over the last D = round(decay_ratio * total) steps."""
    w, d = wsd_phases(total_steps, warmup_ratio, decay_ratio)
    if step < w:
        return lr / 10 + (lr - lr / 10) * step / w
    decay_start = total_steps - d
    if step < decay_start:
        return lr
    frac = (step - decay_start + 1) / d
    return lr + (lr / 10 - lr) * frac


def get_anneal_lr(step: int, total_steps: int, start_lr: float) -> float:
    """OLMo 2-style mid-training anneal: start at the LR the pretrain run ended with, no warmup,
    linear to 0 at the last step."""
    if total_steps <= 1:
        return start_lr
    return start_lr * (1.0 - step / (total_steps - 1))


# --------------------------------------------------------------------------- schedules with banners


@dataclass(frozen=True)
class Schedule:
    """An LR schedule as the engine uses it."""

    lr_at: Callable[[int, int], float]  # (step, total_steps) -> LR used at that step
    describe: Callable[[int], list[str]]  # total_steps -> banner lines printed at start


def pretrain_schedule(lr: float, warmup_ratio: float) -> Schedule:
    def describe(total: int) -> list[str]:
        return [
            f"LR schedule: {warmup_steps_for(total, warmup_ratio)} warmup steps to {lr:.2e}, "
            f"cosine to {lr / 10:.2e} at step {total}"
        ]

    return Schedule(partial(get_pretrain_lr, lr=lr, warmup_ratio=warmup_ratio), describe)


def rewarm_schedule(lr: float, warmup_ratio: float) -> Schedule:
    def describe(total: int) -> list[str]:
        return [
            f"Mid-training with LR re-warmup: {warmup_steps_for(total, warmup_ratio)} warmup steps out of {total} total steps",
            f"LR schedule: {lr / 10:.2e} → {lr:.2e} (warmup) → {lr / 10:.2e} (decay)",
        ]

    return Schedule(partial(get_midtrain_lr, lr=lr, warmup_ratio=warmup_ratio), describe)


def wsd_schedule(lr: float, warmup_ratio: float, decay_ratio: float) -> Schedule:
    def describe(total: int) -> list[str]:
        w, d = wsd_phases(total, warmup_ratio, decay_ratio)
        return [
            f"Mid-training with warmup-stable-decay: {w} warmup, {total - w - d} stable, {d} decay steps out of {total}",
            f"LR schedule: {lr / 10:.2e} → {lr:.2e} (warmup) → {lr:.2e} (stable) → {lr / 10:.2e} (decay)",
        ]

    return Schedule(partial(get_wsd_lr, lr=lr, warmup_ratio=warmup_ratio, decay_ratio=decay_ratio), describe)


def anneal_schedule(start_lr: float) -> Schedule:
    def describe(total: int) -> list[str]:
        return [
            f"Mid-training anneal: no warmup, LR {start_lr:.2e} (where pretraining ended) → 0 over {total} steps"
        ]

    return Schedule(partial(get_anneal_lr, start_lr=start_lr), describe)
