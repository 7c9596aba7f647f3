"""Instruction readers: every format parses a hand-written example; bad records are counted, not fatal."""

from __future__ import annotations

import json

import pytest

from langadapt.data.instructions import SUMMARY_PROMPTS, read_instructions
from langadapt.errors import DataError
from langadapt.recipe import InstructionSource


def src(path, fmt, language="en", **kw):
    return InstructionSource(name="s", format=fmt, path=str(path), language=language, **kw)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def roles(conv):
    return [m["role"] for m in conv.messages]


def test_alpaca_json_array_with_input_and_category(tmp_path):
    f = tmp_path / "alpaca.json"
    f.write_text(json.dumps([
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "category": "closed_qa"},
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    ]), encoding="utf-8")
    convs, report = read_instructions(src(f, "alpaca"))
    assert report.kept == 2 and not report.skipped
    assert convs[0].messages == [{"role": "user", "content": "Add the numbers.\n\n2 and 3"},
                                 {"role": "assistant", "content": "5"}]
    assert convs[0].task == "closed_qa" and convs[0].language == "en" and convs[0].source == "s"
    assert convs[1].messages[0]["content"] == "Name a colour." and convs[1].task is None


def test_alpaca_jsonl_in_persian(tmp_path):
    f = write_jsonl(tmp_path / "fa.jsonl", [{"instruction": "پایتخت ایران کجاست؟", "input": "", "output": "تهران"}])
    convs, _ = read_instructions(src(f, "alpaca", language="fa"))
    assert convs[0].response == "تهران" and convs[0].language == "fa"


def test_dolly_context_joins_the_instruction(tmp_path):
    f = write_jsonl(tmp_path / "dolly.jsonl", [{
        "instruction": "When was the bridge built?", "context": "The bridge opened in 1932.",
        "response": "In 1932.", "category": "closed_qa"}])
    (c,), _ = read_instructions(src(f, "dolly"))
    assert c.prompt == [{"role": "user", "content": "When was the bridge built?\n\nThe bridge opened in 1932."}]
    assert c.response == "In 1932." and c.task == "closed_qa"


def test_messages_lists_keep_every_turn(tmp_path):
    f = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]}])
    (c,), _ = read_instructions(src(f, "messages"))
    assert roles(c) == ["system", "user", "assistant", "user", "assistant"] and c.response == "Paris."


def _oasst_rows():
    # One tree: a prompt with two ranked replies (the rank-0 one continues), plus a deleted reply,
    # and a second tree in German.
    return [
        {"message_id": "p1", "parent_id": None, "message_tree_id": "t1", "role": "prompter", "text": "What is tea?", "lang": "en"},
        {"message_id": "a2", "parent_id": "p1", "role": "assistant", "text": "A worse answer.", "rank": 1, "lang": "en"},
        {"message_id": "a1", "parent_id": "p1", "role": "assistant", "text": "A drink made from leaves.", "rank": 0, "lang": "en"},
        {"message_id": "a0", "parent_id": "p1", "role": "assistant", "text": "Deleted best.", "rank": 0, "deleted": True, "lang": "en"},
        {"message_id": "p2", "parent_id": "a1", "role": "prompter", "text": "Hot or cold?", "lang": "en"},
        {"message_id": "a3", "parent_id": "p2", "role": "assistant", "text": "Both.", "rank": 0, "lang": "en"},
        {"message_id": "p4", "parent_id": "a3", "role": "prompter", "text": "Thanks!", "lang": "en"},
        {"message_id": "g1", "parent_id": None, "message_tree_id": "t2", "role": "prompter", "text": "Was ist Tee?", "lang": "de"},
        {"message_id": "g2", "parent_id": "g1", "role": "assistant", "text": "Ein Getränk.", "rank": 0, "lang": "de"},
    ]


def test_oasst_flat_table_follows_the_best_ranked_path(tmp_path):
    f = write_jsonl(tmp_path / "oasst.jsonl", _oasst_rows())
    convs, report = read_instructions(src(f, "oasst"))
    assert len(convs) == 1
    c = convs[0]
    # The trailing user turn ("Thanks!") has no answer, so the conversation ends at "Both."
    assert [m["content"] for m in c.messages] == ["What is tea?", "A drink made from leaves.", "Hot or cold?", "Both."]
    assert roles(c) == ["user", "assistant", "user", "assistant"] and c.id == "s:t1"
    assert report.skipped == {"other language than 'en'": 1}


def test_oasst_nested_tree_export(tmp_path):
    tree = {"message_tree_id": "t9", "prompt": {
        "message_id": "p", "role": "prompter", "text": "Name a planet.", "lang": "en", "replies": [
            {"message_id": "r1", "role": "assistant", "text": "Mars.", "rank": 1, "replies": []},
            {"message_id": "r0", "role": "assistant", "text": "Jupiter.", "rank": 0, "replies": [
                {"message_id": "q", "role": "prompter", "text": "Why?", "replies": [
                    {"message_id": "z", "role": "assistant", "text": "It is the largest.", "replies": []}]}]}]}}
    f = write_jsonl(tmp_path / "trees.jsonl", [tree, {"message_tree_id": "t10", "prompt": {
        "message_id": "x", "role": "prompter", "text": "Unanswered?", "lang": "en", "replies": []}}])
    convs, report = read_instructions(src(f, "oasst"))
    assert [m["content"] for m in convs[0].messages] == ["Name a planet.", "Jupiter.", "Why?", "It is the largest."]
    assert report.skipped == {"no assistant reply": 1}


