"""One training step side by side in one process: ours (eager and compiled) and transformers' model.

    python scripts/dev/bench_step.py --shape smollm2-135m --reps 8
    python scripts/dev/bench_step.py --shape ours-512x8 --batch_size 8

scripts/dev/bench_train.py compares whole trainers, each run a fresh process, round by round; on a
shared machine whose matmul rate moves by 2x within minutes (its bf16 peak read 0.42 and 1.65
TFLOP/s in consecutive rounds of one run) a ratio between two runs minutes apart is mostly the
machine. Here the three steps alternate step by step in one process, so each repetition compares
them under the same conditions; the figure is the median over repetitions of each step's time.

The step, for each: the forward with the loss, backward, gradient clipping at 1.0, torch's fused
AdamW (betas 0.9/0.95, weight decay 0.1), zero_grad; bf16 autocast; fp32 weights.

  ours-eager     our model converted from the shape's transformers folder (bench_train.py's), on
                 our default rows (whole documents best-fit packed, document attention) with the
                 fused LM head + loss: the trainer's train_step without its bookkeeping
  ours-compile   the same model, a copy, under torch.compile (compiled in the warm-up, timed there)
  hf             transformers' LlamaForCausalLM / Qwen3ForCausalLM from the same folder, its
                 default attention (SDPA), ``labels=`` on concatenated rows of the same text:
                 what transformers' Trainer runs in a step, without the Trainer around it

Tokens/s are target tokens over the median step time (ours: its rows' targets; transformers':
batch x (seq - 1)).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import BENCH_VOCAB, DATA, SHAPES, bench_vocab, make_folder, ours_checkpoint, texts  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    p.add_argument("--reps", type=int, default=8, help="timed steps of each, alternating")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--seq_len", type=int, default=512)
    p.add_argument("--work", default="out/bench/train_work", help="bench_train.py's --work folder (reused)")
    args = p.parse_args()
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from dataset.rows import IGNORE_INDEX, RowDataset, build_rows
    from dataset.store import build_store
    from dataset.tokenizer import load_tokenizer, train_tokenizer
    from trainer.checkpoint import load_model

    work = Path(args.work)
    tok_dir = work / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file() or bench_vocab(tok_dir) != BENCH_VOCAB:
        train_tokenizer(texts(DATA, 3000), BENCH_VOCAB, tok_dir)
    folder = make_folder(args.shape, work, tok_dir)
    model, _, _ = load_model(ours_checkpoint(folder))
    b, t = args.batch_size, args.seq_len
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "stories.jsonl"
        data.write_text("".join(json.dumps({"text": x}) + "\n" for x in texts(DATA, 2000)))
        tok = load_tokenizer(folder)
        rows = RowDataset(build_rows(build_store([data], tok, Path(tmp) / "cache"), t, "bfd", "document"))
        x, y, _, pos, doc = (torch.stack(z) for z in zip(*(rows[i] for i in range(b)), strict=True))
        ids: list[int] = []
        for line in data.read_text().splitlines()[:400]:
            ids += [
                tok.bos_token_id,
                *tok(json.loads(line)["text"], add_special_tokens=False)["input_ids"],
                tok.eos_token_id,
            ]
    hx = torch.tensor(ids[: b * t]).view(b, t)
    n_ours, n_hf = int((y != IGNORE_INDEX).sum()), b * (t - 1)

    compiled = copy.deepcopy(model)
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    runs: dict[str, Any] = {"ours-eager": model, "ours-compile": torch.compile(compiled), "hf": hf}
    params = {"ours-eager": model, "ours-compile": compiled, "hf": hf}
    for m in params.values():
        m.train()  # as the trainers do (no dropout in these shapes: the same computation either way)
    opts = {
        k: torch.optim.AdamW(m.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
        for k, m in params.items()
    }
    scale = torch.tensor(1.0 / n_ours, dtype=torch.float64)

    def step(name: str) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if name == "hf":
                loss = runs[name](input_ids=hx, labels=hx).loss
            else:
                loss = runs[name](x, targets=y, grad_scale=scale, positions=pos, doc_ids=doc).sum() * scale
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params[name].parameters(), 1.0)
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    print(
        f"{args.shape}: {b} x {t}, {torch.get_num_threads()} threads; targets per step ours {n_ours}, hf {n_hf}"
    )
    for name in runs:
        first = step(name)
        step(name)
        print(
            f"  warm-up {name}: first step {first:.1f} s"
            + (" (compilation included; from torch's cache where it is warm)" if "compile" in name else "")
        )
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.reps):
        for name in runs:
            times[name].append(step(name))
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, v in times.items():
        tps = (n_hf if name == "hf" else n_ours) / med[name]
        hf_tps = n_hf / med["hf"]
        print(f"  {name:<13} median step {med[name]:.3f} s ({', '.join(f'{s:.2f}' for s in v)}): "
              f"{tps:.0f} target tokens/s, {tps / hf_tps:.2f}x hf")  # fmt: skip


if __name__ == "__main__":
    main()
