"""The in-training validation loss per source, over rows laid out as training lays them out
(:mod:`dataset.rows`); ``eval_llm.py`` scores each document on its own."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dataset.rows import IGNORE_INDEX, RowDataset, ValidationSet
from dataset.sampler import EMPTY
from trainer import runtime


def document_layout(attention: str, pos: torch.Tensor, doc: torch.Tensor, device: torch.device) -> dict:
    """The model's keyword arguments for a batch's layout: per-token RoPE positions and document
    ids under ``--attention document`` (block-causal attention, positions from 0 at each document),
    nothing under ``causal`` (one causal sequence per row, positions 0..L-1)."""
    if attention != "document":
        return {}
    return {"positions": pos.to(device, non_blocking=True), "doc_ids": doc.to(device, non_blocking=True)}


def token_losses(model, x: torch.Tensor, y: torch.Tensor, **layout) -> torch.Tensor:
    """Per-token cross entropy (fp32, nats), 0 where the target is ignored."""
    logits = model(x, **layout)
    return F.cross_entropy(
        logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    ).view_as(y)


@torch.no_grad()
def val_loss_per_source(
    model,
    val: ValidationSet,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    dist: runtime.DistInfo,
) -> dict[str, float]:
    """Mean validation loss per source over every row of ``val`` (the sample chosen by document,
    :func:`dataset.rows.validation_set`), with the model on ``device`` under autocast to ``dtype``,
    and overall: "all" weighs each source's mean loss by its share of the whole validation set's
    target tokens, so a stratified sample estimates the whole set's loss (with every document it
    is exactly the mean over all targets).

    Rows are laid out as in training (packing, document attention); under document attention
    each document is computed as it would be alone, so the losses do not depend on which
    documents share a row. Rows are split across ranks (every rank runs the same number of
    batches, padded with filler rows) and the sums all-reduced in float64, so every rank returns
    the same numbers. Keys: "all" and, with several sources, each source name.
    """
    was_training = model.training
    model.eval()
    rows = val.rows
    n_src = len(rows.source_names)
    sums = torch.zeros(n_src + 1, dtype=torch.float64)
    counts = torch.zeros(n_src + 1, dtype=torch.float64)
    world, rank = dist.world_size, dist.rank
    all_rows = list(range(rows.num_rows))
    per_rank = -(-len(all_rows) // world)
    mine = all_rows[rank::world] + [EMPTY] * (per_rank - len(all_rows[rank::world]))
    ds = RowDataset(rows)
    for i in range(0, len(mine), batch_size):
        x, y, s, pos, doc = (
            torch.stack(t) for t in zip(*(ds[j] for j in mine[i : i + batch_size]), strict=True)
        )
        layout = document_layout(rows.attention, pos, doc, device)
        with runtime.autocast(device, dtype):
            losses = token_losses(model, x.to(device), y.to(device), **layout).cpu().double()
        s = s.clamp(min=-1) + 1  # positions without a target (-1) go to bin 0 with zero loss
        sums += torch.bincount(s.flatten(), weights=losses.flatten(), minlength=n_src + 1)
        counts += torch.bincount(s.flatten(), minlength=n_src + 1).double()
    runtime.all_reduce_sum(sums)
    runtime.all_reduce_sum(counts)
    model.train(was_training)
    means = sums[1:] / counts[1:].clamp(min=1)
    present = counts[1:] > 0
    if n_src == 1:  # a single source: its loss is the overall loss
        return {"all": float(means[0])}
    weights = torch.tensor(val.source_targets[:n_src], dtype=torch.float64) * present
    out = {"all": float((means * weights).sum() / weights.sum().clamp(min=1))}
    for k, name in enumerate(rows.source_names):
        if present[k]:
            out[name] = float(means[k])
    return out


def format_losses(losses: dict[str, float]) -> str:
    return " ".join(f"{k}:{v:.4f}" for k, v in losses.items())
