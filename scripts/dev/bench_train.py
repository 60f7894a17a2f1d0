"""Training speed side by side: our trainer against transformers' Trainer, same model, same rows.

    python scripts/dev/bench_train.py                         # all shapes, 2 interleaved rounds
    python scripts/dev/bench_train.py --shapes smollm2-135m --rounds 3 --steps 12

For each shape a transformers folder with random weights (the tokenizer: a byte-level BPE trained
on the same TinyStories text, so the ids are real text; the embedding keeps the shape's vocabulary,
so the LM head and loss cost what they cost in that model) is trained, in one run, interleaved
round by round, by:

  ours-eager     trainer/train_pretrain.py --from_weight with its defaults, from the folder converted
                 once beforehand into our checkpoint (a user's second run; the load-time parity
                 proof holds both models at once and is not a training cost): document-aware
                 rows: whole documents best-fit packed, document attention; the fused loss;
                 counting only target tokens; --no_compile
  ours-compile   the same with --use_compile

Which of the two is ours' default depends on the run: "auto" compiles on the CPU by COMPILE_RULE
(trainer/parallel.py: model size and run length), which a benchmark run of a few steps never meets.
The table marks the one a run of ``--typical_steps`` optimizer steps gets (1,000 by default: e.g.
2M tokens in steps of 4 x 512), and prints what decides the rule: the compiled first step's time
(compilation included) and the steps after which compiling has paid for itself, ``(first compiled
step - eager step) / (eager step - compiled step)``, the step times being the rows' tokens (batch x
seq) over the medians' tokens/s (both runs train the same rows, so their padding cancels).
  hf             transformers' Trainer (the engine under axolotl, LLaMA-Factory, TRL), its defaults:
                 eager, rows of concatenated text (``group_texts``), every position a target
  hf-compile     the same with ``torch_compile=True``

all with torch's fused AdamW (ours' optimizer; the Trainer's default, "adamw_torch_fused", on torch >=
2.8) (betas 0.9/0.95, weight decay 0.1, the same LR, no warmup), the same precision (``--dtype``, as
the trainer's: "auto" is bf16 autocast, float32 on a CPU without bf16 matmul instructions), gradient
clipping at 1.0, batch 4 x 512 tokens (``--batch_size`` / ``--seq_len``). Each run is a fresh process;
its first ``--warmup`` steps (compilation, allocator warm-up) are not timed, and it compiles from
cold (an empty TORCHINDUCTOR_CACHE_DIR of its own, as a user's first run); tokens/s are useful
(target) tokens over the timed steps (ours: the harmonic mean of its per-step rates, i.e. tokens over
time as for the Trainer); peak memory is the training process's own (on the CPU its peak RSS, on
CUDA the allocator's peak). MFU uses the project's FLOP count (model.config.ModelConfig.flops_per_token)
against the best 2048^3 matmul rate in the run's precision measured in the same run (before each
round; trainer.throughput), so ratios do not depend on how loaded this shared machine is; on CUDA
against the device's data-sheet bf16 peak, as the trainer logs it. The CPU's model and whether it
has AMX are printed first: the peak, and how much of a step the matmuls are, differ between machines
with and without AMX.

    python scripts/dev/bench_train.py --device cuda --data dataset/demo/tinystories.jsonl   # a GPU
    (make gpu-check's step 9 runs it on the SmolLM2 shape)

``--step``: one training step side by side in one process instead (see :func:`step_side_by_side`):

    python scripts/dev/bench_train.py --step --shapes smollm2-135m --reps 8
    python scripts/dev/bench_train.py --step --shapes ours-512x8 --batch_size 8

Whole trainers in fresh processes, round by round, compare what a user runs; but on a shared
machine whose matmul rate moves by 2x within minutes (its bf16 peak read 0.42 and 1.65 TFLOP/s in
consecutive rounds of one run) a ratio between two runs minutes apart is partly the machine.
``--step`` alternates the steps of ours-eager, ours-compile and transformers' model (``hf``, and
compiled: ``hf-compile``) step by step in one process, so each repetition compares them under the
same conditions; it measures the matmul peak before each repetition for the MFU. Then it
times the step's linear-layer GEMMs alone (:func:`gemm_ceiling`): the MFU a step would reach if
attention, norms, the loss and the optimizer took no time.

Shapes: smollm2-135m (576 x 30, 9 heads, 3 KV heads, 1536 MLP, 49,152 vocab, tied), qwen3-0.6b
(1024 x 28, 16 heads, 8 KV, head_dim 128, 3072 MLP, 151,936 vocab, tied; fewer steps: a short run),
ours-512x8 (the default 26M model: 512 x 8, 8 heads, 2 KV, 1408 MLP, 6,400 vocab), and tiny (64 x 2,
for gpu_check --smoke; not in the default --shapes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
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
    "tiny": dict(arch="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=192, vocab_size=6400, rope_theta=10000.0),  # gpu_check --smoke
    "ours-512x8": dict(arch="llama", hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                       num_key_value_heads=2, intermediate_size=1408, vocab_size=6400, rope_theta=1000000.0),
}  # fmt: skip
SYSTEMS = ("ours-eager", "ours-compile", "hf", "hf-compile")
DATA = shared_data() / "tinystories" / "train_v1_first2MiB.jsonl"
LR = 3e-4
OURS = "ours.pth"  # the folder converted once into our checkpoint (ours_checkpoint, before the timed runs)
BENCH_VOCAB = 6400  # the benchmark tokenizer's ids: within every shape's vocabulary


def shape_config(shape: str) -> Any:
    """The shape's model.config.ModelConfig (its FLOP count, its parameters)."""
    from model.config import ModelConfig

    return ModelConfig(**{k: v for k, v in SHAPES[shape].items() if k != "arch"})


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
        from dataset.tokenizer import load_tokenizer

        if load_tokenizer(folder).get_vocab() == load_tokenizer(tok_dir).get_vocab():
            return folder
        shutil.rmtree(folder)  # made with an older --work tokenizer: its ids would not match
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


