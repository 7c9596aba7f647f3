"""Stage 1, clean (paper 3.1): documents to clean, unique target-language sentences, on datatrove.

``normalize`` and ``split`` and ``langid`` are plain functions (the translate stage reuses them);
``blocks``, ``filters`` and ``dedup`` are datatrove pipeline blocks; ``pipeline`` wires them into
passes for the local or Slurm executor; ``report`` adds up the counts; ``stage`` is the entry point.
"""
