"""Every training flag: the argparse parsers of the two stage scripts and :class:`TrainConfig`.

Flag names are MiniMind's (``--save_weight``, ``--from_weight``, ``--from_resume`` ...), so users
moving over keep their commands. The README's flag list is checked against these parsers by a test.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from dataset.rows import ATTENTIONS, PACKINGS
from model.errors import UserError
from trainer.cli import add_runtime_flags, add_save_dir_flag
from trainer.paths import repo_path
from trainer.runtime import AUTO, DTYPES
from trainer.schedule import SCHEDULE_HELP, SCHEDULES, parse_decay_ratio
from trainer.validation import LOSSES, parse_forgetting

# Tokens per packed training row for a new model, and the context a checkpoint that does not
# record its training length is scored with.
DEFAULT_SEQ_LEN = 512
ARCH_FLAGS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")

# A resumed run takes every flag it is not given from the resume state (restore_run_args), except
# these: where the resume state was found, and what applies to one invocation only.
NOT_RESTORED = frozenset({"save_dir", "checkpoint_dir", "from_resume", "stop_after", "device"})
# Flags a resumed run may be given with a new value: where files go, how often it logs, evaluates
# and saves, how it runs. Every other flag defines the run (the validation sample included:
# --val_path and --eval_batches, so start and end are compared on the same rows) and a value that
# contradicts it is refused; --epochs / --max_steps may change to lengthen or shorten the run.
MAY_CHANGE_ON_RESUME = NOT_RESTORED | frozenset(
    {
        "cache_dir",
        "prepared_dir",
        "use_prepared",
        "tokenizer_path",
        "log_interval",
        "save_interval",
        "eval_interval",
        "early_eval_steps",
        "early_eval_interval",
        "max_forgetting",
        "stop_on_forgetting",
        "use_wandb",
        "wandb_project",
        "wandb_run_name",
        "num_workers",
        "compile",
        "loss",
        "activation_checkpointing",
        "peak_tflops",
    }
)
RUN_LENGTH = frozenset({"epochs", "max_steps"})


@dataclass(frozen=True)
class TrainConfig:
    """Every engine flag, typed. Stage scripts add their own flags on top."""

    save_dir: str
    checkpoint_dir: str
    cache_dir: str
    save_weight: str
    tokenizer_path: str | None
    epochs: int
    max_steps: int | None
    stop_after: int | None
    batch_size: int
    accumulation_steps: int
    learning_rate: float
    warmup_ratio: float
    lr_schedule: str
    decay_ratio: str
    weight_decay: float
    grad_clip: float
    dtype: str
    device: str | None
    hidden_size: int | None
    num_hidden_layers: int | None
    num_attention_heads: int | None
    num_key_value_heads: int | None
    max_seq_len: int | None
    packing: str
    attention: str
    from_weight: str | None
    from_resume: int
    log_interval: int
    save_interval: int
    eval_interval: int
    eval_batches: int
    early_eval_steps: int
    early_eval_interval: int
    max_forgetting: list[str] | None
    stop_on_forgetting: bool
    use_wandb: bool
    wandb_project: str
    wandb_run_name: str | None
    compile: str  # "auto" (trainer.parallel.compile_choice), "on" (--use_compile), "off" (--no_compile)
    loss: str
    num_workers: int
    seed: int
    peak_tflops: float | None
    strategy: str
    activation_checkpointing: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        cfg = cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "accumulation_steps", "log_interval", "early_eval_interval"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")
        for name in ("max_steps", "stop_after", "max_seq_len"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.eval_batches < 0:
            raise UserError(
                f"--eval_batches must be >= 0 (0: the whole validation set), got {self.eval_batches}"
            )
        if self.learning_rate <= 0:
            raise UserError(f"--learning_rate must be positive, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio <= 1:
            raise UserError(f"--warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        if self.dtype != AUTO and self.dtype not in DTYPES:
            raise UserError(f"--dtype {self.dtype!r}: unknown dtype; use one of {AUTO}, {', '.join(DTYPES)}")
        if self.from_resume not in (0, 1):
            raise UserError(f"--from_resume takes 0 or 1, got {self.from_resume}")
        parse_decay_ratio(self.decay_ratio)
        parse_forgetting(self.max_forgetting)

    @property
    def seq_len(self) -> int:
        """--max_seq_len once trainer.start.start_run has settled it (the flag, else the length the
        starting checkpoint was trained with)."""
        if self.max_seq_len is None:
            raise RuntimeError("max_seq_len is read before trainer.start.start_run settled it")
        return self.max_seq_len

    @property
    def global_batch_rows(self) -> int:
        """Rows per optimizer step in one process (times the world size for the global batch)."""
        return self.batch_size * self.accumulation_steps


def engine_parser(
    description: str,
    *,
    save_weight: str,
    learning_rate: float,
    warmup_ratio: float,
    lr_schedule: str,
    wandb_project: str,
) -> argparse.ArgumentParser:
    """The flags every stage shares (MiniMind-compatible names), with the stage's defaults."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    _output_flags(p.add_argument_group("outputs"), save_weight)
    _model_flags(p.add_argument_group("model"))
    _optimisation_flags(p.add_argument_group("optimisation"), learning_rate, warmup_ratio, lr_schedule)
    _runtime_flags(p.add_argument_group("runtime"))
    _logging_flags(p.add_argument_group("logging"), wandb_project)
    return p


