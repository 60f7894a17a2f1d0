"""The in-training validation loss per source, over rows laid out as training lays them out
(:mod:`dataset.rows`; ``eval_llm.py`` scores each document on its own), and the run's evaluations
around it: the change since the starting model and the forgetting guard (:class:`Validator`)."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from dataset.rows import IGNORE_INDEX, RowDataset, ValidationSet
from dataset.sampler import EMPTY
from model.errors import UserError
from trainer import runtime

log = logging.getLogger("trainer")


def document_layout(attention: str, pos: torch.Tensor, doc: torch.Tensor, device: torch.device) -> dict:
    """The model's keyword arguments for a batch's layout: per-token RoPE positions and document
    ids under ``--attention document`` (block-causal attention, positions from 0 at each document),
    nothing under ``causal`` (one causal sequence per row, positions 0..L-1)."""
    if attention != "document":
        return {}
    return {"positions": pos.to(device, non_blocking=True), "doc_ids": doc.to(device, non_blocking=True)}


LOSSES = ("fused", "plain")


def token_losses(model, x: torch.Tensor, y: torch.Tensor, loss: str = "fused", **layout) -> torch.Tensor:
    """Per-token cross entropy (B, T) (fp32, nats), 0 where the target is ignored: ``fused`` through the
    model's chunked LM head + loss (model.loss: never the (tokens, vocab) logits), ``plain`` from
    the logits with F.cross_entropy (the reference path)."""
    if loss == "fused":
        return model(x, targets=y, **layout)
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
    loss: str = "fused",
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
            losses = token_losses(model, x.to(device), y.to(device), loss, **layout).cpu().double()
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


def parse_forgetting(values: list[str] | None) -> dict[str, float]:
    """``--max_forgetting SOURCE=DELTA`` values as {source: delta}; DELTA in nats per token (the
    validation loss's unit), > 0. UserError for a malformed value."""
    out: dict[str, float] = {}
    for value in values or []:
        name, sep, delta = value.partition("=")
        try:
            limit = float(delta) if sep and name else -1.0
        except ValueError:
            limit = -1.0
        if not limit > 0:
            raise UserError(
                f"--max_forgetting {value!r}: give SOURCE=DELTA, DELTA a positive number of nats per token "
                "(e.g. --max_forgetting replay=0.05)"
            )
        out[name] = limit
    return out


def format_deltas(deltas: dict[str, float]) -> str:
    return " ".join(f"{k} {v:+.4f}" for k, v in deltas.items())


class Validator:
    """Every evaluation of a run: the validation loss per source (:func:`val_loss_per_source`), its
    change since the run's first evaluation (step 0: the model the run started from), the history
    the checkpoints keep, and the forgetting guard (``--max_forgetting``).

    The change of a source is ``loss now - loss at step 0`` in nats per token: positive is
    forgetting, negative a gain. With one source the change of "all" is reported.
    """

    def __init__(
        self,
        val: ValidationSet | None,
        batch_size: int,
        device: torch.device,
        dtype: torch.dtype,
        dist: runtime.DistInfo,
        history: list[dict],
        max_forgetting: dict[str, float],
        stop_on_forgetting: bool,
        loss: str = "fused",
    ):
        self.val, self.batch_size = val, batch_size
        self.device, self.dtype, self.dist = device, dtype, dist
        self.history = history
        self.max_forgetting, self.stop_on_forgetting = max_forgetting, stop_on_forgetting
        self.loss = loss
        self.stop_reason: str | None = None
        self._said = False
        names = (val.rows.source_names if len(val.rows.source_names) > 1 else []) if val is not None else []
        if unknown := sorted(set(max_forgetting) - {"all", *names}):
            known = ", ".join(["all", *names]) if val is not None else "none: no validation data"
            raise UserError(f"--max_forgetting {unknown[0]}: no such validation source (known: {known})")

    def deltas(self, losses: dict[str, float]) -> dict[str, float]:
        """Each source's change since the first evaluation ("all" alone for a single source)."""
        start = self.history[0]
        keys = [k for k in losses if k != "all"] or ["all"]
        return {k: losses[k] - start[k] for k in keys if k in start}

    def evaluate(self, model, step: int, total: int) -> dict | None:
        """Evaluate, log, record in the history; returns the metrics record (None without data)."""
        if self.val is None:
            return None
        if not self._said:  # the same sample at every evaluation (chosen by document)
            log.info(f"Validation sample: {self.val.described}; {self.val.rows.stats().line()}")
            self._said = True
        losses = val_loss_per_source(
            model, self.val, self.batch_size, self.device, self.dtype, self.dist, self.loss
        )
        log.info(f"eval step {step}/{total}: val_loss {format_losses(losses)}")
        record: dict = {"step": step, **{f"loss_{k}": v for k, v in losses.items()}}
        if self.history:
            deltas = self.deltas(losses)
            log.info(f"  vs start: {format_deltas(deltas)}")
            record["val_loss_delta"] = deltas
            self._guard(deltas, step)
        self.history.append({"step": step, **losses})
        return record

    def _guard(self, deltas: dict[str, float], step: int) -> None:
        for name, limit in self.max_forgetting.items():
            rise = deltas.get(name)
            if rise is not None and rise > limit:
                log.warning(
                    f"warning: forgetting: {name}'s validation loss rose {rise:+.4f} nats/token since step "
                    f"{self.history[0]['step']} (--max_forgetting {name}={limit:g})"
                )
                if self.stop_on_forgetting and self.stop_reason is None:
                    self.stop_reason = (
                        f"--stop_on_forgetting: {name} rose {rise:+.4f} > {limit:g} at step {step}"
                    )

    def change(self) -> dict[str, dict[str, float]]:
        """{source: {"start", "end", "change"}} between the first and the last evaluation."""
        if len(self.history) < 2:
            return {}
        first, end = self.history[0], self.history[-1]
        return {
            k: {"start": first[k], "end": end[k], "change": end[k] - first[k]}
            for k in end
            if k != "step" and k in first
        }
