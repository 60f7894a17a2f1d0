"""Mid-training on the real local mixture (../shared/data through prepare_dataset)."""

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, bad, run_script, shared_file


def mixture_config(folder, total=600, code_ratio=0.35, name="mix") -> str:
    """A small version of config/data/midtrain/phase1/local.yaml over the shared data."""
    d = shared_file()
    path = folder / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        name: {name}
        total_samples: {total}
        val_ratio: 0.1
        seed: 7
        sources:
          - name: replay
            data_files: {d}/tinystories/validation_first1000.jsonl
            format: text
            ratio: {round(0.65 - code_ratio, 2)}
          - name: code
            data_files: {d}/code_instructions/code_alpaca_2k.jsonl
            format: alpaca
            ratio: {code_ratio}
          - name: reasoning
            data_files: {d}/mmlu/auxiliary_train_subset.jsonl
            format: mmlu
            ratio: 0.35
        decontaminate:
          - {{data_files: {d}/mmlu/test.jsonl, format: mmlu}}
        """)
    )
    return str(path)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mix")
    cfg = mixture_config(folder)
    run_script("scripts/prepare_dataset.py", "--config", cfg, "--output_dir", str(folder / "data"))
    return cfg, folder / "data"


def midtrain_args(cfg, data_dir, pretrained, out, *extra):
    return [
        "trainer/train_midtrain.py",
        "--data_config",
        cfg,
        "--use_prepared",
        "--prepared_dir",
        str(data_dir),
        "--save_dir",
        str(pretrained),
        "--checkpoint_dir",
        str(out),
        "--cache_dir",
        str(out / "cache"),
        "--save_weight",
        f"mid_{out.name}",
        "--max_seq_len",
        "128",
        "--batch_size",
        "8",
        "--log_interval",
        "1",
        "--eval_batches",
        "4",
        *extra,
    ]


def records(pretrained, out, kind):
    lines = (pretrained / f"mid_{out.name}_64_metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_midtrain_lowers_code_loss_and_reports_per_source(prepared, pretrained, tmp_path):
    cfg, data = prepared
    out = tmp_path / "run"
    proc = run_script(
        *midtrain_args(
            cfg,
            data,
            pretrained,
            out,
            "--from_weight",
            "pretrain",
            "--epochs",
            "2",
            "--max_steps",
            "30",
            "--learning_rate",
            "2e-3",
            "--eval_interval",
            "10",
        )
    )
    log = proc.stdout
    assert f"Loaded pretrained model from: {pretrained / 'pretrain_64.pth'}" in log
    assert "Mid-training with LR re-warmup:" in log and "warmup steps out of" in log
    assert "LR schedule: 2.00e-04 → 2.00e-03 (warmup) → 2.00e-04 (decay)" in log
    assert "Epoch:[1/2](1/" in log and "MFU:" in log and "tokens/s:" in log
    evals = records(pretrained, out, "eval")
    for e in evals:
        for src in ("all", "replay", "code", "reasoning"):
            assert math.isfinite(e[f"loss_{src}"]), e
    first, last = evals[0], evals[-1]
    assert first["step"] == 0 and last["step"] > 0
    assert last["loss_code"] < first["loss_code"] - 0.3, (first, last)
    # the logged lr is the one the schedule gives at that step
    train = records(pretrained, out, "train")
    total = int(log.split("warmup steps out of ")[1].split()[0])
    from trainer.schedule import get_midtrain_lr

    for r in train:
        assert r["lr"] == pytest.approx(get_midtrain_lr(r["step"] - 1, total, 2e-3, 0.05))
    # realized token share is reported and follows the prepared data
    assert "Share of tokens per source" in log and set(k for k in train[-1] if k.startswith("share_")) == {
        "share_replay",
        "share_code",
        "share_reasoning",
    }
    assert "Validation loss per source: step 0 ->" in log
    # every evaluation after the first says each source's change since the starting model (issue 22)
    for e in evals[1:]:
        deltas = {k: e[f"loss_{k}"] - first[f"loss_{k}"] for k in ("replay", "code", "reasoning")}
        assert e["val_loss_delta"] == pytest.approx(deltas, abs=1e-12)
        line = " ".join(f"{k} {v:+.4f}" for k, v in e["val_loss_delta"].items())
        assert f"eval step {e['step']}/{total}: val_loss" in log and f"  vs start: {line}" in log
    summary = next(
        r
        for r in map(json.loads, (pretrained / "mid_run_64_metrics.jsonl").read_text().splitlines())
        if r["kind"] == "summary"
    )
    assert summary["val_loss_change"]["code"] == pytest.approx(
        {
            "start": first["loss_code"],
            "end": last["loss_code"],
            "change": last["loss_code"] - first["loss_code"],
        }
    )


def test_the_forgetting_guard_warns_and_stops_with_a_resume_checkpoint(prepared, pretrained, tmp_path):
    """--max_forgetting replay=0.01 --stop_on_forgetting with an LR that wrecks the model: at the first
    evaluation after step 0 replay's loss has risen by more than 0.01 nats/token: one warning line
    with the rise, and the run stops there with a resume checkpoint."""
    cfg, data = prepared
    out = tmp_path / "guard"
    flags = [
        "--from_weight",
        "pretrain",
        "--max_steps",
        "12",
        "--learning_rate",
        "0.5",
        "--warmup_ratio",
        "0",
    ]
    proc = run_script(*midtrain_args(cfg, data, pretrained, out, *flags, "--eval_interval", "3",
                                     "--max_forgetting", "replay=0.01", "--stop_on_forgetting"))  # fmt: skip
    evals = records(pretrained, out, "eval")
    assert [e["step"] for e in evals] == [0, 3]
    rise = evals[1]["loss_replay"] - evals[0]["loss_replay"]
    assert rise > 0.01
    assert (
        f"warning: forgetting: replay's validation loss rose {rise:+.4f} nats/token since step 0"
        in proc.stdout
    )
    assert "Stopping at step 3 of 12: --stop_on_forgetting" in proc.stdout
    assert "stopped at step 3 of 12 (continue with --from_resume 1)" in proc.stdout
    line = bad(*midtrain_args(cfg, data, pretrained, out, *flags, "--max_forgetting", "nosuch=0.1"))
    assert "--max_forgetting nosuch: no such validation source (known: all, " in line
    line = bad(*midtrain_args(cfg, data, pretrained, out, *flags, "--max_forgetting", "replay"))
    assert "--max_forgetting 'replay': give SOURCE=DELTA" in line


def test_resume_is_bit_identical(prepared, pretrained, tmp_path):
    cfg, data = prepared
    common = [
        "--from_weight",
        "pretrain",
        "--max_steps",
        "8",
        "--eval_interval",
        "3",
        "--save_interval",
        "0",
        "--dtype",
        "float32",
    ]
    full, part = tmp_path / "full", tmp_path / "part"
    run_script(*midtrain_args(cfg, data, pretrained, full, *common))
    # stop after step 5 (as if preempted), then continue from the resume checkpoint
    proc = run_script(*midtrain_args(cfg, data, pretrained, part, *common, "--stop_after", "5"))
    assert "stopped at step 5 of 8" in proc.stdout
    run_script(*midtrain_args(cfg, data, pretrained, part, *common, "--from_resume", "1"))
    a = (pretrained / "mid_full_64.pth").read_bytes()
    b = (pretrained / "mid_part_64.pth").read_bytes()
    wa = torch.load(pretrained / "mid_full_64.pth", weights_only=True)["model"]
    wb = torch.load(pretrained / "mid_part_64.pth", weights_only=True)["model"]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert len(a) > 0 and len(b) > 0
    la = [(r["step"], r["loss"]) for r in records(pretrained, full, "train")]
    lb = [(r["step"], r["loss"]) for r in records(pretrained, part, "train")]
    assert la == lb  # every loss, before and after the interruption, bit for bit
    ea = [(r["step"], r["loss_all"]) for r in records(pretrained, full, "eval")]
    eb = [(r["step"], r["loss_all"]) for r in records(pretrained, part, "eval")]
    assert ea == eb


def test_resume_with_another_config_fails(prepared, pretrained, tmp_path):
    cfg, data = prepared
    out = tmp_path / "other"
    common = ["--from_weight", "pretrain", "--max_steps", "4", "--eval_interval", "0"]
    run_script(*midtrain_args(cfg, data, pretrained, out, *common, "--stop_after", "2"))
    other_cfg = mixture_config(tmp_path, total=500, code_ratio=0.3, name="mix")
    run_script("scripts/prepare_dataset.py", "--config", other_cfg, "--output_dir", str(tmp_path / "data2"))
    line = bad(*midtrain_args(other_cfg, tmp_path / "data2", pretrained, out, *common, "--from_resume", "1"))
    assert "--data_config" in line and "contradicts the run being resumed" in line
    # the same file with other contents: the run's identity (the config's sha256) refuses it
    (tmp_path / "same.yaml").write_text(
        Path(cfg).read_text().replace("total_samples: 600", "total_samples: 500")
    )
    Path(cfg).rename(tmp_path / "orig.yaml")
    (tmp_path / "same.yaml").rename(cfg)
    try:
        run_script("scripts/prepare_dataset.py", "--config", cfg, "--output_dir", str(tmp_path / "data3"))
        line = bad(*midtrain_args(cfg, tmp_path / "data3", pretrained, out, *common, "--from_resume", "1"))
        assert "belongs to another run" in line and "data_config_sha256" in line
    finally:
        (tmp_path / "orig.yaml").rename(cfg)


def test_missing_weight_errors(prepared, pretrained, tmp_path):
    cfg, data = prepared
    out = tmp_path / "x"
    line = bad(*midtrain_args(cfg, data, tmp_path, out))
    assert (
        line.startswith("error: Mid-training requires a pretrained checkpoint")
        and "train_pretrain.py" in line
    )
    line = bad(*midtrain_args(cfg, data, pretrained, out, "--from_weight", "nosuch"))
    assert "Mid-training requires a pretrained checkpoint" in line and "pretrain_64.pth" in line
    line = bad(
        *midtrain_args(cfg, data, pretrained, out, "--from_weight", "pretrain", "--hidden_size", "128")
    )
    assert "Mid-training requires a pretrained checkpoint" in line and "pretrain_128.pth" in line


def test_mismatching_tokenizer_or_architecture_is_an_error(prepared, pretrained, tmp_path):
    cfg, data = prepared
    out = tmp_path / "x"
    line = bad(
        *midtrain_args(
            cfg,
            data,
            pretrained,
            out,
            "--from_weight",
            str(pretrained / "pretrain_64.pth"),
            "--num_hidden_layers",
            "4",
        )
    )
    assert "--num_hidden_layers 4 does not match" in line
    other_tok = tmp_path / "tok"
    run_script(
        "scripts/train_tokenizer.py",
        "--data_path",
        str(shared_file("mmlu", "dev.jsonl")),
        "--text_field",
        "question",
        "--vocab_size",
        "300",
        "--output_dir",
        str(other_tok),
    )
    line = bad(
        *midtrain_args(
            cfg, data, pretrained, out, "--from_weight", "pretrain", "--tokenizer_path", str(other_tok)
        )
    )
    assert "is not the tokenizer" in line


def test_use_prepared_checks_files_and_config_hash(prepared, pretrained, tmp_path):
    cfg, data = prepared
    out = tmp_path / "x"
    line = bad(*midtrain_args(cfg, tmp_path / "empty", pretrained, out, "--from_weight", "pretrain"))
    assert "not found" in line and "python scripts/prepare_dataset.py --config" in line
    stale = tmp_path / "stale"
    stale.mkdir()
    for f in data.iterdir():
        (stale / f.name).write_bytes(f.read_bytes())
    manifest = stale / "mix_manifest.json"
    m = json.loads(manifest.read_text())
    m["config_sha256"] = "0" * 64
    manifest.write_text(json.dumps(m))
    line = bad(*midtrain_args(cfg, stale, pretrained, out, "--from_weight", "pretrain"))
    assert "different version" in line and "--overwrite" in line


@pytest.mark.slow
def test_kill_during_save_leaves_previous_checkpoint_loadable(tmp_path):
    """SIGKILL a process in the middle of atomic_torch_save: the old file must still load."""
    target = tmp_path / "state.pth"
    from trainer.checkpoint import atomic_torch_save

    atomic_torch_save({"step": 1, "w": torch.ones(3)}, target)
    code = textwrap.dedent(f"""
        import torch, sys
        from trainer.checkpoint import atomic_torch_save
        big = {{"step": 2, "w": torch.zeros(60_000_000)}}  # 240 MB: the write takes a while
        print("saving", flush=True)
        atomic_torch_save(big, {str(target)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "saving"
    import time

    deadline = time.time() + 30
    while not list(tmp_path.glob(".state.pth.*.tmp")) and time.time() < deadline:
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    state = torch.load(target, weights_only=True)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))


