"""`langadapt check` and the checks `run` makes before its first stage: every input the recipe names,
read the way the stage that uses it will read it, on its first records.

What the recipe alone can get wrong is refused when it is loaded (``recipe.py``); what needs the
files is found here, in seconds, instead of after hours of training: a corpus whose JSONL lacks
its text field or is not UTF-8, a parallel file with broken column counts, swapped or shifted
sides (the first ``PARALLEL_LINES`` lines, with the parallel reader's own checks and its
``max_bad_share``), instructions in another format than declared, held-out text that cannot be
read, evaluation suites and task files (read whole: they are small, and a bad label would stop
the eval stage after every training stage), a translation file for the protocol, and Hugging
Face hub ids (the base model, translators, extra eval models, datasets and their configs): one
quick call each, no retries; with ``HF_HUB_OFFLINE=1`` or no network, the local cache must hold
them. Only the inputs of enabled stages are read. Data readers are the stages' own (``data``,
``eval.tasks``); this module only calls them.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from langadapt import stages
from langadapt.data.hub import looks_like_hub_id
from langadapt.errors import DataError, LangadaptError

CORPUS_RECORDS = 1000
"""Records read of each corpus source (a format or field mistake shows on the first)."""
PARALLEL_LINES = 2000
"""Lines read of each parallel source: enough for its share of bad lines and for a shift to show."""
INSTRUCTION_RECORDS = 200
"""Conversations read of each instruction source."""
HUB_TIMEOUT = 10.0
"""Seconds one hub call may take."""


@dataclass
class Checked:
    """One input that was read: what it is (``data.corpus[0] 'news'``) and what was found."""

    what: str
    found: str


def _uses(recipe, kind: str) -> bool:
    """Whether an enabled stage reads ``recipe.data.<kind>`` (the stage table's ``data``)."""
    return any(recipe.enabled(s.name) and kind in s.data for s in stages.TABLE)


def _recipe_path(recipe) -> str | None:
    return str(recipe.source_path) if recipe.source_path else None


# --------------------------------------------------------------------------- the hub


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _cached(repo_id: str, kind: str) -> bool:
    """Whether the local Hugging Face caches hold ``repo_id`` (the hub's snapshots; for datasets also
    the datasets library's prepared copies)."""
    from huggingface_hub import constants

    home = os.environ.get("HF_HOME")
    hub = Path(os.environ.get("HF_HUB_CACHE") or (Path(home) / "hub" if home else constants.HF_HUB_CACHE))
    snapshots = hub / f"{kind}s--{repo_id.replace('/', '--')}" / "snapshots"
    if snapshots.is_dir() and any(snapshots.iterdir()):
        return True
    if kind == "dataset":
        from datasets import config

        ds_cache = Path(os.environ.get("HF_DATASETS_CACHE") or (Path(home) / "datasets" if home else config.HF_DATASETS_CACHE))
        return (ds_cache / repo_id.replace("/", "___")).is_dir()
    return False


def _configs_of(info) -> list[str]:
    """The configs a dataset's card declares (``configs:`` or ``dataset_info:`` in its front matter)."""
    card = getattr(info, "card_data", None)
    card = card.to_dict() if hasattr(card, "to_dict") else (card or {})
    names = []
    for key in ("configs", "dataset_info"):
        entries = card.get(key) or []
        for e in entries if isinstance(entries, list) else [entries]:
            if isinstance(e, dict) and e.get("config_name"):
                names.append(str(e["config_name"]))
    return list(dict.fromkeys(names))


def check_hub(repo_id: str, *, kind: str, where: str, config: str | None = None) -> str:
    """That the hub has ``repo_id`` (a model or dataset; with ``config`` for a dataset): one call, no retries.
    Offline (``HF_HUB_OFFLINE=1``) or when the hub cannot be reached, the local cache must hold it. Returns
    what was found; raises a one-line ``LangadaptError`` naming ``where`` otherwise."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    if _offline():
        if _cached(repo_id, kind):
            return "in the local cache (HF_HUB_OFFLINE=1)"
        raise LangadaptError(f"{where}: '{repo_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 is "
                             f"set; download it once while online, or give a local path")
    api = HfApi()
    try:
        info = (api.model_info if kind == "model" else api.dataset_info)(repo_id, timeout=HUB_TIMEOUT)
    except GatedRepoError:
        raise LangadaptError(f"{where}: '{repo_id}' is gated on the Hugging Face hub: accept its terms on its page "
                             "and log in (hf auth login, or HF_TOKEN)") from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise LangadaptError(f"{where}: no {kind} '{repo_id}' on the Hugging Face hub (a typo, or a private repository: "
                             "log in with hf auth login or HF_TOKEN)") from None
    except HfHubHTTPError as e:
        raise LangadaptError(f"{where}: the Hugging Face hub refused '{repo_id}': {str(e).splitlines()[0][:200]}") from None
    except Exception as e:  # noqa: BLE001 - no network: connection, DNS, timeout errors of the HTTP client
        if _cached(repo_id, kind):
            return f"in the local cache (the hub could not be reached: {type(e).__name__})"
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise LangadaptError(f"{where}: cannot check '{repo_id}': the Hugging Face hub could not be reached "
                             f"({type(e).__name__}: {first}) and the local cache does not hold it") from None
    if config is not None and kind == "dataset":
        configs = _configs_of(info)
        if configs and config not in configs:
            raise LangadaptError(f"{where}: dataset '{repo_id}' has no config '{config}' (configs: {', '.join(configs)})")
    return "on the Hugging Face hub"


def _check_model(spec: str, where: str) -> str:
    from langadapt.models import resolve_model

    src = resolve_model(spec)  # a one-line ModelNotFoundError for a bad local path
    if src.kind == "hub":
        return f"model {check_hub(src.path, kind='model', where=where)}"
    return f"{src.kind} {src}"


# --------------------------------------------------------------------------- data sources


def _where(kind: str, i: int, name: str) -> str:
    return f"data.{kind}[{i}] '{name}'"


def _hub_dataset(recipe, path: str) -> str | None:
    """``path`` as a hub dataset id when it is one (nothing local by that name), else None."""
    return path if not recipe.resolve(path).exists() and looks_like_hub_id(path) else None


def _corpus(recipe, i: int, src) -> Checked:
    from langadapt.data.corpus import read_source

    where = _where("corpus", i, src.name)
    hub = _hub_dataset(recipe, src.path) if src.format == "hf" else None
    if hub:
        return Checked(where, f"dataset {check_hub(hub, kind='dataset', where=where)}")
    counts = Counter()
    first_bad = None
    for rec in islice(read_source(src, recipe.resolve), CORPUS_RECORDS):
        if rec.repeat:
            continue
        kind = "not UTF-8" if rec.invalid else "empty" if rec.empty else "text"
        counts[kind] += 1
        if rec.invalid and first_bad is None:
            first_bad = rec.where
    read = sum(counts.values())
    if read and counts["not UTF-8"] == read:
        path, _, offset = first_bad.rpartition(":")
        line = _line_at(path, offset) if path else None
        raise DataError(f"corpus source '{src.name}': none of its first {read:,} lines is UTF-8 text; save it as UTF-8",
                        path=path or first_bad, line=line)
    found = f"{src.format}, {'the first ' if read >= CORPUS_RECORDS else ''}{read:,} records: {counts['text']:,} with text"
    others = [f"{n:,} {k}" for k, n in counts.items() if k != "text" and n]
    return Checked(where, found + (f" ({', '.join(others)})" if others else ""))


def _line_at(path: str, offset: str) -> int | None:
    from langadapt.data.corpus import line_number

    return line_number(path, int(offset)) if offset.isdigit() else None


def _parallel(recipe, i: int, src) -> Checked:
    from langadapt.data.parallel import read_source

    where = _where("parallel", i, src.name)
    hub = _hub_dataset(recipe, src.path) if src.format == "hf" and src.path else None
    if hub:
        return Checked(where, f"dataset {check_hub(hub, kind='dataset', where=where)}")
    _, report = read_source(src, recipe.resolve, lang=recipe.language.code, limit=PARALLEL_LINES, seed=recipe.seed)
    first = "the first " if report.lines >= PARALLEL_LINES else ""
    return Checked(where, f"{src.format}, {first}{report.summary().split(': ', 1)[1]}")


def _instructions(recipe, i: int, src) -> Checked:
    from langadapt.data.instructions import read_instructions

    where = _where("instructions", i, src.name)
    path = recipe.resolve(src.path)
    if not path.exists() and looks_like_hub_id(src.path):
        return Checked(where, f"dataset {check_hub(src.path, kind='dataset', where=where)}")
    cap = min(src.max_records or INSTRUCTION_RECORDS, INSTRUCTION_RECORDS)
    conversations, report = read_instructions(src.model_copy(update={"max_records": cap}), path=path,
                                              seed=recipe.seed)
    if not conversations:
        why = report.summary().split(": ", 1)[-1]
        raise DataError(f"{where}: no record read is a usable '{src.format}' record ({why}); is the format right?",
                        path=str(path))
    return Checked(where, f"{src.format}, {'the first ' if report.kept >= cap else ''}{report.kept:,} conversations read"
                   + (f" ({sum(report.skipped.values()):,} records skipped)" if report.skipped else ""))


def _heldout(recipe) -> Checked:
    from langadapt.train.bpc import read_heldout

    texts = read_heldout(recipe)
    parts = [f"{k} {len(v):,} documents" if isinstance(v, list) else f"{k} {len(v):,} characters"
             for k, v in texts.items()]
    return Checked("data.heldout", ", ".join(parts))


# --------------------------------------------------------------------------- evaluation


def _eval(recipe) -> list[Checked]:
    from langadapt.eval import formats, harness
    from langadapt.eval.tasks import check_languages, load_tasks

    cfg = recipe.eval
    recipe_dir = recipe.source_path.parent if recipe.source_path else None
    native, select, _ = harness.selection(cfg)  # lm_eval: tasks are checked by harness.check_tasks
    tasks = load_tasks(native, recipe_dir=recipe_dir, paths=cfg.paths, target_language=recipe.language.code,
                       select=select, tokens_with=recipe.base_model)
    check_languages(tasks, recipe.language.code)
    out = []
    for t in tasks:
        where = f"eval task {t.id} ({t.suite})"
        if t.data.format == "hf" and not t.paths[0].exists():
            found = [check_hub(str(p), kind="dataset", where=where, config=t.data.config) for p in t.paths]
            out.append(Checked(where, f"dataset {found[0]}"))
            continue
        n = len(t.examples())
        out.append(Checked(where, f"{n:,} examples" + (f", {t.unlabeled:,} rows without a label (skipped)"
                                                      if t.unlabeled else "")))
    p = cfg.protocol
    if p.enabled and p.translator == "file" and p.file:
        from langadapt.eval.protocols import read_translation_file

        path = recipe.resolve(p.file)
        try:
            n = len(read_translation_file(path))
        except UnicodeDecodeError:
            raise formats.not_utf8([path]) or DataError("not UTF-8 text", path=str(path)) from None
        out.append(Checked("eval.protocol.file", f"{n:,} translations"))
    for i, m in enumerate(cfg.models):
        spec = m if isinstance(m, str) else m.path
        if spec is None:
            continue  # an API endpoint: reached when eval runs
        local = recipe.resolve(spec)
        out.append(Checked(f"eval.models[{i}]", _check_model(str(local) if local.exists() else spec, f"eval.models[{i}]")))
    return out


# --------------------------------------------------------------------------- all of it


def check_inputs(recipe, *, log: Callable[[Checked], None] | None = None) -> list[Checked]:
    """Read the first records of every input of the recipe's enabled stages; raise the first problem as a
    one-line ``LangadaptError``. Returns what was read, one entry per input (``log`` sees each as it is)."""
    done: list[Checked] = []

    def add(c: Checked | list[Checked]) -> None:
        for item in c if isinstance(c, list) else [c]:
            done.append(item)
            if log is not None:
                log(item)

    if recipe.base_config is None and recipe.base_model:
        from langadapt.models import resolve_model

        if resolve_model(recipe.base_model).kind == "hub":
            add(Checked("base_model", _check_model(recipe.base_model, "base_model")))
    d = recipe.data
    if _uses(recipe, "corpus"):
        for i, s in enumerate(d.corpus):
            add(_corpus(recipe, i, s))
    if _uses(recipe, "parallel"):
        for i, s in enumerate(d.parallel):
            add(_parallel(recipe, i, s))
    if _uses(recipe, "instructions"):
        for i, s in enumerate(d.instructions):
            add(_instructions(recipe, i, s))
    h = d.heldout
    if _uses(recipe, "heldout") and any((h.target, h.english, h.target_documents, h.english_documents)):
        add(_heldout(recipe))
    if recipe.enabled("sft") and recipe.sft.translation_prompts:
        from langadapt.sft.translation import load_phrasings

        table = load_phrasings(recipe.language.code, recipe.resolve(recipe.sft.translation_prompts))
        add(Checked("sft.translation_prompts", f"phrasings for {', '.join(table)}"))
    t = recipe.translate
    if recipe.enabled("translate") and t.translator == "hf" and t.model:
        local = recipe.resolve(t.model)
        add(Checked("translate.model", _check_model(str(local) if local.exists() else t.model, "translate.model")))
    if recipe.enabled("eval"):
        add(_eval(recipe))
    return done


def run_checks(recipe, *, log: Callable[[str], None] | None = None) -> tuple[list[Checked], float]:
    """``run.preflight`` (every check before the first stage), timed; ``log`` gets one line per input."""
    from langadapt.run import preflight

    t0 = time.time()
    checked = preflight(recipe, log=(lambda c: log(f"{c.what}: {c.found}")) if log else None)
    return checked, time.time() - t0
