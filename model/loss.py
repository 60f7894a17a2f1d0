"""The LM head and the cross entropy in one pass over chunks of tokens, without the (tokens, vocab) logits.

``F.cross_entropy(lm_head(h).float(), y)`` materialises the logits of every token at once: in the
compute dtype, again in fp32, the fp32 log-softmax saved for the backward and its fp32 gradient. At
4 x 1024 tokens and Qwen's 151,936-id vocabulary that is 2.5 GB per fp32 copy. :func:`linear_cross_entropy`
computes the same per-token losses and gradients over chunks of ``rows`` tokens, holding one chunk's
logits at a time.

The method is Liger-Kernel's FusedLinearCrossEntropy (linkedin/Liger-Kernel,
``src/liger_kernel/ops/fused_linear_cross_entropy.py``, after mgmalek/efficient_cross_entropy),
written in PyTorch so that it runs on CPU and CUDA: while the forward pass has a chunk's logits, it
also computes that chunk's gradients with respect to the hidden states, the weight and the bias, for
the loss ``grad_scale * losses.sum()``, and the backward pass hands them on. Three matmuls per token,
as without chunking; the logits' gradient is scaled before its cast to the matmul dtype, as autograd
scales it in the plain path, so a training step's bf16 gradients are rounded as they were.

The result is per-token losses, and their gradient is exact for any incoming gradient vector, not
only for the sum the forward prepared: an incoming gradient that is the same for every counted token
(``losses.sum() * c``, recognised without reading the values when it is an expanded scalar, as
``sum()``'s backward gives) rescales the prepared gradients by ``c / grad_scale``; one that varies
by token (a weighted sum) makes the backward recompute each chunk's logits and fold the per-token
gradient into the logits' gradient before it is summed over tokens (Liger's ``reduction="none"``
path), at the cost of the forward's work again. Per-token losses serve both callers with one
function: the training step sums them, validation ``bincount``s them per source under no_grad
(where no gradient work is done).
"""

from __future__ import annotations

import math

import torch
from torch import nn

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index, and dataset.packed's
# Bytes of one chunk's transient logits (see :func:`chunk_rows`). Measured on our 2-core AVX-512
# bf16 CPU with scripts/dev/bench_loss.py (the time vs chunk size table): smaller chunks cost
# time there, because each chunk adds its (vocab, hidden) weight gradient into the fp32 total.
DEFAULT_CHUNK_BYTES = 512 * 2**20


