"""The set of kept rows' text hashes that exact dedup checks, in 8 bytes per row.

A Python set of 64-bit ints costs ~80 bytes per entry; a mixture of 10B tokens keeps tens of
millions of rows. :class:`HashSet` keeps the recent hashes in a small Python set and the rest in
sorted uint64 arrays whose sizes fall geometrically (a log-structured merge: each hash is copied
O(log n) times in all), checked a batch at a time with ``np.searchsorted``.
"""

from __future__ import annotations

import numpy as np

FLUSH = 1 << 16  # recent hashes kept in the Python set before they join the sorted arrays


class HashSet:
    """Membership of 64-bit hashes. Within a batch, call :meth:`frozen` once for the batch's
    hashes and :meth:`contains` per row with that row's answer from it; :meth:`add` a kept
    hash; :meth:`settle` after the batch."""

    def __init__(self) -> None:
        self.recent: set[int] = set()
        self.levels: list[np.ndarray] = []  # sorted, sizes decreasing

    def __len__(self) -> int:
        return len(self.recent) + sum(len(a) for a in self.levels)

    def frozen(self, hashes: np.ndarray) -> np.ndarray:
        """Per hash, whether it is in the sorted arrays (not counting :attr:`recent`)."""
        hashes = np.asarray(hashes, dtype=np.uint64)
        found = np.zeros(len(hashes), dtype=bool)
        for level in self.levels:
            at = np.searchsorted(level, hashes)
            found |= level[np.minimum(at, len(level) - 1)] == hashes
        return found

    def contains(self, h: int, in_frozen: bool) -> bool:
        return in_frozen or h in self.recent

    def add(self, h: int) -> None:
        self.recent.add(h)

    def settle(self) -> None:
        """Move the recent hashes into the sorted arrays once there are FLUSH of them (between
        batches only: a batch's :meth:`frozen` answers must stay valid while it is consumed)."""
        if len(self.recent) < FLUSH:
            return
        new = np.fromiter(self.recent, dtype=np.uint64, count=len(self.recent))
        new.sort()
        self.recent = set()
        while self.levels and len(self.levels[-1]) <= 2 * len(new):
            new = np.union1d(self.levels.pop(), new)
        self.levels.append(new)
