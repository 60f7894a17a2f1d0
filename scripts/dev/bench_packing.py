"""Document-aware rows, measured: speed of the defaults against the old layout, fill, packing time
at 10M documents, and the memory of the attention mask.

    python scripts/dev/bench_packing.py                 # all five, ~10 min on 2 CPU cores
    python scripts/dev/bench_packing.py --only pack     # just the 10M-document packing

1. speed   useful (target) tokens/s of train_pretrain.py with its defaults (--packing bfd
           --attention document) and with --packing concat --attention causal, the default 26M
           model (512 x 8) at rows of 512 x batch 8, bf16 autocast, on the demo mixture prepared
           with the demo tokenizer recipe; interleaved rounds in one run, each after a warm-up,
           padding counted as lost (the engine's tokens/s counts targets only).
   step    the same comparison in one process without data loading or optimizer: forward (fused
           loss) + backward of the model on 8 rows of each layout, interleaved repetitions.
2. fill    the share of row positions holding a target, bfd vs concat, at 256 / 512 / 1024 / 2048.
3. pack    best-fit-decreasing packing (dataset.rows.BFDRows) of 10M documents whose lengths are
           resampled from the demo mixture's, rows of 512 and 2048: seconds and peak RSS.
4. mask    peak memory of one attention forward+backward (8 heads of 64, batch 8) with the SDPA
           boolean block-causal mask vs is_causal, at 2048 and 4096 tokens, each in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from trainer.paths import REPO_ROOT

DEMO_CONFIG = REPO_ROOT / "config" / "data" / "demo.yaml"


def demo_data(work: Path) -> tuple[Path, Path]:
    """(the demo mixture's train split, a 2048-token BPE trained on it), made once in ``work``."""
    from dataset.mixture import load_mixture_config, prepare_mixture, prepared_paths
    from dataset.tokenizer import iter_jsonl_texts, train_tokenizer

    config = load_mixture_config(DEMO_CONFIG)
    paths = prepared_paths(config, work / "data")
    if not paths.manifest.is_file():
        prepare_mixture(config, work / "data", overwrite=True)
    tok = work / "tokenizer"
    if not (tok / "tokenizer.json").is_file():
        train_tokenizer(iter_jsonl_texts(paths.train), 2048, tok)
    return paths.train, tok


def speed(work: Path, rounds: int, steps: int) -> dict:
    train, tok = demo_data(work)
    layouts = {
        "bfd+document (default)": [],
        "concat+causal": ["--packing", "concat", "--attention", "causal"],
    }
    rates: dict[str, list[float]] = {k: [] for k in layouts}
    for r in range(rounds):
        for name, flags in layouts.items():
            out = work / f"run{r}_{len(rates[name])}_{name[:3]}"
            cmd = [
                sys.executable,
                str(REPO_ROOT / "trainer" / "train_pretrain.py"),
                "--data_path",
                str(train),
            ]
            cmd += [
                "--tokenizer_path",
                str(tok),
                "--max_seq_len",
                "512",
                "--batch_size",
                "8",
                "--max_steps",
                str(steps),
            ]
            cmd += [
                "--log_interval",
                "4",
                "--eval_interval",
                "0",
                "--save_interval",
                "0",
                "--save_dir",
                str(out),
            ]
            cmd += ["--checkpoint_dir", str(out), "--cache_dir", str(work / "cache"), *flags]
            subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "WANDB_MODE": "disabled"})
            recs = [json.loads(x) for x in (out / "pretrain_512_metrics.jsonl").read_text().splitlines()]
            tps = [x["tokens_per_sec"] for x in recs if x["kind"] == "train"][1:]  # after the first interval
            rates[name].append(float(np.mean(tps)))
            packing = next(x for x in recs if x["kind"] == "packing")
            print(
                f"  round {r + 1} {name}: {rates[name][-1]:.0f} target tokens/s (fill {100 * packing['fill']:.1f}%)",
                flush=True,
            )
    default, old = (np.mean(v) for v in rates.values())
    per_round = [a / b for a, b in zip(*rates.values(), strict=True)]
    print(
        f"speed: defaults {default:.0f} vs concat+causal {old:.0f} target tokens/s: {default / old:.3f}x; "
        f"per round {', '.join(f'{r:.3f}' for r in per_round)} (median {np.median(per_round):.3f}x)"
    )
    return {"tokens_per_sec": rates, "ratio": default / old, "per_round": per_round}


