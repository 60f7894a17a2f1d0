"""Pretrain a miniGPT model on JSONL text ({"text": ..., "source": ...} rows).

    python trainer/train_pretrain.py --data_path dataset/demo/smoke_stories.jsonl --epochs 1

Weights go to out/pretrain_{hidden_size}.pth, resume state to checkpoints/. Schedule: a short
linear warmup, then cosine decay to LR/10. Also runs under torchrun (DDP).
"""

from __future__ import annotations

from functools import partial

from dataset.packed import build_packed, cache_key, check_data_files
from trainer import dist, engine
from trainer.cli import run
from trainer.schedule import get_pretrain_lr, warmup_steps_for


def build_parser():
    p = engine.engine_parser(
        __doc__,
        save_weight="pretrain",
        learning_rate=5e-4,
        warmup_ratio=0.01,
        wandb_project="miniGPT-Pretrain",
    )
    p.add_argument(
        "--data_path", action="append", required=True, help="training JSONL; repeat for several files"
    )
    p.add_argument(
        "--val_path", action="append", default=None, help="validation JSONL (default: no validation)"
    )
    return p


def main() -> None:
    p = build_parser()
    args = p.parse_args()
    cfg = engine.TrainConfig.from_args(args)
    data_paths = check_data_files(args.data_path)
    val_paths = check_data_files(args.val_path) if args.val_path else None
    session = engine.setup(cfg)
    try:
        start = engine.load_start(session)
        train = build_packed(data_paths, start.tokenizer, session.cfg.max_seq_len, cfg.cache_dir)
        val = (
            build_packed(val_paths, start.tokenizer, session.cfg.max_seq_len, cfg.cache_dir)
            if val_paths
            else None
        )
        stage = engine.Stage(
            name="pretrain",
            lr_at=partial(get_pretrain_lr, lr=cfg.learning_rate, warmup_ratio=cfg.warmup_ratio),
            banner=lambda total: [
                f"LR schedule: {warmup_steps_for(total, cfg.warmup_ratio)} warmup steps to {cfg.learning_rate:.2e}, "
                f"cosine to {cfg.learning_rate / 10:.2e} at step {total}"
            ],
            identity={"data": cache_key(data_paths, start.tokenizer, session.cfg.max_seq_len)},
            meta={"data_path": [str(x) for x in data_paths]},
        )
        engine.fit(session, start, train, val, stage)
    finally:
        dist.cleanup()


if __name__ == "__main__":
    run(main)