def _output_flags(g, save_weight: str) -> None:
    add_save_dir_flag(g)
    g.add_argument(
        "--checkpoint_dir",
        default=str(repo_path("checkpoints")),
        help="resume-state folder (default: checkpoints/)",
    )
    g.add_argument(
        "--cache_dir", default=str(repo_path("out", "cache")), help="token cache folder (default: out/cache)"
    )
    g.add_argument("--save_weight", default=save_weight, help=f"weight name prefix (default: {save_weight})")


def _model_flags(g) -> None:
    g.add_argument(
        "--tokenizer_path",
        default=None,
        help="tokenizer folder (default: out/tokenizer, or the one in --from_weight)",
    )
    g.add_argument(
        "--hidden_size",
        type=int,
        default=None,
        help="default 512 for a new model; taken from the checkpoint otherwise",
    )
    g.add_argument("--num_hidden_layers", type=int, default=None, help="default 8 for a new model")
    g.add_argument("--num_attention_heads", type=int, default=None, help="default 8 for a new model")
    g.add_argument("--num_key_value_heads", type=int, default=None, help="default 2 for a new model (GQA)")
    g.add_argument(
        "--max_seq_len",
        type=int,
        default=None,
        help=f"tokens per packed training row (default: the --from_weight run's, else {DEFAULT_SEQ_LEN})",
    )
    g.add_argument(
        "--packing",
        default="bfd",
        choices=PACKINGS,
        help="rows: bfd = whole documents best-fit packed (long ones split), concat = the stream cut every "
        "--max_seq_len tokens (the GPT-2 layout)",
    )
    g.add_argument(
        "--attention",
        default="document",
        choices=ATTENTIONS,
        help="document = each token attends only to its own document, positions from 0 at each document; "
        "causal = across the whole row",
    )
    g.add_argument(
        "--from_weight",
        default=None,
        help="start from: a checkpoint prefix (pretrain), stem (pretrain_512) or .pth path, a transformers "
        "model folder, or a Hugging Face Hub id org/name[@revision] (order: trainer/weights.py)",
    )
    g.add_argument(
        "--from_resume",
        type=int,
        default=0,
        choices=(0, 1),
        help="1: continue from the resume checkpoint if there is one",
    )


def _optimisation_flags(g, learning_rate: float, warmup_ratio: float, lr_schedule: str) -> None:
    g.add_argument(
        "--epochs", type=int, default=1, help="passes over the training data (every row once each)"
    )
    g.add_argument(
        "--max_steps",
        type=int,
        default=None,
        help="cap on optimizer steps; the LR schedule spans the capped total",
    )
    g.add_argument(
        "--stop_after",
        type=int,
        default=None,
        help="stop after this optimizer step, saving a resume checkpoint, as if preempted (the schedule is unchanged)",
    )
    g.add_argument(
        "--accumulation_steps", type=int, default=1, help="micro-batches per optimizer step (token-weighted)"
    )
    g.add_argument(
        "--learning_rate", type=float, default=learning_rate, help=f"peak LR (default {learning_rate:g})"
    )
    g.add_argument(
        "--warmup_ratio",
        type=float,
        default=warmup_ratio,
        help=f"fraction of steps spent warming up (default {warmup_ratio:g})",
    )
    g.add_argument(
        "--lr_schedule",
        default=lr_schedule,
        choices=tuple(SCHEDULES),
        help=SCHEDULE_HELP,
    )
    g.add_argument(
        "--decay_ratio",
        default="0.2",
        help="wsd: fraction of steps in the final decay, or 'stage': decay over exactly the last stage of a staged mixture",
    )
    g.add_argument(
        "--weight_decay", type=float, default=0.1, help="AdamW decoupled weight decay (matrices only)"
    )
    g.add_argument("--grad_clip", type=float, default=1.0, help="max global grad norm (0: off)")


