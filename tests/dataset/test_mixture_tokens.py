"""Mixtures in tokens, with stages: the plan is exact and the files follow it (real rows from ../shared/data).

TinyStories (text), Code Alpaca 2k (alpaca) and MMLU auxiliary_train (mmlu) mixed 30/35/35 as token
shares, counted with a BPE trained here on the same kind of rows. Every count is checked against an
independent recount of the written files with ``encode_texts`` (+ EOS: the targets a document gives).
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from dataset.blend import is_val, text_hash
from dataset.formats import FormatSpec, render_row
from dataset.io import iter_jsonl
from dataset.mixture import find_prepared, load_mixture_config, prepare_mixture, prepared_paths
from dataset.tokenizer import encode_texts, load_tokenizer, tokenizer_sha256, train_tokenizer
from model.errors import UserError
from tests.helpers import field_case3, shared_file

SHARES = {"replay": 0.3, "code": 0.35, "reasoning": 0.35}


def _jsonl(path: Path) -> list[dict]:
    return [row for _, row in iter_jsonl(path)]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("hf_cache"))


def _seed_texts(n: int) -> list[str]:
    """Rendered real rows of the three sources, n of each."""
    stories = _jsonl(shared_file("tinystories", "validation_first1000.jsonl"))[:n]
    code = _jsonl(shared_file("code_instructions", "code_alpaca_2k.jsonl"))[:n]
    mmlu = _jsonl(shared_file("mmlu", "auxiliary_train_subset.jsonl"))[:n]
    return (
        [r["text"] for r in stories]
        + [render_row(r, FormatSpec(format="alpaca")) for r in code]
        + [render_row(r, FormatSpec(format="mmlu")) for r in mmlu]
    )


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> Path:
    """A 512-token byte-level BPE trained on real rows of the three sources."""
    out = tmp_path_factory.mktemp("bpe") / "tokenizer"
    train_tokenizer(_seed_texts(300), 512, out)
    return out


@pytest.fixture(scope="module")
def other_bpe(tmp_path_factory) -> Path:
    """A different tokenizer (384 tokens): same kind of rows, other counts."""
    out = tmp_path_factory.mktemp("bpe2") / "tokenizer"
    train_tokenizer(_seed_texts(200), 384, out)
    return out


def sources(**extra) -> list[dict]:
    """The three real sources (with the shipped phase-1 filters), each updated by ``extra[name]``."""
    out: list[dict[str, Any]] = [
        {
            "name": "replay",
            "data_files": [
                str(shared_file("tinystories", "validation_first1000.jsonl")),
                str(shared_file("tinystories", "train_v2_gpt4_first10klines.jsonl")),
            ],
            "format": "text",
            "filters": {"length": {"min": 100, "max": 2000}, "quality": {"threshold": 0.3}},
        },
        {
            "name": "code",
            "data_files": str(shared_file("code_instructions", "code_alpaca_2k.jsonl")),
            "format": "alpaca",
            "filters": {
                "length": {"min": 50, "max": 2000},
                "quality": {"threshold": 0.2},
                "code_quality": {"threshold": 0.1},
            },
        },
        {
            "name": "reasoning",
            "data_files": str(shared_file("mmlu", "auxiliary_train_subset.jsonl")),
            "format": "mmlu",
            "filters": {"length": {"min": 20, "max": 1000}, "quality": {"threshold": 0.2}},
        },
    ]
    return [s | extra.get(s["name"], {}) for s in out]


def write_config(folder: Path, tokenizer: Path | str | None, staged: bool = False, **top) -> Path:
    config: dict = {"mix_by": "tokens", "total_tokens": 150_000, "val_ratio": 0.1, "seed": 7}
    if tokenizer is not None:
        config["tokenizer"] = str(tokenizer)
    if staged:
        config["sources"] = sources()
        config["stages"] = [
            {"name": "main", "fraction": 0.75, "ratios": {"replay": 0.5, "code": 0.3, "reasoning": 0.2}},
            {"name": "decay", "fraction": 0.25, "ratios": {"code": 0.4, "reasoning": 0.6}},
        ]
    else:
        config["sources"] = sources(**{n: {"ratio": r} for n, r in SHARES.items()})
    config.update(top)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mix.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def recount(rows: list[dict], tok, extra: int = 1) -> list[int]:
    """Targets each row gives in training (every token of ``BOS text EOS`` but the first: the text
    and EOS; ``extra`` 0 without BOS), counted here independently of the pipeline."""
    return [len(ids) + extra for ids in encode_texts(tok, [r["text"] for r in rows])]


@pytest.fixture(scope="module")
def flat(tmp_path_factory, bpe, cache_dir):
    """The token mixture prepared twice: num_proc 1 and 2."""
    root = tmp_path_factory.mktemp("flat")
    config = load_mixture_config(write_config(root / "cfg", bpe))
    out: dict[str | int, Any] = {"config": config}
    for num_proc in (1, 2):
        manifest = prepare_mixture(config, root / f"out{num_proc}", num_proc=num_proc, cache_dir=cache_dir)
        out[num_proc] = {"manifest": manifest, "paths": prepared_paths(config, root / f"out{num_proc}")}
    return out


@pytest.fixture(scope="module")
def staged(tmp_path_factory, bpe, cache_dir):
    root = tmp_path_factory.mktemp("staged")
    config = load_mixture_config(write_config(root / "cfg", bpe, staged=True))
    manifest = prepare_mixture(config, root / "out", num_proc=2, cache_dir=cache_dir)
    return {"config": config, "manifest": manifest, "paths": prepared_paths(config, root / "out")}


def test_realized_token_shares_equal_the_plan_within_one_document(flat, bpe):
    """The issue's test: per source, planned <= written < planned + one document, and the shares
    within 0.5 percentage points, by an independent recount of train + val."""
    manifest, paths = flat[1]["manifest"], flat[1]["paths"]
    rows = _jsonl(paths.train) + _jsonl(paths.val)
    tokens = recount(rows, load_tokenizer(bpe))
    per_source: dict[str, int] = Counter()
    longest: dict[str, int] = Counter()
    for r, n in zip(rows, tokens, strict=True):
        per_source[r["source"]] += n
        longest[r["source"]] = max(longest[r["source"]], n)
    plan = {s["name"]: s for s in manifest["plan"]["sources"]}
    assert {n: p["planned"] for n, p in plan.items()} == {
        "replay": 45_000,
        "code": 52_500,
        "reasoning": 52_500,
    }
    total = sum(per_source.values())
    assert total == manifest["plan"]["written"]
    for name, share in SHARES.items():
        assert per_source[name] == plan[name]["written"]
        assert plan[name]["planned"] <= per_source[name] < plan[name]["planned"] + longest[name], name
        assert abs(per_source[name] / total - share) < 0.005, name
        assert plan[name]["written_share"] == pytest.approx(per_source[name] / total, abs=1e-6)
    assert all(set(r) == {"text", "source"} for r in rows)  # no stages: rows as before
    assert manifest["tokenizer_sha256"] == tokenizer_sha256(load_tokenizer(bpe))
    assert manifest["tokenizer"]["targets_per_document"] == "n + 1" and manifest["mix_by"] == "tokens"
    assert "stages" not in manifest and "stages" not in manifest["plan"]


def test_byte_identical_across_runs_and_num_proc(flat):
    for a, b in zip(flat[1]["paths"], flat[2]["paths"], strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_split_is_the_stable_hash_split_and_prefixes_follow_token_shares(flat, bpe):
    paths = flat[1]["paths"]
    train, val = _jsonl(paths.train), _jsonl(paths.val)
    assert all(is_val(text_hash(r["text"]), 0.1) for r in val)
    assert not any(is_val(text_hash(r["text"]), 0.1) for r in train)
    # Every prefix of the train file: no source ahead of its token share by more than one of its rows.
    tok = load_tokenizer(bpe)
    sizes = recount(train, tok)
    totals: dict[str, int] = Counter()
    for r, n in zip(train, sizes, strict=True):
        totals[r["source"]] += n
    grand = sum(totals.values())
    longest = max(sizes)
    seen: dict[str, int] = Counter()
    emitted = 0
    for r, n in zip(train, sizes, strict=True):
        seen[r["source"]] += n
        emitted += n
        for name, t in totals.items():
            assert seen[name] - emitted * t / grand <= longest, (name, emitted)


def test_manifest_epochs_and_counts_add_up(flat):
    manifest = flat[1]["manifest"]
    by_name = {s["name"]: s for s in manifest["sources"]}
    for p in manifest["plan"]["sources"]:
        s = by_name[p["name"]]
        assert p["rows"] == s["selected"] == s["train"] + s["val"]
        assert p["written"] == s["tokens"]
        assert p["epochs"] == pytest.approx(p["written"] / p["unique_available"], abs=1e-4)
        assert p["epochs"] < 1 and p["max_uses_per_row"] == 1
        # Not read to the end: the available tokens are an estimate, said so.
        assert p["available_exact"] == (s["rows_read"] == s["rows_total"])
    outputs = manifest["outputs"]
    assert outputs["train"]["rows"] + outputs["val"]["rows"] == sum(
        s["selected"] for s in manifest["sources"]
    )


def test_two_stages_keep_their_order_and_their_ratios(staged, bpe):
    """The issue's test: the prefix of the train file that belongs to stage 1 follows stage 1's
    ratios and the rest stage 2's; per stage and source, train + val tokens = plan within one document."""
    manifest, paths = staged["manifest"], staged["paths"]
    tok = load_tokenizer(bpe)
    plans = {
        (st["name"], c["name"]): c["planned"] for st in manifest["plan"]["stages"] for c in st["sources"]
    }
    assert plans == {
        ("main", "replay"): 56_250,
        ("main", "code"): 33_750,
        ("main", "reasoning"): 22_500,
        ("decay", "replay"): 0,
        ("decay", "code"): 15_000,
        ("decay", "reasoning"): 22_500,
    }
    written: dict[tuple[str, str], int] = Counter()
    longest: dict[str, int] = Counter()
    train_tokens: dict[tuple[str, str], int] = Counter()
    for split in ("train", "val"):
        rows = _jsonl(getattr(paths, split))
        stages = [r["stage"] for r in rows]
        # all of stage main, then all of stage decay
        assert stages == sorted(stages, key=["main", "decay"].index), split
        for r, n in zip(rows, recount(rows, tok), strict=True):
            assert set(r) == {"text", "source", "stage"}
            written[(r["stage"], r["source"])] += n
            longest[r["source"]] = max(longest[r["source"]], n)
            if split == "train":
                train_tokens[(r["stage"], r["source"])] += n
    for (stage, source), planned in plans.items():
        assert abs(written[(stage, source)] - planned) < longest[source], (stage, source)
    assert written[("decay", "replay")] == 0
    # The train file alone (validation takes ~10% at random): each stage's shares near its ratios.
    for stage, ratios in (
        ("main", {"replay": 0.5, "code": 0.3, "reasoning": 0.2}),
        ("decay", {"code": 0.4, "reasoning": 0.6}),
    ):
        total = sum(v for (st, _), v in train_tokens.items() if st == stage)
        for source, share in ratios.items():
            assert abs(train_tokens[(stage, source)] / total - share) < 0.03, (stage, source)
    # The manifest's stages list: what the files hold, in order.
    assert [s["name"] for s in manifest["stages"]] == ["main", "decay"]
    for s in manifest["stages"]:
        assert s["train_tokens"] == sum(v for (st, _), v in train_tokens.items() if st == s["name"])
        assert s["train_rows"] == sum(1 for r in _jsonl(paths.train) if r["stage"] == s["name"])
        assert s["val_rows"] == sum(1 for r in _jsonl(paths.val) if r["stage"] == s["name"])
    assert staged["config"].sources[0].ratio == pytest.approx(0.75 * 0.5)  # overall share


