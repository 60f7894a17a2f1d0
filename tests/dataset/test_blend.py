"""The mixture maths: allocation, interleaving, validation split, repeats."""

from __future__ import annotations

import numpy as np
import pytest

from dataset.blend import allocate, interleave, is_val, repeat_order, text_hash


@pytest.mark.parametrize(
    ("total", "ratios", "expected"),
    [
        (100_000, [0.3, 0.35, 0.35], [30_000, 35_000, 35_000]),
        (10, [0.3, 0.35, 0.35], [3, 4, 3]),  # remainders .5/.5: the earlier source wins the tie
        (7, [1 / 3, 1 / 3, 1 / 3], [3, 2, 2]),
        (1, [0.5, 0.5], [1, 0]),
        (3, [1.0], [3]),
    ],
)
def test_allocate_largest_remainder(total, ratios, expected):
    counts = allocate(total, ratios)
    assert counts == expected
    assert sum(counts) == total
    for c, r in zip(counts, ratios, strict=True):
        assert abs(c - r * total) < 1


@pytest.mark.parametrize("counts", [[300, 350, 350], [1, 99], [5, 5, 5, 1], [0, 10], [7]])
def test_interleave_every_prefix_follows_the_shares(counts):
    order = interleave(counts)
    total = sum(counts)
    assert len(order) == total
    running = np.zeros(len(counts))
    for k, s in enumerate(order, 1):
        running[s] += 1
        target = k * np.asarray(counts) / total
        assert np.all(np.abs(running - target) <= 1.0), (k, running, target)
    assert running.tolist() == counts


def test_interleave_is_deterministic_and_spreads_sources():
    a, b = interleave([3, 3]), interleave([3, 3])
    assert a.tolist() == b.tolist() == [0, 1, 0, 1, 0, 1]


def test_val_split_is_a_pure_function_of_the_text():
    texts = [f"row {i}" for i in range(20_000)]
    flags = [is_val(text_hash(t), 0.05) for t in texts]
    assert 0.04 < sum(flags) / len(flags) < 0.06
    # Same text, same verdict; a val text stays val at a larger ratio.
    assert flags == [is_val(text_hash(t), 0.05) for t in texts]
    assert all(is_val(text_hash(t), 0.2) for t, f in zip(texts, flags, strict=True) if f)
    assert not any(is_val(text_hash(t), 0.0) for t in texts)
    assert text_hash("héllo") == text_hash("héllo") != text_hash("hello")


def test_repeat_order_draws_without_replacement_first():
    rng = np.random.default_rng(0)
    assert repeat_order(10, 4, rng).tolist() == [0, 1, 2, 3]
    order = repeat_order(10, 25, np.random.default_rng(0))
    uses = np.bincount(order, minlength=10)
    assert len(order) == 25 and uses.min() == 2 and uses.max() == 3 and (uses == 3).sum() == 5
    assert order[:10].tolist() == list(range(10))  # every row once before any repeats
    assert repeat_order(10, 25, np.random.default_rng(0)).tolist() == order.tolist()
