"""Training rows from a token store (:mod:`dataset.store`): which tokens each row holds, which
of them are targets, and where each document starts (for document attention).

Two layouts (``--packing``), both deterministic functions of the store's document lengths, the
row length L and nothing else, so they are derived at start and never stored:

``bfd`` (the default): whole documents, best-fit-decreasing packed into rows (Ding et al. 2024,
"Fewer Truncations Improve Language Modeling", arXiv 2404.10830; TRL's ``bfd`` packing). A
document of n tokens (``BOS doc EOS``) gives n - 1 (input, target) pairs: inputs ``t[:-1]``,
targets ``t[1:]``, so it takes n - 1 positions and all of them are targets. A document with more
than L targets is first split into pieces of at most L targets (TRL's ``bfd_split``), piece k
reading tokens ``t[kL : kL + L + 1]``: consecutive pieces overlap by one token, so every token of
a document but its first is a target exactly once, and each piece is packed as a document. Rows
are padded only where BFD cannot fill them; a row never holds two stages (each stage is packed on
its own). Positions restart at 0 at each document (piece) and a document id per position tells
the model where attention stops (``--attention document``).

``concat``: the GPT-2 layout the project had before: the stream cut every L tokens, row i the
window ``tokens[iL : iL + L + 1]`` of its stage's stream (windows overlap by one token, so every
token after a stage's first is a target once; only a stage's last row is padded). Under
``--attention causal`` every such target counts, the prediction of a document's first token from
the end of the one before included, exactly as before. Under ``--attention document`` a
position's document is the one that starts last at or before it, positions restart at each
document start (at 0 at the window's start), and a target outside the position's own document
(the next document's first token) is ignored.

The document rule in one line: under document attention (and always with bfd), each position
predicts the next token of its own document only; a document's closing EOS is its last target.
With a tokenizer whose BOS is its EOS (SmolLM2's ``<|endoftext|>``), the separator shared by two
neighbours is the first one's EOS target and the second one's position 0.

The BFD packer (:func:`bfd_pack`) works on the histogram of open rows' free space (a bucket per
free-space value): equal-length documents go, in order, to the fullest row they fit, each such
row taking ``free // length`` of them at once, so its time is ~O(N + L^2) numpy work and its
memory a few int64 per document (``scripts/dev/bench_packing.py``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from dataset.store import DocSubset, TokenStore
from model.errors import UserError
from model.loss import IGNORE_INDEX  # the targets' ignore value: one definition, the loss's

PACKINGS = ("bfd", "concat")
ATTENTIONS = ("document", "causal")


# --------------------------------------------------------------------------- best-fit decreasing


def bfd_pack(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Best-fit-decreasing bin packing of integer ``lengths`` (each in 1..capacity) into bins of
    ``capacity``: ``(bin of each item, offset of each item in its bin, number of bins)``.

    Items are taken longest first (ties in input order); each goes to the open bin with the least
    free space that still fits it (ties: the bin that reached that free space first), else to a
    new bin. Offsets follow the order items enter a bin. Deterministic; ValueError for a length
    outside 1..capacity.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    if n and (lengths.min() < 1 or lengths.max() > capacity):
        raise ValueError(f"bfd_pack: lengths must be in 1..{capacity}")
    order = np.argsort(-lengths, kind="stable")
    bin_of, offset = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    buckets: list[list[int]] = [[] for _ in range(capacity + 1)]  # free space -> open bins, FIFO
    heads = [0] * (capacity + 1)
    count = np.zeros(capacity + 1, dtype=np.int64)  # open bins per free space
    n_bins, pos = 0, 0
    sorted_len = lengths[order]
    run_ends = np.flatnonzero(np.diff(sorted_len)) + 1
    for start, end in zip(np.r_[0, run_ends], np.r_[run_ends, n], strict=True):
        m, left = int(sorted_len[start]), int(end - start)
        while left:
            fits = np.flatnonzero(count[m:])
            if len(fits):  # the fullest open bins this length fits, as many as it needs
                free = m + int(fits[0])
                ids = np.asarray(buckets[free][heads[free] : heads[free] + int(count[free])], dtype=np.int64)
            else:  # new bins
                free = capacity
                q = capacity // m
                ids = np.arange(n_bins, n_bins + -(-left // q), dtype=np.int64)
                n_bins += len(ids)
                buckets[free].extend(ids.tolist())
                count[free] += len(ids)
            q = free // m
            take = min(left, len(ids) * q)
            j = np.arange(take)
            items = order[pos : pos + take]
            bin_of[items] = ids[j // q]
            offset[items] = (capacity - free) + (j % q) * m
            full, part = divmod(take, q)
            used = ids[: full + (part > 0)]
            heads[free] += len(used)
            count[free] -= len(used)
            if heads[free] > 1024 and heads[free] * 2 > len(buckets[free]):  # compact the FIFO
                del buckets[free][: heads[free]]
                heads[free] = 0
            if full and free - q * m:  # a full bin (no free space) is never looked at again
                buckets[free - q * m].extend(used[:full].tolist())
                count[free - q * m] += full
            if part:
                buckets[free - part * m].append(int(used[-1]))
                count[free - part * m] += 1
            pos += take
            left -= take
    return bin_of, offset, n_bins


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class PackingStats:
    """What the log line and the metrics record say about a layout."""

    packing: str
    documents: int
    split: int  # documents longer than a row, split into pieces (bfd)
    rows: int
    seq_len: int
    targets: int

    @property
    def fill(self) -> float:
        """Share of the rows' positions that hold a target (padding is lost)."""
        return self.targets / max(self.rows * self.seq_len, 1)

    def line(self) -> str:
        split = f" ({self.split:,} split)" if self.packing == "bfd" else ""
        return (
            f"packing: {self.packing}, {self.documents:,} documents{split} into {self.rows:,} rows of "
            f"{self.seq_len}, fill {100 * self.fill:.1f}%"
        )


