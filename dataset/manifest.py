"""A prepared mixture's manifest, built, checked and summarised: the manifest itself
(:func:`build_manifest`), the plan record (per source and stage: planned, written, shares,
epochs), the checks that stop or warn when something came out smaller than asked, and the
one-screen summary prepare_dataset prints.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from dataset.mixture_config import MixtureConfig
from dataset.selection import Layout, Picked
from dataset.tokenizer import doc_targets, tokenizer_sha256
from model.errors import UserError

log = logging.getLogger("dataset.mixture")

EPOCHS_WARN = 4  # Muennighoff et al. 2023: returns from repeated data fall after ~4 epochs
MANIFEST_VERSION = 2  # 2: token stores beside the JSONL, streamed sources, spill-backed rows
BYTES_PER_TOKEN = 4  # rough English BPE average; exact counts come after tokenization


def plan_record(
    config: MixtureConfig, plan: list[list[int]], picks: list[Picked], layout: dict[str, Layout]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The manifest's ``plan`` and ``stages`` entries (see the module docstring)."""
    tokens_mode = picks[0].tokens is not None

    def amounts(p: Picked, ix: np.ndarray) -> tuple[int, int | None]:
        return len(ix), (int(p.tokens[ix].sum()) if p.tokens is not None else None)

    def units(p: Picked, mask: np.ndarray) -> int:
        return int(p.tokens[mask].sum()) if p.tokens is not None else int(mask.sum())

    def share(a: int, b: int) -> float:
        return round(a / b, 6) if b else 0.0

    def epochs(written: int, p: Picked) -> float | None:
        return round(written / p.available, 4) if p.available else None

    total_written = sum(units(p, np.ones(p.rows, dtype=bool)) for p in picks)
    sources_out = []
    for i, (p, source) in enumerate(zip(picks, config.sources, strict=True)):
        planned = sum(row[i] for row in plan)
        written = units(p, np.ones(p.rows, dtype=bool))
        sources_out.append(
            {
                "name": source.name,
                "share": share(planned, config.total),
                "planned": planned,
                "written": written,
                "written_share": share(written, total_written),
                "rows": p.rows,
                "unique_rows": p.record["unique_selected"],
                "unique_available": p.available,
                "available_exact": p.available_exact,
                "epochs": epochs(written, p),
                "max_repeats": source.max_repeats,
                "max_uses_per_row": p.record["max_uses_per_row"],
            }
        )
    stages_out = []
    stages_short = []
    for k, row in enumerate(plan if config.stages else []):
        st = config.stages[k]
        written_k = [units(p, p.stage == k) for p in picks]
        cells = []
        for i, (p, source) in enumerate(zip(picks, config.sources, strict=True)):
            train_rows, train_tokens = amounts(p, layout["train"][k][i])
            val_rows, val_tokens = amounts(p, layout["val"][k][i])
            cells.append(
                {
                    "name": source.name,
                    "share": share(row[i], sum(row)),
                    "planned": row[i],
                    "written": written_k[i],
                    "written_share": share(written_k[i], sum(written_k)),
                    "rows": train_rows + val_rows,
                    "train_rows": train_rows,
                    "val_rows": val_rows,
                    "train_tokens": train_tokens,
                    "val_tokens": val_tokens,
                    "epochs": epochs(written_k[i], p),
                }
            )

        def total(key: str, cells: list[dict[str, Any]] = cells) -> int | None:
            return None if cells[0][key] is None else sum(c[key] for c in cells)

        summary = {
            "name": st.name,
            "fraction": st.fraction,
            "train_rows": total("train_rows"),
            "val_rows": total("val_rows"),
            "train_tokens": total("train_tokens"),
            "val_tokens": total("val_tokens"),
        }
        stages_short.append(summary)
        stages_out.append(
            {
                **summary,
                "planned": sum(row),
                "written": sum(written_k),
                "rows": total("rows"),
                "sources": cells,
            }
        )
    rule = (
        "a source's documents are taken in its seeded order until its tokens reach its plan; the document "
        "that crosses the plan is kept whole (never cut): planned <= written < planned + that document. "
        "A document belongs to the stage in which it starts."
        if tokens_mode
        else "exact: planned rows per stage and source"
    )
    record: dict[str, Any] = {
        "unit": config.unit,
        "total": config.total,
        "written": total_written,
        "rule": rule,
        "sources": sources_out,
    }
    if config.stages:
        record["stages"] = stages_out
    return record, stages_short


