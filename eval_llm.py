"""Evaluate one or more checkpoints side by side: language modelling per source, MMLU, code (loss and
pass@1 by execution), GSM8K, any lm-evaluation-harness task, samples.

    python eval_llm.py --weight pretrain_512 --weight midtrain_512 \\
        --data_config config/data/midtrain/phase1/default.yaml
    python eval_llm.py --weight midtrain_512 --mmlu_path ../shared/data/mmlu --limit 500
    python eval_llm.py --weight midtrain_512 --hf_path out/hf/midtrain_512 --val_path FILE.jsonl
    python eval_llm.py --code_selftest --humaneval_path ../shared/data/humaneval/HumanEval.jsonl.gz

Models, repeatable, in command-line order, each rebuilt from its own files alone:
  --weight V    what the trainers' --from_weight takes (trainer/weights.py): a .pth path, a
                transformers folder (Llama / Qwen2 / Qwen3: converted, proven by the parity check,
                scored by our scorer), a checkpoint stem (midtrain_512) or prefix (midtrain) in
                --save_dir, or a Hub id org/name[@revision] (not with --no_hub)
  --hf_path DIR a transformers folder scored through transformers' own forward (any decoder-only
                architecture; slower)

Metrics (each on by default when its data is there; --no_lm / --no_mmlu / --no_code / --no_exec /
--no_gsm8k / --no_samples):
  language modelling  loss, perplexity, bits per byte per `source` of a val split: --val_path FILE.jsonl
                      or the prepared val split of --data_config ({prepared_dir}/{name}_val.jsonl)
  MMLU                accuracy from the answer letters' log-likelihood, --shots 0,5; cais/mmlu from the
                      Hub, or --mmlu_path: a folder with test.jsonl (+ dev.jsonl for shots) or a test
                      file (+ --mmlu_dev FILE); rows {question, choices: [4], answer: 0-3 or A-D, subject}.
                      Prompt, tokens, truncation and scoring are lm-evaluation-harness's `mmlu` task
                      (--model hf): the same model gives the same per-question answers.
  code                loss of the HumanEval / MBPP canonical solutions given their prompts, greedy
                      HumanEval samples, and pass@1: greedy completions as lm-evaluation-harness's
                      `humaneval` (0-shot) and `mbpp` (3-shot, the 500 test tasks) tasks prompt, stop
                      and assemble them, run with their tests in a sandbox (trainer/evaluation/
                      sandbox.py; --exec_timeout CPU seconds each, --exec_workers at a time); from the
                      Hub, or --humaneval_path / --mbpp_path files. --code_selftest runs the datasets'
                      own solutions through the same sandbox instead of evaluating models.
  GSM8K               exact match (strict "#### N" and flexible-extract) of greedy answers to
                      lm-evaluation-harness's `gsm8k` prompt (--gsm8k_shots 5 examples drawn by its
                      sampler); openai/gsm8k from the Hub, or --gsm8k_path (+ --gsm8k_train_path,
                      default train.jsonl beside it); rows {question, answer}
  lm-eval tasks       --lm_eval_tasks a,b: any lm-evaluation-harness task, run by the harness on this
                      model (pip install -e ".[eval]"); --lm_eval_include DIR for local task YAMLs
  samples             greedy generations for fixed story / code / instruction / question prompts
pass@1 and exact match come with 95% Wilson intervals. Generation follows the harness (context cut to
the model's context minus the task's token cap; a cap that leaves no room gets half the context);
--max_new_tokens caps every generation (the report says so). A Hub dataset that cannot be reached is
skipped with one line naming it; --no_hub never tries, and refuses a --weight that could only be a
Hub model. Flags, --device and local data files are checked before any model loads.

Precision: --dtype float32 by default. bf16 scoring flips near-tie MMLU answers of small models
(55 of 14,042 on a fresh 4.6M model; scripts/dev/bench_mmlu_harness.py), so it no longer gives the
harness's answers; in float32 all 14,042 agree.

Output: a table on the terminal (a delta column for two models), and --output FILE.json (default
out/eval/<names>.json) with FILE.md and FILE.png beside it.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import re
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from model.errors import UserError
from trainer import runtime
from trainer.cli import add_runtime_flags, add_save_dir_flag, run, setup_logging
from trainer.evaluation.codeexec import selftest
from trainer.evaluation.data import (
    DataUnavailable,
    Hub,
    limit_per_source,
    load_code,
    load_mmlu,
    read_val_docs,
    spread,
    val_path_from_config,
)
from trainer.evaluation.gsm8k import load_or_note as load_gsm8k_or_note
from trainer.evaluation.harness import task_manager
from trainer.evaluation.models import ModelSpec, load_eval_model, unique_labels
from trainer.evaluation.report import summary_rows, terminal_table, write_report
from trainer.evaluation.sandbox import Limits, Sandbox, SandboxUnavailable
from trainer.evaluation.suite import SAMPLE_PROMPTS, EvalData, evaluate_all
from trainer.paths import repo_path

log = logging.getLogger("eval_llm")


class _AddModel(argparse.Action):
    """--weight and --hf_path append to one list, so the table keeps the command-line order."""

    def __call__(self, parser, namespace, value, option_string=None):
        models = getattr(namespace, "models", None) or []
        models.append(ModelSpec("weight" if option_string == "--weight" else "hf", value))
        namespace.models = models


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("models")
    g.add_argument(
        "--weight",
        action=_AddModel,
        dest="models",
        metavar="NAME",
        help="a .pth path, a transformers folder, a checkpoint name in --save_dir or a Hub id org/name[@rev] (repeatable)",
    )
    g.add_argument(
        "--hf_path",
        action=_AddModel,
        dest="models",
        metavar="DIR",
        help="a transformers model folder (repeatable)",
    )
    add_save_dir_flag(g, help="where --weight names are looked up (default: out/)")
    g.add_argument(
        "--hidden_size", type=int, default=None, help="pick NAME_<hidden_size>.pth when several sizes exist"
    )
    g = p.add_argument_group("language modelling")
    g.add_argument("--val_path", default=None, help='validation JSONL, rows {"text", "source"}')
    g.add_argument("--data_config", default=None, help="a mixture YAML: evaluate its prepared val split")
    g.add_argument(
        "--prepared_dir",
        default=str(repo_path("dataset")),
        help="where --data_config was prepared (default: dataset/)",
    )
    g.add_argument("--no_lm", action="store_true")
    g = p.add_argument_group("MMLU")
    g.add_argument(
        "--mmlu_path",
        default=None,
        help="folder with test.jsonl (+ dev.jsonl), or a test file (default: cais/mmlu)",
    )
    g.add_argument(
        "--mmlu_dev", default=None, help="dev file with the k-shot examples (when --mmlu_path is a file)"
    )
    g.add_argument(
        "--shots",
        default=None,
        help="comma-separated shot counts (default 0,5; just 0 when the MMLU data has no dev split)",
    )
    g.add_argument("--no_mmlu", action="store_true")
    g = p.add_argument_group("code")
    g.add_argument(
        "--humaneval_path", default=None, help="HumanEval .jsonl(.gz) (default: openai/openai_humaneval)"
    )
    g.add_argument(
        "--mbpp_path",
        default=None,
        help="MBPP .jsonl; a full file is cut to the test tasks 11-510 (default: the Hub)",
    )
    g.add_argument(
        "--code_samples", type=int, default=3, help="greedy generations for the first N HumanEval prompts"
    )
    g.add_argument("--no_code", action="store_true", help="no code metric at all (loss, pass@1, samples)")
    g.add_argument("--no_exec", action="store_true", help="no pass@1 (the solution loss stays)")
    g.add_argument(
        "--code_selftest",
        action="store_true",
        help="run the datasets' own solutions through the sandbox instead of evaluating models",
    )
    g.add_argument(
        "--exec_timeout",
        type=float,
        default=3.0,
        help="CPU seconds per program (default 3, lm-evaluation-harness's code_eval)",
    )
    g.add_argument("--exec_workers", type=int, default=None, help="programs run at once (default: CPUs)")
    g = p.add_argument_group("GSM8K")
    g.add_argument(
        "--gsm8k_path",
        default=None,
        help="GSM8K test .jsonl, rows {question, answer} (default: openai/gsm8k)",
    )
    g.add_argument(
        "--gsm8k_train_path",
        default=None,
        help="the k-shot examples' file (default: train.jsonl beside --gsm8k_path)",
    )
    g.add_argument("--gsm8k_shots", type=int, default=5, help="examples per prompt (default 5, the task's)")
    g.add_argument("--no_gsm8k", action="store_true")
    g = p.add_argument_group("lm-evaluation-harness tasks (pip install -e '.[eval]')")
    g.add_argument(
        "--lm_eval_tasks", default=None, help="comma-separated task names, e.g. hellaswag,arc_easy"
    )
    g.add_argument("--lm_eval_include", default=None, help="a folder of local task YAMLs")
    g = p.add_argument_group("samples")
    g.add_argument(
        "--max_new_tokens",
        type=int,
        default=None,
        help="cap on generated tokens everywhere (default: each task's own; 64 for the samples)",
    )
    g.add_argument("--no_samples", action="store_true")
    g = p.add_argument_group("runtime")
    g.add_argument(
        "--no_hub",
        action="store_true",
        help="never download: metrics without local data are skipped, a Hub --weight is refused",
    )
    g.add_argument(
        "--limit",
        type=int,
        default=None,
        help="quick run: N val docs per source, N MMLU questions (spread over subjects), N problems per code set",
    )
    g.add_argument(
        "--max_len",
        type=int,
        default=None,
        help="context for scoring (default: the checkpoint's training length, else 512; for a model "
        "imported from transformers and its mid-trained checkpoints, its max_position_embeddings)",
    )
    add_runtime_flags(g, batch_size=16, batch_help="sequences per forward pass", dtype="float32")
    g.add_argument(
        "--output", default=None, help="report JSON (default: out/eval/<names>.json); .md and .png beside it"
    )
    args = p.parse_args(argv)
    args.command = "python eval_llm.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    return args


def check_args(args: argparse.Namespace) -> None:
    if args.code_selftest:
        if args.models:
            raise UserError(
                "--code_selftest runs the datasets' own solutions, no model: drop --weight / --hf_path"
            )
        if args.no_code or args.no_exec:
            raise UserError("--code_selftest runs code: drop --no_code / --no_exec")
    elif not args.models:
        raise UserError("name at least one model: --weight NAME (e.g. pretrain_512) or --hf_path DIR")
    if args.batch_size <= 0:
        raise UserError(f"--batch_size must be positive, got {args.batch_size}")
    for name in ("limit", "max_len", "max_new_tokens", "exec_workers"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise UserError(f"--{name} must be positive, got {getattr(args, name)}")
    if not args.exec_timeout > 0:
        raise UserError(f"--exec_timeout must be positive, got {args.exec_timeout}")
    for name in ("code_samples", "gsm8k_shots"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name} must be >= 0, got {getattr(args, name)}")
    args.lm_eval_list = [t.strip() for t in (args.lm_eval_tasks or "").split(",") if t.strip()]
    if args.lm_eval_tasks is not None and not args.lm_eval_list:
        raise UserError(
            f"--lm_eval_tasks {args.lm_eval_tasks!r}: expected task names like hellaswag,arc_easy"
        )
    if args.lm_eval_include and not Path(args.lm_eval_include).is_dir():
        raise UserError(f"--lm_eval_include {args.lm_eval_include}: not a folder (task YAMLs)")
    if args.lm_eval_include and not args.lm_eval_list:
        raise UserError("--lm_eval_include without --lm_eval_tasks: name the tasks to run")
    try:
        args.shot_list = tuple(dict.fromkeys(int(s) for s in (args.shots or "0,5").split(",") if s.strip()))
    except ValueError:
        raise UserError(f"--shots {args.shots!r}: expected comma-separated integers like 0,5") from None
    if not args.shot_list or min(args.shot_list) < 0:
        raise UserError(f"--shots {args.shots!r}: expected non-negative integers like 0,5")
    if args.val_path and args.data_config:
        raise UserError("pass --val_path or --data_config, not both")


def load_data(args: argparse.Namespace, phase: str = "all", data: EvalData | None = None) -> EvalData:
    """The evaluation data. ``phase`` "local" reads what comes from local files (the val split and
    every metric given a path: a bad file is refused before any model loads), "hub" what comes
    from the Hub (after the models: a slow or unreachable Hub is a note, not a refusal), "all"
    both. The phases fill the same ``data``."""
    local, remote = phase in ("all", "local"), phase in ("all", "hub")

    def wanted(path: str | None) -> bool:
        return local if path else remote

    if data is None:
        data = EvalData(
            shots=args.shot_list,
            code_samples=args.code_samples,
            samples=not args.no_samples,
            max_new_tokens=args.max_new_tokens,
        )
    if args.max_new_tokens and local:
        data.notes.append(
            f"--max_new_tokens {args.max_new_tokens} caps every generation (tasks that allow more "
            "are not scored as lm-evaluation-harness scores them)"
        )
    hub = Hub(enabled=not args.no_hub)
    if not args.no_lm and local:
        path = args.val_path or (
            val_path_from_config(args.data_config, args.prepared_dir) if args.data_config else None
        )
        if path:
            data.val_docs, data.val_where = limit_per_source(read_val_docs(path), args.limit), str(path)
        else:
            data.notes.append(
                "language modelling skipped: pass --val_path FILE.jsonl or --data_config CONFIG.yaml"
            )
    if not args.no_mmlu and wanted(args.mmlu_path):
        try:
            need_dev = max(args.shot_list) > 0
            test, dev, where = load_mmlu(
                args.mmlu_path, args.mmlu_dev, need_dev, hub, require_dev=args.shots is not None
            )
            data.mmlu_test, data.mmlu_dev, data.mmlu_where = spread(test, args.limit), dev, where
            if need_dev and dev is None:
                data.shots = (0,)
                data.notes.append(f"MMLU k-shot skipped: no dev split beside {where} (pass --mmlu_dev FILE)")
        except DataUnavailable as e:
            data.notes.append(str(e))
    sets = [n for n, p in (("humaneval", args.humaneval_path), ("mbpp", args.mbpp_path)) if wanted(p)]
    if not args.no_code and sets:
        code = load_code(args.humaneval_path, args.mbpp_path, hub, execute=not args.no_exec, only=sets)
        data.code.update({k: v[: args.limit] if args.limit else v for k, v in code.problems.items()})
        data.code_where.update(code.where)
        data.notes += code.notes
        for name, task in code.tasks.items():
            data.exec_tasks[name] = replace(
                task, items=task.items[: args.limit] if args.limit else task.items
            )
    if not args.no_gsm8k and wanted(args.gsm8k_path):
        got = load_gsm8k_or_note(args.gsm8k_path, args.gsm8k_train_path, args.gsm8k_shots, hub, data.notes)
        if got:
            test, data.gsm8k_train, data.gsm8k_where = got
            data.gsm8k_test = test[: args.limit] if args.limit else test
            data.gsm8k_shots = args.gsm8k_shots
    if args.lm_eval_list and local:
        task_manager(tuple(args.lm_eval_list), args.lm_eval_include)  # unknown names: refused now
        data.lm_eval_tasks, data.lm_eval_include, data.lm_eval_limit = (
            args.lm_eval_list,
            args.lm_eval_include,
            args.limit,
        )
    if remote and data.exec_tasks and data.sandbox is None:
        data.sandbox = make_sandbox(args, data.notes)
        if data.sandbox is None:
            data.exec_tasks = {}
    return data


def make_sandbox(args: argparse.Namespace, notes: list[str]) -> Sandbox | None:
    """The sandbox pass@1 runs programs in, or None with a note when this machine cannot run it."""
    try:
        return Sandbox(Limits(timeout=args.exec_timeout), workers=args.exec_workers)
    except SandboxUnavailable as e:
        notes.append(f"pass@1 skipped: {e}")
        return None


def code_selftest(args: argparse.Namespace) -> None:
    """--code_selftest: each set's canonical solutions through the sandbox, one line per set."""
    code = load_code(args.humaneval_path, args.mbpp_path, Hub(enabled=not args.no_hub), execute=True)
    for note in code.notes:
        log.info(f"note: {note}")
    if not code.tasks:
        raise UserError("--code_selftest: no code set to run; pass --humaneval_path and/or --mbpp_path")
    try:
        sandbox = Sandbox(Limits(timeout=args.exec_timeout), workers=args.exec_workers)
    except SandboxUnavailable as e:
        raise UserError(f"--code_selftest: {e}") from None
    log.info(f"sandbox: {sandbox.isolation}; {sandbox.workers} at a time")
    for name, task in code.tasks.items():
        if args.limit:
            task = replace(task, items=task.items[: args.limit])
        r = selftest(task, sandbox)
        line = f"{name}: {r['passed']}/{r['n']} canonical solutions pass ({r['seconds']:.1f} s)"
        if r["failed"]:
            line += "; failing task ids: " + ", ".join(f"{t} ({st}: {why})" for t, st, why in r["failed"])
        print(line, flush=True)


