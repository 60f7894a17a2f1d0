"""model/loss.py: the chunked LM head + cross entropy against the plain path
``F.cross_entropy(F.linear(h, W).float(), y, reduction="none")`` it replaces.

Tolerances: in fp32, every loss and gradient element within 1e-5 of the plain path's, relative to
that tensor's largest magnitude (``atol = 1e-5 * max|reference|``, ``rtol = 1e-5``): the two sum the
same fp32 products in different orders. In bf16 the comparison is the one rounding allows (see
test_bf16_autocast_is_as_close_to_plain_as_plain_is_to_fp32).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import model.attention
import model.loss
from model import MiniGPTForCausalLM, ModelConfig
from model.loss import IGNORE_INDEX, chunk_rows, head_losses, linear_cross_entropy

pytestmark = pytest.mark.usefixtures("one_thread")

N, H, V = 50, 16, 300  # 50 tokens: chunks of 7 and 16 leave a short last chunk


def inputs(seed: int = 0, n: int = N, ignore_every: int = 4, bias: bool = False):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, H, generator=g)
    w = torch.randn(V, H, generator=g) * 0.3
    b = torch.randn(V, generator=g) * 0.1 if bias else None
    y = torch.randint(0, V, (n,), generator=g)
    y[::ignore_every] = IGNORE_INDEX
    return h, w, b, y


def plain(h, w, y, b=None):
    return F.cross_entropy(F.linear(h, w, b).float(), y, ignore_index=IGNORE_INDEX, reduction="none")


def run(fn, h0, w0, b0, y, weights=None, scale=1.0, autocast=False, dtype=torch.bfloat16):
    """Losses and the gradients of sum(weights * losses) * scale (weights None: the plain sum),
    the forward under autocast to ``dtype`` when ``autocast``."""
    h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    b = b0.clone().requires_grad_() if b0 is not None else None
    with torch.autocast("cpu", dtype=dtype, enabled=autocast):
        losses = fn(h, w, y, b)
    total = losses.sum() if weights is None else (losses * weights).sum()
    (total * scale).backward()
    return [losses.detach(), h.grad, w.grad] + ([b.grad] if b is not None else [])


def assert_close_fp32(actual, expected):
    for a, e in zip(actual, expected, strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5 * float(e.abs().max().clamp(min=1e-30)))


@pytest.mark.parametrize("rows", [1, 7, 16, N, 4 * N])
@pytest.mark.parametrize("bias", [False, True])
def test_fp32_losses_and_gradients_equal_the_plain_path(rows, bias):
    h, w, b, y = inputs(bias=bias)
    scale = 1 / int((y != IGNORE_INDEX).sum())
    expected = run(plain, h, w, b, y, scale=scale)
    assert float(expected[0][y == IGNORE_INDEX].abs().max()) == 0.0  # ignored targets: 0 loss
    fast = run(
        lambda h, w, y, b: linear_cross_entropy(h, w, y, bias=b, rows=rows, grad_scale=scale),
        h,
        w,
        b,
        y,
        scale=scale,
    )
    assert_close_fp32(fast, expected)
    # the forward prepared grad_scale * sum; a backward of another multiple of the sum rescales it
    other = run(lambda h, w, y, b: linear_cross_entropy(h, w, y, bias=b, rows=rows), h, w, b, y, scale=scale)
    assert_close_fp32(other, expected)


@pytest.mark.parametrize("rows", [1, 7, N])
def test_a_weighted_sum_of_the_losses_has_exact_gradients(rows):
    """Per-token incoming gradients (a weighted sum, as per-source weights would give): the
    backward recomputes the chunks with them folded in."""
    h, w, b, y = inputs(seed=1, bias=True)
    weights = torch.rand(N, generator=torch.Generator().manual_seed(2)) + 0.5
    expected = run(plain, h, w, b, y, weights)
    fast = run(lambda h, w, y, b: linear_cross_entropy(h, w, y, bias=b, rows=rows), h, w, b, y, weights)
    assert_close_fp32(fast, expected)


def test_gradcheck_in_fp64():
    """The analytical gradient against finite differences, for per-token output gradients
    (gradcheck's one-hot vectors: the recompute path) and for a scaled sum (the prepared path)."""
    g = torch.Generator().manual_seed(3)
    h = torch.randn(9, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(13, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(13, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 13, (9,), generator=g)
    y[[0, 4]] = IGNORE_INDEX
    assert torch.autograd.gradcheck(lambda h, w, b: linear_cross_entropy(h, w, y, bias=b, rows=4), (h, w, b))
    assert torch.autograd.gradcheck(
        lambda h, w, b: linear_cross_entropy(h, w, y, bias=b, rows=4, grad_scale=0.25).sum() * 0.25, (h, w, b)
    )


def test_every_target_ignored_gives_zero_losses_and_zero_gradients():
    h, w, _, y = inputs()
    y[:] = IGNORE_INDEX
    fast = run(lambda h, w, y, b: linear_cross_entropy(h, w, y, rows=7), h, w, None, y)
    for t in fast:
        assert float(t.abs().max()) == 0.0
    assert_close_fp32(fast, run(plain, h, w, None, y))


def test_a_chunk_of_ignored_targets_and_a_retained_graph():
    """The first 16 targets (one whole chunk of 16) ignored; a second backward through the retained
    graph gives the same gradients as the first (the forward's are handed out once, then recomputed)."""
    h, w, _, y = inputs(ignore_every=5)
    y[:16] = IGNORE_INDEX
    expected = run(plain, h, w, None, y)
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    losses = linear_cross_entropy(hh, ww, y, rows=16)
    first = torch.autograd.grad(losses.sum(), (hh, ww), retain_graph=True)
    second = torch.autograd.grad(losses.sum(), (hh, ww))
    assert_close_fp32([losses.detach(), *first], expected)
    assert_close_fp32([losses.detach(), *second], expected)


class TinyTied(nn.Module):
    """An embedding and an LM head that are one Parameter (tie_word_embeddings)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, H)
        self.head = nn.Linear(H, V, bias=False)
        self.head.weight = self.embed.weight

    def hidden(self, x):
        return torch.tanh(self.embed(x))


def test_tied_weights_get_both_gradients():
    """fp32: equal to the plain path; bf16 autocast: within the plain path's own bf16 error
    (Frobenius norm, as in test_bf16_autocast_is_as_close_to_plain_as_plain_is_to_fp32)."""
    torch.manual_seed(4)
    m = TinyTied()
    assert m.head.weight is m.embed.weight
    x = torch.randint(0, V, (N,))
    y = torch.roll(x, -1)
    y[-1] = IGNORE_INDEX
    grads = {}
    for fast in (False, True):
        for autocast in (False, True):
            m.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                h = m.hidden(x)
                losses = head_losses(m.head, h, y, rows=7) if fast else plain(h, m.head.weight, y)
            losses.sum().backward()
            assert m.embed.weight.grad is not None
            grads[fast, autocast] = m.embed.weight.grad.clone()
    used = torch.zeros(V, dtype=torch.bool)
    used[x] = True  # the embedding's own gradient lands on these rows; every row gets the head's
    for g in grads.values():
        assert float(g[used].abs().max()) > 0 and float(g[~used].abs().max()) > 0
    assert_close_fp32([grads[True, False]], [grads[False, False]])
    bf16_error = float((grads[False, True] - grads[False, False]).norm())
    assert 0 < float((grads[True, True] - grads[False, True]).norm()) <= bf16_error


def test_the_model_head_with_tied_embeddings_trains_as_the_plain_loss():
    """Through MiniGPTForCausalLM (tied embedding): every parameter's gradient, fp32."""
    cfg = ModelConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(5)
    model = MiniGPTForCausalLM(cfg)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    x = torch.randint(0, V, (2, 24))
    y = torch.roll(x, -1, dims=1)
    y[:, -1] = IGNORE_INDEX
    grads = []
    for fast in (False, True):
        model.zero_grad()
        if fast:
            losses = head_losses(model.lm_head, model.forward_hidden(x), y, rows=10)
        else:
            logits = model(x).float().flatten(0, 1)
            losses = F.cross_entropy(
                logits, y.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
            ).view_as(y)
        assert losses.shape == y.shape
        losses.sum().backward()
        grads.append([losses.detach()] + [torch.clone(p.grad) for p in model.parameters()])
    assert_close_fp32(grads[1], grads[0])


def test_the_compiled_softmax_kernel_equals_the_plain_path():
    """compiled=True (what a compiled model passes): the per-chunk softmax and the logits' gradient
    in one torch.compile'd kernel (model.loss._softmax_grad). fp32: the plain path's losses and
    gradients (1e-5), over chunks of 7 (a short last chunk, ignored targets) and of all tokens, for
    the prepared sum and a weighted sum; bf16 autocast: within the plain bf16 path's own error, as
    the eager fused path (test_bf16_autocast_is_as_close_to_plain_as_plain_is_to_fp32)."""
    h, w, _, y = inputs(seed=7)
    scale = 1 / int((y != IGNORE_INDEX).sum())
    weights = torch.rand(N, generator=torch.Generator().manual_seed(8)) + 0.5
    for rows in (7, N):

        def fast(h, w, y, b, r=rows):
            return linear_cross_entropy(h, w, y, rows=r, grad_scale=scale, compiled=True)

        assert_close_fp32(run(fast, h, w, None, y, scale=scale), run(plain, h, w, None, y, scale=scale))
        assert_close_fp32(run(fast, h, w, None, y, weights), run(plain, h, w, None, y, weights))
    fp32 = run(plain, h, w, None, y, scale=scale)
    bf16 = run(plain, h, w, None, y, scale=scale, autocast=True)
    fused = run(lambda h, w, y, b: linear_cross_entropy(h, w, y, rows=N, grad_scale=scale, compiled=True),
                h, w, None, y, scale=scale, autocast=True)  # fmt: skip
    for name, a, p, f in zip(("losses", "hidden grad", "weight grad"), fp32, bf16, fused, strict=True):
        assert f.dtype == p.dtype == a.dtype
        bf16_error = float((p - a).norm())
        assert bf16_error > 0 and float((f - p).norm()) <= bf16_error, name


@pytest.mark.parametrize("documents", [False, True], ids=["causal", "documents"])
def test_a_compiled_model_computes_its_loss_and_attention_with_the_compiled_kernels(monkeypatch, documents):
    """torch.compile'd MiniGPTForCausalLM with targets (and document ids): its losses and every
    gradient those of the eager model (fp32, 1e-5), the loss's softmax passes and the attention's
    backward run by their compiled kernels (made on first use, by the compiled model only)."""
    cfg = ModelConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(9)
    eager = MiniGPTForCausalLM(cfg)
    compiled = MiniGPTForCausalLM(cfg)
    compiled.load_state_dict(eager.state_dict())
    x = torch.randint(0, V, (2, 24))
    y = torch.roll(x, -1, dims=1)
    y[:, -1] = IGNORE_INDEX
    docs = torch.tensor([[0] * 10 + [1] * 14, [3] * 24]) if documents else None
    monkeypatch.setattr(model.loss, "_KERNEL", None)
    monkeypatch.setattr(model.attention, "_KERNEL", None)
    got = []
    for m, call in ((eager, eager), (compiled, torch.compile(compiled))):
        losses = call(x, doc_ids=docs, targets=y)
        losses.sum().backward()
        got.append([losses.detach()] + [torch.clone(p.grad) for p in m.parameters()])
        assert (model.loss._KERNEL is not None) == (model.attention._KERNEL is not None) == (m is compiled)
    assert_close_fp32(got[1], got[0])


def test_bf16_autocast_is_as_close_to_plain_as_plain_is_to_fp32():
    """Under bf16 autocast the fused path differs from the plain bf16 path by no more than the
    plain bf16 path differs from fp32 (same inputs), for the losses and both gradients, measured
    in the Frobenius norm of each difference.

    The losses and the hidden-state gradient round exactly as the plain path does (same bf16
    logits; the logits' gradient scaled by grad_scale, then cast). The weight gradient is the sum
    of one bf16-rounded product per chunk, where the plain path rounds one product over all
    tokens: over 60 seeds of this shape its difference from the plain path was 0.79-0.88 of the
    plain path's from fp32 in the Frobenius norm (the largest single element exceeded it in about
    one seed in five, so the norm is the comparison asserted)."""
    h, w, _, y = inputs(seed=6, n=96, ignore_every=7)
    scale = 1 / int((y != IGNORE_INDEX).sum())
    fp32 = run(plain, h, w, None, y, scale=scale)
    bf16 = run(plain, h, w, None, y, scale=scale, autocast=True)
    fused = run(lambda h, w, y, b: linear_cross_entropy(h, w, y, rows=20, grad_scale=scale), h, w, None, y,
                scale=scale, autocast=True)  # fmt: skip
    for name, a, p, f in zip(("losses", "hidden grad", "weight grad"), fp32, bf16, fused, strict=True):
        assert f.dtype == p.dtype == a.dtype
        bf16_error = float((p - a).norm())
        assert bf16_error > 0, f"{name}: autocast did not change the plain path (test is vacuous)"
        assert float((f - p).norm()) <= bf16_error, name


def test_the_weight_gradient_added_block_by_block_is_the_same(monkeypatch):
    """In bf16 each chunk's weight gradient is added in blocks of WEIGHT_BLOCK vocabulary rows
    (4096: one block at V = 300); blocks of 7 (the last one short) give the same numbers."""
    h, w, b, y = inputs(bias=True)
    fused = lambda h, w, y, b: linear_cross_entropy(h, w, y, bias=b, rows=16)  # noqa: E731
    whole = run(fused, h, w, b, y, autocast=True)
    monkeypatch.setattr(model.loss, "WEIGHT_BLOCK", 7)
    assert_close_fp32(run(fused, h, w, b, y, autocast=True), whole)


def test_bf16_hidden_states_and_gradients_keep_their_dtypes():
    h, w, _, y = inputs()
    hb = h.bfloat16().requires_grad_()
    wf = w.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = linear_cross_entropy(hb, wf, y, rows=7)
        expected = plain(h.bfloat16(), w, y)
    assert losses.dtype == torch.float32
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-5)
    losses.sum().backward()
    assert hb.grad.dtype == torch.bfloat16 and wf.grad.dtype == torch.float32


class LargestOutput(TorchDispatchMode):
    """The largest tensor (in elements) any aten op allocates while active, forward and backward
    ops alike (the backward runs on this thread on the CPU); views of an op's inputs and results
    written into an input (in-place ops) are not allocations and are not counted."""

    def __init__(self):
        super().__init__()
        self.largest, self.shape = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.untyped_storage().data_ptr() in given:
                continue
            if t.numel() > self.largest:
                self.largest, self.shape = t.numel(), tuple(t.shape)
        return out


@pytest.mark.parametrize("autocast", [False, True])
def test_no_tensor_of_all_tokens_by_vocabulary_is_ever_made(autocast):
    """Every tensor any op makes in the forward and in the backward is at most one chunk's logits
    or the weight's size, never (N, V); the same detector sees (N, V) in the plain path's forward
    and in its backward, so it cannot pass by not looking."""
    n, v, rows = 256, 600, 32  # N x V = 153,600 > rows x V = 19,200 > V x H = 9,600
    h0 = torch.randn(n, H)
    w0 = torch.randn(v, H) * 0.3
    y = torch.randint(0, v, (n,))
    seen = {}
    for name, fn in (("plain", plain), ("fused", lambda h, w, y: linear_cross_entropy(h, w, y, rows=rows))):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            with LargestOutput() as fwd:
                losses = fn(h, w, y)
        with LargestOutput() as bwd:
            losses.sum().backward()
        assert h.grad is not None and w.grad is not None
        seen[name] = (fwd.largest, bwd.largest)
    assert seen["plain"][0] >= n * v and seen["plain"][1] >= n * v
    assert max(seen["fused"]) <= max(rows * v, v * H), seen


def test_no_gradient_work_under_no_grad():
    """Validation runs under no_grad: only the losses, no (V, H) gradient total (which the same
    call with gradients on does make)."""
    h, w, _, y = inputs()
    w.requires_grad_()
    with torch.no_grad(), LargestOutput() as off:
        linear_cross_entropy(h, w, y, rows=1)
    with LargestOutput() as on:
        linear_cross_entropy(h, w, y, rows=1)
    assert off.largest < V * H <= on.largest


def test_chunk_rows_rule():
    assert chunk_rows(151_936, torch.bfloat16) == 1177  # 1 GiB / (151,936 x 6 bytes)
    assert chunk_rows(49_152, torch.bfloat16) == 3640
    assert chunk_rows(49_152, torch.float32) == 5461  # 4 bytes per entry in fp32
    assert chunk_rows(151_936, torch.bfloat16, chunk_bytes=1) == 1
    r = chunk_rows(151_936, torch.bfloat16, 64 << 20)
    assert r * 151_936 * 6 <= 64 << 20 < (r + 1) * 151_936 * 6


def test_bad_arguments_are_refused():
    h, w, _, y = inputs()
    with pytest.raises(ValueError, match="outside"):
        linear_cross_entropy(h, w, torch.full((N,), V))
    with pytest.raises(ValueError, match="targets must be"):
        linear_cross_entropy(h, w, y[:-1])
    with pytest.raises(ValueError, match="hidden"):
        linear_cross_entropy(h, w[:, :-1], y)
    with pytest.raises(ValueError, match="grad_scale"):
        linear_cross_entropy(h, w, y, grad_scale=0.0)


def test_fp16_gradients_prepared_for_another_scale_are_recomputed():
    """fp16 autocast with a GradScaler-like factor S on the backward that the forward was not told
    of: the prepared gradients (scale / N, underflowing in fp16) are not rescaled by S but
    recomputed with scale x S folded in, as the plain fp16 path computes them."""
    h, w, _, y = inputs(seed=7)
    scale, big = 1 / 4096, 2.0**16
    half = dict(scale=scale * big, autocast=True, dtype=torch.float16)
    fp32 = run(plain, h, w, None, y, scale=scale * big)
    plain16 = run(plain, h, w, None, y, **half)
    told = run(
        lambda h, w, y, b: linear_cross_entropy(h, w, y, rows=7, grad_scale=scale * big),
        h,
        w,
        None,
        y,
        **half,
    )
    untold = run(
        lambda h, w, y, b: linear_cross_entropy(h, w, y, rows=7, grad_scale=scale), h, w, None, y, **half
    )
    for name, a, p, t, u in zip(
        ("losses", "hidden grad", "weight grad"), fp32, plain16, told, untold, strict=True
    ):
        fp16_error = float((p - a).norm())
        assert 0 < fp16_error, name
        assert float((t - p).norm()) <= fp16_error and float((u - p).norm()) <= fp16_error, name
