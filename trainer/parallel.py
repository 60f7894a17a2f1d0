"""Data parallelism for the engine: DDP or FSDP2, activation checkpointing, and sharded state.

- ``ddp``: one full replica per process (torch.nn.parallel.DistributedDataParallel).
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``, as torchtitan and OLMo-core use it):
  every decoder layer and then the root (embedding, tied LM head, final norm) are sharded over
  the processes, so weights, gradients and AdamW state take 1/world of the memory each.

Both compute the same step. Gradients are averaged over ranks (the engine scales each rank's
summed loss by world/N, N the step's targets over all ranks) and clipped on the global norm. The
precision is the one ``--dtype`` names for either: fp32 master weights, the engine's autocast
for bf16/fp16 matmuls, fp32 gradient reductions. FSDP therefore all-gathers fp32 weights
(``MixedPrecisionPolicy(param_dtype=None, reduce_dtype=float32)``): twice the all-gather traffic
of bf16 parameters, in exchange for the same numbers as DDP (a bf16 ``param_dtype`` would also
put the residual stream in bf16).

Activation checkpointing wraps each decoder layer
(``torch.distributed.algorithms._checkpoint.checkpoint_wrapper``, non-reentrant, as torchtitan
does): its activations are recomputed in the backward pass; parameter names in state dicts are
unchanged and the numbers are the same.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from model.errors import UserError
from trainer.runtime import DistInfo

STRATEGIES = ("ddp", "fsdp")


# torch.compile on the CPU pays once the time it saves per step, over the run, exceeds its
# compilation time. COMPILE_RULE holds the rule read off scripts/dev/bench_train.py (and its --step)
# on our 2-core CPUs (README "Benchmarks"): the smallest model (parameters) and run (optimizer steps
# after the first) for which "auto" compiles. Measured on an Intel Xeon with AMX: a compiled step
# of the 26M default model (8 x 512) 0.80 s against 1.34 s eager, of SmolLM2-135M (4 x 512) 2.12 s
# against 3.45 s (bench_train --step, alternating in one process); compilation from a cold cache 50-60 s
# (26M, before the attention backward's kernel) and 119-125 s (SmolLM2-135M: it paid after ~89 steps in
# whole trainer runs; 157 s and ~130 steps before model/attention.py). 20M: the 26M default model compiles
# (it was 50M until that was measured); smaller models were not measured and stay eager (the demo's
# 1M, the tests'). On an AMD EPYC with AVX2 only (float32 under --dtype auto) it holds too: SmolLM2-135M's
# compiled step 11.8 s against 15.0 s eager, its first step 132 s: paid after ~37 steps. CUDA always
# compiles under "auto".
COMPILE_RULE = {"min_params": 20_000_000, "min_steps": 200}


def compile_choice(setting: str, device: torch.device, params: int, steps: int) -> tuple[bool, str]:
    """(compile or not, why) for ``--use_compile`` ("on"), ``--no_compile`` ("off") or neither ("auto":
    on CUDA; on the CPU for at least COMPILE_RULE's parameters and steps)."""
    if setting == "on":
        return True, "--use_compile"
    if setting == "off":
        return False, "--no_compile"
    if device.type == "cuda":
        return True, "the CUDA default; --no_compile to train eagerly"
    big, long = params >= COMPILE_RULE["min_params"], steps >= COMPILE_RULE["min_steps"]
    if big and long:
        return True, (
            f"CPU, {params / 1e6:.0f}M parameters and {steps} steps: compilation pays (COMPILE_RULE); "
            "--no_compile to train eagerly"
        )
    why = "fewer parameters" if not big else "fewer steps"
    return False, (
        f"eager on the CPU for {why} than compilation pays for ({COMPILE_RULE['min_params'] / 1e6:.0f}M "
        f"parameters and {COMPILE_RULE['min_steps']} steps, trainer/parallel.py COMPILE_RULE); --use_compile to compile"
    )


def disable_compile() -> None:
    """Run every module torch.compile wrapped eagerly from now on (the fallback when compiling fails)."""
    import torch._dynamo

    torch._dynamo.config.disable = True


class Parallel:
    """The model as the step runs it (``train_model``), and what each strategy needs around it."""

    def __init__(
        self,
        model: Any,  # MiniGPTForCausalLM; FSDP2 makes it an FSDPModule (reshard, set_requires_gradient_sync)
        strategy: str,
        info: DistInfo,
        device: torch.device,
        activation_checkpointing: bool = False,
        compile: bool = False,
    ):
        if strategy not in STRATEGIES:
            raise UserError(f"--strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
        self.model, self.strategy, self.info, self.device = model, strategy, info, device
        self.train_model: Any
        layers = model.model.layers
        if activation_checkpointing:
            from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

            for i, layer in enumerate(layers):
                layers[i] = checkpoint_wrapper(layer)
        if strategy == "fsdp":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            if compile:  # per layer, before sharding (torchtitan's order)
                for i, layer in enumerate(layers):
                    layers[i] = torch.compile(layer)
            mesh = init_device_mesh(device.type, (info.world_size,))
            mp = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)
            for layer in layers:
                fully_shard(layer, mesh=mesh, mp_policy=mp)
            fully_shard(model, mesh=mesh, mp_policy=mp)  # the root holds the tied embedding / LM head
            self.train_model = model
        else:
            self.train_model = torch.compile(model) if compile else model
            if info.enabled:
                self.train_model = DDP(
                    self.train_model, device_ids=[device.index] if device.type == "cuda" else None
                )

    # ----------------------------------------------------------------- the step

    def accumulating(self, sync: bool):
        """The context of one micro-batch's backward: gradients are reduced over ranks only on the
        last micro-batch of a step (DDP's no_sync; FSDP's set_requires_gradient_sync)."""
        if self.strategy == "fsdp":
            self.model.set_requires_gradient_sync(sync)
            return contextlib.nullcontext()
        if self.info.enabled and not sync:
            return self.train_model.no_sync()
        return contextlib.nullcontext()

    def after_eval(self) -> None:
        """FSDP leaves the root's weights gathered after a no-grad forward: shard them again."""
        if self.strategy == "fsdp":
            self.model.reshard()

    # ----------------------------------------------------------------- state

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Every weight, full-size on the CPU, on rank 0 ({} on the others); a collective under FSDP.

        The weights file stays one file in the single-process format: gathering on rank 0 costs one
        model copy in host memory there, and every later script reads it unchanged.
        """
        if self.strategy != "fsdp":
            return self.model.state_dict() if self.info.is_main else {}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = cast(dict[str, torch.Tensor], get_model_state_dict(self.model, options=options))
        if full and self.model.config.tie_word_embeddings:  # one tensor, as in the module, not two copies
            full["lm_head.weight"] = full["model.embed_tokens.weight"]
        return full

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict | None:
        """The optimizer state for a single-file resume (DDP: rank 0's copy); None under FSDP,
        whose state is sharded and saved by :meth:`save_sharded`."""
        if self.strategy == "fsdp":
            return None
        return optimizer.state_dict() if self.info.is_main else None

    def save_sharded(self, optimizer: torch.optim.Optimizer, folder: Path) -> None:
        """FSDP: each rank writes its shard of the AdamW state into ``folder`` (torch.distributed.
        checkpoint), which must not exist yet; the resume file then points to it."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        dcp.save({"optim": get_optimizer_state_dict(self.model, optimizer)}, checkpoint_id=str(folder))

    def load_sharded(self, optimizer: torch.optim.Optimizer, folder: Path) -> None:
        """FSDP: the AdamW state from a folder of :meth:`save_sharded`, resharded to this world size."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        if not folder.is_dir():
            raise UserError(f"{folder}: the sharded optimizer state of this resume file is missing")
        state = {"optim": get_optimizer_state_dict(self.model, optimizer)}
        dcp.load(state, checkpoint_id=str(folder))
        set_optimizer_state_dict(self.model, optimizer, state["optim"])

    def local_numel(self, optimizer: torch.optim.Optimizer) -> tuple[int, int]:
        """(parameters, optimizer-state elements) this rank holds: 1/world of each under FSDP."""

        def local(t: torch.Tensor) -> torch.Tensor:
            return t.to_local() if hasattr(t, "to_local") else t

        params = sum(local(p).numel() for p in self.model.parameters())
        state = sum(
            local(v).numel()
            for s in optimizer.state.values()
            for v in s.values()
            if torch.is_tensor(v) and v.dim() > 0
        )
        return params, state


def world_group_for_one_process(device: torch.device) -> None:
    """FSDP needs a process group even in a single process (no torchrun): a world of one."""
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
