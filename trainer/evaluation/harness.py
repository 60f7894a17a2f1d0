"""Any lm-evaluation-harness task on an evaluation model: an ``lm_eval`` LM over :class:`EvalModel`.

``eval_llm.py --lm_eval_tasks hellaswag,arc_easy`` runs the harness's own tasks (their prompts,
few-shot sampling, filters and metrics, unchanged) with the model eval_llm already loaded, scored
the way the harness's ``--model hf`` scores a transformers model (``HFLM``, v0.4.13):

- ``loglikelihood``: the harness's :class:`~lm_eval.api.model.TemplateLM` splits context and
  continuation (``_encode_pair``: ``encode(context + continuation)`` after ``encode(context)``'s
  tokens, trailing spaces moved to the continuation); the model reads
  ``(context + continuation)[-(max_length + 1):][:-1]``, and the continuation's fp32
  log-softmax is summed; ``is_greedy`` when every continuation token is the argmax;
- ``loglikelihood_rolling``: the harness's disjoint rolling windows of ``max_length`` tokens over
  ``tokenizer(text)``, the first one after the prefix token (BOS, else EOS);
- ``generate_until``: greedy, :func:`trainer.evaluation.generation.generate_until` (the harness's
  context truncation, stop strings and end-of-text rule); a task that samples is refused.

``max_length`` is the model's scoring context (``EvalModel.max_len``), as the harness takes it
from an export's config.json. lm-evaluation-harness is the optional ``eval`` extra
(``pip install -e ".[eval]"``; ``dev`` includes it).
"""

from __future__ import annotations

import functools
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from model.errors import UserError
from trainer.evaluation.generation import HARNESS_MAX_GEN_TOKS, generate_until, token_budget
from trainer.evaluation.models import EvalModel

log = logging.getLogger(__name__)


def export_folder(weight: str | Path, folder: Path) -> Path:
    """Export a checkpoint to a transformers ``folder`` as a user does: scripts/export_hf.py run as a
    process (what the harness's ``--model hf`` is then pointed at). Raises CalledProcessError."""
    import subprocess
    import sys

    from trainer.paths import REPO_ROOT

    script = REPO_ROOT / "scripts" / "export_hf.py"
    cmd = [sys.executable, str(script), "--weight", str(weight), "--output_dir", str(folder)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return folder


def require_lm_eval():
    """The lm_eval module, or a UserError that says how to install it."""
    try:
        import lm_eval
    except ImportError:
        raise UserError(
            '--lm_eval_tasks needs lm-evaluation-harness: pip install -e ".[eval]" (or pip install lm-eval)'
        ) from None
    return lm_eval


def make_lm(em: EvalModel, batch_size: int, user_max: int | None = None):
    """An ``lm_eval.api.model.TemplateLM`` that scores and generates with ``em``."""
    require_lm_eval()
    from lm_eval.api.model import TemplateLM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    class EvalLM(TemplateLM):
        def __init__(self) -> None:
            super().__init__()
            self.em, self.batch_size, self.user_max = em, batch_size, user_max
            self.tokenizer = em.tokenizer

        @property
        def eot_token_id(self) -> int:
            return em.eos_id

        @property
        def prefix_token_id(self) -> int:
            return em.bos_id if em.bos_id is not None else em.eos_id

        @property
        def max_length(self) -> int:
            return em.max_len

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
            ids = em.encode([string])[0]
            if add_special_tokens is False:
                return ids
            bos = em.tokenizer.bos_token
            if add_special_tokens is None and bos and string.startswith(bos):
                return ids  # HFLM: a text that already starts with BOS gets no second one
            return em.prompt_start() + ids

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kw):
            rows, reads, conts = [], [], []
            for _, ctx, cont in requests:
                inp = (list(ctx) + list(cont))[-(em.max_len + 1) :][:-1]
                rows.append(inp)
                reads.append(list(range(len(inp) - len(cont), len(inp))))
                conts.append(list(cont))
            out: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
            order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
            for b in range(0, len(order), self.batch_size):
                batch = order[b : b + self.batch_size]
                logits = em.logits_at((), [rows[i] for i in batch], [reads[i] for i in batch])
                for i, lg in zip(batch, logits, strict=True):
                    lp = torch.log_softmax(lg, dim=-1)
                    target = torch.tensor(conts[i])
                    total = lp[torch.arange(len(target)), target].double().sum().item()
                    out[i] = (total, bool((lp.argmax(dim=-1) == target).all()))
            return out

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            windows, owner = [], []
            for k, (text,) in enumerate(req.args for req in requests):
                for ctx, cont in map(
                    make_disjoint_window,
                    get_rolling_token_windows(
                        token_list=self.tok_encode(text),
                        prefix_token=self.prefix_token_id,
                        max_seq_len=em.max_len,
                        context_len=1,
                    ),
                ):
                    windows.append((None, ctx, cont))
                    owner.append(k)
            totals = [0.0] * len(requests)
            for k, (ll, _) in zip(owner, self._loglikelihood_tokens(windows), strict=True):
                totals[k] += ll
            return totals

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            groups: dict[str, list[int]] = defaultdict(list)
            for i, req in enumerate(requests):
                groups[repr(sorted(req.args[1].items()))].append(i)
            out = [""] * len(requests)
            for idx in groups.values():
                kwargs = dict(requests[idx[0]].args[1])
                if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0:
                    raise UserError(
                        f"lm-evaluation-harness task {requests[idx[0]].task_name}: it samples "
                        f"(do_sample / temperature {kwargs.get('temperature')}); eval_llm generates greedily only"
                    )
                until = kwargs.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                cap = next(
                    (int(kwargs[k]) for k in ("max_gen_toks", "max_new_tokens", "max_tokens") if k in kwargs),
                    HARNESS_MAX_GEN_TOKS,
                )
                budget = token_budget(em.max_len, cap, self.user_max)
                texts, _ = generate_until(
                    em, [requests[i].args[0] for i in idx], until, budget, self.batch_size
                )
                for i, t in zip(idx, texts, strict=True):
                    out[i] = t
            return out

    return EvalLM()


