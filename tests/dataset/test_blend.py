"""The mixture maths: allocation, interleaving, validation split, repeats."""

from __future__ import annotations

import numpy as np
import pytest

from dataset.blend import (
    allocate,
    assign_stages,
    interleave,
    interleave_sized,
    is_val,
    repeat_order,
    repeat_until,
    text_hash,
)
from dataset.mixture_config import StageConfig, stage_plan


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


def test_repeat_until_stops_at_the_row_that_reaches_the_plan():
    sizes = [5, 3, 7, 2]  # 17 in all
    assert repeat_until(sizes, 8, np.random.default_rng(0)).tolist() == [0, 1]  # 5 + 3 = 8: exact
    assert repeat_until(sizes, 9, np.random.default_rng(0)).tolist() == [0, 1, 2]  # 15: crossed, kept whole
    assert repeat_until(sizes, 1, np.random.default_rng(0)).tolist() == [0]
    # Short: whole passes first (each a permutation), then a prefix of one more.
    order = repeat_until(sizes, 40, np.random.default_rng(1))
    total = sum(sizes[i] for i in order)
    assert 40 <= total < 40 + max(sizes) and total - sizes[order[-1]] < 40
    assert order[:4].tolist() == [0, 1, 2, 3] and sorted(order[4:8].tolist()) == [0, 1, 2, 3]
    assert np.bincount(order).max() == 3 == -(-40 // 17)
    assert repeat_until(sizes, 40, np.random.default_rng(1)).tolist() == order.tolist()


@pytest.mark.parametrize(
    ("sizes", "planned", "expected"),
    [
        ([1] * 6, [2, 3, 1], [0, 0, 1, 1, 1, 2]),  # rows: exact
        ([4, 4, 4, 4], [6, 0, 10], [0, 0, 2, 2]),  # row 2 starts at 4 < 6: stage 0; stage 1 planned 0
        ([10, 1, 1], [3, 3, 6], [0, 2, 2]),  # a long row crosses two boundaries; stage 1 gets nothing
    ],
)
def test_assign_stages_by_where_a_row_starts(sizes, planned, expected):
    assert assign_stages(sizes, planned).tolist() == expected


@pytest.mark.parametrize("seed", range(5))
def test_interleave_sized_no_source_ahead_by_more_than_one_row(seed):
    rng = np.random.default_rng(seed)
    sizes = [rng.integers(1, 300, n).tolist() for n in (40, 120, 70)]
    order = interleave_sized(sizes)
    assert np.bincount(order).tolist() == [40, 120, 70]
    totals = np.array([sum(s) for s in sizes], dtype=float)
    weights = totals / totals.sum()
    taken, emitted, size_so_far = [0, 0, 0], np.zeros(3), 0
    for s in order:
        n = sizes[s][taken[s]]
        taken[s] += 1
        emitted[s] += n
        size_so_far += n
        assert np.all(emitted - weights * size_so_far <= [max(x) for x in sizes]), (s, emitted)
    assert interleave_sized([[1] * 3, [1] * 3]).tolist() == [0, 1, 0, 1, 0, 1]  # unit sizes: the row rule


def test_stage_plan_sums_exactly():
    names = ["a", "b", "c"]
    assert stage_plan(1000, None, [0.3, 0.35, 0.35], names) == [[300, 350, 350]]
    stages = [
        StageConfig(name="s1", fraction=0.8, ratios={"a": 0.5, "b": 0.5, "c": 0.0}),
        StageConfig(name="s2", fraction=0.2, ratios={"a": 0.0, "b": 1 / 3, "c": 2 / 3}),
    ]
    plan = stage_plan(1001, stages, [0, 0, 0], names)
    assert plan == [[401, 400, 0], [0, 67, 133]]  # 801 + 200; ties to the earlier source
    assert sum(map(sum, plan)) == 1001
