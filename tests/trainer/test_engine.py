"""The training engine's numbers, checked against independent computations (field reports 1, 7, 8)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dataset.packed import IGNORE_INDEX, build_packed
from model import MiniGPTForCausalLM, ModelConfig
from tests.helpers import field_case, run_script
from trainer.checkpoint import atomic_torch_save, weights_state

SEQ = 128


def init_checkpoint(folder, tok, seed=0):
    """A fresh 64x2 model saved as a miniGPT checkpoint: every run below starts from these weights."""
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    model = MiniGPTForCausalLM(cfg)
    path = folder / "init_64.pth"
    atomic_torch_save(weights_state(model, tok, {"stage": "init", "max_seq_len": SEQ}), path)
    return model, path


def train_args(out, data, init, *extra):
    return [
        "trainer/train_pretrain.py",
        "--data_path",
        str(data),
        "--from_weight",
        str(init),
        "--max_seq_len",
        str(SEQ),
        "--dtype",
        "float32",
        "--learning_rate",
        "1e-3",
        "--log_interval",
        "1",
        "--eval_interval",
        "0",
        "--save_interval",
        "0",
        "--save_dir",
        str(out),
        "--checkpoint_dir",
        str(out),
        "--cache_dir",
        str(out / "cache"),
        *extra,
    ]


def first_step(out) -> dict:
    lines = (out / "pretrain_64_metrics.jsonl").read_text().splitlines()
    return next(r for r in map(json.loads, lines) if r["kind"] == "train" and r["step"] == 1)


@pytest.mark.slow
def test_a_short_row_weighs_the_same_whatever_the_split(field_tokenizer, field_tokenizer_dir, tmp_path):
    """Field case 1: pad4rows.jsonl packs into 4 rows of 128, the last with 6 targets. The step's
    loss is the mean over all 390 targets for batch 4, batch 2 x accumulation 2, and 2 DDP ranks."""
    data = field_case("pad4rows.jsonl")
    model, init = init_checkpoint(tmp_path, field_tokenizer)
    corpus = build_packed([data], field_tokenizer, SEQ, tmp_path / "cache")
    assert corpus.num_rows == 4
    x, y, _ = (
        torch.stack([torch.from_numpy(a) for a in t]) for t in zip(*map(corpus.row, range(4)), strict=True)
    )
    targets = int((y != IGNORE_INDEX).sum())
    assert targets == 390 and int((y[3] != IGNORE_INDEX).sum()) == 6
    # independent computation: one forward over the 4 rows, the mean over every target
    logits = model(x)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    loss = loss / targets
    loss.backward()
    grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))
    loss = float(loss.detach())

    common = ("--tokenizer_path", str(field_tokenizer_dir), "--max_steps", "1")
    runs = {
        "batch4": (train_args(tmp_path / "a", data, init, *common, "--batch_size", "4"), None),
        "accum2": (
            train_args(tmp_path / "b", data, init, *common, "--batch_size", "2", "--accumulation_steps", "2"),
            None,
        ),
        "ddp2": (train_args(tmp_path / "c", data, init, *common, "--batch_size", "2"), 2),
    }
    got = {}
    for name, (args, ranks) in runs.items():
        if ranks:
            args = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531", *args]
        run_script(*args, env={"OMP_NUM_THREADS": "1"})
        out = tmp_path / {"batch4": "a", "accum2": "b", "ddp2": "c"}[name]
        got[name] = first_step(out)
    for name, rec in got.items():
        assert rec["loss"] == pytest.approx(loss, abs=1e-5), (name, rec["loss"], loss)
        assert rec["grad_norm"] == pytest.approx(grad_norm, abs=1e-5), (name, rec["grad_norm"])


def test_a_capped_evaluation_covers_every_source_with_a_fixed_spread_sample(field_tokenizer, tmp_path):
    """Field case 7: 400 replay rows, then 30 code, then 30 reasoning. The first rows alone would
    read only replay; the sample is stratified, spread over the file, the same at every call."""
    from dataset.packed import sample_rows

    corpus = build_packed([field_case("val_grouped.jsonl")], field_tokenizer, SEQ, tmp_path)
    counts = corpus.row_source_targets()
    rows, described = sample_rows(corpus, 20)
    assert len(rows) <= 20 and list(rows) == sorted(set(rows.tolist()))
    for k, name in enumerate(corpus.source_names):
        assert counts[rows, k].sum() > 0, name  # every source is in the sample
        assert f"{name} " in described
    assert rows.max() - rows.min() > corpus.num_rows // 2  # spread over the file, not its head
    assert np.array_equal(rows, sample_rows(corpus, 20)[0])  # deterministic
    assert len(sample_rows(corpus, 0)[0]) == corpus.num_rows  # 0: every row
    assert len(sample_rows(corpus, 2)[0]) == 3  # fewer rows than sources: one each, and said
    assert "one row per source at least" in sample_rows(corpus, 2)[1]


def test_validation_loss_per_source_equals_a_direct_computation(field_tokenizer, tmp_path):
    from dataset.packed import sample_rows
    from trainer.runtime import DistInfo
    from trainer.validation import val_loss_per_source

    torch.manual_seed(0)
    model = MiniGPTForCausalLM(
        ModelConfig(
            vocab_size=len(field_tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    corpus = build_packed([field_case("val_interleaved.jsonl")], field_tokenizer, SEQ, tmp_path)
    cpu = (torch.device("cpu"), torch.float32, DistInfo())
    x, y, s = (
        torch.stack([torch.from_numpy(a) for a in t])
        for t in zip(*map(corpus.row, range(corpus.num_rows)), strict=True)
    )
    with torch.no_grad():
        nll = F.cross_entropy(
            model(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
        )
    s = s.flatten()
    full = val_loss_per_source(model, corpus, sample_rows(corpus, 0)[0], 7, *cpu)
    assert full["all"] == pytest.approx(float(nll[s >= 0].mean()), rel=1e-6)
    for k, name in enumerate(corpus.source_names):
        assert full[name] == pytest.approx(float(nll[s == k].mean()), rel=1e-6)
    rows = sample_rows(corpus, 12)[0]
    capped = val_loss_per_source(model, corpus, rows, 5, *cpu)
    keep = torch.zeros(corpus.num_rows, dtype=torch.bool)
    keep[torch.from_numpy(rows)] = True
    s_rows = s.view(corpus.num_rows, -1)[keep].flatten()
    n_rows = nll.view(corpus.num_rows, -1)[keep].flatten()
    means = {name: float(n_rows[s_rows == k].mean()) for k, name in enumerate(corpus.source_names)}
    share = dict(zip(corpus.source_names, corpus.meta["source_tokens"], strict=True))
    expect_all = sum(means[n] * share[n] for n in means) / sum(share.values())
    assert set(capped) == {"all", *corpus.source_names}
    assert capped["all"] == pytest.approx(expect_all, rel=1e-6)
    for name, v in means.items():
        assert capped[name] == pytest.approx(v, rel=1e-6)
