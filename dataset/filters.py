"""Row filters for mixture sources: length, a 0-1 quality score, a 0-1 code ratio.

:data:`FILTERS` is the one table of them: each filter's name, its parameters (allowed and
required) and its test, read both by the mixture config's validation
(:mod:`dataset.mixture_config`) and by :func:`apply_filters` / :class:`TextFilter`, which run
them. A new filter is one function and one table entry. Every filter is a pure function of one
text, so it runs unchanged in worker processes and gives the same verdict every time.

``quality_score`` follows the Gopher rules (Rae et al. 2021, appendix A.1.1), made soft
so they combine into one number: the product of five factors in [0, 1].

==============  ===============================================  =====================
factor          measures (tokens = whitespace-separated)         1.0 when / 0.0 when
==============  ===============================================  =====================
word-like       tokens that are letters only, once surrounding   >= 50% / 0%
                quotes and punctuation are stripped
symbols         non-space chars that are not letters, digits or  <= 25% / >= 60%
                prose punctuation (Gopher: "#" and "...")
token length    mean characters per token (Gopher: 3 to 10)      2.5-10 / <= 1 or >= 20
repetition      word 5-grams repeating an earlier 5-gram         <= 20% / >= 60%
                (Gopher: > 15% of characters in dup. 5-grams)
language        max over: share of tokens among ~150 common      >= 16% or >= 0.4 /
                English words; code ratio (Gopher: at least 2    <= 8% and <= 0.1
                of 8 stop words, which code rarely has)
==============  ===============================================  =====================

Measured on real rows from ../shared/data (tests/dataset/test_filters.py): 99% of TinyStories
stories score 1.0 (the lowest, 0.28, repeats one paragraph twelve times); 99% of Code
Alpaca rows (Alpaca-rendered) score >= 0.79; MBPP Python alone has median 1.0, 5th
percentile 0.57; MMLU auxiliary_train questions score >= 0.39 (short ones lack common
words). Garbage made from real stories: character-shuffled text scores <= 0.17 for 95%
of rows; repeated-sentence spam, base64 and punctuation-only text score 0.

``calculate_code_ratio`` is 0.75 x the share of non-empty lines that look like code plus
0.25 x a code-symbol density term. A line looks like code when it is indented, starts
with a programming keyword, decorator or comment marker, ends in ``;``, ``{`` or ``}``,
is an assignment (``x = ...``, ``x += ...``) or calls a function (``name(...)``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Punctuation stripped from a token's ends before asking whether it is a word.
_EDGE_PUNCT = "\"'()[]{}“”‘’.,!?;:*-_"
# Characters that are neither alphanumeric, whitespace nor ordinary prose punctuation.
_SYMBOL = re.compile(r"[^\w\s.,!?;:'\"’‘“”()\-]")
# The most frequent English words (function words and common verbs): ~50% of the tokens
# of fluent prose, ~5% of character-shuffled noise, 0-25% of code.
COMMON_WORDS = frozenset(
    """the be to of and a in that have i it for not on with he as you do at this but his by
    from they we say her she or an will my one all would there their what so up out if about
    who get which go me when make can like time no just him know take people into year your
    good some could them see other than then now look only come its over think also back after
    use two how our work first well way even new want because any these give day most us is
    was are were been has had did said does""".split()
)

_CODE_KEYWORDS = (
    "def|class|return|import|from|if|elif|else|for|while|try|except|finally|with|yield|lambda|"
    "print|raise|assert|pass|break|continue|async|await|function|var|let|const|public|private|"
    "static|void|int|float|double|char|bool|boolean|string|String|package|namespace|using|"
    "fn|func|impl|struct|enum|switch|case|echo|SELECT|INSERT|UPDATE|DELETE|CREATE"
)
_CODE_START = re.compile(rf"\s*(?:#include|#!|//|/\*|\*/|@\w|</?\w+[\s>]|(?:{_CODE_KEYWORDS})\b)")
_ASSIGNMENT = re.compile(r"\s*[A-Za-z_][\w.\[\]'\"]*\s*(?:[-+*/%|&^]|//|\*\*)?=(?!=)\s*\S")
_CALL = re.compile(r"(?<!\w)[A-Za-z_]\w*\([^()]*\)")
_CODE_SYMBOLS = "{}[]()<>=;_#*/+%&|\\^~$@"


def _ramp(x: float, zero: float, full: float) -> float:
    """0 at ``zero``, 1 at ``full``, linear between and clamped (works in either direction)."""
    t = (x - zero) / (full - zero)
    return 0.0 if t <= 0 else 1.0 if t >= 1 else t


def quality_signals(text: str) -> dict[str, float]:
    """The raw measurements behind :func:`quality_score` (see the module docstring)."""
    tokens = text.lower().split()
    if not tokens:
        return {"wordlike": 0.0, "symbols": 1.0, "mean_token_len": 0.0, "dup_5gram": 0.0, "common_words": 0.0}
    n = len(tokens)
    non_space = sum(map(len, tokens))
    words = [t.strip(_EDGE_PUNCT) for t in tokens]
    grams = list(zip(words, words[1:], words[2:], words[3:], words[4:], strict=False))
    return {
        "wordlike": sum(map(str.isalpha, words)) / n,
        "symbols": len(_SYMBOL.findall(text)) / non_space,
        "mean_token_len": non_space / n,
        "dup_5gram": 1.0 - len(set(grams)) / len(grams) if grams else 0.0,
        "common_words": sum(map(COMMON_WORDS.__contains__, words)) / n,
    }


def quality_score(text: str, code_ratio: float | None = None) -> float:
    """A 0-1 score: ~1 for fluent prose, 0.5-1 for code, near 0 for noise and spam.

    Pass ``code_ratio`` when it is already known (it feeds the language factor).
    """
    s = quality_signals(text)
    mtl = s["mean_token_len"]
    if mtl == 0:
        return 0.0
    if code_ratio is None:
        code_ratio = calculate_code_ratio(text)
    factors = (
        _ramp(s["wordlike"], 0.0, 0.5),
        _ramp(s["symbols"], 0.6, 0.25),
        _ramp(mtl, 1.0, 2.5) if mtl < 2.5 else _ramp(mtl, 20.0, 10.0),
        _ramp(s["dup_5gram"], 0.6, 0.2),
        # Language: common English words, or code structure. Text with neither (shuffled
        # characters, keyword stuffing, an unsupported script) scores low.
        max(_ramp(s["common_words"], 0.08, 0.16), _ramp(code_ratio, 0.1, 0.4)),
    )
    score = 1.0
    for f in factors:
        score *= f
    return round(score, 6)


def _is_code_line(line: str) -> bool:
    if line[0] == "\t" or line.startswith("  "):
        return True
    if _CODE_START.match(line):
        return True
    if line.rstrip()[-1] in ";{}":
        return True
    if "=" in line and _ASSIGNMENT.match(line):
        return True
    return "(" in line and _CALL.search(line) is not None


def calculate_code_ratio(text: str) -> float:
    """How code-like a text is, in [0, 1]: 0.75 x code-line share + 0.25 x symbol density.

    The density term is the share of non-space characters among ``{}[]()<>=;_#*/+%&|\\^~$@``,
    saturating at 15% (Python is typically 10-20%, prose under 1%).
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return 0.0
    code_lines = sum(map(_is_code_line, lines))
    non_space = sum(map(len, text.split()))
    density = sum(map(text.count, _CODE_SYMBOLS)) / non_space
    return round(0.75 * code_lines / len(lines) + 0.25 * min(1.0, density / 0.15), 6)