def _runtime_flags(g) -> None:
    add_runtime_flags(g, batch_size=32, batch_help="rows per micro-batch per process", dtype=AUTO)
    g.add_argument(
        "--strategy",
        default="ddp",
        choices=("ddp", "fsdp"),
        help="data parallelism under torchrun: ddp (a full replica per process) or fsdp (FSDP2: weights, "
        "gradients and AdamW state sharded over the processes); fsdp also runs as one process",
    )
    g.add_argument(
        "--activation_checkpointing",
        action="store_true",
        help="recompute each decoder layer's activations in the backward pass (less memory, ~1/3 more compute)",
    )
    g.add_argument(
        "--use_compile",
        dest="compile",
        action="store_const",
        const="on",
        default="auto",
        help="torch.compile the model (default: on CUDA; on CPU where it pays, trainer/parallel.py's rule)",
    )
    g.add_argument(
        "--no_compile",
        dest="compile",
        action="store_const",
        const="off",
        help="train eagerly (no torch.compile)",
    )
    g.add_argument(
        "--loss",
        default="fused",
        choices=LOSSES,
        help="fused: the LM head and cross entropy over chunks of tokens, never the (tokens, vocab) logits "
        "(model/loss.py); plain: logits then F.cross_entropy (the reference)",
    )
    g.add_argument(
        "--num_workers",
        type=int,
        default=0,
        help="DataLoader workers (rows come from a memory map; 0 is fine on CPU)",
    )
    g.add_argument("--seed", type=int, default=42, help="a new model's weights and the row order per epoch")
    g.add_argument(
        "--peak_tflops",
        type=float,
        default=None,
        help="peak per device for MFU (default: GPU table, or a CPU matmul measured at start)",
    )


def _logging_flags(g, wandb_project: str) -> None:
    g.add_argument(
        "--log_interval", type=int, default=10, help="a log line and a metrics record every N steps"
    )
    g.add_argument(
        "--save_interval",
        type=int,
        default=500,
        help="save weights + resume state every N steps (0: only at the end)",
    )
    g.add_argument(
        "--eval_interval",
        type=int,
        default=100,
        help="validation loss per source every N steps (0: only at start and end)",
    )
    g.add_argument(
        "--eval_batches",
        type=int,
        default=20,
        help="validation batches per evaluation (0: the whole validation set)",
    )
    g.add_argument(
        "--early_eval_steps",
        type=int,
        default=0,
        help="also evaluate every --early_eval_interval steps during the first N steps (to see an early loss spike)",
    )
    g.add_argument("--early_eval_interval", type=int, default=1, help="see --early_eval_steps")
    g.add_argument(
        "--max_forgetting",
        action="append",
        default=None,
        metavar="SOURCE=DELTA",
        help="warn when SOURCE's validation loss rises more than DELTA nats/token above the starting "
        "model's (step 0); repeatable; SOURCE 'all' for the overall loss",
    )
    g.add_argument(
        "--stop_on_forgetting",
        action="store_true",
        help="with --max_forgetting: stop at that evaluation, saving a resume checkpoint",
    )
    g.add_argument("--use_wandb", action="store_true", help="also log to Weights & Biases")
    g.add_argument("--wandb_project", default=wandb_project, help="wandb project name")
    g.add_argument("--wandb_run_name", default=None, help="wandb run name (default: wandb's)")


def pretrain_parser(description: str = "Pretrain a miniGPT model") -> argparse.ArgumentParser:
    """train_pretrain.py's flags: the engine's plus the data files."""
    p = engine_parser(
        description,
        save_weight="pretrain",
        learning_rate=5e-4,
        warmup_ratio=0.01,
        lr_schedule="cosine",
        wandb_project="miniGPT-Pretrain",
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data_path", action="append", required=True, help="training JSONL; repeat for several files"
    )
    g.add_argument(
        "--val_path",
        action="append",
        default=None,
        help="validation JSONL; repeat for several (default: none)",
    )
    return p


