"""Turn an ablation study's metrics logs and MMLU evaluation into report.md, results.json and plots."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from dataset.io import atomic_write
from trainer.ablation.config import ExperimentConfig, Variant
from trainer.ablation.stats import early_spike, mean_ci95, wilson95
from trainer.checkpoint import checkpoint_paths
from trainer.metrics import MetricsLog


def _fmt(mean: float, half: float, digits: int = 3, signed: bool = False) -> str:
    if mean is None or not math.isfinite(mean):
        return "-"
    m = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return m if not math.isfinite(half) else f"{m} ± {half:.{digits}f}"


def _results(eval_jsons: list[Path]) -> list[tuple[str, dict]]:
    """(model label, results) of every model in the eval_llm reports that exist, in order."""
    return [
        item
        for p in eval_jsons
        if p.is_file()
        for item in json.loads(p.read_text()).get("results", {}).items()
    ]


def mmlu_counts(eval_jsons: list[Path]) -> dict[str, tuple[int, int, float]]:
    """{model label: (correct, total, mean probability of the four letters)} for the first MMLU
    setting in the eval_llm reports."""
    out = {}
    for label, res in _results(eval_jsons):
        mmlu = res.get("mmlu") or {}
        for setting in mmlu.values():
            if isinstance(setting, dict) and "acc" in setting and "n" in setting:
                n = int(setting["n"])
                out[label] = (round(setting["acc"] * n), n, float(setting.get("letter_mass", math.nan)))
                break
    return out


GENERATION_KEYS = (  # eval_llm's per-model results: {"value", "ci95", "correct", "n"}
    ("humaneval_pass@1", "HumanEval pass@1"),
    ("mbpp_pass@1", "MBPP pass@1"),
    ("gsm8k_exact_match_strict", "GSM8K EM (strict)"),
    ("gsm8k_exact_match_flexible", "GSM8K EM (flexible)"),
)


def generation_counts(eval_jsons: list[Path]) -> dict[str, dict[str, tuple[int, int]]]:
    """{model label: {metric key: (correct, total)}} for the pass@1 / exact-match metrics the
    eval_llm reports have (none when the study evaluated without their data)."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for label, res in _results(eval_jsons):
        got = {k: (int(res[k]["correct"]), int(res[k]["n"])) for k, _ in GENERATION_KEYS if k in res}
        if got:
            out.setdefault(label, {}).update(got)
    return out


def heldout_bpb(eval_jsons: list[Path]) -> dict[str, dict[str, float]]:
    """{model label: {source: bits per byte}} of the held-out set scored by eval_llm (each
    document alone; none when the study did not score it)."""
    out = {}
    for label, res in _results(eval_jsons):
        lm = res.get("lm") or {}
        got = {s: float(m["bpb"]) for s, m in lm.items() if isinstance(m, dict) and "bpb" in m}
        if got:
            out[label] = got
    return out


def base_labels(cfg: ExperimentConfig, hidden: int) -> tuple[str, list[str]]:
    """(the name the report gives the model every variant starts from, the labels eval_llm gives
    it): the study's own pretrained model, or ``start_from`` (a folder: its name; a checkpoint
    file: its stem, as eval_llm labels them)."""
    if cfg.start_from is None:
        return "pretrained", [f"pretrain_{hidden}", "pretrain"]
    label = cfg.start_from.stem if cfg.start_from.is_file() else cfg.start_from.name
    return f"{label} (start)", [label]


def _pooled(counts: list[tuple[int, int]]) -> dict:
    k, n = sum(c[0] for c in counts), sum(c[1] for c in counts)
    return {"correct": k, "total": n, "wilson95": wilson95(k, n)}


def _pooled_mmlu(counts: list) -> dict:
    """Questions pooled over runs: accuracy with its Wilson interval, mean letter probability."""
    k, n = sum(c[0] for c in counts), sum(c[1] for c in counts)
    mass = statistics.fmean(c[2] for c in counts)
    return {"correct": k, "total": n, "acc_wilson95": wilson95(k, n), "letter_mass": mass}


def _metrics_path(weights: Path, save_weight: str, hidden: int) -> Path:
    return checkpoint_paths(weights, weights, save_weight, hidden).metrics  # metrics live beside the weights


