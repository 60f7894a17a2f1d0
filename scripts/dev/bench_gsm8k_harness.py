"""Generation agreement with lm-evaluation-harness: eval_llm's GSM8K (and HumanEval / MBPP) answers
vs the harness's own tasks, per question.

    python scripts/dev/bench_gsm8k_harness.py --weight out/midtrain_512.pth [--tasks gsm8k,humaneval,mbpp]
        [--limit N] [--batch_size 8] [--harness_batch_size 8] [--output FILE.json]

The checkpoint is exported with scripts/export_hf.py (a real process) and each task is run three
ways on the same questions (the first ``--limit`` of the real files in ../shared/data), greedy,
in float32:

- eval_llm's generation (trainer.evaluation.generation) on the checkpoint (``--weight``: our
  model, batched through its KV cache) and on the export (``--hf_path``: transformers' generate);
- lm-evaluation-harness itself, ``--model hf`` on the export, its own task YAML with only the data
  pointed at local files: ``gsm8k`` is included unchanged (its prompt, 5-shot sampler, stop strings,
  filters and exact_match); ``humaneval`` and ``mbpp`` are copied from the installed YAMLs with
  their code-execution metric and filter left out (the harness loads them from the Hub, and eval_llm
  runs programs in its own sandbox), so what is compared is the prompt and the completion.

Printed per task and setting: the prompts equal to the harness's, the generations equal to the
harness's, for GSM8K the strict / flexible predictions and exact-match verdicts equal, the
accuracies, and the time. Where the harness would refuse a model because a task's token cap leaves
no room for a prompt (HumanEval's 1024 tokens on a 512-token model), it is given eval_llm's budget
(half the context) as max_gen_toks.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from model.errors import UserError
from trainer import weights
from trainer.cli import run, setup_logging
from trainer.evaluation.codetasks import CodeTask
from trainer.evaluation.data import Hub, load_code
from trainer.evaluation.generation import generate_until, token_budget
from trainer.evaluation.gsm8k import MAX_GEN, UNTIL, gsm8k_prompts, load_gsm8k, score
from trainer.evaluation.harness import export_folder
from trainer.evaluation.models import ModelSpec, load_eval_model
from trainer.paths import REPO_ROOT, shared_data

log = logging.getLogger("bench_gsm8k_harness")
SHARED = shared_data()


class _Tagged(str):
    """A ``!function`` value of a harness YAML, kept as its text."""


def installed_task(name: str) -> dict[str, Any]:
    """The installed harness's task YAML ``tasks/<name>/<name>.yaml`` as a dict (``!function``
    values as text)."""
    import lm_eval
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def tagged(loader: yaml.SafeLoader, node: yaml.Node) -> _Tagged:
        assert isinstance(node, yaml.ScalarNode)
        return _Tagged(loader.construct_scalar(node))

    Loader.add_constructor("!function", tagged)
    path = Path(lm_eval.__file__).parent / "tasks" / name / f"{name}.yaml"
    # a SafeLoader that also reads the harness's "!function" tags as text: nothing is constructed
    return Loader(path.read_text()).get_single_data()


def mbpp_fewshot_samples() -> list[dict]:
    """The mbpp task's ``list_fewshot_samples()``, read from its utils.py without importing it
    (the module loads the code_eval metric from the Hub at import)."""
    import lm_eval

    tree = ast.parse((Path(lm_eval.__file__).parent / "tasks" / "mbpp" / "utils.py").read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "list_fewshot_samples")
    ret = next(n for n in ast.walk(fn) if isinstance(n, ast.Return) and n.value is not None)
    assert isinstance(ret, ast.Return) and ret.value is not None
    return ast.literal_eval(ret.value)


def task_yaml(name: str, folder: Path, data_files: dict[str, str], max_gen: int | None) -> str:
    """Write the harness task ``bench_<name>`` over local ``data_files`` into ``folder``."""
    import lm_eval
    import yaml

    local = {"dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": data_files}}
    if name == "gsm8k":
        original = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
        cfg: dict[str, Any] = {"include": str(original), "task": "bench_gsm8k", "tag": [], **local}
    else:
        cfg = {k: v for k, v in installed_task(name).items() if k not in ("metric_list", "filter_list")}
        cfg.update(local, task=f"bench_{name}", unsafe_code=False)
        cfg["metric_list"] = [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]
        if name == "mbpp":
            cfg["fewshot_config"] = {"sampler": "first_n", "samples": mbpp_fewshot_samples()}
    if max_gen is not None:  # the model's context is too short for the task's cap: eval_llm's budget
        cfg["generation_kwargs"] = {**installed_task(name)["generation_kwargs"], "max_gen_toks": max_gen}
    plain = {k: (str(v) if isinstance(v, _Tagged) else v) for k, v in cfg.items()}
    (folder / f"bench_{name}.yaml").write_text(yaml.safe_dump(plain, sort_keys=False))
    return f"bench_{name}"


def harness_run(
    folder: Path, tasks_dir: Path, task: str, limit: int, batch_size: int
) -> tuple[list[dict], float]:
    """[{"prompt", "text", "filtered": {filter: prediction}}] per document (in document order) from
    lm-evaluation-harness's ``--model hf`` on ``folder``, and the seconds it took."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(folder), "dtype": "float32"},
        tasks=[task],
        limit=limit,
        batch_size=batch_size,
        device="cpu",
        log_samples=True,
        task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
    )
    seconds = time.perf_counter() - t0
    docs: dict[int, dict] = {}
    for s in out["samples"][task]:
        args = s["arguments"]
        prompt = args["gen_args_0"]["arg_0"] if isinstance(args, dict) else args[0][0]
        d = docs.setdefault(
            s["doc_id"], {"prompt": prompt, "text": s["resps"][0][0], "filtered": {}, "em": {}}
        )
        d["filtered"][s.get("filter", "none")] = s["filtered_resps"][0]
        d["em"][s.get("filter", "none")] = s.get("exact_match")
    return [docs[i] for i in sorted(docs)], seconds


