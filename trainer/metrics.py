"""The metrics log: the one owner of ``{save_dir}/{save_weight}_{hidden_size}_metrics.jsonl``.

One JSON object per line, ``{"kind": ..., "step": ..., ...}``:
  train    every --log_interval steps: loss, lr, grad_norm, tokens_per_sec, mfu, share_<source>, epoch
  eval     every evaluation: loss_all and loss_<source> (validation loss per source)
  summary  once at the end of a run: step, finished, token_share {source: share}, seconds

The training engine writes it (and mirrors train/eval records to wandb); the ablation study and
the benchmarks read it back with :meth:`MetricsLog.read`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
        if self.wandb_run is not None and kind != "summary":
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