def _paths(cfg, data, pretrained, out):
    return [
        "trainer/train_midtrain.py",
        "--data_config",
        cfg,
        "--use_prepared",
        "--prepared_dir",
        str(data),
        "--save_dir",
        str(pretrained),
        "--checkpoint_dir",
        str(out),
        "--cache_dir",
        str(out / "cache"),
        "--save_weight",
        f"mid_{out.name}",
        "--log_interval",
        "1",
    ]


def test_a_resumed_run_keeps_its_own_settings(prepared, pretrained, tmp_path):
    """Field case 2: stop after step 5 of a run with LR 3e-3 / warmup 0.25 / 12 steps, resume with
    no LR flags at all: the same run, loss for loss and LR for LR (before: LR 3.07e-4 at step 6
    instead of 2.60e-3)."""
    cfg, data = prepared
    run_flags = ["--from_weight", "pretrain", "--learning_rate", "3e-3", "--warmup_ratio", "0.25"]
    run_flags += ["--max_steps", "12", "--batch_size", "4", "--max_seq_len", "64", "--dtype", "float32"]
    run_flags += ["--eval_interval", "0", "--eval_batches", "2"]
    full, part = tmp_path / "full", tmp_path / "part"
    run_script(*_paths(cfg, data, pretrained, full), *run_flags)
    run_script(*_paths(cfg, data, pretrained, part), *run_flags, "--stop_after", "5")
    proc = run_script(*_paths(cfg, data, pretrained, part), "--from_resume", "1", "--save_interval", "1000")
    assert "--save_interval 1000 (the run had" in proc.stdout  # a flag that may change, said
    a = [(r["step"], r["loss"], r["lr"]) for r in records(pretrained, full, "train")]
    b = [(r["step"], r["loss"], r["lr"]) for r in records(pretrained, part, "train")]
    assert a == b and len(a) == 12
    # the validation sample too: start and end are compared on the same rows (not the default 20 batches)
    assert records(pretrained, full, "eval") == records(pretrained, part, "eval") != []
    from trainer.schedule import get_midtrain_lr

    assert b[5][2] == pytest.approx(get_midtrain_lr(5, 12, 3e-3, 0.25)) == pytest.approx(2.6046e-3, rel=1e-4)
    assert "Resuming from" in proc.stdout
    # field case 3.3: the banner says what the resumed run does from where it is, not a fresh schedule
    assert (
        f"LR schedule, resumed at step 5 of 12: {b[5][2]:.2e} at step 6 -> {b[-1][2]:.2e} at step 12"
        in proc.stdout
    )
    assert "Mid-training with LR re-warmup" not in proc.stdout.split("LR schedule, resumed")[0]

    # a flag that contradicts the run is refused in one line naming both values
    line = bad(*_paths(cfg, data, pretrained, part), "--from_resume", "1", "--learning_rate", "1e-3")
    assert "--learning_rate 0.001 contradicts the run being resumed" in line and "learning_rate=0.003" in line
    line = bad(*_paths(cfg, data, pretrained, part), "--from_resume", "1", "--batch_size", "8")
    assert "--batch_size 8" in line or "global_batch_rows" in line
    line = bad(*_paths(cfg, data, pretrained, part), "--from_resume", "1", "--eval_batches", "5")
    assert "--eval_batches 5 contradicts the run being resumed" in line
    # the row layout defines the run too (packing and attention: issue 19)
    line = bad(*_paths(cfg, data, pretrained, part), "--from_resume", "1", "--packing", "concat")
    assert "--packing concat contradicts the run being resumed" in line and "packing=bfd" in line


