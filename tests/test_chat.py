"""`langadapt chat`: streaming, history within the context window, commands, sampling defaults,
right-to-left layout for plain terminals, and how MODEL names a run's stage."""

from __future__ import annotations

import io
import os
import sys
import unicodedata
from pathlib import Path

import pytest
from test_serve import save_tiny_model, tiny_tokenizer

from conftest import tiny_llama


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("chat") / "model")


def make_chat(context: int | None = None, *, template="chatml"):
    from test_serve import CHATML

    from langadapt.serve.generation import ChatModel

    tok = tiny_tokenizer(template=CHATML if template == "chatml" else template)
    return ChatModel(tiny_llama(len(tok)), tok, name="tiny", context=context)


class Recorder(io.StringIO):
    """A screen's output stream that also counts separate writes (to see streaming)."""

    def __init__(self):
        super().__init__()
        self.writes = 0

    def write(self, s):
        self.writes += 1
        return super().write(s)


def session(context=None, **kw):
    from langadapt.serve.chat import Screen, TerminalChat
    from langadapt.serve.generation import Sampling

    out = Recorder()
    chat = TerminalChat(make_chat(context), Sampling(max_new_tokens=8, temperature=0), screen=Screen(out), **kw)
    return chat, out


def feed(lines):
    it = iter(lines)

    def read(prompt):
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    return read


# ---------------------------------------------------------------------------- conversation


def test_answer_is_streamed_in_pieces_and_kept_in_history():
    chat, out = session()
    before = out.writes
    answer = chat.ask("Tell me a short story about a cat.")
    assert answer and answer in out.getvalue()
    assert out.writes - before >= 3, "label, several pieces, end of line"
    assert chat.history == [{"role": "user", "content": "Tell me a short story about a cat."},
                            {"role": "assistant", "content": answer}]


def test_history_drops_oldest_turns_first_with_a_notice():
    chat, out = session(context=96, system="Be brief.")
    for i in range(8):
        chat.ask(f"{i}: The weather is nice and the sun is out.")
    text = out.getvalue()
    assert "dropped the" in text and "96-token context window" in text
    users = [m["content"] for m in chat.history if m["role"] == "user"]
    assert users[-1].startswith("7:") and not users[0].startswith("0:"), "the oldest turns go first"
    assert users == sorted(users), "what is kept stays in order"
    prepared = chat.chat.prepare(chat.messages(), 8)
    assert prepared.messages[0] == {"role": "system", "content": "Be brief."}, "the system prompt is never dropped"
    assert len(prepared.input_ids) + 8 <= 96


def test_a_message_longer_than_the_context_is_refused_not_crashed():
    chat, out = session(context=48)
    assert chat.ask("The weather is nice and the sun is out. " * 20) is None
    assert "context window is 48 tokens" in out.getvalue()
    assert chat.history == []
    assert chat.ask("hi")  # the chat goes on


def test_commands_reset_settings_and_exit():
    chat, out = session()
    chat.run(feed(["hello", "/settings temperature=0.3 no_repeat_ngram_size=0", "/settings top_p=2",
                   "/settings nonsense", "/reset", "/what", "/exit", "never read"]))
    text = out.getvalue()
    assert chat.sampling.temperature == 0.3 and chat.sampling.no_repeat_ngram_size == 0
    assert "top_p must be above 0 and at most 1.0" in text
    assert "key=value" in text
    assert "conversation cleared" in text and chat.history == []
    assert "unknown command /what" in text


def test_end_of_input_leaves_the_chat():
    chat, out = session()
    chat.run(feed(["hello"]))
    assert len(chat.history) == 2


def test_default_template_when_the_tokenizer_has_none():
    chat = make_chat(template=None)
    assert chat.uses_default_template
    text = chat.tokenizer.decode(chat.encode([{"role": "user", "content": "Hello"}]))
    assert "### Instruction:\nHello" in text and text.endswith("### Response:\n")
    assert "### Instruction:" in chat.stop_strings
    assert chat.eos_ids == [2]


def test_control_characters_from_the_model_cannot_drive_the_terminal():
    from langadapt.serve.chat import Screen

    out = io.StringIO()
    screen = Screen(out)
    screen.begin()
    screen.feed("ok\x1b[2J\x07 done")
    screen.end()
    assert "\x1b" not in out.getvalue() and "\x07" not in out.getvalue()
    assert out.getvalue().startswith("ok")


# ---------------------------------------------------------------------------- sampling


def _longest_repeat(ids: list[int], n: int) -> bool:
    seen = set()
    for i in range(len(ids) - n + 1):
        g = tuple(ids[i:i + n])
        if g in seen:
            return True
        seen.add(g)
    return False


def test_default_sampling_prevents_repeating_a_long_span():
    """Greedy decoding of a tiny model falls into a loop; the default settings forbid repeating any 12-token span."""
    import torch

    from langadapt.serve.generation import Sampling

    chat = make_chat()
    ids = torch.tensor([chat.encode([{"role": "user", "content": "Hello"}])])

    def run(sampling):
        kw = sampling.generate_kwargs()
        with torch.no_grad():
            out = chat.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), eos_token_id=None,
                                      pad_token_id=2, **kw)
        return out[0].tolist()

    plain = run(Sampling(temperature=0, repetition_penalty=1.0, no_repeat_ngram_size=0, max_new_tokens=120))
    assert _longest_repeat(plain[ids.shape[1]:], 12), "greedy decoding of this model should loop (else the test proves nothing)"
    d = Sampling()
    assert d.temperature > 0 and d.repetition_penalty > 1 and d.no_repeat_ngram_size == 12
    torch.manual_seed(0)
    guarded = run(Sampling(max_new_tokens=120))
    assert not _longest_repeat(guarded, 12)


