"""trainer.throughput: the CPU peak is the best window of 2048^3 matmuls, not their mean."""

from __future__ import annotations

import pytest
import torch

from trainer import throughput


def test_the_peak_is_the_best_window_not_the_mean(monkeypatch):
    """A clock on which the second of three windows is 4x slower (another process took the cores):
    the peak is the fast windows' rate, 2 n^3 x window / their duration."""
    ticks = iter([0.0, 0.0, 1.0, 1.0, 5.0, 5.0, 6.0])  # start; window 1: 0 -> 1 s; 2: 1 -> 5 s; 3: 5 -> 6 s
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(ticks))
    got = throughput.measure_matmul_flops(torch.device("cpu"), torch.float32, n=64, seconds=6.0, window=2)
    assert got == pytest.approx(2 * 64**3 * 2 / 1.0)  # the mean would be 3 x smaller


def test_mfu_is_model_flops_over_the_peak():
    assert throughput.mfu(1000.0, 6e6, 1.2e10) == pytest.approx(0.5)
    assert throughput.mfu(1000.0, 6e6, 0.0) == 0.0
