import pytest
import torch

from model import KVCache, MiniGPTForCausalLM, ModelConfig
from model.errors import UserError
from model.hf import to_hf
from tests.helpers import FAMILIES, family_model, small_config


def test_default_config_is_the_26m_model():
    cfg = ModelConfig()
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.vocab_size) == (
        512,
        8,
        8,
        6400,
    )
    assert cfg.num_key_value_heads < cfg.num_attention_heads and cfg.tie_word_embeddings and cfg.dropout == 0
    model = MiniGPTForCausalLM(cfg)
    assert model.num_params() == cfg.num_params()
    assert 25e6 < cfg.num_params() < 27e6


@pytest.mark.parametrize(
    "cfg", [ModelConfig(), small_config(tie_word_embeddings=False)], ids=["default", "untied"]
)
def test_logits_match_transformers_llama(cfg):
    torch.manual_seed(0)
    model = MiniGPTForCausalLM(cfg).eval()
    # non-trivial norm weights so a wrong norm mapping would show
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    hf = to_hf(model)
    x = torch.randint(0, cfg.vocab_size, (2, 100))
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
    assert (ours - theirs).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_count_matches_the_config(family):
    model = family_model(family)
    assert model.num_params() == model.config.num_params()
    names = {n for n, _ in model.named_parameters()}
    cfg = model.config
    assert ("model.layers.0.self_attn.q_norm.weight" in names) == cfg.qk_norm
    assert ("model.layers.0.self_attn.k_proj.bias" in names) == cfg.qkv_bias
    assert ("model.layers.0.self_attn.o_proj.bias" in names) == cfg.o_bias
    assert ("model.layers.0.mlp.up_proj.bias" in names) == cfg.mlp_bias
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (8 * cfg.head_dim, 128)


