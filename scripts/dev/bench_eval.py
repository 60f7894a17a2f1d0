"""MMLU scoring benchmark: eval_llm.py on the 14,042 real MMLU test questions.

    python scripts/dev/bench_eval.py [--mmlu_dir ../shared/data/mmlu] [--shots 0,5] [--limit N]

Builds a checkpoint of the default 512x8 model (26M parameters; vocabulary 6400 from a byte-level
BPE trained on TinyStories) through the same code the trainers save with, then runs the real
eval_llm.py on it and reports, per shot setting, the time, questions/s, tokens run through the
model, the padding share and the forward FLOP rate as a share of a bf16 matmul peak measured in
the same run. The precision is eval_llm.py's: float32 unless --dtype says otherwise (bf16 flips
near-tie answers; scripts/dev/bench_mmlu_harness.py counts them). The weights are freshly
initialized: scoring costs the same whatever they are (the prompts, their tokens and the forward
passes do not depend on them), so no training is needed to measure it.

--imported also exports the checkpoint to a transformers folder (scripts/export_hf.py) and scores
it in the same eval_llm.py run twice more: as ``--weight <folder>`` (a model imported from
transformers: converted, proven by the parity check, scored by our scorer) and as ``--hf_path
<folder>`` (transformers' own forward), so the three rates of one shape compare in one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from dataset.io import iter_docs
from dataset.tokenizer import train_tokenizer
from model.config import ModelConfig
from model.errors import UserError
from model.model import MiniGPTForCausalLM
from trainer.checkpoint import atomic_torch_save, weights_state
from trainer.cli import run
from trainer.paths import REPO_ROOT
from trainer.throughput import measure_matmul_flops

SHARED = REPO_ROOT.parent / "shared" / "data"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mmlu_dir", default=str(SHARED / "mmlu"), help="folder with test.jsonl and dev.jsonl")
    p.add_argument("--tokenizer_data", default=str(SHARED / "tinystories" / "train_v1_first2MiB.jsonl"))
    p.add_argument("--shots", default="0", help="comma-separated shot counts (default 0)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N questions")
    p.add_argument("--hidden_size", type=int, default=512)
    p.add_argument("--num_hidden_layers", type=int, default=8)
    p.add_argument("--max_seq_len", type=int, default=512, help="the model's evaluation context")
    p.add_argument("--batch_size", type=int, default=None, help="eval_llm.py --batch_size")
    p.add_argument("--dtype", default=None, help="eval_llm.py --dtype")
    p.add_argument("--device", default=None)
    p.add_argument(
        "--imported", action="store_true", help="also score the model as a transformers folder (see above)"
    )
    args = p.parse_args()
    mmlu = Path(args.mmlu_dir)
    if not (mmlu / "test.jsonl").is_file():
        raise UserError(f"--mmlu_dir {mmlu}: no test.jsonl there (MMLU from ../shared/data/mmlu)")
    if not Path(args.tokenizer_data).is_file():
        raise UserError(f"--tokenizer_data {args.tokenizer_data}: not found")

    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp_name:
        tmp = Path(tmp_name)
        tok = train_tokenizer((t for t, _ in iter_docs(args.tokenizer_data)), 6400, tmp / "tok")
        cfg = ModelConfig(
            hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers, vocab_size=len(tok)
        )
        torch.manual_seed(0)
        model = MiniGPTForCausalLM(cfg)
        meta = {"stage": "bench", "max_seq_len": args.max_seq_len, "step": 0, "finished": True}
        atomic_torch_save(weights_state(model, tok, meta), tmp / f"bench_{args.hidden_size}.pth")
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        peak = measure_matmul_flops(device, torch.bfloat16, seconds=2.0)
        print(
            f"model {cfg.num_params() / 1e6:.1f}M params ({args.hidden_size}x{args.num_hidden_layers}, "
            f"vocab {len(tok)}), context {args.max_seq_len}; bf16 matmul peak measured in this run: "
            f"{peak / 1e12:.3f} TFLOP/s ({device}, {torch.get_num_threads()} threads)",
            flush=True,
        )
        report = tmp / "eval.json"
        folder = tmp / "hf_bench"
        if args.imported:
            subprocess.run(
                [sys.executable, str(REPO_ROOT / "scripts" / "export_hf.py"), "--weight", str(tmp / f"bench_{args.hidden_size}.pth"), "--output_dir", str(folder)],
                check=True,
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
        cmd = [
            sys.executable,
            str(REPO_ROOT / "eval_llm.py"),
            "--save_dir",
            str(tmp),
            "--weight",
            "bench",
            "--mmlu_path",
            str(mmlu),
            "--shots",
            args.shots,
            "--no_lm",
            "--no_code",
            "--no_samples",
            "--no_hub",
            "--output",
            str(report),
        ]
        if args.imported:
            cmd += ["--weight", str(folder), "--hf_path", str(folder)]
        for flag in ("limit", "batch_size", "dtype", "device"):
            if getattr(args, flag) is not None:
                cmd += [f"--{flag}", str(getattr(args, flag))]
        print("$ " + " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        written = json.loads(report.read_text())
        results = {label: r["mmlu"] for label, r in written["results"].items()}
    # forward FLOPs per scored token: 2N + the attention term (flops_per_token / 3, PaLM convention,
    # at the mean row length) less the LM head, which runs at one position per question
    head = 2 * cfg.vocab_size * cfg.hidden_size
    print(f"\nscored in {written['dtype']}")
    print(
        f"{'model':<14} {'setting':<8} {'questions':>9} {'seconds':>8} {'q/s':>6} {'vs first':>8} "
        f"{'tokens':>10} {'padding':>8} {'of peak':>8}"
    )
    first = next(iter(results.values()))
    for label, per_setting in results.items():
        for setting, r in per_setting.items():
            mean_len = r["tokens"] / r["n"]
            fwd = cfg.flops_per_token(round(mean_len)) / 3 - head
            util = r["tokens"] * fwd / r["seconds"] / peak
            ratio = r["questions_per_s"] / first[setting]["questions_per_s"]
            print(
                f"{label[:14]:<14} {setting:<8} {r['n']:>9,} {r['seconds']:>8.1f} {r['questions_per_s']:>6.1f} "
                f"{ratio:>8.2f} {r['tokens']:>10,} {r['padding']:>8.1%} {util:>8.1%}"
            )


if __name__ == "__main__":
    run(main)
