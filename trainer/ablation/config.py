"""The study's YAML (validated; flags checked against the real parsers) and the derived mixtures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from model.errors import UserError, check_keys
from trainer.config import midtrain_parser, pretrain_parser

TOP_KEYS = {
    "name",
    "seeds",
    "data",
    "tokenizer",
    "pretrain",
    "start_from",
    "midtrain",
    "variants",
    "eval",
    "jobs",
}
DATA_KEYS = {"pretrain", "midtrain", "replay_source", "total_tokens", "mbpp", "mbpp_rows"}
EVAL_KEYS = {
    "mmlu",
    "mmlu_dev",
    "mmlu_limit",
    "shots",
    "humaneval",
    "mbpp",
    "gsm8k",
    "gsm8k_train",
    "generation_limit",
    "heldout_lm",
}
GENERATION_DATA = ("humaneval", "mbpp", "gsm8k", "gsm8k_train")  # eval_llm's --<key>_path
VARIANT_KEYS = {"name", "replay", "args", "label"}


@dataclass(frozen=True)
class Variant:
    name: str
    replay: float  # the replay source's share of the mixture's tokens; the other sources share the rest
    args: dict[str, Any] = field(default_factory=dict)  # extra train_midtrain.py flags
    label: str = ""


@dataclass(frozen=True)
class ExperimentConfig:
    path: Path
    name: str
    seeds: list[int]
    # start_from: every variant mid-trains this model (a transformers folder or a checkpoint, what
    # --from_weight takes) with its own tokenizer; no tokenizer is trained and nothing pretrained
    start_from: Path | None
    pretrain_data: Path | None  # mixture YAML prepared for pretraining (None with start_from)
    midtrain_data: Path  # the base mid-training mixture; variants change its replay ratio
    replay_source: str
    mbpp: Path | None
    mbpp_rows: int
    total_tokens: int  # each variant's mixture, in tokens of the study's tokenizer (mix_by: tokens)
    vocab_size: int
    pretrain_args: dict[str, Any]
    midtrain_args: dict[str, Any]
    variants: list[Variant]
    mmlu: Path | None
    mmlu_dev: Path | None
    mmlu_limit: int | None
    shots: int
    jobs: int
    # local files for the generation metrics (pass@1, GSM8K exact match): {key: path} over
    # GENERATION_DATA; none: the study evaluates no generation
    generation: dict[str, Path] = field(default_factory=dict)
    generation_limit: int | None = None  # the first N problems of each generation task
    # eval_llm also scores the held-out set, each document alone: loss and bits per byte per source
    heldout_lm: bool = False


def _flags_ok(args: Any, parser, where: str) -> dict[str, Any]:
    """Check an args mapping against a script's real flags, so a typo fails before hours of work."""
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise UserError(f"{where}: expected a mapping of flag -> value")
    known = {a.dest for a in parser._actions}
    unknown = sorted(k for k in args if k not in known)
    if unknown:
        raise UserError(f"{where}: unknown flag(s) {unknown} for {parser.prog}")
    return dict(args)


