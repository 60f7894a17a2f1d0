"""MMLU agreement with lm-evaluation-harness: eval_llm's per-question answers vs the harness's.

    python scripts/dev/bench_mmlu_harness.py --weight out/midtrain_256.pth [--shots 0] [--limit N]
        [--subjects a,b] [--dtypes float32,bfloat16] [--harness_json FILE] [--output FILE.json]

The checkpoint is exported with scripts/export_hf.py (a real process) and scored four ways on
the same real MMLU questions (../shared/data/mmlu, all 14,042 test questions by default):

- eval_llm's scorer on the checkpoint (``--weight``) and on the export (``--hf_path``), in each
  of ``--dtypes``, through the code eval_llm.py runs (load_eval_model, mmlu_loglikelihoods);
- lm-evaluation-harness itself, when ``lm_eval`` is importable: its own ``mmlu_<subject>`` task
  configs (the installed tasks/mmlu/default YAMLs, included unchanged) with only the dataset
  pointed at local JSONL files holding the same questions and dev rows, ``--model hf`` on the
  export with ``dtype=float32`` and no ``max_length`` (the harness takes the context from the
  export's config.json), ``log_samples`` for the per-question log-likelihoods.

It prints, per setting: accuracy, the share of questions whose predicted letter equals the
harness's, subjects with equal accuracy, the largest per-letter log-likelihood difference, and
the time; ``--output`` keeps every per-question prediction. Without ``lm_eval`` the harness is
skipped with a note (or read from a ``--harness_json`` an earlier run wrote), and the settings are
compared with each other: fp32 against bf16 counts the answers bf16 flips.
lm-evaluation-harness is not a dependency of this project: install it in a separate environment
(``pip install lm-eval``) and run this script with that interpreter and PYTHONPATH at the repo.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from model.errors import UserError
from trainer import runtime, weights
from trainer.cli import run, setup_logging
from trainer.evaluation.data import Hub, MCQuestion, load_mmlu, spread
from trainer.evaluation.harness import export_folder
from trainer.evaluation.mmlu import mmlu_loglikelihoods, mmlu_predictions
from trainer.evaluation.models import ModelSpec, load_eval_model
from trainer.paths import REPO_ROOT, shared_data

log = logging.getLogger("bench_mmlu_harness")
SHARED = shared_data()


def write_subject_files(folder: Path, questions: list[MCQuestion], dev: list[MCQuestion] | None) -> list[str]:
    """One test and one dev JSONL per subject (rows in the order given), as the harness reads them."""
    by: dict[str, dict[str, list[MCQuestion]]] = defaultdict(lambda: {"test": [], "dev": []})
    for q in questions:
        by[q.subject]["test"].append(q)
    for d in dev or []:
        if d.subject in by:
            by[d.subject]["dev"].append(d)
    for subject, splits in by.items():
        for split, rows in splits.items():
            (folder / f"{subject}_{split}.jsonl").write_text(
                "".join(
                    json.dumps(
                        {
                            "question": q.question,
                            "choices": list(q.choices),
                            "answer": q.answer,
                            "subject": subject,
                        }
                    )
                    + "\n"
                    for q in rows
                )
            )
    return list(by)


def harness_loglikelihoods(
    folder: Path, questions: list[MCQuestion], dev: list[MCQuestion] | None, k: int, batch_size: int
) -> tuple[torch.Tensor, dict]:
    """(N, 4) per-letter log-likelihoods from lm-evaluation-harness's own mmlu tasks, and its facts."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    template_dir = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    with tempfile.TemporaryDirectory(prefix="bench_mmlu_tasks_") as tmp_name:
        tmp = Path(tmp_name)
        subjects = write_subject_files(tmp, questions, dev)
        names = []
        for s in subjects:
            original = template_dir / f"mmlu_{s}.yaml"
            if not original.is_file():
                raise UserError(f"lm-evaluation-harness has no task mmlu_{s} ({original}); is it MMLU?")
            name = f"bench_mmlu_{s}"
            names.append(name)
            data = {"test": str(tmp / f"{s}_test.jsonl"), "dev": str(tmp / f"{s}_dev.jsonl")}
            (tmp / f"{name}.yaml").write_text(
                f"include: {json.dumps(str(original))}\ntask: {name}\ntag: []\ndataset_path: json\n"
                f"dataset_name: null\ndataset_kwargs:\n  data_files: {json.dumps(data)}\n"
            )
        t0 = time.perf_counter()
        out = lm_eval.simple_evaluate(
            model="hf",
            model_args={"pretrained": str(folder), "dtype": "float32"},
            tasks=names,
            num_fewshot=k,
            batch_size=batch_size,
            device="cpu",
            log_samples=True,
            task_manager=TaskManager(include_path=str(tmp)),
        )
        seconds = time.perf_counter() - t0
    ll = torch.full((len(questions), 4), float("nan"), dtype=torch.float64)
    index = defaultdict(list)
    for i, q in enumerate(questions):
        index[q.subject].append(i)
    for s in subjects:
        for sample in out["samples"][f"bench_mmlu_{s}"]:
            i = index[s][sample["doc_id"]]
            ll[i] = torch.tensor([float(r[0][0]) for r in sample["resps"]], dtype=torch.float64)
    if torch.isnan(ll).any():
        raise RuntimeError("lm-evaluation-harness returned no score for some questions")
    return ll, {"seconds": seconds, "version": getattr(lm_eval, "__version__", "?")}


