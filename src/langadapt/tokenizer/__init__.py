"""Stage 2 (paper 4.1): train target-language pieces, merge them into the base tokenizer, grow the embeddings.

- ``train``: reservoir-sample the cleaned sentences and train a SentencePiece model on the sample.
- ``merge``: add the pieces to a base tokenizer of either family (SentencePiece-style BPE with byte
  fallback, byte-level BPE), leaving text without target-language characters tokenized id for id.
- ``embeddings``: resize input embeddings and output head; new rows start as the mean of the rows
  of the base tokens that spell them.
- ``fertility``: tokens per word and per character, and throughput, of base versus merged.
- ``stage``: the pipeline stage that ties them together.
"""
