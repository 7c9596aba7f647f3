"""Stage 6 (paper section 5): the five tasks in English and the target language, and the run report.

- ``tasks``: task definitions (YAML data) and the built-in suites under ``tasks/``.
- ``formats``: readers for ParsiNLU, PN-Summary, SNI, TSV/line-aligned translation and plain JSONL/CSV.
- ``prompts``: instruction + input rendering, few-shot, chat template or plain text.
- ``scoring``: batched log-likelihood of label options, batched generation, answer parsing.
- ``metrics``: accuracy, BLEU/chrF (sacrebleu), ROUGE-L, the random baseline.
- ``backends``: a local Hugging Face model or an OpenAI-compatible API.
- ``protocols``: the input translation protocol (paper Table 7).
- ``evaluate``: one model over a list of tasks, producing result rows.
- ``report``: results.json/csv, the self-contained HTML page and the Markdown table.
- ``stage``: ``run(ctx)`` for ``langadapt eval`` / ``langadapt run``.
"""
