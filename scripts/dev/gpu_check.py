"""GPU readiness: every GPU path of the pipeline end to end on real text, on one GPU, in minutes.

    make gpu-check                        # = python3 scripts/dev/gpu_check.py (no install, no network)
    python3 scripts/dev/gpu_check.py --smoke  # the same steps on the CPU at toy sizes (the test suite),
                                              # in the trainer's --dtype auto (float32 on a CPU without bf16)

Needs only what a GPU machine's python3 usually has (torch with CUDA, transformers, tokenizers,
numpy, pyyaml, tqdm): no `datasets`, no `wandb`, no network. The data is the real sample shipped
in dataset/demo/. Each step runs the project's own scripts as processes and checks their
numbers; a step that fails prints its command and last output lines, and the check exits 1.

  1 tokenizer    train_tokenizer on the demo stories
  2 bf16         a ~125M-shaped model (768 x 12): bf16 autocast, fused AdamW, validation per source
  3 resume       the same run stopped and resumed: losses equal to the uninterrupted run's
                 (bit-identical where the kernels are deterministic; cuBLAS/SDPA backward can
                 differ in the last bits, so the check is 1e-3 and the figure is printed)
  4 compile      --use_compile: losses within 5e-2 of eager bf16 (a different kernel order)
  5 ddp / fsdp   torchrun nccl, world size 1, DDP and FSDP (+ activation checkpointing): losses
                 within 1e-2 of step 2 (bf16 reductions and recomputation reorder sums)
  6 eval/export  eval_llm on the GPU (loss per source, MMLU on the demo rows) and export_hf, the
                 export reloaded by transformers on the GPU: logits within 1e-3 (fp32)
  7 throughput   tokens/s, MFU against the device's bf16 peak and peak memory, for the
                 ~125M-shaped and a 1B-shaped config (2048 x 16, 32 heads, 8 KV heads)
  8 documents    document attention (the default rows: whole documents best-fit packed) in bf16:
                 varlen_attn (FlashAttention over the documents) vs the SDPA boolean mask: loss and
                 gradient norm within bf16 tolerance, and fwd+bwd tokens/s of each next to
                 causal attention over concatenated rows (on the CPU: the mask path only)
  9 vs Trainer   scripts/dev/bench_train.py on the GPU: our trainer (eager and compiled) against
                 transformers' Trainer (eager and torch_compile=True) on a SmolLM2-135M-shaped
                 model, the same rows of text, AdamW, bf16: tokens/s, MFU, peak memory, the ratio
                 to the Trainer's eager default (needs accelerate, which the Trainer imports; without
                 it the step says so and is skipped; --smoke: the tiny shape, eager only)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "dataset" / "demo"
SIZES = {  # name: (hidden, layers, heads, kv heads)
    "125M": (768, 12, 12, 4),
    "1B": (2048, 16, 32, 8),
}
SMOKE = {"125M": (64, 2, 4, 2)}  # the smoke test runs every step's code, one size


class StepFailed(Exception):
    pass


def run(cmd: list[str], out: Path, name: str, extra_env: dict | None = None) -> str:
    """Run one of the project's scripts; its output goes to out/<name>.log; returns stdout."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    env.update(extra_env or {})
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    (out / f"{name}.log").write_text("$ " + " ".join(cmd) + "\n" + proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = "\n    ".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise StepFailed(f"{name}: exit {proc.returncode}\n  $ {' '.join(cmd)}\n    {tail}")
    print(f"  {name}: ok ({time.perf_counter() - t0:.0f} s)", flush=True)
    return proc.stdout


def losses(log: str) -> list[float]:
    return [float(x) for x in re.findall(r"\) loss:([0-9.]+)", log)]


def last(pattern: str, log: str) -> str:
    found = re.findall(pattern, log)
    if not found:
        raise StepFailed(f"expected a line matching {pattern!r} in the log")
    return found[-1]


def val_file(out: Path) -> Path:
    """A validation file with three sources: held-out stories, MBPP test code, MMLU test rows."""
    rows = []
    for line in (DEMO / "tinystories.jsonl").read_text().splitlines()[-100:]:
        rows.append({"text": json.loads(line)["text"], "source": "stories"})
    for line in (DEMO / "mbpp_test.jsonl").read_text().splitlines()[:60]:
        r = json.loads(line)
        rows.append({"text": f"{r['text']}\n{r['code']}", "source": "code"})
    for line in (DEMO / "mmlu_test.jsonl").read_text().splitlines()[:60]:
        r = json.loads(line)
        choices = "\n".join(f"{'ABCD'[k]}. {c}" for k, c in enumerate(r["choices"]))
        rows.append(
            {"text": f"{r['question']}\n{choices}\nAnswer: {'ABCD'[r['answer']]}", "source": "reasoning"}
        )
    path = out / "val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="run the steps on the CPU at toy sizes")
    p.add_argument("--out", default=None, help="keep the outputs here (default: a temporary folder)")
    args = p.parse_args()
    try:
        import torch
    except ImportError:
        print(
            f"gpu-check: {sys.executable} has no torch; run it with the GPU machine's python (make gpu-check PYTHON_GPU=...)"
        )
        return 2
    try:
        import trainer  # noqa: F401 - the checkout's packages (make gpu-check sets PYTHONPATH=.)
    except ImportError:
        print(
            "gpu-check: run it from the repository root as `make gpu-check` (or PYTHONPATH=. python3 scripts/dev/gpu_check.py)"
        )
        return 2
    if not args.smoke and not torch.cuda.is_available():
        print(
            "gpu-check: no CUDA GPU on this machine (torch.cuda.is_available() is False); run it on a GPU machine"
        )
        return 2
    device = "cpu" if args.smoke else "cuda"
    sizes = SMOKE if args.smoke else SIZES
    seq, batch, steps = (64, 4, 6) if args.smoke else (1024, 16, 30)
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        print(
            f"gpu-check on {torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu (smoke)'}, torch {torch.__version__}"
        )
        try:
            report = steps_all(py, out, device, sizes, seq, batch, steps, args.smoke)
        except StepFailed as e:
            print(f"FAILED {e}")
            return 1
        print("\nstep          result")
        for k, v in report.items():
            print(f"{k:<13} {v}")
    return 0


def steps_all(py, out, device, sizes, seq, batch, steps, smoke) -> dict[str, str]:
    report: dict[str, str] = {}
    stories = DEMO / "tinystories.jsonl"
    run([py, "scripts/train_tokenizer.py", "--data_path", str(stories), "--vocab_size", "512" if smoke else "8192",
         "--output_dir", str(out / "tok")], out, "1 tokenizer")  # fmt: skip
    val = val_file(out)
    # smoke: the trainer's own choice on this CPU (bf16 where it multiplies bf16 in hardware, else
    # float32: on an AVX2-only CPU one of the smoke's six bf16 toy trainings took over 3 minutes)
    precision = ("--dtype", "auto" if smoke else "bfloat16")

    def pretrain(name, size, *extra, launcher=(), env=None):
        h, layers, heads, kv = sizes[size]
        cmd = [*launcher, "trainer/train_pretrain.py", "--data_path", str(stories), "--val_path", str(val),
               "--tokenizer_path", str(out / "tok"), "--hidden_size", str(h), "--num_hidden_layers", str(layers),
               "--num_attention_heads", str(heads), "--num_key_value_heads", str(kv), "--max_seq_len", str(seq),
               "--batch_size", str(batch), "--max_steps", str(steps), "--log_interval", "1", "--eval_interval",
               str(steps // 2), "--eval_batches", "4", "--save_interval", "0", "--device", device,
               "--save_dir", str(out / name), "--checkpoint_dir", str(out / name), "--cache_dir", str(out / "cache"),
               *extra]  # fmt: skip
        return run([py, *cmd] if not launcher else cmd, out, name, env)

    base = pretrain("2 bf16", "125M", *precision)
    ref = losses(base)
    evals = last(r"eval step \d+/\d+: val_loss (.*)", base)
    report["bf16"] = (  # the precision as the trainer's banner says it: --smoke's auto may be float32
        f"{last(r'Model: .* [|] device [^ ]+ x[0-9]+ [|] ([a-z0-9]+)', base)}: {len(ref)} steps, loss {ref[0]:.3f} -> {ref[-1]:.3f}, fused AdamW; val per source: {evals}"
    )

    pretrain("3 resume", "125M", *precision, "--stop_after", str(steps // 2))
    resumed = losses(pretrain("3 resume", "125M", *precision, "--from_resume", "1"))
    diff = max(abs(a - b) for a, b in zip(ref[steps // 2 :], resumed, strict=True))
    if diff > 1e-3:
        raise StepFailed(f"3 resume: losses after the resume differ from the uninterrupted run by {diff:.2e}")
    report["resume"] = (
        f"max loss difference after resume {diff:.1e} ({'bit-identical' if diff == 0 else 'GPU kernels'})"
    )

    # smoke: the step's commands and checks with compilation switched off (TORCHDYNAMO_DISABLE: CPU
    # compilation of even the toy model takes a minute; tests/trainer/test_train.py compiles on the CPU)
    comp = losses(pretrain("4 compile", "125M", *precision, "--use_compile",
                           env={"TORCHDYNAMO_DISABLE": "1"} if smoke else None))  # fmt: skip
    diff = max(abs(a - b) for a, b in zip(ref, comp, strict=True))
    if diff > 5e-2:
        raise StepFailed(f"4 compile: losses differ from eager by {diff:.2e}")
    report["compile"] = f"max loss difference vs eager {diff:.1e}" + (
        " (smoke: not compiled)" if smoke else ""
    )

    torchrun = [py, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29690"]
    for name, extra in (("5 ddp", ()), ("5 fsdp", ("--strategy", "fsdp", "--activation_checkpointing"))):
        got = losses(pretrain(name, "125M", *precision, *extra, launcher=torchrun))
        diff = max(abs(a - b) for a, b in zip(ref, got, strict=True))
        if diff > 1e-2:
            raise StepFailed(f"{name}: losses differ from step 2 by {diff:.2e}")
        report[name.split()[1]] = (
            f"world size 1 ({'nccl' if device == 'cuda' else 'gloo'}), max loss difference vs step 2 {diff:.1e}"
        )

    weights = out / "2 bf16" / f"pretrain_{sizes['125M'][0]}.pth"
    ev = run([py, "eval_llm.py", "--weight", str(weights), "--val_path", str(val), "--mmlu_path",
              str(DEMO / "mmlu_test.jsonl"), "--mbpp_path", str(DEMO / "mbpp_test.jsonl"), "--no_hub", "--limit",
              "40", "--device", device, "--output", str(out / "eval" / "report.json")], out, "6 eval")  # fmt: skip
    export = out / "hf"
    run([py, "scripts/export_hf.py", "--weight", str(weights), "--output_dir", str(export)], out, "6 export")
    diff = export_logit_diff(weights, export, device)
    if diff > 1e-3:
        raise StepFailed(f"6 export: transformers' logits differ from ours by {diff:.2e}")
    mmlu = last(r"MMLU 0-shot ([0-9.]+%)", ev)
    report["eval/export"] = (
        f"eval_llm on {device} (MMLU 0-shot {mmlu} on 40 demo rows); export reloaded, max logit diff {diff:.1e}"
    )

    for size in sizes:
        log = base if size == "125M" else pretrain(f"7 {size}", size, *precision)
        tps, util = re.findall(r"tokens/s:(\d+) MFU:([0-9.]+%)", log)[-1]
        peak_src = last(r"Peak for MFU: (.*)", log)
        mem = last(r"Peak memory per rank \(GiB\): \[([^\]]*)\]", log)
        params = last(r"Model: ([0-9.]+M) parameters", log)
        report[f"throughput {size}"] = (
            f"{params} params: {tps} tokens/s, MFU {util} (peak {peak_src}), peak memory {mem} GiB"
        )
    report["documents"] = document_attention(out, device, sizes["125M"], seq, batch, smoke, precision[1])
    print("  8 documents: ok", flush=True)
    report["vs Trainer"] = trainer_comparison(py, out, device, smoke)
    return report


def trainer_comparison(py: str, out: Path, device: str, smoke: bool) -> str:
    """Step 9: scripts/dev/bench_train.py on this device, one round on the demo stories."""
    if importlib.util.find_spec("accelerate") is None:
        return "skipped: transformers' Trainer needs accelerate (pip install accelerate)"
    shape, systems, steps, warmup, batch, seq = (
        ("tiny", "ours-eager,hf", 5, 2, 4, 64)
        if smoke
        else ("smollm2-135m", "ours-eager,ours-compile,hf,hf-compile", 30, 5, 8, 1024)
    )
    work = out / "9 trainer"
    run([py, "scripts/dev/bench_train.py", "--device", device, "--shapes", shape, "--systems", systems,
         "--rounds", "1", "--steps", str(steps), "--warmup", str(warmup), "--batch_size", str(batch),
         "--seq_len", str(seq), "--data", str(DEMO / "tinystories.jsonl"), "--work", str(work),
         "--output", str(work / "bench.json")], out, "9 vs Trainer")  # fmt: skip
    got = json.loads((work / "bench.json").read_text())["shapes"][shape]
    table, base = got["systems"], got["systems"]["hf"]["tokens_per_sec"]
    return f"{shape}, {batch} x {seq}: " + "; ".join(
        f"{name}{' (default)' if name == got['default'] else ''} {v['tokens_per_sec']:.0f} tokens/s "
        f"({v['tokens_per_sec'] / base:.2f}x hf), MFU {100 * v['mfu']:.1f}%, peak {v['peak_mem_gib']:.2f} GiB"
        for name, v in table.items()
    )


def document_attention(out: Path, device: str, size, seq: int, batch: int, smoke: bool, dtype: str) -> str:
    """Step 8: one forward+backward (autocast to ``dtype``, a --dtype value) of the same best-fit-packed rows
    with each attention kernel."""
    import torch
    import torch.nn.functional as F

    from dataset.rows import IGNORE_INDEX, RowDataset, build_rows
    from dataset.store import build_store
    from dataset.tokenizer import load_tokenizer
    from model import MiniGPTForCausalLM, ModelConfig
    from trainer import runtime

    tok = load_tokenizer(out / "tok")
    store = build_store([DEMO / "tinystories.jsonl"], tok, out / "cache")
    h, layers, heads, kv = size
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(tok), hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, max_position_embeddings=max(seq, 256))  # fmt: skip
    model = MiniGPTForCausalLM(cfg).to(device)
    results = {}
    for name, packing, attention, kernel in (("varlen", "bfd", "document", "auto"),
                                             ("sdpa mask", "bfd", "document", "sdpa"),
                                             ("causal concat", "concat", "causal", "auto")):  # fmt: skip
        rows = RowDataset(build_rows(store, seq, packing, attention))
        x, y, _, pos, doc = (
            torch.stack(t).to(device) for t in zip(*(rows[i] for i in range(batch)), strict=True)
        )
        layout = {"positions": pos, "doc_ids": doc} if attention == "document" else {}
        model.attention_kernel = kernel
        times = []
        for _ in range(1 if smoke else 4):
            model.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with runtime.autocast(torch.device(device), runtime.resolve_dtype(dtype, torch.device(device))):
                logits = model(x, **layout)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX)
            loss.backward()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        grad = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))
        targets = int((y != IGNORE_INDEX).sum())
        results[name] = (float(loss), grad, targets / min(times))
    (lv, gv, _), (lm, gm, _) = results["varlen"], results["sdpa mask"]
    if abs(lv - lm) > 2e-2 * max(1.0, abs(lm)) or abs(gv - gm) > 5e-2 * max(1.0, gm):
        raise StepFailed(
            f"8 documents: varlen loss {lv:.4f} / grad {gv:.4f} vs SDPA mask {lm:.4f} / {gm:.4f}"
        )
    used = "varlen_attn" if device == "cuda" else "the SDPA mask (CPU)"
    speed = ", ".join(f"{k} {v[2]:.0f}" for k, v in results.items())
    return f"kernel {used}: loss {lv:.4f} vs mask {lm:.4f}, grad norm {gv:.3f} vs {gm:.3f}; target tokens/s fwd+bwd: {speed}"


def export_logit_diff(weights: Path, export: Path, device: str) -> float:
    """Max |logit| difference between our model and transformers' reload of the export (fp32)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from trainer.checkpoint import load_model

    transformers.utils.logging.disable_progress_bar()

    model, tok, _ = load_model(weights)
    hf = AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32)
    hf = hf.to(device).eval()  # type: ignore[arg-type]  # transformers types .to through a wrapper mypy misreads
    ids = torch.tensor(
        [[tok.bos_token_id] + tok("Once upon a time, a little dog found a ball.")["input_ids"]], device=device
    )
    with torch.no_grad():
        ours = model.to(device).eval()(ids).float()
        theirs = hf(ids).logits.float()
    return float((ours - theirs).abs().max())


if __name__ == "__main__":
    sys.exit(main())