def test_rows_mode_stages_are_exact(tmp_path, cache_dir):
    path = write_config(tmp_path / "cfg", None, staged=True)
    raw = yaml.safe_load(path.read_text())
    raw.pop("mix_by"), raw.pop("total_tokens")
    raw["total_samples"] = 400
    path.write_text(yaml.safe_dump(raw))
    config = load_mixture_config(path)
    manifest = prepare_mixture(config, tmp_path / "out", cache_dir=cache_dir)
    paths = prepared_paths(config, tmp_path / "out")
    rows = _jsonl(paths.train) + _jsonl(paths.val)
    counts = Counter((r["stage"], r["source"]) for r in rows)
    # 300 / 100 rows; main 150/90/60, decay 40/60
    assert counts == {
        ("main", "replay"): 150,
        ("main", "code"): 90,
        ("main", "reasoning"): 60,
        ("decay", "code"): 40,
        ("decay", "reasoning"): 60,
    }
    assert manifest["plan"]["unit"] == "rows" and "tokenizer" not in manifest
    assert [s["train_tokens"] for s in manifest["stages"]] == [None, None]
    assert all(c["written"] == c["planned"] for st in manifest["plan"]["stages"] for c in st["sources"])


def test_short_source_fails_naming_tokens_available_and_needed(tmp_path, bpe, cache_dir):
    path = write_config(tmp_path / "cfg", bpe, total_tokens=600_000)
    with pytest.raises(UserError) as e:
        prepare_mixture(load_mixture_config(path), tmp_path / "out", cache_dir=cache_dir)
    msg = str(e.value)
    assert "source 'reasoning'" in msg and "is short" in msg and "210000 needed" in msg, msg
    available = int(msg.split(" tokens in ")[0].split()[-1])
    assert 100_000 < available < 210_000 and "max_repeats: 2" in msg
    assert not (tmp_path / "out").exists()


