"""Readers shared by stages: monolingual corpora (``corpus``), instruction formats (``instructions``)."""