def texts(path: Path, limit: int) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line)["text"])
            if len(out) == limit:
                break
    return out


# --------------------------------------------------------------------------- one run per process


def concatenated(tok: Any, data: Path, n: int) -> list[int]:
    """The token ids of ``data``'s texts, each as <bos> text <eos>, one after another (transformers'
    group_texts layout), until there are at least ``n`` (all of them if fewer)."""
    ids: list[int] = []
    for line in data.read_text().splitlines():
        ids += [tok.bos_token_id, *tok(json.loads(line)["text"], add_special_tokens=False)["input_ids"]]
        ids.append(tok.eos_token_id)
        if len(ids) >= n:
            break
    return ids


def child_hf(spec: dict) -> dict:
    """transformers' Trainer on concatenated rows of ``seq`` tokens (its group_texts layout)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    folder, steps, warmup, batch, seq = (spec[k] for k in ("folder", "steps", "warmup", "batch", "seq"))
    cuda = spec["device"] == "cuda"
    tok = AutoTokenizer.from_pretrained(folder)
    ids = concatenated(tok, Path(spec["data"]), (steps + 1) * batch * seq + 2)
    rows = [ids[i * seq : (i + 1) * seq] for i in range(len(ids) // seq)]
    train = [{"input_ids": r, "labels": r} for r in rows]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps, learning_rate=LR,
            weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, warmup_steps=0,
            lr_scheduler_type="cosine", max_grad_norm=1.0, bf16=spec["dtype"] == "bfloat16",
            fp16=spec["dtype"] == "float16", use_cpu=not cuda,
            optim="adamw_torch_fused", torch_compile=spec["system"] == "hf-compile",
            logging_steps=1000, save_strategy="no", report_to=[], dataloader_num_workers=0, seed=0,
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
        # the training process's own peak: on the CPU its RSS (ours' is read the same way, by its
        # parent); on CUDA the allocator's peak, as ours logs it
        "peak_mem_gib": (
            torch.cuda.max_memory_allocated() / 2**30
            if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        ),
    }


def child_ours(spec: dict) -> dict:
    out = Path(spec["out"])
    cmd = [sys.executable, str(REPO_ROOT / "trainer" / "train_pretrain.py"), "--data_path", spec["data"],
           "--from_weight", str(Path(spec["folder"]) / OURS), "--max_seq_len", str(spec["seq"]),
           "--batch_size", str(spec["batch"]), "--max_steps", str(spec["steps"]), "--log_interval", "1",
           "--eval_interval", "0", "--save_interval", "0", "--learning_rate", str(LR), "--warmup_ratio", "0",
           "--dtype", spec["dtype"], "--device", spec["device"], "--save_dir", str(out), "--checkpoint_dir", str(out),
           "--cache_dir", str(out.parent / "cache"), "--save_weight", "bench",
           "--use_compile" if spec["system"] == "ours-compile" else "--no_compile"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
    if proc.returncode:
        raise SystemExit(f"train_pretrain failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    metrics = next(out.glob("bench_*_metrics.jsonl"))
    recs = [json.loads(x) for x in metrics.read_text().splitlines()]
    for saved in out.glob("*.pth"):  # the run's final weights and resume state: 9 GB at Qwen3-0.6B
        saved.unlink()
    tps = [r["tokens_per_sec"] for r in recs if r["kind"] == "train"][spec["warmup"] :]
    log = (proc.stdout + proc.stderr).splitlines()
    first = [x for x in log if "torch.compile: the first step took" in x]
    if spec["system"] == "ours-compile" and not first:
        raise SystemExit(f"--use_compile did not compile:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    # the harmonic mean of the per-step rates: tokens over time, as the Trainer's figure (the steps
    # hold the same row count; their target counts differ by the padding alone)
    got: dict[str, Any] = {"tokens_per_sec": statistics.harmonic_mean(tps), "steps_timed": len(tps)}
    if first:  # "... the first step took 52.3 s, compilation included"
        got["compile_first_step_s"] = float(first[-1].split(" took ")[1].split(" s")[0])
    # "Peak memory per rank (GiB): [1.234]": the training process's own peak, as the Trainer's is
    # read in its process (its RSS on the CPU, the allocator's on CUDA)
    peak = next(x for x in log if "Peak memory per rank" in x)
    got["peak_mem_gib"] = float(peak.split("[")[1].split("]")[0])
    return got


def child(args: argparse.Namespace) -> None:
    spec = json.loads(args.child)
    got = child_hf(spec) if spec["system"].startswith("hf") else child_ours(spec)
    print(json.dumps(got))


# --------------------------------------------------------------------------- the comparison


def compile_payback(table: dict[str, dict], row_tokens: int) -> dict[str, float]:
    """The compiled first step (median over rounds, compilation included) and the steps after which
    compiling has paid for itself (inf where compiled steps are not faster); {} unless both of ours ran.

    Step seconds are ``row_tokens`` over the median tokens/s: both runs train the same rows, so the
    padding they do not count cancels in the comparison."""
    eager, comp = table.get("ours-eager"), table.get("ours-compile")
    if not eager or not comp:
        return {}
    first = statistics.median(r["compile_first_step_s"] for r in comp["rounds"])
    t_eager, t_comp = row_tokens / eager["tokens_per_sec"], row_tokens / comp["tokens_per_sec"]
    saved = t_eager - t_comp
    return {
        "compile_first_step_s": first,
        "break_even_steps": (first - t_eager) / saved if saved > 0 else math.inf,
    }


def step_side_by_side(
    folder: Path, data: Path, cache: Path, batch: int, seq: int, reps: int, flops: float, dtype: Any
) -> tuple[list[float], dict]:
    """Median seconds of one training step of ours-eager, ours-compile, hf and hf-compile, alternating
    ``reps`` times.

    The step, for each: the forward with the loss, backward, clipping at 1.0, torch's fused AdamW
    (betas 0.9/0.95, weight decay 0.1), zero_grad; autocast to ``dtype`` (none for float32); fp32 weights. ours-eager: our model
    converted from ``folder`` on our default rows (whole documents best-fit packed, document
    attention) with the fused LM head + loss and the trainer's clipping (trainer.engine.clip_gradients),
    the trainer's train_step without its bookkeeping;
    ours-compile: a copy under torch.compile (compiled in the warm-up: from torch's cache where it is
    warm); hf: transformers' model from ``folder``, its default attention (SDPA), ``labels=`` on
    concatenated rows of the same text, what transformers' Trainer runs in a step without the Trainer
    around it; hf-compile: a copy under torch.compile (what ``torch_compile=True`` gives the Trainer).
    Tokens/s are target tokens over the median step (ours: its rows' targets; hf: batch x
    (seq - 1)). ``vs_hf``: the median over repetitions of the ratio of a system's target tokens/s
    to hf's in the same repetition (``vs_hf_each``; ``vs_hf_compile``: the same against hf-compile).
    ``mfu``: the median over repetitions of target tokens/s x ``flops`` (FLOPs per token) / the
    2048^3 matmul rate in ``dtype`` measured just before that repetition
    (trainer.throughput.measure_matmul_flops). Returns (those rates, {system: {"step_s", "steps_s",
    "tokens_per_sec", "first_step_s", "vs_hf", "vs_hf_each", "vs_hf_compile", "mfu"}}).
    """
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    from dataset.rows import IGNORE_INDEX, RowDataset, build_rows
    from dataset.store import build_store
    from dataset.tokenizer import load_tokenizer
    from trainer.checkpoint import load_model
    from trainer.engine import clip_gradients
    from trainer.runtime import autocast
    from trainer.throughput import measure_matmul_flops

    model, _, _ = load_model(ours_checkpoint(folder))
    tok = load_tokenizer(folder)
    rows = RowDataset(build_rows(build_store([data], tok, cache), seq, "bfd", "document"))
    x, y, _, pos, doc = (torch.stack(z) for z in zip(*(rows[i] for i in range(batch)), strict=True))
    ids = concatenated(tok, data, batch * seq)
    hx = torch.tensor(ids[: batch * seq]).view(batch, seq)
    targets = {"ours-eager": int((y != IGNORE_INDEX).sum()), "hf": batch * (seq - 1)}
    targets["ours-compile"], targets["hf-compile"] = targets["ours-eager"], targets["hf"]
    hf = AutoModelForCausalLM.from_pretrained(str(folder))
    params = {
        "ours-eager": model,
        "ours-compile": copy.deepcopy(model),
        "hf": hf,
        "hf-compile": copy.deepcopy(hf),
    }
    runs: dict[str, Any] = {**params, **{k: torch.compile(params[k]) for k in ("ours-compile", "hf-compile")}}
    opts = {}
    for name, m in params.items():
        m.float().train()  # as the trainers have them (no dropout in these shapes)
        opts[name] = torch.optim.AdamW(m.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    scale = torch.tensor(1.0 / targets["ours-eager"], dtype=torch.float64)

    def step(name: str) -> float:
        t0 = time.perf_counter()
        with autocast(torch.device("cpu"), dtype):
            if name.startswith("hf"):
                loss = runs[name](input_ids=hx, labels=hx).loss
            else:
                loss = runs[name](x, targets=y, grad_scale=scale, positions=pos, doc_ids=doc).sum() * scale
        loss.backward()
        if name.startswith("hf"):
            torch.nn.utils.clip_grad_norm_(params[name].parameters(), 1.0)
        else:  # the trainer's: the clipping factor handed to the fused AdamW
            clip_gradients(params[name], opts[name], 1.0)
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    first = {}
    for name in runs:
        first[name] = step(name)
        step(name)
    times: dict[str, list[float]] = {k: [] for k in runs}
    peaks: list[float] = []
    for _ in range(reps):
        peaks.append(measure_matmul_flops(torch.device("cpu"), dtype))
        for name in runs:
            times[name].append(step(name))

    # each repetition's ratio of target tokens/s to hf's in the same repetition (seconds apart):
    # on a machine whose speed drifts over minutes, their median is steadier than a ratio of medians
    def paired(base: str) -> dict[str, list[float]]:
        return {k: [targets[k] / t / (targets[base] / h) for t, h in zip(v, times[base], strict=True)]
                for k, v in times.items()}  # fmt: skip

    vs_hf, vs_hfc = paired("hf"), paired("hf-compile")
    return peaks, {
        k: {"step_s": statistics.median(v), "steps_s": v, "first_step_s": first[k],
            "tokens_per_sec": targets[k] / statistics.median(v), "vs_hf": statistics.median(vs_hf[k]),
            "vs_hf_each": vs_hf[k], "vs_hf_compile": statistics.median(vs_hfc[k]),
            "mfu": statistics.median(targets[k] / t * flops / p for t, p in zip(v, peaks, strict=True))}
        for k, v in times.items()
    }  # fmt: skip


def gemm_ceiling(cfg: Any, tokens: int, seq: int, reps: int, dtype: Any) -> dict[str, float]:
    """The MFU a step could reach if everything but its linear layers' matmuls took no time.

    Each linear layer's three GEMMs in ``dtype`` (bf16 for a bf16 step) at ``tokens`` rows, in the layouts a training step runs them
    (forward ``x @ W.T``, input gradient ``dY @ W``, weight gradient ``dY.T @ x``; the LM head's
    whole, where the fused loss runs it in chunks), timed alone, alternating ``reps`` times with the
    2048^3 matmul peak in the same dtype (trainer.throughput.measure_matmul_flops). Returns the medians over
    repetitions of "gemm_s", "gemm_vs_peak" (their FLOP/s over the peak) and "mfu_ceiling" (the
    model's FLOPs, ``cfg.flops_per_token(seq)`` per token, attention included, over the GEMMs'
    time, against the peak)."""
    import torch

    from trainer.throughput import measure_matmul_flops

    d, ff, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    layer = [(d, q), (d, kv), (d, kv), (q, d), (d, ff), (d, ff), (ff, d)]  # (in, out) features
    linears = layer * cfg.num_hidden_layers + [(d, cfg.vocab_size)]
    g = torch.Generator().manual_seed(0)
    operands = {
        (i, o): [torch.randn(*s, generator=g).to(dtype) for s in ((tokens, i), (o, i), (tokens, o))]
        for i, o in set(linears)
    }

    def gemms() -> float:
        start = time.perf_counter()
        for io in linears:
            x, w, dy = operands[io]
            x @ w.T, dy @ w, dy.T @ x
        return time.perf_counter() - start

    gemms()
    flops = 6 * tokens * sum(i * o for i, o in linears)
    got: dict[str, list[float]] = {"gemm_s": [], "gemm_vs_peak": [], "mfu_ceiling": []}
    for _ in range(reps):
        peak = measure_matmul_flops(torch.device("cpu"), dtype)
        t = gemms()
        got["gemm_s"].append(t)
        got["gemm_vs_peak"].append(flops / t / peak)
        got["mfu_ceiling"].append(tokens * cfg.flops_per_token(seq) / t / peak)
    return {k: statistics.median(v) for k, v in got.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(x for x in SHAPES if x != "tiny"))
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=10, help="steps per run (qwen3-0.6b: half)")
    p.add_argument("--warmup", type=int, default=3, help="first steps not timed")
    p.add_argument("--step", action="store_true", help="one step side by side in one process (CPU)")
    p.add_argument("--reps", type=int, default=8, help="--step: timed steps of each, alternating")
    p.add_argument("--typical_steps", type=int, default=1000,
                   help="the run length whose compile default (COMPILE_RULE) the table marks")  # fmt: skip
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--seq_len", type=int, default=512)
    p.add_argument("--work", default=None)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="auto",
                   help="every system's precision, as the trainer's --dtype (default auto: bfloat16, float32 on a "
                        "CPU without bf16 matmul instructions)")  # fmt: skip
    p.add_argument("--data", default=str(DATA), help="JSON lines with a text field (default: TinyStories)")
    p.add_argument("--output", default=None, help="write the figures as JSON here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    if args.step and args.device != "cpu":
        p.error("--step times the CPU step; run it without --device cuda")
    for flag, given, known in (("--shapes", args.shapes, SHAPES), ("--systems", args.systems, SYSTEMS)):
        if unknown := [x for x in given.split(",") if x not in known]:
            p.error(f"{flag}: unknown {', '.join(unknown)}; use some of {', '.join(known)}")
    import torch

    from model.errors import UserError
    from trainer import runtime
    from trainer.parallel import compile_choice
    from trainer.throughput import measure_matmul_flops, peak_flops

    device = torch.device(args.device)
    try:
        dtype = runtime.resolve_dtype(args.dtype, device)
    except UserError as e:
        p.error(str(e))
    dtype_name = runtime.dtype_name(dtype)

    source = Path(args.data)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_train_"))
    work.mkdir(parents=True, exist_ok=True)
    tok_dir = work / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file() or bench_vocab(tok_dir) != BENCH_VOCAB:
        from dataset.tokenizer import train_tokenizer

        train_tokenizer(texts(source, 3000), BENCH_VOCAB, tok_dir)  # within every shape's vocabulary
    data = work / "stories.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts(source, 20000)))
    if args.step:
        for shape in args.shapes.split(","):
            flops = shape_config(shape).flops_per_token(args.seq_len)
            rates, got = step_side_by_side(make_folder(shape, work, tok_dir), data, work / "cache",
                                           args.batch_size, args.seq_len, args.reps, flops, dtype)  # fmt: skip
            print(
                f"{shape}: {args.batch_size} x {args.seq_len}, {runtime.precision_note(args.dtype, dtype, device)}, "
                f"one process, median of {args.reps} alternating steps; {dtype_name} 2048^3 matmul before each "
                f"repetition {min(rates) / 1e12:.2f}-{max(rates) / 1e12:.2f} TFLOP/s"
            )
            for name, v in got.items():
                print(f"  {name:<13} {v['step_s']:.3f} s ({', '.join(f'{t:.2f}' for t in v['steps_s'])}): "
                      f"{v['tokens_per_sec']:.0f} target tokens/s, {v['tokens_per_sec'] / got['hf']['tokens_per_sec']:.2f}x hf; "
                      f"MFU {100 * v['mfu']:.0f}%; first step {v['first_step_s']:.1f} s")  # fmt: skip
                if name != "hf":
                    print(f"  {'':<13} target tokens/s vs hf in the same repetition: median {v['vs_hf']:.2f}x "
                          f"({', '.join(f'{r:.2f}' for r in v['vs_hf_each'])}); vs hf-compile {v['vs_hf_compile']:.2f}x")  # fmt: skip
            c = gemm_ceiling(
                shape_config(shape), args.batch_size * args.seq_len, args.seq_len, args.reps, dtype
            )
            print(f"  the step's linear-layer GEMMs alone ({dtype_name}, its layouts): {1e3 * c['gemm_s']:.0f} ms, "
                  f"{100 * c['gemm_vs_peak']:.0f}% of the peak measured before each repetition; MFU if the "
                  f"rest (attention included) took no time, every token counted: {100 * c['mfu_ceiling']:.0f}%")  # fmt: skip
        return

    def measure_peak() -> float:
        if device.type == "cuda":  # the data sheet's (else measured), as the trainer's MFU takes it
            got, where = peak_flops(device, dtype)
        else:
            got, where = measure_matmul_flops(device, dtype), f"{dtype_name} 2048^3 matmul measured now"
            where += f", {torch.get_num_threads()} threads"
        peaks.append(got)
        print(f"peak: {got / 1e12:.2f} TFLOP/s ({where})")
        return max(peaks)

    peaks: list[float] = []
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print(f"{device.type.upper()}: {machine}; {runtime.precision_note(args.dtype, dtype, device)}")
    measure_peak()
    results: dict[str, Any] = {"device": machine, "dtype": dtype_name, "shapes": {}}
    for shape in args.shapes.split(","):
        folder = make_folder(shape, work, tok_dir)
        if any(s.startswith("ours") for s in args.systems.split(",")):
            ours_checkpoint(folder)  # here, not in a timed child: its peak memory is the load's
        cfg = shape_config(shape)
        flops = cfg.flops_per_token(args.seq_len)
        steps = args.steps if shape != "qwen3-0.6b" else max(args.warmup + 3, args.steps // 2)
        runs: dict[str, list[dict]] = {s: [] for s in args.systems.split(",")}
        for r in range(args.rounds):
            measure_peak()
            for system in runs:
                spec = dict(folder=str(folder), data=str(data), system=system, steps=steps, warmup=args.warmup,
                            batch=args.batch_size, seq=args.seq_len, out=str(work / f"{shape}-{system}-{r}"),
                            device=args.device, dtype=dtype_name)  # fmt: skip
                with tempfile.TemporaryDirectory(prefix="inductor_") as cache:  # compilation from cold
                    proc = subprocess.run(
                        [sys.executable, __file__, "--child", json.dumps(spec)],
                        capture_output=True,
                        text=True,
                        env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache},
                    )
                if proc.returncode:
                    raise SystemExit(
                        f"{shape} {system}: failed\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
                    )
                got = json.loads(proc.stdout.strip().splitlines()[-1])
                runs[system].append(got)
                print(f"  {shape} round {r + 1} {system:<11} {got['tokens_per_sec']:8.0f} tokens/s  "
                      f"peak memory {got['peak_mem_gib']:.2f} GiB", flush=True)  # fmt: skip
        peak = max(peaks)  # the machine's peak: the best measured in this run (CUDA: the data sheet's)
        for done in runs.values():
            for one in done:
                one["mfu"] = one["tokens_per_sec"] * flops / peak
        table = {s: {"tokens_per_sec": statistics.median(x["tokens_per_sec"] for x in v),
                     "mfu": statistics.median(x["mfu"] for x in v),
                     "peak_mem_gib": max(x["peak_mem_gib"] for x in v), "rounds": v} for s, v in runs.items()}  # fmt: skip
        compiles, why = compile_choice("auto", device, cfg.num_params(), args.typical_steps)
        default = "ours-compile" if compiles else "ours-eager"
        results["shapes"][shape] = {"systems": table, "default": default, "default_why": why,
                                    **compile_payback(table, args.batch_size * args.seq_len)}  # fmt: skip
        base = table.get("hf", {}).get("tokens_per_sec")
        for s, v in table.items():
            ratio = f"{v['tokens_per_sec'] / base:.2f}x hf" if base else ""
            if base and args.rounds > 1:  # each round against the Trainer's run of the same round
                per = [
                    a["tokens_per_sec"] / h["tokens_per_sec"]
                    for a, h in zip(v["rounds"], runs["hf"], strict=True)
                ]
                v["per_round_vs_hf"] = per
                ratio += (
                    f" (per round {', '.join(f'{x:.2f}' for x in per)}; median {statistics.median(per):.2f}x)"
                )
            mark = " (default)" if s == default else ""
            print(f"{shape:<13} {s + mark:<22} {v['tokens_per_sec']:8.0f} tokens/s  MFU {100 * v['mfu']:5.1f}%  "
                  f"peak {v['peak_mem_gib']:.2f} GiB  {ratio}")  # fmt: skip
        print(f"{shape:<13} default for a run of {args.typical_steps} steps: {default} ({why})")
        got = results["shapes"][shape]
        if "compile_first_step_s" in got:
            print(f"{shape:<13} compiled first step {got['compile_first_step_s']:.0f} s; compiling pays after "
                  f"{got['break_even_steps']:.0f} steps")  # fmt: skip
    results["peak_tflops"] = max(peaks) / 1e12
    results["peaks_tflops"] = [x / 1e12 for x in peaks]
    where = (
        "the data sheet's"
        if device.type == "cuda"
        else f"the best {dtype_name} 2048^3 matmul window of the run"
    )
    print(f"MFU against the peak, {where}: {max(peaks) / 1e12:.2f} TFLOP/s")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