def chunk_rows(vocab_size: int, compute_dtype: torch.dtype, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Tokens per chunk such that one chunk's transient logits fit ``chunk_bytes``, at least 1.

    A chunk of r tokens holds r x vocab fp32 logits (the log-sum-exp, then the softmax and the
    logits' gradient, in place) and, when the matmuls run in a 16-bit dtype, r x vocab 16-bit
    logits (cast to fp32) then their 16-bit gradient (cast for the two gradient matmuls): 6 bytes
    per token and vocabulary entry in bf16/fp16, 4 in fp32. E.g. 512 MiB at vocab 151,936 in bf16:
    588 tokens; at vocab 49,152: 1,820.
    """
    per_row = vocab_size * (
        4 + (0 if compute_dtype == torch.float32 else torch.finfo(compute_dtype).bits // 8)
    )
    return max(1, chunk_bytes // per_row)


@torch.compiler.disable  # opaque to torch.compile: a compiled model calls it as it is
def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    rows: int | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    grad_scale: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """Per-token cross entropy of the linear head ``hidden @ weight.T + bias`` against ``targets``.

    Equal to ``F.cross_entropy(F.linear(hidden, weight, bias).float(), targets,
    ignore_index=ignore_index, reduction="none")`` and its gradients, computed over chunks of
    ``rows`` tokens.

    Args:
        hidden: (N, H) final hidden states (fp32, bf16 or fp16).
        weight: (V, H) LM head weight; may be the input embedding's weight (tied): its gradient is
            returned to that one tensor and autograd adds it to the embedding's.
        targets: (N,) integer token ids in [0, V), or ``ignore_index`` for positions not counted.
        bias: optional (V,) LM head bias (none of our models has one).
        rows: tokens per chunk; None: :func:`chunk_rows` (``chunk_bytes`` of transient logits).
        grad_scale: the factor the caller multiplies ``losses.sum()`` by before backward (a
            training step's 1 / target count): the forward prepares that gradient. A float or a
            0-dim tensor (what a compiled model passes, so that its value is no compile guard). Any other
            incoming gradient is still exact (module docstring); this one is the fastest, and
            rounded in bf16 as in the plain path.

    Returns:
        (N,) fp32 losses in nats (fp64 for fp64 inputs), 0 where the target is ignored. Differentiable with respect to
        ``hidden``, ``weight`` and ``bias`` for any incoming gradient (module docstring).

    Precision: the matmuls run in the caller's autocast dtype when autocast is on for the
    tensors' device (as ``nn.Linear`` would under it: inputs cast to it), else in the promoted
    dtype of ``hidden`` and ``weight``; the log-sum-exp, the softmax and the gradient totals are
    fp32. Gradients come back in each input's dtype.

    Memory, beyond the inputs: one chunk's logits (``rows`` x V x 6 bytes in bf16, x 4 in fp32);
    the weight cast to the compute dtype when it differs (V x H, as autocast's cast); with
    gradients, the weight's gradient total in fp32 (V x H x 4) plus, in bf16, one chunk's
    (V, H) product before it is added, and the (N, H) hidden gradient, held from the forward to
    the backward. Never the (N, V) logits in any dtype.

    Raises:
        ValueError: mismatched shapes, ``rows`` < 1, ``grad_scale`` 0 or not finite, or a counted
            target outside [0, V).
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"linear_cross_entropy: hidden (N, H) and weight (V, H) expected, got {tuple(hidden.shape)} "
            f"and {tuple(weight.shape)}"
        )
    if targets.shape != hidden.shape[:1] or targets.is_floating_point():
        raise ValueError(
            f"linear_cross_entropy: targets must be (N,) = {tuple(hidden.shape[:1])} integer ids, got "
            f"{tuple(targets.shape)} {targets.dtype}"
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(
            f"linear_cross_entropy: bias must be (V,) = {tuple(weight.shape[:1])}, got {tuple(bias.shape)}"
        )
    grad_scale = float(grad_scale)
    dt = compute_dtype(hidden, weight)
    n_rows = rows if rows is not None else chunk_rows(weight.shape[0], dt, chunk_bytes)
    if n_rows < 1:
        raise ValueError(f"linear_cross_entropy: rows must be >= 1, got {n_rows}")
    if not math.isfinite(grad_scale) or grad_scale == 0:
        raise ValueError(f"linear_cross_entropy: grad_scale must be finite and nonzero, got {grad_scale}")
    grad = torch.is_grad_enabled()  # the forward runs without it; no gradient work under no_grad
    return _LinearCrossEntropy.apply(
        hidden, weight, bias, targets, ignore_index, n_rows, dt, grad, float(grad_scale)
    )


def head_losses(lm_head: nn.Linear, hidden: torch.Tensor, targets: torch.Tensor, **kw) -> torch.Tensor:
    """:func:`linear_cross_entropy` of an ``nn.Linear`` head over hidden states (..., H) and targets
    (...): per-token fp32 losses of the targets' shape. ``kw``: ``rows``, ``chunk_bytes``, ``ignore_index``."""
    losses = linear_cross_entropy(
        hidden.reshape(-1, hidden.shape[-1]), lm_head.weight, targets.reshape(-1), bias=lm_head.bias, **kw
    )
    return losses.view(targets.shape)


def compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The matmuls' dtype: autocast's for the device when it is on (nn.Linear's under autocast), else
    the promoted dtype of the two."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(hidden.dtype, weight.dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ignore_index, rows, dt, grad, grad_scale):
        n_all = hidden.shape[0]
        counted = (targets != ignore_index).nonzero().squeeze(1)
        every = counted.numel() == n_all  # then no gather / scatter
        y = targets if every else targets[counted]
        if y.numel() and bool((y.min() < 0) | (y.max() >= weight.shape[0])):
            raise ValueError(
                f"linear_cross_entropy: a target is outside [0, {weight.shape[0]}) and is not ignore_index "
                f"{ignore_index}"
            )
        need = tuple(grad and n for n in ctx.needs_input_grad[:3])
        h = _rows(hidden, counted, every)
        out = _chunks(h, weight, bias, y, dt, rows, grad_scale, need)
        losses = out[0] if every else out[0].new_zeros(n_all).index_copy_(0, counted, out[0])
        ctx.dims = (rows, dt, every, grad_scale)
        ctx.grads = out[1:]  # for grad_scale * losses.sum(); used by the first backward only
        ctx.save_for_backward(hidden, weight, bias, y, counted)
        return losses

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_losses):
        rows, dt, every, grad_scale = ctx.dims
        hidden, weight, bias, y, counted = ctx.saved_tensors
        need = ctx.needs_input_grad[:3]
        go = grad_losses if every else grad_losses[counted]
        # an expanded scalar (sum()'s backward) is uniform without reading it; else compare values
        uniform = grad_losses.stride(0) == 0 or go.numel() == 0 or bool((go == go[0]).all())
        grads, ctx.grads = ctx.grads, None  # in-place rescaling below: never hand them out twice
        if not uniform:
            _, gh, gw, gb = _chunks(_rows(hidden, counted, every), weight, bias, y, dt, rows, go, need)
        else:
            if grads is None:  # a second backward through a retained graph: prepare them again
                grads = _chunks(_rows(hidden, counted, every), weight, bias, y, dt, rows, grad_scale, need)[
                    1:
                ]
            gh, gw, gb = grads
            if go.numel():
                c = go[0] / grad_scale  # 1 for the prepared sum: then exact
                for g in grads:
                    if g is not None:
                        g.mul_(c)
        if gh is not None:
            gh = gh.to(hidden.dtype)
            if not every:
                gh = gh.new_zeros(hidden.shape).index_copy_(0, counted, gh)
        gw = gw.to(weight.dtype) if gw is not None else None
        gb = gb.to(bias.dtype) if gb is not None else None
        return gh, gw, gb, None, None, None, None, None, None


def _rows(hidden: torch.Tensor, counted: torch.Tensor, every: bool) -> torch.Tensor:
    return hidden if every else hidden[counted]


def _chunks(h, weight, bias, y, dt, rows, go, need):
    """Losses of the counted tokens (n,) fp32 and, for each of hidden/weight/bias that ``need``
    says, the gradient (fp32, fp64 for fp64 ``dt``; None where not needed) of sum(go * losses),
    ``go`` a float or an (n,) tensor. Runs with autocast off: every operand is cast to ``dt`` here."""
    n, v = h.shape[0], weight.shape[0]
    fp32 = torch.promote_types(dt, torch.float32)  # fp64 stays fp64 (for gradcheck)
    with torch.autocast(h.device.type, enabled=False):
        hc_all, w = h.to(dt), weight.to(dt)
        b = bias.to(dt) if bias is not None else None
        losses = torch.empty(n, dtype=fp32, device=h.device)
        gh = torch.empty(n, h.shape[1], dtype=fp32, device=h.device) if need[0] else None
        gw = torch.zeros(v, h.shape[1], dtype=fp32, device=h.device) if need[1] else None
        gb = torch.zeros(v, dtype=fp32, device=h.device) if need[2] and bias is not None else None
        for s in range(0, n, rows):
            hc, yc = hc_all[s : s + rows], y[s : s + rows]
            logits = hc @ w.T if b is None else torch.addmm(b, hc, w.T)
            z = logits.to(fp32)  # the same tensor when dt is fp32
            del logits
            lse = torch.logsumexp(z, dim=1)
            losses[s : s + rows] = lse - z.gather(1, yc[:, None]).squeeze(1)
            if not any(need):
                continue
            # d loss_i / d logits_i = softmax_i - onehot(y_i): in place on the fp32 logits
            z.sub_(lse[:, None]).exp_()
            z.scatter_add_(1, yc[:, None], z.new_full((len(yc), 1), -1.0))
            if not isinstance(go, float):
                z.mul_(go[s : s + rows, None])
            elif go != 1.0:
                z.mul_(go)
            if gb is not None:
                gb += z.sum(0)
            g = z.to(dt)
            del z
            if gh is not None:
                gh[s : s + rows] = g @ w
            if gw is not None:
                if dt == fp32:  # in place
                    gw.addmm_(g.T, hc)
                else:  # no mixed-dtype addmm on CPU: the chunk's product in dt, added in fp32
                    gw += g.T @ hc
    return losses, gh, gw, gb
