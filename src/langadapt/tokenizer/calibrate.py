"""How much probability a new token should start with: the ``calibrated`` initialisation's numbers.

Why: a new row made as the mean of the rows that spell the token (``mean``) is a poor *output* row.
The means of 20,000 Persian pieces all lie near one point (the mean of SmolLM2's few Arabic-script
byte tokens), so in a Persian context every new token gets nearly the same logit: measured on
SmolLM2, their logits spread by 0.7 around 20.4 while the model's best old token sits at 27, and
the new tokens share out the next-token probability almost uniformly, about 14 bits for any piece
whatever its frequency. The merged tokenizer always writes the new token, so this is what step 0
pays (held-out Persian +9% to +17% over the base; issue 18). Hewitt (2021, "Initializing new word
embeddings") makes new rows the mean of *all* rows so they take almost no probability, which is
right when new words are rare and wrong here, where they replace the old paths.

What we do instead: each new token's row gets its log frequency in the corpus as a bias, on top of
the mean. A causal LM's head has no bias, but its final hidden states share a large common
component (anisotropy), so there is a direction ``u`` with ``h . u`` close to 1 in target-language
contexts (SmolLM2: 1.000 +- 0.02 over 3,400 Persian positions; 0.70 +- 0.13 in English ones).
Adding ``(log p(token) + C) * u`` to a row adds about ``log p(token) + C`` to its logit in every
target-language context. ``C`` is solved so that, averaged over the base model's contexts on the
corpus, the new tokens take the share of next-token predictions they hold in the merged corpus
(87% with 20,000 pieces). The context term of the mean is kept, so the new tokens still differ
by context; English contexts, where the mean rows score low, stay almost untouched. A head with a
bias takes the shift in its bias instead, exactly.

Everything comes from the base model and the training corpus: the model's hidden states on a few
dozen sampled sentences (``contexts``) and the merged tokenizer's counts over the sample
(``corpus_prior``).
"""

from __future__ import annotations

from dataclasses import dataclass

SMOOTHING = 0.5
"""Added to every new token's count, so pieces the sample never produced still get a finite prior."""

MAX_SPREAD = 0.1
"""Largest relative spread of ``h . u`` over the contexts at which the shift is applied (SmolLM2: 0.02; a
randomly initialised model, whose states share no direction: about 0.2)."""

MAX_INPUT_SHIFT = 0.5
"""Tied models: largest median shift, relative to the median norm of the mean rows, that is applied
(SmolLM2: about 0.07); above it the shared row would stop reading as its spelling on the input side."""

RIDGE = 1e-2
"""Ridge penalty of the direction fit, relative to the mean eigenvalue of the contexts' Gram matrix."""


@dataclass
class Prior:
    """What ``calibrated`` needs besides the spellings.

    ``log_freq[i]``: log probability of new token ``first_new + i`` among the new tokens of the merged
    corpus; ``share``: the new tokens' share of all tokens of the merged corpus; ``contexts``: the
    base model's hidden states as its head sees them, one row per position of sampled sentences;
    ``old_lse``: the base model's log-partition (logsumexp of the logits) at those positions.
    """

    first_new: int
    log_freq: object  # torch.Tensor [n_new]
    share: float
    contexts: object  # torch.Tensor [positions, hidden]
    old_lse: object  # torch.Tensor [positions]

    def describe(self) -> dict:
        return {"contexts": int(self.contexts.shape[0]), "new_token_share": round(self.share, 4)}


def token_prior(merged_tok, texts: list[str], first_new: int, n_new: int, *, batch: int = 1024):
    """(log frequency of each of the ``n_new`` new tokens among the new tokens, their share of all tokens)
    over ``texts`` tokenized by the merged tokenizer."""
    import torch

    counts = torch.zeros(n_new, dtype=torch.float64)
    total = 0
    for b in range(0, len(texts), batch):
        for ids in merged_tok(texts[b : b + batch], add_special_tokens=False)["input_ids"]:
            total += len(ids)
            t = torch.tensor([i - first_new for i in ids if first_new <= i < first_new + n_new], dtype=torch.long)
            if len(t):
                counts += torch.bincount(t, minlength=n_new).double()
    new = float(counts.sum())
    log_freq = torch.log((counts + SMOOTHING) / (new + SMOOTHING * n_new)).float()
    return log_freq, (new / total if total else 0.0)


