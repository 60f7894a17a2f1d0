"""Evaluation benchmarks: eval_llm.py on the real MMLU test questions, HumanEval and GSM8K problems.

    python scripts/dev/bench_eval.py [--mmlu_dir ../shared/data/mmlu] [--shots 0,5] [--limit N]
    python scripts/dev/bench_eval.py --task humaneval [--batch_size 16] [--unbatched 16]
    python scripts/dev/bench_eval.py --task gsm8k --limit 200
    python scripts/dev/bench_eval.py --task selftest

``--task humaneval`` / ``gsm8k`` time generation (pass@1 on all 164 HumanEval problems with their
tests run in the sandbox; GSM8K 5-shot exact match) on the same freshly initialized checkpoint: a
random model never writes a stop string, so every problem generates its whole token budget, the
slowest case. ``--unbatched N`` also runs the first N problems one at a time (batch size 1) in the
same run, for the speed-up of batched generation. ``--task selftest`` runs every canonical HumanEval
and MBPP solution through the sandbox (eval_llm.py --code_selftest) and prints its lines.

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
from trainer.evaluation.harness import export_folder
from trainer.paths import REPO_ROOT, shared_data
from trainer.throughput import measure_matmul_flops

SHARED = shared_data()


def generation_rows(report: dict) -> list[tuple[str, dict]]:
    """(task, result) of every generation metric of every model in an eval_llm report."""
    rows = []
    for label, res in report["results"].items():
        for name, r in (res.get("exec") or {}).items():
            rows.append((f"{label} {name}", r))
        if res.get("gsm8k"):
            rows.append((f"{label} gsm8k", res["gsm8k"]))
    return rows


def selftest() -> None:
    cmd = [sys.executable, str(REPO_ROOT / "eval_llm.py"), "--code_selftest", "--no_hub"]
    cmd += ["--humaneval_path", str(SHARED / "humaneval" / "HumanEval.jsonl.gz")]
    cmd += ["--mbpp_path", str(SHARED / "mbpp" / "mbpp.jsonl")]
    print("$ " + " ".join(cmd[1:]), flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    print("\n".join(line for line in out.splitlines() if line.startswith(("humaneval:", "mbpp:"))))


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
    p.add_argument("--task", default="mmlu", choices=["mmlu", "humaneval", "gsm8k", "selftest"])
    p.add_argument(
        "--unbatched", type=int, default=0, help="also generate for the first N problems one at a time"
    )
    args = p.parse_args()
    if args.task == "selftest":
        selftest()
        return
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
            export_folder(tmp / f"bench_{args.hidden_size}.pth", folder)
        cmd = [sys.executable, str(REPO_ROOT / "eval_llm.py"), "--save_dir", str(tmp), "--weight", "bench"]
        cmd += ["--no_lm", "--no_samples", "--no_hub"]
        if args.task == "mmlu":
            cmd += ["--mmlu_path", str(mmlu), "--shots", args.shots, "--no_code", "--no_gsm8k"]
        elif args.task == "humaneval":
            cmd += ["--no_mmlu", "--no_gsm8k", "--code_samples", "0"]
            cmd += ["--humaneval_path", str(SHARED / "humaneval" / "HumanEval.jsonl.gz")]
        else:
            cmd += ["--no_mmlu", "--no_code", "--gsm8k_path", str(SHARED / "gsm8k" / "test.jsonl")]
        if args.imported:
            cmd += ["--weight", str(folder), "--hf_path", str(folder)]
        for flag in ("dtype", "device"):
            if getattr(args, flag) is not None:
                cmd += [f"--{flag}", str(getattr(args, flag))]
        one = [*cmd, "--output", str(tmp / "one.json"), "--batch_size", "1", "--limit", str(args.unbatched)]
        cmd += ["--output", str(report)]
        for flag in ("limit", "batch_size"):
            if getattr(args, flag) is not None:
                cmd += [f"--{flag}", str(getattr(args, flag))]
        print("$ " + " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        written = json.loads(report.read_text())
        if args.task != "mmlu":
            rows = generation_rows(written)
            if args.unbatched:
                print("$ " + " ".join(one[1:]), flush=True)
                subprocess.run(one, check=True, stdout=subprocess.DEVNULL)
                rows += [
                    (f"{k} (batch 1)", r)
                    for k, r in generation_rows(json.loads((tmp / "one.json").read_text()))
                ]
            print(f"\ngenerated greedily in {written['dtype']}, batch size {written['batch_size']}")
            print(
                f"{'run':<30} {'problems':>8} {'max new':>7} {'gen s':>7} {'q/s':>6} {'new tokens':>10} "
                f"{'tokens/s':>8} {'tests s':>7}"
            )
            for name, r in rows:
                print(
                    f"{name[:30]:<30} {r['n']:>8} {r['max_new_tokens']:>7} {r['seconds']:>7.1f} "
                    f"{r['questions_per_s']:>6.2f} {r['new_tokens']:>10,} {r['new_tokens'] / r['seconds']:>8.0f} "
                    f"{r.get('exec_seconds', 0):>7.1f}"
                )
            return
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
