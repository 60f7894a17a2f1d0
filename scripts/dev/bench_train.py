"""Training speed side by side: our trainer against transformers' Trainer, same model, same rows.

    python scripts/dev/bench_train.py                         # all shapes, 2 interleaved rounds
    python scripts/dev/bench_train.py --shapes smollm2-135m --rounds 3 --steps 12

For each shape a transformers folder with random weights (the tokenizer: a byte-level BPE trained
on the same TinyStories text, so the ids are real text; the embedding keeps the shape's vocabulary,
so the LM head and loss cost what they cost in that model) is trained, in one run, interleaved
round by round, by:

  ours           trainer/train_pretrain.py --from_weight with its defaults, from the folder converted
                 once beforehand into our checkpoint (a user's second run; the load-time parity
                 proof holds both models at once and is not a training cost): document-aware
                 rows: whole documents best-fit packed, document attention; the fused loss; compile
                 where its rule says; counting only target tokens
  ours-compile   the same with --use_compile (the default decides by COMPILE_RULE, which is off
                 for a run this short: "ours" then trains eagerly)
  hf             transformers' Trainer (the engine under axolotl, LLaMA-Factory, TRL), its defaults:
                 eager, rows of concatenated text (``group_texts``), every position a target
  hf-compile     the same with ``torch_compile=True``

all with AdamW (betas 0.9/0.95, weight decay 0.1, the same LR, no warmup), bf16 autocast, gradient
clipping at 1.0, batch 4 x 512 tokens (``--batch_size`` / ``--seq_len``). Each run is a fresh process;
its first ``--warmup`` steps (compilation, allocator warm-up) are not timed; tokens/s are useful
(target) tokens over the timed steps (ours: the harmonic mean of its per-step rates, i.e. tokens over
time as for the Trainer); peak memory is the process's peak RSS. MFU uses the project's FLOP count
(model.config.ModelConfig.flops_per_token) against the best 2048^3 bf16 matmul rate measured in the
same run (before each round; trainer.throughput), so ratios do not depend on how loaded this shared
machine is. The CPU's model and whether it has AMX are printed first: the peak, and how much of a
step the matmuls are, differ between machines with and without AMX.

Shapes: smollm2-135m (576 x 30, 9 heads, 3 KV heads, 1536 MLP, 49,152 vocab, tied), qwen3-0.6b
(1024 x 28, 16 heads, 8 KV, head_dim 128, 3072 MLP, 151,936 vocab, tied; fewer steps: a short run), and
ours-512x8 (the default 26M model: 512 x 8, 8 heads, 2 KV, 1408 MLP, 6,400 vocab).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from trainer.paths import REPO_ROOT, shared_data

SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": dict(arch="llama", hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, intermediate_size=1536, vocab_size=49152, rope_theta=100000.0),
    "qwen3-0.6b": dict(arch="qwen3", hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, intermediate_size=3072, vocab_size=151936,
                       rope_theta=1000000.0),
    "ours-512x8": dict(arch="llama", hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                       num_key_value_heads=2, intermediate_size=1408, vocab_size=6400, rope_theta=1000000.0),
}  # fmt: skip
SYSTEMS = ("ours", "ours-compile", "hf", "hf-compile")
DATA = shared_data() / "tinystories" / "train_v1_first2MiB.jsonl"
LR = 3e-4
OURS = "ours.pth"  # the folder converted once into our checkpoint (ours_checkpoint, before the timed runs)
BENCH_VOCAB = 6400  # the benchmark tokenizer's ids: within every shape's vocabulary


def make_folder(shape: str, out: Path, tok_dir: Path) -> Path:
    """A transformers folder of ``shape`` with random weights and the benchmark's tokenizer."""
    import torch
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedModel,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    folder = out / shape
    if (folder / "config.json").is_file():
        return folder
    s: dict[str, Any] = dict(SHAPES[shape])
    arch = s.pop("arch")
    common: dict[str, Any] = dict(max_position_embeddings=4096, tie_word_embeddings=True, rms_norm_eps=1e-6,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    model: PreTrainedModel
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**s, **common))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(**s, **common, use_sliding_window=False))
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tok_dir)).save_pretrained(folder)
    return folder


def ours_checkpoint(folder: Path) -> Path:
    """The folder converted once into our checkpoint (loaded, parity proven, saved), so that the
    timed runs of ours start as a second run of a user's would, and their peak memory is the
    training's, not the load-time parity proof's (ours and transformers' model side by side)."""
    from trainer import checkpoint, weights

    path = folder / OURS
    if not path.is_file():
        got = weights.load(weights.resolve(str(folder), folder))
        checkpoint.atomic_torch_save(checkpoint.weights_state(got.model, got.tokenizer, got.meta), path)
    return path