def contexts(model, tokenizer, texts: list[str], *, max_positions: int = 2048, max_len: int = 64, batch: int = 16):
    """The inputs of ``model``'s output head, and the logsumexp of its logits, at every position of ``texts``
    (each text encoded as held-out text is: the boundary token, then at most ``max_len`` tokens), until
    ``max_positions`` positions."""
    import torch

    from langadapt.train.examples import boundary_id

    start = boundary_id(tokenizer)
    seqs, n = [], 0
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        if not ids:
            continue
        seq = [start] + ids[: max_len - 1]
        seqs.append(seq[: max_positions - n])
        n += len(seqs[-1])
        if n >= max_positions:
            break
    if not seqs:
        raise ValueError("no text to take contexts from")
    head = model.get_output_embeddings()
    device = next(model.parameters()).device
    caught: list = []
    hook = head.register_forward_hook(lambda mod, args, out: caught.append((args[0].detach(), out.detach())))
    hs, lses = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b in range(0, len(seqs), batch):
                chunk = seqs[b : b + batch]
                longest = max(map(len, chunk))
                ids = torch.full((len(chunk), longest), start, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for r, s in enumerate(chunk):
                    ids[r, : len(s)] = torch.tensor(s)
                    mask[r, : len(s)] = 1
                caught.clear()
                model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                h, logits = caught[-1]
                keep = mask.bool().to(h.device)
                hs.append(h[keep].float().cpu())
                lses.append(torch.logsumexp(logits[keep].float(), -1).cpu())
    finally:
        hook.remove()
        if was_training:
            model.train()
    return torch.cat(hs), torch.cat(lses)


def bias_direction(h):
    """``u`` with ``h . u`` as close to 1 as a ridge fit gets over the rows of ``h``."""
    import torch

    gram = h.T.double() @ h.double()
    lam = RIDGE * float(torch.trace(gram)) / h.shape[1]
    u = torch.linalg.solve(gram + lam * torch.eye(h.shape[1], dtype=torch.float64), h.T.double() @ torch.ones(len(h), dtype=torch.float64))
    return u.float()


def solve_offset(new_logits_lse, gain, old_lse, share: float, *, lo: float = -100.0, hi: float = 100.0) -> float:
    """``C`` such that the new tokens' mean share of probability over the contexts is ``share``.

    At context ``k`` the new tokens' logsumexp is ``new_logits_lse[k] + C * gain[k]`` (``gain``:
    ``h . u``, or 1 for a head bias), the old tokens' is ``old_lse[k]``."""
    import torch

    def mass(c: float) -> float:
        return float(torch.sigmoid(new_logits_lse + c * gain - old_lse).mean())

    share = min(max(share, 1e-4), 1 - 1e-4)
    for _ in range(60):  # mass grows with C: bisection
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mass(mid) < share else (lo, mid)
    return (lo + hi) / 2


def calibrated_shift(prior: Prior, log_freq, rows, bias=None, *, chunk: int = 4096):
    """The per-token shift ``log_freq + C`` for new output ``rows`` (their mean init, [n, hidden]) with
    log frequencies ``log_freq`` [n] and, when the head has one, biases ``bias`` [n]; and ``u`` (None when
    the shift goes into the bias)."""
    import torch

    h = prior.contexts.float()
    log_freq = log_freq.float()
    u = None if bias is not None else bias_direction(h)
    gain = torch.ones(len(h)) if u is None else h @ u
    extra = log_freq if bias is None else log_freq + bias.float()
    # logsumexp over the new tokens of (h . row + gain * log_freq [+ bias]), a chunk of tokens at a time
    lse = torch.full((len(h),), float("-inf"))
    for s in range(0, rows.shape[0], chunk):
        part = h @ rows[s : s + chunk].float().T + (gain[:, None] if u is not None else 1.0) * extra[None, s : s + chunk]
        lse = torch.logaddexp(lse, torch.logsumexp(part, -1))
    c = solve_offset(lse, gain, prior.old_lse.float(), prior.share)
    return log_freq + c, u


def corpus_prior(model, base_tok, merged_tok, texts: list[str], first_new: int, n_new: int, *, seed: int = 0,
                 max_positions: int = 2048) -> Prior:
    """The `Prior` of the base ``model`` for the new tokens ``first_new .. first_new + n_new - 1`` of
    ``merged_tok``: counts over all of ``texts`` (the training sample), contexts from a seeded random
    few of them (positions spread over the corpus, not the first file's)."""
    import random

    log_freq, share = token_prior(merged_tok, texts, first_new, n_new)
    picked = random.Random(seed).sample(texts, min(len(texts), max(8, max_positions // 16)))
    h, lse = contexts(model, base_tok, picked, max_positions=max_positions)
    return Prior(first_new, log_freq, share, h, lse)