@functools.lru_cache(maxsize=4)
def task_manager(tasks: tuple[str, ...], include: str | None):
    """A TaskManager that knows ``tasks``: the ``include`` folder's alone when it has them all
    (indexing the harness's ~15k built-in task files takes ~10 s), else with the built-ins;
    UserError naming any task neither has. Built once per run (eval_llm checks the names before
    it loads a model)."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    if include:
        tm = TaskManager(include_path=include, include_defaults=False)
        if all(t in tm.all_tasks for t in tasks):
            return tm
    tm = TaskManager(include_path=include) if include else TaskManager()
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        raise UserError(
            f"--lm_eval_tasks: lm-evaluation-harness has no task {', '.join(unknown)}"
            + (f" (nor {include})" if include else " (a local task YAML: --lm_eval_include DIR)")
        )
    return tm


def run_lm_eval(
    em: EvalModel,
    tasks: list[str],
    include: str | None,
    batch_size: int,
    limit: int | None = None,
    user_max: int | None = None,
) -> dict[str, Any]:
    """lm-evaluation-harness's ``simple_evaluate`` of ``tasks`` on ``em``: {"tasks": {task: {metric:
    value, "<metric>_stderr": its standard error, "n": documents}}, "seconds", "version"}."""
    lm_eval = require_lm_eval()
    tm = task_manager(tuple(tasks), include)
    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model=make_lm(em, batch_size, user_max),
        tasks=tasks,
        limit=limit,
        task_manager=tm,
        log_samples=False,
        bootstrap_iters=1000,
        confirm_run_unsafe_code=False,
    )
    seconds = time.perf_counter() - t0
    res: dict[str, Any] = {"tasks": {}, "seconds": seconds, "version": getattr(lm_eval, "__version__", "?")}
    n = out.get("n-samples", {})
    for task, metrics in out["results"].items():
        row: dict[str, Any] = {}
        for key, value in metrics.items():
            if key == "alias" or not isinstance(value, (int, float)):
                continue
            name, _, flt = key.partition(",")
            name = name if flt in ("", "none") else f"{name} ({flt})"
            row[name] = float(value)
        row["n"] = (n.get(task) or {}).get("effective")
        res["tasks"][task] = row
        shown = ", ".join(
            f"{k} {v:.4f}"
            for k, v in row.items()
            if k not in ("n", "sample_len") and not k.endswith("_stderr")
        )
        log.info(f"{em.label}: lm-eval {task}: {shown}")
    return res
