"""Where and how a process computes: ranks under torchrun, the device, the precision.

The one helper for each: :func:`init_distributed` / :func:`cleanup` and the reductions,
:func:`resolve_device` (validated ``--device``), :data:`DTYPES` / :func:`resolve_dtype`
(validated ``--dtype``, "auto" included; :func:`precision_note` says what it chose) and :func:`autocast`
(the one precision context, training and evaluation).
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dataset import once
from model.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(flag: str | None) -> torch.device:
    """--device: 'cuda' if available else 'cpu' by default; a bad name is a UserError."""
    if not flag:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(flag)
    except RuntimeError:
        raise UserError(f"--device {flag!r}: unknown device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {flag}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {flag}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type not in ("cpu", "mps"):
        raise UserError(f"--device {flag}: unsupported device type; use cpu or cuda")
    return device


DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
AUTO = "auto"


def dtype_name(dtype: torch.dtype) -> str:
    """A torch dtype as ``--dtype`` and the records name it: torch.bfloat16 -> "bfloat16"."""
    return str(dtype).removeprefix("torch.")


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 in hardware: AVX-512 BF16 or AMX tiles (torch.cpu's own checks,
    the ones oneDNN and inductor use). Without them (AVX2-only CPUs: most laptops, AMD before Zen 4)
    torch emulates bf16 matmuls: on a 2-core AMD EPYC with AVX2 a 2048^3 bf16 matmul ran at ~1 GFLOP/s
    against ~80 in float32, an autocast bf16 ``nn.Linear`` (1024 x 128 -> 512) 5x slower than float32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_dtype(name: str, device: torch.device, flag: str = "--dtype", auto: bool = True) -> torch.dtype:
    """A ``--dtype`` value as a torch dtype. "auto" (unless ``auto=False``: a stored dtype must not
    depend on the machine): bfloat16, except float32 on a CPU without bf16 matmul instructions
    (:func:`cpu_has_bf16_matmul`) and float16 on a GPU without bf16.

    Raises UserError: an unknown name, or bfloat16 on a GPU without it.
    """
    if name == AUTO and auto:
        if device.type == "cpu" and not cpu_has_bf16_matmul():
            return torch.float32
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if name not in DTYPES:
        raise UserError(
            f"{flag} {name!r}: unknown dtype; use one of {', '.join([AUTO] * auto + list(DTYPES))}"
        )
    dtype = DTYPES[name]
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"{flag} bfloat16: this GPU has no bf16 support; use {flag} float16")
    return dtype


def precision_note(name: str, dtype: torch.dtype, device: torch.device, flag: str = "--dtype") -> str:
    """The resolved precision as a run's log says it, e.g. "float32 (--dtype auto: this CPU has no
    bf16 matmul instructions)"; bfloat16 asked for on such a CPU says it runs emulated."""
    label = dtype_name(dtype)
    emulated = device.type == "cpu" and dtype == torch.bfloat16 and not cpu_has_bf16_matmul()
    if name == AUTO:
        why = {
            torch.float32: "this CPU has no bf16 matmul instructions (AVX-512 BF16 or AMX)",
            torch.float16: "this GPU has no bf16",
        }.get(dtype)
        return f"{label} ({flag} auto{': ' + why if why else ''})"
    if emulated:
        return (
            f"{label} (this CPU has no bf16 matmul instructions (AVX-512 BF16 or AMX): bf16 matmuls run "
            f"emulated; a training step took 12-42x its float32 time on such a CPU; {flag} auto picks float32)"
        )
    return label


def autocast(device: torch.device, dtype: torch.dtype):
    """The one precision context: autocast to bf16/fp16 (CPU included), nothing for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def env_rank_world() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them in the environment, before any process group."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_flag: str | None) -> tuple[DistInfo, torch.device]:
    """Start the process group when launched by torchrun (nccl on GPU, gloo on CPU)."""
    device = resolve_device(device_flag)
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return info, device


def cleanup() -> None:
    """Destroy the process group (torch.distributed's documented shutdown), after freeing what may
    still hold collective work: a DDP reducer or FSDP state caught in a reference cycle would
    otherwise be freed during interpreter shutdown, where gloo's worker threads abort the process
    ("terminate called without an active exception"). The trainers call it in ``finally``; on
    the normal path :func:`trainer.engine.fit` has already waited for every rank."""
    if dist.is_available() and dist.is_initialized():
        once.release()
        gc.collect()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place); a no-op in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def per_rank(*values: float) -> list[tuple[float, ...]]:
    """Every rank's ``values``, in rank order, on every rank (one all-reduce; float64)."""
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    table = torch.zeros(world, len(values), dtype=torch.float64)
    table[rank] = torch.tensor(values, dtype=torch.float64)
    all_reduce_sum(table)
    return [tuple(row) for row in table.tolist()]
