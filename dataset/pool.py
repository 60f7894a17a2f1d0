"""Render, filter, decontaminate (and tokenize) batches of rows, in order, in-process or in a
worker pool; the kept rows go to the worker's spill file (:mod:`dataset.spill`).

Results never depend on the number of workers: workers process whole batches and the main
process consumes the results in submission order.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Callable, Generator, Iterator
from typing import Any, NamedTuple

import numpy as np

from dataset.blend import text_hash
from dataset.decontam import EvalNgrams, ngram_hashes_batch
from dataset.filters import apply_filters
from dataset.formats import FormatSpec, MissingFieldError, render_row
from dataset.spill import REF_FIELDS, writer_for
from dataset.tokenizer import doc_targets, encode_texts, token_dtype

# Set in each worker process by _init_worker (and read only there): the evaluation
# n-grams are ~10 MB and a tokenizer a few MB, so they travel once per worker, not per batch.
_WORKER_EVAL: EvalNgrams | None = None
_WORKER_TOK: Any = None
_WORKER_SPILL: str | None = None


def _init_worker(evalset: EvalNgrams | None, tokenizer: Any = None, spill_dir: str | None = None) -> None:
    global _WORKER_EVAL, _WORKER_TOK, _WORKER_SPILL
    _WORKER_EVAL = evalset
    _WORKER_TOK = tokenizer
    _WORKER_SPILL = spill_dir
    if tokenizer is not None:
        # Each worker encodes its own batches; the Rust encoder's own threads would only
        # compete with the other workers for the same cores.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _render_batch(rows: dict[str, list], spec: FormatSpec) -> tuple[list[str | None], list[str]]:
    """Rendered texts (None where a row failed) and the error per row ("" when fine)."""
    names = list(rows)
    n = len(rows[names[0]]) if names else 0
    texts: list[str | None] = []
    errors: list[str] = []
    for i in range(n):
        try:
            texts.append(render_row({k: rows[k][i] for k in names}, spec))
            errors.append("")
        except (MissingFieldError, ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            texts.append(None)
            errors.append(str(e) or type(e).__name__)
    return texts, errors


class Batch(NamedTuple):
    """What :func:`process_batch` gives back for a batch of n rows: fixed-size numbers per row,
    the kept rows' text and ids being in the spill file ``spill`` (:mod:`dataset.spill`)."""

    spill: str  # the spill file of the process that wrote the kept rows
    verdicts: list[str]  # "" keeps the row, else why it goes
    hashes: np.ndarray  # (n,) uint64 text hash (kept rows; else 0)
    tokens: np.ndarray  # (n,) int64 targets the row trains on (with a tokenizer; else 0)
    refs: np.ndarray  # (n, 4) int64 offset, JSON bytes, ids, text bytes in the spill file (kept rows)


def process_batch(
    rows: dict[str, list],
    spec: FormatSpec,
    filters: dict,
    evalset: EvalNgrams | None,
    tok: Any,
    spill_dir: str,
) -> Batch:
    """Render, filter and decontaminate a batch of rows; tokenize the rows kept (with ``tok``)
    and append their text and ids to this process's spill file in ``spill_dir``.

    Verdicts: a filter name, "empty", "decontaminated", or "error: <message>". Tokens are the
    targets a row gives in training, ``len(ids) + doc_targets(tok)`` (:func:`count_tokens`'s
    rule; 0 without a tokenizer).
    """
    texts, errors = _render_batch(rows, spec)
    checked = apply_filters([t or "" for t in texts], filters)
    verdicts = [f"error: {err}" if err else v for v, err in zip(checked, errors, strict=True)]
    passing = [i for i, v in enumerate(verdicts) if not v]
    if evalset is not None and len(evalset) and passing:
        dirty = evalset.contaminated([texts[i] or "" for i in passing])
        for i, bad in zip(passing, dirty, strict=True):
            if bad:
                verdicts[i] = "decontaminated"
    kept = [i for i, v in enumerate(verdicts) if not v]
    n = len(verdicts)
    hashes = np.zeros(n, dtype=np.uint64)
    tokens = np.zeros(n, dtype=np.int64)
    refs = np.zeros((n, REF_FIELDS - 1), dtype=np.int64)
    ids: list[list[int] | None] = [None] * len(kept)
    extra = 0
    if tok is not None:
        ids = list(encode_texts(tok, [texts[i] or "" for i in kept]))
        extra = doc_targets(tok)
    spill = writer_for(spill_dir, token_dtype(tok) if tok is not None else np.uint32)
    for i, seq in zip(kept, ids, strict=True):
        text: str = texts[i]  # type: ignore[assignment]
        hashes[i] = text_hash(text)
        refs[i] = spill.write(text, seq)
        if seq is not None:
            tokens[i] = len(seq) + extra
    spill.flush()
    return Batch(spill.path, verdicts, hashes, tokens, refs)