def test_repeats_report_exact_epochs_and_warn_above_four(tmp_path, bpe, cache_dir, caplog):
    """Reasoning alone at ~5x its ~160k unique tokens: read to its end, so epochs are exact."""
    path = write_config(tmp_path / "cfg", bpe)
    raw = yaml.safe_load(path.read_text())
    raw["sources"] = sources(reasoning={"ratio": 1.0, "max_repeats": 6})[2:]
    raw["total_tokens"] = 800_000
    path.write_text(yaml.safe_dump(raw))
    with caplog.at_level(logging.WARNING, logger="dataset.mixture"):
        manifest = prepare_mixture(load_mixture_config(path), tmp_path / "out", cache_dir=cache_dir)
    p = manifest["plan"]["sources"][0]
    s = manifest["sources"][0]
    assert p["available_exact"] and s["rows_read"] == s["rows_total"]
    assert 800_000 <= p["written"] and p["epochs"] == pytest.approx(
        p["written"] / p["unique_available"], abs=1e-4
    )
    assert 4 < p["epochs"] <= 6 and p["max_uses_per_row"] == math.ceil(p["epochs"])
    warned = [r.getMessage() for r in caplog.records if "epochs" in r.getMessage()]
    assert len(warned) == 1 and "'reasoning'" in warned[0] and "Muennighoff" in warned[0]
    # every unique row is used 5 or 6 times: passes are whole before any row repeats again
    uses = Counter(
        r["text"] for r in _jsonl(prepared_paths(load_mixture_config(path), tmp_path / "out").train)
    )
    assert max(uses.values()) <= 6


