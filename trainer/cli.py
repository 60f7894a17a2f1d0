"""What every script shares at its entry point: error handling and logging setup."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from model.errors import UserError


class _TqdmHandler(logging.StreamHandler):
    """Log through tqdm.write so log lines do not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # noqa: BLE001 - logging must never crash the run
            self.handleError(record)


def setup_logging(rank: int = 0) -> None:
    """Plain message logging on rank 0; warnings and errors only on the other ranks."""
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)


def run(main: Callable[[], object]) -> None:
    """Run a script's main(): a UserError becomes one line on stderr and exit status 2."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


# --------------------------------------------------------------------------- flags shared by several scripts


def add_save_dir_flag(group, help: str = "weights folder (default: out/ at the repo root)") -> None:
    """--save_dir: the folder weights files live in (written by the trainers, read by the others)."""
    from trainer.paths import repo_path

    group.add_argument("--save_dir", default=str(repo_path("out")), help=help)


def add_runtime_flags(group, *, batch_size: int, batch_help: str, dtype: str) -> None:
    """--batch_size, --device, --dtype: how a script runs the model, the same meaning everywhere.

    The values are checked by trainer.runtime.resolve_device / resolve_dtype.
    """
    group.add_argument(
        "--batch_size", type=int, default=batch_size, help=f"{batch_help} (default {batch_size})"
    )
    group.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)"
    )
    group.add_argument(
        "--dtype",
        default=dtype,
        help=f"auto | bfloat16 | float16 | float32: autocast precision, on CPU too; auto is bfloat16, float32 "
        f"on a CPU without bf16 matmul instructions (AVX-512 BF16 or AMX), float16 on a GPU without bf16 "
        f"(default {dtype})",
    )
