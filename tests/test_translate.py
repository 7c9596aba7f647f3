"""The translate stage: structure-preserving translation of instruction files, protected spans,
English-wording rules, cleaning rules, resume after a kill, and endpoint retries.

The translator is a stub OpenAI-compatible endpoint started by the test on 127.0.0.1: it keeps
``[[i]]`` markers and replaces every English word by a Persian one (so language identification
sees Persian), and misbehaves on purpose when a text holds one of the magic words below.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from langadapt.errors import LangadaptError
from langadapt.recipe import load_recipe
from langadapt.run import run_stage
from langadapt.translate import protect
from langadapt.translate.clean import (Duplicates, LengthRatio, ProtectedSpans, Repetition, TargetLanguage,
                                       longest_run)
from langadapt.translate.records import Item
from langadapt.translate.rules import wording_rule
from langadapt.sft.stage import translated_sources
from langadapt.translate.stage import WorkLog, translate_items
from langadapt.translate.translators import EndpointTranslator

FA_WORDS = ("کتاب خانه مدرسه دوست شهر باران درخت آب نان روز شب کار زبان خورشید بزرگ کوچک خوب زیبا امروز "
            "فردا دیروز مردم کشور دانش آموز معلم پدر مادر برادر خواهر غذا میوه سیب رنگ آبی سبز راه").split()


def fake_persian(text: str) -> str:
    """A deterministic 'translation': markers and punctuation kept, each English word a Persian word."""
    if "REPEATME" in text:
        return "کتاب خوب " * 12
    if "STAYENGLISH" in text:
        return text
    if "SAMEASOTHER" in text:
        return "این یک جمله تکراری است"
    if "LOSEMARK" in text:
        text = protect.MARKER.sub("", text)
    out = re.sub(r"[A-Za-z']+", lambda m: FA_WORDS[zlib.crc32(m.group().lower().encode()) % len(FA_WORDS)], text)
    return out + " " + " ".join(FA_WORDS) if "MAKELONG" in text else out


class StubEndpoint:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1 that records every text it is sent."""

    def __init__(self) -> None:
        self.texts: list[str] = []  # texts of the requests answered (or failed with 503)
        self.attempts: list[str] = []  # every request, refused ones included
        self.failing = True  # texts holding FAILME get HTTP 503 while this is set
        self.kill_at: int | None = None  # SIGKILL victim_pid when this request number arrives
        self.victim_pid: int | None = None
        self.key: str | None = None
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.attempts.append(body["messages"][-1]["content"])
                if stub.key and self.headers.get("Authorization") != f"Bearer {stub.key}":
                    return self._send(401, {"error": {"message": "bad key"}})
                text = body["messages"][-1]["content"]
                with stub.lock:
                    stub.texts.append(text)
                    n = len(stub.texts)
                if stub.kill_at is not None and n == stub.kill_at:
                    os.kill(stub.victim_pid, signal.SIGKILL)
                if "FAILME" in text and stub.failing:
                    return self._send(503, {"error": {"message": "overloaded"}})
                self._send(200, {"choices": [{"message": {"role": "assistant", "content": fake_persian(text)}}]})

            def _send(self, code, obj):
                data = json.dumps(obj, ensure_ascii=False).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@pytest.fixture
def endpoint():
    stub = StubEndpoint()
    yield stub
    stub.server.shutdown()
    stub.server.server_close()


CODE_OUTPUT = "Here it is:\n```python\ndef add(x, y):\n    return x + y\n```\nIt returns the sum, for example 2 + 3 = 5."
ALPACA = [
    {"id": "code", "instruction": "Write a Python function that adds {x} and {y}.", "input": "",
     "output": CODE_OUTPUT, "category": "coding"},
    {"instruction": "Summarize the article at https://example.com/news?id=42 in one sentence.",
     "input": "The city council met on 2023-05-01 and approved a budget of 1,500,000 dollars for new parks.",
     "output": "The council approved 1,500,000 dollars for parks on 2023-05-01.", "category": "summarization"},
    {"instruction": "List three fruits people eat in the summer.", "input": "",
     "output": "1. Apples from the market\n2. Oranges from the garden\n3. Bananas from the shop", "category": "brainstorming"},
    {"instruction": "Give a word that rhymes with cat.", "input": "", "output": "hat"},
    {"instruction": "Translate 'good morning' into French.", "input": "", "output": "Bonjour"},
    {"instruction": "This record has no answer at all."},
]


