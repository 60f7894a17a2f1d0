"""Learning-rate schedules: pure functions of the optimizer step (0-based) and the run length.

"The last step" is ``total_steps - 1``; every schedule reaches its end value exactly there, for
every run length >= 1 and every warmup ratio in [0, 1]: the warmup is capped so that at least one
step after the peak remains (W <= total - 2), and a 1-step run takes its single step at the end
value. ``final_lr`` in a checkpoint is therefore the end value of a finished run.
Each schedule also has a :class:`Schedule` (its LR function plus the banner lines that describe
it once the run length is known). :data:`SCHEDULES` is the one table of them, by the name
``--lr_schedule`` takes in both stages (pretrain's default ``cosine``, midtrain's ``rewarm``);
:func:`build_schedule` builds one by name and :func:`run_schedule` the one a run asks for. A new
schedule is one function here, one entry in the table, and its test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from dataset.sampler import StepPlan
from model.errors import UserError


def _cosine(frac: float, hi: float, lo: float) -> float:
    return lo + 0.5 * (hi - lo) * (1.0 + math.cos(math.pi * min(max(frac, 0.0), 1.0)))


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    """W = round(warmup_ratio * total_steps), capped at total - 2 so that the peak (step W) comes
    before the last step and the decay reaches its end value there."""
    return max(min(round(warmup_ratio * total_steps), total_steps - 2), 0)


def get_pretrain_lr(step: int, total_steps: int, lr: float, warmup_ratio: float) -> float:
    """Linear warmup from lr/W up to lr over W steps, then cosine down to lr/10 at the last step."""
    w = warmup_steps_for(total_steps, warmup_ratio)
    if step < w:
        return lr * (step + 1) / w
    return _cosine(_decay_frac(step, w, total_steps), lr, lr / 10)


def _decay_frac(step: float, start: int, total_steps: int) -> float:
    """0 at ``start``, 1 at the last step (a run of one step is at its last step)."""
    span = total_steps - 1 - start
    return 1.0 if span <= 0 else (step - start) / span


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
    return _cosine(_decay_frac(step, w, total_steps), lr, lr / 10)


def wsd_phases(
    total_steps: int, warmup_ratio: float, decay_ratio: float, decay_steps: int | None = None
) -> tuple[int, int]:
    """(W warmup steps, D decay steps) of a warmup-stable-decay run: D = ``decay_steps`` when
    given (the last stage's steps, as SmolLM3 decayed on its last stage), else
    round(decay_ratio x total); the peak LR runs at step W at least (D <= total - W - 1), and
    the last of the D decay steps runs at the end value."""
    w = warmup_steps_for(total_steps, warmup_ratio)
    d = decay_steps if decay_steps is not None else round(decay_ratio * total_steps)
    return w, max(min(d, total_steps - w - 1), 1)


def get_wsd_lr(
    step: int,
    total_steps: int,
    lr: float,
    warmup_ratio: float,
    decay_ratio: float,
    decay_steps: int | None = None,
) -> float:
    """Warmup-stable-decay (MiniCPM, arXiv:2404.06395): lr/10 -> lr over W steps, constant lr,
    then a linear decay to lr/10 over the last D steps (:func:`wsd_phases`)."""
    w, d = wsd_phases(total_steps, warmup_ratio, decay_ratio, decay_steps)
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
    return start_lr * (1.0 - _decay_frac(step, 0, total_steps))


def stretched(lr_at: Callable[[float, int], float], at: int, old_total: int, new_total: int):
    """The LR function of a run whose length changed from ``old_total`` to ``new_total`` steps
    when resumed at step ``at`` (steps already taken): the steps before ``at`` keep their LRs, and
    the rest of the original schedule (from step ``at`` to its last step) is stretched or
    compressed in time over the new remaining steps. The LR is continuous at the resume point (no
    jump) and reaches the schedule's end value at the new last step; a run resumed after its last
    step (``at >= old_total``) continues at the LR it ended with.

    Returns ``f(step, total)`` (``total`` is ignored: the new length is fixed here).
    """

    def lr(step: float, total: int | None = None) -> float:
        if step < at or new_total == old_total:
            return lr_at(step, old_total)
        if at >= old_total:
            return lr_at(old_total - 1, old_total)
        span_old, span_new = old_total - 1 - at, new_total - 1 - at
        mapped = at + (step - at) * (span_old / span_new if span_new > 0 else 0.0)
        return lr_at(mapped, old_total)

    return lr


def describe_length_change(
    lr_at: Callable[[float, int], float], at: int, old_total: int, new_total: int
) -> str:
    """The banner line for a run resumed at step ``at`` whose length changed (``lr_at`` already
    :func:`stretched`): how the LR schedule follows."""
    head = f"Run length changed from {old_total} to {new_total} steps at step {at}"
    if at >= old_total:
        return (
            f"{head}: the run had finished, so it continues at the LR it ended with "
            f"({lr_at(at, new_total):.2e}) for the {new_total - at} new steps (no LR jump; a re-warmup "
            "is a new stage: start it with --from_weight)"
        )
    return (
        f"{head}: the rest of the LR schedule ({lr_at(at, new_total):.2e} at step {at + 1} -> "
        f"{lr_at(new_total - 1, new_total):.2e} at step {new_total}) is stretched over the "
        f"{new_total - at} remaining steps (no LR jump)"
    )


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


def _start(lr: float, warmup: int) -> str:
    """The banner's opening of a mid-training schedule: from lr/10 up, or at lr when W rounds to 0."""
    return f"{lr / 10:.2e} → {lr:.2e} (warmup)" if warmup else f"{lr:.2e} (no warmup step at this length)"


def rewarm_schedule(lr: float, warmup_ratio: float) -> Schedule:
    def describe(total: int) -> list[str]:
        w = warmup_steps_for(total, warmup_ratio)
        return [
            f"Mid-training with LR re-warmup: {w} warmup steps out of {total} total steps",
            f"LR schedule: {_start(lr, w)} → {lr / 10:.2e} (decay)",
        ]

    return Schedule(partial(get_midtrain_lr, lr=lr, warmup_ratio=warmup_ratio), describe)


def wsd_schedule(
    lr: float, warmup_ratio: float, decay_ratio: float, decay_steps: int | None = None, decay_on: str = ""
) -> Schedule:
    """WSD; ``decay_steps`` (with ``decay_on``, e.g. "the last stage 'anneal'") fixes D."""

    def describe(total: int) -> list[str]:
        w, d = wsd_phases(total, warmup_ratio, decay_ratio, decay_steps)
        on = f" ({decay_on})" if decay_on else ""
        return [
            f"Warmup-stable-decay: {w} warmup, {total - w - d} stable, {d} decay steps{on} out of {total}",
            f"LR schedule: {_start(lr, w)} → {lr:.2e} (stable) → {lr / 10:.2e} (decay)",
        ]

    return Schedule(
        partial(
            get_wsd_lr, lr=lr, warmup_ratio=warmup_ratio, decay_ratio=decay_ratio, decay_steps=decay_steps
        ),
        describe,
    )


def anneal_schedule(start_lr: float) -> Schedule:
    def describe(total: int) -> list[str]:
        return [
            f"Mid-training anneal: no warmup, LR {start_lr:.2e} (where pretraining ended) → 0 over {total} steps"
        ]

    return Schedule(partial(get_anneal_lr, start_lr=start_lr), describe)


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class ScheduleArgs:
    """What the schedules of :data:`SCHEDULES` are built from (each reads what it needs)."""

    lr: float  # the peak LR (--learning_rate)
    warmup_ratio: float
    decay_ratio: float = 0.2  # wsd: fraction of the steps in the final decay
    decay_steps: int | None = None  # wsd: exactly this many decay steps (--decay_ratio stage)
    decay_on: str = ""  # wsd: what the decay steps are, for the banner ("the last stage 'x'")
    start_lr: float | None = None  # anneal: the LR the --from_weight run ended with


def _anneal(a: ScheduleArgs) -> Schedule:
    if not a.start_lr:
        raise UserError(
            "--lr_schedule anneal: the --from_weight checkpoint does not record the LR its run ended with"
        )
    return anneal_schedule(a.start_lr)


SCHEDULES: dict[str, Callable[[ScheduleArgs], Schedule]] = {
    "cosine": lambda a: pretrain_schedule(a.lr, a.warmup_ratio),
    "rewarm": lambda a: rewarm_schedule(a.lr, a.warmup_ratio),
    "wsd": lambda a: wsd_schedule(a.lr, a.warmup_ratio, a.decay_ratio, a.decay_steps, a.decay_on),
    "anneal": _anneal,
}
SCHEDULE_HELP = (
    "cosine: warmup from LR/W, cosine to LR/10; rewarm: LR/10 -> LR, cosine to LR/10; wsd: warmup, "
    "constant, linear decay to LR/10 (--decay_ratio); anneal: the --from_weight run's final LR -> 0"
)


def build_schedule(name: str, args: ScheduleArgs) -> Schedule:
    """The schedule ``name`` of :data:`SCHEDULES`; UserError for an unknown name."""
    if name not in SCHEDULES:
        raise UserError(f"--lr_schedule {name!r}: unknown schedule; use one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name](args)


def parse_decay_ratio(value: str) -> float | str:
    """--decay_ratio: a fraction in (0, 1], or "stage"; UserError otherwise."""
    if value == "stage":
        return value
    try:
        ratio = float(value)
    except ValueError:
        ratio = -1.0
    if not 0 < ratio <= 1:
        raise UserError(f"--decay_ratio must be in (0, 1] or 'stage', got {value}")
    return ratio


def run_schedule(
    cfg,
    plan: StepPlan,
    segment_names: Sequence[str | None],
    parent: dict | None,
) -> Schedule:
    """The schedule a run asks for (``cfg``: a trainer.config.TrainConfig): --lr_schedule with
    --learning_rate, --warmup_ratio and --decay_ratio; ``--decay_ratio stage`` decays over exactly
    the last stage's steps of ``plan`` (UserError without stages, or when --max_steps ends the run
    before it); anneal starts from the ``final_lr`` of ``parent`` (the --from_weight meta)."""
    ratio = parse_decay_ratio(cfg.decay_ratio)
    a = ScheduleArgs(
        cfg.learning_rate,
        cfg.warmup_ratio,
        start_lr=(parent or {}).get("final_lr"),
        decay_ratio=0.0 if ratio == "stage" else float(ratio),
    )
    if cfg.lr_schedule == "wsd" and ratio == "stage":
        names = list(segment_names)
        if len(names) < 2 or names[-1] is None:
            raise UserError("--decay_ratio stage needs a mixture with stages: (see config/README.md)")
        full = cfg.epochs * plan.steps_per_epoch
        if cfg.max_steps is not None and cfg.max_steps < full:
            raise UserError(
                f"--decay_ratio stage: --max_steps {cfg.max_steps} ends the run before its last stage {names[-1]!r} "
                f"(the full run is {full} steps); drop --max_steps or give --decay_ratio a fraction"
            )
        a = ScheduleArgs(
            cfg.learning_rate,
            cfg.warmup_ratio,
            decay_ratio=0.0,
            decay_steps=plan.segment_steps[-1],
            decay_on=f"the last stage {names[-1]!r}",
        )
    return build_schedule(cfg.lr_schedule, a)