def step(work: Path, reps: int) -> dict:
    """One training step's model work in one process, the two layouts interleaved: forward (fused
    loss) + backward of the default 26M model under bf16 autocast on the first 8 rows of 512 of the
    demo mixture in each layout. No data loading, optimizer or process start: the attention mask and
    per-document positions are all that differ (and the target count: a document's first token)."""
    import torch

    from dataset.rows import IGNORE_INDEX, RowDataset, build_rows
    from dataset.store import build_store
    from dataset.tokenizer import load_tokenizer
    from model.config import ModelConfig
    from model.model import MiniGPTForCausalLM
    from trainer.validation import document_layout

    train, tok = demo_data(work)
    tokenizer = load_tokenizer(tok)
    store = build_store([train], tokenizer, work / "cache")
    torch.manual_seed(0)
    model = MiniGPTForCausalLM(ModelConfig(vocab_size=len(tokenizer)))
    batches = {}
    for name, packing, attention in (
        ("bfd+document (default)", "bfd", "document"),
        ("concat+causal", "concat", "causal"),
    ):
        ds = RowDataset(build_rows(store, 512, packing, attention))
        x, y, _, pos, doc = (torch.stack(t) for t in zip(*(ds[i] for i in range(8)), strict=True))
        batches[name] = (x, y, document_layout(attention, pos, doc, torch.device("cpu")))

    def once(name: str) -> float:
        x, y, layout = batches[name]
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = model(x, targets=y, **layout)
        losses.sum().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    secs: dict[str, list[float]] = {k: [] for k in batches}
    for name in batches:  # warm-up
        once(name)
    for _ in range(reps):
        for name in batches:
            secs[name].append(once(name))
    rate = {k: float((batches[k][1] != IGNORE_INDEX).sum()) / np.median(v) for k, v in secs.items()}
    med = {k: float(np.median(v)) for k, v in secs.items()}
    (a, b), (ra, rb) = med.values(), rate.values()
    print(
        f"step (forward + backward, 8 x 512, {reps} interleaved repetitions, median): defaults {a:.3f} s vs "
        f"concat+causal {b:.3f} s ({b / a:.3f}x); target tokens/s {ra:.0f} vs {rb:.0f} ({ra / rb:.3f}x)"
    )
    return {"seconds": secs, "median_seconds": med, "target_tokens_per_sec": rate}


def fill(work: Path) -> dict:
    from dataset.rows import build_rows
    from dataset.store import build_store
    from dataset.tokenizer import load_tokenizer

    train, tok = demo_data(work)
    store = build_store([train], load_tokenizer(tok), work / "cache")
    out = {}
    for L in (256, 512, 1024, 2048):
        b, c = (build_rows(store, L, p, "document").stats() for p in ("bfd", "concat"))
        out[L] = {"bfd": b.fill, "concat": c.fill, "split": b.split, "documents": b.documents}
        print(
            f"fill at {L}: bfd {100 * b.fill:.1f}% ({b.split} of {b.documents} documents split), concat {100 * c.fill:.1f}%"
        )
    return out


