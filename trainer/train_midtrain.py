"""Mid-train a pretrained miniGPT checkpoint on a YAML data mixture, with an LR re-warmup.

    python scripts/prepare_dataset.py --config config/data/midtrain/phase1/default.yaml --output_dir dataset/
    python trainer/train_midtrain.py --data_config config/data/midtrain/phase1/default.yaml \\
        --from_weight pretrain --use_prepared --epochs 1 --batch_size 16 --learning_rate 2e-4 --warmup_ratio 0.05
    python trainer/train_midtrain.py --data_config config/data/midtrain/phase1/default.yaml --from_resume 1 --epochs 2

Differs from train_pretrain.py only in its defaults (LR 2e-4, warmup 5%, weights named
"midtrain"), its LR schedule (--lr_schedule rewarm | wsd | anneal), and its data: the
mixture's prepared train/val splits, with validation loss reported per source.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from dataset.mixture import load_mixture_config, prepared_data
from dataset.packed import build_packed
from dataset.sampler import StepSampler
from model.errors import UserError
from trainer import checkpoint, engine, runtime
from trainer.cli import run
from trainer.config import TrainConfig, midtrain_parser, parse_flags
from trainer.schedule import Schedule, anneal_schedule, rewarm_schedule, wsd_schedule
from trainer.start import Start, start_run

log = logging.getLogger("train_midtrain")


def no_checkpoint_message(cfg: TrainConfig, detail: str) -> str:
    return (
        f"Mid-training requires a pretrained checkpoint: {detail}; "
        f"make one with `python trainer/train_pretrain.py --data_path FILE.jsonl` (writes {cfg.save_dir}/pretrain_512.pth), "
        "then pass --from_weight pretrain"
    )


def decay_ratio(value: str) -> float | str:
    """--decay_ratio: a fraction in (0, 1], or "stage"."""
    if value == "stage":
        return value
    try:
        ratio = float(value)
    except ValueError:
        ratio = -1.0
    if not 0 < ratio <= 1:
        raise UserError(f"--decay_ratio must be in (0, 1] or 'stage', got {value}")
    return ratio


def last_stage_steps(cfg: TrainConfig, train, world_size: int) -> tuple[int, str]:
    """(optimizer steps of the last stage, its name) for --decay_ratio stage; UserError when the
    mixture has no stages or the run ends before its last stage."""
    names = train.segment_names
    if len(names) < 2 or names[-1] is None:
        raise UserError("--decay_ratio stage needs a mixture with stages: (see config/README.md)")
    plan = StepSampler(
        train.segment_rows(), cfg.batch_size, cfg.accumulation_steps, world_size, 0, cfg.seed, 1
    )
    full = cfg.epochs * plan.steps_per_epoch
    if cfg.max_steps is not None and cfg.max_steps < full:
        raise UserError(
            f"--decay_ratio stage: --max_steps {cfg.max_steps} ends the run before its last stage {names[-1]!r} "
            f"(the full run is {full} steps); drop --max_steps or give --decay_ratio a fraction"
        )
    return plan.segment_steps[-1], names[-1]


def make_schedule(args, cfg: TrainConfig, start: Start, train, world_size: int) -> Schedule:
    """The --lr_schedule, with the anneal's start LR taken from the --from_weight checkpoint."""
    if args.lr_schedule == "rewarm":
        return rewarm_schedule(cfg.learning_rate, cfg.warmup_ratio)
    if args.lr_schedule == "wsd":
        ratio = decay_ratio(args.decay_ratio)
        if ratio == "stage":
            steps, name = last_stage_steps(cfg, train, world_size)
            return wsd_schedule(cfg.learning_rate, cfg.warmup_ratio, 0.0, steps, f"the last stage {name!r}")
        return wsd_schedule(cfg.learning_rate, cfg.warmup_ratio, ratio)
    final_lr = (start.parent or {}).get("final_lr")
    if not final_lr:
        raise UserError(
            "--lr_schedule anneal: the --from_weight checkpoint does not record the LR its run ended with"
        )
    return anneal_schedule(final_lr)


def main() -> None:
    args, given = parse_flags(midtrain_parser(__doc__))
    if "decay_ratio" in given and args.lr_schedule != "wsd" and not args.from_resume:
        raise UserError(
            f"--decay_ratio sets the decay of --lr_schedule wsd; with --lr_schedule {args.lr_schedule} it "
            "would be ignored: drop it or add --lr_schedule wsd"
        )
    if not args.from_weight and not args.from_resume:  # fail before any work
        cfg = TrainConfig.from_args(args)
        raise UserError(
            no_checkpoint_message(cfg, f"--from_weight is required; {checkpoint.available(cfg.save_dir)}")
        )
    cfg, start, args = start_run(
        args, given, require_weight=partial(no_checkpoint_message, TrainConfig.from_args(args))
    )
    decay_ratio(args.decay_ratio)
    config = load_mixture_config(args.data_config)
    train_path, val_path = prepared_data(
        config, Path(args.prepared_dir) if args.use_prepared else None, Path(cfg.cache_dir), start.tokenizer
    )
    if start.resume is None:
        log.info(f"Loaded pretrained model from: {start.parent_path}")
    seq_len = cfg.max_seq_len
    train = build_packed([train_path], start.tokenizer, seq_len, cfg.cache_dir)
    val = build_packed(args.val_path or [val_path], start.tokenizer, seq_len, cfg.cache_dir)
    schedule = make_schedule(args, cfg, start, train, runtime.env_rank_world()[1])
    optimizer_state = None
    if args.optimizer_state == "pretrain" and start.resume is None:
        optimizer_state, path, step = checkpoint.carried_optimizer_state(
            start.parent or {}, cfg.save_dir, cfg.checkpoint_dir, start.model.config.hidden_size
        )
        log.info(f"Optimizer state carried over from {path} (step {step})")
    session = engine.setup(cfg)
    try:
        stage = engine.Stage(
            name="midtrain",
            schedule=schedule,
            args={**vars(args), "world_size": session.dist.world_size},
            identity={
                "data_config_sha256": config.sha256,
                "lr_schedule": args.lr_schedule,
                "optimizer_state": args.optimizer_state,
                "parent": (start.parent or {}).get("identity_sha256"),
            },
            meta={
                "data_config": str(config.path),
                "data_config_sha256": config.sha256,
                "lr_schedule": args.lr_schedule,
            },
            target_shares=(
                {st.name: st.ratios for st in config.stages}
                if config.stages
                else {None: {s.name: s.ratio for s in config.sources}}
            ),
            target_unit=config.mix_by,
            optimizer_state=optimizer_state,
        )
        engine.fit(session, start, train, val, stage)
    finally:
        runtime.cleanup()


if __name__ == "__main__":
    run(main)
