"""Run a mid-training ablation study end to end with the project's own scripts, then report.

    python scripts/run_ablation.py --config config/experiments/replay_ablation_local.yaml

prepare_dataset (pretrain data, the base mixture) -> train_tokenizer -> prepare_dataset (one
mixture per replay share; shares are of tokens) -> train_pretrain (once) -> train_midtrain
(each variant x seed, all on the same held-out set) -> eval_llm (MMLU-format accuracy, and
pass@1 / GSM8K where the config names their data) -> out/ablation/<name>/report.md, a JSON of
every number and PNG plots. With ``start_from:`` (a model folder or checkpoint) there is no
tokenizer to train and nothing to pretrain: every variant mid-trains that model with its own
tokenizer, and it is the base the variants are compared with. Finished steps are kept:
re-running the command continues an interrupted study (--fresh starts over).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from dataset.io import atomic_write, file_sha256
from dataset.mixture import load_mixture_config, prepared_paths
from model.errors import UserError
from trainer.ablation.config import (
    ExperimentConfig,
    Variant,
    flags,
    load_experiment_config,
    variant_mixture,
)
from trainer.ablation.report import write_report
from trainer.checkpoint import checkpoint_paths, is_finished
from trainer.cli import run, setup_logging
from trainer.paths import REPO_ROOT, repo_path

log = logging.getLogger("ablation")


class Study:
    """Paths and process running for one study folder."""

    def __init__(self, cfg: ExperimentConfig, out: Path, scale: float, device: str | None):
        self.cfg, self.out, self.scale, self.device = cfg, out, scale, device
        self.data, self.weights, self.logs = out / "data", out / "weights", out / "logs"
        for d in (self.data, self.weights, self.logs, out / "configs"):
            d.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}
        self.reused: dict[str, int] = {}  # per phase: finished runs of an earlier invocation, not rerun

    def reuse(self, phase: str, name: str) -> None:
        log.info(f"  {name}: already done")
        self.reused[phase] = self.reused.get(phase, 0) + 1

    def run(self, name: str, script: str, args: list[str], threads: int | None = None) -> None:
        """Run one of the project's scripts; its output goes to logs/<name>.log."""
        cmd = [sys.executable, str(REPO_ROOT / script), *args]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        logfile = self.logs / f"{name}.log"
        t0 = time.perf_counter()
        with open(logfile, "w") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
        if proc.returncode != 0:
            tail = logfile.read_text().strip().splitlines()[-1:]
            raise UserError(
                f"{script} failed for '{name}' (exit {proc.returncode}): {tail[0] if tail else ''}; full log: {logfile}"
            )
        log.info(f"  {name}: {time.perf_counter() - t0:.0f} s")

    def run_once(
        self,
        phase: str,
        name: str,
        script: str,
        args: list[str],
        output: Path,
        inputs: list[Path],
        contents: tuple[Path, ...] = (),
        ready: bool | None = None,
        threads: int | None = None,
    ) -> None:
        """:meth:`run`, unless an earlier invocation made ``output`` (``ready``: it is finished; by
        default, it exists) with the same arguments from the same ``inputs`` (their sizes and
        modification times) and ``contents`` (their sha256: files rewritten with the same bytes on
        every invocation, as the tokenizer is), all kept in ``<output>.inputs.json``: then it is
        reused (:meth:`reuse`)."""

        def seen(p: Path, by_content: bool) -> list[int] | str | None:
            if not p.is_file():  # a missing input is left for the script to name in its own error
                return None
            st = p.stat()
            return file_sha256(p) if by_content else [st.st_size, st.st_mtime_ns]

        key = {
            "args": args,
            "inputs": {str(p): seen(p, False) for p in inputs},
            "contents": {str(p): seen(p, True) for p in contents},
        }
        stamp = output.with_name(output.name + ".inputs.json")
        done = output.is_file() if ready is None else ready
        if done and stamp.is_file() and json.loads(stamp.read_text()) == key:
            self.reuse(phase, name)
            return
        stamp.unlink(missing_ok=True)
        self.run(name, script, args, threads)
        atomic_write(stamp, lambda tmp: tmp.write_text(json.dumps(key)))

    def scaled(self, args: dict) -> dict:
        out = dict(args)
        if self.scale != 1:
            for k in ("max_steps", "eval_interval", "save_interval"):
                if k in out and out[k]:
                    out[k] = max(1, round(out[k] * self.scale))
        if self.device:
            out["device"] = self.device
        return out

    def prepare(self, key: str, config: Path, tokenizer: Path | None = None) -> None:
        """prepare_dataset on ``config``; ``tokenizer`` overrides a token mixture's own."""
        tok = ["--tokenizer_path", str(tokenizer)] if tokenizer is not None else []
        self.run(
            f"prepare_{key}",
            "scripts/prepare_dataset.py",
            ["--config", str(config), "--output_dir", str(self.data), "--overwrite", *tok],
        )

    def phase(self, name: str, fn) -> None:
        t0 = time.perf_counter()
        log.info(f"== {name}")
        fn()
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0