def midtrain_parser(description: str = "Mid-train a miniGPT checkpoint") -> argparse.ArgumentParser:
    """train_midtrain.py's flags: the engine's plus the mixture and the optimizer start."""
    p = engine_parser(
        description,
        save_weight="midtrain",
        learning_rate=2e-4,
        warmup_ratio=0.05,
        lr_schedule="rewarm",
        wandb_project="miniGPT-MidTrain",
    )
    g = p.add_argument_group("mid-training")
    g.add_argument(
        "--data_config", required=True, help="mixture YAML, e.g. config/data/midtrain/phase1/default.yaml"
    )
    g.add_argument(
        "--use_prepared",
        action="store_true",
        help="read the files scripts/prepare_dataset.py wrote (else prepare in-process, cached)",
    )
    g.add_argument(
        "--prepared_dir",
        default=str(repo_path("dataset")),
        help="where prepared files are (default: dataset/)",
    )
    g.add_argument(
        "--val_path",
        action="append",
        default=None,
        help="validation JSONL ({text, source} rows) instead of the mixture's val split, e.g. one held-out set shared by several runs; repeat for several files",
    )
    g.add_argument(
        "--optimizer_state",
        default="fresh",
        choices=("fresh", "pretrain"),
        help="fresh AdamW moments, or carry over the pretrain run's (from its resume checkpoint)",
    )
    return p


def parse_flags(
    parser: argparse.ArgumentParser, argv: list[str] | None = None
) -> tuple[argparse.Namespace, set[str]]:
    """(the parsed flags, the names of those given on the command line rather than defaulted)."""
    args = parser.parse_args(argv)
    saved = {a.dest: a.default for a in parser._actions}
    try:
        for a in parser._actions:
            a.default = argparse.SUPPRESS
        given = set(vars(parser.parse_args(argv)))
    finally:
        for a in parser._actions:
            a.default = saved[a.dest]
    return args, given


def restore_run_args(
    args: argparse.Namespace, given: set[str], saved: dict, world_size: int, where: object
) -> tuple[argparse.Namespace, list[str]]:
    """A resumed run is the same run: every flag not given comes from the resume state (``saved``,
    the run's effective flag values), except NOT_RESTORED (where the state was found, one-off
    flags). A given flag may differ from the run only if it is in MAY_CHANGE_ON_RESUME (logged)
    or is --epochs / --max_steps (the run length may change; the engine states how the LR
    schedule follows); any other contradiction is a UserError naming the flag, both values and
    what to do. The global batch (batch x accumulation x world size) is kept: without
    --batch_size, the per-process batch is recomputed for a new world size. Returns (args,
    lines to log). ``--dtype auto`` given takes the precision the run resolved at its start (stored).
    """
    out, notes = argparse.Namespace(**vars(args)), []
    for key, old in saved.items():
        if not hasattr(out, key) or key in NOT_RESTORED or key in ("batch_size", "world_size"):
            continue
        now = getattr(out, key)
        if key not in given:
            if now != old:
                setattr(out, key, old)
        elif now == old:
            continue
        elif key == "dtype" and now == AUTO:  # the run's own choice: the precision it resolved at its start
            setattr(out, key, old)
        elif key in MAY_CHANGE_ON_RESUME:
            notes.append(f"--{key} {now} (the run had {old})")
        elif key not in RUN_LENGTH:
            raise UserError(
                f"--{key} {now} contradicts the run being resumed ({where}: {key}={old}); a resumed run "
                f"is the same run: drop --{key}, or start a new run with another --save_weight"
            )
    global_rows = saved.get("batch_size", 0) * saved.get("accumulation_steps", 1) * saved.get("world_size", 1)
    if "batch_size" not in given and global_rows:
        per = global_rows / (out.accumulation_steps * world_size)
        if per != int(per):
            raise UserError(
                f"the run being resumed ({where}) has a global batch of {global_rows} rows, which "
                f"--accumulation_steps {out.accumulation_steps} x {world_size} process(es) cannot divide; "
                "pass --batch_size and --accumulation_steps that multiply to it"
            )
        out.batch_size = int(per)
        if out.batch_size != saved.get("batch_size"):
            notes.append(
                f"Resumed with {world_size} process(es): --batch_size {out.batch_size} keeps the global batch of {global_rows} rows"
            )
    return out, notes