def test_settings_are_validated():
    from langadapt.serve.generation import Sampling

    s = Sampling().updated(temperature="0", max_new_tokens="64", seed="7")
    assert (s.temperature, s.max_new_tokens, s.seed) == (0.0, 64, 7)
    assert s.generate_kwargs()["do_sample"] is False
    for bad in ({"temperature": "-1"}, {"repetition_penalty": "0.5"}, {"max_new_tokens": "x"}, {"bogus": "1"}):
        with pytest.raises(ValueError):
            Sampling().updated(**bad)


# ---------------------------------------------------------------------------- right-to-left text


def _shape_key(s: str) -> str:
    """Letters without their positional forms: compatibility decomposition undoes presentation forms."""
    return "".join(unicodedata.normalize("NFKC", c) for c in s if unicodedata.category(c)[0] in "LN")


def _read_rtl(shown: str) -> str:
    """The letters of a visual-order line read right to left (a ligature cell keeps its inner order)."""
    return "".join(_shape_key(c) for c in reversed(shown))


def test_visual_layout_reads_right_to_left_in_a_plain_terminal():
    from langadapt.serve.rtl import visual

    shown = visual("سلام دنیا")
    # Display order is reversed: the leftmost cell holds the last letter, and letters are joined forms.
    assert _read_rtl(shown) == _shape_key("سلام دنیا")
    assert all(not ("\u0600" <= c <= "\u06ff") for c in shown if c != " "), "letters are shaped presentation forms"
    mixed = visual("من ۲۰ سال دارم و test 123 را نوشتم (خوب)")
    assert "test 123" in mixed, "left-to-right runs inside Persian keep their order"
    # "(خوب)" ends the sentence, so it is the leftmost group; mirrored brackets still enclose the word.
    assert mixed.startswith("(") and mixed.index(")") < 8, "brackets are mirrored in right-to-left runs"
    assert visual("plain English stays as it is") == "plain English stays as it is"


def test_long_persian_paragraph_wraps_before_reordering_so_it_reads_top_down():
    from langadapt.serve.chat import Screen
    from langadapt.serve.rtl import display_width

    words = "یک دو سه چهار پنج شش هفت هشت نه ده یازده دوازده سیزده چهارده پانزده".split()
    out = io.StringIO()
    screen = Screen(out, mode="visual", columns=lambda: 30)
    screen.begin()
    for w in words:  # streamed word by word, as the model would
        screen.feed(w + " ")
    screen.end()
    # What a terminal shows: the last redraw of every line.
    lines = [seg.split("\r\x1b[2K")[-1] for seg in out.getvalue().split("\n") if seg.strip("\r\x1b[2K ")]
    assert len(lines) >= 3
    assert all(display_width(line) <= 29 for line in lines)
    assert all(line.startswith(" ") or display_width(line) >= 25 for line in lines[:-1]), "RTL lines are right-aligned"
    order = [_read_rtl(line) for line in lines]
    assert order[0].startswith(_shape_key("یک")) and _shape_key("پانزده") in order[-1], "first words on the first line"


def test_rtl_mode_detection():
    from langadapt.serve.rtl import detect_mode

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert detect_mode(io.StringIO(), {}) == "logical", "pipes and files get plain logical-order text"
    assert detect_mode(Tty(), {}) == "visual"
    assert detect_mode(Tty(), {"TMUX": "/tmp/tmux-0/default,1,0"}) == "visual"
    assert detect_mode(Tty(), {"KONSOLE_VERSION": "230804"}) == "logical", "Konsole does bidi itself"
    assert detect_mode(Tty(), {"LANGADAPT_RTL": "logical"}) == "logical"


# ---------------------------------------------------------------------------- MODEL names


def test_model_can_be_a_run_stage_written_three_ways(tmp_path, tiny_dir):
    from langadapt.errors import LangadaptError
    from langadapt.serve.source import resolve_ref, run_stages

    run = tmp_path / "runs" / "demo"
    (run / "sft").mkdir(parents=True)
    os.symlink(tiny_dir, run / "sft" / "adapter")
    (run / "align" / "model").mkdir(parents=True)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: demo\nbase_model: smollm2-135m-instruct\noutput_dir: {tmp_path / 'runs'}\n", encoding="utf-8")
    for spec in (str(run / "sft"), f"{run}:sft", f"{recipe}:sft"):
        ref = resolve_ref(spec)
        assert ref.path == str(run / "sft" / "adapter") and ref.name == "demo/sft", spec
    assert resolve_ref(f"{recipe}:base").path == "smollm2-135m-instruct"
    assert run_stages(run) == ["align", "sft"], "serve expands a run folder into its stages, in pipeline order"
    assert run_stages(run / "sft") == [] and run_stages(tiny_dir) == []
    with pytest.raises(LangadaptError, match="stages with a model here: sft, align|no adapter/ or model/"):
        resolve_ref(f"{run}:pretrain")


def test_chat_command_in_a_pipe_prints_a_readable_transcript(tiny_dir, monkeypatch, capsys, tmp_path):
    import json

    from langadapt.cli import main

    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setattr(sys, "stdin", io.StringIO("سلام\n/settings\n/exit\n"))
    saved = tmp_path / "chat.jsonl"
    assert main(["chat", str(tiny_dir), "--max-new-tokens", "6", "--temperature", "0", "--save", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "you› سلام" in out, "piped input is echoed in logical order"
    assert "chat0›" in out and "temperature=0.0" in out
    [row] = [json.loads(line) for line in saved.read_text(encoding="utf-8").splitlines()]
    assert row["user"] == "سلام" and row["assistant"] in out and row["model"] == "chat0"
    assert main(["chat", str(tiny_dir.parent / "missing")]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "Traceback" not in err
