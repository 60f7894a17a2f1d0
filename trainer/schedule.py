"""Learning-rate schedules: pure functions of the optimizer step (0-based) and the run length.

"The last step" is ``total_steps - 1``; every schedule reaches its end value exactly there.
"""

from __future__ import annotations

import math


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


def get_wsd_lr(step: int, total_steps: int, lr: float, warmup_ratio: float, decay_ratio: float) -> float:
    """Warmup-stable-decay (MiniCPM, arXiv:2404.06395): lr/10 -> lr over W steps, constant lr,
    then a linear decay to lr/10 over the last D = round(decay_ratio * total) steps."""
    w = warmup_steps_for(total_steps, warmup_ratio)
    d = max(min(round(decay_ratio * total_steps), total_steps - w), 1)
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
