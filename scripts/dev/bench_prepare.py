"""Benchmark prepare_dataset: time and peak memory of a 100k-sample mixture from local files,
mixed by rows and by tokens.

    python scripts/dev/bench_prepare.py                      # 100k samples, inputs at 1x and 4x, both modes
    python scripts/dev/bench_prepare.py --scales 1 --repeats 3   # the rows-vs-tokens comparison alone
    python scripts/dev/bench_prepare.py --total 20000 --scales 1 --modes tokens --num_proc 1

Inputs are built in a temporary folder by replicating real rows from ../shared/data
(TinyStories, Code Alpaca, MMLU auxiliary_train; each copy gets a unique tag so exact
dedup keeps it) until each source holds `scale` x the rows either mode needs (plus 40%
for the filters); both modes read the same files. The mixture is the mid-training recipe
(30/35/35, the default.yaml filters) decontaminated against MMLU test+validation+dev:
`mix_by: rows` with `total_samples: TOTAL`, and `mix_by: tokens` with the shares as token
shares and `total_tokens` set so that it also writes about TOTAL rows (from each source's
mean tokens per row in the seed rows), counted with a 6,400-token BPE trained on the seed
rows (dataset.tokenizer.train_tokenizer; its training is not timed).

Each scale and mode runs in a fresh process: once with an empty datasets cache (cold:
includes converting the JSON to Arrow), then --repeats times warm, the modes alternating so
that a machine shared with other jobs slows both alike; the ratio compares the fastest warm
run of each mode. Peak RSS is the main process's
ru_maxrss, split into anonymous and file-backed (memory-mapped Arrow pages, shared
libraries) by sampling /proc/self/status every 20 ms. Workers are forked, so their RSS
counts pages they share with the main process. About 175 MB of the main process is
`import torch`, which `model.errors` pulls in through `model/__init__.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from dataset.formats import FormatSpec, render_row
from dataset.tokenizer import count_tokens, load_tokenizer, train_tokenizer
from trainer.cli import run
from trainer.paths import REPO_ROOT

SHARED = Path(os.environ.get("MINIGPT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
RATIOS = {"replay": 0.30, "code": 0.35, "reasoning": 0.35}
FORMATS = {"replay": "text", "code": "alpaca", "reasoning": "mmlu"}

CHILD = """
import json, resource, sys, threading, time
from dataset.mixture import load_mixture_config, prepare_mixture

peak = {"RssAnon": 0, "RssFile": 0}
def sample():  # /proc/self/status every 20 ms: peak anonymous vs file-backed (mmap) resident memory
    while True:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    key = line.split(":")[0]
                    if key in peak:
                        peak[key] = max(peak[key], int(line.split()[1]))
        except OSError:
            return
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()

