"""The metrics log: the one owner of ``{save_dir}/{save_weight}_{hidden_size}_metrics.jsonl``.

One JSON object per line, ``{"kind": ..., "step": ..., ...}``:
  train    every --log_interval steps: loss, lr, grad_norm, tokens_per_sec, mfu, share_<source>, epoch
  eval     every evaluation: loss_all and loss_<source> (validation loss per source)
  packing  at start: the row layout (packing, attention, documents, split, rows, seq_len, fill)
  summary  once at the end of a run: step, finished, token_share {source: share}, seconds

The training engine writes it (and mirrors train/eval records to wandb); the ablation study and
the benchmarks read it back with :meth:`MetricsLog.read`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("trainer")


def fmt_time(seconds: float) -> str:
    """H:MM:SS."""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class MetricsLog:
    """Append-only records of one run; ``enabled=False`` (non-main ranks) writes nothing."""

    def __init__(self, path: str | Path, enabled: bool = True, wandb_run: Any = None):
        self.path, self.enabled, self.wandb_run = Path(path), enabled, wandb_run

    def start(self, step: int) -> None:
        """Make the log consistent with the state a run starts from: empty for a new run; for a
        resumed one, the records up to ``step`` (a later summary or record is dropped)."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if step == 0 or not self.path.exists():
            self.path.write_text("")
            return
        keep = [
            line
            for line in self.path.read_text().splitlines()
            if line and json.loads(line)["step"] <= step and json.loads(line)["kind"] != "summary"
        ]
        self.path.write_text("".join(line + "\n" for line in keep))

    def append(self, kind: str, data: dict) -> None:
        """One record; train and eval records also go to wandb (as train/... and val/...)."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"kind": kind, **data}) + "\n")
        if self.wandb_run is not None and kind in ("train", "eval"):
            prefix = "val/" if kind == "eval" else "train/"
            self.wandb_run.log({prefix + k: v for k, v in data.items() if k != "step"}, step=data["step"])

    @staticmethod
    def read(path: str | Path) -> tuple[list[dict], list[dict], dict]:
        """(train records, eval records, the end-of-run summary or {}) of a metrics log."""
        recs = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        summaries = [r for r in recs if r["kind"] == "summary"]
        return (
            [r for r in recs if r["kind"] == "train"],
            [r for r in recs if r["kind"] == "eval"],
            summaries[-1] if summaries else {},
        )


def run_summary(train, seen, history, stage, finished, step, total, paths, seconds) -> dict:
    """Log the end-of-run report (token shares per source and stage next to the plan, epochs of
    data trained, validation loss per source at start vs end, where the files are) and return it
    as a dict (the metrics log's summary record takes a part of it). ``seen``: (stages, sources)
    targets trained on."""
    names = train.source_names
    overall = seen.sum(0)
    shares = (overall / overall.sum().clamp(min=1)).tolist()
    staged = len(train.segment_names) > 1 or train.segment_names[0] is not None
    corpus = train.segment_source_targets()
    targets = stage.target_shares or {}
    by_stage = {}
    if len(names) > 1 or targets:
        unit = "plan (tokens)" if stage.target_unit == "tokens" else "mixture ratio (rows)"
        log.info(f"Share of tokens per source: realized in training | in the prepared data | {unit}")
        groups = list(enumerate(train.segment_names)) if staged else []
        for k, name in groups + [(None, None)]:
            got = seen[k] if k is not None else overall
            data = corpus[k] if k is not None else corpus.sum(0)
            plan = targets.get(name, {}) if (k is not None or not staged) else {}
            got_share = (got / got.sum().clamp(min=1)).tolist()
            if k is not None:
                log.info(f"  stage {name}:")
                by_stage[name] = dict(zip(names, got_share, strict=True))
            elif staged:
                log.info("  all stages:")
            for n, share, d in zip(names, got_share, data.tolist(), strict=True):
                target = f"{plan[n]:.1%}" if n in plan else "-"
                log.info(f"  {n:<16} {share:>8.1%} | {d / max(data.sum(), 1):>8.1%} | {target:>6}")
    trained, per_epoch = float(seen.sum()), train.num_targets
    log.info(
        f"Trained on {trained:,.0f} target tokens: {trained / per_epoch:.3f} epochs of the {per_epoch:,} in the data"
    )
    if len(history) >= 2:
        first, end = history[0], history[-1]
        log.info(f"Validation loss per source: step {first['step']} -> step {end['step']}")
        for k in end:
            if k != "step" and k in first:
                log.info(f"  {k:<16} {first[k]:.4f} -> {end[k]:.4f} ({end[k] - first[k]:+.4f})")
    state = "finished" if finished else f"stopped at step {step} of {total} (continue with --from_resume 1)"
    log.info(f"Run {state} in {fmt_time(seconds)}")
    log.info(f"Weights: {paths.weights}")
    log.info(f"Resume state: {paths.resume}")
    log.info(f"Metrics log: {paths.metrics}")
    return {
        "finished": finished,
        "step": step,
        "total_steps": total,
        "token_share": dict(zip(names, shares, strict=True)),
        "stage_token_share": by_stage,
        "seconds": seconds,
        "eval_history": history,
        "weights": str(paths.weights),
        "resume": str(paths.resume),
        "metrics": str(paths.metrics),
    }
