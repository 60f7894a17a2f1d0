"""The evaluation report: a side-by-side terminal table, JSON, Markdown and a PNG chart.

Every output is built from the same summary rows (:func:`summary_rows`), one column per model
and, with exactly two models, a delta column (second minus first) that says which is better.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dataset.io import atomic_write

RANDOM_MMLU = 0.25  # four choices


def summary_rows(results: dict[str, dict], labels: list[str]) -> list[dict[str, Any]]:
    """The main metrics, one row each: {"metric", "kind", "better", "values": {label: v}, "se": {...}}.

    ``kind`` is "loss" (lower is better), "ppl", "bpb", "pct" (accuracy in [0, 1]) or "frac".
    """
    rows: list[dict[str, Any]] = []

    def add(metric: str, kind: str, better: str, get, se=None, ci=None) -> None:
        values = {lab: _get(results.get(lab, {}), get) for lab in labels}
        if all(v is None for v in values.values()):
            return
        row = {"metric": metric, "kind": kind, "better": better, "values": values}
        if se:
            row["se"] = {lab: _get(results.get(lab, {}), se) for lab in labels}
        if ci:
            row["ci"] = {lab: _get(results.get(lab, {}), ci) for lab in labels}
        rows.append(row)

    sources = _ordered_keys(results, labels, "lm")
    for s in sources:
        add(f"val {s} loss", "loss", "lower", ("lm", s, "loss"))
        add(f"val {s} ppl", "ppl", "lower", ("lm", s, "ppl"))
        add(f"val {s} bpb", "bpb", "lower", ("lm", s, "bpb"))
    for shots in _ordered_keys(results, labels, "mmlu"):
        add(f"MMLU {shots} acc", "pct", "higher", ("mmlu", shots, "acc"), ("mmlu", shots, "acc_se"))
        add(
            f"MMLU {shots} macro acc",
            "pct",
            "higher",
            ("mmlu", shots, "macro_acc"),
            ("mmlu", shots, "macro_acc_se"),
        )
        add(f"MMLU {shots} P(A-D)", "frac", "higher", ("mmlu", shots, "letter_mass"))
    for name in _ordered_keys(results, labels, "code"):
        add(f"{name} solution loss", "loss", "lower", ("code", name, "loss"))
        add(f"{name} solution bpb", "bpb", "lower", ("code", name, "bpb"))
    for name in _ordered_keys(results, labels, "exec"):
        key = f"{name}_pass@1"
        add(f"{name} pass@1", "pct", "higher", (key, "value"), ci=(key, "ci95"))
    k = next((r["gsm8k"]["shots"] for r in results.values() if "gsm8k" in r), None)
    for flt in ("strict", "flexible"):
        key = f"gsm8k_exact_match_{flt}"
        add(f"GSM8K {k}-shot EM {flt}", "pct", "higher", (key, "value"), ci=(key, "ci95"))
    tasks: list[str] = []
    for lab in labels:
        for t in _get(results.get(lab, {}), ("lm_eval", "tasks")) or {}:
            if t not in tasks:
                tasks.append(t)
    for task in tasks:
        metrics: list[str] = []
        for lab in labels:
            for m in _get(results.get(lab, {}), ("lm_eval", "tasks", task)) or {}:
                if m not in metrics and m not in ("n", "sample_len") and not m.endswith("_stderr"):
                    metrics.append(m)
        for m in metrics:
            kind = "pct" if m.split(" ")[0] in FRACTION_METRICS else "num"
            better = "lower" if "perplexity" in m or m.startswith("bits_per_byte") else "higher"
            path = ("lm_eval", "tasks", task)
            add(f"lm-eval {task} {m}", kind, better, (*path, m), se=(*path, f"{m}_stderr"))
    return rows


# lm-evaluation-harness metrics that are proportions (shown as percentages)
FRACTION_METRICS = {"acc", "acc_norm", "exact_match", "mc1", "mc2", "f1", "pass@1", "pass_at_1", "em"}


def _get(d: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _ordered_keys(results: dict, labels: list[str], section: str) -> list[str]:
    keys: list[str] = []
    for lab in labels:
        for k in results.get(lab, {}).get(section, {}) or {}:
            if k not in keys:
                keys.append(k)
    if section == "lm" and "all" in keys:  # the overall numbers last
        keys.remove("all")
        keys.append("all")
    return keys


def _num(v: float, kind: str, signed: bool = False) -> str:
    sign = "+" if signed else ""
    if kind == "pct":
        return f"{v * 100:{sign}.2f}"
    if kind == "ppl" and abs(v) >= 1e4:
        return f"{v:{sign}.3g}"
    if kind == "ppl":
        return f"{v:{sign}.2f}"
    if kind == "frac" and 0 < abs(v) < 0.01:
        return f"{v:{sign}.2e}"
    return f"{v:{sign}.4f}"


def fmt_value(row: dict, label: str) -> str:
    v = row["values"].get(label)
    if v is None:
        return "-"
    if row["kind"] == "pct":
        se = (row.get("se") or {}).get(label)
        ci = (row.get("ci") or {}).get(label)
        if ci is not None:
            return f"{_num(v, 'pct')}% [{ci[0] * 100:.1f}, {ci[1] * 100:.1f}]"
        return f"{_num(v, 'pct')}%" + (f" ±{se * 100:.2f}" if se is not None else "")
    return _num(v, row["kind"])


def fmt_delta(row: dict, a: str, b: str) -> str:
    va, vb = row["values"].get(a), row["values"].get(b)
    if va is None or vb is None:
        return "-"
    d = vb - va
    text = _num(d, row["kind"], signed=True) + (" pp" if row["kind"] == "pct" else "")
    if not any(c in "123456789" for c in text.split("e")[0]):  # no visible change
        return text
    better = (d < 0) == (row["better"] == "lower")
    return f"{text} {'better' if better else 'worse'}"


def table_cells(rows: list[dict], labels: list[str]) -> tuple[list[str], list[list[str]]]:
    header = ["metric", *labels]
    two = len(labels) == 2
    if two:
        header.append(f"delta ({labels[1]} - {labels[0]})")
    body = []
    for row in rows:
        cells = [row["metric"], *(fmt_value(row, lab) for lab in labels)]
        if two:
            cells.append(fmt_delta(row, labels[0], labels[1]))
        body.append(cells)
    return header, body


def terminal_table(rows: list[dict], labels: list[str]) -> str:
    header, body = table_cells(rows, labels)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))
        ),
        line,
    ]
    for r in body:
        out.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(out)


def _md_table(header: list[str], body: list[list[str]], left: int = 1) -> list[str]:
    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    align = ["---" if i < left else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in body]
    return lines


def _fence(text: str) -> list[str]:
    ticks = "````" if "```" in text else "```"
    return [ticks, text.rstrip("\n") or "(empty)", ticks]


def markdown_report(report: dict, chart_name: str | None) -> str:
    labels = [m["label"] for m in report["models"]]
    results = report["results"]
    md = [f"# Evaluation: {' vs '.join(labels)}", ""]
    md.append(f"{report['created']} on {report['device']} ({report['dtype']}); `{report['command']}`")
    md.append("")
    md += ["## Models", ""]
    md += _md_table(
        ["model", "path", "params", "stage", "step", "tokens seen", "context"],
        [
            [
                m["label"],
                f"`{m['path']}`",
                f"{m.get('params', 0) / 1e6:.1f}M",
                str(m.get("stage") or "-"),
                str(m.get("step") if m.get("step") is not None else "-"),
                f"{m['tokens_seen']:,.0f}" if m.get("tokens_seen") else "-",
                str(m["context"]),
            ]
            for m in report["models"]
        ],
        left=2,
    )
    md += ["", "## Summary", ""]
    if report["summary"]:
        md += _md_table(*table_cells(report["summary"], labels))
    else:
        md.append("No metric was computed (see the notes).")
    if chart_name:
        md += ["", f"![main metrics]({chart_name})"]
    md += ["", "Data: " + "; ".join(f"{k}: {v}" for k, v in report["data"].items()) if report["data"] else ""]
    md += [
        "",
        "Loss is nats per token (the end-of-document token included), ppl = exp(loss), bpb = bits per "
        "UTF-8 byte of text (comparable across tokenizers). MMLU: the answer letter with the highest "
        f"log-likelihood after the prompt; random is {RANDOM_MMLU:.0%}; ± is one standard error; "
        "P(A-D) is the probability mass the model puts on the four letters. pass@1 (HumanEval, MBPP) "
        "and GSM8K exact match: greedy generation as lm-evaluation-harness's tasks define it; "
        "[low, high] is the 95% Wilson interval over the problems.",
    ]
    shots_keys = _ordered_keys(results, labels, "mmlu")
    for shots in shots_keys:
        subjects: list[str] = []
        for lab in labels:
            for s in _get(results.get(lab, {}), ("mmlu", shots, "subjects")) or {}:
                if s not in subjects:
                    subjects.append(s)
        md += ["", f"## MMLU {shots} by subject", ""]
        body = []
        for s in subjects:
            cells = [s]
            for lab in labels:
                v = _get(results.get(lab, {}), ("mmlu", shots, "subjects", s))
                cells.append(f"{v['acc'] * 100:.1f}% (n={v['n']})" if v else "-")
            body.append(cells)
        md += _md_table(["subject", *labels], body)
        facts = []
        for lab in labels:
            r = _get(results.get(lab, {}), ("mmlu", shots))
            if r:
                facts.append(
                    f"{lab}: {r['n']} questions in {r['seconds']:.1f}s ({r.get('dtype', report['dtype'])}), "
                    f"{r['truncated']} longer than the context {r.get('context', '?')} and truncated "
                    f"from the left as lm-evaluation-harness does, predicted letters {r['pred_counts']}"
                )
        md += [""] + [f"- {f}" for f in facts]
    md += _generation_sections(report, labels)
    for section, title, prompts in (
        ("samples", "Samples (greedy)", report.get("sample_prompts", {})),
        ("code_samples", "HumanEval generations (greedy)", report.get("code_prompts", {})),
    ):
        names: list[str] = []
        for lab in labels:
            for n in results.get(lab, {}).get(section, {}) or {}:
                if n not in names:
                    names.append(n)
        if not names:
            continue
        md += ["", f"## {title}"]
        for n in names:
            md += ["", f"### {n}", "", "Prompt:", "", *_fence(prompts.get(n, ""))]
            for lab in labels:
                text = _get(results.get(lab, {}), (section, n))
                if text is not None:
                    md += ["", f"{lab}:", "", *_fence(text)]
    if report.get("notes"):
        md += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(md) + "\n"


def _generation_sections(report: dict, labels: list[str]) -> list[str]:
    """Facts of the generation metrics (pass@1, GSM8K) per model: speed, token budget, how the
    programs ended, and the lm-evaluation-harness tasks."""
    results = report["results"]
    md: list[str] = []
    rows = []
    for lab in labels:
        res = results.get(lab, {})
        parts = [(f"{n} pass@1", r) for n, r in (res.get("exec") or {}).items()]
        if res.get("gsm8k"):
            parts.append((f"GSM8K {res['gsm8k']['shots']}-shot", res["gsm8k"]))
        for name, r in parts:
            extra = r.get("status") and ", ".join(f"{k} {v}" for k, v in sorted(r["status"].items()))
            rows.append(
                [
                    name,
                    lab,
                    f"{r['n']}",
                    f"{r['seconds']:.1f} s ({r['questions_per_s']:.2f} q/s)"
                    + (f" + tests {r['exec_seconds']:.1f} s" if "exec_seconds" in r else ""),
                    f"{r['max_new_tokens']}" + (f" ({r['budget_note']})" if r.get("budget_note") else ""),
                    f"{r['truncated']}",
                    f"{r['hit_limit']}",
                    f"{r['empty']}",
                    extra or "-",
                ]
            )
    if rows:
        md += ["", "## Generation (pass@1, GSM8K)", ""]
        md += _md_table(
            [
                "task",
                "model",
                "n",
                "time",
                "max new tokens",
                "prompts cut",
                "hit the cap",
                "empty",
                "programs",
            ],
            rows,
            left=2,
        )
        sandbox = report.get("sandbox")
        if sandbox:
            md += [
                "",
                f"Programs ran in the sandbox ({sandbox['isolation']}; {sandbox['workers']} at a time, "
                f"{sandbox['timeout']:g} CPU seconds, {sandbox['memory_mb']} MB each). A model that "
                "scores 0 is shown as 0: a small model rarely writes a program that passes.",
            ]
    versions = {str((results.get(lab, {}).get("lm_eval") or {}).get("version")) for lab in labels} - {"None"}
    if versions:
        md += [
            "",
            f"lm-evaluation-harness {', '.join(sorted(versions))} ran the lm-eval rows on eval_llm's models.",
        ]
    return md


def chart(report: dict, path: Path) -> bool:
    """A PNG of the main metrics (bpb per source, MMLU accuracy, code loss); False if there are none."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = [m["label"] for m in report["models"]]
    results = report["results"]
    panels: list[tuple[str, list[str], Callable[[str, str], tuple[Any, Any]]]] = []
    sources = _ordered_keys(results, labels, "lm")
    if sources:
        panels.append(
            (
                "Validation bits per byte (lower is better)",
                sources,
                lambda lab, s: (_get(results[lab], ("lm", s, "bpb")), None),
            )
        )
    shots = _ordered_keys(results, labels, "mmlu")
    if shots:
        panels.append(
            (
                "MMLU accuracy (higher is better)",
                shots,
                lambda lab, k: (
                    _get(results[lab], ("mmlu", k, "acc")),
                    _get(results[lab], ("mmlu", k, "acc_se")),
                ),
            )
        )
    code = _ordered_keys(results, labels, "code")
    if code:
        panels.append(
            (
                "Code solution loss, nats/token (lower is better)",
                code,
                lambda lab, c: (_get(results[lab], ("code", c, "loss")), None),
            )
        )
    gen = [r["metric"] for r in report.get("summary", []) if "ci" in r]
    if gen:
        rows_by = {r["metric"]: r for r in report["summary"]}

        def gen_value(lab: str, m: str) -> tuple[float | None, tuple[float, float] | None]:
            row = rows_by[m]
            v, ci = row["values"].get(lab), (row.get("ci") or {}).get(lab)
            return v, (v - ci[0], ci[1] - v) if v is not None and ci else None

        panels.append(("pass@1 / exact match, 95% interval (higher is better)", gen, gen_value))
    if not panels:
        return False
    fig = Figure(figsize=(5.2 * len(panels), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    width = 0.8 / len(labels)
    for ax, (title, groups, get) in zip(axes, panels, strict=True):
        for i, lab in enumerate(labels):
            vals = [get(lab, g) for g in groups]
            xs = [g + (i - (len(labels) - 1) / 2) * width for g in range(len(groups))]
            ys = [v if v is not None else 0.0 for v, _ in vals]
            errs = [e if e is not None else 0.0 for _, e in vals]
            if any(isinstance(e, tuple) for e in errs):  # asymmetric (an interval)
                low = [e[0] if isinstance(e, tuple) else 0.0 for e in errs]
                high = [e[1] if isinstance(e, tuple) else 0.0 for e in errs]
                ax.bar(xs, ys, width, label=lab, yerr=[low, high], capsize=3)
                continue
            ax.bar(xs, ys, width, label=lab, yerr=errs if any(errs) else None, capsize=3)
        if title.startswith("MMLU"):
            ax.axhline(RANDOM_MMLU, color="gray", linestyle="--", linewidth=1, label="random (25%)")
            ax.set_ylim(0, max(0.5, ax.get_ylim()[1]))
        ax.set_xticks(range(len(groups)), groups, rotation=20 if len(groups) > 3 else 0)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    legend: dict[str, Any] = {}
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(name, handle)
    fig.legend(
        handles=list(legend.values()),
        labels=list(legend),
        loc="outside lower center",
        ncols=len(legend),
        fontsize=8,
    )
    fig.suptitle(" vs ".join(labels), fontsize=11)
    fig.savefig(path, dpi=110, format="png")
    return True


def write_report(report: dict, output: Path) -> dict[str, Path]:
    """``output`` (JSON) with ``.md`` and ``.png`` beside it; returns the paths written."""
    output = Path(output)
    paths = {"json": output, "md": output.with_suffix(".md"), "png": output.with_suffix(".png")}
    has_chart = False

    def png(tmp: Path) -> None:
        nonlocal has_chart
        has_chart = chart(report, tmp)

    atomic_write(paths["png"], png)
    if not has_chart:
        paths["png"].unlink(missing_ok=True)
        del paths["png"]
    atomic_write(
        paths["json"],
        lambda p: p.write_text(
            json.dumps(report, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
        ),
    )
    md = markdown_report(report, paths["png"].name if "png" in paths else None)
    atomic_write(paths["md"], lambda p: p.write_text(md, encoding="utf-8"))
    return paths
