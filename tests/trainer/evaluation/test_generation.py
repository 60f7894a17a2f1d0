"""Generation until stop strings equals lm-evaluation-harness's ``HFLM.generate_until``, computed
independently here.

The reference is the harness's rule written out plainly, one prompt at a time, on the export
through transformers' forward without a KV cache or batching: ``tokenizer(prompt)`` cut from the
left to ``max_length - max_gen_toks``, greedy argmax for at most ``max_gen_toks`` tokens or until
the end-of-text token, the decoded text (special tokens skipped) cut before each stop string in
turn. eval_llm's batched paths (our model through its KV cache with left padding as a document of
its own; the export through transformers' generate with an attention mask) must give the same text
for every prompt.
"""

from __future__ import annotations

import json

import pytest
import torch

from dataset.tokenizer import load_tokenizer
from tests.helpers import shared_file
from tests.trainer.evaluation.support import export_checkpoint, tiny_config
from trainer.evaluation.generation import Budget, cut_at_stops, generate_until, token_budget
from trainer.evaluation.models import ModelSpec, load_eval_model

pytestmark = pytest.mark.usefixtures("one_thread")

CONTEXT = 96


@pytest.fixture(scope="module")
def exported(tokenizer_dir, tmp_path_factory):
    tok = load_tokenizer(tokenizer_dir)
    return export_checkpoint(tmp_path_factory.mktemp("gen"), tok, tiny_config(len(tok)), CONTEXT, seed=3)


@pytest.fixture(scope="module")
def prompts():
    """Real prompts of very different lengths: GSM8K questions and HumanEval signatures (some longer
    than the prompt budget, so cut from the left)."""
    with open(shared_file("gsm8k", "test.jsonl"), encoding="utf-8") as f:
        questions = [json.loads(line)["question"] for _, line in zip(range(4), f, strict=False)]
    import gzip

    with gzip.open(shared_file("humaneval", "HumanEval.jsonl.gz"), "rt", encoding="utf-8") as f:
        code = [json.loads(line)["prompt"] for _, line in zip(range(3), f, strict=False)]
    return [f"Question: {q}\nAnswer:" for q in questions] + code + ["def f(x):", "Once"]


_REFERENCE: dict = {}


def reference(folder, prompts, until, max_gen):
    """HFLM.generate_until's result for each prompt, computed one at a time without a cache."""
    key = (str(folder), tuple(prompts), tuple(until), max_gen)
    if key not in _REFERENCE:
        _REFERENCE[key] = _reference(folder, prompts, until, max_gen)
    return _REFERENCE[key]


def _reference(folder, prompts, until, max_gen):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    max_length = model.config.max_position_embeddings
    stops = [*until, str(tok.decode([tok.eos_token_id], skip_special_tokens=False))]
    out, truncated = [], 0
    for p in prompts:
        ids = tok(p)["input_ids"]
        truncated += len(ids) > max_length - max_gen
        ids = ids[-(max_length - max_gen) :]
        new: list[int] = []
        with torch.no_grad():
            for _ in range(max_gen):
                nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
                new.append(nxt)
                if nxt == tok.eos_token_id:
                    break
        text = str(tok.decode(new, skip_special_tokens=True))
        for s in stops:
            text = text.split(s)[0]
        out.append(text)
    return out, truncated


@pytest.mark.parametrize("until", [(), ("e", "\n")], ids=["to-the-cap", "stop-strings"])
@pytest.mark.parametrize("kind", ["weight", "hf"])
def test_batched_generation_equals_the_harness_rule(exported, prompts, until, kind):
    path, folder = exported
    want, truncated = reference(folder, prompts, until, 24)
    em = load_eval_model(
        ModelSpec(kind, str(path if kind == "weight" else folder)), "", None, "cpu", torch.float32, None
    )
    assert em.max_len == CONTEXT
    texts, facts = generate_until(em, prompts, until, token_budget(em.max_len, 24), batch_size=3)
    assert texts == want
    assert facts["truncated"] == truncated > 0 and facts["n"] == len(prompts)
    assert facts["context"] == CONTEXT - 24 and facts["max_new_tokens"] == 24
    if not until:  # nothing stops a random model early: every answer ran to the cap
        assert facts["hit_limit"] == len(prompts) and facts["new_tokens"] == 24 * len(prompts)
    else:
        assert facts["hit_limit"] < len(prompts)


def test_token_budget_is_the_harness_split_or_half_the_context():
    assert token_budget(512, 256) == Budget(256, 256)
    assert token_budget(2048, 1024) == Budget(1024, 1024)
    capped = token_budget(2048, 1024, user_max=100)
    assert (capped.context, capped.new) == (1948, 100) and "--max_new_tokens 100" in capped.note
    assert token_budget(2048, 1024, user_max=4096) == Budget(1024, 1024)
    half = token_budget(512, 1024)  # the harness would refuse: no room for a prompt
    assert (half.context, half.new) == (256, 256) and half.note.startswith(
        "half the model's 512-token context; the task's 1024"
    )
    assert token_budget(256, 256).new == 128
    with pytest.raises(ValueError):
        token_budget(1, 256)


def test_stop_strings_cut_in_turn_like_the_harness():
    # postprocess_generated_text: text.split(stop)[0] for each stop in order
    assert cut_at_stops("a\nclass B\ndef c", ["\nclass", "\ndef"]) == "a"
    assert cut_at_stops("x = 1\n#note\nif y", ["\nif", "\n#"]) == "x = 1"
    assert cut_at_stops("no stop here", ["[DONE]", ""]) == "no stop here"
    assert cut_at_stops("  ", ["Question:"]) == "  "