config, out, cache, num_proc = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
start = time.perf_counter()
tokenizer = sys.argv[5] if len(sys.argv) > 5 else None
manifest = prepare_mixture(
    load_mixture_config(config), out, num_proc=num_proc, overwrite=True, cache_dir=cache, tokenizer=tokenizer
)
mine, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({
    "seconds": time.perf_counter() - start,
    "cpu_seconds": mine.ru_utime + mine.ru_stime + workers.ru_utime + workers.ru_stime,
    "cpu_main": mine.ru_utime + mine.ru_stime,
    "main_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "anon_mb": peak["RssAnon"] / 1024,
    "file_mb": peak["RssFile"] / 1024,
    "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    "rows": manifest["outputs"]["train"]["rows"] + manifest["outputs"]["val"]["rows"],
    "read": {s["name"]: s["rows_read"] for s in manifest["sources"]},
}))
"""


def _read(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def seed_rows() -> tuple[dict[str, list[dict]], list[Path]]:
    """Rows to replicate per source, and the evaluation files to decontaminate against."""
    if not (SHARED / "mmlu" / "test.jsonl").exists():
        raise SystemExit(
            f"{SHARED} not found: the benchmark replicates its real rows (set MINIGPT_SHARED_DATA)"
        )
    stories = [r for f in sorted((SHARED / "tinystories").glob("*.jsonl")) for r in _read(f)]
    evals = [SHARED / "mmlu" / f"{s}.jsonl" for s in ("test", "val", "dev")]
    return {
        "replay": stories,
        "code": _read(SHARED / "code_instructions" / "code_alpaca_2k.jsonl"),
        "reasoning": _read(SHARED / "mmlu" / "auxiliary_train_subset.jsonl"),
    }, evals


def _tagged(name: str, row: dict, copy: int) -> dict:
    """A copy of a row made unique (for exact dedup) by a short tag."""
    if copy == 0:
        return row
    if name == "replay":
        return {"text": f"{row['text']}\n\n(Story {copy}.)"}
    if name == "code":
        return {**row, "instruction": f"{row['instruction']} (Task {copy}.)"}
    return {**row, "question": f"{row['question']} (Question {copy}.)"}


def build_inputs(
    folder: Path, seeds: dict[str, list[dict]], rows_per_source: dict[str, int]
) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in seeds.items():
        path = folder / f"{name}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for i in range(rows_per_source[name]):
                f.write(
                    json.dumps(_tagged(name, rows[i % len(rows)], i // len(rows)), ensure_ascii=False) + "\n"
                )
        paths[name] = path
    return paths


def write_config(path: Path, inputs: dict[str, Path], evals: list[Path], mode: str, total: int) -> None:
    """The bench mixture: ``total`` rows (mode rows) or tokens (mode tokens)."""
    filters = {
        "replay": {"length": {"min": 100, "max": 2000}, "quality": {"threshold": 0.3}},
        "code": {
            "length": {"min": 50, "max": 2000},
            "quality": {"threshold": 0.2},
            "code_quality": {"threshold": 0.1},
        },
        "reasoning": None,
    }
    config = {
        "name": "bench",
        **({"total_samples": total} if mode == "rows" else {"mix_by": "tokens", "total_tokens": total}),
        "val_ratio": 0.05,
        "seed": 42,
        "dedup": True,
        "sources": [
            {"name": n, "data_files": str(inputs[n]), "format": FORMATS[n], "ratio": RATIOS[n]}
            | ({"filters": filters[n]} if filters[n] else {})
            for n in RATIOS
        ],
        "decontaminate": [{"data_files": str(p), "format": "mmlu"} for p in evals],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def bench_tokenizer(folder: Path, seeds: dict[str, list[dict]]) -> tuple[Path, dict[str, float]]:
    """A 6,400-token BPE trained on the rendered seed rows, and each source's mean tokens per row."""
    texts = {n: [render_row(r, FormatSpec(format=FORMATS[n])) for r in rows] for n, rows in seeds.items()}
    path = folder / "tokenizer"
    train_tokenizer((t for ts in texts.values() for t in ts), 6400, path)
    tok = load_tokenizer(path)
    return path, {n: sum(count_tokens(tok, ts)) / len(ts) for n, ts in texts.items()}


