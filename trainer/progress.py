"""What a training run says: the start banner, the log line of a step and its metrics record,
the memory and shard lines at the end. :class:`RunReport` is a part of :class:`trainer.engine.Trainer`
(a mixin): its methods read the trainer's state (cfg, model, info, plan, stage, step, total, seen,
lr_at, schedule_changes, start_, train_data, metrics, parallel, optimizer) and change none of it
but ``flops_per_token``, ``peak`` and ``packing``, which they set for the log lines.
"""

from __future__ import annotations

import logging
from typing import Any

from trainer import runtime
from trainer.memory import GiB, peak_memory
from trainer.metrics import fmt_time
from trainer.throughput import mfu, peak_flops

log = logging.getLogger("trainer")


class RunReport:
    """The log lines and metrics records of a run (module docstring)."""

    cfg: Any
    model: Any
    info: Any
    session: Any
    plan: Any
    stage: Any
    step: int
    total: int
    steps_per_epoch: int
    stop_at: int
    staged: bool
    seen: Any
    lr_at: Any
    schedule_changes: list
    start_: Any
    train_data: Any
    metrics: Any
    parallel: Any
    optimizer: Any
    device: Any
    compile_on: bool
    compile_why: str

    def _announce(self) -> None:
        cfg, model, info = self.cfg, self.model, self.info
        self.flops_per_token = model.config.flops_per_token(cfg.max_seq_len)
        self.peak, peak_src = peak_flops(self.device, self.session.dtype, cfg.peak_tflops)
        log.info(
            f"Model: {model.num_params() / 1e6:.2f}M parameters ({model.config.hidden_size}x{model.config.num_hidden_layers}, "
            f"vocab {model.config.vocab_size}) | device {self.device} x{info.world_size} | "
            f"{runtime.precision_note(cfg.dtype, self.session.dtype, self.device)}"
            f"{' + compile' if self.compile_on else ''}"
        )
        log.info(
            f"Data: {self.train_data.num_tokens:,} tokens, {self.train_data.num_rows:,} rows of {cfg.max_seq_len} | global batch "
            f"{cfg.global_batch_rows * info.world_size} rows | {self.steps_per_epoch} steps/epoch (every row once) | {self.total} steps"
        )
        self.packing = self.train_data.stats()
        log.info(f"{self.packing.line()} | attention: {cfg.attention}")
        log.info(
            f"torch.compile: {'on' if self.compile_on else 'off'} ({self.compile_why}) | loss: {cfg.loss}"
        )
        planned = cfg.epochs * self.steps_per_epoch
        if self.total < planned:
            log.info(
                f"--max_steps {cfg.max_steps} caps the run at {self.total} of the {planned} steps of {cfg.epochs} "
                f"epoch(s) ({self.total / self.steps_per_epoch:.2f} epochs); the LR schedule spans {self.total} steps"
            )
        if self.staged:
            names, steps = self.train_data.segment_names, self.plan.segment_steps
            log.info(
                "Stages, in order: "
                + ", ".join(f"{n} ({k} steps/epoch)" for n, k in zip(names, steps, strict=True))
            )
            last = self.plan.locate(self.total - 1)
            if last[0] == cfg.epochs - 1 and last[1] < len(names) - 1 and self.total < planned:
                log.info(
                    f"--max_steps {cfg.max_steps} ends the run in stage {names[last[1]]!r}: stage(s) "
                    f"{', '.join(repr(n) for n in names[last[1] + 1 :])} will not be reached"
                )
        if self.stop_at < self.total:
            log.info(
                f"--stop_after {cfg.stop_after}: stopping after step {self.stop_at} of {self.total} (as if preempted)"
            )
        log.info(f"Peak for MFU: {self.peak / 1e12:.2f} TFLOP/s per device ({peak_src})")
        for line in self._schedule_banner():
            log.info(line)

    def _schedule_banner(self) -> list[str]:
        """What the LR will do: the schedule's banner for a new run; for a resumed run, what it
        does from the step it resumes at (a changed run length was already said by _restore)."""
        r = self.start_.resume
        if r is None:
            return self.stage.schedule.describe(self.total)
        if r.total_steps != self.total:
            return []
        step, total = self.step, self.total
        line = (
            f"LR schedule, resumed at step {step} of {total}: {self.lr_at(step, total):.2e} at step {step + 1} "
            f"-> {self.lr_at(total - 1, total):.2e} at step {total}"
        )
        if self.schedule_changes:
            at = ", ".join(str(c["at"]) for c in self.schedule_changes)
            return [f"{line} (the run's schedule, its length changed at step(s) {at})"]
        return [f"{line}, the rest of the run's: " + "; ".join(self.stage.schedule.describe(total))]

    def log_step(self, last: dict, tokens_per_sec: float, eta: float) -> None:
        """The log line and the metrics record of the step just taken."""
        cfg = self.cfg
        util = mfu(tokens_per_sec, self.flops_per_token, self.peak * self.info.world_size)
        epoch = min((self.step - 1) // self.steps_per_epoch + 1, cfg.epochs)
        log.info(
            f"Epoch:[{epoch}/{cfg.epochs}]({self.step}/{self.total}){self._stage_tag()} loss:{last['loss']:.6f} lr:{last['lr']:.10f} "
            f"grad_norm:{last['grad_norm']:.4f} tokens/s:{tokens_per_sec:.0f} MFU:{util * 100:.2f}% ETA {fmt_time(eta)}"
        )
        seen_all = self.seen.sum(0)
        runtime.all_reduce_sum(seen_all)
        shares = (seen_all / seen_all.sum().clamp(min=1)).tolist()
        self.metrics.append(
            "train",
            {
                "step": self.step,
                "epoch": epoch,
                **{k: last[k] for k in ("loss", "lr", "grad_norm")},
                "tokens_per_sec": tokens_per_sec,
                "mfu": util,
                **{f"share_{n}": v for n, v in zip(self.train_data.source_names, shares, strict=True)},
            },
        )

    def _stage_tag(self) -> str:
        """ " stage:<name>" of the step just taken, for a staged mixture."""
        if not self.staged:
            return ""
        return f" stage:{self.train_data.segment_names[self.plan.locate(self.step - 1)[1]]}"

    def _log_peak_memory(self) -> None:
        """Each process's peak memory (GPU: max allocated; CPU: peak RSS), one line on rank 0."""
        peaks = runtime.per_rank(peak_memory(self.device))
        log.info(f"Peak memory per rank (GiB): {[round(v[0] / GiB, 3) for v in peaks]}")

    def _log_shards(self) -> None:
        """What each rank holds under FSDP: its shard of the parameters and of the AdamW state."""
        counts = runtime.per_rank(*self.parallel.local_numel(self.optimizer))
        params, state = [int(c[0]) for c in counts], [int(c[1]) for c in counts]
        log.info(
            f"FSDP shards per rank: parameters {params} of {sum(params):,}; AdamW state {state} of {sum(state):,}"
        )
