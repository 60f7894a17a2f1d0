"""train_midtrain starts from the token stores prepare_dataset wrote: tokenize once per run.

A tokens-mode mixture prepared with the model's tokenizer: --use_prepared trains without
tokenizing (the log names prepare's stores, the token cache stays empty), and another
--max_seq_len starts from the same stores without tokenizing either (the store has no row length).
"""

from __future__ import annotations

import json
import textwrap

from tests.helpers import run_script, shared_file
from tests.trainer.test_midtrain import midtrain_args


def test_midtrain_starts_from_prepares_stores_at_any_row_length(tmp_path, pretrained, tokenizer_dir):
    d = shared_file()
    cfg = tmp_path / "mix.yaml"
    cfg.write_text(
        textwrap.dedent(f"""\
        name: mix
        mix_by: tokens
        total_tokens: 60000
        val_ratio: 0.1
        seed: 7
        sources:
          - {{name: replay, data_files: {d}/tinystories/validation_first1000.jsonl, ratio: 0.5}}
          - {{name: code, data_files: {d}/code_instructions/code_alpaca_2k.jsonl, format: alpaca, ratio: 0.5}}
        """)
    )
    data = tmp_path / "data"
    run_script(
        "scripts/prepare_dataset.py", "--config", str(cfg), "--output_dir", str(data),
        "--tokenizer_path", str(tokenizer_dir), "--num_proc", "1",
    )  # fmt: skip
    stores = json.loads((data / "mix_manifest.json").read_text())["outputs"]
    for seq_len in ("128", "64"):
        out = tmp_path / f"run{seq_len}"
        proc = run_script(
            *midtrain_args(str(cfg), data, pretrained, out, "--from_weight", "pretrain", "--max_steps", "1"),
            "--max_seq_len", seq_len,
        )  # fmt: skip
        lines = [line for line in proc.stdout.splitlines() if line.startswith("token store:")]
        assert lines == [
            f"token store: {data / 'mix_train.store'} (from prepare_dataset, {stores['train']['store']['tokens']:,} tokens)",
            f"token store: {data / 'mix_val.store'} (from prepare_dataset, {stores['val']['store']['tokens']:,} tokens)",
        ], proc.stdout
        assert "tokenized now" not in proc.stdout and not list(out.glob("cache/store-*"))
        assert f" rows of {seq_len}, fill " in proc.stdout  # the packing line: rows derived at start
