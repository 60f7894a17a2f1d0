"""Decontamination by word n-gram overlap with evaluation sets.

Texts are normalised to lowercase alphanumeric words (``[a-z0-9]+``, so punctuation,
case and layout do not matter) and cut into overlapping word n-grams. A training row is
contaminated when the share of its n-grams found in the evaluation sets exceeds
``threshold``. The defaults, n = 13 and threshold 0 (any shared 13-gram), are the GPT-3
rule (Brown et al. 2020, appendix C): 13 words in a row are almost never shared by
chance, while a copied question, even reformatted, shares many. A text shorter than n
words is a single n-gram of all its words, so short eval items are still matched when a
training row equals them.

n-grams are stored as 64-bit hashes (a polynomial over CRC32 word hashes), sorted in a
numpy array: MMLU test + validation + dev (15,858 rows) make ~1.3 M n-grams, ~10 MB.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable

import numpy as np

DEFAULT_NGRAM = 13
DEFAULT_THRESHOLD = 0.0

_WORD = re.compile(r"[a-z0-9]+")
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio), the polynomial base


class _WordHashes(dict):
    """word -> CRC32, memoised. CRC32 is stable across processes and runs (unlike hash())."""

    def __missing__(self, word: str) -> int:
        if len(self) > 2_000_000:  # bound memory on huge vocabularies
            self.clear()
        value = zlib.crc32(word.encode())
        self[word] = value
        return value


_word_hashes = _WordHashes()


def words(text: str) -> list[str]:
    """Lowercase alphanumeric words of ``text``: the normalisation both sides share."""
    return _WORD.findall(text.lower())


def ngram_hashes_batch(texts: Iterable[str], n: int = DEFAULT_NGRAM) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the word n-grams of many texts at once.

    Returns ``(hashes, owner)``: one uint64 per n-gram and the index of the text it came
    from. A text with fewer than ``n`` words gives one n-gram over all its words; an empty
    text gives none.
    """
    per_text = [list(map(_word_hashes.__getitem__, words(t))) for t in texts]
    lengths = np.fromiter(map(len, per_text), dtype=np.int64, count=len(per_text))
    # Texts are laid end to end with n-1 zero words after each, so no window reaches into
    # the next text; a short text's only window is its words followed by zeros.
    pad = [0] * (n - 1)
    padded = lengths + (n - 1)
    flat = np.fromiter((h for w in per_text for h in (*w, *pad)), dtype=np.uint64, count=int(padded.sum()))
    starts = np.cumsum(padded) - padded
    # Window i hashes to sum_k flat[i+k] * B^(n-1-k) (mod 2^64).
    total = len(flat)
    acc = np.zeros(total, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            acc[: total - k] = acc[: total - k] * _MULT + flat[k:]
    # Keep windows made of n real words, plus the first window of each short text.
    offset = np.arange(total, dtype=np.int64) - np.repeat(starts, padded)
    length = np.repeat(lengths, padded)
    keep = (offset + n <= length) | ((offset == 0) & (length > 0) & (length < n))
    owner = np.repeat(np.arange(len(per_text), dtype=np.int64), padded)
    return acc[keep], owner[keep]


class EvalNgrams:
    """The n-gram hashes of evaluation texts, for fast membership tests."""

    def __init__(self, hashes: np.ndarray, n: int = DEFAULT_NGRAM, threshold: float = DEFAULT_THRESHOLD):
        # sort + drop repeats: ~10x faster than np.unique's hash path on ~1M uint64
        ordered = np.sort(hashes.astype(np.uint64, copy=False))
        self.hashes = (
            ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))] if len(ordered) else ordered
        )
        self.n = n
        self.threshold = threshold

    @classmethod
    def from_texts(cls, texts: Iterable[str], n: int = DEFAULT_NGRAM, threshold: float = DEFAULT_THRESHOLD):
        hashes, _ = ngram_hashes_batch(texts, n)
        return cls(hashes, n, threshold)

    def __len__(self) -> int:
        return len(self.hashes)

    def overlap(self, texts: list[str]) -> np.ndarray:
        """Per text, the share of its n-grams that occur in the evaluation sets (0 for empty texts)."""
        if not len(self.hashes) or not texts:
            return np.zeros(len(texts))
        grams, owner = ngram_hashes_batch(texts, self.n)
        pos = np.searchsorted(self.hashes, grams)
        pos[pos == len(self.hashes)] = 0
        hit = self.hashes[pos] == grams
        counts = np.bincount(owner, minlength=len(texts))
        hits = np.bincount(owner, weights=hit, minlength=len(texts))
        return np.divide(hits, counts, out=np.zeros(len(texts)), where=counts > 0)

    def contaminated(self, texts: list[str]) -> np.ndarray:
        """Boolean per text: overlap share above the threshold."""
        return self.overlap(texts) > self.threshold