def write_alpaca(path: Path, records: list, bad_lines: tuple[str, ...] = ()) -> None:
    lines = [json.dumps(r) for r in records] + list(bad_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_recipe(tmp_path: Path, endpoint_url: str, **translate) -> Path:
    """A recipe file whose base model is a config-only folder (nothing is loaded from it)."""
    base = tmp_path / "base"
    base.mkdir(exist_ok=True)
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 128, "hidden_size": 32,
                                                  "intermediate_size": 64, "num_hidden_layers": 2,
                                                  "num_attention_heads": 4, "num_key_value_heads": 2}))
    settings = {"translator": "openai", "base_url": endpoint_url, "model": "stub", "batch_size": 2,
                "retries": 2, "backoff": 0.01, **translate}
    recipe = {"name": "t", "base_model": str(base), "output_dir": str(tmp_path / "runs"),
              "language": {"code": "fa", "name": "Persian"},
              "data": {"instructions": [{"name": "alpaca_en", "format": "alpaca", "path": "alpaca.jsonl", "language": "en"}]},
              "translate": settings}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------- protected spans


def test_protected_spans_survive_masking_and_a_translation_that_moves_them():
    text = ("Use `pip install x`, see https://example.org/a?b=1, call {name} with %s, email a.b@c.com,\n"
            "pay 1,500.50 on 2023-05-01.\n```bash\necho 'translate me not' 42\n```")
    masked = protect.mask(text)
    kept = ["`pip install x`", "https://example.org/a?b=1", "{name}", "%s", "a.b@c.com", "1,500.50", "2023-05-01",
            "```bash\necho 'translate me not' 42\n```"]
    assert list(masked.spans) == kept
    assert not any(s in masked.text for s in kept)
    # A translator may reorder the markers and write their digits in Persian: the spans still come back.
    words = masked.text.split(" ")
    moved = " ".join(reversed(words)).replace("[[1]]", "[[۱]]")
    restored = protect.unmask(moved, masked.spans)
    for span in kept:
        assert restored.count(span) == 1


@pytest.mark.parametrize("broken, why", [("[[0]] and [[0]]", "repeated"), ("only [[0]]", "missing"),
                                         ("[[0]] [[1]] [[7]]", "unknown")])
def test_unmask_refuses_a_translation_that_lost_repeated_or_invented_a_marker(broken, why):
    with pytest.raises(protect.SpanError, match=why):
        protect.unmask(broken, ("a", "b"))


def test_text_that_looks_like_a_marker_is_itself_protected():
    masked = protect.mask("see [[3]] and 7")
    assert masked.spans == ("[[3]]", "7")
    assert protect.unmask(masked.text, masked.spans) == "see [[3]] and 7"


# --------------------------------------------------------------------------- English-wording rules


@pytest.mark.parametrize("prompt, rule", [
    ("Correct the spelling of this sentence.", "spelling"),
    ("Give me three words that rhyme with 'light'.", "rhyme"),
    ("Identify the verbs in the sentence below.", "grammar"),
    ("Rewrite the sentence in the passive voice.", "grammar"),
    ("How many letters are in the word 'banana'?", "letters"),
    ("Find a word that starts with the letter Q.", "letters"),
    ("Make an anagram of 'listen'.", "wordplay"),
    ("Sort these names in alphabetical order: Tom, Ann, Bob.", "alphabetical"),
    ("Give a synonym for 'happy'.", "synonyms"),
    ("What does NASA stand for?", "abbreviation"),
    ("Reverse the word 'stressed'.", "reversal"),
    ("Translate 'thank you' into Spanish.", "translation"),
    ("Render the sentence below in Persian.", "translation"),
])
def test_records_bound_to_english_wording_are_caught(prompt, rule):
    assert wording_rule(prompt) == rule