class _Text:
    """A text and what the filters measure of it, each computed at most once."""

    def __init__(self, text: str):
        self.text = text
        self._code_ratio: float | None = None

    @property
    def code_ratio(self) -> float:
        if self._code_ratio is None:
            self._code_ratio = calculate_code_ratio(self.text)
        return self._code_ratio


@dataclass(frozen=True)
class FilterSpec:
    """One filter: its parameters and its test ``passes(text, params) -> bool``.

    ``params`` maps each parameter a config may give to its kind and default: ``("int", lo,
    default)`` an integer >= lo, ``("fraction", default)`` a number in [0, 1]; a default of
    ``REQUIRED`` makes the parameter required.
    """

    params: Mapping[str, tuple]
    passes: Callable[[_Text, Mapping[str, Any]], bool]
    doc: str

    @property
    def required(self) -> frozenset[str]:
        return frozenset(k for k, kind in self.params.items() if kind[-1] is REQUIRED)


REQUIRED = object()  # a FilterSpec parameter default: the config must give it


def _length_ok(t: _Text, p: Mapping[str, Any]) -> bool:
    hi = p.get("max")
    return (p.get("min") or 0) <= len(t.text) <= (float("inf") if hi is None else hi)


FILTERS: dict[str, FilterSpec] = {
    "length": FilterSpec(
        {"min": ("int", 0, 0), "max": ("int", 1, None)},
        _length_ok,
        "min <= characters <= max (both optional)",
    ),
    "quality": FilterSpec(
        {"threshold": ("fraction", REQUIRED)},
        lambda t, p: quality_score(t.text, t.code_ratio) >= p["threshold"],
        "quality_score(text) >= threshold",
    ),
    "code_quality": FilterSpec(
        {"threshold": ("fraction", REQUIRED)},
        lambda t, p: t.code_ratio >= p["threshold"],
        "calculate_code_ratio(text) >= threshold",
    ),
}


class TextFilter:
    """The filters of one source, applied in the order configured.

    ``filters`` looks like ``{"length": {"min": 100, "max": 2000}, "quality": {"threshold": 0.3}}``.
    Calling the object on a text returns the name of the first filter it fails ("empty"
    for blank text), or "" when it passes them all. The code ratio is computed at most
    once per text and shared by the quality and code_quality filters. ValueError for an
    unknown filter, a missing required parameter or an unknown one (the mixture config's
    validation reports the same in one line naming the field).
    """

    def __init__(self, filters: Mapping[str, Mapping[str, Any] | None]):
        self.steps: list[tuple[str, FilterSpec, dict[str, Any]]] = []
        for name, params in filters.items():
            spec = FILTERS.get(name)
            if spec is None:
                raise ValueError(f"unknown filter {name!r} (known: {', '.join(FILTERS)})")
            params = dict(params or {})
            if missing := sorted(spec.required - set(params)):
                raise ValueError(f"{name} filter needs {', '.join(missing)}")
            if unknown := sorted(set(params) - set(spec.params)):
                raise ValueError(f"{name} filter: unknown parameter(s) {', '.join(unknown)}")
            if (
                name == "length"
                and params.get("max") is not None
                and (params.get("min") or 0) > params["max"]
            ):
                raise ValueError(f"length filter: min {params.get('min')} > max {params['max']}")
            self.steps.append((name, spec, params))

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.steps]

    def __call__(self, text: str) -> str:
        if not text.strip():
            return "empty"
        t = _Text(text)
        for name, spec, params in self.steps:
            if not spec.passes(t, params):
                return name
        return ""


def apply_filters(texts: Sequence[str], filters: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    """The verdict of ``filters`` (in the order given) on each text: "" keeps it, else the name of
    the first filter it fails ("empty" for blank text). What prepare_dataset runs on every batch
    of rows (:mod:`dataset.pool`). ValueError for bad filter settings (see :class:`TextFilter`)."""
    check = TextFilter(filters)
    return [check(t) for t in texts]