def test_tokenizer_without_bos_counts_the_text_but_its_first_token(tmp_path, bpe, cache_dir):
    from transformers import PreTrainedTokenizerFast

    base = load_tokenizer(bpe)
    no_bos = PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer, eos_token=base.eos_token, pad_token=base.pad_token
    )
    assert no_bos.bos_token_id is None
    path = write_config(tmp_path / "cfg", None)
    config = load_mixture_config(path)
    manifest = prepare_mixture(config, tmp_path / "out", cache_dir=cache_dir, tokenizer=no_bos)
    assert manifest["tokenizer"]["targets_per_document"] == "n + 0" and not manifest["tokenizer"]["bos"]
    paths = prepared_paths(config, tmp_path / "out")
    rows = _jsonl(paths.train) + _jsonl(paths.val)
    per_source: dict[str, int] = defaultdict(int)
    for r, n in zip(rows, recount(rows, no_bos, extra=0), strict=True):
        per_source[r["source"]] += n
    assert per_source == {p["name"]: p["written"] for p in manifest["plan"]["sources"]}


def test_given_tokenizer_wins_and_find_prepared_checks_its_hash(tmp_path, bpe, other_bpe, cache_dir):
    config = load_mixture_config(write_config(tmp_path / "cfg", bpe))
    manifest = prepare_mixture(config, tmp_path / "out", cache_dir=cache_dir, tokenizer=str(other_bpe))
    other_sha = tokenizer_sha256(load_tokenizer(other_bpe))
    sha = tokenizer_sha256(load_tokenizer(bpe))
    assert manifest["tokenizer_sha256"] == other_sha != sha and manifest["tokenizer"]["ref"] == str(other_bpe)
    assert find_prepared(config, tmp_path / "out", tokenizer_sha256=other_sha).train.is_file()
    assert find_prepared(config, tmp_path / "out").train.is_file()  # None: not checked
    with pytest.raises(UserError) as e:
        find_prepared(config, tmp_path / "out", tokenizer_sha256=sha)
    msg = str(e.value)
    assert "\n" not in msg and other_sha[:12] in msg and sha[:12] in msg
    assert "--tokenizer_path" in msg and "--overwrite" in msg and str(config.path) in msg