@pytest.mark.parametrize("prompt", [
    "Write a cover letter for a job at a bank.",
    "Summarize the plot of the film in two sentences.",
    "What is the capital of Iran?",
    "Give three tips for staying healthy.",
    "Explain why the sky is blue.",
    "Write a short story set in Persian culture.",
])
def test_ordinary_instructions_pass_the_wording_rules(prompt):
    assert wording_rule(prompt) is None


# --------------------------------------------------------------------------- cleaning rules, one case each


def _item(**fields) -> Item:
    return Item(key="k", kind="alpaca", fields={"instruction": "", "input": "", "output": "", **fields})


def _fa(**fields) -> dict:
    return {"instruction": "", "input": "", "output": "", **fields}


def test_cleaning_drops_a_translation_whose_protected_span_was_lost():
    assert ProtectedSpans().check(_item(), _fa(), "output: missing [[0]]") == "protected span lost"
    assert ProtectedSpans().check(_item(), _fa(), None) is None


def test_cleaning_drops_degenerate_repetition_unless_the_source_repeats_too():
    rule = Repetition(4)
    src = _item(output="The weather is nice and the children play in the yard.")
    assert rule.check(src, _fa(output="هوا خوب است " * 6), None) == "repetition"
    assert rule.check(src, _fa(output="هوا خوب است و بچه‌ها در حیاط بازی می‌کنند."), None) is None
    echo = _item(output="ha ha ha ha ha ha")
    assert rule.check(echo, _fa(output="ها ها ها ها ها ها"), None) is None
    assert longest_run("........ a line of dots is not a phrase", 4) == 0


def test_cleaning_drops_implausible_length_ratios():
    rule = LengthRatio(0.3, 3.0)
    src = _item(output="The council approved the budget for the new parks.")
    assert rule.check(src, _fa(output="بله"), None) == "length ratio"
    assert rule.check(src, _fa(output="شورا بودجه را تصویب کرد " * 10), None) == "length ratio"
    assert rule.check(src, _fa(output="شورا بودجهٔ پارک‌های جدید را تصویب کرد."), None) is None
    assert rule.check(_item(output="Yes."), _fa(output="بله، درست است و همین‌طور است."), None) is None  # too short to judge


def test_cleaning_drops_translations_not_in_the_target_language():
    rule = TargetLanguage("fa", 0.5)
    src = _item(instruction="Explain why the sky is blue.")
    assert rule.check(src, _fa(instruction="Explain why the sky is blue."), None) == "not target language"
    assert rule.check(src, _fa(instruction="توضیح بده چرا آسمان آبی است."), None) is None


def test_cleaning_drops_duplicates_ignoring_case_and_spacing():
    rule = Duplicates()
    assert rule.check(_item(), _fa(output="سلام  دنیا"), None) is None
    assert rule.check(_item(), _fa(output="سلام دنیا"), None) == "duplicate"
    assert rule.check(_item(), _fa(output="سلام دنیا!"), None) is None


# --------------------------------------------------------------------------- the stage, end to end


def test_alpaca_file_is_translated_keeping_structure_ids_and_protected_spans(tmp_path, endpoint, monkeypatch):
    monkeypatch.setenv("STUB_KEY", "sekret")
    endpoint.key = "sekret"
    write_alpaca(tmp_path / "alpaca.jsonl", ALPACA, bad_lines=("{not json",))
    recipe = load_recipe(make_recipe(tmp_path, endpoint.url, api_key_env="STUB_KEY"))
    run_stage(recipe, "translate", resume=False)

    out = recipe.run_dir / "translate"
    rows = read_jsonl(out / "instructions" / "alpaca_en.jsonl")
    assert [r["id"] for r in rows] == ["alpaca_en:code", "alpaca_en:2", "alpaca_en:3"]
    for row, src in zip(rows, ALPACA):
        assert set(row) == {"id", "instruction", "input", "output", "category", "source", "source_language", "language"}
        assert row["category"] == src["category"] and row["source_language"] == "en" and row["language"] == "fa"
        assert row["input"].count("\n") == src["input"].count("\n") and row["output"].count("\n") == src["output"].count("\n")
        assert not re.search(r"[A-Za-z]{3,}", protect.prose(row["instruction"]))  # the prose was translated
    code, summary, fruits = rows
    assert "{x}" in code["instruction"] and "{y}" in code["instruction"]
    assert "```python\ndef add(x, y):\n    return x + y\n```" in code["output"]
    assert "2 + 3 = 5" in code["output"] and code["input"] == ""
    assert "https://example.com/news?id=42" in summary["instruction"]
    assert summary["input"].count("1,500,000") == 1 and "2023-05-01" in summary["input"]
    assert [line[:3] for line in fruits["output"].split("\n")] == ["1. ", "2. ", "3. "]  # list layout kept

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))["sources"]["alpaca_en"]
    assert report["read"] == 7 and report["kept"] == 3 and report["pending"] == 0
    assert report["malformed"] == {"missing field 'output'": 1, "not valid JSON": 1}
    assert report["dropped"] == {"english wording: rhyme": 1, "english wording: translation": 1}

    # The sft readers take the file directly, as the source translated_sources() describes.
    from langadapt.data.instructions import read_instructions

    (source,) = translated_sources(recipe)
    assert (source.name, source.format, source.language) == ("alpaca_en.fa", "alpaca", "fa")
    assert translated_sources(recipe, only=["some_other_source"]) == []  # follows sft.sources
    conversations, read = read_instructions(source, path=Path(source.path))
    assert read.kept == 3 and conversations[0].language == "fa"


