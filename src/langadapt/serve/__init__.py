"""Talking to a model: terminal chat, a local OpenAI-compatible server with a web page, and export.

- ``generation``: one streaming generation path (chat template, history trimming, sampling) that
  chat and serve share;
- ``source``: turns a user's MODEL argument (folder, adapter, hub id, run stage) into a loadable path;
- ``chat``: ``langadapt chat``; ``server`` and ``page.html``: ``langadapt serve``;
- ``export``: ``langadapt export``, a merged plain-transformers folder with a model card.
"""
