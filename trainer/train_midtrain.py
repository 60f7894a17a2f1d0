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

from dataset.mixture import load_mixture_config, prepare_mixture, prepared_paths
from dataset.packed import build_packed
from model.errors import UserError
from trainer import dist, engine
from trainer.checkpoint import available, checkpoint_paths, load_checkpoint
from trainer.cli import run
from trainer.paths import repo_path
from trainer.schedule import get_anneal_lr, get_midtrain_lr, get_wsd_lr, warmup_steps_for

log = logging.getLogger("train_midtrain")


def prepared_data(config, use_prepared: bool, prepared_dir: Path, cache_dir: Path) -> tuple[Path, Path]:
    """(train, val) JSONL of the mixture: the prepared files (checked against the config), or a
    fresh preparation cached under cache_dir by the config's hash."""
    if use_prepared:
        train, val, manifest = prepared_paths(config, prepared_dir)
        command = f"python scripts/prepare_dataset.py --config {config.path} --output_dir {prepared_dir}"
        missing = [p for p in (train, val, manifest) if not p.is_file()]
        if missing:
            raise UserError(f"--use_prepared: {missing[0]} not found; prepare it first: {command}")
        import json

        sha = json.loads(manifest.read_text()).get("config_sha256")
        if sha != config.sha256:
            raise UserError(
                f"--use_prepared: {manifest} was prepared from a different version of {config.path} "
                f"(config sha256 {str(sha)[:12]} vs now {config.sha256[:12]}); re-run: {command} --overwrite"
            )
        return train, val
    out = cache_dir / "mixtures" / f"{config.name}-{config.sha256[:12]}"
    train, val, manifest = prepared_paths(config, out)
    if not manifest.is_file():
        log.info(
            f"Preparing {config.path} into {out} (pass --use_prepared to read files from scripts/prepare_dataset.py)"
        )
        prepare_mixture(config, out)
    return train, val


def no_checkpoint_message(cfg: engine.TrainConfig, detail: str) -> str:
    return (
        f"Mid-training requires a pretrained checkpoint: {detail}; "
        f"make one with `python trainer/train_pretrain.py --data_path FILE.jsonl` (writes {cfg.save_dir}/pretrain_512.pth), "
        "then pass --from_weight pretrain"
    )


def carried_optimizer_state(cfg: engine.TrainConfig, start: engine.Start) -> dict:
    """The AdamW state the pretrain run ended with, from its resume checkpoint."""
    parent = start.parent or {}
    if "save_weight" not in parent:
        raise UserError("--optimizer_state pretrain: the --from_weight checkpoint does not name its run")
    path = checkpoint_paths(
        cfg.save_dir, cfg.checkpoint_dir, parent["save_weight"], start.model.config.hidden_size
    ).resume
    if not path.is_file():
        raise UserError(
            f"--optimizer_state pretrain: {path} not found (the pretrain run's resume state); {available(path.parent, '_resume')}"
        )
    ckpt = load_checkpoint(path)
    if ckpt["meta"].get("identity_sha256") != parent.get("identity_sha256") or ckpt.get("step") != parent.get(
        "step"
    ):
        raise UserError(
            f"--optimizer_state pretrain: {path} is not the state that {parent.get('path')} was saved with"
        )
    log.info(f"Optimizer state carried over from {path} (step {ckpt['step']})")
    return ckpt["optimizer"]