def default_output(labels: list[str]) -> Path:
    name = "_vs_".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", lab) for lab in labels)
    return repo_path("out", "eval", f"{name[:150]}.json")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_args(args)
    setup_logging()
    if args.code_selftest:
        code_selftest(args)
        return
    # what can be refused without loading a model is refused first: flags, device, local data files
    device = runtime.resolve_device(args.device)
    dtype = runtime.resolve_dtype(args.dtype, device)
    log.info(f"Precision: {runtime.precision_note(args.dtype, dtype, device)}")
    data = load_data(args, "local")
    models = [
        load_eval_model(s, args.save_dir, args.hidden_size, device, dtype, args.max_len, hub=not args.no_hub)
        for s in args.models
    ]
    unique_labels(models)
    load_data(args, "hub", data)
    for note in data.notes:
        log.info(f"note: {note}")
    results = evaluate_all(models, data, args.batch_size)

    labels = [m.label for m in models]
    report = {
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": args.command,
        "device": str(device),
        "dtype": runtime.dtype_name(dtype),  # as resolved (--dtype auto)
        "batch_size": args.batch_size,
        "limit": args.limit,
        "models": [
            {"label": m.label, "path": m.path, "kind": m.kind, "context": m.max_len, **m.info} for m in models
        ],
        "data": {
            k: v
            for k, v in {
                "val": data.val_where,
                "mmlu": data.mmlu_where,
                **data.code_where,
                "gsm8k": data.gsm8k_where if data.gsm8k_test else None,
            }.items()
            if v is not None
        },
        "sandbox": data.sandbox.describe() if data.sandbox else None,
        "summary": summary_rows(results, labels),
        "results": results,
        "sample_prompts": dict(SAMPLE_PROMPTS) if data.samples else {},
        "code_prompts": {p.task_id: p.prompt for p in data.code.get("humaneval", [])[: data.code_samples]},
        "notes": data.notes,
    }
    print()
    print(
        terminal_table(report["summary"], labels)
        if report["summary"]
        else "No metric computed (see the notes above)."
    )
    for name, _ in SAMPLE_PROMPTS if data.samples else ():
        print(f"\n--- sample: {name}")
        for m in models:
            text = results[m.label]["samples"][name].strip().replace("\n", "\n    ")
            print(f"[{m.label}] {text}")
    paths = write_report(report, Path(args.output) if args.output else default_output(labels))
    print("\nreport: " + " | ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    run(main)