def eval_llm_loglikelihoods(spec: ModelSpec, dtype: torch.dtype, questions, dev, k, batch_size):
    """What eval_llm.py computes for ``spec`` (its model loader and MMLU scorer), timed."""
    em = load_eval_model(spec, "", None, "cpu", dtype, None)
    t0 = time.perf_counter()
    ll, facts = mmlu_loglikelihoods(em, questions, dev, k, batch_size)
    return ll, {**facts, "seconds": time.perf_counter() - t0, "context": em.max_len}


def compare(name: str, ll: torch.Tensor, ref: torch.Tensor, questions: list[MCQuestion]) -> dict:
    """Agreement of ``ll``'s predictions with ``ref``'s: questions, subjects' accuracies, max |diff|."""
    p, r = mmlu_predictions(ll), mmlu_predictions(ref)
    same = sum(a == b for a, b in zip(p, r, strict=True))
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for a, b, q in zip(p, r, questions, strict=True):
        acc[q.subject][0] += a == q.answer
        acc[q.subject][1] += b == q.answer
        acc[q.subject][2] += 1
    return {
        "setting": name,
        "same_answer": same,
        "n": len(questions),
        "subjects_equal": sum(v[0] == v[1] for v in acc.values()),
        "subjects": len(acc),
        "max_abs_diff": (ll - ref).abs().max().item(),
    }