def prepare_inputs(study: Study, start_tok: Path | None) -> dict[str, Path]:
    """Prepare the pretrain data (unless the study starts from a model) and the base mixture (the
    tokenizer's text, the held-out set); ``start_tok``: the start model's tokenizer folder."""
    mixtures = {"base": study.cfg.midtrain_data}
    if study.cfg.pretrain_data is not None:
        mixtures["pretrain"] = study.cfg.pretrain_data
    for key, path in mixtures.items():
        # a study that starts from a model counts a token mixture's tokens with the model's tokenizer
        study.prepare(key, path, start_tok if key == "base" else None)
    return mixtures


def start_model(start: Path, out: Path) -> tuple[Path, int]:
    """(tokenizer folder, hidden size) of the model a study starts from: what prepare_dataset's
    --tokenizer_path reads and what names its runs' files. A model folder is its own tokenizer
    folder; a checkpoint file is read once and its stored tokenizer written into ``out``."""
    if start.is_dir():
        return start, int(json.loads((start / "config.json").read_text())["hidden_size"])
    from dataset.io import atomic_dir
    from dataset.tokenizer import tokenizer_from_dict
    from trainer.checkpoint import load_checkpoint

    ckpt = load_checkpoint(start)
    tok = tokenizer_from_dict(ckpt["tokenizer"])
    with atomic_dir(out) as tmp:
        tok.save_pretrained(str(tmp))
    return out, int(ckpt["model_config"]["hidden_size"])


def prepare_variants(study: Study, tok_dir: Path) -> dict[str, Path]:
    """One token mixture per replay share (mix_by: tokens, counted with the study's tokenizer)."""
    cfg = study.cfg
    mixtures = {}
    for share in sorted({v.replay for v in cfg.variants}):
        key = f"replay{round(share * 100):02d}"
        path = study.out / "configs" / f"{key}.yaml"
        raw = variant_mixture(
            cfg.midtrain_data, cfg.replay_source, share, f"{cfg.name}_{key}", tok_dir, cfg.total_tokens
        )
        text = yaml.safe_dump(raw, sort_keys=False)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        study.prepare(key, path)
        mixtures[key] = path
    return mixtures


def prepared(study: Study, config: Path, split: str) -> Path:
    paths = prepared_paths(load_mixture_config(config), study.data)
    return paths.train if split == "train" else paths.val


