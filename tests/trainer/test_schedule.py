import math

import pytest

from trainer.schedule import get_anneal_lr, get_midtrain_lr, get_pretrain_lr, get_wsd_lr, warmup_steps_for

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
    assert get_anneal_lr(0, 1, 3e-5) == pytest.approx(3e-5)
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
