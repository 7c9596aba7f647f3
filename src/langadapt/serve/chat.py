"""``langadapt chat MODEL``: a terminal chat that streams the answer token by token.

History is kept within the context window (the oldest turns are dropped first, with a notice).
Commands: ``/reset``, ``/settings [key=value ...]``, ``/system [text]``, ``/help``, ``/exit``.
Right-to-left text is laid out for the terminal as ``serve.rtl`` explains.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from typing import TextIO

from langadapt.serve import rtl
from langadapt.serve.generation import ChatModel, PromptTooLong, Sampling

HELP = """commands:
  /reset                  forget the conversation (the system prompt stays)
  /settings               show the sampling settings
  /settings k=v [k=v ...] change them, e.g. /settings temperature=0.3 no_repeat_ngram_size=0
  /system [text]          set (or, without text, clear) the system prompt; also resets the conversation
  /exit                   leave (Ctrl-D too); Ctrl-C stops an answer early"""


class Screen:
    """Writes messages to a terminal, streamed, in logical or visual (RTL-reordered) order."""

    def __init__(self, out: TextIO, *, mode: str = "logical", color: bool = False,
                 columns: Callable[[], int] | None = None):
        self.out = out
        self.mode = mode
        self.color = color
        self.columns = columns or (lambda: shutil.get_terminal_size((80, 24)).columns)
        self._para = ""  # the paragraph being streamed (logical order)
        self._line = ""  # its unfinished last line
        self._streaming = False

    def _style(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    @property
    def width(self) -> int:
        return max(20, self.columns() - 1)  # never fill the last column: some terminals wrap early there

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def notice(self, text: str) -> None:
        self.write(self._style(f"({text})", "2") + "\n")

    def error(self, text: str) -> None:
        self.write(self._style(f"error: {text}", "31") + "\n")

    def label(self, name: str) -> None:
        self.write(self._style(f"{name}›", "1;36") + "\n")

    def message(self, text: str) -> None:
        """A whole message, laid out like a streamed one."""
        self.begin()
        self.feed(text)
        self.end()

    def begin(self) -> None:
        self._para = self._line = ""
        self._streaming = True

    def feed(self, piece: str) -> None:
        piece = rtl.sanitize(piece)
        if self.mode != "visual":
            self.write(piece)
            self._line = (self._line + piece).rsplit("\n", 1)[-1]
            return
        width = self.width
        buf = []
        for ch in piece:
            if ch == "\n":
                buf.append(self._draw() + "\n")
                self._para = self._line = ""
                continue
            self._line += ch
            self._para += ch
            if rtl.display_width(self._line) > width:
                head, tail = rtl.split_line(self._line, width)
                self._line = head
                buf.append(self._draw() + "\n")
                self._line = tail
        buf.append(self._draw())
        self.write("".join(buf))

    def _draw(self) -> str:
        # Redraw the unfinished line in place: its display order changes as RTL text grows.
        direction = rtl.text_direction(self._para)
        return "\r\x1b[2K" + rtl.render_line(self._line, direction, self.width, self.mode)

    def end(self) -> None:
        if self._streaming and self._line:
            self.write("\n")
        self._para = self._line = ""
        self._streaming = False

    def redraw_input(self, prompt: str, text: str) -> None:
        """Replace the echo of what the user typed (logical order) with its visual layout."""
        if self.mode != "visual" or rtl.text_direction(text) != "rtl":
            return
        cols = self.width + 1
        rows = max(1, -(-(rtl.display_width(prompt) + rtl.display_width(text)) // cols))
        self.write(f"\x1b[{rows}A\r\x1b[J")
        self.write(prompt + "\n")
        self.message(text)


class TerminalChat:
    """The chat loop, separated from the real terminal so tests can drive it."""

    def __init__(self, chat: ChatModel, sampling: Sampling | None = None, *, screen: Screen,
                 system: str | None = None, user_label: str = "you", redraw_input: bool = False,
                 save: str | None = None):
        self.chat = chat
        self.save = save
        self.sampling = (sampling or Sampling()).check()
        self.screen = screen
        self.system = system
        self.history: list[dict] = []
        self.user_label = user_label
        self.redraw_input = redraw_input

    @property
    def prompt(self) -> str:
        return f"{self.user_label}› "

    def banner(self) -> None:
        c = self.chat
        template = "its own chat template" if not c.uses_default_template else "langadapt's default template (### Instruction / ### Response; the tokenizer has none)"
        self.screen.notice(f"{c.name}: context window {c.context:,} tokens, {template}")
        self.screen.notice(f"sampling: {self.sampling.describe()}")
        self.screen.notice("type /help for commands, /exit to leave")

    def messages(self) -> list[dict]:
        sys_msgs = [{"role": "system", "content": self.system}] if self.system else []
        return sys_msgs + self.history

    def command(self, line: str) -> bool:
        """Run a /command; return False when the chat should end."""
        name, _, rest = line[1:].partition(" ")
        name = name.lower()
        rest = rest.strip()
        if name in ("exit", "quit", "q"):
            return False
        if name == "reset":
            self.history.clear()
            self.screen.notice("conversation cleared")
        elif name == "settings":
            if rest:
                try:
                    changes = dict(kv.split("=", 1) for kv in rest.split())
                except ValueError:
                    self.screen.error("write settings as key=value, e.g. /settings temperature=0.3")
                    return True
                try:
                    self.sampling = self.sampling.updated(**{k.replace("-", "_"): v for k, v in changes.items()})
                except ValueError as e:
                    self.screen.error(str(e))
                    return True
            self.screen.notice(self.sampling.describe())
        elif name == "system":
            self.system = rest or None
            self.history.clear()
            self.screen.notice(f"system prompt {'set' if rest else 'cleared'}; conversation cleared")
        elif name == "help":
            self.screen.write(HELP + "\n")
        else:
            self.screen.error(f"unknown command /{name}; type /help")
        return True

    def ask(self, text: str) -> str | None:
        """Send one user message, stream the answer to the screen, return it (None if refused)."""
        candidate = self.messages() + [{"role": "user", "content": text}]
        try:
            prepared = self.chat.prepare(candidate, self.sampling.max_new_tokens)
        except PromptTooLong as e:
            self.screen.error(str(e))
            return None
        if prepared.dropped_turns:
            n = prepared.dropped_turns
            self.screen.notice(f"dropped the {n} oldest turn{'s' if n > 1 else ''} to stay within the "
                               f"{self.chat.context:,}-token context window")
        self.history = [m for m in prepared.messages if m["role"] != "system"]
        gen = self.chat.generate(prepared, self.sampling)
        self.screen.label(self.chat.name)
        self.screen.begin()
        try:
            for piece in gen:
                self.screen.feed(piece)
        except KeyboardInterrupt:
            gen.cancel()
            self.screen.end()
            self.screen.notice("stopped")
        else:
            self.screen.end()
            if gen.finish_reason == "length":
                self.screen.notice(f"answer cut at {gen.completion_tokens} tokens (max_new_tokens); "
                                   "/settings max_new_tokens=N for longer answers")
        self.history.append({"role": "assistant", "content": gen.text})
        if self.save:
            from langadapt.files import append_jsonl

            append_jsonl(self.save, {"model": self.chat.name, "user": text, "assistant": gen.text,
                                     "finish_reason": gen.finish_reason, "dropped_turns": prepared.dropped_turns,
                                     "sampling": self.sampling.__dict__})
        return gen.text

    def run(self, read: Callable[[str], str] = input) -> None:
        """Read lines until /exit or end of input."""
        self.banner()
        while True:
            try:
                line = read(self.prompt)
            except EOFError:
                self.screen.write("\n")
                return
            except KeyboardInterrupt:
                self.screen.write("\n")
                self.screen.notice("/exit or Ctrl-D to leave")
                continue
            text = line.strip()
            if not text:
                continue
            if self.redraw_input:
                self.screen.redraw_input(self.prompt, line)
            if text.startswith("/"):
                if not self.command(text):
                    return
                continue
            self.ask(line.rstrip("\n"))


def run_chat(args) -> int:
    """The ``langadapt chat`` command."""
    from rich.console import Console

    out = sys.stdout
    mode = args.rtl if args.rtl != "auto" else rtl.detect_mode(out)
    is_tty = out.isatty()
    console = Console(stderr=True)
    sampling = Sampling(**{k: getattr(args, k) for k in ("temperature", "top_p", "repetition_penalty",
                                                           "no_repeat_ngram_size", "max_new_tokens", "seed")})
    try:
        sampling.check()
    except ValueError as e:
        from langadapt.errors import LangadaptError

        raise LangadaptError(str(e)) from None
    # The spinner says the model is loading; transformers' own bars would be left behind in the transcript.
    os.environ.setdefault("TQDM_DISABLE", "1")
    with console.status(f"loading {args.model} …"):
        chat = ChatModel.load(args.model, context=args.context, device=args.device, dtype=args.dtype)
    if is_tty:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    screen = Screen(out, mode=mode, color=is_tty and not os.environ.get("NO_COLOR"))
    bdsm = mode == "visual" and rtl.wants_bdsm()
    if bdsm:
        screen.write(rtl.BDSM_EXPLICIT)
    read = input
    if not sys.stdin.isatty():
        def read(prompt: str) -> str:  # piped input is not echoed: show it, so the output reads as a transcript
            line = input()
            screen.write(prompt + line + "\n")
            return line
    try:
        TerminalChat(chat, sampling, screen=screen, system=args.system, save=args.save,
                     redraw_input=is_tty and sys.stdin.isatty()).run(read)
    finally:
        if bdsm:
            screen.write(rtl.BDSM_IMPLICIT)
    return 0


def add_parser(sub) -> None:
    """Register ``langadapt chat`` on the CLI's subparsers."""
    p = sub.add_parser(
        "chat", help="talk to a model in the terminal (streamed; Persian laid out right-to-left)",
        description="Chat with a model in the terminal. MODEL is a model folder, a PEFT adapter folder (loaded onto "
        "its base and merged), a .gguf file, a hub id, smollm2-135m-instruct, or a run's stage output: "
        "runs/NAME/STAGE, runs/NAME:STAGE or RECIPE.yaml:STAGE (for example runs/demo/sft). The answer streams as "
        "it is generated; the conversation is rendered with the model's chat template (langadapt's default, the one sft "
        "trains with, if the tokenizer has none) and the oldest turns are dropped, with a notice, when it outgrows the context window. "
        "Commands: /reset, /settings [key=value ...], /system [text], /help, /exit.",
        epilog="Right-to-left text: by default lines are wrapped, shaped and reordered for terminals that do no bidi "
        "(xterm, tmux, most others); use --rtl logical in Konsole, mlterm or GNOME Terminal with bidi on.")
    p.add_argument("model", metavar="MODEL", help="model folder, adapter, .gguf, hub id, smollm2-135m-instruct, or runs/NAME/STAGE")
    add_model_options(p)
    add_sampling_options(p)
    p.add_argument("--system", help="system prompt for the conversation")
    p.add_argument("--save", metavar="FILE", help="append each exchange to FILE as a JSON line (text in logical order)")
    p.add_argument("--rtl", choices=("auto", "visual", "logical"), default="auto",
                   help="right-to-left layout: visual (reorder and shape for terminals without bidi), logical "
                   "(print as-is, for terminals that do bidi), auto (visual in a terminal unless it is Konsole or "
                   "mlterm; logical when output is not a terminal; LANGADAPT_RTL overrides). Default: auto")
    p.set_defaults(func=run_chat)


def add_model_options(p) -> None:
    p.add_argument("--context", type=int, metavar="N", help="context window in tokens (default: the model's maximum)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="weights' precision (default: bfloat16 on a GPU, float32 on CPU)")


def add_sampling_options(p) -> None:
    d = Sampling()
    p.add_argument("--temperature", type=float, default=d.temperature, help=f"0 = greedy (default {d.temperature})")
    p.add_argument("--top-p", type=float, default=d.top_p, help=f"nucleus sampling mass (default {d.top_p})")
    p.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty,
                   help=f"divides the scores of tokens already in the conversation (default {d.repetition_penalty})")
    p.add_argument("--no-repeat-ngram-size", type=int, default=d.no_repeat_ngram_size,
                   help=f"never repeat a span of this many tokens; 0 = off (default {d.no_repeat_ngram_size})")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help=f"answer length limit (default {d.max_new_tokens})")
    p.add_argument("--seed", type=int, help="random seed, for repeatable sampling")
