"""Initialisation of the new embedding rows (issue 18): every method's rows on tiny models, tied and
untied, and the numbers the ``calibrated`` method rests on (token prior, contexts, the bias direction)."""

from __future__ import annotations

import math

import pytest

from conftest import tiny_llama
from test_tokenizer import EN, FA, byte_level_base

from langadapt.tokenizer.calibrate import Prior, bias_direction, contexts, corpus_prior, solve_offset, token_prior
from langadapt.tokenizer.embeddings import INITS, resize_and_init

OLD = 100
NEW = 112  # 12 new rows: 10 spelled tokens, 2 without a spelling (padding)
SPELLINGS = {100: [5, 9], 101: [9, 5], 102: [5, 9, 9], 103: [9, 9, 5], 104: [7], 105: [3, 4, 5, 6],
             106: [11, 12], 107: [12, 11], 108: [40, 41, 42], 109: [42, 41, 40]}
ANAGRAMS = [(100, 101), (102, 103), (106, 107), (108, 109)]


def _prior(model, seed: int = 0, positions: int = 256, freq: dict[int, float] | None = None) -> Prior:
    """Contexts of ``model`` on random old-token sequences, and a made-up corpus frequency per new token."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, OLD, (positions // 16, 16), generator=g)
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    h = out.hidden_states[-1].reshape(-1, model.config.hidden_size)
    lse = torch.logsumexp(out.logits.reshape(-1, out.logits.shape[-1]), -1)
    freq = freq or {i: 1.0 + (i % 4) for i in SPELLINGS}
    counts = torch.tensor([freq.get(i, 0.0) for i in range(OLD, NEW)])
    log_freq = torch.log((counts + 0.5) / (counts.sum() + 0.5 * len(counts)))
    return Prior(OLD, log_freq, 0.6, h, lse)


def _resize(init: str, tied: bool, *, bias: bool = False, freq=None):
    import torch

    model = tiny_llama(vocab_size=OLD, tied=tied)
    with torch.no_grad():  # trained LMs' states share a large common component (anisotropy); random ones don't
        model.get_input_embeddings().weight += 0.2 * torch.randn(model.config.hidden_size,
                                                                 generator=torch.Generator().manual_seed(1))
    if bias:
        head = torch.nn.Linear(model.config.hidden_size, OLD, bias=True)
        with torch.no_grad():
            head.weight.copy_(model.lm_head.weight)
            head.bias.normal_(0, 0.5)
        model.lm_head = head
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    before_bias = model.lm_head.bias.detach().clone() if bias else None
    prior = _prior(model, freq=freq) if init == "calibrated" else None
    resized = resize_and_init(model, NEW, SPELLINGS, init=init, seed=3, prior=prior)
    return model, resized, prior, before_in, before_out, before_bias


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("init", INITS)
def test_every_init_gives_finite_new_rows_and_leaves_the_base_rows_bit_identical(init, tied):
    import torch

    model, resized, _, before_in, before_out, _ = _resize(init, tied)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape == (NEW, model.config.hidden_size) == head.shape and model.config.vocab_size == NEW
    assert resized.tied == tied and (head.data_ptr() == emb.data_ptr()) == tied
    assert torch.isfinite(emb).all() and torch.isfinite(head).all()
    assert torch.equal(emb[:OLD], before_in) and torch.equal(head[:OLD], before_out)
    with torch.no_grad():  # the old tokens' inputs give the same hidden states: only the softmax gained rows
        ids = torch.tensor([[1, 5, 9, 40, 41]])
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, 5, NEW) and torch.isfinite(logits).all()
    # no two new tokens start with the same row, anagrams (same base ids, other order) included
    for rows in (emb[OLD:NEW - 2], head[OLD:NEW - 2]):
        assert torch.cdist(rows, rows).add(torch.eye(len(rows)) * 1e9).min() > 1e-6
    for a, b in ANAGRAMS:
        assert not torch.allclose(emb[a], emb[b]) and not torch.allclose(head[a], head[b])
    if init != "plain":  # rows without a spelling: the mean of the base rows, harmless rather than random
        assert torch.allclose(emb[NEW - 1], before_in.mean(0), atol=1e-6)


@pytest.mark.parametrize("tied", [True, False])
def test_calibrated_input_rows_of_an_untied_model_are_the_means(tied):
    """Only the output side moves (in a tied model the shared row); an untied model's input rows are `mean`'s."""
    import torch

    mean_model = _resize("mean", tied)[0]
    cal_model = _resize("calibrated", tied)[0]
    same = torch.allclose(cal_model.get_input_embeddings().weight, mean_model.get_input_embeddings().weight)
    assert same != tied
    assert not torch.allclose(cal_model.get_output_embeddings().weight[OLD:NEW - 2],
                              mean_model.get_output_embeddings().weight[OLD:NEW - 2])
    # padding rows are not shifted
    assert torch.equal(cal_model.get_output_embeddings().weight[NEW - 2:],
                       mean_model.get_output_embeddings().weight[NEW - 2:])


@pytest.mark.parametrize("tied", [True, False])
def test_calibrated_new_tokens_take_the_corpus_share_and_follow_their_frequency(tied):
    """In the prior's contexts (old tokens only, so the hidden states are the base's), the new tokens take,
    on average, the share of the probability the corpus gives them; and a token's logit gains its log
    frequency over its `mean` logit."""
    import torch

    freq = {i: 1.0 for i in SPELLINGS} | {100: 500.0, 101: 1.0}  # anagrams: one frequent, one rare
    model, _, prior, *_ = _resize("calibrated", tied, freq=freq)
    mean_model = _resize("mean", tied)[0]
    h = prior.contexts
    logits = h @ model.get_output_embeddings().weight.detach().T
    share = torch.softmax(logits, -1)[:, OLD:NEW - 2].sum(-1).mean().item()
    assert abs(share - prior.share) < 1e-3
    gain = logits[:, OLD:NEW - 2] - h @ mean_model.get_output_embeddings().weight.detach()[OLD:NEW - 2].T
    lf = prior.log_freq[: NEW - 2 - OLD]
    # gain = (log_freq + C) * (h . u) with h . u close to 1: the gain's difference between two tokens is
    # their log-frequency difference
    hu = h @ bias_direction(h)
    assert abs(hu.mean().item() - 1) < 0.05 and hu.std().item() < 0.2
    diff = (gain[:, 0] - gain[:, 1]).mean().item()
    assert abs(diff - (lf[0] - lf[1]).item()) < 0.15 * abs((lf[0] - lf[1]).item())
    assert (logits[:, 100] > logits[:, 101]).float().mean() > 0.9


def test_calibrated_puts_the_shift_into_the_bias_of_a_head_that_has_one():
    import torch

    model, _, prior, _, before_out, before_bias = _resize("calibrated", tied=False, bias=True)
    mean_model = _resize("mean", tied=False, bias=True)[0]
    head = model.get_output_embeddings()
    assert torch.equal(head.weight, mean_model.get_output_embeddings().weight)  # rows as `mean`
    assert torch.equal(head.bias[:OLD], before_bias) and torch.equal(head.weight[:OLD], before_out)
    shift = head.bias[OLD:NEW - 2] - mean_model.get_output_embeddings().bias[OLD:NEW - 2]
    lf = prior.log_freq[: NEW - 2 - OLD]
    assert torch.allclose(shift - lf, (shift - lf)[:1].expand_as(lf), atol=1e-5)  # log_freq + one constant
    share = torch.softmax(prior.contexts @ head.weight.detach().T + head.bias.detach(), -1)[:, OLD:NEW - 2].sum(-1).mean()
    assert abs(share.item() - prior.share) < 1e-3


def test_calibrated_needs_a_prior_that_matches_the_rows():
    model = tiny_llama(vocab_size=OLD)
    with pytest.raises(ValueError, match="needs a prior"):
        resize_and_init(model, NEW, SPELLINGS, init="calibrated")
    with pytest.raises(ValueError, match="unknown init"):
        resize_and_init(model, NEW, SPELLINGS, init="hewitt")
    prior = _prior(model)
    prior.first_new = OLD + 1
    with pytest.raises(ValueError, match="start at"):
        resize_and_init(tiny_llama(vocab_size=OLD), NEW, SPELLINGS, init="calibrated", prior=prior)


def test_bias_direction_and_offset_solve_what_they_say():
    import torch

    g = torch.Generator().manual_seed(0)
    common = torch.randn(16, generator=g) * 5  # anisotropic states: a large shared component
    h = common + torch.randn(400, 16, generator=g)
    u = bias_direction(h)
    hu = h @ u
    assert abs(hu.mean().item() - 1) < 0.02 and hu.std().item() < 0.2
    new, old = torch.randn(400, generator=g), torch.randn(400, generator=g) + 3
    c = solve_offset(new, hu, old, 0.7)
    assert abs(torch.sigmoid(new + c * hu - old).mean().item() - 0.7) < 1e-4


def test_token_prior_counts_new_tokens_of_the_merged_tokenizer(tmp_path):
    """Frequencies over the new tokens sum to one, follow the counts, and the share is new / all tokens."""
    import torch

    from langadapt.tokenizer.merge import merge_pieces, read_sentencepiece
    from langadapt.tokenizer.stage import save_tokenizer
    from langadapt.tokenizer.train import reservoir_sample, train_sentencepiece
    import json

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in FA * 2), encoding="utf-8")
    sample = reservoir_sample([corpus], 1000, tmp_path / "s.txt", seed=0)
    sp = train_sentencepiece(sample.path, tmp_path / "sp.model", vocab_size=120, model_type="bpe",
                             character_coverage=1.0, seed=0).model_path
    base = byte_level_base("gpt2")
    merged = merge_pieces(json.loads(base.backend_tokenizer.to_str()), read_sentencepiece(sp))
    (tmp_path / "m").mkdir()
    tok = save_tokenizer(base, merged.tokenizer_json, tmp_path / "m", pad_token=None, pad_id=None)
    first, n = merged.first_new_id, merged.size - merged.first_new_id
    texts = FA + EN
    log_freq, share = token_prior(tok, texts, first, n)
    ids = [i for x in texts for i in tok(x, add_special_tokens=False)["input_ids"]]
    new = [i for i in ids if i >= first]
    assert math.isclose(share, len(new) / len(ids), rel_tol=1e-9) and 0 < share < 1
    assert math.isclose(float(torch.exp(log_freq.double()).sum()), 1.0, rel_tol=1e-5)
    common = max(set(new), key=new.count)
    unseen = next(i for i in range(first, first + n) if i not in new)
    assert log_freq[common - first] > log_freq[unseen - first]
    assert torch.isfinite(log_freq).all()

    # the contexts are what the head sees, and the log-partition is the base model's
    model = tiny_llama(vocab_size=len(base))
    h, lse = contexts(model, base, EN, max_positions=50, max_len=12)
    assert h.shape == (50, model.config.hidden_size) and lse.shape == (50,)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[base.eos_token_id] + base(EN[0], add_special_tokens=False)["input_ids"][:11]])).logits[0]
    assert torch.allclose(lse[:12], torch.logsumexp(logits, -1), atol=1e-4)
    assert torch.allclose(h[:12] @ model.get_output_embeddings().weight.detach().T, logits, atol=1e-4)
    prior = corpus_prior(model, base, tok, texts, first, n, max_positions=64)
    assert prior.contexts.shape[0] == 64 and prior.first_new == first and len(prior.log_freq) == n