def collect(
    cfg: ExperimentConfig,
    weights: Path,
    hidden: int,
    runs: list[tuple[Variant, int]],
    eval_jsons: list[Path],
) -> dict:
    """Every number of the study, per run and per variant, from the runs' metrics logs and the
    eval_llm reports ``eval_jsons``."""
    per_run: dict[str, dict] = {}
    sources: list[str] = []
    mmlu = mmlu_counts(eval_jsons)
    gen = generation_counts(eval_jsons)
    bpb = heldout_bpb(eval_jsons)
    for v, seed in runs:
        key = f"{v.name}_s{seed}"
        train, evals, summary = MetricsLog.read(_metrics_path(weights, key, hidden))
        total = max(r["step"] for r in train)
        until = max(1, math.ceil(0.05 * total))
        first, last = evals[0], evals[-1]
        srcs = [k[5:] for k in first if k.startswith("loss_")]
        sources = sources or srcs
        per_run[key] = {
            "variant": v.name,
            "seed": seed,
            "steps": total,
            "early_window": until,
            "start": {s: first[f"loss_{s}"] for s in srcs},
            "final": {s: last[f"loss_{s}"] for s in srcs},
            "delta": {s: last[f"loss_{s}"] - first[f"loss_{s}"] for s in srcs},
            "early_spike_replay": early_spike(evals, f"loss_{cfg.replay_source}", until),
            "curve": [{"step": e["step"], **{s: e.get(f"loss_{s}") for s in srcs}} for e in evals],
            "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in train),
            "mfu": statistics.median(r["mfu"] for r in train),
            "dtype": summary.get(
                "dtype"
            ),  # the precision trained in (--dtype auto: per machine), MFU's peak's
            # the share of the trained tokens each source made up (the variant's shares are targets)
            "token_share": summary.get("token_share", {}),
            "seconds": summary.get("seconds"),
            "mmlu": mmlu.get(f"{key}_{hidden}") or mmlu.get(key),
            "generation": gen.get(f"{key}_{hidden}") or gen.get(key) or {},
            "bpb": bpb.get(f"{key}_{hidden}") or bpb.get(key) or {},
        }
    base_name, base = base_labels(cfg, hidden)
    pre_train: list[dict] = []
    pre_evals: list[dict] = []
    if cfg.start_from is None:
        pre_train, pre_evals, _ = MetricsLog.read(_metrics_path(weights, "pretrain", hidden))
    variants = {}
    for v in cfg.variants:
        rs = [r for r in per_run.values() if r["variant"] == v.name]
        agg = {
            "label": v.label,
            "replay": v.replay,
            "args": v.args,
            "seeds": [r["seed"] for r in rs],
            "final": {s: mean_ci95([r["final"][s] for r in rs]) for s in sources},
            "delta": {s: mean_ci95([r["delta"][s] for r in rs]) for s in sources},
            "delta_pct": {s: mean_ci95([100 * r["delta"][s] / r["start"][s] for r in rs]) for s in sources},
            "early_spike_replay": mean_ci95([r["early_spike_replay"] for r in rs]),
            "replay_token_share": statistics.fmean(
                [r["token_share"].get(cfg.replay_source, 0.0) for r in rs if r["token_share"]] or [math.nan]
            ),
        }
        counts = [r["mmlu"] for r in rs if r["mmlu"]]
        if counts:
            agg["mmlu"] = _pooled_mmlu(counts)
        agg["generation"] = {
            k: _pooled([r["generation"][k] for r in rs if k in r["generation"]])
            for k, _ in GENERATION_KEYS
            if any(k in r["generation"] for r in rs)
        }
        bpb_sources = [s for s in rs[0]["bpb"] if all(s in r["bpb"] for r in rs)] if rs else []
        agg["bpb"] = {s: mean_ci95([r["bpb"][s] for r in rs]) for s in bpb_sources}
        variants[v.name] = agg
    pre_mmlu = next((mmlu[b] for b in base if b in mmlu), None)
    return {
        "name": cfg.name,
        "config": str(cfg.path),
        "sources": sources,
        "base_label": base_name,
        "pretrained": {
            "heldout_loss": {s: per_run[next(iter(per_run))]["start"][s] for s in sources} if per_run else {},
            "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in pre_train)
            if pre_train
            else None,
            "steps": max((r["step"] for r in pre_train), default=0),
            "final_eval": pre_evals[-1] if pre_evals else None,
            "mmlu": _pooled_mmlu([pre_mmlu]) if pre_mmlu else None,
            "bpb": next((bpb[b] for b in base if b in bpb), {}),
            "generation": {k: _pooled([c]) for k, c in next((gen[b] for b in base if b in gen), {}).items()},
        },
        "variants": variants,
        "runs": per_run,
    }


