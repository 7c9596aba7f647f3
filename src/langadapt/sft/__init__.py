"""Instruction tuning parts: the mix and its protocols (``mix``), translation instructions from
parallel data (``translation``), and chat rendering with assistant-only labels (``template``).
The stage itself is ``langadapt.sft.stage``."""