def test_each_cleaning_rule_drops_its_case_in_the_stage_report(tmp_path, endpoint):
    records = [
        {"instruction": "Describe a quiet morning in the village.", "output": "The sun rises slowly over the hills."},
        {"instruction": "Describe REPEATME the market.", "output": "It is busy and loud all day long."},
        {"instruction": "Describe MAKELONG the river.", "output": "It is wide and slow near the town."},
        {"instruction": "Describe STAYENGLISH the forest.", "output": "STAYENGLISH It is dark and green and full of birds."},
        {"instruction": "Add {a} LOSEMARK to the list.", "output": "Done, the list is longer now."},
        {"instruction": "SAMEASOTHER first", "input": "SAMEASOTHER", "output": "SAMEASOTHER text"},
        {"instruction": "SAMEASOTHER second", "input": "SAMEASOTHER", "output": "SAMEASOTHER text"},
    ]
    write_alpaca(tmp_path / "alpaca.jsonl", records)
    recipe = load_recipe(make_recipe(tmp_path, endpoint.url))
    summary = run_stage(recipe, "translate", resume=False)
    report = json.loads((recipe.run_dir / "translate" / "report.json").read_text(encoding="utf-8"))
    assert report["sources"]["alpaca_en"]["dropped"] == {
        "repetition": 1, "length ratio": 1, "not target language": 1, "protected span lost": 1, "duplicate": 1}
    assert summary["kept"] == 2
    csv_rows = (recipe.run_dir / "translate" / "report.csv").read_text(encoding="utf-8").splitlines()
    assert "alpaca_en,dropped,duplicate,1" in csv_rows


