"""Benchmark the token pipeline at scale: prepare_dataset (rows, tokens, streaming) and the
trainer's start, at 10M and 100M tokens of real-text-derived data.

    python scripts/dev/bench_prepare.py                            # 10M and 100M tokens
    python scripts/dev/bench_prepare.py --tokens 10e6 --repeats 2  # the small scale, twice
    python scripts/dev/bench_prepare.py --tokens 2e6 --num_proc 2 --work_dir /tmp/bench

What it measures, per scale, each in a fresh process (fresh token caches; the datasets cache of
the inputs is built once beforehand, untimed):

- ``prepare rows``: ``mix_by: rows`` (total_samples set so that it writes about the same tokens),
  no tokenizer: JSONL only;
- ``prepare tokens``: ``mix_by: tokens``, ``total_tokens`` = the scale: JSONL + token stores;
- ``prepare stream``: the same with every source ``streaming: true`` (shuffle buffer 10,000);
- ``start rows``: train_midtrain --use_prepared on the rows-mode files, to the end of its first
  optimizer step (a 64 x 2 model, so the step itself is negligible): it tokenizes the JSONL into
  its cache;
- ``start tokens``: the same on the tokens-mode files: it opens prepare's stores;
- ``start tokens L/2``: again with half the row length: no tokenizing either.

The pipeline ratio compares (prepare tokens + start tokens) with (prepare rows + start rows), both
with fresh caches, modes alternating so that a machine shared with other jobs slows both alike.
Per run: wall seconds, CPU seconds of every process (the main one apart), peak resident memory of
the main process and of the whole process tree (sampled from /proc every 50 ms), and, for prepare,
the selection and writing phases (its ``prepare:`` log line). Bytes on disk per token: JSONL and
store. The extrapolation to 1B and 10B tokens on a 16-core machine fits time = fixed + rate x
tokens between the two scales, with the rate split into what runs on every core (worker CPU / 16)
and what the main process does alone (its CPU), whichever is larger, plus the writing phase.

Inputs are real rows from ../shared/data (TinyStories, Code Alpaca, MMLU auxiliary_train),
replicated with a unique tag per copy so exact dedup keeps them, 1.4x what the plan needs; the
mixture is the mid-training recipe (30/35/35, the default.yaml filters), decontaminated against
MMLU test+validation+dev; tokens are counted with a 6,400-token BPE trained on the seed rows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from dataset.formats import FormatSpec, render_row
from dataset.tokenizer import count_tokens, load_tokenizer, train_tokenizer
from trainer.cli import run
from trainer.paths import REPO_ROOT, shared_data

SHARED = shared_data()
RATIOS = {"replay": 0.30, "code": 0.35, "reasoning": 0.35}
FORMATS = {"replay": "text", "code": "alpaca", "reasoning": "mmlu"}
SEQ_LEN = 512
TINY = [
    "--hidden_size",
    "64",
    "--num_hidden_layers",
    "2",
    "--num_attention_heads",
    "4",
    "--num_key_value_heads",
    "2",
]


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
    """The bench mixture: ``total`` rows (mode rows) or tokens (tokens, stream)."""
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
            | ({"streaming": True} if mode == "stream" else {})
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


# --------------------------------------------------------------------------- measuring a process tree


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _status(pid: int) -> dict[str, int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            return {
                k: int(v.split()[0])
                for k, v in (line.split(":", 1) for line in f)
                if v.strip().endswith("kB")
            }
    except OSError:
        return {}


def _cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Run ``cmd``; wall and CPU seconds (all processes; the main one apart), peak RSS (MB) of the
    main process and of the process tree, its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "TQDM_DISABLE": "1", **(env or {})},
    )  # fmt: skip
    peak_main = peak_tree = anon = 0
    main_cpu = 0.0
    while proc.poll() is None:
        s = _status(proc.pid)
        if s:
            peak_main = max(peak_main, s.get("VmHWM", 0))
            anon = max(anon, s.get("RssAnon", 0))
            main_cpu = max(main_cpu, _cpu(proc.pid))
        peak_tree = max(peak_tree, sum(_status(p).get("VmRSS", 0) for p in _tree(proc.pid)))
        time.sleep(0.05)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out.seek(0)
    text = out.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{text[-3000:]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {
        "wall": wall,
        "cpu": cpu,
        "cpu_main": min(main_cpu, cpu),
        "rss_main_mb": peak_main / 1024,
        "anon_main_mb": anon / 1024,
        "rss_tree_mb": peak_tree / 1024,
        "stdout": text,
    }


def phases(text: str) -> tuple[float, float]:
    m = re.search(r"prepare: [\d,]+ rows selected in ([\d.]+) s, written.* in ([\d.]+) s", text)
    return (float(m.group(1)), float(m.group(2))) if m else (float("nan"), float("nan"))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- the benchmark


def tiny_checkpoint(work: Path, tok: Path, seeds: dict[str, list[dict]]) -> Path:
    """A 64 x 2 model pretrained for one step (untimed): what the trainer's start loads."""
    data = work / "pretrain.jsonl"
    data.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in seeds["replay"][:200]))
    model = work / "model"
    measure(
        [sys.executable, "trainer/train_pretrain.py", "--data_path", str(data), "--tokenizer_path", str(tok), *TINY,
         "--max_seq_len", str(SEQ_LEN), "--batch_size", "4", "--max_steps", "1", "--save_dir", str(model),
         "--checkpoint_dir", str(work / "ckpt"), "--cache_dir", str(work / "pcache"), "--dtype", "float32"],
    )  # fmt: skip
    return model


