"""Every YAML shipped under config/ loads and validates (litgpt's config-hub test).

Each top folder of config/ registers its loader in VALIDATORS; a loader takes the path
and raises on anything invalid (unknown keys included). A YAML in a folder without a
validator fails, so no config goes unchecked. To add a folder (e.g. config/experiments/):

    from trainer.experiments import load_experiment_config
    VALIDATORS["experiments"] = load_experiment_config
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dataset.blend import assign_stages, repeat_until
from dataset.mixture import load_mixture_config
from dataset.mixture_config import stage_plan
from trainer.ablation.config import load_experiment_config
from trainer.paths import REPO_ROOT

CONFIG_DIR = REPO_ROOT / "config"

VALIDATORS: dict[str, Callable[[Path], object]] = {
    "data": load_mixture_config,
    "experiments": load_experiment_config,
}

CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*") if p.suffix in (".yaml", ".yml"))


def _id(path: Path) -> str:
    return str(path.relative_to(CONFIG_DIR))


def test_configs_exist():
    assert any(p.relative_to(CONFIG_DIR).parts[0] == "data" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=_id)
def test_config_validates(path: Path):
    folder = path.relative_to(CONFIG_DIR).parts[0]
    validator = VALIDATORS.get(folder)
    assert validator is not None, (
        f"{_id(path)}: no validator for config/{folder}/; register one in tests/test_configs.py"
    )
    validator(path)


def test_midtrain_default_is_the_mixture_we_were_asked_for():
    config = load_mixture_config(CONFIG_DIR / "data" / "midtrain" / "phase1" / "default.yaml")
    assert config.name == "midtrain_phase1_default"
    assert config.total_samples == 100_000 and config.val_ratio == 0.05 and config.dedup
    by_name = {s.name: s for s in config.sources}
    replay, code, reasoning = by_name["replay"], by_name["code"], by_name["reasoning"]
    assert (replay.dataset, replay.ratio, replay.filters["length"], replay.filters["quality"]) == (
        "roneneldan/TinyStories",
        0.3,
        {"min": 100, "max": 2000},
        {"threshold": 0.3},
    )
    assert (code.dataset, code.format.format, code.ratio) == (
        "iamtarun/python_code_instructions_18k_alpaca",
        "alpaca",
        0.35,
    )
    assert code.filters == {
        "length": {"min": 50, "max": 2000},
        "quality": {"threshold": 0.2},
        "code_quality": {"threshold": 0.1},
    }
    assert code.max_repeats >= 2  # 35,000 rows from 18,612
    assert (reasoning.dataset, reasoning.subset, reasoning.format.format) == (
        "cais/mmlu",
        "auxiliary_train",
        "mmlu",
    )
    evals = {(e.dataset, e.split) for e in config.decontaminate}
    assert evals == {("cais/mmlu", "test"), ("cais/mmlu", "validation"), ("cais/mmlu", "dev")}


def test_local_variants_point_at_shared_data():
    for rel in ("midtrain/phase1/local.yaml", "midtrain/phase1/local_tokens.yaml", "pretrain/local.yaml"):
        config = load_mixture_config(CONFIG_DIR / "data" / rel)
        for ref in [*config.sources, *config.decontaminate]:
            for pattern in ref.data_files:
                assert Path(pattern).is_relative_to(REPO_ROOT.parent / "shared" / "data"), pattern
    names = [
        s.name
        for s in load_mixture_config(CONFIG_DIR / "data" / "midtrain" / "phase1" / "local.yaml").sources
    ]
    assert names == ["replay", "code", "reasoning"]


def test_default_names_follow_the_path():
    names = {_id(p): load_mixture_config(p).name for p in CONFIGS if _id(p).startswith("data/")}
    assert names["data/demo.yaml"] == "demo"
    assert names["data/pretrain/local.yaml"] == "pretrain_local"
    assert names["data/midtrain/phase1/local.yaml"] == "midtrain_phase1_local"


PHASE1 = CONFIG_DIR / "data" / "midtrain" / "phase1"
DESIGN_FILTERS = {
    "replay": {"length": {"min": 100, "max": 2000}, "quality": {"threshold": 0.3}},
    "code": {
        "length": {"min": 50, "max": 2000},
        "quality": {"threshold": 0.2},
        "code_quality": {"threshold": 0.1},
    },
    "reasoning": {"length": {"min": 20, "max": 1000}, "quality": {"threshold": 0.2}},
}


@pytest.mark.parametrize("path", sorted(PHASE1.glob("*.yaml")), ids=_id)
def test_phase1_configs_carry_the_design_filters(path: Path):
    """Every source of every phase-1 config has the design note's filters; on the Hub the reasoning
    length has no maximum, and the file says why (RACE passages)."""
    config = load_mixture_config(path)
    assert [s.name for s in config.sources] == ["replay", "code", "reasoning"]
    for source in config.sources:
        expected = DESIGN_FILTERS[source.name]
        if source.name == "reasoning" and source.dataset:
            expected = {**expected, "length": {"min": 20, "max": None}}
            assert "RACE" in path.read_text()
        assert source.filters == expected, source.name


def test_token_variants_are_the_design_recipe_in_tokens():
    for name, rows in (("local_tokens.yaml", "local.yaml"), ("default_tokens.yaml", "default.yaml")):
        tokens, reference = load_mixture_config(PHASE1 / name), load_mixture_config(PHASE1 / rows)
        assert tokens.mix_by == "tokens" and tokens.total_samples is None
        assert tokens.total_tokens is not None and tokens.total_tokens > 0
        assert reference.mix_by == "rows" and reference.total_tokens is None
        assert {s.name: s.ratio for s in tokens.sources} == {"replay": 0.3, "code": 0.35, "reasoning": 0.35}
        assert tokens.tokenizer == str(REPO_ROOT / "out" / "tokenizer")  # train_tokenizer's default output
        assert [(s.dataset, s.data_files, s.format) for s in tokens.sources] == [
            (s.dataset, s.data_files, s.format) for s in reference.sources
        ]
        assert tokens.decontaminate == reference.decontaminate
    assert load_mixture_config(PHASE1 / "default_tokens.yaml").name == "midtrain_phase1_default_tokens"


def test_readme_worked_example_numbers(tmp_path):
    """config/README.md's worked example: its YAML validates and its numbers are the code's."""
    readme = (CONFIG_DIR / "README.md").read_text()
    example = readme.split("### Worked example: tokens with two stages")[1]
    m = re.search(r"```yaml\n(.*?)```", example, re.S)
    assert m is not None
    yaml_text = m.group(1)
    (tmp_path / "example.yaml").write_text(yaml_text)
    config = load_mixture_config(tmp_path / "example.yaml")
    names = [s.name for s in config.sources]
    assert config.total_tokens == 10_000 and config.tokenizer == str(
        (tmp_path / "../../out/tokenizer").resolve()
    )
    plan = stage_plan(config.total, config.stages, [s.ratio for s in config.sources], names)
    assert plan == [[4000, 4000, 0], [0, 500, 1500]]
    assert [round(s.ratio, 9) for s in config.sources] == [0.4, 0.45, 0.15]
    code_rows = [300, 1000, 2500, 400, 900, 700, 800]
    picked = repeat_until(code_rows, sum(row[1] for row in plan), np.random.default_rng(0))
    assert picked.tolist() == [0, 1, 2, 3, 4] and sum(code_rows[:5]) == 5100
    stages = assign_stages(code_rows[:5], [row[1] for row in plan])
    assert stages.tolist() == [0, 0, 0, 0, 1]
    assert "written 4200" in example and "5,100 tokens" in example