def build_heldout(study: Study) -> Path:
    """The held-out set every run is evaluated on: the base mixture's validation split (replay,
    code, reasoning rows no variant trains on) plus MBPP problems with their reference code."""
    from dataset.io import iter_jsonl
    from trainer.evaluation.data import DataUnavailable, Hub, load_local_rows

    cfg = study.cfg
    rows = [row for _, row in iter_jsonl(prepared(study, cfg.midtrain_data, "val"))]
    if cfg.mbpp is not None:
        ref = str(cfg.mbpp)
        try:
            mbpp = (
                load_local_rows(ref, "MBPP")
                if Path(ref).exists()
                else Hub().rows(ref, None, "test", "MBPP", "data.mbpp (a local mbpp.jsonl)")
            )
        except DataUnavailable as e:
            raise UserError(f"data.mbpp {ref}: {e}") from None
        for r in mbpp[: cfg.mbpp_rows]:
            rows.append({"text": f"{r['text']}\n{r['code']}".replace("\r\n", "\n"), "source": "mbpp"})
    path = study.out / "heldout.jsonl"
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:  # unchanged: its evaluations stand
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def run_key(variant: Variant, seed: int) -> str:
    return f"{variant.name}_s{seed}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--config", default=str(REPO_ROOT / "config" / "experiments" / "replay_ablation_local.yaml")
    )
    p.add_argument("--out_dir", default=None, help="default: out/ablation/<name>")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every step count (e.g. 20 on a GPU)")
    p.add_argument("--device", default=None, help="passed to the training and evaluation scripts")
    p.add_argument(
        "--jobs", type=int, default=None, help="mid-training runs at a time (default: the config's)"
    )
    p.add_argument("--fresh", action="store_true", help="delete the study folder first")
    args = p.parse_args()
    setup_logging()
    cfg = load_experiment_config(args.config)
    if args.scale <= 0:
        raise UserError(f"--scale must be positive, got {args.scale}")
    out = Path(args.out_dir) if args.out_dir else repo_path("out", "ablation", cfg.name)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    study = Study(cfg, out, args.scale, args.device)
    jobs = args.jobs or cfg.jobs
    t_start = time.perf_counter()
    mixtures: dict[str, Path] = {}
    heldout: list[Path] = []

    pre_args = study.scaled(cfg.pretrain_args)
    tok, hidden = (
        start_model(cfg.start_from, out / "tokenizer")
        if cfg.start_from is not None
        else (out / "tokenizer", int(pre_args.get("hidden_size", 512)))
    )

    def do_prepare() -> None:
        mixtures.update(prepare_inputs(study, tok if cfg.start_from is not None else None))
        heldout.append(build_heldout(study))

    study.phase("prepare", do_prepare)
    pretrain_data = cfg.pretrain_data
    if pretrain_data is not None:
        study.phase(
            "tokenizer",
            lambda: study.run(
                "tokenizer",
                "scripts/train_tokenizer.py",
                [
                    "--data_path",
                    str(prepared(study, pretrain_data, "train")),
                    "--data_path",
                    str(prepared(study, cfg.midtrain_data, "train")),
                    "--vocab_size",
                    str(cfg.vocab_size),
                    "--output_dir",
                    str(tok),
                ],
            ),
        )
    study.phase("prepare", lambda: mixtures.update(prepare_variants(study, tok)))
    common = [
        "--save_dir",
        str(study.weights),
        "--checkpoint_dir",
        str(out / "checkpoints"),
        "--cache_dir",
        str(out / "cache"),
    ]
    base_weight = str(cfg.start_from) if cfg.start_from else "pretrain"

    def weight_file(weight: str) -> Path:
        if weight == str(cfg.start_from):
            return Path(weight)
        return checkpoint_paths(study.weights, out / "checkpoints", weight, hidden).weights

    # a training run is reused when it finished with the same flags, data and tokenizer
    tok_file = tok / "tokenizer.json"

    def do_pretrain() -> None:
        assert pretrain_data is not None
        data = prepared(study, pretrain_data, "train")
        study.run_once(
            "pretrain",
            "pretrain",
            "trainer/train_pretrain.py",
            ["--data_path", str(data), "--val_path", str(heldout[0]), "--tokenizer_path", str(tok)]
            + [*common, *flags(pre_args)],
            weight_file("pretrain"),
            [],
            contents=(tok_file, data, heldout[0]),
            ready=is_finished(weight_file("pretrain")),
        )

    if pretrain_data is not None:
        study.phase("pretrain", do_pretrain)

    runs = [(v, s) for v in cfg.variants for s in cfg.seeds]

    def midtrain(item: tuple[Variant, int]) -> None:
        v, seed = item
        key = run_key(v, seed)
        mix = mixtures[f"replay{round(v.replay * 100):02d}"]
        margs = study.scaled({**cfg.midtrain_args, **v.args})
        until = max(1, math.ceil(0.05 * int(margs.get("max_steps", 0) or 1)))
        margs.setdefault("early_eval_steps", until)
        margs.setdefault("eval_batches", 0)  # the whole held-out set, every time
        study.run_once(
            "midtrain",
            key,
            "trainer/train_midtrain.py",
            [
                "--data_config",
                str(mix),
                "--use_prepared",
                "--prepared_dir",
                str(study.data),
                "--val_path",
                str(heldout[0]),
                "--from_weight",
                base_weight,
                "--save_weight",
                key,
                "--seed",
                str(seed),
                *common,
                *flags(margs),
            ],
            weight_file(key),
            [weight_file(base_weight)],
            contents=(tok_file, mix, heldout[0]),
            ready=is_finished(weight_file(key), load_mixture_config(mix).sha256),  # on this mixture
            threads=max(1, (os.cpu_count() or 2) // jobs),
        )

    def do_midtrain() -> None:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(midtrain, runs))

    study.phase("midtrain", do_midtrain)
    eval_json = out / "eval" / "mmlu.json"
    generation_json = out / "eval" / "generation.json"

    def do_eval() -> None:
        weights = [base_weight, *(run_key(v, s) for v, s in runs)]
        eargs = [
            "--save_dir",
            str(study.weights),
            *(["--val_path", str(heldout[0])] if cfg.heldout_lm else ["--no_lm"]),
            "--no_code",
            "--no_gsm8k",
            "--no_samples",
            "--shots",
            str(cfg.shots),
            "--output",
            str(eval_json),
        ]
        for w in weights:
            eargs += ["--weight", w]
        if cfg.mmlu is not None:  # every file of this pass is local: never wait on the Hub
            eargs += ["--mmlu_path", str(cfg.mmlu), "--no_hub"]
        if cfg.mmlu_dev is not None:
            eargs += ["--mmlu_dev", str(cfg.mmlu_dev)]
        if cfg.mmlu_limit:
            eargs += ["--limit", str(cfg.mmlu_limit)]
        if args.device:
            eargs += ["--device", args.device]
        inputs = [weight_file(w) for w in weights] + heldout[: 1 if cfg.heldout_lm else 0]
        inputs += [p for p in (cfg.mmlu, cfg.mmlu_dev) if p is not None]
        study.run_once("eval", "eval_mmlu", "eval_llm.py", eargs, eval_json, inputs)
        if cfg.generation:  # pass@1 / GSM8K on their own problem count (generation costs more per item)
            # the config's files only (--no_hub: a code set it does not name is skipped, not fetched)
            gargs = ["--save_dir", str(study.weights), "--no_lm", "--no_mmlu", "--no_samples", "--no_hub"]
            gargs += ["--output", str(generation_json)]
            gargs += [f"--{k}_path={p}" for k, p in cfg.generation.items()]
            if "humaneval" not in cfg.generation and "mbpp" not in cfg.generation:
                gargs.append("--no_code")
            if "gsm8k" not in cfg.generation:
                gargs.append("--no_gsm8k")
            if cfg.generation_limit:
                gargs += ["--limit", str(cfg.generation_limit)]
            if args.device:
                gargs += ["--device", args.device]
            gargs += [f"--weight={w}" for w in weights]
            inputs = [weight_file(w) for w in weights] + list(cfg.generation.values())
            study.run_once("eval", "eval_generation", "eval_llm.py", gargs, generation_json, inputs)

    study.phase("eval", do_eval)
    study.timings["total"] = time.perf_counter() - t_start
    paths = write_report(
        cfg,
        study.out,
        study.weights,
        hidden,
        runs,
        [eval_json, generation_json],
        study.timings,
        args.scale,
        study.reused,
    )
    log.info(f"Report: {paths['md']}")
    log.info(f"Numbers: {paths['json']}")
    log.info(f"Plots: {', '.join(str(p) for p in paths['png'])}")


if __name__ == "__main__":
    run(main)
