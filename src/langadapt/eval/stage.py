"""The eval stage: the base model, every enabled stage's model and any extra models on the recipe's
tasks (lm-evaluation-harness ones too, ``harness.py``), written as results.json/results.csv, with the run
report beside them.

Each model's rows are cached in ``cache/`` as soon as it is done, so a killed evaluation resumes at
the next model instead of starting over.
"""

from __future__ import annotations

import time
from pathlib import Path

from langadapt import stages
from langadapt.eval import harness, protocols
from langadapt.eval.evaluate import EvalSettings, evaluate_model, settings_dict, task_info
from langadapt.eval.tasks import check_languages, load_tasks
from langadapt.files import atomic_path, read_json, write_json
from langadapt.recipe import eval_columns


def model_entries(recipe) -> list[dict]:
    """The columns to evaluate (named as ``recipe.eval_columns`` names them, which the recipe's validation
    checked): name, stage, and where the model is (path or API settings)."""
    cfg = recipe.eval
    names = eval_columns(recipe)
    run_stages = names[: len(names) - len(cfg.models)]
    out = [{"name": s, "stage": s, "path": recipe.model_path(s)} for s in run_stages]
    for name, m in zip(names[len(run_stages):], cfg.models):
        if isinstance(m, str):
            out.append({"name": name, "stage": "extra", "path": str(recipe.resolve(m)) if recipe.resolve(m).exists() else m})
        elif m.path is not None:
            p = recipe.resolve(m.path)
            out.append({"name": name, "stage": "extra", "path": str(p) if p.exists() else m.path})
        else:
            out.append({"name": name, "stage": "extra", "api": m.model_dump(mode="json")})
    return out


def make_backend(entry: dict, cfg):
    from langadapt.eval.backends import ApiBackend, LocalBackend

    if "api" in entry:
        a = entry["api"]
        return ApiBackend(name=entry["name"], base_url=a["base_url"], model=a["model"], api_key_env=a["api_key_env"],
                          concurrency=a["concurrency"])
    return LocalBackend.load(entry["path"], name=entry["name"], device=cfg.device, prompt_format=cfg.prompt_format,
                             max_length=cfg.max_length, share_prefix=cfg.share_prefix)


def eval_settings(recipe) -> EvalSettings:
    cfg = recipe.eval
    return EvalSettings(mode=cfg.mode, batch_size=cfg.batch_size, max_examples=cfg.max_examples,
                        max_examples_per_task=dict(cfg.max_examples_per_task), few_shot=cfg.few_shot,
                        max_new_tokens=cfg.max_new_tokens, repetition_penalty=cfg.repetition_penalty, seed=recipe.seed)


def heldout_bpc_rows(recipe, lm, tokenizer, *, model: str, stage: str) -> list[dict]:
    """Held-out bits per character of a model no training stage measured (the base, extra models)."""
    from langadapt.train.bpc import bits_per_char, read_heldout

    rows = []
    for key, text in read_heldout(recipe).items():
        if key not in ("target", "english"):  # the table's row is line-level; documents stay in bpc.json
            continue
        lang = recipe.language.code if key == "target" else "en"
        rows.append({"model": model, "stage": stage, "task": "heldout", "language": lang, "metric": "bpc",
                     "value": round(bits_per_char(lm, tokenizer, text), 6), "n": None, "protocol": "original",
                     "settings": {"source": "measured by eval"}})
    return rows


def bpc_rows(recipe) -> list[dict]:
    """Held-out bits per character each training stage measured at its end (its bpc.json), as result rows."""
    rows = []
    for stage in stages.TRAINING:
        end = recipe.layout.bpc_end(stage)
        for key, lang in (("target", recipe.language.code), ("english", "en")):
            if key in end:
                rows.append({"model": stage, "stage": stage, "task": "heldout", "language": lang, "metric": "bpc",
                             "value": end[key], "n": None, "protocol": "original",
                             "settings": {"source": str(recipe.layout.bpc_path(stage))}})
    return rows


def input_files(recipe) -> list[Path]:
    """The task files and data files the recipe's evaluation reads (for the stage's settings hash), and the
    folders of lm-eval task files."""
    cfg = recipe.eval
    recipe_dir = recipe.source_path.parent if recipe.source_path else None
    native, select, _ = harness.selection(cfg)
    tasks = load_tasks(native, recipe_dir=recipe_dir, paths=cfg.paths, target_language=recipe.language.code,
                       select=select)
    files = [p for t in tasks for p in t.paths] + [t.reference_path for t in tasks if t.reference_path]
    files += harness.include_paths(recipe)
    if cfg.protocol.enabled and cfg.protocol.translator == "file" and cfg.protocol.file:
        files.append(recipe.resolve(cfg.protocol.file))
    return [Path(p) for p in files]