def test_flops_count_the_lm_head_once_tied_or_not():
    tied, untied = small_config(), small_config(tie_word_embeddings=False)
    assert untied.num_params() == tied.num_params() + 512 * 128
    # the untied input embedding is a lookup, not a matmul
    assert untied.flops_per_token(256) == tied.flops_per_token(256)
    wide = small_config(head_dim=32)  # attention scores scale with heads * head_dim, not hidden
    assert wide.flops_per_token(256) - 6 * wide.num_params() == 12 * 3 * 8 * 32 * 256


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_cache_generation_equals_full_recompute(family):
    model = family_model(family)
    prompt = torch.randint(0, 512, (3, 7))
    out = model.generate(prompt, max_new_tokens=25, temperature=0)
    seq = prompt
    with torch.no_grad():
        for _ in range(25):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_prefill_after_cache_matches_full_forward(family):
    model = family_model(family)
    x = torch.randint(0, 512, (2, 30))
    with torch.no_grad():
        full = model(x)
        cache = KVCache(model.config, 2, 30, x.device, torch.float32)
        a = model(x[:, :12], cache)
        b = model(x[:, 12:], cache)
    torch.testing.assert_close(torch.cat([a, b], 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_states_at_chosen_positions_equal_the_full_forward(family):
    model = family_model(family)
    x = torch.randint(0, 512, (3, 40))
    rows, pos = torch.tensor([2, 0, 2, 1, 2]), torch.tensor([39, 7, 0, 20, 11])
    with torch.no_grad():
        full = model.forward_hidden(x)
        at = model.forward_hidden(x, at=(rows, pos))
        # after a cached prefix too (positions count within the new chunk)
        keep = pos >= 10
        cache = KVCache(model.config, 3, 40, x.device, torch.float32)
        model.forward_hidden(x[:, :10], cache)
        after = model.forward_hidden(x[:, 10:], cache, at=(rows[keep], pos[keep] - 10))
    torch.testing.assert_close(at, full[rows, pos], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after, full[rows[keep], pos[keep]], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_cast_layer_matmuls_equals_autocast(family):
    model = family_model(family)
    x = torch.randint(0, 512, (2, 50))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(x)
        model.cast_layer_matmuls_(torch.bfloat16)
        after = model(x)
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert torch.equal(before, after)


def test_sampling_modes():
    torch.manual_seed(0)
    model = MiniGPTForCausalLM(small_config()).eval()
    prompt = torch.randint(0, 512, (2, 5))
    greedy = model.generate(prompt, 10, temperature=0)
    # a vanishing nucleus keeps only the top token: sampling becomes greedy
    assert torch.equal(model.generate(prompt, 10, temperature=1.0, top_p=1e-9), greedy)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    s1 = model.generate(prompt, 10, temperature=1.0, top_p=0.9, generator=g1)
    assert torch.equal(s1, model.generate(prompt, 10, temperature=1.0, top_p=0.9, generator=g2))
    assert s1.shape == (2, 15)


def test_generation_stops_at_eos():
    torch.manual_seed(0)
    model = MiniGPTForCausalLM(small_config()).eval()
    prompt = torch.randint(0, 512, (1, 4))
    first = model.generate(prompt, 1, temperature=0)[0, -1].item()
    out = model.generate(prompt, 20, temperature=0, eos_token_id=first)
    assert out.shape[1] == 5 and out[0, -1].item() == first


def test_bad_config_is_a_user_error():
    with pytest.raises(UserError, match="num_attention_heads"):
        ModelConfig(hidden_size=100, num_attention_heads=8)
    with pytest.raises(UserError, match="unknown key"):
        ModelConfig.from_dict({"hidden_size": 64, "n_embd": 3})


def _packed(docs: list[torch.Tensor], pad_to: int, pad_id: int = 0):
    """One row holding ``docs`` side by side (then padding): ids, RoPE positions, document ids."""
    ids = torch.cat(docs)
    pos = torch.cat([torch.arange(len(d)) for d in docs])
    doc = torch.cat([torch.full((len(d),), k) for k, d in enumerate(docs)])
    n = pad_to - len(ids)
    ids = torch.cat([ids, torch.full((n,), pad_id)])
    pos = torch.cat([pos, torch.arange(n)])
    doc = torch.cat([doc, torch.full((n,), len(docs))])
    return ids[None], pos[None], doc[None]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_document_packed_with_others_is_computed_as_alone(family):
    """Document attention + per-document positions: every document's logits in a packed row equal
    its logits alone (fp32), whatever its neighbours; with the selected-positions path too."""
    model = family_model(family)
    g = torch.Generator().manual_seed(3)
    docs = [torch.randint(0, 512, (n,), generator=g) for n in (9, 17, 5)]
    ids, pos, doc = _packed(docs, 40)
    other, opos, odoc = _packed([docs[2], docs[0], docs[1]], 40)  # another order
    with torch.no_grad():
        packed = model(ids, positions=pos, doc_ids=doc)[0]
        reordered = model(other, positions=opos, doc_ids=odoc)[0]
        alone = [model(d[None])[0] for d in docs]
        at = model.forward_hidden(
            ids, at=(torch.zeros(3, dtype=torch.long), torch.tensor([8, 25, 30])), positions=pos, doc_ids=doc
        )
        full_h = model.forward_hidden(ids, positions=pos, doc_ids=doc)[0]
    starts = [0, 9, 26]
    for d, a, s in zip(docs, alone, starts, strict=True):
        torch.testing.assert_close(packed[s : s + len(d)], a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reordered[5:14], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(at, full_h[[8, 25, 30]], atol=1e-5, rtol=1e-5)
    # without document ids the same row is one causal sequence: the second document reads the first
    assert not torch.allclose(model(ids)[0, 9:26], alone[1], atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_generation_with_document_ids_equals_one_by_one(family):
    """Prompts of different lengths in one batch: left padding as a document of its own, positions
    from 0 at each prompt, through the KV cache: the same greedy tokens as each prompt alone."""
    model = family_model(family)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(1, 512, (n,), generator=g) for n in (3, 8, 6)]
    width, steps = 8, 6
    ids = torch.stack([torch.cat([torch.zeros(width - len(p), dtype=torch.long), p]) for p in prompts])
    doc = torch.stack([torch.cat([torch.zeros(width - len(p)), torch.ones(len(p))]).long() for p in prompts])
    pos = (torch.arange(width)[None] - (width - torch.tensor([len(p) for p in prompts]))[:, None]).clamp(
        min=0
    )
    with torch.no_grad():
        cache = KVCache(model.config, 3, width + steps, ids.device, torch.float32)
        nxt = model(ids, cache, positions=pos, doc_ids=doc)[:, -1].argmax(-1)
        out = [nxt]
        for _ in range(steps - 1):
            pos = pos[:, -1:] + 1
            nxt = model(nxt[:, None], cache, positions=pos, doc_ids=torch.ones_like(pos))[:, -1].argmax(-1)
            out.append(nxt)
        batched = torch.stack(out, 1)
        alone = [model.generate(p[None], steps, temperature=0)[0, len(p) :] for p in prompts]
    assert torch.equal(batched, torch.stack(alone))