def start_cmd(config: Path, data: Path, model: Path, cache: Path, seq_len: int) -> list[str]:
    return [
        sys.executable, "trainer/train_midtrain.py", "--data_config", str(config), "--use_prepared",
        "--prepared_dir", str(data), "--from_weight", "pretrain", "--save_dir", str(model),
        "--checkpoint_dir", str(cache / "ckpt"), "--cache_dir", str(cache), "--save_weight", "bench",
        "--max_steps", "1", "--max_seq_len", str(seq_len), "--batch_size", "8", "--eval_batches", "1",
        "--log_interval", "1", "--dtype", "float32", "--device", "cpu",
    ]  # fmt: skip


def bench_scale(
    tokens: int, args, work: Path, seeds, evals, tok: Path, mean: dict[str, float], model: Path
) -> list[dict]:
    folder = work / f"t{tokens:.0e}"
    rows_total = round(tokens / sum(RATIOS[n] * mean[n] for n in RATIOS))  # rows mode writes ~ as many tokens
    need = {n: max(rows_total * r, r * tokens / mean[n]) for n, r in RATIOS.items()}
    inputs = build_inputs(folder / "inputs", seeds, {n: int(need[n] * 1.4) for n in RATIOS})
    size_mb = sum(p.stat().st_size for p in inputs.values()) / 1e6
    configs = {}
    for mode in ("rows", "tokens", "stream"):
        configs[mode] = folder / f"{mode}.yaml"
        write_config(configs[mode], inputs, evals, mode, rows_total if mode == "rows" else tokens)
    hf = folder / "hf_cache"
    warm = f"from dataset.mixture import load_mixture_config\nfrom dataset import sources\nc = load_mixture_config({str(configs['rows'])!r})\nfor s in [*c.sources, *c.decontaminate]: sources.load(s, 'bench', {str(hf)!r})"
    measure([sys.executable, "-c", warm])  # the datasets cache of the inputs, untimed
    print(
        f"\n{tokens:,.0f} tokens: inputs {size_mb:,.0f} MB ({sum(int(need[n] * 1.4) for n in RATIOS):,} rows)",
        flush=True,
    )
    results = []
    prepare = [
        sys.executable,
        "scripts/prepare_dataset.py",
        "--num_proc",
        str(args.num_proc),
        "--overwrite",
        "--hf_cache_dir",
        str(hf),
    ]
    for rep in range(args.repeats):
        for mode in ("rows", "tokens", "stream"):
            data = folder / f"out_{mode}"
            extra = [] if mode == "rows" else ["--tokenizer_path", str(tok)]
            r = measure([*prepare, "--config", str(configs[mode]), "--output_dir", str(data), *extra])
            r["select"], r["write"] = phases(r["stdout"])
            manifest = json.loads((data / "bench_manifest.json").read_text())
            r["jsonl_bytes"] = sum(manifest["outputs"][s]["bytes"] for s in ("train", "val"))
            r["store_bytes"] = sum(
                folder_bytes(data / f"bench_{s}.store")
                for s in ("train", "val")
                if (data / f"bench_{s}.store").exists()
            )
            r["rows_written"] = sum(manifest["outputs"][s]["rows"] for s in ("train", "val"))
            results.append(report(tokens, rep, f"prepare {mode}", r))
            if mode == "stream":
                continue
            cache = folder / f"cache_{mode}_{rep}"
            r = measure(start_cmd(configs[mode], data, model, cache, SEQ_LEN))
            m = re.findall(
                r"token store: \S+ \((tokenized now|from prepare_dataset|cached), ([\d,]+) tokens\)",
                r["stdout"],
            )
            r["store_tokens"] = sum(int(n.replace(",", "")) for _, n in m)
            r["how"] = "/".join(sorted({h for h, _ in m}))
            r["store_bytes"] = sum(folder_bytes(p) for p in cache.glob("store-*"))
            results.append(report(tokens, rep, f"start {mode}", r))
            if mode == "tokens":
                r = measure(start_cmd(configs[mode], data, model, folder / f"cache_half_{rep}", SEQ_LEN // 2))
                r["how"] = "/".join(
                    sorted(
                        set(
                            re.findall(
                                r"token store: \S+ \((tokenized now|from prepare_dataset|cached)", r["stdout"]
                            )
                        )
                    )
                )
                results.append(report(tokens, rep, "start tokens L/2", r))
    return results


def report(tokens: int, rep: int, what: str, r: dict) -> dict:
    r = {k: v for k, v in r.items() if k != "stdout"} | {"tokens": tokens, "rep": rep, "what": what}
    extra = f", selection {r['select']:.1f} s + writing {r['write']:.1f} s" if "select" in r else ""
    how = f", stores {r['how']}" if "how" in r else ""
    print(
        f"  {what:18s} wall {r['wall']:7.1f} s  CPU {r['cpu']:7.1f} s (main {r['cpu_main']:6.1f})  "
        f"peak RSS main {r['rss_main_mb']:6.0f} MB (anon {r['anon_main_mb']:5.0f}), tree {r['rss_tree_mb']:6.0f} MB{extra}{how}",
        flush=True,
    )
    return r


def summarize(results: list[dict], num_proc: int, cores: int) -> None:
    scales = sorted({r["tokens"] for r in results})

    def best(t: float, what: str, key: str = "wall") -> dict:
        return min((r for r in results if r["tokens"] == t and r["what"] == what), key=lambda r: r[key])

    print(
        f"\n| tokens | run | wall s | CPU s (main) | peak RSS MB main (tree) | notes |  (num_proc={num_proc})"
    )
    print("|---|---|---|---|---|---|")
    for t in scales:
        for what in (
            "prepare rows",
            "prepare tokens",
            "prepare stream",
            "start rows",
            "start tokens",
            "start tokens L/2",
        ):
            r = best(t, what)
            notes = []
            if "select" in r:
                notes.append(f"selection {r['select']:.1f} s, writing {r['write']:.1f} s")
            if r.get("jsonl_bytes"):
                notes.append(f"JSONL {r['jsonl_bytes'] / t:.2f} B/token")
            if r.get("store_bytes"):
                notes.append(f"store {r['store_bytes'] / t:.2f} B/token")
            if r.get("how"):
                notes.append(f"stores {r['how']}")
            print(
                f"| {t / 1e6:,.0f}M | {what} | {r['wall']:.1f} | {r['cpu']:.1f} ({r['cpu_main']:.1f}) | "
                f"{r['rss_main_mb']:.0f} ({r['rss_tree_mb']:.0f}) | {'; '.join(notes)} |"
            )
    for t in scales:
        for key, unit in (("wall", "s"), ("cpu", "CPU s")):
            rows = best(t, "prepare rows", key)[key] + best(t, "start rows", key)[key]
            toks = best(t, "prepare tokens", key)[key] + best(t, "start tokens", key)[key]
            print(
                f"{t / 1e6:,.0f}M tokens, pipeline (prepare + start, fresh caches), {key}: tokens {toks:.1f} {unit} / "
                f"rows {rows:.1f} {unit} = {toks / rows:.2f}x"
            )
    if len(scales) < 2:
        return
    lo, hi = scales[0], scales[-1]
    rss = {
        w: best(hi, w, "rss_main_mb")["rss_main_mb"] / best(lo, w, "rss_main_mb")["rss_main_mb"]
        for w in ("prepare tokens", "start tokens", "start rows")
    }
    print(
        "peak RSS of the main process, "
        + f"{hi / 1e6:,.0f}M / {lo / 1e6:,.0f}M tokens: "
        + ", ".join(f"{w} {v:.2f}x" for w, v in rss.items())
    )
    print(
        f"\nextrapolated to a {cores}-core machine (time = fixed + tokens x max(main CPU, worker CPU / {cores}) per token [+ writing]):"
    )
    for what in ("prepare rows", "prepare tokens", "prepare stream", "start rows", "start tokens"):
        a, b = best(lo, what), best(hi, what)
        d = hi - lo
        main = max(b["cpu_main"] - a["cpu_main"] - (b.get("write", 0) - a.get("write", 0)), 0) / d
        workers = max((b["cpu"] - b["cpu_main"]) - (a["cpu"] - a["cpu_main"]), 0) / d
        write = max(b.get("write", 0) - a.get("write", 0), 0) / d
        fixed = max(a["wall"] - lo * (max(main, workers / num_proc) + write), 0)
        rate = max(main, workers / cores) + write
        mem = (b["rss_main_mb"] - a["rss_main_mb"]) / d
        cells = []
        for t in (1e9, 1e10):
            cells.append(
                f"{t / 1e9:.0f}B: {(fixed + t * rate) / 60:,.0f} min, main RSS ~{(a['rss_main_mb'] + mem * (t - lo)) / 1024:,.1f} GB"
            )
        print(f"  {what:15s} " + "; ".join(cells))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=float, nargs="+", default=[10e6, 100e6], help="mixture sizes in tokens")
    p.add_argument("--num_proc", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument(
        "--repeats", type=int, default=1, help="runs of each kind per scale (the fastest is compared)"
    )
    p.add_argument("--cores", type=int, default=16, help="the machine the extrapolation is for")
    p.add_argument("--work_dir", default=None, help="where to build inputs (default: a temporary folder)")
    args = p.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    seeds, evals = seed_rows()
    results = []
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        work = Path(tmp)
        tok, mean = bench_tokenizer(work, seeds)
        model = tiny_checkpoint(work, tok, seeds)
        print("mean tokens per row: " + ", ".join(f"{n} {m:.0f}" for n, m in mean.items()))
        for tokens in sorted(args.tokens):
            results += bench_scale(int(tokens), args, work, seeds, evals, tok, mean, model)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    summarize(results, args.num_proc, args.cores)


if __name__ == "__main__":
    run(main)
