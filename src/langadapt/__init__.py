"""langadapt: teach an English-centric causal language model a new language."""

__version__ = "0.1.0"
