"""The training engine's numbers, checked against independent computations (field reports 1, 7, 8)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dataset.rows import IGNORE_INDEX, build_rows, sample_docs, validation_set
from dataset.store import build_store
from model import MiniGPTForCausalLM, ModelConfig
from tests.helpers import field_case, run_script, torchrun
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


def _batch(rows) -> tuple[torch.Tensor, ...]:
    return tuple(
        torch.stack([torch.from_numpy(a) for a in t])
        for t in zip(*map(rows.row, range(rows.num_rows)), strict=True)
    )


@pytest.mark.slow
def test_a_short_row_weighs_the_same_whatever_the_split(field_tokenizer, field_tokenizer_dir, tmp_path):
    """Field case 1: pad4rows.jsonl packs into 4 rows of 128 in the concat layout, the last with 6
    targets; in the default layout (whole documents best-fit packed, document attention) its 6
    stories give 385 targets in rows padded where they cannot be filled. The step's loss is the
    mean over all targets for batch 4, batch 2 x accumulation 2, and 2 DDP ranks."""
    data = field_case("pad4rows.jsonl")
    model, init = init_checkpoint(tmp_path, field_tokenizer)
    store = build_store([data], field_tokenizer, tmp_path / "cache")
    concat = build_rows(store, SEQ, "concat", "causal")
    y = _batch(concat)[1]
    assert (
        concat.num_rows == 4
        and int((y != IGNORE_INDEX).sum()) == 390
        and int((y[3] != IGNORE_INDEX).sum()) == 6
    )
    rows = build_rows(store, SEQ, "bfd", "document")
    assert rows.num_rows == 4
    x, y, _, pos, doc = _batch(rows)
    targets = int((y != IGNORE_INDEX).sum())
    assert targets == 390 - 5  # each story's first token is no target: 6 documents, one stream start
    # independent computation: one forward over the 4 rows, the mean over every target
    logits = model(x, positions=pos, doc_ids=doc)
    loss_t = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    loss_t = loss_t / targets
    loss_t.backward()
    grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))
    loss = float(loss_t.detach())

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
            args = [*torchrun(2), *args]
        run_script(*args, env={"OMP_NUM_THREADS": "1"})
        out = tmp_path / {"batch4": "a", "accum2": "b", "ddp2": "c"}[name]
        got[name] = first_step(out)
    for name, rec in got.items():
        assert rec["loss"] == pytest.approx(loss, abs=1e-5), (name, rec["loss"], loss)
        assert rec["grad_norm"] == pytest.approx(grad_norm, abs=1e-5), (name, rec["grad_norm"])


def test_a_capped_evaluation_covers_every_source_with_the_same_documents_in_any_order(
    field_tokenizer, tmp_path
):
    """Field case 7: 400 replay rows, then 30 code, then 30 reasoning (val_grouped), and the same rows
    interleaved (val_interleaved). The first rows alone would read only replay; the sample is
    stratified by source, chosen by document (a hash of its tokens), so both files give the same
    documents, and it is the same at every call."""
    grouped = build_store([field_case("val_grouped.jsonl")], field_tokenizer, tmp_path)
    mixed = build_store([field_case("val_interleaved.jsonl")], field_tokenizer, tmp_path)

    def texts(store, docs):
        return sorted(
            bytes(np.asarray(store.tokens[a : a + n]))
            for a, n in zip(store.doc_start[docs], store.doc_len[docs], strict=True)
        )

    cap = 20 * SEQ
    docs, described = sample_docs(grouped, cap)
    other, _ = sample_docs(mixed, cap)
    assert texts(grouped, docs) == texts(mixed, other)  # the same documents, whatever the order
    src = np.asarray(grouped.doc_source)[docs]
    targets = np.asarray(grouped.doc_len, dtype=np.int64)[docs] - 1
    for k, name in enumerate(grouped.source_names):
        assert (src == k).any(), name  # every source is in the sample
        assert f"{name} {targets[src == k].sum():,}/" in described
    assert cap <= targets.sum() < cap + grouped.doc_len.max() * len(grouped.source_names)
    assert np.array_equal(docs, sample_docs(grouped, cap)[0])  # deterministic
    assert len(sample_docs(grouped, 0)[0]) == grouped.num_docs  # 0: every document


def test_validation_loss_per_source_equals_a_direct_computation(field_tokenizer, tmp_path):
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
    store = build_store([field_case("val_interleaved.jsonl")], field_tokenizer, tmp_path)
    cpu = (torch.device("cpu"), torch.float32, DistInfo())
    # the concat layout with causal attention: one forward over every row
    val = validation_set(store, SEQ, "concat", "causal", 0)
    x, y, s, _, _ = _batch(val.rows)
    with torch.no_grad():
        nll = F.cross_entropy(
            model(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
        )
    s = s.flatten()
    full = val_loss_per_source(model, val, 7, *cpu)
    assert full["all"] == pytest.approx(float(nll[s >= 0].mean()), rel=1e-6)
    for k, name in enumerate(store.source_names):
        assert full[name] == pytest.approx(float(nll[s == k].mean()), rel=1e-6)
    # the default layout: each document scored alone gives the same per-source means
    doc_rows = validation_set(store, SEQ, "bfd", "document", 0)
    alone: dict[int, list[torch.Tensor]] = {}
    with torch.no_grad():
        for a, n, k in zip(store.doc_start, store.doc_len, store.doc_source, strict=True):
            t = torch.from_numpy(np.asarray(store.tokens[a : a + n], dtype=np.int64))
            for p in range(0, n - 1, SEQ):  # a long document in pieces of SEQ targets, as packed
                w = t[p : p + SEQ + 1]
                alone.setdefault(int(k), []).append(
                    F.cross_entropy(model(w[None, :-1])[0], w[1:], reduction="none")
                )
    packed = val_loss_per_source(model, doc_rows, 5, *cpu)
    for k, name in enumerate(store.source_names):
        assert packed[name] == pytest.approx(float(torch.cat(alone[k]).double().mean()), rel=1e-5)
    # a capped sample: "all" weighs each source's mean by its share of the whole set's targets
    capped_set = validation_set(store, SEQ, "bfd", "document", 12 * SEQ)
    capped = val_loss_per_source(model, capped_set, 5, *cpu)
    share = dict(zip(store.source_names, capped_set.source_targets.tolist(), strict=True))
    assert share == {
        name: int((np.asarray(store.doc_len)[np.asarray(store.doc_source) == k] - 1).sum())
        for k, name in enumerate(store.source_names)
    }
    expect_all = sum(capped[n] * share[n] for n in share) / sum(share.values())
    assert set(capped) == {"all", *store.source_names}
    assert capped["all"] == pytest.approx(expect_all, rel=1e-9)


def test_compile_choice_follows_the_rule_on_the_cpu_and_always_compiles_on_cuda():
    """COMPILE_RULE (trainer/parallel.py): on the CPU "auto" compiles from 20M parameters and 200
    steps (the 26M default model's long runs, SmolLM2-135M's), not the demo's 1M model or a short run;
    CUDA always; the flags win."""
    from trainer.parallel import compile_choice

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compile_choice("auto", cpu, 26_000_000, 1000)[0] is True
    assert compile_choice("auto", cpu, 135_000_000, 200)[0] is True
    short, why = compile_choice("auto", cpu, 135_000_000, 199)
    assert short is False and "fewer steps" in why and "200 steps" in why
    small, why = compile_choice("auto", cpu, 1_000_000, 10_000)
    assert small is False and "fewer parameters" in why and "20M" in why
    assert compile_choice("auto", cuda, 1_000, 1)[0] is True
    assert compile_choice("off", cuda, 10**9, 10**6) == (False, "--no_compile")
    assert compile_choice("on", cpu, 1_000, 1) == (True, "--use_compile")


@pytest.mark.parametrize("max_norm", [0.5, 1e3, float("inf")])  # clipped; not clipped; no clipping
def test_clipping_through_the_fused_adamw_equals_clip_grad_norm(max_norm):
    """clip_gradients hands the clipping factor to the fused AdamW (its grad_scale divisor) instead
    of scaling every gradient: over two steps the gradients the optimizer used (it writes them
    back) are clip_grad_norm_'s (fp32, within the ulp a divide differs from a multiply by), the
    parameters follow (AdamW's m / sqrt(v) magnifies an ulp where a gradient is near 0: 1e-6 of
    an lr of 1e-2), the returned norm is its norm, and with the norm under max_norm all is
    bit-identical."""
    from trainer.engine import clip_gradients

    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=32)  # fmt: skip
    torch.manual_seed(0)
    x = torch.randint(0, 64, (2, 16))
    got: dict[bool, tuple[list, list, torch.Tensor]] = {}
    for fold in (False, True):
        torch.manual_seed(1)
        model = MiniGPTForCausalLM(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
        norms, grads = [], []
        for _ in range(2):  # the second step: the first step's divisor is not left behind
            model(x, targets=x).sum().backward()
            if fold:
                norms.append(float(clip_gradients(model, opt, max_norm)))
            else:
                norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)))
            opt.step()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
            opt.zero_grad(set_to_none=True)
        got[fold] = norms, grads, torch.cat([p.detach().flatten() for p in model.parameters()])
    (n0, g0, p0), (n1, g1, p1) = got[False], got[True]
    assert n1 == pytest.approx(n0, rel=1e-6)
    if max_norm > max(n0):
        assert all(torch.equal(a, b) for a, b in zip(g0, g1, strict=True)) and torch.equal(p0, p1)
        return
    assert min(n0) > max_norm  # both steps clip
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6 * float(a.abs().max()))
    torch.testing.assert_close(p1, p0, rtol=1e-5, atol=1e-6)
