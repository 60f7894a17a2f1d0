"""The maths of a mixture: how much of each source, in which order, which rows go to validation.

Small pure functions, unit-tested at their edges (tests/dataset/test_blend.py). Amounts are
"units": rows (``mix_by: rows``) or tokens (``mix_by: tokens``, a document's size is its token
count as the trainer packs it).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np


def allocate(total: int, ratios: Sequence[float]) -> list[int]:
    """Split ``total`` into integer counts proportional to ``ratios`` (largest remainder).

    Each count is ``floor(ratio x total)`` or one more; the counts sum to ``total``. Ties
    in the remainder go to the earlier source, so the result is deterministic.
    """
    weight = sum(ratios)
    exact = [total * r / weight for r in ratios]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(ratios)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def interleave(counts: Sequence[int]) -> np.ndarray:
    """The source index of each output row, so that every prefix follows the proportions.

    Greedy deficit rule, as in Megatron-LM's ``build_blending_indices``: row k+1 goes to
    the source furthest behind its target share, argmax_s (k+1) w_s - c_s(k), ties to the
    earlier source. Every prefix of length k holds k w_s +- 1 rows of source s, and
    source s ends with exactly ``counts[s]`` rows.
    """
    total = int(sum(counts))
    out = np.empty(total, dtype=np.int32)
    if total == 0:
        return out
    weights = [c / total for c in counts]
    taken = [0] * len(counts)
    sources = range(len(counts))
    for k in range(total):
        best = max(sources, key=lambda s: ((k + 1) * weights[s] - taken[s], -s))
        out[k] = best
        taken[best] += 1
    return out


def interleave_sized(sizes: Sequence[Sequence[int]]) -> np.ndarray:
    """The source index of each output row when rows have sizes (tokens): the deficit rule by size.

    ``sizes[s]`` lists the sizes of source s's rows in output order. Each next row goes to the
    source furthest behind its share of the size emitted so far, argmax_s w_s T - t_s (T: size
    emitted, t_s: of source s, w_s: s's share of the total size), ties to the earlier source, among
    sources with rows left. Within a prefix a source is never ahead of its share by more than one of
    its rows (it is only picked while at or behind it). Every source ends with all its rows.
    """
    counts = [len(x) for x in sizes]
    out = np.empty(sum(counts), dtype=np.int32)
    totals = [float(sum(x)) for x in sizes]
    grand = sum(totals)
    if not len(out):
        return out
    weights = [t / grand for t in totals]
    taken = [0] * len(sizes)
    emitted = [0] * len(sizes)
    size_so_far = 0
    for k in range(len(out)):
        best = -1
        best_key = None
        for s in range(len(sizes)):
            if taken[s] < counts[s]:
                key = weights[s] * size_so_far - emitted[s]
                if best_key is None or key > best_key:
                    best, best_key = s, key
        out[k] = best
        n = sizes[best][taken[best]]
        taken[best] += 1
        emitted[best] += n
        size_so_far += n
    return out


def repeat_until(sizes: Sequence[int] | np.ndarray, needed: int, rng: np.random.Generator) -> np.ndarray:
    """Indices into rows of the given sizes whose sizes sum to ``needed`` or just past it.

    The rows are used in passes: the first pass in their own order (they are already in a seeded
    random order), later passes each in a fresh seeded permutation, so every row is used once
    before any is used twice. The run stops at the row that reaches ``needed`` (kept whole): the
    sum is in ``[needed, needed + size of that row)``. Passes used = ``ceil(needed / sum(sizes))``
    at most, which is the most uses of any row.
    """
    size = np.asarray(sizes, dtype=np.int64)
    if needed <= 0 or not len(size):
        return np.zeros(0, dtype=np.int64)
    parts: list[np.ndarray] = []
    total = 0
    order = np.arange(len(size), dtype=np.int64)
    while True:
        cum = np.cumsum(size[order])
        if total + int(cum[-1]) >= needed:
            stop = int(np.searchsorted(cum, needed - total, side="left"))
            parts.append(order[: stop + 1])
            return np.concatenate(parts)
        parts.append(order)
        total += int(cum[-1])
        order = rng.permutation(len(size))


def assign_stages(sizes: Sequence[int], planned: Sequence[int]) -> np.ndarray:
    """The stage of each row of one source, given its rows in order and its plan per stage.

    Stage k ends at the cumulative plan ``B_k = planned[0] + ... + planned[k]``; a row belongs to
    the stage in which it starts (its first unit is before ``B_k``), and a row that crosses a
    boundary stays whole in the stage where it started. So each stage's amount is its plan to
    within one row, and the source's total to within its last row. A stage with plan 0 gets no rows.
    """
    starts = np.cumsum(np.asarray(sizes, dtype=np.int64)) - np.asarray(sizes, dtype=np.int64)
    bounds = np.cumsum(np.asarray(planned, dtype=np.int64))
    return np.searchsorted(bounds, starts, side="right").astype(np.int32)


def text_hash(text: str) -> int:
    """A stable 64-bit hash of a text (BLAKE2b), the same in every process and run."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def is_val(hash64: int, val_ratio: float) -> bool:
    """Whether a text with this :func:`text_hash` belongs to validation.

    A pure function of the text: a text is in validation in every mixture with the same
    ``val_ratio`` or a larger one, whatever else the mixture holds, and never in both splits.
    """
    return hash64 < val_ratio * 2**64


def val_mask(hashes: np.ndarray, val_ratio: float) -> np.ndarray:
    """:func:`is_val` of many :func:`text_hash` values at once (uint64 array -> bool array), exact:
    for an integer h, ``h < val_ratio x 2^64`` iff ``h < ceil(val_ratio x 2^64)``."""
    bound = math.ceil(val_ratio * 2**64)
    return (
        np.asarray(hashes, dtype=np.uint64) < np.uint64(bound)
        if bound < 2**64
        else np.ones(len(hashes), bool)
    )


def repeat_order(kept: int, needed: int, rng: np.random.Generator) -> np.ndarray:
    """Indices into ``kept`` unique rows that make ``needed`` rows, reusing rows only when short.

    Without a shortage the first ``needed`` rows are taken (the rows are already in a
    seeded random order). With one, every row is used ``needed // kept`` times and a
    seeded draw without replacement picks which rows get one use more; each pass is in
    a fresh random order so copies of a row land far apart.
    """
    if needed <= kept:
        return np.arange(needed, dtype=np.int64)
    full, extra = divmod(needed, kept)
    passes = [np.arange(kept, dtype=np.int64)]
    passes += [rng.permutation(kept) for _ in range(full - 1)]
    if extra:
        passes.append(rng.permutation(kept)[:extra])
    return np.concatenate(passes)
