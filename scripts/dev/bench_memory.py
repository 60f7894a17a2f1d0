"""Memory per process: DDP vs FSDP at 2 ranks (torchrun, gloo on CPU), the same model and data.

    python scripts/dev/bench_memory.py [--hidden_size 512 --num_hidden_layers 8]

Runs the real trainer/train_pretrain.py a few steps under each strategy (and FSDP with
activation checkpointing) and reports, per rank: the parameters and AdamW state the rank holds
(the trainer's "FSDP shards" line) and its peak memory (the trainer's "Peak memory per rank"
line: peak RSS on the CPU), next to the estimate of trainer/memory.py. Model state should halve
per rank under FSDP; the peak also holds the framework (~0.3 GiB per process of imported torch)
and the activations, which FSDP does not shard.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from model.config import ModelConfig
from model.errors import UserError
from trainer.cli import run
from trainer.memory import GiB, estimate
from trainer.paths import REPO_ROOT, shared_data

SETTINGS = {
    "ddp": ["--strategy", "ddp"],
    "fsdp": ["--strategy", "fsdp"],
    "fsdp+ac": ["--strategy", "fsdp", "--activation_checkpointing"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data_path",
        default=str(shared_data() / "tinystories" / "train_v1_first2MiB.jsonl"),
    )
    p.add_argument("--hidden_size", type=int, default=512)
    p.add_argument("--num_hidden_layers", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=4, help="rows per micro-batch per rank")
    p.add_argument("--max_seq_len", type=int, default=512)
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args()
    if not Path(args.data_path).is_file():
        raise UserError(f"--data_path {args.data_path}: not found (TinyStories JSONL from ../shared/data)")
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmpdir:
        tmp = Path(tmpdir)
        subprocess.run(
            [py, str(REPO_ROOT / "scripts" / "train_tokenizer.py"), "--data_path", args.data_path,
             "--vocab_size", "6400", "--max_docs", "2000", "--output_dir", str(tmp / "tok")],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        cfg = ModelConfig(hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers)
        n = cfg.num_params()
        print(
            f"model {n / 1e6:.1f}M parameters (model state 16 x N = {16 * n / GiB:.3f} GiB), 2 ranks on CPU"
        )
        print(
            f"{'setting':<9} {'params/rank':>22} {'AdamW/rank':>22} {'peak RSS/rank (GiB)':>22} {'estimate (GiB)':>15}"
        )
        for i, (name, flags) in enumerate(SETTINGS.items()):
            out = tmp / name
            cmd = [
                py, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(29650 + i),
                str(REPO_ROOT / "trainer" / "train_pretrain.py"), "--data_path", args.data_path,
                "--tokenizer_path", str(tmp / "tok"), "--hidden_size", str(args.hidden_size),
                "--num_hidden_layers", str(args.num_hidden_layers), "--max_seq_len", str(args.max_seq_len),
                "--batch_size", str(args.batch_size), "--max_steps", str(args.steps), "--dtype", "bfloat16",
                "--log_interval", str(args.steps), "--eval_interval", "0", "--save_interval", "0",
                "--save_dir", str(out), "--checkpoint_dir", str(out), "--cache_dir", str(tmp / "cache"), *flags,
            ]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", **_env()})
            if proc.returncode != 0:
                raise UserError(f"{name}: train_pretrain failed: {proc.stderr.strip().splitlines()[-1:]}")
            found = re.search(r"Peak memory per rank \(GiB\): \[([^\]]*)\]", proc.stdout)
            if found is None:
                raise UserError(f"{name}: no peak memory line in train_pretrain's output")
            peaks = found[1]
            shards = re.search(
                r"FSDP shards per rank: parameters \[([^\]]*)\] of [\d,]+; AdamW state \[([^\]]*)\]",
                proc.stdout,
            )
            params, adam = (shards[1], shards[2]) if shards else (f"{n}, {n}", f"{2 * n}, {2 * n}")
            est = estimate(cfg, strategy=flags[1], world_size=2, micro_batch=args.batch_size,
                           seq_len=args.max_seq_len, checkpointing="--activation_checkpointing" in flags,
                           fused_attention=False)  # fmt: skip
            print(f"{name:<9} {params:>22} {adam:>22} {peaks:>22} {est.total / GiB:>15.3f}")


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}


if __name__ == "__main__":
    run(main)
