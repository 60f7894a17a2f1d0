"""MMLU scoring equals lm-evaluation-harness's ``mmlu`` task, computed independently here.

The reference below is the harness's algorithm written out plainly (v0.4.13: the task's Jinja
``doc_to_text`` rendered with Jinja2 as the harness configures it, ``_encode_pair`` with the
tokenizer's default special tokens, left truncation to ``max_length + 1`` tokens, log-softmax
summed over the continuation), run with transformers' own forward on an exported folder whose
config.json carries the trained context. eval_llm's scorer (our model with its shared-prefix KV
cache and pruned last layer, and the same folder through transformers) must give the same
per-letter log-likelihoods on real MMLU rows, including rows whose choices have spaces at
their ends and prompts longer than the context.
"""

from __future__ import annotations

import json

import jinja2
import pytest
import torch

from dataset.formats import render_mmlu
from dataset.tokenizer import load_tokenizer
from model.errors import UserError
from tests.helpers import shared_file
from tests.trainer.evaluation.support import export_checkpoint, tiny_config
from trainer.evaluation.data import MCQuestion, parse_mmlu_rows
from trainer.evaluation.mmlu import letter_continuations, mmlu_eval, mmlu_loglikelihoods, mmlu_prompt
from trainer.evaluation.models import EvalModel, MiniGPTEval, ModelSpec, load_eval_model

pytestmark = pytest.mark.usefixtures("one_thread")

CONTEXT = 384  # the trained context of the test model: some real prompts are longer

# tasks/mmlu/default/_default_template_yaml of lm-evaluation-harness
DOC_TO_TEXT = "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:"
JINJA = jinja2.Environment(
    loader=jinja2.BaseLoader(), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
)


def harness_context(q: MCQuestion, shots: list[MCQuestion]) -> str:
    """description + fewshot (doc_to_text + " " + letter + "\\n\\n" each) + doc_to_text."""

    def text(d: MCQuestion) -> str:
        return JINJA.from_string(DOC_TO_TEXT).render(question=d.question, choices=list(d.choices))

    description = (
        f"The following are multiple choice questions (with answers) about {q.subject.replace('_', ' ')}.\n\n"
    )
    return description + "".join(text(d) + " " + "ABCD"[d.answer] + "\n\n" for d in shots) + text(q)