def check_plan(config: MixtureConfig, plan: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """Say at once what came out smaller than asked, with the numbers; stop where going on would
    mislead (a stage without rows). Warnings go to the log as ``warning: ...`` lines."""
    unit = config.unit
    total_key = "total_tokens" if unit == "tokens" else "total_samples"
    for s in plan["sources"]:
        if s["epochs"] is not None and s["epochs"] > EPOCHS_WARN:
            log.warning(
                f"warning: source {s['name']!r} is used for {s['epochs']:.2f} epochs ({s['written']} of "
                f"{s['unique_available']} unique {unit}); returns from repeated data fall after ~{EPOCHS_WARN} "
                "epochs (Muennighoff et al. 2023)"
            )
    for st in plan.get("stages", []):
        if st["rows"] == 0:
            raise UserError(
                f"{config.path}: stage {st['name']!r} gets no rows: its plan of {st['planned']} {unit} is "
                f"smaller than the documents that run into it from the stage before; raise {total_key} or its fraction"
            )
        for c in st["sources"]:
            if c["planned"] > 0 and c["rows"] == 0:
                log.warning(
                    f"warning: stage {st['name']!r} has no rows of source {c['name']!r}: its plan of "
                    f"{c['planned']} {unit} went to the document that crossed into it from the stage before"
                )
        if config.val_ratio > 0 and st["val_rows"] == 0:
            log.warning(
                f"warning: stage {st['name']!r}: none of its {st['train_rows']} rows fell in validation "
                f"(val_ratio {config.val_ratio:g}); that stage has no validation rows"
            )
        for c in st["sources"] if config.val_ratio > 0 else ():
            if c["train_rows"] > 0 and c["val_rows"] == 0:
                log.warning(
                    f"warning: stage {st['name']!r}, source {c['name']!r}: {c['train_rows']} training rows and "
                    f"0 validation rows (val_ratio {config.val_ratio:g}: "
                    f"~{(c['train_rows'] + c['val_rows']) * config.val_ratio:.1f} expected), so nothing checks "
                    "what training on it in that stage does; raise val_ratio or its share in that stage"
                )
    if config.val_ratio > 0:
        for r in records:
            if r["val"] == 0:
                log.warning(
                    f"warning: source {r['name']!r}: none of its {r['selected']} rows fell in validation "
                    f"(val_ratio {config.val_ratio:g}: ~{r['selected'] * config.val_ratio:.1f} expected), "
                    "so its validation loss will be missing; raise val_ratio or its share"
                )


def build_manifest(
    config: MixtureConfig,
    plan: list[list[int]],
    picks: list[Picked],
    layout: dict[str, Layout],
    tok: Any,
    tok_ref: str | None,
    evalset: Any,
    eval_records: list[dict[str, Any]],
) -> dict[str, Any]:
    """The manifest of a prepared mixture, without its ``outputs`` and ``versions`` (added when the
    files are written): each source's record completed with its train/val rows, tokens (exact
    with a tokenizer, else estimated as UTF-8 bytes / BYTES_PER_TOKEN) and shares, the plan and
    stage records (:func:`plan_record`), checked against the config (:func:`check_plan`); the
    layout is described in :mod:`dataset.mixture`'s docstring. UserError from check_plan."""
    records = [p.record for p in picks]
    token_key = "est_tokens" if tok is None else "tokens"
    for i, (p, record) in enumerate(zip(picks, records, strict=True)):
        record["train"] = sum(len(stage[i]) for stage in layout["train"])
        record["val"] = sum(len(stage[i]) for stage in layout["val"])
        if p.counted is None:
            record["est_tokens"] = int(p.refs["tbytes"].sum()) // BYTES_PER_TOKEN  # UTF-8 bytes / 4
        else:
            record["tokens"] = int(p.counted.sum())
    all_tokens = sum(r[token_key] for r in records) or 1
    all_rows = sum(r["selected"] for r in records)
    for record in records:
        record["sample_share"] = round(record["selected"] / all_rows, 6)
        record["token_share"] = round(record[token_key] / all_tokens, 6)
    plan_entry, stages_record = plan_record(config, plan, picks, layout)
    check_plan(config, plan_entry, records)

    extended = config.mix_by == "tokens" or bool(config.stages)  # rows mode without stages: no plan
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "name": config.name,
        "config_path": str(config.path),
        "config_sha256": config.sha256,
        "seed": config.seed,
        "total_samples": config.total_samples,
        "val_ratio": config.val_ratio,
        "dedup": config.dedup,
    }
    if extended:
        manifest["mix_by"] = config.mix_by
        manifest["total_tokens"] = config.total_tokens
    if tok is not None:
        sha = tokenizer_sha256(tok)
        manifest["tokenizer"] = {
            "ref": tok_ref,
            "sha256": sha,
            "targets_per_document": f"n + {doc_targets(tok)}",
            "bos": tok.bos_token_id is not None,
        }
        manifest["tokenizer_sha256"] = sha
    manifest["decontamination"] = {
        "method": "word n-gram overlap: a row goes when the share of its n-grams found in the sets > threshold",
        "ngram": config.decontaminate_ngram,
        "threshold": config.decontaminate_threshold,
        "eval_ngrams": len(evalset) if evalset is not None else 0,
        "sets": eval_records,
    }
    if tok is None:
        manifest["token_estimate"] = f"utf-8 bytes / {BYTES_PER_TOKEN}"
    else:
        manifest["token_count"] = (
            f"exact: the targets each document gives in training (every token but its first): "
            f"n text tokens + {doc_targets(tok)} (EOS{'' if tok.bos_token_id is not None else ', less the first text token'})"
        )
    manifest["sources"] = records
    if extended:
        manifest["plan"] = plan_entry
        if config.stages:
            manifest["stages"] = stages_record
    return manifest