def our_items(name: str, limit: int, gsm8k_dir: Path, humaneval: Path, mbpp: Path):
    """(prompts, until, task max tokens, local data files for the harness, GSM8K questions or None)."""
    if name == "gsm8k":
        test, train, _ = load_gsm8k(str(gsm8k_dir / "test.jsonl"), None, 5, Hub(enabled=False))
        files = {"train": str(gsm8k_dir / "train.jsonl"), "test": str(gsm8k_dir / "test.jsonl")}
        return gsm8k_prompts(test[:limit], train, 5), UNTIL, MAX_GEN, files, test[:limit]
    code = load_code(str(humaneval), str(mbpp), Hub(enabled=False), execute=True)
    task: CodeTask = code.tasks[name]
    return [t.prompt for t in task.items[:limit]], task.until, task.max_gen, None, None


def compare(
    name: str, ours: dict[str, list[str]], harness: list[dict], prompts: list[str], questions
) -> list[dict]:
    rows = []
    for setting, texts in ours.items():
        row = {
            "task": name,
            "setting": setting,
            "n": len(texts),
            "same_prompt": sum(p == h["prompt"] for p, h in zip(prompts, harness, strict=True)),
            "same_text": sum(t == h["text"] for t, h in zip(texts, harness, strict=True)),
        }
        if questions is not None:
            mine = score(texts, questions)
            for flt, key in (("strict", "strict-match"), ("flexible", "flexible-extract")):
                theirs = [h["filtered"][key] for h in harness]
                row[f"same_{flt}"] = sum(
                    a == b for a, b in zip(mine["predictions"][flt], theirs, strict=True)
                )
                verdicts = [bool(h["em"][key]) for h in harness]
                row[f"same_verdict_{flt}"] = sum(
                    a == b for a, b in zip(mine["correct"][flt], verdicts, strict=True)
                )
                row[f"em_{flt}"] = mine[flt]["value"]
                row[f"harness_em_{flt}"] = sum(verdicts) / len(verdicts)
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weight", required=True, help="a checkpoint: prefix, stem or .pth path")
    p.add_argument("--save_dir", default=str(REPO_ROOT / "out"), help="where --weight names are looked up")
    p.add_argument("--tasks", default="gsm8k", help="comma-separated: gsm8k, humaneval, mbpp")
    p.add_argument("--limit", type=int, default=50, help="first N questions of each task (default 50)")
    p.add_argument("--batch_size", type=int, default=8, help="eval_llm's generation batch")
    p.add_argument("--harness_batch_size", type=int, default=8)
    p.add_argument("--gsm8k_dir", default=str(SHARED / "gsm8k"))
    p.add_argument("--humaneval_path", default=str(SHARED / "humaneval" / "HumanEval.jsonl.gz"))
    p.add_argument("--mbpp_path", default=str(SHARED / "mbpp" / "mbpp.jsonl"))
    p.add_argument("--output", default=None, help="the summary and every generation, as JSON")
    args = p.parse_args()
    setup_logging()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if unknown := set(tasks) - {"gsm8k", "humaneval", "mbpp"}:
        raise UserError(f"--tasks: unknown {', '.join(sorted(unknown))}; use gsm8k, humaneval, mbpp")
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError('lm-evaluation-harness is not installed: pip install -e ".[eval]"') from None
    path = weights.resolve(args.weight, args.save_dir, None, flag="--weight").label
    summary, dump = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_gen_") as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "hf"
        export_folder(path, folder)
        models = {
            kind: load_eval_model(ModelSpec(kind, str(where)), "", None, "cpu", torch.float32, None)
            for kind, where in (("weight", path), ("hf", folder))
        }
        for name in tasks:
            prompts, until, task_max, files, questions = our_items(
                name, args.limit, Path(args.gsm8k_dir), Path(args.humaneval_path), Path(args.mbpp_path)
            )
            budget = token_budget(models["weight"].max_len, task_max)
            ours, seconds = {}, {}
            for kind, em in models.items():
                texts, facts = generate_until(em, prompts, until, budget, args.batch_size)
                ours[f"eval_llm --{kind}"], seconds[f"eval_llm --{kind}"] = texts, facts["seconds"]
            if files is None:  # a code task: the harness reads its test rows from a local file
                rows_file = tmp / f"{name}_test.jsonl"
                rows_file.write_text(_code_rows(name, Path(args.humaneval_path), Path(args.mbpp_path)))
                files = {"test": str(rows_file)}
            task = task_yaml(name, tmp, files, budget.new if budget.new != task_max else None)
            harness, seconds["lm-evaluation-harness"] = harness_run(
                folder, tmp, task, args.limit, args.harness_batch_size
            )
            rows = compare(name, ours, harness, prompts, questions)
            for r in rows:
                r["seconds"], r["harness_seconds"] = seconds[r["setting"]], seconds["lm-evaluation-harness"]
                r["context"], r["max_new_tokens"] = budget.context, budget.new
            summary += rows
            dump[name] = {"harness": harness, **ours}
    print(f"\nagreement with lm-evaluation-harness (checkpoint {path}, fp32, greedy):")
    for r in summary:
        line = (
            f"{r['task']:<10} {r['setting']:<18} prompts {r['same_prompt']}/{r['n']}  "
            f"generations {r['same_text']}/{r['n']}"
        )
        if "same_strict" in r:
            line += (
                f"  answers strict {r['same_strict']}/{r['n']} flexible {r['same_flexible']}/{r['n']}"
                f"  verdicts {r['same_verdict_strict']}/{r['n']}, {r['same_verdict_flexible']}/{r['n']}"
                f"  EM strict {r['em_strict']:.2%} (harness {r['harness_em_strict']:.2%})"
                f" flexible {r['em_flexible']:.2%} (harness {r['harness_em_flexible']:.2%})"
            )
        line += f"  {r['seconds']:.1f} s (harness {r['harness_seconds']:.1f} s)"
        print(line)
    if args.output:
        Path(args.output).write_text(json.dumps({"summary": summary, "generations": dump}, indent=1))


def _code_rows(name: str, humaneval: Path, mbpp: Path) -> str:
    """The task's test rows as JSON lines, in the order eval_llm reads them."""
    from trainer.evaluation.data import load_local_rows, mbpp_test_split

    if name == "humaneval":
        rows = load_local_rows(humaneval, "humaneval")
    else:
        rows = load_local_rows(mbpp, "mbpp")
        rows, _ = mbpp_test_split(rows, [""] * len(rows), "")
    return "".join(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    run(main)