def harness_loglikelihoods(folder, questions, dev, k) -> tuple[torch.Tensor, int]:
    """(N, 4) log-likelihoods as HFLM computes them on ``folder``, and how many were truncated."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    max_length = model.config.max_position_embeddings
    out = torch.zeros(len(questions), 4, dtype=torch.float64)
    truncated = 0
    for i, q in enumerate(questions):
        ctx = harness_context(q, [d for d in dev if d.subject == q.subject][:k])
        ctx_enc = tok.encode(ctx)
        for j, letter in enumerate("ABCD"):
            cont = tok.encode(ctx + " " + letter)[len(ctx_enc) :]
            inp = (ctx_enc + cont)[-(max_length + 1) :][:-1]
            truncated += len(ctx_enc) + len(cont) > max_length + 1
            with torch.no_grad():
                logits = model(torch.tensor([inp])).logits[0, -len(cont) :]
            lp = torch.log_softmax(logits, dim=-1)
            out[i, j] = sum(lp[n, t].item() for n, t in enumerate(cont))
    return out, truncated


def jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def rows():
    """Real test rows: every subject's first question, and the rows whose choices have a space at
    either end (41 in the test split); the real dev split, whose professional_law examples have
    such choices too."""
    test = parse_mmlu_rows(jsonl(shared_file("mmlu", "test.jsonl")), "test")
    dev = parse_mmlu_rows(jsonl(shared_file("mmlu", "dev.jsonl")), "dev")
    untrimmed = [q for q in test if any(c != c.strip() for c in q.choices)]
    assert len(untrimmed) == 41
    firsts = list({q.subject: q for q in reversed(test)}.values())[::4]
    questions = untrimmed[::3] + firsts + [q for q in test if q.subject == "professional_law"][:2]
    return questions, dev


@pytest.fixture(scope="module")
def exported(tokenizer_dir, tmp_path_factory):
    tok = load_tokenizer(tokenizer_dir)
    return export_checkpoint(tmp_path_factory.mktemp("harness"), tok, tiny_config(len(tok)), CONTEXT)


def test_prompt_is_the_harness_template_with_choices_as_they_are(rows):
    questions, dev = rows
    for q in questions:
        shots = [d for d in dev if d.subject == q.subject][:5]
        assert mmlu_prompt(q, shots) == harness_context(q, shots)
    q = MCQuestion("  What is 2 + 3? ", ("$4 ", " 5", "6", "7"), 1, "elementary_mathematics")
    assert mmlu_prompt(q, []) == (
        "The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
        "What is 2 + 3?\nA. $4 \nB.  5\nC. 6\nD. 7\nAnswer:"
    )
    # a training row is the prompt continued by the scored " B": one shape for both
    assert render_mmlu(q.question, q.choices, 1) == render_mmlu(q.question, q.choices) + " B"


@pytest.mark.parametrize("shots", [0, 2])
@pytest.mark.parametrize("kind", ["weight", "hf"])
def test_loglikelihoods_equal_the_harness_computation(exported, rows, shots, kind):
    """Our model (fp32, shared-prefix KV cache, pruned last layer) and the export through
    transformers, each against the harness's computation on the export: within 1e-4 nats."""
    path, folder = exported
    questions, dev = rows
    want, truncated = harness_loglikelihoods(folder, questions, dev, shots)
    assert truncated > 0 and truncated < 4 * len(questions)  # both kinds of prompt are covered
    em = load_eval_model(
        ModelSpec(kind, str(path if kind == "weight" else folder)), "", None, "cpu", torch.float32, None
    )
    assert em.max_len == CONTEXT
    ll, facts = mmlu_loglikelihoods(em, questions, dev, shots, batch_size=5)
    assert facts["truncated"] == truncated // 4 and facts["shots"] == shots
    assert (ll - want).abs().max().item() < 1e-4
    assert ll.argmax(1).tolist() == want.argmax(1).tolist()
    if kind == "weight" and shots:  # the header and examples ran once per subject, not per question
        prompts = [mmlu_prompt(q, [d for d in dev if d.subject == q.subject][:shots]) for q in questions]
        assert facts["tokens"] < sum(min(len(ids) + 1, CONTEXT) for ids in em.encode(prompts))


