"""trainer.memory's estimate: the formulas of its docstring, computed by hand for one config."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from model.config import ModelConfig
from trainer.memory import GiB, estimate, fits_table


@pytest.mark.parametrize("tied", [True, False])
def test_estimate_is_the_documented_formula(tied):
    cfg = ModelConfig(
        vocab_size=1000, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        tie_word_embeddings=tied,
    )  # fmt: skip
    n, s, b, h, layers = cfg.num_params(), 128, 2, 64, 4
    root = 1000 * 64 * (1 if tied else 2)
    ddp = estimate(
        cfg, strategy="ddp", world_size=2, micro_batch=b, seq_len=s, checkpointing=False, loss="plain"
    )
    assert ddp.state == 16 * n and ddp.layer == 0
    assert ddp.activations == layers * s * b * h * 34
    assert ddp.logits == 8 * s * b * 1000
    fsdp = estimate(cfg, strategy="fsdp", world_size=2, micro_batch=b, seq_len=s, checkpointing=True)
    # 1/world of the state; one layer and the root (kept gathered by FSDP2) in full, weights + grads
    assert fsdp.state == 8 * n
    assert fsdp.layer == pytest.approx(8 * ((n - root) / layers + root))
    assert fsdp.activations == layers * 4 * s * b * h + s * b * h * 34  # inputs kept + one recompute


def test_the_logits_term_follows_the_loss_and_the_dtype():
    """--loss fused holds one chunk of logits whatever the batch (model.loss.chunk_rows tokens, 6 bytes
    per vocabulary entry in bf16, 4 in fp32); --loss plain the fp32 logits and their gradient."""
    cfg = ModelConfig(vocab_size=151936, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2)  # fmt: skip
    kw: dict[str, Any] = dict(strategy="ddp", world_size=1, checkpointing=False)
    big = estimate(cfg, micro_batch=16, seq_len=2048, **kw)  # default: fused, bf16
    assert big.logits == 1177 * 151936 * 6 <= 1 << 30  # 1 GiB chunks: 1,177 tokens at this vocabulary
    assert estimate(cfg, micro_batch=1, seq_len=512, **kw).logits == 512 * 151936 * 6  # under one chunk
    fp32 = estimate(cfg, micro_batch=16, seq_len=2048, dtype=torch.float32, **kw)
    assert fp32.logits == (1 << 30) // (151936 * 4) * 151936 * 4
    assert fp32.activations == 2 * big.activations
    assert estimate(cfg, micro_batch=16, seq_len=2048, loss="plain", **kw).logits == 8 * 16 * 2048 * 151936


def test_the_table_compares_totals_with_the_cards_in_gib():
    """A 24 GB card holds 24 GiB: Llama-3.2-1B under DDP (21.5 GiB at batch 1 x 2048 with the fused
    loss's 1 GiB of logits) fits."""
    row = next(
        line for line in fits_table().splitlines() if line.startswith("| Llama-3.2-1B | 1.24B | DDP |")
    )
    total = float(row.split("|")[6].split()[0])
    assert 21 < total < 22 and row.endswith("| yes / yes / yes |")
    assert GiB == 1 << 30


def test_a_run_over_the_device_memory_is_refused_naming_the_parts():
    """check_fits: over the host's memory -> one UserError naming the parts and what to change; the
    same batch under the fused loss is estimated without the batch-sized logits."""
    from model.errors import UserError
    from trainer.memory import check_fits, device_memory

    cfg = ModelConfig(vocab_size=151936, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2)  # fmt: skip
    have = device_memory(torch.device("cpu"))
    assert have is not None
    rows = int(have // (8 * 4096 * 151936)) + 1  # plain fp32 logits + gradient alone exceed the host
    kw: dict[str, Any] = dict(
        strategy="ddp", world_size=1, micro_batch=rows, seq_len=4096, checkpointing=True
    )
    with pytest.raises(
        UserError, match=r"this run needs about .* GiB per process on cpu .* logits .* --batch_size"
    ):
        check_fits(cfg, torch.device("cpu"), loss="plain", **kw)
    fused = estimate(cfg, loss="fused", **kw)
    assert fused.logits <= 1 << 30 and fused.logits < estimate(cfg, loss="plain", **kw).logits / rows