def pool_process_batch(rows: dict[str, list], spec: FormatSpec, filters: dict) -> Batch:
    return process_batch(rows, spec, filters, _WORKER_EVAL, _WORKER_TOK, _WORKER_SPILL)  # type: ignore[arg-type]


def encode_batch(tok: Any, texts: list[str], dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of ``texts`` (:func:`dataset.tokenizer.encode_texts`) as one array of ``dtype``
    and the length of each: cheap to send between processes, unlike lists of ints."""
    ids = encode_texts(tok, texts)
    lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lens.sum()))
    return flat, lens


def pool_encode(texts: list[str], dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    return encode_batch(_WORKER_TOK, texts, dtype)


def eval_batch(rows: dict[str, list], spec: FormatSpec, n: int) -> tuple[np.ndarray, list[str]]:
    """n-gram hashes of a batch of evaluation rows, and the error per row."""
    texts, errors = _render_batch(rows, spec)
    hashes, _ = ngram_hashes_batch([t or "" for t in texts], n)
    return hashes, errors


class Runner:
    """Runs batch functions in-process (num_proc=1) or in a pool, always yielding in order.

    ``evalset``, ``tokenizer`` and ``spill_dir`` are handed to each worker once, at start (read
    there through :func:`pool_process_batch`); in-process, ``self.evalset`` etc.
    """

    def __init__(
        self,
        num_proc: int,
        evalset: EvalNgrams | None = None,
        tokenizer: Any = None,
        spill_dir: str | None = None,
    ):
        self.num_proc = num_proc
        self.evalset = evalset
        self.tokenizer = tokenizer
        self.spill_dir = spill_dir
        self.pool = None
        if num_proc > 1:
            methods = multiprocessing.get_all_start_methods()
            # fork is cheap and the workers only run pure Python and numpy; elsewhere spawn.
            ctx = multiprocessing.get_context(
                "fork" if "fork" in methods and sys.platform == "linux" else "spawn"
            )
            self.pool = ctx.Pool(num_proc, initializer=_init_worker, initargs=(evalset, tokenizer, spill_dir))

    def map(
        self,
        fn: Callable,
        local_fn: Callable,
        tasks: Iterator[tuple],
        more: Callable[[], bool] | None = None,
    ) -> Generator[Any, None, None]:
        """Yield ``fn(*task)`` for each task, in order, keeping at most 2 x num_proc in flight.

        ``more()``, asked before each task is handed out while others are in flight, may say no
        (the consumer expects the tasks in flight to be enough): the next result is awaited
        first. It only limits work done for nothing when the consumer stops early; the results
        and their order are the same either way.
        """
        if self.pool is None:
            for task in tasks:
                yield local_fn(*task)
            return
        pending: deque = deque()
        tasks = iter(tasks)
        try:
            while True:
                if len(pending) < 2 * self.num_proc and (not pending or more is None or more()):
                    task = next(tasks, ())
                    if not task:
                        break
                    pending.append(self.pool.apply_async(fn, task))
                else:
                    yield pending.popleft().get()
            while pending:
                yield pending.popleft().get()
        finally:
            # The consumer may stop early (a source has its rows): let the few batches in
            # flight finish, so no worker is left blocked writing a result nobody reads.
            for result in pending:
                result.wait(timeout=60)  # bounded: a worker killed by Ctrl-C never answers

    def encode(self, texts: list[str], dtype: Any) -> tuple[np.ndarray, np.ndarray]:
        """:func:`pool_encode` in this process."""
        return encode_batch(self.tokenizer, texts, dtype)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None

    def terminate(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, exc_type, *_) -> None:
        # Graceful shutdown normally; on errors (and Ctrl-C) do not wait for the workers.
        if exc_type is None:
            self.close()
        else:
            self.terminate()
