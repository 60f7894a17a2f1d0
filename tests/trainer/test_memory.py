"""trainer.memory's estimate: the formulas of its docstring, computed by hand for one config."""

from __future__ import annotations

import pytest

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
    ddp = estimate(cfg, strategy="ddp", world_size=2, micro_batch=b, seq_len=s, checkpointing=False)
    assert ddp.state == 16 * n and ddp.layer == 0
    assert ddp.activations == layers * s * b * h * 34
    assert ddp.logits == 8 * s * b * 1000
    fsdp = estimate(cfg, strategy="fsdp", world_size=2, micro_batch=b, seq_len=s, checkpointing=True)
    # 1/world of the state; one layer and the root (kept gathered by FSDP2) in full, weights + grads
    assert fsdp.state == 8 * n
    assert fsdp.layer == pytest.approx(8 * ((n - root) / layers + root))
    assert fsdp.activations == layers * 4 * s * b * h + s * b * h * 34  # inputs kept + one recompute


def test_the_table_compares_totals_with_the_cards_in_gib():
    """A 24 GB card holds 24 GiB: Llama-3.2-1B under DDP (22.5 GiB at batch 1 x 2048) fits."""
    row = next(
        line for line in fits_table().splitlines() if line.startswith("| Llama-3.2-1B | 1.24B | DDP |")
    )
    total = float(row.split("|")[6].split()[0])
    assert 22 < total < 24 and row.endswith("| yes / yes / yes |")
    assert GiB == 1 << 30