def bench_vocab(tok_dir: Path) -> int:
    """The vocabulary size of a --work folder's tokenizer (one left by an older version may differ)."""
    from dataset.tokenizer import load_tokenizer

    return len(load_tokenizer(tok_dir))


def cpu_model() -> str:
    """The CPU's model name and whether it has AMX (bf16 tile matmuls), from /proc/cpuinfo."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    name = next((x.split(":", 1)[1].strip() for x in info.splitlines() if x.startswith("model name")), "?")
    return f"{name}, {os.cpu_count()} cores, {'AMX' if 'amx_bf16' in info else 'no AMX'}"


def texts(limit: int) -> list[str]:
    out = []
    with open(DATA, encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line)["text"])
            if len(out) == limit:
                break
    return out


# --------------------------------------------------------------------------- one run per process


def child_hf(folder: Path, steps: int, warmup: int, batch: int, seq: int, compile_: bool, data: Path) -> dict:
    """transformers' Trainer on concatenated rows of ``seq`` tokens (its group_texts layout)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    tok = AutoTokenizer.from_pretrained(str(folder))
    ids: list[int] = []
    for t in (json.loads(x)["text"] for x in data.read_text().splitlines()):
        ids += [tok.bos_token_id, *tok(t, add_special_tokens=False)["input_ids"], tok.eos_token_id]
        if len(ids) > (steps + 1) * batch * seq + 1:
            break
    rows = [ids[i * seq : (i + 1) * seq] for i in range(len(ids) // seq)]
    train = [{"input_ids": r, "labels": r} for r in rows]
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps, learning_rate=LR,
            weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, warmup_steps=0,
            lr_scheduler_type="cosine", max_grad_norm=1.0, bf16=True, use_cpu=True, optim="adamw_torch",
            torch_compile=compile_, logging_steps=1000, save_strategy="no", report_to=[],
            dataloader_num_workers=0, seed=0,
        )  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[Clock()])
        start = time.perf_counter()
        trainer.train()
    timed = times[warmup:]
    seconds = timed[-1] - timed[0] if len(timed) > 1 else float("nan")
    # every position of a concatenated row is a target but its last (transformers shifts the labels)
    tokens = (len(timed) - 1) * batch * (seq - 1)
    return {
        "tokens_per_sec": tokens / seconds,
        "steps_timed": len(timed) - 1,
        "total_s": time.perf_counter() - start,
    }


