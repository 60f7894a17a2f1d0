"""Training a token mixture with stages (issue 13, the trainer's side) on real rows from ../shared/data.

prepare_dataset writes the stages in order; the trainer trains every row of a stage before any
row of the next (no step and no packed row mixes two stages), logs the stage, compares the
realized token shares per stage with the plan, can put the WSD decay exactly on the last stage,
and resumes across a stage boundary bit for bit.
"""

from __future__ import annotations

import json
import re
import textwrap

import pytest

from tests.helpers import bad, run_script, shared_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def staged(tmp_path_factory, tokenizer_dir):
    d = shared_file()
    folder = tmp_path_factory.mktemp("staged")
    cfg = folder / "staged.yaml"
    cfg.write_text(
        textwrap.dedent(f"""\
        name: staged
        mix_by: tokens
        total_tokens: 36000
        tokenizer: {tokenizer_dir}
        val_ratio: 0.05
        seed: 5
        sources:
          - {{name: replay, data_files: {d}/tinystories/validation_first1000.jsonl}}
          - {{name: code, data_files: {d}/mbpp/mbpp.jsonl, format: template, template: "{{text}}\\n{{code}}"}}
          - {{name: reasoning, data_files: {d}/mmlu/auxiliary_train_subset.jsonl, format: mmlu}}
        stages:
          - {{name: main, fraction: 0.7, ratios: {{replay: 0.6, code: 0.2, reasoning: 0.2}}}}
          - {{name: anneal, fraction: 0.3, ratios: {{replay: 0.2, code: 0.4, reasoning: 0.4}}}}
        """)
    )
    run_script("scripts/prepare_dataset.py", "--config", str(cfg), "--output_dir", str(folder / "data"))
    return cfg, folder / "data"


def midtrain(cfg, data, pretrained, out, *extra):
    return [
        "trainer/train_midtrain.py",
        "--data_config",
        str(cfg),
        "--use_prepared",
        "--prepared_dir",
        str(data),
        "--from_weight",
        "pretrain",
        "--save_dir",
        str(pretrained),
        "--checkpoint_dir",
        str(out),
        "--cache_dir",
        str(out / "cache"),
        "--save_weight",
        f"st_{out.name}",
        "--max_seq_len",
        "128",
        "--batch_size",
        "8",
        "--log_interval",
        "1",
        "--eval_interval",
        "0",
        "--eval_batches",
        "2",
        "--dtype",
        "float32",
        *extra,
    ]


def records(pretrained, out):
    lines = (pretrained / f"st_{out.name}_64_metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_stages_train_in_order_with_the_planned_shares(staged, pretrained, tmp_path):
    cfg, data = staged
    out = tmp_path / "run"
    proc = run_script(*midtrain(cfg, data, pretrained, out, "--lr_schedule", "wsd", "--decay_ratio", "stage"))
    log = proc.stdout
    m = re.search(r"Stages, in order: main \((\d+) steps/epoch\), anneal \((\d+) steps/epoch\)", log)
    assert m is not None, log[-2000:]
    main_steps, anneal_steps = int(m[1]), int(m[2])
    total = main_steps + anneal_steps
    # every step of the first stage before any of the second, and the log line says which
    stages = re.findall(r"Epoch:\[1/1\]\((\d+)/\d+\) stage:(\w+)", log)
    assert [name for _, name in stages] == ["main"] * main_steps + ["anneal"] * anneal_steps
    # the WSD decay is exactly the last stage: LR falls from the first anneal step, never before
    assert f"{anneal_steps} decay steps (the last stage 'anneal') out of {total}" in log
    train = [r for r in records(pretrained, out) if r["kind"] == "train"]
    lrs = [r["lr"] for r in train]
    assert lrs[main_steps - 1] == max(lrs) and all(
        a > b for a, b in zip(lrs[main_steps - 1 :], lrs[main_steps:], strict=False)
    )
    # realized shares per stage: every train token of the stage once (to within the one token per
    # stage that is never a target), so they are the prepared train split's shares, which
    # prepare_dataset makes the plan to within one document (tests/dataset/test_mixture_tokens.py)
    summary = next(r for r in records(pretrained, out) if r["kind"] == "summary")
    manifest = json.loads((data / "staged_manifest.json").read_text())
    for st in manifest["plan"]["stages"]:
        realized = summary["stage_token_share"][st["name"]]
        for src in st["sources"]:
            prepared = src["train_tokens"] / st["train_tokens"]
            assert realized[src["name"]] == pytest.approx(prepared, abs=1e-3), (st["name"], src["name"])
            assert abs(prepared - src["share"]) < 0.05, (st["name"], src["name"])  # a document is up to ~4%
    assert "stage main:" in log and "stage anneal:" in log and "plan (tokens)" in log


def test_resume_across_the_stage_boundary_is_bit_identical(staged, pretrained, tmp_path):
    cfg, data = staged
    full, part = tmp_path / "full", tmp_path / "part"
    proc = run_script(*midtrain(cfg, data, pretrained, full))
    m = re.search(r"Stages, in order: main \((\d+) steps/epoch\)", proc.stdout)
    assert m is not None, proc.stdout[-2000:]
    main_steps = int(m[1])
    run_script(*midtrain(cfg, data, pretrained, part, "--stop_after", str(main_steps - 1)))
    run_script(*midtrain(cfg, data, pretrained, part, "--from_resume", "1"))
    a = [(r["step"], r["loss"]) for r in records(pretrained, full) if r["kind"] == "train"]
    b = [(r["step"], r["loss"]) for r in records(pretrained, part) if r["kind"] == "train"]
    assert a == b and len(a) > main_steps


def test_a_capped_run_says_which_stages_it_will_not_reach(staged, pretrained, tmp_path):
    cfg, data = staged
    proc = run_script(*midtrain(cfg, data, pretrained, tmp_path / "cap", "--max_steps", "3"))
    assert "ends the run in stage 'main': stage(s) 'anneal' will not be reached" in proc.stdout
    line = bad(
        *midtrain(
            cfg,
            data,
            pretrained,
            tmp_path / "c2",
            "--max_steps",
            "3",
            "--lr_schedule",
            "wsd",
            "--decay_ratio",
            "stage",
        )
    )
    assert "--decay_ratio stage: --max_steps 3 ends the run before its last stage 'anneal'" in line


def test_a_decay_ratio_without_wsd_is_refused_not_ignored(tmp_path):
    line = bad(
        "trainer/train_midtrain.py", "--data_config", str(tmp_path / "any.yaml"), "--from_weight", "x",
        "--lr_schedule", "rewarm", "--decay_ratio", "stage",
    )  # fmt: skip
    assert "--decay_ratio sets the decay of --lr_schedule wsd" in line and "rewarm" in line
