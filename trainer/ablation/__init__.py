"""The ablation wing: the library behind scripts/run_ablation.py.

The script drives the project's own scripts (prepare_dataset, train_tokenizer, train_pretrain,
train_midtrain, eval_llm) as processes; this package holds everything about the study that is
not running a process, so it can be unit-tested: ``config`` (the study YAML, derived mixtures),
``stats`` (intervals, the early spike), ``report`` (Markdown, JSON, plots). The training core
never imports this package.
"""
