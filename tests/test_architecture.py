"""The shape of the package (issue 14): layers import only downwards, the list of stages is written once
(``stages.py``), and what a stage reads of another goes through ``layout.py``."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "langadapt"

# Lower number = lower layer. A module may import modules of its own layer or below, never above.
LAYERS = [
    ("errors", "files", "distributed", "stages", "layout", "memory"),  # 0: no knowledge of recipes or models
    ("recipe", "models", "weights"),  # 1: the validated recipe, loading models
    ("data", "train", "plan", "clean.*", "tokenizer.*", "sft.*", "translate.*", "eval.*"),  # 2: parts of stages
    ("clean.stage", "tokenizer.stage", "align", "pretrain", "translate.stage", "sft.stage", "eval.stage",
     "report"),  # 3: the stages, and the report that reads what they wrote
    ("serve", "run", "check", "cleanup"),  # 4: what uses finished stages, the runner, its checks before a run, clean-up
    ("cli", "__main__"),  # 5
]


def layer_of(module: str) -> int:
    """The layer of ``module`` (dotted, without 'langadapt.'): the most specific pattern that matches."""
    best, best_len = None, -1
    for i, patterns in enumerate(LAYERS):
        for p in patterns:
            exact = p[:-2] if p.endswith(".*") else p  # "clean.*": the package and its modules
            hit = module == exact or module.startswith(exact + ".")
            if hit and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"langadapt.{module} has no layer in LAYERS; add it"
    return best


def modules() -> dict[str, Path]:
    out = {}
    for f in SRC.rglob("*.py"):
        parts = f.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            out[".".join(parts)] = f
    return out


def imports_of(path: Path) -> set[str]:
    """Every langadapt module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("langadapt"):
            base = node.module.removeprefix("langadapt").lstrip(".")
            for alias in node.names:  # `from langadapt import stages` imports the module stages
                found.add(f"{base}.{alias.name}".lstrip(".") if not base else base)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("langadapt.") for a in node.names if a.name.startswith("langadapt.")}
    return {m for m in found if m}


def test_no_module_imports_from_a_higher_layer():
    mods = modules()
    upward = []
    for name, path in sorted(mods.items()):
        for target in sorted(imports_of(path)):
            known = target if target in mods else target.rsplit(".", 1)[0]
            if known in mods and layer_of(known) > layer_of(name):
                upward.append(f"{name} (layer {layer_of(name)}) imports {known} (layer {layer_of(known)})")
    assert upward == []


def test_the_list_of_stages_is_written_only_in_the_stage_table():
    from langadapt import stages

    names = set(stages.ORDER) | {"base"}
    lists = []
    for name, path in modules().items():
        if name == "stages":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2:
                values = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
                if len(values) == len(node.elts) and sum(v in stages.ORDER for v in values) >= 2 and set(values) <= names:
                    lists.append(f"{name}:{node.lineno} {values}")
    assert lists == []


def test_stage_outputs_are_located_by_the_layout_module_only():
    """Output file names of stages are spelled in layout.py; other modules use its constants and methods."""
    spelled = ("bpc.json", "metrics.jsonl", "COMPLETE.json", "STARTED.json", "results.json", "report.json")
    found = []
    for name, path in modules().items():
        if name == "layout":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in spelled:
                found.append(f"{name}:{node.lineno} {node.value!r}")
    assert found == []


def test_every_stage_in_the_table_has_a_package_with_a_stage_module():
    from langadapt import stages

    for s in stages.TABLE:
        module, func = s.entry.split(":")
        assert module == f"langadapt.{s.name}.stage" and func == "run", s.entry
        assert (SRC / s.name / "stage.py").is_file()


def test_the_layer_checker_sees_an_upward_import(tmp_path):
    """The checker itself: a layer-0 module importing the recipe is reported."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from langadapt.recipe import Recipe\n    from langadapt import stages\n", encoding="utf-8")
    assert imports_of(f) == {"recipe", "stages"}
    assert layer_of("recipe") > layer_of("layout")