def load_experiment_config(path: str | Path) -> ExperimentConfig:
    """Load and validate an ablation YAML (yaml.safe_load; unknown keys are errors)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: experiment config not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    where = str(path)
    check_keys(raw, TOP_KEYS, file=where, required=("seeds", "data", "midtrain", "variants"))
    start_from = raw.get("start_from")
    if (start_from is None) == (raw.get("pretrain") is None):
        raise UserError(
            f"{where}: give exactly one of pretrain: (the study pretrains its own model) or start_from: "
            "(a model folder or checkpoint every variant mid-trains)"
        )
    base = path.parent

    def rel(p: str | None) -> Path | None:
        return None if p is None else (base / p).resolve()

    data = check_keys(
        raw["data"],
        DATA_KEYS,
        "data",
        file=where,
        required=("midtrain", "replay_source", "total_tokens", *(() if start_from else ("pretrain",))),
    )
    ev = check_keys(raw.get("eval") or {}, EVAL_KEYS, "eval", file=where)
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise UserError(f"{where}: seeds must be a non-empty list of integers")
    variants = []
    for i, v in enumerate(raw["variants"] or []):
        check_keys(v, VARIANT_KEYS, f"variants[{i}]", file=where, required=("name", "replay"))
        if not isinstance(v["replay"], (int, float)) or not 0 <= v["replay"] < 1:
            raise UserError(f"{where}: variants[{i}].replay must be in [0, 1), got {v['replay']!r}")
        args = _flags_ok(v.get("args"), midtrain_parser(), f"{where}: variants[{i}].args")
        variants.append(Variant(str(v["name"]), float(v["replay"]), args, str(v.get("label", v["name"]))))
    if not variants:
        raise UserError(f"{where}: variants is empty")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise UserError(f"{where}: variant names repeat: {names}")
    pretrain = check_keys(raw.get("pretrain") or {}, {"args"}, "pretrain", file=where)
    midtrain = check_keys(raw["midtrain"], {"args"}, "midtrain", file=where)
    cfg = ExperimentConfig(
        path=path,
        name=str(raw.get("name") or path.stem),
        seeds=seeds,
        start_from=(base / start_from).resolve() if start_from else None,
        pretrain_data=(base / data["pretrain"]).resolve() if data.get("pretrain") else None,
        midtrain_data=(base / data["midtrain"]).resolve(),
        replay_source=str(data["replay_source"]),
        mbpp=rel(data.get("mbpp")),
        mbpp_rows=int(data.get("mbpp_rows", 100)),
        total_tokens=_positive(data.get("total_tokens"), f"{where}: data.total_tokens"),
        vocab_size=int(
            check_keys(raw.get("tokenizer") or {}, {"vocab_size"}, "tokenizer", file=where).get(
                "vocab_size", 4096
            )
        ),
        pretrain_args=_flags_ok(pretrain.get("args"), pretrain_parser(), f"{where}: pretrain.args"),
        midtrain_args=_flags_ok(midtrain.get("args"), midtrain_parser(), f"{where}: midtrain.args"),
        variants=variants,
        mmlu=rel(ev.get("mmlu")),
        mmlu_dev=rel(ev.get("mmlu_dev")),
        mmlu_limit=ev.get("mmlu_limit"),
        shots=int(ev.get("shots", 0)),
        generation={k: p for k in GENERATION_DATA if (p := rel(ev.get(k))) is not None},
        generation_limit=ev.get("generation_limit"),
        heldout_lm=bool(ev.get("heldout_lm", False)),
        jobs=int(raw.get("jobs", 1)),
    )
    from dataset.mixture import load_mixture_config

    base_mix = load_mixture_config(cfg.midtrain_data)
    if cfg.pretrain_data is not None:
        load_mixture_config(cfg.pretrain_data)
    if cfg.replay_source not in {s.name for s in base_mix.sources}:
        raise UserError(
            f"{where}: data.replay_source {cfg.replay_source!r} is not a source of {cfg.midtrain_data}"
        )
    if cfg.jobs < 1:
        raise UserError(f"{where}: jobs must be >= 1")
    for key, file in (("mmlu", cfg.mmlu), ("mmlu_dev", cfg.mmlu_dev), *cfg.generation.items()):
        if file is not None and not file.exists():  # found now, not after hours of training
            raise UserError(
                f"{where}: eval.{key} {file} not found; fix the path (relative to the config's folder)"
            )
    return cfg


def flags(args: dict[str, Any]) -> list[str]:
    """{"use_compile": True, "max_steps": 40} -> ["--max_steps", "40", "--use_compile"]: sorted by
    name, so that the same flags make the same command line (a rerun's reuse compares them)."""
    out: list[str] = []
    for k, v in sorted(args.items()):
        if v is True:
            out.append(f"--{k}")
        elif v is False or v is None:
            continue
        elif isinstance(v, list):
            for item in v:
                out += [f"--{k}", str(item)]
        else:
            out += [f"--{k}", str(v)]
    return out


def _positive(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{where}: expected a positive integer (tokens), got {value!r}")
    return value


def variant_mixture(
    base_path: Path, replay_source: str, replay: float, name: str, tokenizer: Path, total_tokens: int
) -> dict:
    """The base mixture as a token mixture (``mix_by: tokens``, ``total_tokens`` of ``tokenizer``)
    with the replay source at ``replay`` of the tokens; the other sources keep their proportions
    among themselves. replay 0 drops the source. Paths become absolute so the derived YAML can
    live anywhere. The study's shares are therefore shares of the tokens trained on, counted by
    prepare_dataset with the tokenizer the models train with.
    """
    raw = yaml.safe_load(base_path.read_text(encoding="utf-8"))
    base = base_path.parent

    def absolute(ref: dict) -> dict:
        ref = dict(ref)
        if "data_files" in ref:
            files = ref["data_files"] if isinstance(ref["data_files"], list) else [ref["data_files"]]
            files = [f if Path(f).is_absolute() else str((base / f).resolve()) for f in files]
            ref["data_files"] = files if len(files) > 1 else files[0]
        return ref

    sources = [absolute(s) for s in raw["sources"]]
    rest = sum(s["ratio"] for s in sources if s["name"] != replay_source)
    out = []
    for s in sources:
        if s["name"] == replay_source:
            if replay > 0:
                out.append({**s, "ratio": replay})
        else:
            out.append({**s, "ratio": s["ratio"] / rest * (1 - replay)})
    # exact sum of 1: give the rounding remainder to the last source
    for s in out:
        s["ratio"] = round(s["ratio"], 6)
    out[-1]["ratio"] = round(1 - sum(s["ratio"] for s in out[:-1]), 6)
    rest_of_raw = {
        k: v for k, v in raw.items() if k not in ("total_samples", "mix_by", "total_tokens", "tokenizer")
    }
    return {
        **rest_of_raw,
        "name": name,
        "mix_by": "tokens",
        "total_tokens": total_tokens,
        "tokenizer": str(Path(tokenizer).resolve()),
        "sources": out,
        "decontaminate": [absolute(d) for d in raw.get("decontaminate") or []],
    }
