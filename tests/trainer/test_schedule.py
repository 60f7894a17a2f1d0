import math
from functools import partial
from typing import Any

import pytest

from model.errors import UserError
from trainer.schedule import (
    SCHEDULES,
    ScheduleArgs,
    build_schedule,
    get_anneal_lr,
    get_midtrain_lr,
    get_pretrain_lr,
    get_wsd_lr,
    rewarm_schedule,
    warmup_steps_for,
    wsd_schedule,
)

LR = 2e-4


def test_midtrain_rewarm_edges():
    total, ratio = 1485, 0.05
    w = warmup_steps_for(total, ratio)
    assert w == 74  # round(0.05 * 1485)
    assert get_midtrain_lr(0, total, LR, ratio) == pytest.approx(LR / 10)
    assert get_midtrain_lr(w, total, LR, ratio) == pytest.approx(LR)
    assert get_midtrain_lr(w // 2, total, LR, ratio) == pytest.approx(LR / 10 + 0.9 * LR * (w // 2) / w)
    assert get_midtrain_lr(total - 1, total, LR, ratio) == pytest.approx(LR / 10)
    mid = w + (total - 1 - w) / 2
    assert get_midtrain_lr(int(mid), total, LR, ratio) == pytest.approx((LR + LR / 10) / 2, rel=1e-2)
    lrs = [get_midtrain_lr(s, total, LR, ratio) for s in range(total)]
    assert all(a <= b for a, b in zip(lrs[:w], lrs[1 : w + 1], strict=True))  # rising during warmup
    assert all(a >= b for a, b in zip(lrs[w:-1], lrs[w + 1 :], strict=True))  # falling after
    assert max(lrs) == pytest.approx(LR)


def test_midtrain_without_warmup_starts_at_peak():
    assert get_midtrain_lr(0, 100, LR, 0.0) == pytest.approx(LR)
    assert get_midtrain_lr(99, 100, LR, 0.0) == pytest.approx(LR / 10)


def test_pretrain_edges():
    total = 1000
    assert get_pretrain_lr(0, total, 5e-4, 0.01) == pytest.approx(5e-4 / 10)  # 1/W of the way up, W = 10
    assert get_pretrain_lr(9, total, 5e-4, 0.01) == pytest.approx(5e-4)
    assert get_pretrain_lr(10, total, 5e-4, 0.01) == pytest.approx(5e-4)
    assert get_pretrain_lr(total - 1, total, 5e-4, 0.01) == pytest.approx(5e-5)


def test_wsd_edges():
    total, w_ratio, d_ratio = 100, 0.1, 0.2
    assert get_wsd_lr(0, total, LR, w_ratio, d_ratio) == pytest.approx(LR / 10)
    assert get_wsd_lr(10, total, LR, w_ratio, d_ratio) == pytest.approx(LR)
    assert get_wsd_lr(79, total, LR, w_ratio, d_ratio) == pytest.approx(LR)  # last stable step
    assert get_wsd_lr(80, total, LR, w_ratio, d_ratio) < LR
    assert get_wsd_lr(99, total, LR, w_ratio, d_ratio) == pytest.approx(LR / 10)


def test_anneal_edges():
    assert get_anneal_lr(0, 50, 3e-5) == pytest.approx(3e-5)
    assert get_anneal_lr(49, 50, 3e-5) == 0.0
    assert get_anneal_lr(0, 1, 3e-5) == 0.0  # a one-step run takes its step at the end value
    assert get_anneal_lr(25, 51, 3e-5) == pytest.approx(1.5e-5)


@pytest.mark.parametrize("total", [1, 2, 3])
def test_tiny_runs_stay_finite(total):
    for s in range(total):
        for v in (
            get_midtrain_lr(s, total, LR, 0.5),
            get_pretrain_lr(s, total, LR, 0.5),
            get_wsd_lr(s, total, LR, 0.5, 0.5),
        ):
            assert math.isfinite(v) and 0 < v <= LR


RATIOS = [0.0, 0.01, 0.05, 0.1, 0.25, 1 / 3, 0.5, 0.75, 0.99, 1.0]
# every schedule of the table, built through it, with the end value it must reach: a schedule
# added to SCHEDULES without an entry here fails test_the_table_is_covered
END = {"cosine": LR / 10, "rewarm": LR / 10, "wsd": LR / 10, "anneal": 0.0}
CASES: dict[str, tuple[dict[str, Any], float]] = {
    **{name: ({}, end) for name, end in END.items()},
    "wsd_long_decay": ({"decay_ratio": 1.0}, LR / 10),
    "wsd_fixed_decay": ({"decay_steps": 7}, LR / 10),
}


def _lr(name: str, extra: dict):
    base = name.split("_")[0]

    def fn(step: int, total: int, ratio: float) -> float:
        args = ScheduleArgs(LR, ratio, start_lr=LR, **extra)
        return build_schedule(base, args).lr_at(step, total)

    return fn


def test_the_table_is_covered():
    assert set(END) == set(SCHEDULES)


@pytest.mark.parametrize("name", CASES)
def test_every_schedule_ends_at_its_end_value(name):
    """Field case 3: for every length 1..200 and warmup ratio in [0, 1] the last step runs at the
    stated end value, and the peak (when there is room for one) is LR."""
    extra, end = CASES[name]
    fn = _lr(name, extra)
    for total in range(1, 201):
        for ratio in RATIOS:
            lrs = [fn(s, total, ratio) for s in range(total)]
            assert lrs[-1] == pytest.approx(end, abs=1e-15), (name, total, ratio, lrs[-3:])
            assert all(math.isfinite(v) and 0 <= v <= LR * (1 + 1e-12) for v in lrs)
            if name != "anneal" and total >= 2:
                assert max(lrs) == pytest.approx(LR), (name, total, ratio)


def test_short_run_of_the_field_report():
    """--max_steps 3 --warmup_ratio 0.5 --learning_rate 3e-3: 1.5e-3, 3e-3, then the end value."""
    assert [get_pretrain_lr(s, 3, 3e-3, 0.5) for s in range(3)] == pytest.approx([3e-3, 3e-3, 3e-4])
    assert [get_midtrain_lr(s, 3, 3e-3, 0.5) for s in range(3)] == pytest.approx([3e-4, 3e-3, 3e-4])
    assert get_pretrain_lr(0, 1, 3e-3, 0.5) == pytest.approx(3e-4)


def test_stretched_schedule_is_continuous_and_ends_at_the_end_value():
    from trainer.schedule import stretched

    old, new = 100, 250
    for at in (0, 3, 50, 99):
        f = stretched(partial(get_midtrain_lr, lr=LR, warmup_ratio=0.05), at, old, new)
        before = [get_midtrain_lr(s, old, LR, 0.05) for s in range(at)]
        assert [f(s, new) for s in range(at)] == before  # steps already taken keep their LRs
        assert f(at, new) == pytest.approx(get_midtrain_lr(at, old, LR, 0.05))  # no jump
        assert f(new - 1, new) == pytest.approx(LR / 10)
    finished = stretched(partial(get_midtrain_lr, lr=LR, warmup_ratio=0.05), old, old, new)
    assert all(finished(s, new) == pytest.approx(LR / 10) for s in range(old, new))


@pytest.mark.parametrize("make", [rewarm_schedule, lambda lr, w: wsd_schedule(lr, w, 0.2)])
def test_the_banner_says_the_lr_the_run_starts_at(make):
    """8 steps at warmup ratio 0.05: W rounds to 0, the run starts at the peak, and the banner
    says so instead of promising a warmup from lr/10."""
    sched = make(2e-4, 0.05)
    assert sched.lr_at(0, 8) == pytest.approx(2e-4)
    assert "2.00e-04 (no warmup step at this length)" in sched.describe(8)[1]
    assert "2.00e-05 → 2.00e-04 (warmup)" in make(2e-4, 0.25).describe(8)[1]


def test_the_table_builds_what_each_function_computes():
    """build_schedule by name gives exactly the LR functions it names (the stage scripts use it)."""
    a = ScheduleArgs(LR, 0.1, decay_ratio=0.3, start_lr=3e-5)
    for step in (0, 5, 37, 99):
        assert build_schedule("cosine", a).lr_at(step, 100) == get_pretrain_lr(step, 100, LR, 0.1)
        assert build_schedule("rewarm", a).lr_at(step, 100) == get_midtrain_lr(step, 100, LR, 0.1)
        assert build_schedule("wsd", a).lr_at(step, 100) == get_wsd_lr(step, 100, LR, 0.1, 0.3)
        assert build_schedule("anneal", a).lr_at(step, 100) == get_anneal_lr(step, 100, 3e-5)
    with pytest.raises(UserError, match="does not record the LR"):
        build_schedule("anneal", ScheduleArgs(LR, 0.1))
    with pytest.raises(UserError, match="unknown schedule"):
        build_schedule("linear", a)