def make_schedule(args, cfg: engine.TrainConfig, start: engine.Start):
    """(lr_at(step, total), banner(total)) for --lr_schedule."""
    lr, wr = cfg.learning_rate, cfg.warmup_ratio
    if args.lr_schedule == "rewarm":

        def banner(total: int) -> list[str]:
            return [
                f"Mid-training with LR re-warmup: {warmup_steps_for(total, wr)} warmup steps out of {total} total steps",
                f"LR schedule: {lr / 10:.2e} → {lr:.2e} (warmup) → {lr / 10:.2e} (decay)",
            ]

        return partial(get_midtrain_lr, lr=lr, warmup_ratio=wr), banner
    if args.lr_schedule == "wsd":

        def banner(total: int) -> list[str]:
            d = max(min(round(args.decay_ratio * total), total - warmup_steps_for(total, wr)), 1)
            return [
                f"Mid-training with warmup-stable-decay: {warmup_steps_for(total, wr)} warmup, "
                f"{total - warmup_steps_for(total, wr) - d} stable, {d} decay steps out of {total}",
                f"LR schedule: {lr / 10:.2e} → {lr:.2e} (warmup) → {lr:.2e} (stable) → {lr / 10:.2e} (decay)",
            ]

        return partial(get_wsd_lr, lr=lr, warmup_ratio=wr, decay_ratio=args.decay_ratio), banner
    final_lr = (start.parent or {}).get("final_lr")
    if not final_lr:
        raise UserError(
            "--lr_schedule anneal: the --from_weight checkpoint does not record the LR its run ended with"
        )

    def banner(total: int) -> list[str]:
        return [
            f"Mid-training anneal: no warmup, LR {final_lr:.2e} (where pretraining ended) → 0 over {total} steps"
        ]

    return partial(get_anneal_lr, start_lr=final_lr), banner


def build_parser():
    p = engine.engine_parser(
        __doc__,
        save_weight="midtrain",
        learning_rate=2e-4,
        warmup_ratio=0.05,
        wandb_project="miniGPT-MidTrain",
    )
    g = p.add_argument_group("mid-training")
    g.add_argument(
        "--data_config", required=True, help="mixture YAML, e.g. config/data/midtrain/phase1/default.yaml"
    )
    g.add_argument(
        "--use_prepared",
        action="store_true",
        help="read the files scripts/prepare_dataset.py wrote (else prepare in-process, cached)",
    )
    g.add_argument(
        "--prepared_dir",
        default=str(repo_path("dataset")),
        help="where prepared files are (default: dataset/)",
    )
    g.add_argument(
        "--lr_schedule",
        default="rewarm",
        choices=("rewarm", "wsd", "anneal"),
        help="rewarm: LR/10 -> LR -> LR/10 cosine; wsd: warmup, constant, linear decay; anneal: pretrain's final LR -> 0",
    )
    g.add_argument(
        "--val_path",
        default=None,
        help="evaluate on this JSONL ({text, source} rows) instead of the mixture's val split, e.g. one held-out set shared by several runs",
    )
    g.add_argument("--decay_ratio", type=float, default=0.2, help="wsd: fraction of steps in the final decay")
    g.add_argument(
        "--optimizer_state",
        default="fresh",
        choices=("fresh", "pretrain"),
        help="fresh AdamW moments, or carry over the pretrain run's (from its resume checkpoint)",
    )
    return p


def main() -> None:
    p = build_parser()
    args = p.parse_args()
    cfg = engine.TrainConfig.from_args(args)
    if not 0 < args.decay_ratio <= 1:
        raise UserError(f"--decay_ratio must be in (0, 1], got {args.decay_ratio}")
    config = load_mixture_config(args.data_config)
    train_path, val_path = prepared_data(
        config, args.use_prepared, Path(args.prepared_dir), Path(cfg.cache_dir)
    )
    if not cfg.from_weight and not cfg.from_resume:  # fail before any setup work
        raise UserError(no_checkpoint_message(cfg, f"--from_weight is required; {available(cfg.save_dir)}"))

    session = engine.setup(cfg)
    try:
        start = engine.load_start(session, require_weight=partial(no_checkpoint_message, cfg))
        if start.resume is None:
            log.info(f"Loaded pretrained model from: {start.parent_path}")
        lr_at, banner = make_schedule(args, cfg, start)
        optimizer_state = (
            carried_optimizer_state(cfg, start)
            if args.optimizer_state == "pretrain" and start.resume is None
            else None
        )
        train = build_packed([train_path], start.tokenizer, session.cfg.max_seq_len, cfg.cache_dir)
        val = build_packed(
            [args.val_path or val_path], start.tokenizer, session.cfg.max_seq_len, cfg.cache_dir
        )
        stage = engine.Stage(
            name="midtrain",
            lr_at=lr_at,
            banner=banner,
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
            target_shares={s.name: s.ratio for s in config.sources},
            optimizer_state=optimizer_state,
        )
        engine.fit(session, start, train, val, stage)
    finally:
        dist.cleanup()


if __name__ == "__main__":
    run(main)
