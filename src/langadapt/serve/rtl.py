"""Right-to-left text in a terminal.

Most terminals (xterm, tmux, screen, Alacritty, kitty, Windows Terminal) put characters into
cells left to right in the order the program writes them and do not join Arabic-script letters.
Persian printed as-is then reads backwards, in isolated letter forms. A few terminals do the
Unicode bidi algorithm and shaping themselves (Konsole, mlterm, GNOME Terminal and other VTE
terminals in their default "implicit" mode).

What we do (``mode="visual"``, the default in a terminal): wrap each paragraph to the terminal
width first, then shape every line (letters become their joined presentation forms, via
``arabic-reshaper``) and reorder it into display order (``python-bidi``, the full Unicode bidi
algorithm with bracket mirroring), and right-align lines of right-to-left paragraphs. Wrapping
before reordering matters: reordering a whole paragraph and letting the terminal wrap it would
put its first words on the last line. On VTE terminals we also send the ECMA-48 sequence that
switches their own bidi off (BDSM, ``CSI 8 l``) so the two do not cancel out.

``mode="logical"`` prints text unchanged, for terminals that do bidi themselves (picked
automatically for Konsole and mlterm) and whenever output is not a terminal (a pipe or file then
gets ordinary logical-order Unicode). ``langadapt chat --rtl`` or ``LANGADAPT_RTL`` override.

Unicode isolation marks (FSI/PDI) alone do not help here: a terminal that does no bidi ignores
them (or shows them as boxes), and one that does bidi already orders each line correctly.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Mapping
from typing import TextIO

BDSM_EXPLICIT = "\x1b[8l"  # ECMA-48 BiDi support mode off: the application lays text out itself
BDSM_IMPLICIT = "\x1b[8h"  # back to the terminal doing bidi


def text_direction(text: str) -> str:
    """'rtl' when most strong (letter) characters are right-to-left, else 'ltr'."""
    rtl = ltr = 0
    for ch in text:
        b = unicodedata.bidirectional(ch)
        if b in ("R", "AL"):
            rtl += 1
        elif b == "L":
            ltr += 1
    return "rtl" if rtl > ltr else "ltr"


def char_width(ch: str) -> int:
    """Terminal cells a character takes: 0 for combining marks and format characters, 2 for wide."""
    if unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def display_width(text: str) -> int:
    return sum(char_width(c) for c in text)


def sanitize(text: str) -> str:
    """Model output with control characters made harmless (an escape sequence could rewrite the screen)."""
    return "".join(c if c in "\n\t" or unicodedata.category(c) != "Cc" else "\ufffd" for c in text).replace("\t", "    ")


def split_line(line: str, width: int) -> tuple[str, str]:
    """Split ``line`` so the head fits ``width`` cells: at the last space if there is one, else mid-word."""
    used = 0
    for i, ch in enumerate(line):
        used += char_width(ch)
        if used > width:
            space = line.rfind(" ", 0, i + 1)
            if space > 0:
                return line[:space], line[space + 1:]
            return line[:i], line[i:]
    return line, ""


def wrap(text: str, width: int) -> list[str]:
    """Lines of ``text`` (paragraphs split at newlines) no wider than ``width`` cells."""
    lines: list[str] = []
    for para in text.split("\n"):
        while display_width(para) > width:
            head, para = split_line(para, width)
            lines.append(head)
        lines.append(para)
    return lines


def visual(line: str, direction: str | None = None) -> str:
    """One line in display order with joined letter forms, for a terminal that does no bidi."""
    if not any(unicodedata.bidirectional(c) in ("R", "AL", "AN") for c in line):
        return line
    import arabic_reshaper

    try:  # python-bidi >= 0.5 keeps the pure-Python algorithm (which mirrors brackets) here
        from bidi.algorithm import get_display
    except ImportError:  # pragma: no cover - older python-bidi
        from bidi import get_display
    base = "R" if (direction or text_direction(line)) == "rtl" else "L"
    return get_display(arabic_reshaper.reshape(line), base_dir=base)


def render_line(line: str, direction: str, width: int, mode: str) -> str:
    """A line as it should be written: reordered and right-aligned in visual mode for RTL text."""
    if mode != "visual":
        return line
    shown = visual(line, direction)
    if direction == "rtl":
        shown = " " * max(0, width - display_width(shown)) + shown
    return shown


def detect_mode(stream: TextIO, env: Mapping[str, str] | None = None) -> str:
    """'visual' or 'logical' for ``stream`` (see the module docstring for the reasoning)."""
    env = os.environ if env is None else env
    forced = env.get("LANGADAPT_RTL", "").strip().lower()
    if forced in ("visual", "logical"):
        return forced
    if not (hasattr(stream, "isatty") and stream.isatty()):
        return "logical"
    if env.get("KONSOLE_VERSION") or env.get("MLTERM"):
        return "logical"
    return "visual"


def wants_bdsm(env: Mapping[str, str] | None = None) -> bool:
    """Whether the terminal is a VTE one that understands (and needs) the BiDi support mode switch."""
    env = os.environ if env is None else env
    return bool(env.get("VTE_VERSION"))
