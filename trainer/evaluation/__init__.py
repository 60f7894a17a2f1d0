"""The evaluation wing: the library behind eval_llm.py, scoring checkpoints side by side.

Metrics, each computed for every model on exactly the same data:

- language modelling per source: loss, perplexity and bits per byte of a prepared val split,
  each document scored on its own as ``BOS doc EOS`` (long documents in windows of the model's
  context, every token predicted once), so per-source bits per byte are exact;
- MMLU: the log-likelihood of the answer letters after the standard prompt (0-shot and k-shot),
  micro / macro / per-subject accuracy with standard errors;
- code: loss of the canonical HumanEval and MBPP solutions given their prompts, and greedy
  generations for a few HumanEval prompts;
- samples: greedy generations for fixed story / code / question prompts.

A model is an :class:`EvalModel`: our checkpoint (rebuilt from the file alone) or a
transformers model folder such as the one scripts/export_hf.py writes.

Modules: ``models`` (our checkpoints and transformers folders behind one interface), ``lm``
(loss, perplexity, bits per byte; code-solution loss), ``mmlu``, ``suite`` (every metric for
every model, samples), ``data`` (loading the evaluation sets), ``report`` (table, JSON,
Markdown, PNG). The training core never imports this package.
"""