def child_ours(
    folder: Path, steps: int, warmup: int, batch: int, seq: int, compile_: bool, data: Path, out: Path
) -> dict:
    cmd = [sys.executable, str(REPO_ROOT / "trainer" / "train_pretrain.py"), "--data_path", str(data),
           "--from_weight", str(folder / OURS), "--max_seq_len", str(seq), "--batch_size", str(batch),
           "--max_steps", str(steps), "--log_interval", "1", "--eval_interval", "0", "--save_interval", "0",
           "--learning_rate", str(LR), "--warmup_ratio", "0", "--dtype", "bfloat16", "--save_dir", str(out),
           "--checkpoint_dir", str(out), "--cache_dir", str(out.parent / "cache"), "--save_weight", "bench",
           *(["--use_compile"] if compile_ else [])]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
    if proc.returncode:
        raise SystemExit(f"train_pretrain failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    metrics = next(out.glob("bench_*_metrics.jsonl"))
    recs = [json.loads(x) for x in metrics.read_text().splitlines()]
    for saved in out.glob("*.pth"):  # the run's final weights and resume state: 9 GB at Qwen3-0.6B
        saved.unlink()
    tps = [r["tokens_per_sec"] for r in recs if r["kind"] == "train"][warmup:]
    compiled = [line for line in proc.stdout.splitlines() if "compile" in line.lower()]
    # the harmonic mean of the per-step rates: tokens over time, as the Trainer's figure (the steps
    # hold the same row count; their target counts differ by the padding alone)
    return {"tokens_per_sec": statistics.harmonic_mean(tps), "steps_timed": len(tps), "log": compiled[-3:]}


def child(args: argparse.Namespace) -> None:
    spec = json.loads(args.child)
    folder, data = Path(spec["folder"]), Path(spec["data"])
    if spec["system"].startswith("hf"):
        got = child_hf(
            folder,
            spec["steps"],
            spec["warmup"],
            spec["batch"],
            spec["seq"],
            spec["system"] == "hf-compile",
            data,
        )
    else:
        got = child_ours(
            folder,
            spec["steps"],
            spec["warmup"],
            spec["batch"],
            spec["seq"],
            spec["system"] == "ours-compile",
            data,
            Path(spec["out"]),
        )
    # the training process's own peak: the Trainer runs in this process; ours in its child, this
    # one only waiting (and importing no torch, so the two figures compare the trainers alone)
    who = resource.RUSAGE_SELF if spec["system"].startswith("hf") else resource.RUSAGE_CHILDREN
    rss = resource.getrusage(who).ru_maxrss
    print(json.dumps({**got, "peak_rss_gib": rss / 2**20}))


# --------------------------------------------------------------------------- the comparison


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=10, help="steps per run (qwen3-0.6b: half)")
    p.add_argument("--warmup", type=int, default=3, help="first steps not timed")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--seq_len", type=int, default=512)
    p.add_argument("--work", default=None)
    p.add_argument("--output", default=None, help="write the figures as JSON here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    import torch

    from model.config import ModelConfig
    from trainer.throughput import measure_matmul_flops

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_train_"))
    work.mkdir(parents=True, exist_ok=True)
    tok_dir = work / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file() or bench_vocab(tok_dir) != BENCH_VOCAB:
        from dataset.tokenizer import train_tokenizer

        train_tokenizer(texts(3000), BENCH_VOCAB, tok_dir)  # within every shape's vocabulary
    data = work / "stories.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts(20000)))

    def measure_peak() -> float:
        got = measure_matmul_flops(torch.device("cpu"), torch.bfloat16)
        peaks.append(got)
        print(
            f"bf16 2048^3 matmul peak measured now: {got / 1e12:.2f} TFLOP/s ({torch.get_num_threads()} threads)"
        )
        return max(peaks)

    peaks: list[float] = []
    print(f"CPU: {cpu_model()}")
    measure_peak()
    results: dict[str, Any] = {"cpu": cpu_model(), "shapes": {}}
    for shape in args.shapes.split(","):
        folder = make_folder(shape, work, tok_dir)
        if any(s.startswith("ours") for s in args.systems.split(",")):
            ours_checkpoint(folder)  # here, not in a timed child: its peak memory is the load's
        cfg = ModelConfig(**{k: v for k, v in SHAPES[shape].items() if k != "arch"})
        flops = cfg.flops_per_token(args.seq_len)
        steps = args.steps if shape != "qwen3-0.6b" else max(args.warmup + 3, args.steps // 2)
        runs: dict[str, list[dict]] = {s: [] for s in args.systems.split(",")}
        for r in range(args.rounds):
            measure_peak()
            for system in runs:
                spec = dict(folder=str(folder), data=str(data), system=system, steps=steps, warmup=args.warmup,
                            batch=args.batch_size, seq=args.seq_len, out=str(work / f"{shape}-{system}-{r}"))  # fmt: skip
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True
                )
                if proc.returncode:
                    raise SystemExit(
                        f"{shape} {system}: failed\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
                    )
                got = json.loads(proc.stdout.strip().splitlines()[-1])
                runs[system].append(got)
                print(f"  {shape} round {r + 1} {system:<11} {got['tokens_per_sec']:8.0f} tokens/s  "
                      f"peak RSS {got['peak_rss_gib']:.2f} GiB", flush=True)  # fmt: skip
        peak = max(peaks)  # the machine's peak: the best measured in this run
        for done in runs.values():
            for one in done:
                one["mfu"] = one["tokens_per_sec"] * flops / peak
        table = {s: {"tokens_per_sec": statistics.median(x["tokens_per_sec"] for x in v),
                     "mfu": statistics.median(x["mfu"] for x in v),
                     "peak_rss_gib": max(x["peak_rss_gib"] for x in v), "rounds": v} for s, v in runs.items()}  # fmt: skip
        results["shapes"][shape] = table
        base = table.get("hf", {}).get("tokens_per_sec")
        for s, v in table.items():
            ratio = f"{v['tokens_per_sec'] / base:.2f}x hf" if base else ""
            print(f"{shape:<13} {s:<11} {v['tokens_per_sec']:8.0f} tokens/s  MFU {100 * v['mfu']:5.1f}%  "
                  f"peak {v['peak_rss_gib']:.2f} GiB  {ratio}")  # fmt: skip
    results["peak_tflops"] = max(peaks) / 1e12
    results["peaks_tflops"] = [x / 1e12 for x in peaks]
    print(f"MFU against the best bf16 2048^3 matmul peak of the run: {max(peaks) / 1e12:.2f} TFLOP/s")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
