"""The in-training validation loss per source, over packed rows (eval_llm.py scores documents)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dataset.packed import IGNORE_INDEX, PackedCorpus, PackedDataset
from dataset.sampler import EMPTY
from trainer import runtime


def token_losses(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-token cross entropy (fp32), 0 where the target is ignored."""
    logits = model(x)
    return F.cross_entropy(
        logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    ).view_as(y)


@torch.no_grad()
def val_loss_per_source(
    model,
    corpus: PackedCorpus,
    rows,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    dist: runtime.DistInfo,
) -> dict[str, float]:
    """Mean validation loss per source on ``rows`` of ``corpus`` (from :func:`sample_rows`) with the
    model on ``device`` under autocast to ``dtype``, and
    overall: "all" weighs each source's mean loss by its share of the corpus's target tokens, so a
    stratified sample estimates the whole set's loss (with every row it is exactly the mean over
    all targets).

    This is the in-training number over packed rows (documents share rows, as in training);
    ``eval_llm.py`` scores each document on its own. Rows are split across ranks (every rank runs
    the same number of batches, padded with filler rows) and the sums all-reduced, so every rank
    returns the same numbers. Keys: "all" and, with several sources, each source name.
    """
    was_training = model.training
    model.eval()
    n_src = len(corpus.source_names)
    sums = torch.zeros(n_src + 1, dtype=torch.float64)
    counts = torch.zeros(n_src + 1, dtype=torch.float64)
    world, rank = dist.world_size, dist.rank
    per_rank = -(-len(rows) // world)
    mine = list(rows[rank::world]) + [EMPTY] * (per_rank - len(rows[rank::world]))
    ds = PackedDataset(corpus)
    for i in range(0, len(mine), batch_size):
        x, y, s = (torch.stack(t) for t in zip(*(ds[int(j)] for j in mine[i : i + batch_size]), strict=True))
        with runtime.autocast(device, dtype):
            losses = token_losses(model, x.to(device), y.to(device)).cpu().double()
        s = s.clamp(min=-1) + 1  # pad positions (-1) go to bin 0 with zero loss
        sums += torch.bincount(s.flatten(), weights=losses.flatten(), minlength=n_src + 1)
        counts += torch.bincount(s.flatten(), minlength=n_src + 1).double()
    runtime.all_reduce_sum(sums)
    runtime.all_reduce_sum(counts)
    model.train(was_training)
    means = sums[1:] / counts[1:].clamp(min=1)
    present = counts[1:] > 0
    weights = torch.tensor(corpus.meta["source_tokens"], dtype=torch.float64) * present
    out = {"all": float((means * weights).sum() / weights.sum().clamp(min=1))}
    if n_src == 1:  # a single source: its loss is the overall loss
        return out
    for k, name in enumerate(corpus.source_names):
        if present[k]:
            out[name] = float(means[k])
    return out


def format_losses(losses: dict[str, float]) -> str:
    return " ".join(f"{k}:{v:.4f}" for k, v in losses.items())
