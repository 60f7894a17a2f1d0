"""Pretrain a miniGPT model on JSONL text ({"text": ..., "source": ...} rows).

    python trainer/train_pretrain.py --data_path dataset/pretrain_default_train.jsonl --epochs 1

Weights go to out/pretrain_{hidden_size}.pth, resume state to checkpoints/. Schedule (--lr_schedule):
a short linear warmup, then cosine decay to LR/10 by default, or warmup-stable-decay (wsd). Also
runs under torchrun (DDP, FSDP2).
"""

from __future__ import annotations

from dataset.packed import build_packed, cache_key, check_data_files
from trainer import engine, runtime
from trainer.cli import run
from trainer.config import parse_flags, pretrain_parser
from trainer.schedule import run_schedule
from trainer.start import start_run


def main() -> None:
    args, given = parse_flags(pretrain_parser(__doc__))
    cfg, start, args = start_run(args, given)
    data_paths = check_data_files(args.data_path)
    val_paths = check_data_files(args.val_path) if args.val_path else None
    session = engine.setup(cfg)
    try:
        seq_len = cfg.max_seq_len
        train = build_packed(data_paths, start.tokenizer, seq_len, cfg.cache_dir)
        val = build_packed(val_paths, start.tokenizer, seq_len, cfg.cache_dir) if val_paths else None
        plan = engine.step_plan(cfg, train)
        stage = engine.Stage(
            name="pretrain",
            schedule=run_schedule(cfg, plan, train.segment_names, start.parent),
            plan=plan,
            args={**vars(args), "world_size": session.dist.world_size},
            identity={"data": cache_key(data_paths, start.tokenizer, seq_len)},
            meta={"data_path": [str(x) for x in data_paths]},
        )
        engine.fit(session, start, train, val, stage)
    finally:
        runtime.cleanup()


if __name__ == "__main__":
    run(main)
