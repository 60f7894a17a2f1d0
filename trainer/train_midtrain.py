"""Mid-train a pretrained miniGPT checkpoint on a YAML data mixture, with an LR re-warmup.

    python scripts/prepare_dataset.py --config config/data/midtrain/phase1/default.yaml --output_dir dataset/
    python trainer/train_midtrain.py --data_config config/data/midtrain/phase1/default.yaml \\
        --from_weight pretrain --use_prepared --epochs 1 --batch_size 16 --learning_rate 2e-4 --warmup_ratio 0.05
    python trainer/train_midtrain.py --data_config config/data/midtrain/phase1/default.yaml --from_resume 1 --epochs 2

Differs from train_pretrain.py only in its defaults (LR 2e-4, warmup 5%, --lr_schedule rewarm,
weights named "midtrain"), in needing --from_weight, and in its data: the mixture's prepared
train/val splits, with validation loss reported per source.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from dataset.mixture import load_mixture_config, mixture_stores
from dataset.rows import build_rows, validation_set
from model.errors import UserError
from trainer import checkpoint, engine, runtime
from trainer.cli import run
from trainer.config import TrainConfig, midtrain_parser, parse_flags
from trainer.schedule import run_schedule
from trainer.start import start_run

log = logging.getLogger("train_midtrain")


def no_checkpoint_message(cfg: TrainConfig, detail: str) -> str:
    return (
        f"Mid-training requires a pretrained checkpoint: {detail}; "
        f"make one with `python trainer/train_pretrain.py --data_path FILE.jsonl` (writes {cfg.save_dir}/pretrain_512.pth), "
        "then pass --from_weight pretrain"
    )


def main() -> None:
    args, given = parse_flags(midtrain_parser(__doc__))
    if not args.from_weight and not args.from_resume:  # fail before any work
        cfg = TrainConfig.from_args(args)
        raise UserError(
            no_checkpoint_message(cfg, f"--from_weight is required; {checkpoint.available(cfg.save_dir)}")
        )
    cfg, start, args = start_run(
        args, given, require_weight=partial(no_checkpoint_message, TrainConfig.from_args(args))
    )
    config = load_mixture_config(args.data_config)
    if start.resume is None:
        log.info(f"Loaded pretrained model from: {start.parent_path}")
    session = engine.setup(cfg)  # before the data: under torchrun one process builds what is missing
    try:
        train_store, val_store = mixture_stores(
            config,
            Path(args.prepared_dir) if args.use_prepared else None,
            Path(cfg.cache_dir),
            start.tokenizer,
            args.val_path,
        )
        seq_len = cfg.seq_len
        train = build_rows(train_store, seq_len, cfg.packing, cfg.attention)
        val = validation_set(
            val_store, seq_len, cfg.packing, cfg.attention, cfg.eval_batches * cfg.batch_size * seq_len
        )
        plan = engine.step_plan(cfg, train)
        schedule = run_schedule(cfg, plan, train.segment_names, start.parent)
        optimizer_state = None
        if args.optimizer_state == "pretrain" and start.resume is None:
            optimizer_state, path, step = checkpoint.carried_optimizer_state(
                start.parent or {}, cfg.save_dir, cfg.checkpoint_dir, start.model.config.hidden_size
            )
            log.info(f"Optimizer state carried over from {path} (step {step})")
        stage = engine.Stage(
            name="midtrain",
            schedule=schedule,
            plan=plan,
            # the precision as resolved: a resumed run keeps it, on whatever machine it resumes
            args={**vars(args), "dtype": session.dtype_name, "world_size": session.dist.world_size},
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
