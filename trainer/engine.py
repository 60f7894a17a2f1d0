"""The one training engine: every stage script (pretrain, midtrain) parses its flags, builds what
differs (data, starting weights, LR schedule, defaults) and calls :func:`fit`.

A run, as named steps (:class:`Trainer`):
  start     the model and tokenizer (:func:`trainer.start.load_start`), the optimizer, the resume state
  step      one optimizer step over ``accumulation_steps`` micro-batches (:meth:`Trainer.train_step`)
  log       the log line, the metrics log, wandb (:meth:`Trainer.log_step`, :mod:`trainer.progress`)
  evaluate  validation loss per source and its change since the start (:meth:`Trainer.evaluate`,
            :class:`trainer.validation.Validator`)
  save      weights + resume state (:meth:`Trainer.save`, through :mod:`trainer.checkpoint`)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dataset.rows import IGNORE_INDEX, RowDataset, Rows, ValidationSet
from dataset.sampler import StepPlan
from dataset.tokenizer import tokenizer_sha256, tokenizer_to_dict
from model.errors import UserError
from trainer import checkpoint as ckpt
from trainer import runtime
from trainer.cli import setup_logging
from trainer.config import TrainConfig
from trainer.metrics import MetricsLog, run_summary
from trainer.parallel import Parallel, compile_choice, disable_compile, world_group_for_one_process
from trainer.progress import RunReport
from trainer.schedule import Schedule, describe_length_change, stretched
from trainer.start import Start
from trainer.validation import Validator, document_layout, parse_forgetting

log = logging.getLogger("trainer")


# --------------------------------------------------------------------------- setup


@dataclass
class Session:
    """Process-level state chosen once: ranks, device, precision."""

    cfg: TrainConfig
    dist: runtime.DistInfo
    device: torch.device
    dtype: torch.dtype

    def autocast(self):
        return runtime.autocast(self.device, self.dtype)

    @property
    def dtype_name(self) -> str:
        """The precision trained in, e.g. "bfloat16" (--dtype auto resolved)."""
        return runtime.dtype_name(self.dtype)


def setup(cfg: TrainConfig) -> Session:
    """Process group (under torchrun), device and precision; call after trainer.start.start_run."""
    info, device = runtime.init_distributed(cfg.device)
    if cfg.strategy == "fsdp" and not info.enabled:
        world_group_for_one_process(device)
    setup_logging(info.rank)
    dtype = runtime.resolve_dtype(cfg.dtype, device)
    return Session(cfg, info, device, dtype)


# --------------------------------------------------------------------------- the run


@dataclass
class Stage:
    """What a stage script hands the engine besides the model and data."""

    name: str  # "pretrain", "midtrain": stored in the checkpoint meta
    schedule: Schedule  # the LR at each step, and its banner
    plan: StepPlan  # the rows of every step (:func:`step_plan`), built once per run
    args: dict = field(default_factory=dict)  # the run's effective flag values, restored on resume
    identity: dict = field(default_factory=dict)  # what makes a resume checkpoint belong to this run
    meta: dict = field(default_factory=dict)  # extra facts stored in the checkpoint (data config, ...)
    # the plan to compare the realized token shares with: {stage name (None: no stages): {source: share}}
    target_shares: dict[str | None, dict[str, float]] | None = None
    target_unit: str = "rows"  # what the shares count: "rows" (mix_by rows) or "tokens"
    optimizer_state: dict | None = None  # start from this AdamW state (e.g. carried over from pretrain)


def step_plan(cfg: TrainConfig, train: Rows) -> StepPlan:
    """The rows of every optimizer step of a run on ``train`` for this process (dataset.sampler)."""
    rank, world = runtime.env_rank_world()
    return StepPlan(train.segment_rows(), cfg.batch_size, cfg.accumulation_steps, world, rank, cfg.seed)


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel over every parameter, on CUDA and (torch >= 2.4) the CPU: at SmolLM2-135M on
    # our 2-core CPU 208 ms a step against 679 for the default per-parameter loop (transformers'
    # Trainer also defaults to it, "adamw_torch_fused", on torch >= 2.8)
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.95), eps=1e-8, fused=True)


def clip_gradients(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_norm: float, in_place: bool = False
) -> torch.Tensor:
    """Clip the gradients to total L2 norm ``max_norm`` (inf: none) for the optimizer's next step;
    return the total norm before clipping (0-dim; a DTensor under FSDP, as the parameters).

    ``torch.nn.utils.clip_grad_norm_``'s rule, gradients times min(1, max_norm / (norm + 1e-6)),
    without its pass over every gradient: the fused AdamW divides each gradient by its
    ``grad_scale`` (the divisor GradScaler hands it under fp16) inside its own kernel, so the
    factor's reciprocal is set there (clipping + the AdamW step at 135M parameters on our CPU:
    182 -> 163 ms). ``in_place`` (fp16, where GradScaler sets that divisor itself), or a torch
    before 2.6 (no ``get_total_norm``): ``clip_grad_norm_`` as it is. The two differ by the
    rounding of a multiply against a divide (an ulp).
    """
    total_norm = getattr(torch.nn.utils, "get_total_norm", None)
    if in_place or total_norm is None:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    norm = total_norm([p.grad for p in model.parameters() if p.grad is not None])
    optimizer.grad_scale = ((norm + 1e-6) / max_norm).clamp(min=1.0)  # type: ignore[attr-defined]
    return norm


class Trainer(RunReport):
    """One run of one stage: built by ``start``, driven by :meth:`fit`."""

    def __init__(self, session: Session, start: Start, train: Rows, val: ValidationSet | None, stage: Stage):
        cfg, info, device = session.cfg, session.dist, session.device
        self.session, self.cfg, self.info, self.device = session, cfg, info, device
        self.start_, self.train_data, self.val_data, self.stage = start, train, val, stage
        self.model, self.tok = start.model.to(device), start.tokenizer
        self.tok_dict = tokenizer_to_dict(self.tok)  # stored in every checkpoint: made once
        self.model.train()
        # the order of rows: every row once per epoch, stage after stage (dataset.sampler)
        self.plan = stage.plan
        self.steps_per_epoch = self.plan.steps_per_epoch
        self.staged = len(train.segment_names) > 1 or train.segment_names[0] is not None
        self.total = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total = min(self.total, cfg.max_steps)
        self.stop_at = min(self.total, cfg.stop_after) if cfg.stop_after else self.total
        self.identity = {
            "stage": stage.name,
            "model_config": self.model.config.to_dict(),
            "tokenizer_sha256": tokenizer_sha256(self.tok),
            "seed": cfg.seed,
            "max_seq_len": cfg.max_seq_len,
            "global_batch_rows": cfg.global_batch_rows * info.world_size,
            "packing": cfg.packing,
            "attention": cfg.attention,
            **stage.identity,
        }
        self.paths = ckpt.checkpoint_paths(
            cfg.save_dir, cfg.checkpoint_dir, cfg.save_weight, self.model.config.hidden_size
        )
        self.compile_on, self.compile_why = compile_choice(
            cfg.compile, device, self.model.num_params(), self.total
        )
        self.parallel = Parallel(
            self.model, cfg.strategy, info, device, cfg.activation_checkpointing, self.compile_on
        )
        self.train_model = self.parallel.train_model
        self.optimizer = _optimizer(self.model, cfg)  # after sharding: over the shards
        self.scaler = torch.amp.GradScaler(device.type, enabled=session.dtype == torch.float16)
        self.step, self.wandb_id = 0, None
        self.history: list[dict] = []  # [{"step", "all", <source>...}] every evaluation so far
        # targets trained on per (stage, source)
        self.seen = torch.zeros(len(train.segment_names), len(train.source_names), dtype=torch.float64)
        self._restore()
        for g in self.optimizer.param_groups:  # the schedule sets the LR each step; keep "initial_lr" out
            g["lr"] = self.lr_at(self.step, self.total)
        self.metrics = MetricsLog(self.paths.metrics, enabled=False)  # opened by fit (_open_logs)
        self.wandb_run: Any = None
        self.validator = Validator(
            val,
            cfg.batch_size,
            device,
            session.dtype,
            info,
            self.history,
            parse_forgetting(cfg.max_forgetting),
            cfg.stop_on_forgetting,
            cfg.loss,
        )

    def _restore(self) -> None:
        """Continue from the resume state, or start from the stage's optimizer state."""
        self.lr_at, self.schedule_changes = self.stage.schedule.lr_at, []
        r = self.start_.resume
        if r is None:
            if self.stage.optimizer_state is not None:
                if self.cfg.strategy == "fsdp":
                    raise UserError(
                        "--optimizer_state pretrain works with --strategy ddp only (the carried AdamW state is "
                        "not sharded); use --strategy ddp or --optimizer_state fresh"
                    )
                self.optimizer.load_state_dict(self.stage.optimizer_state)
            return
        ckpt.check_resume_identity(r.identity, self.identity, self.paths.resume)
        if r.strategy != self.cfg.strategy:
            raise UserError(
                f"{self.paths.resume} is the state of a --strategy {r.strategy} run; resume it with "
                f"--strategy {r.strategy} (the optimizer state is stored differently)"
            )
        if r.sharded_optimizer:
            self.parallel.load_sharded(self.optimizer, self.paths.resume.parent / r.sharded_optimizer)
        else:
            self.optimizer.load_state_dict(r.optimizer)
        self.scaler.load_state_dict(r.scaler)
        ckpt.set_rng_state(r.rng, self.device)
        self.step, self.wandb_id = r.step, r.wandb_id
        self.history[:] = r.eval_history
        self.seen = r.source_tokens_seen.double().reshape(self.seen.shape)
        self.schedule_changes = list(r.schedule_changes or [])
        if r.total_steps != self.total:
            self.schedule_changes.append({"at": self.step, "from": r.total_steps, "to": self.total})
        for c in self.schedule_changes:
            self.lr_at = stretched(self.lr_at, c["at"], c["from"], c["to"])
        if r.total_steps != self.total:
            log.info(describe_length_change(self.lr_at, self.step, r.total_steps, self.total))
        if self.step >= self.total:
            raise UserError(
                f"{self.paths.resume} is already at step {self.step} of {self.total}; raise --epochs or --max_steps to train further"
            )

    # ----------------------------------------------------------------- start

    def _open_logs(self) -> None:
        cfg, stage = self.cfg, self.stage
        if cfg.use_wandb and self.info.is_main:
            import wandb

            self.wandb_run = wandb.init(
                project=cfg.wandb_project,
                name=cfg.wandb_run_name,
                id=self.wandb_id,
                resume="allow",
                config={
                    **dataclasses.asdict(cfg),
                    "dtype": self.session.dtype_name,
                    "stage": stage.name,
                    **stage.meta,
                },
            )
            self.wandb_id = self.wandb_run.id
        self.metrics = MetricsLog(self.paths.metrics, enabled=self.info.is_main, wandb_run=self.wandb_run)
        self.metrics.start(self.step)
        p = self.packing
        self.metrics.append(
            "packing",
            {
                "step": self.step,
                **{k: getattr(p, k) for k in ("packing", "documents", "split", "rows", "seq_len", "targets")},
                "fill": p.fill,
                "attention": self.cfg.attention,
            },
        )

    def _micro_batches(self) -> Iterator[list[tuple[torch.Tensor, ...]]]:
        """The rest of the run, one list of ``accumulation_steps`` micro-batches per optimizer step."""
        cfg = self.cfg
        loader = torch.utils.data.DataLoader(
            RowDataset(self.train_data),
            batch_sampler=self.plan.sampler(self.step, self.total),
            num_workers=cfg.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=cfg.num_workers > 0,
        )
        group: list[tuple[torch.Tensor, ...]] = []
        for batch in loader:
            group.append(batch)
            if len(group) == cfg.accumulation_steps:
                yield group
                group = []

    # ----------------------------------------------------------------- step

    def train_step(self, micro_batches: list[tuple[torch.Tensor, ...]]) -> dict:
        """One optimizer step; returns {"loss", "lr", "grad_norm", "tokens"} (all ranks).

        The step's loss and gradient are the sum over every target token of the step (all
        micro-batches, all ranks) divided by their total count, whatever the split: each
        micro-batch's summed cross entropy is scaled by world_size / N before backward (DDP
        averages gradients over ranks), N being the step's target count over all ranks.
        """
        info, device = self.info, self.device
        lr = self.lr_at(self.step, self.total)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        segment = self.plan.locate(self.step)[1]
        n_local = sum(int((b[1] != IGNORE_INDEX).sum()) for b in micro_batches)
        n_all = runtime.all_reduce_sum(torch.tensor(float(n_local), dtype=torch.float64))
        scale = info.world_size / max(float(n_all), 1.0)
        loss_sum = torch.zeros((), dtype=torch.float64)
        for i, (x, y, s, pos, doc) in enumerate(micro_batches):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            layout = document_layout(self.cfg.attention, pos, doc, device)
            sync = i == len(micro_batches) - 1
            with self.parallel.accumulating(sync):
                with self.session.autocast():
                    if self.cfg.loss == "fused":  # the chunked LM head + loss, its gradient prepared
                        factor = scale * (self.scaler.get_scale() if self.scaler.is_enabled() else 1.0)
                        grad_scale = torch.tensor(factor, dtype=torch.float64)  # a value, not a compile guard
                        loss = self.train_model(x, targets=y, grad_scale=grad_scale, **layout).sum()
                    else:
                        logits = self.train_model(x, **layout)
                if self.cfg.loss != "fused":
                    loss = F.cross_entropy(
                        logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
                    )
                self.scaler.scale(loss * scale).backward()
            loss_sum += loss.detach().double().cpu()
            if len(self.train_data.source_names):
                self.seen[segment] += torch.bincount(s[s >= 0], minlength=self.seen.shape[1]).double()
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        grad_norm = clip_gradients(self.model, self.optimizer, max_norm, in_place=self.scaler.is_enabled())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        step_loss = float(runtime.all_reduce_sum(loss_sum)) / max(float(n_all), 1.0)
        if not math.isfinite(step_loss):
            raise UserError(
                f"loss became {step_loss} at step {self.step}; lower --learning_rate or use --dtype bfloat16/float32"
            )
        return {"loss": step_loss, "lr": lr, "grad_norm": float(grad_norm), "tokens": int(n_all)}

    # ----------------------------------------------------------------- log

    # ----------------------------------------------------------------- evaluate

    def evaluate(self) -> None:
        """Validation loss per source and its change since the start (trainer.validation.Validator)."""
        record = self.validator.evaluate(self.model, self.step, self.total)
        if record is not None:
            self.parallel.after_eval()
            self.metrics.append("eval", record)

    def _due_for_eval(self) -> bool:
        cfg, step = self.cfg, self.step
        return step < self.total and (
            (cfg.eval_interval and step % cfg.eval_interval == 0)
            or (step <= cfg.early_eval_steps and step % cfg.early_eval_interval == 0)
        )

    # ----------------------------------------------------------------- save

    def save(self, final: bool) -> None:
        """Weights file + resume file (main rank), then every rank waits for them."""
        cfg, stage, step, total = self.cfg, self.stage, self.step, self.total
        meta = {
            "stage": stage.name,
            "save_weight": cfg.save_weight,
            "max_seq_len": cfg.max_seq_len,
            "dtype": self.session.dtype_name,  # the precision it trained in (--dtype auto resolved)
            "step": step,
            "total_steps": total,
            "final_lr": self.lr_at(min(step, total) - 1, total) if step else self.lr_at(0, total),
            "tokens_seen": float(self.seen.sum()),
            "parent": self.start_.parent,
            "identity_sha256": ckpt.identity_sha256(self.identity),
            "eval_history": self.history,
            "finished": final,
            **stage.meta,
        }
        weights = self.parallel.full_state_dict()  # a collective under FSDP
        sharded = None
        if self.cfg.strategy == "fsdp":
            sharded = ckpt.sharded_folder(self.paths, step)
            if self.info.is_main and sharded.exists():  # saved at this step before: write it afresh
                ckpt.prune_sharded(self.paths, keep=None)
            runtime.barrier()
            self.parallel.save_sharded(self.optimizer, sharded)
            runtime.barrier()
        if self.info.is_main:
            state = ckpt.TrainState(
                optimizer=self.parallel.optimizer_state(self.optimizer),
                scaler=self.scaler.state_dict(),
                rng=ckpt.rng_state(self.device),
                step=step,
                total_steps=total,
                world_size=self.info.world_size,
                identity=self.identity,
                eval_history=self.history,
                source_tokens_seen=self.seen,
                wandb_id=self.wandb_id,
                args=self.stage.args,
                schedule_changes=self.schedule_changes,
                strategy=self.cfg.strategy,
                sharded_optimizer=str(sharded.relative_to(self.paths.resume.parent)) if sharded else None,
            )
            ckpt.save_run(self.paths, weights, self.tok_dict, meta, state, config=self.model.config)
            if sharded is not None:
                ckpt.prune_sharded(self.paths, keep=sharded)
        runtime.barrier()

    # ----------------------------------------------------------------- the loop

    def fit(self) -> dict:
        """Train to the end (or --stop_after) and return a summary dict (also logged)."""
        cfg = self.cfg
        self._announce()
        self._open_logs()
        if not self.history:
            self.evaluate()
        bar = tqdm(
            total=self.stop_at,
            initial=self.step,
            desc=self.stage.name,
            unit="step",
            disable=None if self.info.is_main else True,
            mininterval=2.0,
            leave=False,
        )
        interval_tokens, interval_t0 = 0, time.perf_counter()
        run_t0, run_step0 = time.perf_counter(), self.step
        for micro_batches in self._micro_batches():
            if self.step >= self.stop_at or self.validator.stop_reason:
                break
            last = (
                self._first_step(micro_batches) if self.step == run_step0 else self.train_step(micro_batches)
            )
            bar.update(1)
            interval_tokens += last["tokens"]
            if self.step % cfg.log_interval == 0 or self.step == self.stop_at:
                el = time.perf_counter() - interval_t0
                eta = (
                    (time.perf_counter() - run_t0)
                    / max(self.step - run_step0, 1)
                    * (self.stop_at - self.step)
                )
                self.log_step(last, interval_tokens / el if el > 0 else 0.0, eta)
                interval_tokens, interval_t0 = 0, time.perf_counter()
            pause_t0 = time.perf_counter()
            if self._due_for_eval():
                self.evaluate()
            if cfg.save_interval and self.step % cfg.save_interval == 0 and self.step < self.stop_at:
                self.save(final=False)
            interval_t0 += time.perf_counter() - pause_t0  # throughput counts training time only
        bar.close()
        return self._finish(time.perf_counter() - run_t0)

    def _first_step(self, micro_batches: list[tuple[torch.Tensor, ...]]) -> dict:
        """The run's first step: compiled, it says how long compilation took, and if compiling
        fails it says so in one line and the run goes on eagerly."""
        if not self.compile_on:
            return self.train_step(micro_batches)
        t0 = time.perf_counter()
        try:
            out = self.train_step(micro_batches)
        except (UserError, KeyboardInterrupt, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 - any failure of dynamo/inductor (no compiler, an unsupported op)
            first = (str(e).strip().splitlines() or [""])[0][:160]
            log.warning(
                f"warning: torch.compile failed ({type(e).__name__}: {first}); training eagerly instead"
            )
            disable_compile()
            self.compile_on = False
            self.optimizer.zero_grad(set_to_none=True)
            return self.train_step(micro_batches)
        log.info(f"torch.compile: the first step took {time.perf_counter() - t0:.1f} s, compilation included")
        return out

    def _finish(self, seconds: float) -> dict:
        finished = self.step >= self.total
        if finished:
            self.evaluate()
        elif self.validator.stop_reason:
            log.info(f"Stopping at step {self.step} of {self.total}: {self.validator.stop_reason}")
        self.save(final=finished)
        if self.cfg.strategy == "fsdp":
            self._log_shards()
        self._log_peak_memory()
        runtime.all_reduce_sum(self.seen)
        summary = run_summary(
            self.train_data,
            self.seen,
            self.history,
            self.stage,
            finished,
            self.step,
            self.total,
            self.paths,
            seconds,
        )
        summary["val_loss_change"] = self.validator.change()
        keys = ("step", "finished", "token_share", "stage_token_share", "val_loss_change", "seconds")
        # the precision and the peak the train records' MFU was taken against (--dtype auto: per machine)
        precision = {"dtype": self.session.dtype_name, "mfu_peak_tflops": self.peak / 1e12}
        self.metrics.append("summary", {**{k: summary[k] for k in keys if summary[k] != {}}, **precision})
        if self.wandb_run is not None:
            self.wandb_run.summary.update(
                {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}
            )
            self.wandb_run.finish()
        return summary


def fit(session: Session, start: Start, train: Rows, val: ValidationSet | None, stage: Stage) -> dict:
    """Train ``start.model`` on ``train`` and return a summary dict (also stored in the checkpoint).
    Returns on every rank together (a barrier), so no rank shuts the process group down while
    another is still in the last collective."""
    summary = Trainer(session, start, train, val, stage).fit()
    runtime.barrier()
    return summary