def test_resume_after_a_kill_translates_only_the_rest(tmp_path, endpoint):
    nouns = ["lake", "forest", "bridge", "market", "harbour", "garden", "castle", "desert", "valley", "island",
             "library", "station"]
    records = [{"instruction": f"Describe the {noun} in picture {i}.", "output": f"The {noun} looks calm at dawn."}
               for i, noun in enumerate(nouns)]
    write_alpaca(tmp_path / "alpaca.jsonl", records)
    recipe_path = make_recipe(tmp_path, endpoint.url)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen([sys.executable, "-m", "langadapt", "translate", str(recipe_path)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # batch_size 2: two records (four texts) a batch; the 9th text arrives once two batches are logged.
    endpoint.victim_pid, endpoint.kill_at = child.pid, 9
    _, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, err.decode()[-2000:]
    first_run = list(endpoint.texts)

    recipe = load_recipe(recipe_path)
    log_path = recipe.run_dir / "translate" / "work" / "alpaca_en.jsonl"
    done_before = {e["key"] for e in read_jsonl(log_path)}
    assert len(done_before) == 4 and not (recipe.run_dir / "translate" / "COMPLETE.json").exists()

    endpoint.texts.clear()
    endpoint.kill_at = None
    run_stage(recipe, "translate", resume=True)
    second_run = endpoint.texts
    # Only the 8 records not in the log were sent again, each of their 2 texts once.
    done_nouns = {nouns[int(key.split(":")[1]) - 1] for key in done_before}
    sent_nouns = [next(n for n in nouns if n in t) for t in second_run]
    assert len(second_run) == 16 and len(set(second_run)) == 16
    assert set(sent_nouns) == set(nouns) - done_nouns
    keys = [e["key"] for e in read_jsonl(log_path)]
    assert len(keys) == len(set(keys)) == 12  # no record translated twice
    assert len(first_run) >= 9
    rows = read_jsonl(recipe.run_dir / "translate" / "instructions" / "alpaca_en.jsonl")
    assert [r["id"] for r in rows] == [f"alpaca_en:{i + 1}" for i in range(12)]


def test_worklog_drops_a_line_cut_short_by_a_kill(tmp_path):
    path = tmp_path / "log.jsonl"
    log = WorkLog(path)
    log.add("a", {"output": "x"}, None)
    log.close()
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"key": "b", "fields": {"out')  # the write a SIGKILL interrupted
    again = WorkLog(path)
    assert set(again.done) == {"a"}
    again.add("b", {"output": "y"}, None)
    again.close()
    assert [e["key"] for e in read_jsonl(path)] == ["a", "b"]


def test_endpoint_errors_are_retried_with_backoff_then_left_for_the_next_resume(tmp_path, endpoint):
    delays: list[float] = []
    translator = EndpointTranslator(endpoint.url, "stub", api_key=None, source_name="English", target_name="Persian",
                                    retries=3, backoff=0.5, sleep=delays.append)
    assert translator.translate(["FAILME please", "Good morning"]) == [None, fake_persian("Good morning")]
    assert delays == [0.5, 1.0, 2.0]
    assert endpoint.texts.count("FAILME please") == 4  # the first try and three retries, then given up

    records = [{"instruction": "Describe the old bridge.", "output": "It is made of stone."},
               {"instruction": "Describe FAILME the new bridge.", "output": "It is made of steel and glass."}]
    write_alpaca(tmp_path / "alpaca.jsonl", records)
    recipe = load_recipe(make_recipe(tmp_path, endpoint.url))
    endpoint.texts.clear()
    with pytest.raises(LangadaptError, match="1 records could not be translated now.*HTTP 503.*--resume"):
        run_stage(recipe, "translate", resume=False)
    out = recipe.run_dir / "translate"
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["sources"]["alpaca_en"]["pending"] == 1 and report["sources"]["alpaca_en"]["translated"] == 1
    assert not (out / "instructions").exists() and not (out / "COMPLETE.json").exists()
    assert sum("FAILME" in t for t in endpoint.texts) == 3  # retries: 2 in the recipe

    endpoint.failing = False
    endpoint.texts.clear()
    run_stage(recipe, "translate", resume=True)
    assert sorted(endpoint.texts) == sorted(["Describe FAILME the new bridge.", "It is made of steel and glass."])
    rows = read_jsonl(out / "instructions" / "alpaca_en.jsonl")
    assert [r["id"] for r in rows] == ["alpaca_en:1", "alpaca_en:2"]


def test_an_endpoint_refusing_the_key_stops_with_one_line_naming_the_variable(tmp_path, endpoint, monkeypatch):
    monkeypatch.delenv("STUB_KEY", raising=False)
    endpoint.key = "sekret"
    write_alpaca(tmp_path / "alpaca.jsonl", ALPACA[:1])
    recipe = load_recipe(make_recipe(tmp_path, endpoint.url, api_key_env="STUB_KEY", batch_size=1))
    with pytest.raises(LangadaptError, match=r"HTTP 401; set \$STUB_KEY"):
        run_stage(recipe, "translate", resume=False)
    assert len(endpoint.attempts) == 1  # not retried, and nothing more sent once a request was refused


def test_conversations_are_translated_turn_by_turn_keeping_roles(tmp_path, endpoint):
    chats = [{"messages": [{"role": "system", "content": "You are a helpful assistant."},
                           {"role": "user", "content": "Tell me about {city} in 2 sentences."},
                           {"role": "assistant", "content": "It is a big city.\nIt has 8 parks."},
                           {"role": "user", "content": "And the weather?"},
                           {"role": "assistant", "content": "Mostly sunny and warm."}]}]
    (tmp_path / "chats.jsonl").write_text(json.dumps(chats[0]) + "\n", encoding="utf-8")
    recipe_path = make_recipe(tmp_path, endpoint.url)
    data = yaml.safe_load(recipe_path.read_text(encoding="utf-8"))
    data["data"]["instructions"] = [{"name": "chats", "format": "messages", "path": "chats.jsonl", "language": "en"}]
    recipe_path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    recipe = load_recipe(recipe_path)
    run_stage(recipe, "translate", resume=False)
    (row,) = read_jsonl(recipe.run_dir / "translate" / "instructions" / "chats.jsonl")
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert "{city}" in row["messages"][1]["content"] and " 2 " in row["messages"][1]["content"]
    assert row["messages"][2]["content"].count("\n") == 1 and "8" in row["messages"][2]["content"]
    assert row["source_language"] == "en" and row["language"] == "fa" and row["id"] == "chats:1"
    (source,) = translated_sources(recipe)
    assert source.format == "messages"


def test_batch_translation_sends_a_line_repeated_within_the_batch_once():
    class Counting:
        def __init__(self):
            self.calls = []

        def translate(self, texts):
            self.calls.extend(texts)
            return [fake_persian(t) for t in texts]

    t = Counting()
    items = [Item(key=str(i), kind="alpaca", fields={"instruction": "Say hello.", "input": "", "output": f"Hello {i}"})
             for i in range(3)]
    results = translate_items(items, t, unit="line", lang="fa")
    assert t.calls.count("Say hello.") == 1 and len(t.calls) == 2  # "Hello [[0]]" is also shared
    assert [r["fields"]["output"].split()[-1] for r in results] == ["0", "1", "2"]


def test_naming_a_source_already_in_the_target_language_is_refused(tmp_path, endpoint):
    write_alpaca(tmp_path / "alpaca.jsonl", ALPACA[:1])
    recipe_path = make_recipe(tmp_path, endpoint.url, sources=["alpaca_en"])
    data = yaml.safe_load(recipe_path.read_text(encoding="utf-8"))
    data["data"]["instructions"][0]["language"] = "fa"
    recipe_path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(LangadaptError, match="'alpaca_en' is already in the target language 'fa'"):
        run_stage(load_recipe(recipe_path), "translate", resume=False)
    assert endpoint.attempts == []


def test_a_translator_breaking_a_line_in_two_does_not_change_the_layout():
    class Chatty:
        def translate(self, texts):
            return [f"{fake_persian(t)}\nخوب" for t in texts]

    item = Item(key="1", kind="alpaca", fields={"instruction": "Name two rivers.", "input": "",
                                                 "output": "- The Nile\n- The Amazon"})
    (result,) = translate_items([item], Chatty(), unit="line", lang="fa")
    assert result["fields"]["instruction"].count("\n") == 0
    assert [line[:2] for line in result["fields"]["output"].split("\n")] == ["- ", "- "]


def test_a_translator_that_is_down_is_given_up_on_after_three_failed_batches(tmp_path, endpoint):
    records = [{"instruction": f"Describe FAILME the {noun}.", "output": f"The {noun} is old."}
               for noun in ("bridge", "tower", "market", "garden", "harbour", "castle", "forest", "island")]
    write_alpaca(tmp_path / "alpaca.jsonl", records)
    recipe = load_recipe(make_recipe(tmp_path, endpoint.url))  # 2 records a batch, 2 retries
    with pytest.raises(LangadaptError, match="8 records could not be translated now"):
        run_stage(recipe, "translate", resume=False)
    # Three batches of 2 records, 1 failing text each, 3 tries per failing text; the 4th batch is not sent.
    assert sum("FAILME" in t for t in endpoint.attempts) == 3 * 2 * 3
    report = json.loads((recipe.run_dir / "translate" / "report.json").read_text(encoding="utf-8"))
    assert report["sources"]["alpaca_en"]["pending"] == 8 and report["sources"]["alpaca_en"]["translated"] == 0