def _tokenizer_without_single_letter_tokens(tmp, merges: list[tuple[str, str]]):
    """A byte-level BPE with only ``merges``: " A" is two tokens unless merged here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from dataset.tokenizer import SPECIAL_TOKENS

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + sorted(alphabet))}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )
    fast.save_pretrained(tmp / "tok")
    return load_tokenizer(tmp / "tok")


@pytest.mark.parametrize("merges", [[], [("Ġ", "A"), ("Ġ", "C")]], ids=["all-two-tokens", "mixed"])
def test_letters_of_several_tokens_are_scored_on_every_token(tmp_path, rows, merges):
    """ " A" as two tokens (or A and C one token, B and D two): every token of each letter's
    continuation counts, as the harness scores it; the letters sharing " " share one row."""
    tok = _tokenizer_without_single_letter_tokens(tmp_path, merges)
    assert len(tok.encode(" A", add_special_tokens=False)) == (1 if merges else 2)
    assert len(tok.encode(" B", add_special_tokens=False)) == 2
    path, folder = export_checkpoint(tmp_path, tok, tiny_config(len(tok)), CONTEXT, seed=1)
    questions, dev = rows
    questions = [q for q in questions if len(mmlu_prompt(q, [])) < 300][:6]  # bytes are tokens here
    want, _ = harness_loglikelihoods(folder, questions, dev, 0)
    for kind, where in (("weight", path), ("hf", folder)):
        em = load_eval_model(ModelSpec(kind, str(where)), "", None, "cpu", torch.float32, None)
        ll, _ = mmlu_loglikelihoods(em, questions, dev, 0, batch_size=3)
        assert (ll - want).abs().max().item() < 1e-4
    # a two-token letter is not scored on its first token alone: " " is shared by all four
    conts = letter_continuations(em, [mmlu_prompt(questions[0], [])], [questions[0].subject])[0]
    space = tok.encode(" ", add_special_tokens=False)
    assert conts[1] == tuple(space + tok.encode("B", add_special_tokens=False))


class NonLocalTokens(EvalModel):
    """A test double for a tokenizer whose tokens of " X" depend on text far before it (no real
    byte-level BPE does this): after a professional law header, " C" is split in two tokens."""

    def __init__(self, tok):
        super().__init__("nonlocal", "memory", tok, 4096, "cpu", torch.float32, {})

    def encode(self, texts):
        out = super().encode(texts)
        for t, ids in zip(texts, out, strict=True):
            if "about professional law" in t and t.endswith(" C"):
                ids[-1:] = super().encode([" "])[0] + super().encode(["C"])[0]
        return out


def test_letter_tokens_are_split_in_full_when_they_depend_on_the_prompt(tokenizer_dir, rows):
    questions, _ = rows
    em = NonLocalTokens(load_tokenizer(tokenizer_dir))
    prompts = [mmlu_prompt(q, []) for q in questions]
    conts = letter_continuations(em, prompts, [q.subject for q in questions])
    for p, c in zip(prompts, conts, strict=True):
        want = [tuple(em.encode([p + " " + x])[0][len(em.encode([p])[0]) :]) for x in "ABCD"]
        assert list(c) == want
    assert any(len(c[2]) == 2 for c in conts) and any(len(c[2]) == 1 for c in conts)


def test_fewer_dev_examples_than_shots_is_refused(exported, rows):
    path, _ = exported
    questions, dev = rows
    em = load_eval_model(ModelSpec("weight", str(path)), "", None, "cpu", torch.float32, None)
    with pytest.raises(UserError, match=r"has only 5 dev examples; use --shots 5 or fewer"):
        mmlu_eval(em, questions, dev, 6, batch_size=4)


def test_export_records_the_trained_context_where_harnesses_read_it(exported):
    from transformers import AutoConfig, AutoTokenizer

    _, folder = exported
    assert AutoConfig.from_pretrained(str(folder)).max_position_embeddings == CONTEXT
    assert AutoTokenizer.from_pretrained(str(folder)).model_max_length == CONTEXT
    assert json.loads((folder / "minigpt.json").read_text())["context_length"] == CONTEXT


def test_minigpt_eval_starts_with_bos_like_the_exported_tokenizer(exported, tokenizer_dir):
    path, folder = exported
    ours = load_eval_model(ModelSpec("weight", str(path)), "", None, "cpu", torch.float32, None)
    theirs = load_eval_model(ModelSpec("hf", str(folder)), "", None, "cpu", torch.float32, None)
    assert isinstance(ours, MiniGPTEval) and ours.prompt_start() == theirs.prompt_start() == [ours.bos_id]
    assert ours.start() == theirs.start() == [ours.bos_id]


def test_bench_script_compares_per_question(exported, tmp_path):
    """scripts/dev/bench_mmlu_harness.py without the harness: our checkpoint and its export through
    transformers give the same answer on every question (fp32), and the report says so."""
    from tests.helpers import run_script

    path, _ = exported
    out = tmp_path / "bench.json"
    proc = run_script(
        "scripts/dev/bench_mmlu_harness.py",
        "--weight",
        str(path),
        "--limit",
        "12",
        "--dtypes",
        "float32",
        "--no_harness",
        "--output",
        str(out),
        env={"OMP_NUM_THREADS": "1"},
    )
    report = json.loads(out.read_text())
    assert report["reference"] == "eval_llm --weight float32"
    (row,) = report["summary"]
    assert row["setting"] == "eval_llm --hf float32" and row["n"] == 12
    assert row["same_answer"] == 12 and row["max_abs_diff"] < 1e-4
    assert "12/12 (100.00%)" in proc.stdout
