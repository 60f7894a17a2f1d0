"""Filters on real rows: prose vs code vs garbage; the filter table and apply_filters."""

from __future__ import annotations

import base64
import json
import random
from collections import Counter

import pytest

from dataset.filters import (
    FILTERS,
    TextFilter,
    apply_filters,
    calculate_code_ratio,
    quality_score,
)
from dataset.formats import render_alpaca
from tests.helpers import shared_file


def _rows(*parts: str) -> list[dict]:
    with shared_file(*parts).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def samples() -> dict[str, list[str]]:
    stories = [r["text"] for r in _rows("tinystories", "validation_first1000.jsonl")[:300]]
    alpaca = [
        render_alpaca(r["instruction"], r["input"], r["output"])
        for r in _rows("code_instructions", "code_alpaca_2k.jsonl")
    ]
    python = [r["code"] for r in _rows("mbpp", "mbpp.jsonl")[:300]]
    rng = random.Random(0)

    def shuffled(text: str) -> str:
        chars = list(text)
        rng.shuffle(chars)
        return "".join(chars)

    # Garbage derived from real stories: character noise, spam repetition, an encoded
    # blob, and punctuation left after the words are removed.
    garbage = {
        "shuffled": [shuffled(t) for t in stories[:100]],
        "spam": [(t.split(".")[0] + ". ") * 30 for t in stories[:100]],
        "base64": [base64.b64encode(t.encode()).decode() for t in stories[:100]],
        "punctuation": ["".join(c for c in t if not c.isalnum()) for t in stories[:100]],
    }
    return {"stories": stories, "alpaca": alpaca, "python": python, **garbage}


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def _share(xs: list[float], pred) -> float:
    return sum(1 for x in xs if pred(x)) / len(xs)


def test_quality_prose_high_code_middle_garbage_low(samples):
    q = {k: [quality_score(t) for t in v] for k, v in samples.items()}
    assert _median(q["stories"]) == 1.0 and _share(q["stories"], lambda s: s >= 0.3) > 0.99
    assert _share(q["alpaca"], lambda s: s >= 0.2) > 0.99  # the code source's threshold keeps real code
    assert _median(q["python"]) >= 0.5
    assert _share(q["shuffled"], lambda s: s < 0.3) > 0.95
    for kind in ("spam", "base64", "punctuation"):
        assert max(q[kind]) < 0.05, kind
    assert all(0.0 <= s <= 1.0 for v in q.values() for s in v)
    assert quality_score("") == 0.0 and quality_score("   \n") == 0.0


def test_code_ratio_separates_code_from_prose(samples):
    ratio = {
        k: [calculate_code_ratio(t) for t in samples[k]] for k in ("stories", "alpaca", "python", "shuffled")
    }
    assert max(ratio["stories"]) < 0.05
    assert _median(ratio["python"]) > 0.9 and min(ratio["python"]) > 0.5
    assert _median(ratio["alpaca"]) > 0.4
    assert _share(ratio["alpaca"], lambda r: r >= 0.1) > 0.9
    assert _median(ratio["shuffled"]) < 0.1
    assert calculate_code_ratio("") == 0.0
    assert calculate_code_ratio("def f(x):\n    return x + 1\n") > 0.9


def test_each_filter_of_the_table_at_its_threshold():
    """Every filter of FILTERS at its edges (a filter added to the table without a case fails)."""
    story = "The cat sat on the mat and looked at the dog with a smile."
    code = "for i in range(3):\n    print(i)"
    cases: dict[str, list[tuple[dict[str, float], str, str]]] = {
        "length": [
            ({"min": 4, "max": 4}, "abcd", ""),
            ({"min": 4}, "abc", "length"),
            ({"min": 1}, "x" * 10**5, ""),
            ({"max": 5}, "abcdef", "length"),
        ],
        "quality": [
            ({"threshold": 0.9}, story, ""),
            ({"threshold": 0.3}, "zq xv " * 50, "quality"),
            ({"threshold": quality_score(story)}, story, ""),
        ],
        "code_quality": [
            ({"threshold": 0.5}, code, ""),
            ({"threshold": 0.1}, "Once upon a time there was a fox.", "code_quality"),
            ({"threshold": calculate_code_ratio(code)}, code, ""),
        ],
    }
    assert set(cases) == set(FILTERS)
    for name, rows in cases.items():
        for params, text, verdict in rows:
            assert apply_filters([text], {name: params}) == [verdict], (name, params, text)


def test_text_filter_order_and_errors():
    check = TextFilter({"length": {"min": 10, "max": 100}, "quality": {"threshold": 0.5}})
    assert check("") == "empty"
    assert check("short") == "length"
    assert check("%$#@! " * 10) == "quality"
    assert check("The dog and the cat played in the park with a ball.") == ""
    with pytest.raises(ValueError, match="min 5 > max 2"):
        TextFilter({"length": {"min": 5, "max": 2}})
    with pytest.raises(ValueError, match="unknown filter"):
        TextFilter({"perplexity": {"threshold": 1}})
    with pytest.raises(ValueError, match="quality filter needs threshold"):
        TextFilter({"quality": {}})
    with pytest.raises(ValueError, match="unknown parameter"):
        TextFilter({"length": {"minimum": 3}})


def test_apply_filters_on_real_rows(samples):
    texts = samples["stories"][:60] + samples["spam"][:20] + samples["python"][:20] + ["", "tiny"]
    filters: dict[str, dict[str, float]] = {
        "length": {"min": 20, "max": 3000},
        "quality": {"threshold": 0.1},
        "code_quality": {"threshold": 0.5},
    }
    verdicts = apply_filters(texts, filters)
    assert Counter(verdicts) == {"": 20, "empty": 1, "length": 1, "quality": 20, "code_quality": 60}
    assert [i for i, v in enumerate(verdicts) if not v] == list(range(80, 100))  # the python rows
