"""The ablation study: its maths, its config, and a minutes-long run of the whole thing."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from model.errors import UserError
from tests.helpers import REPO, load_script, run_script, shared_file
from trainer.ablation.config import flags, load_experiment_config, variant_mixture
from trainer.ablation.stats import early_spike, mean_ci95, wilson95
from trainer.runtime import resolve_dtype


def test_mean_ci95_matches_the_t_interval():
    m, h = mean_ci95([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-3)
    m, h = mean_ci95([5.0])
    assert m == 5.0 and math.isnan(h)


def test_wilson_interval():
    p, lo, hi = wilson95(25, 100)
    assert p == 0.25 and lo == pytest.approx(0.1754, abs=1e-3) and hi == pytest.approx(0.3430, abs=1e-3)
    p, lo, hi = wilson95(0, 10)
    assert p == 0 and lo == pytest.approx(0, abs=1e-12) and 0 < hi < 0.35
    # no bound outside [0, 1] at the ends (printed "-0.00%" before)
    for n in (20, 100, 300, 4593):
        assert wilson95(0, n)[1] == 0.0 and wilson95(n, n)[2] == 1.0


def test_early_spike():
    evals = [
        {"step": 0, "loss_r": 2.0},
        {"step": 1, "loss_r": 2.5},
        {"step": 2, "loss_r": 2.2},
        {"step": 10, "loss_r": 9.0},
    ]
    assert early_spike(evals, "loss_r", until_step=2) == pytest.approx(0.5)
    assert early_spike(
        [{"step": 0, "loss_r": 2.0}, {"step": 1, "loss_r": 1.5}], "loss_r", 1
    ) == pytest.approx(-0.5)


def test_flags():
    want = ["--max_steps", "3", "--p", "a", "--p", "b", "--use_compile"]
    assert flags({"max_steps": 3, "use_compile": True, "x": False, "p": ["a", "b"]}) == want
    assert flags({"x": False, "p": ["a", "b"], "use_compile": True, "max_steps": 3}) == want  # any order


def test_variant_mixture_is_a_token_mixture_with_the_replay_share(tmp_path, tokenizer_dir):
    from dataset.mixture import load_mixture_config

    base = REPO / "config" / "data" / "ablation" / "midtrain_local.yaml"
    for share in (0.0, 0.2, 0.4):
        raw = variant_mixture(base, "replay", share, "v", tokenizer_dir, 50_000)
        assert raw["mix_by"] == "tokens" and raw["total_tokens"] == 50_000 and "total_samples" not in raw
        ratios = {s["name"]: s["ratio"] for s in raw["sources"]}
        assert sum(ratios.values()) == pytest.approx(1.0, abs=1e-9)
        assert ratios.get("replay", 0.0) == pytest.approx(share)
        assert ratios["code"] == pytest.approx(ratios["reasoning"], abs=1e-6)  # 35:35 keeps its 1:1 split
        path = tmp_path / f"v{share}.yaml"
        path.write_text(yaml.safe_dump(raw))
        config = load_mixture_config(path)  # a valid token mixture, with absolute paths
        assert config.mix_by == "tokens" and config.tokenizer is not None
        assert Path(config.tokenizer) == tokenizer_dir.resolve()


def test_bad_experiment_config(tmp_path):
    good = yaml.safe_load((REPO / "config" / "experiments" / "replay_ablation_tiny.yaml").read_text())
    good["data"] = {
        k: str((REPO / "config" / "experiments" / v).resolve())
        if k in ("pretrain", "midtrain", "mbpp")
        else v
        for k, v in good["data"].items()
    }
    good.pop("eval")

    def load(raw):
        p = tmp_path / "x.yaml"
        p.write_text(yaml.safe_dump(raw))
        return load_experiment_config(p)

    load(good)
    with pytest.raises(UserError, match="unknown key"):
        load({**good, "sedes": [1]})
    with pytest.raises(UserError, match="unknown flag"):
        load({**good, "midtrain": {"args": {"max_step": 3}}})
    with pytest.raises(UserError, match="replay must be in"):
        load({**good, "variants": [{"name": "a", "replay": 1.5}]})
    with pytest.raises(UserError, match="replay_source"):
        load({**good, "data": {**good["data"], "replay_source": "nope"}})
    with pytest.raises(UserError, match=r"eval.humaneval .*nope.jsonl not found; fix the path"):
        load({**good, "eval": {"humaneval": "nope.jsonl"}})


@pytest.mark.slow
@pytest.mark.long
def test_tiny_study_end_to_end(tmp_path):
    shared_file("mmlu", "dev.jsonl")
    out = tmp_path / "study"

    def study(config="config/experiments/replay_ablation_tiny.yaml"):
        return run_script(
            "scripts/run_ablation.py", "--config", str(config), "--out_dir", str(out), timeout=900
        )

    proc = study()
    assert "Report:" in proc.stdout + proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert set(results["variants"]) == {"replay0", "replay30_carry"}
    assert set(results["sources"]) >= {"replay", "code", "reasoning", "mbpp"}
    for v in results["variants"].values():
        assert v["seeds"] == [1, 2]
        for src in results["sources"]:
            mean, half = v["delta"][src]
            assert math.isfinite(mean) and math.isfinite(half)
        assert math.isfinite(v["early_spike_replay"][0])
        assert v["mmlu"]["total"] == 60  # 30 questions x 2 seeds
        assert 0.0 < v["mmlu"]["letter_mass"] <= 1.0
        gen = v["generation"]  # the second eval_llm pass: 2 problems x 2 seeds, pooled
        assert {k: g["total"] for k, g in gen.items()} == {"humaneval_pass@1": 4}
    for v in results["variants"].values():  # eval_llm's held-out bits per byte, each document alone
        assert set(v["bpb"]) == set(results["sources"]) | {"all"}
        assert all(math.isfinite(m) and 0 < m < 10 and math.isfinite(h) for m, h in v["bpb"].values())
    assert set(results["pretrained"]["bpb"]) == set(results["sources"]) | {"all"}
    assert (
        results["base_label"] == "pretrained"
        and results["pretrained"]["generation"]["humaneval_pass@1"]["total"] == 2
    )
    # replay shares are shares of tokens: 30% of the tokens trained on, not 30% of (longer) rows
    assert results["variants"]["replay0"]["replay_token_share"] == 0.0
    assert results["variants"]["replay30_carry"]["replay_token_share"] == pytest.approx(0.3, abs=0.08)
    # every run was evaluated densely in its early window and on the same held-out set
    for r in results["runs"].values():
        assert r["dtype"] == str(resolve_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
        steps = [p["step"] for p in r["curve"]]
        assert steps[:2] == [0, 1] and steps[-1] == r["steps"]
    md = (out / "report.md").read_text()
    assert "Early forgetting spike" in md and "MMLU-format accuracy" in md and "Wilson" in md
    assert "| pretrained | 0 / 2 = 0.0% [0.0, " in md  # the generation table, base row first
    assert "## Held-out bits per byte" in md
    assert "reused" not in md  # everything ran in this invocation
    for png in ("heldout_loss.png", "final_deltas.png", "early_spike.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run reuses every finished step, the two evaluation passes included
    again = study()
    assert "eval_mmlu: already done" in again.stdout + again.stderr
    # and its report says so instead of a near-zero training cost
    reused = {"pretrain": 1, "midtrain": 4, "eval": 2}
    assert json.loads((out / "results.json").read_text())["reused_runs"] == reused
    md = (out / "report.md").read_text()
    assert "(+ 4 runs reused from an earlier invocation)" in md and "(+ 1 run reused" in md
    assert "(+ 2 runs reused" in md
    # a changed flag of one variant trains its two runs again, and both evaluation passes run again
    config = REPO / "config" / "experiments" / "replay_ablation_tiny.yaml"
    raw = yaml.safe_load(config.read_text())
    for section in ("data", "eval"):  # the config's paths, relative to its folder
        for k, v in raw[section].items():
            if isinstance(v, str) and (config.parent / v).exists():
                raw[section][k] = str((config.parent / v).resolve())
    raw["variants"][0]["args"] = {"max_steps": 6}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(raw))
    study(changed)
    results = json.loads((out / "results.json").read_text())
    assert results["reused_runs"] == {"pretrain": 1, "midtrain": 2}
    assert results["runs"]["replay0_s1"]["steps"] == 6


def test_a_study_starting_from_a_checkpoint_file_reads_its_tokenizer(tmp_path, pretrained, tokenizer_dir):
    """start_from: a .pth checkpoint: prepare_dataset needs a tokenizer folder, so the checkpoint's
    stored tokenizer is written out (the same tokenizer, by its sha256); a model folder is its own."""
    from dataset.tokenizer import load_tokenizer, tokenizer_sha256

    ablation = load_script("scripts/run_ablation.py", "run_ablation_for_test")
    got, hidden = ablation.start_model(pretrained / "pretrain_64.pth", tmp_path / "tokenizer")
    assert got == tmp_path / "tokenizer" and hidden == 64
    assert tokenizer_sha256(load_tokenizer(got)) == tokenizer_sha256(load_tokenizer(tokenizer_dir))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 576}')
    assert ablation.start_model(folder, tmp_path / "unused") == (folder, 576)
    assert not (tmp_path / "unused").exists()
