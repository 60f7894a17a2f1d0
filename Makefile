# miniGPT: `make demo` runs the whole pipeline on the shipped smoke sample; `make test` runs the suite.
# Both create .venv on first use. TORCH picks the torch build: torch==2.13.0 is a CPU wheel on a
# CPU-only machine of ours, and PyPI's default (CUDA) build on a Linux GPU machine; for another CUDA
# version: make install TORCH="torch --index-url https://download.pytorch.org/whl/cu126"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := out/demo

.PHONY: install test lint format demo bench ablation clean

$(STAMP): pyproject.toml requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest -q

# The whole pipeline on the smoke sample shipped in dataset/demo/ (generated, not real data):
# prepare -> tokenizer -> pretrain -> midtrain -> side-by-side evaluation. Artifacts under out/demo/.
DEMO_MODEL := --hidden_size 128 --num_hidden_layers 4 --num_attention_heads 4 --num_key_value_heads 2
DEMO_RUN := --max_seq_len 256 --batch_size 16 --log_interval 10 --save_dir $(DEMO) --checkpoint_dir $(DEMO)/checkpoints --cache_dir $(DEMO)/cache
demo: install
	$(BIN)/python scripts/prepare_dataset.py --config config/data/pretrain/demo.yaml --output_dir $(DEMO)/data --overwrite
	$(BIN)/python scripts/prepare_dataset.py --config config/data/demo.yaml --output_dir $(DEMO)/data --overwrite
	$(BIN)/python scripts/train_tokenizer.py --data_path $(DEMO)/data/pretrain_demo_train.jsonl \
		--data_path $(DEMO)/data/demo_train.jsonl --vocab_size 2048 --output_dir $(DEMO)/tokenizer
	$(BIN)/python trainer/train_pretrain.py --data_path $(DEMO)/data/pretrain_demo_train.jsonl \
		--val_path $(DEMO)/data/pretrain_demo_val.jsonl --tokenizer_path $(DEMO)/tokenizer $(DEMO_MODEL) $(DEMO_RUN) \
		--epochs 3 --learning_rate 2e-3 --eval_interval 25
	$(BIN)/python trainer/train_midtrain.py --data_config config/data/demo.yaml --use_prepared --prepared_dir $(DEMO)/data \
		--from_weight pretrain $(DEMO_RUN) --epochs 2 --learning_rate 1e-3 --eval_interval 15
	$(BIN)/python eval_llm.py --save_dir $(DEMO) --weight pretrain --weight midtrain \
		--val_path $(DEMO)/data/demo_val.jsonl --no_hub --output $(DEMO)/eval/demo.json
	@echo "demo artifacts: data $(DEMO)/data | tokenizer $(DEMO)/tokenizer | weights $(DEMO)/*.pth | resume $(DEMO)/checkpoints | eval $(DEMO)/eval"

# The replay / re-warmup ablation on the real rows in ../shared/data (~30 min on 2 CPU cores):
# out/ablation/replay_ablation_local/report.md. ABLATION=config/experiments/replay_ablation.yaml for the Hub version.
ABLATION ?= config/experiments/replay_ablation_local.yaml
ablation: install
	$(BIN)/python scripts/run_ablation.py --config $(ABLATION)

bench: install
	$(BIN)/python scripts/bench_train.py
	$(BIN)/python scripts/bench_eval.py

clean:
	rm -rf $(DEMO) out/cache