def test_sni_task_file_gives_one_conversation_per_instance(tmp_path):
    task = {
        "Definition": ["Classify the review as positive or negative."],
        "Categories": ["Sentiment Analysis"],
        "Positive Examples": [{"input": "Great food!", "output": "positive", "explanation": "praise"}],
        "Instances": [
            {"id": "task1_x-1", "input": "Cold and late.", "output": ["negative"]},
            {"id": "task1_x-2", "input": "Nothing to say.", "output": []},
        ],
    }
    f = tmp_path / "task1_review_polarity.json"
    f.write_text(json.dumps(task), encoding="utf-8")
    convs, report = read_instructions(src(f, "sni", examples=1))
    (c,) = convs
    assert c.task == "task1_review_polarity" and c.categories == ("sentiment_analysis",) and c.id == "s:task1_x-1"
    assert c.prompt[0]["content"] == ("Classify the review as positive or negative.\n\nInput: Great food!\nOutput: positive"
                                      "\n\nInput: Cold and late.\nOutput:")
    assert c.response == "negative"
    assert report.skipped == {"empty response": 1}
    plain, _ = read_instructions(src(f, "sni"))
    assert plain[0].prompt[0]["content"] == "Classify the review as positive or negative.\n\nCold and late."


def test_pn_summary_becomes_a_persian_summarization_instruction(tmp_path):
    f = write_jsonl(tmp_path / "pn.jsonl", [{"id": "n1", "article": "متن یک خبر طولانی درباره اقتصاد.", "summary": "خلاصه خبر."}])
    (c,), _ = read_instructions(src(f, "pn_summary", language="fa"))
    prompt = c.prompt[0]["content"]
    assert any(prompt.startswith(p) for p in SUMMARY_PROMPTS["fa"]) and prompt.endswith("متن یک خبر طولانی درباره اقتصاد.")
    assert c.response == "خلاصه خبر." and c.task == "summarization" and c.language == "fa"
    (c2,), _ = read_instructions(src(f, "pn_summary", language="fa", prompt="خلاصه کن:"))
    assert c2.prompt[0]["content"].startswith("خلاصه کن:\n\n")


def test_pn_summary_without_prompt_for_language_is_an_error(tmp_path):
    f = write_jsonl(tmp_path / "pn.jsonl", [{"article": "x", "summary": "y"}])
    with pytest.raises(DataError, match="set 'prompt'"):
        read_instructions(src(f, "pn_summary", language="de"))


def test_bad_records_are_counted_per_reason_and_skipped(tmp_path):
    f = tmp_path / "mixed.jsonl"
    f.write_text("\n".join([
        json.dumps({"instruction": "ok", "output": "fine"}),
        json.dumps({"instruction": "no output"}),
        json.dumps({"instruction": "blank", "output": "   "}),
        "{not json",
        json.dumps(["a list"]),
        json.dumps({"instruction": "also ok", "output": "yes"}),
        json.dumps({"output": "orphan"}),
    ]) + "\n", encoding="utf-8")
    convs, report = read_instructions(src(f, "alpaca"))
    assert [c.response for c in convs] == ["fine", "yes"]
    assert report.read == 7 and report.kept == 2
    assert report.skipped == {"missing field 'output'": 1, "empty response": 1, "not valid JSON": 1,
                              "record is not an object": 1, "missing field 'instruction'": 1}
    assert report.first_at["not valid JSON"].endswith("mixed.jsonl:4")
    assert "5 skipped" in report.summary()


def test_messages_without_final_answer_are_skipped(tmp_path):
    f = write_jsonl(tmp_path / "c.jsonl", [
        {"messages": [{"role": "user", "content": "Hi"}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]},
        {"messages": [{"role": "wizard", "content": "Hi"}, {"role": "assistant", "content": "x"}]},
        {"text": "no messages"},
    ])
    convs, report = read_instructions(src(f, "messages"))
    assert not convs
    assert report.skipped == {"does not end with an assistant reply": 1, "empty response": 1,
                              "message with unknown role": 1, "missing field 'messages'": 1}


def test_broken_json_array_names_file_and_line(tmp_path):
    f = tmp_path / "broken.json"
    f.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c", "output": }\n]\n', encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_instructions(src(f, "alpaca"))
    assert "broken.json:3:" in str(e.value)


def test_folder_source_and_max_records(tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    write_jsonl(d / "a.jsonl", [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(3)])
    write_jsonl(d / "b.jsonl", [{"instruction": f"r{i}", "output": f"b{i}"} for i in range(3)])
    convs, _ = read_instructions(src(d, "alpaca"))
    assert [c.response for c in convs] == ["a0", "a1", "a2", "b0", "b1", "b2"]
    convs, _ = read_instructions(src(d, "alpaca", max_records=4))
    assert len(convs) == 4


def test_source_task_labels_records_without_one(tmp_path):
    f = write_jsonl(tmp_path / "x.jsonl", [{"instruction": "q", "output": "a"},
                                           {"instruction": "q", "output": "a", "category": "open_qa"}])
    convs, _ = read_instructions(src(f, "alpaca", task="sentiment"))
    assert [c.task for c in convs] == ["sentiment", "open_qa"]


def test_hub_dataset_id_offline_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(DataError, match="dataset 'nobody/no-such-dataset' is not in the local cache and HF_HUB_OFFLINE=1"):
        read_instructions(src("nobody/no-such-dataset", "alpaca"))


def test_saved_dataset_folder(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([{"instruction": "q", "context": "", "response": "a", "category": "open_qa"}])
    ds.save_to_disk(str(tmp_path / "saved"))
    (c,), _ = read_instructions(src(tmp_path / "saved", "dolly"))
    assert c.response == "a" and c.task == "open_qa"