def format_summary(manifest: dict[str, Any]) -> str:
    """A one-screen table of a manifest: where every row came from and where it went."""
    head = (
        "source",
        "ratio",
        "read",
        "filtered",
        "decont",
        "dups",
        "kept",
        "selected",
        "repeat",
        "train",
        "val",
        "samples",
        "tokens",
    )
    rows = []
    for s in manifest["sources"]:
        rows.append(
            (
                s["name"],
                f"{s['ratio']:.3f}",
                f"{s['rows_read']:,}",
                f"{sum(s['dropped'].values()):,}",
                f"{s['decontaminated']:,}",
                f"{s['duplicates']:,}",
                f"{s['kept']:,}",
                f"{s['selected']:,}",
                f"{s['repeat_factor']:.2f}x",
                f"{s['train']:,}",
                f"{s['val']:,}",
                f"{100 * s['sample_share']:.1f}%",
                f"{100 * s['token_share']:.1f}%",
            )
        )
    lines = [f"mixture {manifest['name']}  (config sha256 {manifest['config_sha256'][:12]})"]
    lines += _table(head, rows)
    out = manifest.get("outputs", {})
    for split in ("train", "val"):
        if split in out:
            store = out[split].get("store")
            lines.append(
                f"{split:5s} {out[split]['rows']:>9,} rows  {out[split]['bytes'] / 1e6:8.1f} MB  {out[split]['file']}"
                + (f"  token store {store['folder']} ({store['tokens']:,} tokens)" if store else "")
            )
    drops = "; ".join(
        f"{s['name']}: " + ", ".join(f"{k} {v}" for k, v in s["dropped"].items() if v)
        for s in manifest["sources"]
        if any(s["dropped"].values())
    )
    if drops:
        lines.append(f"filtered by: {drops}")
    for s in manifest["sources"]:
        if s.get("streaming"):
            lines.append(
                f"streamed: {s['name']}: {s['rows_streamed']:,} rows taken from the stream for {s['rows_read']:,} "
                f"read (shuffle buffer {s['shuffle_buffer']:,})"
            )
    d = manifest["decontamination"]
    if d["sets"]:
        lines.append(
            f"decontamination: {len(d['sets'])} eval sets, {d['eval_ngrams']:,} {d['ngram']}-grams, threshold {d['threshold']}"
        )
    if "plan" in manifest:
        lines += _plan_lines(manifest)
    return "\n".join(lines)


def _table(head: tuple, rows: list[tuple], left: int = 1) -> list[str]:
    """Columns padded to their widest cell: the first ``left`` left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    return [
        "  ".join(
            c.rjust(w) if i >= left else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [head, *rows]
    ]


def _plan_lines(manifest: dict[str, Any]) -> list[str]:
    """The plan of a tokens-mode or staged manifest: per stage and source, planned vs written."""
    plan = manifest["plan"]
    unit = plan["unit"]
    title = f"plan: {plan['total']:,} {unit}, {plan['written']:,} written"
    if "tokenizer" in manifest:
        t = manifest["tokenizer"]
        title += f"; tokenizer sha256 {t['sha256'][:12]}, {t['targets_per_document']} targets per document of n tokens"
    if unit == "tokens":
        title += "; a document that crosses its source's plan is kept whole"
    head = ("stage", "source", "planned", "written", "share", "realized", "epochs", "rows", "train", "val")

    exact = {c["name"]: c["available_exact"] for c in plan["sources"]}

    def cells(stage: str, c: dict[str, Any], train: int, val: int) -> tuple:
        return (
            stage,
            c["name"],
            f"{c['planned']:,}",
            f"{c['written']:,}",
            f"{100 * c['share']:.1f}%",
            f"{100 * c['written_share']:.1f}%",
            "?" if c["epochs"] is None else f"{c['epochs']:.2f}" + ("" if exact[c["name"]] else "~"),
            f"{c['rows']:,}",
            f"{train:,}",
            f"{val:,}",
        )

    by_name = {s["name"]: s for s in manifest["sources"]}
    rows = []
    for st in plan.get("stages", []):
        rows += [cells(st["name"], c, c["train_rows"], c["val_rows"]) for c in st["sources"]]
    rows += [cells("all", c, by_name[c["name"]]["train"], by_name[c["name"]]["val"]) for c in plan["sources"]]
    staged = "stages" in plan
    table = _table(head, rows, left=2) if staged else _table(head[1:], [r[1:] for r in rows])
    notes = []
    if any(r[6].endswith("~") for r in rows):
        notes.append("epochs ~: extrapolated from the rows read (the source was not read to its end)")
    if any(r[6] == "?" for r in rows):
        notes.append("epochs ?: a streamed source not read to its end, of a dataset of unknown size")
    return [title, *table, *notes]
