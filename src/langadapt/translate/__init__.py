"""Machine translation of instruction data into the target language (paper 3.2: the Persian
instructions are "translated and cleaned versions" of Alpaca, Dolly, OpenAssistant and SNI).

``protect``: spans that must survive unchanged; ``rules``: records bound to English wording;
``translators``: transformers models, OpenAI-compatible endpoints, an earlier stage's model;
``clean``: what a bad translation looks like; ``stage``: the ``translate`` stage itself.
"""
