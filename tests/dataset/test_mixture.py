"""prepare_mixture end to end on real rows from ../shared/data.

TinyStories (text), Code Alpaca 2k (alpaca) and MMLU auxiliary_train (mmlu) mixed 30/35/35,
decontaminated against MMLU test. The reasoning source has 30 real MMLU test rows and
5 duplicates planted in it, so decontamination and dedup have something to find.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from dataset.blend import allocate, is_val, text_hash
from dataset.decontam import EvalNgrams
from dataset.formats import render_mmlu
from dataset.mixture import load_mixture_config, prepare_mixture, prepared_paths
from model.errors import UserError
from tests.helpers import shared_file

PLANTED_TEST_ROWS = 30
PLANTED_DUPLICATES = 5


def _jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("hf_cache"))


@pytest.fixture(scope="module")
def aux_unique() -> int:
    """Distinct rendered rows of the MMLU auxiliary_train sample (it holds one duplicate itself)."""
    rows = _jsonl(shared_file("mmlu", "auxiliary_train_subset.jsonl"))
    return len({render_mmlu(r["question"], r["choices"], r["answer"]) for r in rows})


@pytest.fixture(scope="module")
def planted_reasoning(tmp_path_factory) -> Path:
    """MMLU auxiliary_train rows + 30 MMLU test rows + 5 exact duplicates."""
    aux = _jsonl(shared_file("mmlu", "auxiliary_train_subset.jsonl"))
    test = _jsonl(shared_file("mmlu", "test.jsonl"))[::400][:PLANTED_TEST_ROWS]
    rows = aux[:600] + test + aux[600:] + aux[:PLANTED_DUPLICATES]
    path = tmp_path_factory.mktemp("planted") / "reasoning.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_config(folder: Path, planted: Path, **top) -> Path:
    config = {
        "total_samples": 1000,
        "val_ratio": 0.1,
        "seed": 7,
        "dedup": True,
        "sources": [
            {
                "name": "replay",
                "data_files": [
                    str(shared_file("tinystories", "validation_first1000.jsonl")),
                    str(shared_file("tinystories", "train_v2_gpt4_first10klines.jsonl")),
                ],
                "format": "text",
                "ratio": 0.3,
                "filters": {"length": {"min": 100, "max": 2000}, "quality": {"threshold": 0.3}},
            },
            {
                "name": "code",
                "data_files": str(shared_file("code_instructions", "code_alpaca_2k.jsonl")),
                "format": "alpaca",
                "ratio": 0.35,
                "filters": {
                    "length": {"min": 50, "max": 2000},
                    "quality": {"threshold": 0.2},
                    "code_quality": {"threshold": 0.1},
                },
            },
            {"name": "reasoning", "data_files": str(planted), "format": "mmlu", "ratio": 0.35},
        ],
        "decontaminate": [{"data_files": str(shared_file("mmlu", "test.jsonl")), "format": "mmlu"}],
    }
    config.update(top)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mix.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def mmlu_test_ngrams() -> EvalNgrams:
    rows = _jsonl(shared_file("mmlu", "test.jsonl"))
    return EvalNgrams.from_texts(render_mmlu(r["question"], r["choices"], r["answer"]) for r in rows)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, planted_reasoning, cache_dir):
    """The same config prepared twice: num_proc=1 and num_proc=2, into different folders."""
    root = tmp_path_factory.mktemp("mix")
    config = load_mixture_config(write_config(root / "cfg", planted_reasoning))
    out: dict[int | str, Any] = {}
    for num_proc in (1, 2):
        manifest = prepare_mixture(config, root / f"out{num_proc}", num_proc=num_proc, cache_dir=cache_dir)
        train, val, manifest_path = prepared_paths(config, root / f"out{num_proc}")
        out[num_proc] = {"manifest": manifest, "train": train, "val": val, "manifest_path": manifest_path}
    out["config"] = config
    return out


def test_byte_identical_across_runs_and_num_proc(runs):
    for key in ("train", "val", "manifest_path"):
        assert runs[1][key].read_bytes() == runs[2][key].read_bytes(), key
    assert not [p for p in runs[1]["train"].parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_exact_counts_per_source(runs):
    config, manifest = runs["config"], runs[1]["manifest"]
    rows = _jsonl(runs[1]["train"]) + _jsonl(runs[1]["val"])
    expected = dict(zip([s.name for s in config.sources], allocate(1000, [0.3, 0.35, 0.35]), strict=True))
    assert expected == {"replay": 300, "code": 350, "reasoning": 350}
    assert Counter(r["source"] for r in rows) == expected
    assert {s["name"]: s["selected"] for s in manifest["sources"]} == expected
    assert all(set(r) == {"text", "source"} for r in rows)


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_prefix_follows_the_ratios(runs, split):
    sources = [r["source"] for r in _jsonl(runs[1][split])]
    totals = Counter(sources)
    running: Counter = Counter()
    for k, s in enumerate(sources, 1):
        running[s] += 1
        for name, n in totals.items():
            assert abs(running[name] - k * n / len(sources)) <= 1.0, (split, k, name)
    # The files' shares stay near the config's (the split only removes ~10% at random).
    for name, ratio in [("replay", 0.3), ("code", 0.35), ("reasoning", 0.35)]:
        assert abs(totals[name] / len(sources) - ratio) < (0.02 if split == "train" else 0.08)


def test_val_split_is_stable_and_disjoint(runs, tmp_path, planted_reasoning, cache_dir):
    train = {r["text"] for r in _jsonl(runs[1]["train"])}
    val = {r["text"] for r in _jsonl(runs[1]["val"])}
    assert train and val and not train & val
    assert all(is_val(text_hash(t), 0.1) for t in val) and not any(is_val(text_hash(t), 0.1) for t in train)
    # A different, smaller mixture puts every shared text on the same side.
    small = load_mixture_config(write_config(tmp_path / "cfg", planted_reasoning, total_samples=400, seed=3))
    prepare_mixture(small, tmp_path / "out", cache_dir=cache_dir)
    s_train, s_val, _ = prepared_paths(small, tmp_path / "out")
    assert not {r["text"] for r in _jsonl(s_train)} & val
    assert not {r["text"] for r in _jsonl(s_val)} & train


def test_manifest_numbers_add_up(runs):
    manifest, config = runs[1]["manifest"], runs["config"]
    assert json.loads(runs[1]["manifest_path"].read_text()) == manifest
    assert manifest["config_sha256"] == config.sha256 == load_mixture_config(config.path).sha256
    for s in manifest["sources"]:
        assert (
            s["rows_read"] == sum(s["dropped"].values()) + s["decontaminated"] + s["duplicates"] + s["kept"]
        )
        assert s["rows_read"] <= s["rows_total"]
        assert (
            s["train"] + s["val"]
            == s["selected"]
            == round(s["selected"] * s["repeat_factor"] / s["repeat_factor"])
        )
        assert s["unique_selected"] == min(s["kept"], s["selected"]) and s["max_uses_per_row"] == 1
        assert all(f["sha256"] and f["bytes"] > 0 for f in s["data_files"])
    assert sum(s["sample_share"] for s in manifest["sources"]) == pytest.approx(1.0)
    assert sum(s["token_share"] for s in manifest["sources"]) == pytest.approx(1.0, abs=1e-5)
    for split in ("train", "val"):
        info, path = manifest["outputs"][split], runs[1][split]
        data = path.read_bytes()
        assert info["file"] == path.name and info["bytes"] == len(data)
        assert info["sha256"] == hashlib.sha256(data).hexdigest()
        assert info["rows"] == data.count(b"\n") == sum(s[split] for s in manifest["sources"])
    assert manifest["outputs"]["train"]["rows"] + manifest["outputs"]["val"]["rows"] == 1000
    assert (
        manifest["decontamination"]["ngram"] == 13 and manifest["decontamination"]["sets"][0]["rows"] == 14042
    )
    assert {"datasets", "numpy", "pyarrow"} <= set(manifest["versions"])


def test_nothing_overlaps_the_eval_set_and_no_duplicates(runs, mmlu_test_ngrams):
    texts = [r["text"] for r in _jsonl(runs[1]["train"]) + _jsonl(runs[1]["val"])]
    assert not mmlu_test_ngrams.contaminated(texts).any()
    assert len(set(texts)) == len(texts)  # no repeats needed here, and dedup leaves none


def test_short_source_repeats_and_exact_decontamination(tmp_path, planted_reasoning, cache_dir, aux_unique):
    """Reasoning needs 1,300 rows from ~1,218 clean ones: every row is read, so the counts are exact."""
    path = write_config(tmp_path / "cfg", planted_reasoning, total_samples=2600, val_ratio=0.05)
    raw = yaml.safe_load(path.read_text())
    raw["sources"] = [
        raw["sources"][0] | {"ratio": 0.5},
        raw["sources"][2] | {"ratio": 0.5, "max_repeats": 2},
    ]
    path.write_text(yaml.safe_dump(raw))
    manifest = prepare_mixture(load_mixture_config(path), tmp_path / "out", num_proc=2, cache_dir=cache_dir)
    reasoning = manifest["sources"][1]
    assert reasoning["rows_read"] == reasoning["rows_total"] == 1218 + PLANTED_TEST_ROWS + PLANTED_DUPLICATES
    assert reasoning["decontaminated"] == PLANTED_TEST_ROWS
    assert reasoning["duplicates"] == PLANTED_DUPLICATES + 1218 - aux_unique
    assert reasoning["kept"] == reasoning["unique_selected"] == aux_unique
    assert reasoning["selected"] == 1300 and reasoning["max_uses_per_row"] == 2
    assert reasoning["repeat_factor"] == pytest.approx(1300 / aux_unique, abs=1e-6)
    train, val, _ = prepared_paths(load_mixture_config(path), tmp_path / "out")
    rows = [r["text"] for r in _jsonl(train) + _jsonl(val) if r["source"] == "reasoning"]
    uses = Counter(rows)
    assert len(rows) == 1300 and len(uses) == aux_unique and max(uses.values()) == 2
    assert sum(1 for n in uses.values() if n == 2) == 1300 - aux_unique


def test_short_source_without_repeats_fails_with_numbers(tmp_path, planted_reasoning, cache_dir, aux_unique):
    path = write_config(tmp_path / "cfg", planted_reasoning, total_samples=4000)
    with pytest.raises(UserError) as e:
        prepare_mixture(load_mixture_config(path), tmp_path / "out", cache_dir=cache_dir)
    msg = str(e.value)
    assert (
        "'reasoning'" in msg
        and f"{aux_unique} rows available" in msg
        and "1400 needed" in msg
        and "max_repeats: 2" in msg
    )
    assert not (tmp_path / "out").exists()


def test_config_sha_and_paths(tmp_path, planted_reasoning):
    a = load_mixture_config(write_config(tmp_path / "a", planted_reasoning))
    b = load_mixture_config(write_config(tmp_path / "b", planted_reasoning))
    assert a.sha256 == b.sha256  # same content, same absolute data paths
    assert a.name == "mix" and [s.name for s in a.sources] == ["replay", "code", "reasoning"]
    assert [s.ratio for s in a.sources] == [0.3, 0.35, 0.35]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "mix.yaml").write_text(
        (tmp_path / "a" / "mix.yaml").read_text().replace(str(planted_reasoning), "reasoning.jsonl")
    )
    c = load_mixture_config(tmp_path / "c" / "mix.yaml")
    assert c.sources[2].data_files == (str(tmp_path / "c" / "reasoning.jsonl"),)  # relative to the config
    assert c.sha256 != a.sha256
    assert prepared_paths(a, tmp_path) == (
        tmp_path / "mix_train.jsonl",
        tmp_path / "mix_val.jsonl",
        tmp_path / "mix_manifest.json",
    )


def test_summary_fits_one_screen_and_hub_revision_is_read_from_the_cache(runs):
    from dataset.mixture import format_summary
    from dataset.sources import _resolved_revision

    summary = format_summary(runs[1]["manifest"])
    lines = summary.splitlines()
    assert len(lines) <= 15 and max(map(len, lines)) <= 140
    assert all(name in summary for name in ("replay", "code", "reasoning"))

    class FakeHubDataset:
        cache_files = [
            {"filename": f"/c/roneneldan___tiny_stories/default/0.0.0/{'ab12' * 10}/tiny_stories-train.arrow"}
        ]

    assert _resolved_revision(FakeHubDataset()) == "ab12" * 10
    assert (
        _resolved_revision(
            type(
                "Local",
                (),
                {"cache_files": [{"filename": "/c/json/default-x/0.0.0/" + "f" * 64 + "/x.arrow"}]},
            )()
        )
        is None
    )