def run_once(config: Path, out: Path, cache: Path, num_proc: int, tokenizer: Path | None) -> dict:
    extra = [str(tokenizer)] if tokenizer else []
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(config), str(out), str(cache), str(num_proc), *extra],
        capture_output=True,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    if proc.returncode != 0:
        raise SystemExit(f"benchmark run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--total", type=int, default=100_000, help="total_samples of the mixture")
    p.add_argument(
        "--scales", type=float, nargs="+", default=[1, 4], help="input sizes, in multiples of what is needed"
    )
    p.add_argument("--num_proc", type=int, default=2)
    p.add_argument("--modes", nargs="+", choices=["rows", "tokens"], default=["rows", "tokens"])
    p.add_argument("--repeats", type=int, default=2, help="warm runs per mode (the fastest is compared)")
    p.add_argument("--work_dir", default=None, help="where to build inputs (default: a temporary folder)")
    args = p.parse_args()

    seeds, evals = seed_rows()
    results = []
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        tok_path, mean_tokens = bench_tokenizer(Path(tmp), seeds)
        # total_tokens that also gives ~args.total rows: sum_s share_s x T / mean_s = total.
        total_tokens = round(args.total / sum(RATIOS[n] / mean_tokens[n] for n in RATIOS))
        need = {
            n: max(args.total * r, r * total_tokens / mean_tokens[n]) for n, r in RATIOS.items()
        }  # rows each source must give in either mode
        print(
            f"tokens mode: total_tokens {total_tokens:,} (mean tokens per row: "
            + ", ".join(f"{n} {m:.0f}" for n, m in mean_tokens.items())
            + ")"
        )
        for scale in args.scales:
            folder = Path(tmp) / f"scale{scale:g}"
            # 1.4x the rows needed, so every source survives its filters without repeats.
            rows = {n: int(need[n] * 1.4 * scale) for n in RATIOS}
            inputs = build_inputs(folder / "inputs", seeds, rows)
            size_mb = sum(p.stat().st_size for p in inputs.values()) / 1e6
            for mode in args.modes:
                write_config(
                    folder / f"bench_{mode}.yaml",
                    inputs,
                    evals,
                    mode,
                    args.total if mode == "rows" else total_tokens,
                )
            # cold once per mode, then the warm runs with the modes alternating, so a machine
            # shared with other jobs slows both alike
            runs = [(m, "cold") for m in args.modes] + [
                (m, "warm") for _ in range(args.repeats) for m in args.modes
            ]
            for mode, phase in runs:
                start = time.perf_counter()
                r = run_once(
                    folder / f"bench_{mode}.yaml",
                    folder / "out",
                    folder / f"hf_cache_{mode}",
                    args.num_proc,
                    tok_path if mode == "tokens" else None,
                )
                r["wall"] = time.perf_counter() - start
                results.append((scale, mode, sum(rows.values()), size_mb, phase, r))
                print(
                    f"scale {scale:g}x ({sum(rows.values()):,} input rows, {size_mb:.0f} MB) {mode} {phase}: "
                    f"{r['seconds']:.1f} s in prepare_mixture, {r['wall']:.1f} s with start-up, "
                    f"{r['cpu_seconds']:.1f} s CPU (main process {r['cpu_main']:.1f} s, start-up included); "
                    f"{r['rows']:,} rows written; "
                    f"peak RSS main {r['main_rss_mb']:.0f} MB (anonymous {r['anon_mb']:.0f}, file-backed {r['file_mb']:.0f}), "
                    f"largest worker {r['worker_rss_mb']:.0f} MB; "
                    f"rows read {r['read']}",
                    flush=True,
                )
    print()
    print(
        f"| input | rows | MB | mix_by | datasets cache | rows written | prepare s | wall s | CPU s (main) "
        f"| peak RSS MB (anonymous + file-backed) | largest worker MB |  (num_proc={args.num_proc}, total={args.total:,})"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for scale, mode, n, mb, phase, r in results:
        print(
            f"| {scale:g}x | {n:,} | {mb:.0f} | {mode} | {phase} | {r['rows']:,} | {r['seconds']:.1f} | {r['wall']:.1f} "
            f"| {r['cpu_seconds']:.1f} ({r['cpu_main']:.1f}) | "
            f"{r['main_rss_mb']:.0f} ({r['anon_mb']:.0f} + {r['file_mb']:.0f}) | {r['worker_rss_mb']:.0f} |"
        )
    for scale in args.scales:
        for key, label in (("seconds", "time in prepare_mixture"), ("cpu_seconds", "CPU time")):
            best = {
                m: min(r[key] for s_, m_, _, _, ph, r in results if s_ == scale and m_ == m and ph == "warm")
                for m in args.modes
            }
            if len(best) == 2:
                print(
                    f"scale {scale:g}x, fastest warm run, {label}: tokens {best['tokens']:.1f} s / "
                    f"rows {best['rows']:.1f} s = {best['tokens'] / best['rows']:.2f}x"
                )


if __name__ == "__main__":
    run(main)