class _Lengths:
    """A store-shaped object holding only document lengths (what BFDRows reads), one segment."""

    def __init__(self, lengths: np.ndarray):
        self.doc_len = lengths.astype(np.int32)
        self.doc_start = np.concatenate([[0], np.cumsum(lengths[:-1], dtype=np.int64)])
        self.doc_source = np.zeros(len(lengths), dtype=np.uint8)
        self.num_docs, self.num_tokens = len(lengths), int(lengths.sum())
        self.segments = [(None, 0, len(lengths), 0, self.num_tokens)]
        self.segment_names, self.source_names, self.pad_id = [None], ["all"], 0


def pack(work: Path, n_docs: int) -> dict:
    from dataset.store import build_store
    from dataset.tokenizer import load_tokenizer

    train, tok = demo_data(work)
    lengths = np.asarray(build_store([train], load_tokenizer(tok), work / "cache").doc_len, dtype=np.int64)
    sample = np.random.default_rng(0).choice(lengths, size=n_docs, replace=True)
    out = {}
    for L in (512, 2048):
        code = (
            "import time, resource, numpy as np\n"
            "from scripts.dev.bench_packing import _Lengths\n"
            "from dataset.rows import BFDRows\n"
            "lengths = np.load(%r)\n"
            "store = _Lengths(lengths)\n"
            "t = time.perf_counter(); rows = BFDRows(store, %d, 'document'); s = time.perf_counter() - t\n"
            "print(s, rows.stats().fill, rows.num_rows, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        )
        np.save(work / "lengths.npy", sample)
        res = subprocess.run(
            [sys.executable, "-c", code % (str(work / "lengths.npy"), L)],
            check=True,
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
        )
        secs, fill_, rows, rss = res.stdout.split()
        out[L] = {
            "seconds": float(secs),
            "fill": float(fill_),
            "rows": int(rows),
            "peak_rss_gib": int(rss) / 2**20,
        }
        print(
            f"pack {n_docs:,} documents into rows of {L}: {float(secs):.1f} s, fill {100 * float(fill_):.2f}%, "
            f"{int(rows):,} rows, peak RSS {int(rss) / 2**20:.2f} GiB"
        )
    return out


def _attention_peak(L: int, masked: bool) -> float:
    code = f"""
import resource, torch, torch.nn.functional as F
torch.manual_seed(0)
B, H, D, L = 8, 8, 64, {L}
q, k, v = (torch.randn(B, H, L, D, requires_grad=True) for _ in range(3))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
doc = torch.arange(L).div(L // 7, rounding_mode="floor")[None].expand(B, L)
if {masked}:
    i = torch.arange(L)
    mask = ((doc[:, :, None] == doc[:, None, :]) & (i[None, :] <= i[:, None]))[:, None]
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
else:
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
y.sum().backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**20)
"""
    res = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(res.stdout.strip())


def mask(_: Path) -> dict:
    out = {}
    for L in (2048, 4096):
        m, c = _attention_peak(L, True), _attention_peak(L, False)
        out[L] = {"mask_gib": m, "causal_gib": c, "mask_tensor_mib": 8 * L * L / 2**20}
        print(
            f"mask at {L} x batch 8: attention fwd+bwd peak {m:.2f} GiB with the boolean mask "
            f"(the mask itself {8 * L * L / 2**20:.0f} MiB) vs {c:.2f} GiB with is_causal"
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("speed", "step", "fill", "pack", "mask"), default=None)
    p.add_argument("--reps", type=int, default=10, help="step: interleaved repetitions")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--docs", type=int, default=10_000_000)
    p.add_argument("--work", default=None, help="keep the prepared data here (default: a temporary folder)")
    p.add_argument("--output", default=None, help="also write the figures as JSON here")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_packing_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    for name, fn in (
        ("speed", lambda: speed(work, args.rounds, args.steps)),
        ("step", lambda: step(work, args.reps)),
        ("fill", lambda: fill(work)),
        ("pack", lambda: pack(work, args.docs)),
        ("mask", lambda: mask(work)),
    ):
        if args.only in (None, name):
            results[name] = fn()
    results["seconds"] = time.perf_counter() - t0
    results["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
