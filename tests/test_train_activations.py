"""LoRA dropout that keeps a one-byte mask (train/activations.py): the same bits as PEFT's own layers, less
memory kept for the backward pass, and a training run that ends with the same weights."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import tiny_llama
from test_train_core import documents, settings, tiny_tokenizer
from test_train_fastpaths import VOCAB, batch


def lora_model(dropout: float = 0.3, seed: int = 0):
    from langadapt.recipe import LoraSettings
    from langadapt.train.freeze import apply_policy

    model, _ = apply_policy(tiny_llama(VOCAB, seed=seed), embeddings="all",
                            lora=LoraSettings(r=4, alpha=8, dropout=dropout), seed=seed)
    for n, p in model.named_parameters():  # LoRA B starts at zero: give every LoRA matrix a gradient
        if "lora_B" in n:
            p.data.add_(0.05 * torch.randn_like(p))
    return model


def step(model, inputs, *, autocast: bool = False):
    """(loss, gradients, random state after the step, bytes autograd kept for backward) of one
    forward/backward pass in training mode, from a fixed random state."""
    kept: dict[int, int] = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(**inputs, use_cache=False)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.loss.detach(), grads, torch.get_rng_state(), sum(kept.values())


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_same_loss_gradients_and_random_state_with_less_kept(autocast):
    from peft.tuners.lora import Linear as LoraLinear

    from langadapt.train import activations

    plain_model = lora_model()
    lean_model = copy.deepcopy(plain_model)
    inputs = batch(rows=4, width=24)
    loss, grads, rng, kept = step(plain_model, inputs, autocast=autocast)
    undo = activations.install(lean_model)
    loss2, grads2, rng2, kept2 = step(lean_model, inputs, autocast=autocast)

    assert torch.equal(loss, loss2)
    assert grads.keys() == grads2.keys() and any("lora_A" in n for n in grads)
    for n in grads:
        assert torch.equal(grads[n], grads2[n]), n
    assert torch.equal(rng, rng2)  # the same random numbers were drawn, no more, no fewer
    # PEFT keeps the float noise and the dropped-out input per LoRA layer; at least one of the two is gone
    layers = [m for m in lean_model.modules() if isinstance(m, LoraLinear)]
    elems = sum(inputs["input_ids"].numel() * m.in_features for m in layers)
    assert kept - kept2 >= elems * 4 * (0.5 if autocast else 1), (kept, kept2)

    undo()
    assert not any("forward" in m.__dict__ for m in lean_model.modules())
    loss3, grads3, rng3, _ = step(lean_model, inputs, autocast=autocast)
    assert torch.equal(loss3, loss) and torch.equal(rng3, rng)


def test_without_dropout_evaluation_or_gradients_nothing_changes():
    from langadapt.train import activations

    inputs = batch(rows=2, width=12)
    model = lora_model(dropout=0.3)
    reference = copy.deepcopy(model)
    activations.install(model)
    model.eval()
    reference.eval()
    with torch.no_grad():  # evaluation: no dropout either way
        assert torch.equal(model(**inputs).logits, reference(**inputs).logits)
    model.train()
    reference.train()
    torch.manual_seed(7)
    with torch.no_grad():  # training mode without gradients: F.dropout as PEFT calls it
        a = model(**inputs).logits
    torch.manual_seed(7)
    with torch.no_grad():
        b = reference(**inputs).logits
    assert torch.equal(a, b)

    undo = activations.install(lora_model(dropout=0.0))  # dropout 0: PEFT's Identity, nothing to patch
    undo()


def test_a_training_run_ends_with_the_same_weights(tmp_path, monkeypatch):
    from langadapt.train import activations
    from langadapt.train.core import train_model

    tok = tiny_tokenizer()
    docs = documents(tok)
    installed = []
    original = activations.install

    def counting(model):
        undo = original(model)
        installed.append(sum("forward" in m.__dict__ for m in model.modules()))
        return undo

    def trained(tag: str):
        model = lora_model(seed=1)
        r = train_model(model, tok, docs, settings(max_steps=3), tmp_path / tag, log=lambda m: None, seed=3)
        return {n: p.detach().clone() for n, p in r.model.named_parameters() if p.requires_grad}

    monkeypatch.setattr(activations, "install", counting)
    lean = trained("lean")
    assert installed and installed[0] > 0  # the training core did route LoRA dropout through it
    monkeypatch.setattr(activations, "install", lambda model: (lambda: None))
    plain = trained("plain")
    assert lean.keys() == plain.keys()
    for n in plain:
        assert torch.equal(lean[n], plain[n]), n
