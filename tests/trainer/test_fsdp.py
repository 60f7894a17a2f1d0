"""--strategy fsdp (FSDP2) and --activation_checkpointing on CPU with gloo (issue 14).

Every run starts from the same saved weights and trains on the field reports' made-up corpus in
fp32, so the numbers of different strategies and process counts can be compared directly.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from tests.helpers import field_case, run_script, torchrun

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def init(field_tokenizer, tmp_path_factory):
    from model import MiniGPTForCausalLM, ModelConfig
    from trainer.checkpoint import atomic_torch_save, weights_state

    folder = tmp_path_factory.mktemp("fsdp_init")
    torch.manual_seed(0)
    model = MiniGPTForCausalLM(
        ModelConfig(
            vocab_size=len(field_tokenizer),
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )  # fmt: skip
    )
    path = folder / "init_64.pth"
    atomic_torch_save(weights_state(model, field_tokenizer, {"stage": "init", "max_seq_len": 64}), path)
    return path


def train(out, init, *extra, ranks: int = 1, batch: int = 8):
    args = [
        "trainer/train_pretrain.py",
        "--data_path",
        str(field_case("madeup_corpus.jsonl")),
        "--from_weight",
        str(init),
        "--max_seq_len",
        "64",
        "--dtype",
        "float32",
        "--learning_rate",
        "3e-3",
        "--max_steps",
        "6",
        "--log_interval",
        "1",
        "--eval_interval",
        "0",
        "--save_interval",
        "0",
        "--batch_size",
        str(batch // ranks),
        "--save_dir",
        str(out),
        "--checkpoint_dir",
        str(out),
        "--cache_dir",
        str(out.parent / "cache"),
        *extra,
    ]
    if ranks > 1:
        args = [*torchrun(ranks), *args]
    return run_script(*args, env={"OMP_NUM_THREADS": "1"})


def steps(out):
    lines = (out / "pretrain_64_metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"], r["grad_norm"]) for r in map(json.loads, lines) if r["kind"] == "train"]


def weights(out):
    return torch.load(out / "pretrain_64.pth", map_location="cpu", weights_only=True)["model"]


def close(a, b, tol):
    return all(
        x[0] == y[0] and abs(x[1] - y[1]) < tol and abs(x[2] - y[2]) < tol for x, y in zip(a, b, strict=True)
    )


def test_fsdp_matches_one_process_and_ddp_and_shards_its_state(init, tmp_path):
    single, ddp, fsdp1, fsdp2 = (tmp_path / n for n in ("single", "ddp", "fsdp1", "fsdp2"))
    train(single, init)
    train(ddp, init, ranks=2)
    train(fsdp1, init, "--strategy", "fsdp")  # one process: FSDP over a world of one
    proc = train(fsdp2, init, "--strategy", "fsdp", ranks=2)
    ref = steps(single)
    assert len(ref) == 6
    assert steps(fsdp1) == ref  # the same arithmetic, bit for bit
    assert close(steps(fsdp2), ref, 1e-4) and close(steps(ddp), ref, 1e-4)
    wd, wf = weights(ddp), weights(fsdp2)
    assert max((wd[k] - wf[k]).abs().max().item() for k in wd) < 1e-4
    # each rank held half of the parameters and of the AdamW state
    line = re.search(
        r"FSDP shards per rank: parameters \[(\d+), (\d+)\] of ([\d,]+); AdamW state \[(\d+), (\d+)\] of ([\d,]+)",
        proc.stdout,
    )
    assert line is not None, proc.stdout[-2000:]
    p0, p1, ptot, o0, o1, otot = (int(v.replace(",", "")) for v in line.groups())
    n = sum(t.numel() for k, t in wf.items() if k != "lm_head.weight")  # tied: one tensor
    assert p0 + p1 == ptot == n and abs(p0 - p1) <= 0.02 * n
    assert o0 + o1 == otot == 2 * n and abs(o0 - o1) <= 0.02 * otot


def test_fsdp_resume_is_bit_identical_and_may_change_the_process_count(init, tmp_path):
    full, part, moved = tmp_path / "full", tmp_path / "part", tmp_path / "moved"
    train(full, init, "--strategy", "fsdp", ranks=2)
    train(part, init, "--strategy", "fsdp", "--stop_after", "3", ranks=2)
    assert (part / "pretrain_64_resume.optim").is_dir()  # the AdamW state, sharded
    import shutil

    shutil.copytree(part, moved)
    train(part, init, "--strategy", "fsdp", "--from_resume", "1", ranks=2)
    assert steps(part) == steps(full)
    wa, wb = weights(full), weights(part)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the same run continued by one process: the sharded state is resharded, the data is the same
    train(moved, init, "--from_resume", "1")
    assert close(steps(moved), steps(full), 1e-4)


def test_activation_checkpointing_changes_no_number(init, tmp_path):
    plain, ac, ac_fsdp = tmp_path / "plain", tmp_path / "ac", tmp_path / "ac_fsdp"
    train(plain, init)
    train(ac, init, "--activation_checkpointing")
    train(ac_fsdp, init, "--activation_checkpointing", "--strategy", "fsdp", ranks=2)
    assert close(steps(ac), steps(plain), 1e-5)
    assert close(steps(ac_fsdp), steps(plain), 1e-4)
    assert sorted(weights(ac)) == sorted(weights(plain))  # the same parameter names in the file


def test_an_fsdp_weights_file_is_like_any_other(init, tmp_path):
    out = tmp_path / "f"
    train(out, init, "--strategy", "fsdp", ranks=2)
    val = field_case("madeup_val.jsonl")
    run_script(
        "eval_llm.py", "--save_dir", str(out), "--weight", "pretrain", "--val_path", str(val), "--no_mmlu",
        "--no_code", "--no_samples", "--no_hub", "--output", str(tmp_path / "eval" / "r.json"),
    )  # fmt: skip
    report = json.loads((tmp_path / "eval" / "r.json").read_text())
    assert report["results"]["pretrain_64"]["lm"]["all"]["loss"] > 0
    run_script(
        "scripts/export_hf.py", "--weight", str(out / "pretrain_64.pth"), "--output_dir", str(tmp_path / "hf")
    )
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32)
    ours = weights(out)
    assert torch.equal(
        hf.state_dict()["model.layers.1.mlp.down_proj.weight"], ours["model.layers.1.mlp.down_proj.weight"]
    )
