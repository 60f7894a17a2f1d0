"""n-gram decontamination against real MMLU rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dataset.decontam import EvalNgrams, ngram_hashes_batch, words
from dataset.formats import render_alpaca, render_mmlu
from tests.helpers import shared_file


def _rows(*parts: str) -> list[dict]:
    with shared_file(*parts).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def mmlu_test() -> EvalNgrams:
    rows = _rows("mmlu", "test.jsonl")
    return EvalNgrams.from_texts(render_mmlu(r["question"], r["choices"], r["answer"]) for r in rows)


def test_ngrams_ignore_case_punctuation_and_layout():
    (a, _), (b, _) = (
        ngram_hashes_batch(["The cat, the HAT!"], 3),
        ngram_hashes_batch(["the  cat\nthe hat"], 3),
    )
    assert a.tolist() == b.tolist() and len(a) == 2
    hashes, owner = ngram_hashes_batch(["one two", "", "a b c d"], 3)
    assert owner.tolist() == [0, 2, 2]  # a short text is one n-gram; an empty one none
    # Windows never reach across texts: the batch gives what texts give one at a time.
    together, _ = ngram_hashes_batch(["a b c d", "e f g"], 3)
    alone = np.concatenate([ngram_hashes_batch([t], 3)[0] for t in ["a b c d", "e f g"]])
    assert together.tolist() == alone.tolist()


def test_copied_questions_are_caught_even_reformatted(mmlu_test):
    rows = _rows("mmlu", "test.jsonl")[:200]
    rendered = [render_mmlu(r["question"], r["choices"], r["answer"]) for r in rows]
    embedded = [
        f"Here is a quiz from my class.\n\n{render_mmlu(r['question'], r['choices'])}\nThanks!" for r in rows
    ]
    assert (mmlu_test.overlap(rendered) == 1.0).all()
    assert mmlu_test.contaminated(embedded).all()
    # Reformatted (no letters, no "Answer:"): caught whenever the question itself has 13
    # words. Shorter questions are the known blind spot of a 13-gram rule.
    long_q = [r for r in rows if len(words(r["question"])) >= 13]
    assert len(long_q) > 100
    assert mmlu_test.contaminated([f"{r['question']} {' '.join(r['choices'])}" for r in long_q]).all()


def test_clean_real_rows_pass(mmlu_test):
    aux = [
        render_mmlu(r["question"], r["choices"], r["answer"])
        for r in _rows("mmlu", "auxiliary_train_subset.jsonl")
    ]
    stories = [r["text"] for r in _rows("tinystories", "validation_first1000.jsonl")]
    code = [
        render_alpaca(r["instruction"], r["input"], r["output"])
        for r in _rows("code_instructions", "code_alpaca_2k.jsonl")
    ]
    for texts in (aux, stories, code):
        assert not mmlu_test.contaminated(texts).any()


def test_threshold_tolerates_incidental_overlap(mmlu_test):
    row = _rows("mmlu", "test.jsonl")[0]
    long_text = " ".join(f"word{i}" for i in range(400)) + " " + row["question"]
    share = mmlu_test.overlap([long_text])[0]
    assert 0 < share < 0.1
    strict, lenient = EvalNgrams(mmlu_test.hashes, threshold=0.0), EvalNgrams(mmlu_test.hashes, threshold=0.1)
    assert strict.contaminated([long_text])[0] and not lenient.contaminated([long_text])[0]
