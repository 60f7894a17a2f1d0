"""Mid-training open-model families from a transformers folder, through the real scripts (issue 12).

Tiny models of each family are built with transformers' own config classes and random weights
(save_pretrained), with a real BPE tokenizer trained on TinyStories saved beside them: Llama with
a BOS (tied, llama3 RoPE scaling), Qwen2 (q/k/v biases, untied, no BOS, a ChatML template,
max_window_layers 2 and a generation_config.json with two stop ids and sampling settings, as
Qwen2.5-Instruct ships) and Qwen3 (q/k norm, head_dim != hidden/heads, no BOS, a vocabulary above
65,536 ids).
"""

from __future__ import annotations

import json
import re
import textwrap
from typing import Any

import pytest
import torch

from tests.helpers import bad, run_script, shared_file

pytestmark = pytest.mark.slow


def tokenizer(folder, bos: bool, big: bool = False):
    """A byte-level BPE trained on real stories; Qwen-style (no BOS, eos = pad = <|endoftext|>)
    or Llama-style (<|begin_of_text|> BOS). ``big``: 66,000 extra ids first, then common words as
    added tokens, so the data really uses ids above 65,535."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    from dataset.io import iter_docs
    from dataset.tokenizer import train_tokenizer

    texts = [t for t, _ in iter_docs(shared_file("tinystories", "validation_first1000.jsonl"))][:600]
    base = train_tokenizer(texts, 400, folder / "bpe")
    t = Tokenizer.from_str(base.backend_tokenizer.to_str())
    specials = ["<|endoftext|>"] + (["<|begin_of_text|>"] if bos else ["<|im_start|>", "<|im_end|>"])
    t.add_special_tokens(specials)
    if big:
        t.add_special_tokens([f"<|extra_{i}|>" for i in range(66_000)])
        t.add_tokens([AddedToken(w, normalized=False) for w in (" the", " and", " was", " to")])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=t,
        bos_token="<|begin_of_text|>" if bos else None,
        eos_token="<|endoftext|>",
        pad_token=None if bos else "<|endoftext|>",
    )
    if not bos:
        tok.chat_template = CHATML
    return tok


CHATML = (
    "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\\n'}}{% endif %}"
)


def build(folder, family: str):
    """A tiny random model of ``family`` with its tokenizer, saved as a transformers folder."""
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    tok = tokenizer(folder, bos=family == "llama", big=family == "qwen3")
    common: dict[str, Any] = dict(
        vocab_size=len(tok) + 8,  # padded beyond the tokenizer, as Qwen does
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    top_level_theta: dict[str, Any] = {"rope_theta": 1e6}  # the older keyword, which transformers converts
    torch.manual_seed(0)
    model: Any
    if family == "llama":
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # fmt: skip
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=True, rope_parameters=rope))
    elif family == "qwen2":
        cfg = Qwen2Config(**common, tie_word_embeddings=False, **top_level_theta, max_window_layers=2)
        model = Qwen2ForCausalLM(cfg)
        with torch.no_grad():  # biases that matter
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.1)
        eot, im_end = tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")
        model.generation_config = GenerationConfig(
            eos_token_id=[im_end, eot], pad_token_id=eot, do_sample=True, temperature=0.7, top_p=0.8, top_k=20,
            repetition_penalty=1.05,
        )  # fmt: skip
    else:
        model = Qwen3ForCausalLM(
            Qwen3Config(**common, head_dim=32, tie_word_embeddings=True, **top_level_theta)
        )
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_norm.weight.normal_(1, 0.2)
                layer.self_attn.k_norm.weight.normal_(1, 0.2)
    out = folder / family
    model.to(torch.bfloat16).save_pretrained(out)  # stored in bf16, as the Hub serves them
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    d = shared_file()
    folder = tmp_path_factory.mktemp("hfmix")
    cfg = folder / "mix.yaml"
    cfg.write_text(
        textwrap.dedent(f"""\
        name: hfmix
        total_samples: 300
        val_ratio: 0.1
        seed: 3
        sources:
          - {{name: replay, data_files: {d}/tinystories/validation_first1000.jsonl, format: text, ratio: 0.3}}
          - {{name: code, data_files: {d}/mbpp/mbpp.jsonl, format: template, template: "{{text}}\\n{{code}}", ratio: 0.35}}
          - {{name: reasoning, data_files: {d}/mmlu/auxiliary_train_subset.jsonl, format: mmlu, ratio: 0.35}}
        """)
    )
    run_script("scripts/prepare_dataset.py", "--config", str(cfg), "--output_dir", str(folder / "data"))
    return cfg, folder / "data"


def midtrain(cfg, data, out, *extra):
    return [
        "trainer/train_midtrain.py",
        "--data_config",
        str(cfg),
        "--use_prepared",
        "--prepared_dir",
        str(data),
        "--save_dir",
        str(out),
        "--checkpoint_dir",
        str(out / "ck"),
        "--cache_dir",
        str(out / "cache"),
        "--log_interval",
        "1",
        "--eval_batches",
        "2",
        *extra,
    ]


def losses(out, name):
    lines = (out / f"{name}_64_metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"], r["lr"]) for r in map(json.loads, lines) if r["kind"] == "train"]


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_midtrain_from_a_transformers_folder_and_resume(family, mixture, tmp_path):
    cfg, data = mixture
    folder = build(tmp_path, family)
    out = tmp_path / "out"
    run = ["--from_weight", str(folder), "--batch_size", "4", "--max_seq_len", "64", "--max_steps", "6"]
    run += ["--dtype", "float32", "--eval_interval", "3"]
    proc = run_script(*midtrain(cfg, data, out, *run, "--save_weight", "full"))
    line = next(x for x in proc.stdout.splitlines() if x.startswith("parity vs transformers:"))
    match = re.fullmatch(r"parity vs transformers: max abs logit diff (\S+) \(bound (\S+)\)", line)
    assert match, line
    diff, bound = match.groups()
    assert float(diff) <= float(bound), line
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[family]
    assert f"Starting from {arch}" in proc.stdout

    # stopped and resumed: bit-identical on CPU, the same checkpoint files as for our own models
    run_script(*midtrain(cfg, data, out, *run, "--save_weight", "part", "--stop_after", "3"))
    run_script(*midtrain(cfg, data, out, "--save_weight", "part", "--from_resume", "1"))
    assert losses(out, "full") == losses(out, "part")
    ck = torch.load(out / "full_64.pth", map_location="cpu", weights_only=True)
    assert ck["model_config"]["architecture"] == arch
    assert ck["meta"]["parent"]["source"] == "transformers"
    if family == "qwen3":  # ids above 65,535 are trained on (a uint32 token cache)
        meta = json.loads(next((out / "cache").glob("store-*/meta.json")).read_text())
        assert meta["dtype"] == "uint32"
        from dataset.tokenizer import load_tokenizer

        assert load_tokenizer(folder)(" the", add_special_tokens=False)["input_ids"][0] > 65_535


def test_a_hub_id_without_the_hub_says_how_to_go_local(mixture, tmp_path):
    """No Hub here: the real huggingface_hub call fails, and the line says what to do instead.
    (Planted mismatches are caught by the parity proof: tests/model/test_hf.py.)"""
    cfg, data = mixture
    line = bad(*midtrain(cfg, data, tmp_path / "o", "--from_weight", "org-that-does-not-exist/model@main"))
    assert "--from_weight org-that-does-not-exist/model@main: no local folder or checkpoint" in line
    assert "cannot get it from the Hugging Face Hub" in line
    assert "huggingface-cli download org-that-does-not-exist/model --local-dir DIR" in line
    assert "--from_weight DIR" in line


def test_unsupported_architectures_are_refused_in_one_line(mixture, tmp_path):
    cfg, data = mixture
    folder = build(tmp_path, "qwen2")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"], config["model_type"] = ["GPT2LMHeadModel"], "gpt2"
    (folder / "config.json").write_text(json.dumps(config))
    line = bad(*midtrain(cfg, data, tmp_path / "o", "--from_weight", str(folder)))
    assert "LlamaForCausalLM" in line and "Qwen3ForCausalLM" in line


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_export_round_trips_and_eval_scores_the_folder_natively(family, mixture, tmp_path):
    """Load a folder, mid-train with an LR so small the weights cannot move, export: the same class,
    config and tokenizer, the original logits within 1e-4 (fp32) and the same greedy generation.
    eval_llm --weight <folder> (our scorer, after the parity proof) gives the numbers transformers'
    own forward gives on the export (--hf_path), and the same as the mid-trained checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from model.hf import PARITY_TEXT

    cfg, data = mixture
    folder = build(tmp_path, family)
    out, export = tmp_path / "out", tmp_path / "export"
    run = ["--from_weight", str(folder), "--batch_size", "4", "--max_seq_len", "64", "--max_steps", "2"]
    run_script(*midtrain(cfg, data, out, *run, "--learning_rate", "1e-30", "--save_weight", "still"))
    proc = run_script(
        "scripts/export_hf.py", "--weight", str(out / "still_64.pth"), "--output_dir", str(export)
    )
    # the source's files come back: only the dtype of the stored weights (bf16 in, float32 out) changes
    changed = "config.json dtype bfloat16 -> float32"
    assert (
        f"files of {folder} written back (" in proc.stdout
        and f"as they were except {changed}\n" in proc.stdout
    )
    c_src, c_dst = (json.loads((d / "config.json").read_text()) for d in (folder, export))
    assert {k for k in c_src.keys() | c_dst.keys() if c_src.get(k) != c_dst.get(k)} == {"dtype"}
    assert (c_src["dtype"], c_dst["dtype"]) == ("bfloat16", "float32")
    assert (export / "generation_config.json").read_text() == (folder / "generation_config.json").read_text()
    assert json.loads((export / "minigpt.json").read_text())["changed_from_source"] == [
        changed.removeprefix("config.json ")
    ]

    src = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    dst = AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32).eval()
    assert type(dst) is type(src)
    src_tok, dst_tok = AutoTokenizer.from_pretrained(str(folder)), AutoTokenizer.from_pretrained(str(export))
    # generate() stops where the source's does (Qwen2: at the end of a turn too, as Qwen2.5-Instruct)
    assert dst.generation_config.to_dict() == src.generation_config.to_dict()
    if family == "qwen2":
        assert dst.generation_config.eos_token_id == [
            src_tok.convert_tokens_to_ids("<|im_end|>"),
            src_tok.eos_token_id,
        ]
        assert dst.generation_config.do_sample and dst.generation_config.top_k == 20
    if src_tok.chat_template:
        msgs = [{"role": "user", "content": "Hi"}]
        assert dst_tok.apply_chat_template(msgs, tokenize=False) == src_tok.apply_chat_template(
            msgs, tokenize=False
        )
    assert dst_tok(PARITY_TEXT)["input_ids"] == src_tok(PARITY_TEXT)["input_ids"]  # no BOS added
    assert (dst_tok.bos_token, dst_tok.eos_token, dst_tok.pad_token) == (
        src_tok.bos_token,
        src_tok.eos_token,
        src_tok.pad_token,
    )
    ids = torch.tensor([src_tok(PARITY_TEXT)["input_ids"]])
    with torch.no_grad():
        assert (src(ids).logits - dst(ids).logits).abs().max().item() <= 1e-4
    prompt = ids[:, :12]
    kw = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False, eos_token_id=None)
    assert torch.equal(src.generate(prompt, **kw), dst.generate(prompt, **kw))

    val = tmp_path / "val.jsonl"
    texts = shared_file("tinystories", "validation_first1000.jsonl").read_text().splitlines()[:4]
    val.write_text(
        "".join(json.dumps({"text": json.loads(t)["text"], "source": "stories"}) + "\n" for t in texts)
    )
    report = tmp_path / "r.json"
    proc = run_script(
        "eval_llm.py", "--save_dir", str(out), "--weight", str(folder), "--weight", "still",
        "--hf_path", str(export), "--val_path", str(val), "--mmlu_path", str(shared_file("mmlu", "test.jsonl")),
        "--shots", "0", "--limit", "16", "--no_code", "--no_samples", "--no_hub", "--dtype", "float32",
        "--output", str(report),
    )  # fmt: skip
    assert "parity vs transformers: max abs logit diff" in proc.stdout + proc.stderr
    r = json.loads(report.read_text())
    native, still, hf = (r["results"][k] for k in (folder.name, "still_64", f"hf:{export.name}"))
    assert [m["context"] for m in r["models"]] == [256, 256, 256]  # the source's context, kept
    for other in (still, hf):
        assert other["lm"]["stories"]["tokens"] == native["lm"]["stories"]["tokens"]
        assert other["lm"]["stories"]["loss"] == pytest.approx(native["lm"]["stories"]["loss"], abs=1e-4)
        a, b = native["mmlu"]["0-shot"], other["mmlu"]["0-shot"]
        assert a["pred_counts"] == b["pred_counts"] and a["acc"] == b["acc"]
        assert a["letter_mass"] == pytest.approx(b["letter_mass"], rel=1e-3)
