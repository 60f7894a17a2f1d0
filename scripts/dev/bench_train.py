"""Training throughput benchmark: the real trainer/train_pretrain.py on real TinyStories text.

    python scripts/dev/bench_train.py [--data_path ../shared/data/tinystories/train_v1_first2MiB.jsonl]

Builds the default 512x8 model (26M parameters) at sequence length 512 and runs a fixed number
of optimizer steps in each mode (fp32, bf16 autocast, bf16 autocast + torch.compile). It reads
the trainer's own metrics log, skips the first logging interval (warm-up, compilation) and
reports the median useful tokens/s (non-padding targets) and MFU against a bf16 matmul peak
measured in the same run, so the ratio does not depend on how loaded this shared machine is.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from model.config import ModelConfig
from model.errors import UserError
from trainer.checkpoint import checkpoint_paths
from trainer.cli import run
from trainer.metrics import MetricsLog
from trainer.paths import REPO_ROOT
from trainer.throughput import measure_matmul_flops

MODES = {
    "fp32": ["--dtype", "float32"],
    "bf16": ["--dtype", "bfloat16"],
    "bf16+compile": ["--dtype", "bfloat16", "--use_compile"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data_path",
        default=str(REPO_ROOT.parent / "shared" / "data" / "tinystories" / "train_v1_first2MiB.jsonl"),
    )
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--log_interval", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_seq_len", type=int, default=512)
    p.add_argument("--hidden_size", type=int, default=512)
    p.add_argument("--num_hidden_layers", type=int, default=8)
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--device", default=None)
    args = p.parse_args()
    modes = args.modes.split(",")
    if unknown := [m for m in modes if m not in MODES]:
        raise UserError(f"--modes: unknown {unknown}; choose from {list(MODES)}")
    if not Path(args.data_path).is_file():
        raise UserError(f"--data_path {args.data_path}: not found (TinyStories JSONL from ../shared/data)")

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmpdir:
        tmp = Path(tmpdir)
        py = sys.executable
        subprocess.run(
            [
                py,
                str(REPO_ROOT / "scripts" / "train_tokenizer.py"),
                "--data_path",
                args.data_path,
                "--vocab_size",
                "6400",
                "--output_dir",
                str(tmp / "tok"),
            ],
            check=True,
        )
        peak = measure_matmul_flops(device, torch.bfloat16, seconds=2.0)
        print(
            f"bf16 matmul peak measured in this run: {peak / 1e12:.3f} TFLOP/s ({device}, {torch.get_num_threads()} threads)"
        )
        cfg = ModelConfig(hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers)
        fpt = cfg.flops_per_token(args.max_seq_len)
        print(
            f"model {cfg.num_params() / 1e6:.1f}M params, {fpt / 1e6:.1f} MFLOP/token at seq {args.max_seq_len}"
        )
        rows = []
        for mode in modes:
            out = tmp / mode
            cmd = [
                py,
                str(REPO_ROOT / "trainer" / "train_pretrain.py"),
                "--data_path",
                args.data_path,
                "--tokenizer_path",
                str(tmp / "tok"),
                "--hidden_size",
                str(args.hidden_size),
                "--num_hidden_layers",
                str(args.num_hidden_layers),
                "--max_seq_len",
                str(args.max_seq_len),
                "--batch_size",
                str(args.batch_size),
                "--max_steps",
                str(args.steps),
                "--log_interval",
                str(args.log_interval),
                "--eval_interval",
                "0",
                "--save_interval",
                "0",
                "--save_dir",
                str(out),
                "--checkpoint_dir",
                str(out),
                "--cache_dir",
                str(tmp / "cache"),
                "--peak_tflops",
                str(peak / 1e12),
                *MODES[mode],
            ]
            if args.device:
                cmd += ["--device", args.device]
            print(f"\n== {mode}: {' '.join(cmd[1:])}", flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            train, _, _ = MetricsLog.read(checkpoint_paths(out, out, "pretrain", args.hidden_size).metrics)
            tps = [r["tokens_per_sec"] for r in train][1:]  # skip warm-up / compile
            med = statistics.median(tps)
            rows.append((mode, med, med * fpt / peak))
            print(f"{mode}: useful tokens/s {med:,.0f} (intervals: {', '.join(f'{t:,.0f}' for t in tps)})")
    print(f"\n{'mode':<14} {'tokens/s':>10} {'MFU vs in-run bf16 peak':>24}")
    for mode, tps, util in rows:
        print(f"{mode:<14} {tps:>10,.0f} {util:>23.1%}")


if __name__ == "__main__":
    run(main)
