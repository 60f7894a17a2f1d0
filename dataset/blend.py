"""The maths of a mixture: how many rows per source, in which order, which go to validation.

Small pure functions, unit-tested at their edges (tests/test_blend.py).
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


def text_hash(text: str) -> int:
    """A stable 64-bit hash of a text (BLAKE2b), the same in every process and run."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def is_val(hash64: int, val_ratio: float) -> bool:
    """Whether a text with this :func:`text_hash` belongs to validation.

    A pure function of the text: a text is in validation in every mixture with the same
    ``val_ratio`` or a larger one, whatever else the mixture holds, and never in both splits.
    """
    return hash64 < val_ratio * 2**64


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