def test_the_design_notes_resume_command_extends_the_run(prepared, pretrained, tmp_path):
    """`train_midtrain.py --data_config ... --from_resume 1 --epochs 2` after a finished 1-epoch run
    with --batch_size 16: it trains a second epoch with the run's own batch and LR, and the banner
    says how the LR schedule follows (no jump)."""
    cfg, data = prepared
    out = tmp_path / "note"
    first = ["--from_weight", "pretrain", "--epochs", "1", "--batch_size", "16", "--learning_rate", "2e-3"]
    first += ["--warmup_ratio", "0.05", "--max_seq_len", "128", "--eval_interval", "0", "--eval_batches", "2"]
    proc = run_script(*_paths(cfg, data, pretrained, out), *first)
    steps = int(proc.stdout.split(" steps/epoch")[0].rsplit("| ", 1)[1])
    # the note's command as written: no --use_prepared / --prepared_dir, which the run restores
    paths = _paths(cfg, data, pretrained, out)
    at = paths.index("--use_prepared")
    del paths[at : at + 3]
    proc = run_script(*paths, "--from_resume", "1", "--epochs", "2")
    assert "Preparing" not in proc.stdout + proc.stderr  # the prepared files, not a new preparation
    assert f"Run length changed from {steps} to {2 * steps} steps at step {steps}" in proc.stdout
    assert "continues at the LR it ended with (2.00e-04)" in proc.stdout
    assert "LR schedule:" not in proc.stdout and "Mid-training with" not in proc.stdout  # no fresh banner
    train = records(pretrained, out, "train")
    assert [r["step"] for r in train] == list(range(1, 2 * steps + 1))
    assert all(r["lr"] == pytest.approx(2e-4) for r in train[steps - 1 :])  # no LR jump
    assert {r["epoch"] for r in train[steps:]} == {2}