def _plots(results: dict, out: Path, replay: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources, variants, runs = results["sources"], results["variants"], results["runs"]
    paths = []

    def save(fig, name: str) -> Path:
        fig.tight_layout()
        atomic_write(out / name, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        plt.close(fig)
        return out / name

    def mean_curve(vname: str, src: str) -> tuple[list[int], list[float]]:
        curves = [r["curve"] for r in runs.values() if r["variant"] == vname]
        steps = [p["step"] for p in curves[0]]
        return steps, [statistics.fmean(c[i][src] for c in curves) for i in range(len(steps))]

    fig, axes = plt.subplots(1, len(sources), figsize=(4.2 * len(sources), 3.6), squeeze=False)
    for ax, src in zip(axes[0], sources, strict=True):
        for vname, v in variants.items():
            steps, ys = mean_curve(vname, src)
            ax.plot(steps, ys, marker=".", label=v["label"])
        ax.set_title(f"held-out {src}")
        ax.set_xlabel("mid-training step")
        ax.set_ylabel("loss (mean over seeds)")
    axes[0][0].legend(fontsize=7)
    paths.append(save(fig, "heldout_loss.png"))

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(sources) * len(variants) / 3), 4))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants.values()):
        xs = [j + i * width for j in range(len(sources))]
        ms = [v["delta"][s][0] for s in sources]
        es = [0 if not math.isfinite(v["delta"][s][1]) else v["delta"][s][1] for s in sources]
        ax.bar(xs, ms, width, yerr=es, capsize=3, label=v["label"])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(sources))], sources)
    ax.set_ylabel("final - pretrained held-out loss (95% CI over seeds)")
    ax.legend(fontsize=7)
    paths.append(save(fig, "final_deltas.png"))

    fig, ax = plt.subplots(figsize=(6.5, 4))
    window = max((r["early_window"] for r in runs.values()), default=1)
    for vname, v in variants.items():
        steps, ys = mean_curve(vname, replay)
        keep = [(s, y) for s, y in zip(steps, ys, strict=True) if s <= max(3 * window, 10)]
        ax.plot([s for s, _ in keep], [y for _, y in keep], marker="o", label=v["label"])
    ax.axvspan(0, window, color="grey", alpha=0.15, label=f"first 5% ({window} steps)")
    ax.set_xlabel("mid-training step")
    ax.set_ylabel(f"held-out {replay} loss")
    ax.set_title("early forgetting window")
    ax.legend(fontsize=7)
    paths.append(save(fig, "early_spike.png"))
    return paths


def markdown(results: dict, timings: dict, scale: float, replay: str) -> str:
    sources, variants, pre = results["sources"], results["variants"], results["pretrained"]
    base = results.get("base_label", "pretrained")
    lines = [
        f"# Ablation: {results['name']}",
        "",
        f"Config: `{results['config']}` (scale {scale:g}). Every variant mid-trains the same pretrained model for the same "
        "number of steps and tokens; numbers are mean ± 95% t-interval over seeds. Held-out sets are never trained on "
        "(the base mixture's validation split, by text hash, plus MBPP).",
        "",
        "## Held-out loss after mid-training (change vs the pretrained model)",
        "",
        f"Replay shares are shares of the tokens trained on; `{replay} tokens` is the share realized in training "
        "(mean over seeds).",
        "",
        f"| variant | {replay} tokens | " + " | ".join(sources) + " |",
        "|---|---|" + "---|" * len(sources),
        f"| {base} | - | "
        + " | ".join(f"{pre['heldout_loss'].get(s, math.nan):.3f}" for s in sources)
        + " |",
    ]
    for v in variants.values():
        cells = [
            f"{_fmt(*v['final'][s])} ({_fmt(v['delta_pct'][s][0], v['delta_pct'][s][1], digits=1, signed=True)}%)"
            for s in sources
        ]
        share = v["replay_token_share"]
        share_cell = f"{100 * share:.1f}%" if math.isfinite(share) else "-"
        lines.append(f"| {v['label']} | {share_cell} | " + " | ".join(cells) + " |")
    lines += bpb_table(pre, variants, base)
    lines += [
        "",
        f"## Early forgetting spike (largest rise of held-out {replay} loss in the first 5% of steps; negative: no rise)",
        "",
        "| variant | spike |",
        "|---|---|",
    ]
    lines += [
        f"| {v['label']} | {_fmt(v['early_spike_replay'][0], v['early_spike_replay'][1], signed=True)} |"
        for v in variants.values()
    ]
    lines += [
        "",
        "## MMLU-format accuracy (answer-letter log-likelihood; chance = 25%)",
        "",
        "Questions pooled over seeds. P(A-D): the probability the model puts on the four answer letters "
        "after `Answer:` (near 0: it has not learned the format).",
        "",
        "| model | correct / total | accuracy [95% Wilson] | P(A-D) |",
        "|---|---|---|---|",
    ]

    def acc_row(label: str, m: dict | None) -> str:
        if not m:
            return f"| {label} | - | - | - |"
        p, lo, hi = m["acc_wilson95"]
        return (
            f"| {label} | {m['correct']} / {m['total']} | {100 * p:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] "
            f"| {m.get('letter_mass', math.nan):.3f} |"
        )

    lines.append(acc_row(base, pre.get("mmlu")))
    lines += [acc_row(v["label"], v.get("mmlu")) for v in variants.values()]
    lines += generation_table(pre, variants, base)
    tps = [r["tokens_per_sec"] for r in results["runs"].values()]
    reused = results.get("reused_runs", {})

    def cost(phase: str, seconds: float) -> str:
        n = reused.get(phase, 0)
        return f"{seconds / 60:.1f} min" + (
            f" (+ {n} run{'s' * (n > 1)} reused from an earlier invocation)" if n else ""
        )

    lines += [
        "",
        "## Cost",
        "",
        "Wall time of the invocation that wrote this report"
        + (": runs it found finished were not rerun, and their time is not counted." if reused else "."),
        "",
        "| phase | wall time |",
        "|---|---|",
        *[f"| {k} | {cost(k, v)} |" for k, v in timings.items()],
        "",
        (
            f"Pretraining: {pre['steps']} steps at a median {pre['tokens_per_sec'] or 0:,.0f} tokens/s. "
            if pre["steps"]
            else f"Start: {base}, not trained by the study. "
        )
        + f"Mid-training runs: median {statistics.median(tps) if tps else 0:,.0f} tokens/s each (runs share the CPU).",
        "",
        "![held-out loss](heldout_loss.png)",
        "",
        "![final deltas](final_deltas.png)",
        "",
        "![early spike](early_spike.png)",
        "",
    ]
    return "\n".join(lines)


