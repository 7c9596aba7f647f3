"""`langadapt clean RECIPE`: the recipe's corpus to clean target-language documents (paper 3.1).

Each source document (a line, a file, a JSONL record, or a run of lines: the source's ``doc_per``)
is cut into sentences; the paper's rules and exact (and near) deduplication judge sentences; the
kept sentences of each document are written back together, in order, as one document (C4's way:
a dropped sentence leaves a gap, not a split).

Writes into the stage folder: ``documents/*.jsonl`` (``{"text", "source", "type", "sentences",
"lang_prob"}`` per line; ``*.parquet`` with ``output_format: parquet``), ``report.json`` and
``report.csv`` (per source: bytes before and after, sentences in and out, documents out, drops per
reason; plus totals), ``rejects/<reason>/*.jsonl`` with ``rejects: true``, and the datatrove logs
in ``logs/``.
"""

from __future__ import annotations

import shutil
import time

from langadapt.errors import LangadaptError


def run(ctx) -> dict:
    """Clean ``ctx.recipe.data.corpus`` into ``ctx.out_dir``; return the report's totals."""
    recipe, cfg = ctx.recipe, ctx.recipe.clean
    if not recipe.data.corpus:
        raise LangadaptError("clean: data.corpus lists no sources; add at least one corpus source")
    from langadapt.clean.pipeline import Job, build_passes, finish, run_passes
    from langadapt.clean.report import build_report, collect_counts, empty_result, print_report, write_report
    from langadapt.clean.langid import check_language
    from langadapt.data.corpus import plan_pieces
    from langadapt.clean.hub import open_datasets

    lang = recipe.language.code
    check_language(lang)
    job = Job(sources=recipe.data.corpus, resolve=recipe.resolve, lang=lang, cfg=cfg, out_dir=ctx.out_dir,
              seed=recipe.seed)
    # every input is found and opened (Parquet schemas, dataset configs, splits and columns) before any work starts
    plan = plan_pieces(job.sources, job.resolve, job.tasks, datasets=False)
    job.datasets = open_datasets(job.sources, job.resolve)
    total_bytes = sum(p.size for task in plan for p in task) + sum(s.max_bytes or 0 for _, s, _ in job.datasets)
    if job.work.exists() and not ctx.resume:
        shutil.rmtree(job.work)
    job.work.mkdir(parents=True, exist_ok=True)
    where = f"{job.tasks} Slurm tasks" if job.slurm else f"{job.workers} worker process(es)"
    size = f"{total_bytes / 1e6:,.1f} MB" + (" + Hugging Face datasets" if any(
        s.max_bytes is None for _, s, _ in job.datasets) else "")
    ctx.log(f"clean: {len(job.sources)} source(s), {size}, {where}, language {lang}")
    for _, s, opened in job.datasets:
        ctx.log(f"clean: {s.name}: dataset {opened.name}" + (f" ({opened.options['name']})" if opened.options.get("name")
                else "") + f", split {opened.options.get('split', 'train')}, "
                + (f"streamed in {opened.n_shards} file(s)" if opened.streaming else "downloaded"))

    t0 = time.time()
    run_passes(job, build_passes(job, plan), total_bytes=total_bytes, console=ctx.console)
    seconds = time.time() - t0

    report = build_report(job.sources, collect_counts(job.work / "logs"), near_dedup=cfg.near_dedup)
    report["run"] = {
        "language": lang, "lang_threshold": cfg.lang_threshold, "min_words": cfg.min_words,
        "executor": cfg.executor, "tasks": job.tasks, "workers": job.workers, "seconds": round(seconds, 2),
        "mb_per_s": round(report["totals"]["original_bytes"] / 1e6 / seconds, 3) if seconds > 0 else None,
    }
    finish(job)
    write_report(ctx.out_dir, report)
    print_report(report, ctx.console)
    # The later stages would train on nothing; the report stays for the user to see why.
    problem = empty_result(report)
    if problem:
        raise LangadaptError(problem)
    for row in report["sources"]:
        if not row["sentences_out"]:
            ctx.log(f"clean: warning: source '{row['source']}' gave no sentences ({row['sentences_in']:,} in); "
                    "see report.json")
    return {**report["totals"], "seconds": report["run"]["seconds"]}
