"""Render, filter, decontaminate (and count tokens of) batches of rows, in order, in-process or
in a worker pool.

Results never depend on the number of workers: workers process whole batches and the main
process consumes the results in submission order.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from dataset.blend import text_hash
from dataset.decontam import EvalNgrams, ngram_hashes_batch
from dataset.filters import apply_filters
from dataset.formats import FormatSpec, MissingFieldError, render_row
from dataset.tokenizer import count_tokens

# Set in each worker process by _init_worker (and read only there): the evaluation
# n-grams are ~10 MB and a tokenizer a few MB, so they travel once per worker, not per batch.
_WORKER_EVAL: EvalNgrams | None = None
_WORKER_TOK: Any = None


def _init_worker(evalset: EvalNgrams | None, tokenizer: Any = None) -> None:
    global _WORKER_EVAL, _WORKER_TOK
    _WORKER_EVAL = evalset
    _WORKER_TOK = tokenizer
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


def process_batch(
    rows: dict[str, list], spec: FormatSpec, filters: dict, evalset: EvalNgrams | None, tok: Any = None
) -> list[tuple[str, str | None, int, int]]:
    """Per row ``(verdict, text, hash, tokens)``: verdict "" keeps the row, else names why it goes.

    Verdicts: a filter name, "empty", "decontaminated", or "error: <message>". Text, hash and
    tokens are only filled for kept rows; tokens (:func:`count_tokens`) only with a tokenizer,
    else 0.
    """
    texts, errors = _render_batch(rows, spec)
    checked = apply_filters([t or "" for t in texts], filters)
    verdicts = [f"error: {err}" if err else v for v, err in zip(checked, errors, strict=True)]
    passing = [i for i, v in enumerate(verdicts) if not v]
    if evalset is not None and len(evalset) and passing:
        dirty = evalset.contaminated([texts[i] for i in passing])
        for i, bad in zip(passing, dirty, strict=True):
            if bad:
                verdicts[i] = "decontaminated"
    kept = [i for i, v in enumerate(verdicts) if not v]
    sizes = (
        dict(zip(kept, count_tokens(tok, [texts[i] for i in kept]), strict=True)) if tok is not None else {}
    )
    return [
        ("", texts[i], text_hash(texts[i]), sizes.get(i, 0)) if not v else (v, None, 0, 0)  # type: ignore[arg-type]
        for i, v in enumerate(verdicts)
    ]


def pool_process_batch(rows: dict[str, list], spec: FormatSpec, filters: dict) -> list:
    return process_batch(rows, spec, filters, _WORKER_EVAL, _WORKER_TOK)


def eval_batch(rows: dict[str, list], spec: FormatSpec, n: int) -> tuple[np.ndarray, list[str]]:
    """n-gram hashes of a batch of evaluation rows, and the error per row."""
    texts, errors = _render_batch(rows, spec)
    hashes, _ = ngram_hashes_batch([t or "" for t in texts], n)
    return hashes, errors


class Runner:
    """Runs batch functions in-process (num_proc=1) or in a pool, always yielding in order.

    ``evalset`` and ``tokenizer`` are handed to each worker once, at start (read there through
    :func:`pool_process_batch`); in-process, ``self.evalset`` and ``self.tokenizer``.
    """

    def __init__(self, num_proc: int, evalset: EvalNgrams | None = None, tokenizer: Any = None):
        self.num_proc = num_proc
        self.evalset = evalset
        self.tokenizer = tokenizer
        self.pool = None
        if num_proc > 1:
            methods = multiprocessing.get_all_start_methods()
            # fork is cheap and the workers only run pure Python and numpy; elsewhere spawn.
            ctx = multiprocessing.get_context(
                "fork" if "fork" in methods and sys.platform == "linux" else "spawn"
            )
            self.pool = ctx.Pool(num_proc, initializer=_init_worker, initargs=(evalset, tokenizer))

    def map(
        self,
        fn: Callable,
        local_fn: Callable,
        tasks: Iterator[tuple],
        more: Callable[[], bool] | None = None,
    ) -> Iterator[Any]:
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
                    task = next(tasks, None)
                    if task is None:
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
