"""scripts/dev/bench_train.py's GEMM ceiling: its matmuls are exactly the model's weights."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import load_script

bench = load_script("scripts/dev/bench_train.py", "bench_train")


@pytest.mark.parametrize("shape", ["tiny", "ours-512x8"])
def test_the_gemm_ceiling_times_every_weight_of_the_model_once(shape):
    """The ceiling's GEMMs cover the N of the model's 6N FLOPs, no more, no less: its model FLOPs over
    GEMM FLOPs (mfu_ceiling / gemm_vs_peak, the same time and peak) is (6N + attention) / 6N."""
    cfg = bench.shape_config(shape)
    seq = 32
    got = bench.gemm_ceiling(cfg, tokens=2 * seq, seq=seq, reps=1, dtype=torch.float32)
    n = cfg.num_params() - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size)
    n -= cfg.num_hidden_layers * 2 * cfg.hidden_size + cfg.hidden_size  # the norms: not matmuls
    assert got["gemm_s"] > 0 and 0 < got["gemm_vs_peak"]
    assert got["mfu_ceiling"] / got["gemm_vs_peak"] == pytest.approx(
        cfg.flops_per_token(seq) / (6 * n), rel=1e-9
    )