def bpb_table(pre: dict, variants: dict, base: str) -> list[str]:
    """Markdown for the held-out bits per byte eval_llm measured (none: nothing)."""
    sources = list(pre.get("bpb") or next((v["bpb"] for v in variants.values() if v.get("bpb")), {}))
    if not sources:
        return []
    lines = [
        "",
        "## Held-out bits per byte (eval_llm: each document alone, its text's UTF-8 bytes)",
        "",
        "Mean ± 95% t-interval over seeds; in brackets the change from the start model.",
        "",
        "| model | " + " | ".join(sources) + " |",
        "|---|" + "---|" * len(sources),
        f"| {base} | " + " | ".join(f"{pre['bpb'].get(s, math.nan):.4f}" for s in sources) + " |",
    ]
    for v in variants.values():
        cells = []
        for s in sources:
            if s not in v.get("bpb", {}):
                cells.append("-")
                continue
            mean, half = v["bpb"][s]
            d = mean - pre.get("bpb", {}).get(s, math.nan)
            cells.append(f"{_fmt(mean, half, digits=4)} ({d:+.4f})")
        lines.append(f"| {v['label']} | " + " | ".join(cells) + " |")
    return lines


def generation_table(pre: dict, variants: dict, base: str = "pretrained") -> list[str]:
    """Markdown for the pass@1 / exact-match metrics the evaluation had data for (none: nothing)."""
    shown = [
        (k, title)
        for k, title in GENERATION_KEYS
        if k in pre.get("generation", {}) or any(k in v.get("generation", {}) for v in variants.values())
    ]
    if not shown:
        return []
    lines = [
        "",
        "## Generation (greedy; problems pooled over seeds; [95% Wilson])",
        "",
        "pass@1 runs each completion with its tests in eval_llm's sandbox; GSM8K is 5-shot exact "
        "match. Small models score 0 here: the rows are shown so that a change would show.",
        "",
        "| model | " + " | ".join(t for _, t in shown) + " |",
        "|---|" + "---|" * len(shown),
    ]

    def cell(m: dict | None) -> str:
        if not m:
            return "-"
        p, lo, hi = m["wilson95"]
        return f"{m['correct']} / {m['total']} = {100 * p:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"

    for label, gen in [(base, pre.get("generation", {}))] + [
        (v["label"], v.get("generation", {})) for v in variants.values()
    ]:
        lines.append(f"| {label} | " + " | ".join(cell(gen.get(k)) for k, _ in shown) + " |")
    return lines


def write_report(
    cfg: ExperimentConfig,
    out: Path,
    weights: Path,
    hidden: int,
    runs,
    eval_jsons: list[Path],
    timings: dict,
    scale: float,
    reused: dict | None = None,
) -> dict:
    """``timings``: seconds per phase of this invocation; ``reused``: per phase, how many finished
    runs of an earlier invocation it took instead of rerunning them (their time is not in
    ``timings``)."""
    results = collect(cfg, weights, hidden, runs, eval_jsons)
    results["timings_s"] = timings
    results["reused_runs"] = dict(reused or {})
    results["scale"] = scale
    pngs = _plots(results, out, cfg.replay_source)
    md = out / "report.md"
    js = out / "results.json"
    atomic_write(js, lambda tmp: tmp.write_text(json.dumps(results, indent=1, default=float)))
    atomic_write(md, lambda tmp: tmp.write_text(markdown(results, timings, scale, cfg.replay_source)))
    return {"md": md, "json": js, "png": pngs}
