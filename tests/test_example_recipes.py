"""The example recipes (configs/examples/): Qwen2.5-0.5B taught Persian and Hindi from Hub datasets named
by id and config. They validate, `plan` runs on them offline, their evaluation tasks resolve, and the Hindi
one's corpus section runs through the clean stage when its datasets are local folders laid out as on the Hub."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import REPO

from langadapt import layout
from test_hub_sources import make_repo

EXAMPLES = sorted((REPO / "configs" / "examples").glob("*.yaml"))


def test_there_are_two_languages_in_two_scripts():
    from langadapt.recipe import load_recipe

    langs = {load_recipe(p).language.code for p in EXAMPLES}
    assert langs == {"fa", "hi"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_validates_names_hub_datasets_and_plans_offline(path, capsys):
    from langadapt.cli import main
    from langadapt.eval.tasks import check_languages, load_tasks
    from langadapt.recipe import load_recipe

    recipe = load_recipe(path)
    sources = recipe.data_sources()
    assert all("/" in s.path and not (path.parent / s.path).exists() for s in sources)  # all on the Hub
    assert {s.config for s in recipe.data.corpus} and all(s.config for s in recipe.data.corpus)
    assert all(s._tokens_with == "Qwen/Qwen2.5-0.5B" for s in sources)
    tasks = load_tasks(recipe.eval.tasks, recipe_dir=path.parent, paths=recipe.eval.paths,
                       target_language=recipe.language.code, select=recipe.eval.select)
    check_languages(tasks, recipe.language.code)
    assert any(t.data.format == "hf" and t.data.config for t in tasks)
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "494,032,768 base model" in out  # Qwen2.5-0.5B: 0.49B parameters, as its model card says


def test_the_hindi_corpus_cleans_from_datasets_laid_out_as_on_the_hub(tmp_path):
    from langadapt.recipe import load_recipe
    from langadapt.run import run_stage

    hindi = [
        "मेरी माँ हर सुबह हम सबके लिए गरम चाय बनाती हैं।",
        "कल शाम हम पूरे परिवार के साथ पार्क में घूमने गए।",
        "हमारे गाँव के पास एक बहुत पुरानी और सुंदर नदी बहती है।",
        "मेरा छोटा भाई हर रोज़ स्कूल के बाद क्रिकेट खेलता है।",
        "बारिश के मौसम में सड़कों पर बहुत पानी भर जाता है।",
        "पुस्तकालय में आज नई किताबों की एक बड़ी खेप आई है।",
        "दादी जी हमें रात को सोने से पहले कहानियाँ सुनाती थीं।",
        "इस साल हमारे शहर में सर्दी बहुत ज़्यादा पड़ी थी।",
    ]
    fineweb = make_repo(tmp_path / "fineweb-2", {"hin_Deva": {"train": [{"text": t, "id": str(i)} for i, t in
                                                                         enumerate(hindi)]}}, files=2)
    wiki = make_repo(tmp_path / "wikipedia", {"20231101.hi": {"train": [{"text": hindi[0] + "\n" + hindi[3],
                                                                         "id": "w1"}]}}, files=1)
    data = yaml.safe_load((REPO / "configs" / "examples" / "qwen2.5-0.5b-hi.yaml").read_text(encoding="utf-8"))
    local = {"HuggingFaceFW/fineweb-2": str(fineweb), "wikimedia/wikipedia": str(wiki)}
    for s in data["data"]["corpus"]:
        s["path"] = local[s["path"]]
    recipe_path = tmp_path / "hi.yaml"
    recipe_path.write_text(yaml.safe_dump({
        "name": "hi", "base_model": data["base_model"], "language": data["language"],
        "output_dir": str(tmp_path / "runs"), "data": {"corpus": data["data"]["corpus"]},
        "clean": {**data["clean"], "workers": 1},
    }, allow_unicode=True), encoding="utf-8")
    recipe = load_recipe(recipe_path)
    run_stage(recipe, "clean", resume=False)
    out = recipe.run_dir / "clean"
    kept = [json.loads(line)["text"] for f in (out / layout.DOCUMENTS).glob("*.jsonl") for line in f.open(encoding="utf-8")]
    assert sorted(kept) == sorted(hindi)  # every Hindi sentence kept once: the wiki copies are duplicates
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["totals"]["drops"]["language"] == 0 and report["totals"]["drops"]["duplicate"] == 2