def run(ctx) -> dict:
    """Evaluate every model column on every task; write results and the report."""
    from langadapt.eval.results import summary_table, write_results
    from langadapt.report import write_report

    recipe, cfg = ctx.recipe, ctx.recipe.eval
    t0 = time.time()
    recipe_dir = recipe.source_path.parent if recipe.source_path else None
    native, select, harness_names = harness.selection(cfg)
    tasks = load_tasks(native, recipe_dir=recipe_dir, paths=cfg.paths, target_language=recipe.language.code,
                       select=select, tokens_with=recipe.base_model)
    check_languages(tasks, recipe.language.code)
    for t in tasks:  # read every data file before loading any model: bad data fails in seconds
        t.examples()
        if t.unlabeled:
            ctx.log(f"  eval: {t.id}: {t.unlabeled:,} rows without a gold label skipped (counted as 'unlabeled')")
    lm_tasks = harness.Harness.load(recipe, harness_names) if harness_names else None
    entries = model_entries(recipe)
    settings = eval_settings(recipe)
    file_map = None
    if cfg.protocol.enabled and cfg.protocol.translator == "file":
        file_map = protocols.read_translation_file(recipe.resolve(cfg.protocol.file))

    cache = ctx.out_dir / "cache"
    preds = ctx.out_dir / "predictions"
    rows: list[dict] = []
    models_info = []
    for entry in entries:
        cached = cache / f"{entry['name']}.json"
        if ctx.resume and cached.is_file():
            ctx.log(f"  eval: {entry['name']} already evaluated (resuming)")
            data = read_json(cached)
            rows += data["rows"]
            models_info.append(data["model"])
            continue
        ctx.log(f"  eval: {entry['name']} ({entry.get('path') or entry['api']['model']})")
        backend = make_backend(entry, cfg)
        m_rows = evaluate_model(backend, tasks, settings, model=entry["name"], stage=entry["stage"],
                                predictions_dir=preds, console=ctx.console)
        if cfg.protocol.enabled and (cfg.protocol.models is None or entry["name"] in cfg.protocol.models):
            p_tasks = [t for t in tasks if protocols.applies_to(t)]
            for variant in cfg.protocol.variants:
                def parts_for(task, examples, variant=variant, model=entry["name"]):
                    parts = protocols.make_parts(variant, task, examples, translator=cfg.protocol.translator,
                                                 backend=backend, file_map=file_map, few_shot=settings.shots(task),
                                                 seed=settings.seed, batch_size=settings.batch_size,
                                                 max_new_tokens=cfg.protocol.max_new_tokens,
                                                 repetition_penalty=settings.repetition_penalty, console=ctx.console)
                    if parts.translations:  # what the model was given, for anyone checking the translations
                        name = f"{model}__{task.language}_{task.name}__{protocols.VARIANTS[variant]}.translations.json"
                        write_json(preds / name, parts.translations)
                    return parts
                m_rows += evaluate_model(backend, p_tasks, settings, model=entry["name"], stage=entry["stage"],
                                         protocol=protocols.VARIANTS[variant], parts_for=parts_for,
                                         predictions_dir=preds, console=ctx.console)
        if lm_tasks is not None:
            if getattr(backend, "supports_loglik", False):
                m_rows += lm_tasks.evaluate(backend, model=entry["name"], stage=entry["stage"], log=ctx.log)
            else:
                ctx.log(f"  eval: {entry['name']}: lm_eval: tasks skipped (they need a local model, not an API)")
        if entry["stage"] not in stages.TRAINING and getattr(backend, "tokenizer", None) is not None:
            m_rows += heldout_bpc_rows(recipe, backend.model, backend.tokenizer, model=entry["name"], stage=entry["stage"])
        info = {"name": entry["name"], "stage": entry["stage"], **backend.settings()}
        backend.close()
        write_json(cached, {"model": info, "rows": m_rows})
        rows += m_rows
        models_info.append(info)

    rows += bpc_rows(recipe)
    infos = [task_info(t, settings) for t in tasks]
    for t in infos:  # the random column as rows too, for anyone reading the CSV alone
        if t["random"] is not None:
            rows.append({"model": "random", "stage": "random", "task": t["name"], "language": t["language"],
                         "metric": "accuracy", "value": round(t["random"], 6), "n": t["n"], "protocol": "original",
                         "settings": {"rule": "expected accuracy of uniform guessing over each item's options"}})
    results = {
        "run": recipe.name, "base_model": recipe.base_model, "language": recipe.language.model_dump(mode="json"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "settings": {**settings_dict(settings),
        "prompt_format": cfg.prompt_format, "tasks": cfg.tasks, "protocol": cfg.protocol.model_dump(mode="json")},
        "models": models_info, "tasks": infos, "rows": rows,
    }
    if lm_tasks is not None:
        results["lm_eval"] = lm_tasks.infos()
    write_results(ctx.out_dir, results)
    summary = {"models": [m["name"] for m in models_info],
               "tasks": [t["id"] for t in infos] + [t["id"] for t in results.get("lm_eval", [])],
               "rows": len(rows), "seconds": round(time.time() - t0, 1)}
    if cfg.report:
        html_path, markdown = write_report(recipe.run_dir, ctx.out_dir / "report.html")
        with atomic_path(ctx.out_dir / "report.md") as tmp:
            tmp.write_text(markdown + "\n", encoding="utf-8")
        if ctx.console is not None:  # the table holds characters rich would read as markup
            ctx.console.print(markdown, markup=False, highlight=False)
        else:
            print(markdown, flush=True)
        ctx.log(f"  report: {html_path}")
        summary["report"] = str(html_path)
    summary["table"] = summary_table(results)
    return summary