class Rows:
    """Fixed-length training rows over a token store (module docstring); ``row(i)`` gives
    ``(x, y, s, pos, doc)``: inputs, targets (IGNORE_INDEX where none), each target's source id
    (-1 where none), RoPE positions and document ids, each (seq_len,) int64."""

    packing = "?"

    def __init__(self, store: TokenStore | DocSubset, seq_len: int, attention: str):
        if attention not in ATTENTIONS:
            raise UserError(f"--attention {attention!r}: use one of {', '.join(ATTENTIONS)}")
        self.store, self.seq_len, self.attention = store, seq_len, attention
        self.source_names: list[str] = store.source_names
        self.segment_names: list[str | None] = store.segment_names
        self.pad_id = store.pad_id
        self.num_tokens = store.num_tokens
        self._seg_row0: list[int] = [0]

    @property
    def document_attention(self) -> bool:
        return self.attention == "document"

    @property
    def num_rows(self) -> int:
        return self._seg_row0[-1]

    def segment_rows(self) -> list[range]:
        """The rows of each segment (stage), in order: what dataset.sampler.StepPlan trains."""
        return [range(a, b) for a, b in zip(self._seg_row0[:-1], self._seg_row0[1:], strict=True)]

    def row(self, i: int) -> tuple[np.ndarray, ...]:
        raise NotImplementedError

    def segment_source_targets(self) -> np.ndarray:
        """(segments, sources) int64: the targets of each source in each segment (stage)."""
        raise NotImplementedError

    @property
    def num_targets(self) -> int:
        """Targets per epoch (every row once)."""
        return int(self.segment_source_targets().sum())

    def source_targets(self) -> np.ndarray:
        """(sources,) int64: targets per source over the whole layout."""
        return self.segment_source_targets().sum(axis=0)

    def stats(self) -> PackingStats:
        raise NotImplementedError

    def _empty(self) -> tuple[np.ndarray, ...]:
        L = self.seq_len
        return (
            np.full(L, self.pad_id, dtype=np.int64),
            np.full(L, IGNORE_INDEX, dtype=np.int64),
            np.full(L, -1, dtype=np.int64),
            np.arange(L, dtype=np.int64),
            np.zeros(L, dtype=np.int64),
        )