def test_relative_tokenizer_resolves_against_the_config_folder(tmp_path, bpe):
    folder = tmp_path / "cfgs"
    path = write_config(folder, "../tok")
    config = load_mixture_config(path)
    assert config.tokenizer == str(tmp_path / "tok")
    hub = load_mixture_config(write_config(tmp_path / "hub", "HuggingFaceTB/SmolLM2-135M"))
    assert hub.tokenizer == "HuggingFaceTB/SmolLM2-135M"
    assert hub.sha256 != load_mixture_config(write_config(tmp_path / "none", None)).sha256


def test_empty_validation_of_a_source_is_said_with_numbers(tmp_path, bpe, cache_dir, caplog):
    path = write_config(tmp_path / "cfg", bpe, val_ratio=0.0005, total_tokens=40_000)
    with caplog.at_level(logging.WARNING, logger="dataset.mixture"):
        manifest = prepare_mixture(load_mixture_config(path), tmp_path / "out", cache_dir=cache_dir)
    empty = [s for s in manifest["sources"] if s["val"] == 0]
    assert empty  # ~0.1 expected validation rows per source
    for s in empty:
        line = next(
            r.getMessage() for r in caplog.records if f"source {s['name']!r}: none of its" in r.getMessage()
        )
        assert f"{s['selected']} rows" in line and "val_ratio 0.0005" in line


def test_a_stage_left_without_rows_stops_with_numbers(tmp_path, bpe, cache_dir):
    """A last stage of 1 token: the replay document that crosses into it started in the stage
    before, so the stage would be empty; the run stops rather than write a stage nobody trains."""
    path = write_config(tmp_path / "cfg", bpe, total_tokens=20_000)
    raw = yaml.safe_load(path.read_text())
    raw["sources"] = sources()[:1]
    raw["stages"] = [
        {"name": "main", "fraction": 0.99995, "ratios": {"replay": 1.0}},
        {"name": "tail", "fraction": 0.00005, "ratios": {"replay": 1.0}},
    ]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError) as e:
        prepare_mixture(load_mixture_config(path), tmp_path / "out", cache_dir=cache_dir)
    msg = str(e.value)
    assert "stage 'tail' gets no rows: its plan of 1 tokens" in msg and "raise total_tokens" in msg
    assert not (tmp_path / "out").exists()


def test_a_stage_source_without_validation_rows_is_warned_with_its_counts(
    tmp_path, tokenizer_dir, cache_dir, caplog
):
    """Field case 3.3 (field-cases3/mix_stages.yaml): in the last stage a source has training rows and
    no validation rows. Every such (stage, source) gets one warning line naming both and the counts,
    and no other pair does."""
    config = load_mixture_config(field_case3("mix_stages.yaml"))
    with caplog.at_level(logging.WARNING, logger="dataset.mixture"):
        prepare_mixture(config, tmp_path / "out", cache_dir=cache_dir, tokenizer=str(tokenizer_dir))
    paths = prepared_paths(config, tmp_path / "out")
    train = Counter((r["stage"], r["source"]) for r in _jsonl(paths.train))
    val = Counter((r["stage"], r["source"]) for r in _jsonl(paths.val))
    missing = {pair: n for pair, n in train.items() if val[pair] == 0}
    assert missing, "with this tokenizer the field case has a (stage, source) without validation rows"
    lines = [
        r.getMessage() for r in caplog.records if "training rows and 0 validation rows" in r.getMessage()
    ]
    assert sorted(lines) == sorted(
        f"warning: stage {stage!r}, source {source!r}: {n} training rows and 0 validation rows "
        f"(val_ratio 0.1: ~{n * 0.1:.1f} expected), so nothing checks what training on it in that stage "
        "does; raise val_ratio or its share in that stage"
        for (stage, source), n in missing.items()
    )
