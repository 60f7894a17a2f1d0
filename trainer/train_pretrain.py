"""Pretrain a miniGPT model on JSONL text ({"text": ..., "source": ...} rows).

    python trainer/train_pretrain.py --data_path dataset/pretrain_default_train.jsonl --epochs 1

Weights go to out/pretrain_{hidden_size}.pth, resume state to checkpoints/. Schedule (--lr_schedule):
a short linear warmup, then cosine decay to LR/10 by default, or warmup-stable-decay (wsd). Also
runs under torchrun (DDP, FSDP2).
"""

from __future__ import annotations

from dataset.rows import build_rows, validation_set
from dataset.store import build_store, check_data_files, store_key
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
        seq_len = cfg.seq_len
        train = build_rows(
            build_store(data_paths, start.tokenizer, cfg.cache_dir), seq_len, cfg.packing, cfg.attention
        )
        val = None
        if val_paths:
            val_store = build_store(val_paths, start.tokenizer, cfg.cache_dir)
            cap = cfg.eval_batches * cfg.batch_size * seq_len
            val = validation_set(val_store, seq_len, cfg.packing, cfg.attention, cap)
        plan = engine.step_plan(cfg, train)
        stage = engine.Stage(
            name="pretrain",
            schedule=run_schedule(cfg, plan, train.segment_names, start.parent),
            plan=plan,
            # the precision as resolved: a resumed run keeps it, on whatever machine it resumes
            args={**vars(args), "dtype": session.dtype_name, "world_size": session.dist.world_size},
            identity={"data": store_key(data_paths, start.tokenizer)},
            meta={"data_path": [str(x) for x in data_paths]},
        )
        engine.fit(session, start, train, val, stage)
    finally:
        runtime.cleanup()


if __name__ == "__main__":
    run(main)