class ConcatRows(Rows):
    """``--packing concat``: each stage's stream cut every L tokens (module docstring)."""

    packing = "concat"

    def __init__(self, store, seq_len: int, attention: str):
        super().__init__(store, seq_len, attention)
        self._seg = [(t0, t1) for _, _, _, t0, t1 in store.segments]
        rows = [-(-(t1 - t0 - 1) // seq_len) for t0, t1 in self._seg]
        self._seg_row0 = np.cumsum([0, *rows]).tolist()
        self._starts = np.asarray(store.doc_start)
        self._ends = np.asarray(store.doc_end)
        self._src = np.asarray(store.doc_source, dtype=np.int64)

    def row(self, i: int) -> tuple[np.ndarray, ...]:
        k = int(np.searchsorted(self._seg_row0, i, side="right")) - 1
        seg_start, seg_end = self._seg[k]
        start = seg_start + (i - self._seg_row0[k]) * self.seq_len
        end = min(start + self.seq_len + 1, seg_end)
        window = np.asarray(self.store.tokens[start:end], dtype=np.int64)
        x, y, s, pos, doc = self._empty()
        n = len(window) - 1
        p = np.arange(start, start + n)
        x[:n] = window[:-1]
        if not self.document_attention:  # every next token, attributed to the document it ends
            y[:n] = window[1:]
            s[:n] = self._src[np.searchsorted(self._ends, p + 1, side="right")]
            return x, y, s, pos, doc
        j = np.searchsorted(self._starts, p, side="right") - 1  # the document each position reads
        own = p + 1 < self._ends[j]  # the target is in that document
        y[:n] = np.where(own, window[1:], IGNORE_INDEX)
        s[:n] = np.where(own, self._src[j], -1)
        first = np.maximum(self._starts[j], start)
        pos[:n] = p - first
        doc[:n] = j - j[0]
        doc[n:] = doc[n - 1] + 1 if n else 0
        pos[n:] = np.arange(self.seq_len - n)
        return x, y, s, pos, doc

    def _owned(self) -> np.ndarray:
        """Targets of each document: under causal attention every stream position after its
        segment's first belongs to the earliest document ending after it; under document
        attention a document's own n - 1."""
        lens = np.asarray(self.store.doc_len, dtype=np.int64)
        if self.document_attention:
            return lens - 1
        owned = np.zeros(len(lens), dtype=np.int64)
        for _, d0, d1, t0, _ in self.store.segments:
            ends = self._ends[d0:d1]
            lo = np.maximum(self._starts[d0:d1], np.r_[t0 + 1, ends[:-1]])
            owned[d0:d1] = ends - lo
        return owned

    def segment_source_targets(self) -> np.ndarray:
        owned = self._owned()
        out = np.zeros((len(self._seg), max(len(self.source_names), 1)), dtype=np.int64)
        for k, (_, d0, d1, _, _) in enumerate(self.store.segments):
            out[k] = np.bincount(self._src[d0:d1], weights=owned[d0:d1], minlength=out.shape[1])
        return out

    def stats(self) -> PackingStats:
        return PackingStats("concat", self.store.num_docs, 0, self.num_rows, self.seq_len, self.num_targets)


class BFDRows(Rows):
    """``--packing bfd``: whole documents (pieces of long ones) best-fit packed per stage."""

    packing = "bfd"

    def __init__(self, store, seq_len: int, attention: str):
        super().__init__(store, seq_len, attention)
        L = seq_len
        targets = np.asarray(store.doc_len, dtype=np.int64) - 1
        keep = np.flatnonzero(targets > 0)  # a one-token document has nothing to predict
        pieces = -(-targets[keep] // L)
        doc = np.repeat(keep, pieces)  # the document of each piece
        k = np.arange(len(doc)) - np.repeat(np.cumsum(pieces) - pieces, pieces)  # piece number in its doc
        self._start = np.asarray(store.doc_start, dtype=np.int64)[doc] + k * L
        self._len = np.minimum(L, targets[doc] - k * L)
        self._src = np.asarray(store.doc_source, dtype=np.int64)[doc]
        self.split = int((pieces > 1).sum())
        self.documents = len(keep)
        rows_of = np.empty(len(doc), dtype=np.int64)
        offsets = np.empty(len(doc), dtype=np.int64)
        seg_rows, row0 = [], 0
        seg_of_piece = np.zeros(len(doc), dtype=np.int64)
        for g, (_, d0, d1, _, _) in enumerate(store.segments):
            sel = np.flatnonzero((doc >= d0) & (doc < d1))
            seg_of_piece[sel] = g
            b, off, n = bfd_pack(self._len[sel], L)
            rows_of[sel], offsets[sel] = b + row0, off
            row0 += n
            seg_rows.append(n)
        self._seg_row0 = np.cumsum([0, *seg_rows]).tolist()
        self._seg_of_piece = seg_of_piece
        self._order = np.lexsort((offsets, rows_of))  # pieces by row, then by offset
        self._row_ptr = np.searchsorted(rows_of[self._order], np.arange(self.num_rows + 1))

    def row(self, i: int) -> tuple[np.ndarray, ...]:
        x, y, s, pos, doc = self._empty()
        at = 0
        for d, piece in enumerate(self._order[self._row_ptr[i] : self._row_ptr[i + 1]].tolist()):
            a, n = int(self._start[piece]), int(self._len[piece])
            t = np.asarray(self.store.tokens[a : a + n + 1], dtype=np.int64)
            x[at : at + n], y[at : at + n], s[at : at + n] = t[:-1], t[1:], self._src[piece]
            pos[at : at + n], doc[at : at + n] = np.arange(n), d
            at += n
        doc[at:] = doc[at - 1] + 1 if at else 0
        pos[at:] = np.arange(self.seq_len - at)
        return x, y, s, pos, doc

    def segment_source_targets(self) -> np.ndarray:
        out = np.zeros((len(self.segment_names), max(len(self.source_names), 1)), dtype=np.int64)
        np.add.at(out, (self._seg_of_piece, self._src), self._len)
        return out

    def stats(self) -> PackingStats:
        return PackingStats(
            "bfd", self.documents, self.split, self.num_rows, self.seq_len, int(self._len.sum())
        )


def build_rows(store: TokenStore | DocSubset, seq_len: int, packing: str, attention: str) -> Rows:
    """The rows of ``store`` at length ``seq_len`` in layout ``packing`` (module docstring)."""
    if packing not in PACKINGS:
        raise UserError(f"--packing {packing!r}: use one of {', '.join(PACKINGS)}")
    return (BFDRows if packing == "bfd" else ConcatRows)(store, seq_len, attention)


class RowDataset(torch.utils.data.Dataset):
    """Rows as tensors ``(x, y, s, pos, doc)`` for a DataLoader; index -1
    (``dataset.sampler.EMPTY``) is a filler row with no targets."""

    def __init__(self, rows: Rows):
        self.rows = rows

    def __len__(self) -> int:
        return self.rows.num_rows

    def __getitem__(self, i: int):
        arrays = self.rows._empty() if i < 0 else self.rows.row(i)
        return tuple(torch.from_numpy(a) for a in arrays)


# --------------------------------------------------------------------------- the validation sample


def doc_hashes(store: TokenStore) -> np.ndarray:
    """(num_docs,) uint64: a hash of each document's tokens (its order does not enter)."""
    tokens, starts, lens = store.tokens, np.asarray(store.doc_start), np.asarray(store.doc_len)
    out = np.empty(len(starts), dtype=np.uint64)
    for i, (a, n) in enumerate(zip(starts.tolist(), lens.tolist(), strict=True)):
        digest = hashlib.blake2b(np.asarray(tokens[a : a + n]).tobytes(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little")
    return out


def sample_docs(store: TokenStore, cap_targets: int) -> tuple[np.ndarray, str]:
    """A fixed sample of documents for a capped evaluation (``cap_targets`` 0: every document),
    chosen by document, not by row, so it is the same documents whatever the row layout or the
    order of the file; and a one-line description of it.

    Stratified by source: each source with targets gets a floor of ``cap // (2 x sources)``
    targets, the rest in proportion to its targets (largest remainder); within a source,
    documents are taken in the order of a hash of their tokens until its quota is reached (the
    document that crosses it is kept whole).
    """
    targets = np.asarray(store.doc_len, dtype=np.int64) - 1
    src = np.asarray(store.doc_source, dtype=np.int64)
    names = store.source_names or ["all"]
    total = np.bincount(src, weights=targets, minlength=len(names)).astype(np.int64)
    if cap_targets == 0 or cap_targets >= total.sum():
        docs = np.arange(store.num_docs)
    else:
        present = [k for k in range(len(names)) if total[k] > 0]
        floor = cap_targets // (2 * len(present))
        quota = {k: min(int(total[k]), floor) for k in present}
        rest = max(cap_targets - sum(quota.values()), 0)
        spare = {k: int(total[k]) - quota[k] for k in present}
        weight = sum(spare.values())
        if rest and weight:
            exact = {k: rest * spare[k] / weight for k in present}
            extra = {k: min(spare[k], int(exact[k])) for k in present}
            for k in sorted(present, key=lambda k: (-(exact[k] - int(exact[k])), k))[
                : rest - sum(extra.values())
            ]:
                extra[k] = min(spare[k], extra[k] + 1)
            quota = {k: quota[k] + extra[k] for k in present}
        hashes = doc_hashes(store)
        picked = []
        for k in present:
            mine = np.flatnonzero((src == k) & (targets > 0))
            mine = mine[np.lexsort((mine, hashes[mine]))]
            need = np.searchsorted(np.cumsum(targets[mine]), max(quota[k], 1)) + 1
            picked.append(mine[:need])
        docs = np.sort(np.concatenate(picked))
    sel = np.bincount(src[docs], weights=targets[docs], minlength=len(names)).astype(np.int64)
    per = ", ".join(f"{names[k]} {sel[k]:,}/{total[k]:,}" for k in range(len(names)) if total[k])
    return docs, f"{len(docs):,} of {store.num_docs:,} documents; target tokens per source: {per}"


@dataclass
class ValidationSet:
    """The rows of a validation sample in the run's own layout, what they are, and each source's
    targets in the whole validation store (the weights of "all", so that a stratified sample
    estimates the whole set's loss)."""

    rows: Rows
    described: str
    source_targets: np.ndarray  # (sources,) int64, the whole store


def validation_set(
    store: TokenStore, seq_len: int, packing: str, attention: str, cap_targets: int
) -> ValidationSet:
    """The validation sample (:func:`sample_docs`) laid out as the run lays out its rows."""
    docs, described = sample_docs(store, cap_targets)
    chosen = store if len(docs) == store.num_docs else DocSubset(store, docs)
    rows = build_rows(chosen, seq_len, packing, attention)
    # targets per source of the whole store under the run's rule (bfd: the document rule)
    whole = ConcatRows(store, seq_len, "document" if packing == "bfd" else attention).source_targets()
    return ValidationSet(rows, described, whole)
