"""The evaluation wing: the library behind eval_llm.py, scoring checkpoints side by side.

Metrics, each computed for every model on exactly the same data:

- language modelling per source: loss, perplexity and bits per byte of a prepared val split,
  each document scored on its own as ``BOS doc EOS`` (long documents in windows of the model's
  context, every token predicted once), so per-source bits per byte are exact;
- MMLU: the log-likelihood of the answer letters after the standard prompt (0-shot and k-shot),
  micro / macro / per-subject accuracy with standard errors;
- code: loss of the canonical HumanEval and MBPP solutions given their prompts, greedy generations
  for a few HumanEval prompts, and pass@1: completions run with their tests in a sandbox;
- GSM8K: exact match of greedy answers (strict and flexible-extract);
- any lm-evaluation-harness task, through an ``lm_eval`` LM over the same model;
- samples: greedy generations for fixed story / code / question prompts.

A model is an :class:`EvalModel`: our checkpoint (rebuilt from the file alone) or a
transformers model folder such as the one scripts/export_hf.py writes.

Modules: ``models`` (our checkpoints and transformers folders behind one interface; batched
generation), ``lm`` (loss, perplexity, bits per byte; code-solution loss), ``mmlu``,
``generation`` (lm-evaluation-harness's generate_until rules), ``codetasks`` (HumanEval / MBPP as
the harness's tasks), ``sandbox`` (+ ``sandbox_init``: running untrusted programs), ``codeexec``
(pass@1, the canonical-solution self-test), ``gsm8k``, ``harness`` (the lm_eval adapter),
``suite`` (every metric for every model, samples), ``data`` (loading the evaluation sets),
``report`` (table, JSON, Markdown, PNG). The training core never imports this package.
"""