def fingerprint(questions: list[MCQuestion]) -> str:
    """sha256 of the scored questions, so a saved harness run is reused only for the same set."""
    text = json.dumps([[q.subject, q.question, list(q.choices), q.answer] for q in questions])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def accuracy(ll: torch.Tensor, questions: list[MCQuestion]) -> float:
    return sum(p == q.answer for p, q in zip(mmlu_predictions(ll), questions, strict=True)) / len(questions)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weight", required=True, help="a checkpoint: prefix, stem or .pth path")
    p.add_argument("--save_dir", default=str(REPO_ROOT / "out"), help="where --weight names are looked up")
    p.add_argument("--mmlu_dir", default=str(SHARED / "mmlu"), help="folder with test.jsonl and dev.jsonl")
    p.add_argument(
        "--shots", type=int, default=0, help="examples per prompt (default 0, the harness's default)"
    )
    p.add_argument(
        "--limit", type=int, default=None, help="N questions spread over the subjects (default all)"
    )
    p.add_argument("--subjects", default=None, help="comma-separated subjects to keep (default all)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="eval_llm precisions to compare")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument(
        "--harness_json", default=None, help="read (if it exists) or write the harness's scores here"
    )
    p.add_argument("--no_harness", action="store_true", help="do not run lm-evaluation-harness")
    p.add_argument("--output", default=None, help="per-question predictions and the summary, as JSON")
    args = p.parse_args()
    setup_logging()
    dtypes = [
        runtime.resolve_dtype(d.strip(), torch.device("cpu")) for d in args.dtypes.split(",") if d.strip()
    ]
    path = weights.resolve(args.weight, args.save_dir, None, flag="--weight").label
    if not Path(args.mmlu_dir).is_dir():
        raise UserError(f"--mmlu_dir {args.mmlu_dir}: not a folder (MMLU test.jsonl and dev.jsonl)")
    # the harness reads the dev split even 0-shot (its fewshot_split)
    test, dev, where = load_mmlu(args.mmlu_dir, None, True, Hub(enabled=False))
    if args.subjects:
        keep = {s.strip() for s in args.subjects.split(",") if s.strip()}
        if unknown := keep - {q.subject for q in test}:
            raise UserError(f"--subjects: {', '.join(sorted(unknown))} not in {where}")
        test = [q for q in test if q.subject in keep]
    questions = spread(test, args.limit)
    print(f"{len(questions):,} MMLU questions from {where}, {args.shots}-shot; checkpoint {path}", flush=True)

    lls: dict[str, torch.Tensor] = {}
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_mmlu_") as tmp:
        folder = Path(tmp) / "hf"
        export_folder(path, folder)
        for dtype in dtypes:
            for kind, spec in (
                ("weight", ModelSpec("weight", str(path))),
                ("hf", ModelSpec("hf", str(folder))),
            ):
                name = f"eval_llm --{kind} {str(dtype).removeprefix('torch.')}"
                lls[name], facts = eval_llm_loglikelihoods(
                    spec, dtype, questions, dev, args.shots, args.batch_size
                )
                times[name] = facts["seconds"]
                print(
                    f"{name}: {facts['seconds']:.1f} s, context {facts['context']}, "
                    f"{facts['truncated']} prompts truncated",
                    flush=True,
                )
        cached = Path(args.harness_json) if args.harness_json else None
        if cached and cached.is_file():
            saved = json.loads(cached.read_text())
            if saved["questions"] != fingerprint(questions) or saved["shots"] != args.shots:
                raise UserError(f"--harness_json {cached}: scored another question set; remove it to rerun")
            lls["lm-evaluation-harness"] = torch.tensor(saved["ll"], dtype=torch.float64)
            times["lm-evaluation-harness"] = saved["seconds"]
            print(f"lm-evaluation-harness {saved['version']}: read from {cached}")
        elif not args.no_harness:
            try:
                import lm_eval  # noqa: F401
            except ImportError:
                print("lm-evaluation-harness is not installed here (pip install lm-eval in another env)")
            else:
                ll, facts = harness_loglikelihoods(folder, questions, dev, args.shots, args.batch_size)
                lls["lm-evaluation-harness"], times["lm-evaluation-harness"] = ll, facts["seconds"]
                print(f"lm-evaluation-harness {facts['version']}: {facts['seconds']:.1f} s", flush=True)
                if cached:
                    cached.write_text(
                        json.dumps(
                            {
                                "version": facts["version"],
                                "seconds": facts["seconds"],
                                "shots": args.shots,
                                "questions": fingerprint(questions),
                                "ll": ll.tolist(),
                            }
                        )
                    )
    ref_name = "lm-evaluation-harness" if "lm-evaluation-harness" in lls else next(iter(lls))
    ref = lls[ref_name]
    rows = [compare(name, ll, ref, questions) for name, ll in lls.items() if name != ref_name]
    print(f"\nagreement with {ref_name} (accuracy {accuracy(ref, questions):.2%}):")
    print(
        f"{'setting':<26} {'acc':>7} {'same answer':>18} {'subjects equal':>15} {'max |dll|':>10} {'q/s':>7}"
    )
    for r in rows:
        print(
            f"{r['setting']:<26} {accuracy(lls[r['setting']], questions):>7.2%} "
            f"{r['same_answer']:>8,}/{r['n']:<,} ({r['same_answer'] / r['n']:.2%}) "
            f"{r['subjects_equal']:>6}/{r['subjects']:<8} {r['max_abs_diff']:>10.2e} "
            f"{r['n'] / times[r['setting']]:>7.1f}"
        )
    if args.output:
        Path(args.output).write_text(
            json.dumps(
                {
                    "reference": ref_name,
                    "summary": rows,
                    "seconds": times,
                    "predictions": {name: mmlu_predictions(ll) for name, ll in lls.items()},
                    "answers": [q.answer for q in questions],
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    run(main)
