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
    # PEFT keeps the float noise and the dropped-out input per LoRA layer: at least one of the two is gone;
    # and each MLP no longer keeps its activation's output (intermediate_size per token)
    layers = [m for m in lean_model.modules() if isinstance(m, LoraLinear)]
    elems = sum(inputs["input_ids"].numel() * m.in_features for m in layers)
    mlps = [m for m in lean_model.modules() if type(m).__name__ == "LlamaMLP"]
    assert mlps and all("forward" in m.__dict__ for m in mlps)
    elems += sum(inputs["input_ids"].numel() * m.intermediate_size for m in mlps)
    assert kept - kept2 >= elems * 4 * (0.5 if autocast else 1), (kept, kept2)

    undo()
    assert not any("forward" in m.__dict__ for m in lean_model.modules())
    loss3, grads3, rng3, _ = step(lean_model, inputs, autocast=autocast)
    assert torch.equal(loss3, loss) and torch.equal(rng3, rng)


def test_the_mlp_keeps_less_for_the_same_gradients_without_lora():
    """Embeddings-only training (the align stage): no LoRA layer, the MLP's saving alone, bit for bit."""
    from langadapt.train import activations

    plain = tiny_llama(VOCAB, seed=2)
    for n, p in plain.named_parameters():
        p.requires_grad_("embed_tokens" in n)
    lean = copy.deepcopy(plain)
    inputs = batch(rows=3, width=20)
    loss, grads, rng, kept = step(plain, inputs)
    undo = activations.install(lean)
    loss2, grads2, rng2, kept2 = step(lean, inputs)
    assert torch.equal(loss, loss2) and torch.equal(rng, rng2)
    assert list(grads) == ["model.embed_tokens.weight"] and torch.equal(grads[list(grads)[0]], grads2[list(grads)[0]])
    per_token = sum(m.intermediate_size for m in lean.modules() if type(m).__name__ == "LlamaMLP")
    assert kept - kept2 >= inputs["input_ids"].numel() * per_token * 4, (kept, kept2)
    undo()
    assert not any("forward" in m.__dict__ for m in lean.modules())


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

    def counting(model, plan=None):
        undo = original(model, plan)
        installed.append(sum("forward" in m.__dict__ for m in model.modules()))
        return undo

    def trained(tag: str):
        model = lora_model(seed=1)
        r = train_model(model, tok, docs, settings(max_steps=3), tmp_path / tag, log=lambda m: None, seed=3)
        return {n: p.detach().clone() for n, p in r.model.named_parameters() if p.requires_grad}

    monkeypatch.setattr(activations, "install", counting)
    lean = trained("lean")
    assert installed and installed[0] > 0  # the training core did route LoRA dropout through it
    monkeypatch.setattr(activations, "install", lambda model, plan=None: (lambda: None))
    plain = trained("plain")
    assert lean.keys() == plain.keys()
    for n in plain:
        assert torch.equal(lean[n], plain[n]), n


def micro_batched(model, inputs: dict, parts: list[slice], plan) -> tuple[dict, torch.Tensor]:
    """Gradients and random state after one step fed as micro-batches ``parts`` (rows of ``inputs``, each
    trimmed to its longest row), every predicted token weighing the same as in one batch."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    n_all = int((inputs["labels"][:, 1:] != -100).sum())
    step_rows, step_width = inputs["input_ids"].shape
    for part in parts:
        b = {k: v[part] for k, v in inputs.items()}
        width = int(b["attention_mask"].sum(dim=1).max())
        b = {k: v[:, :width] for k, v in b.items()}
        if plan is not None:
            plan.micro_batch(part.start, part.stop - part.start, step_rows, step_width)
        out = model(**b, use_cache=False)
        (out.loss * (int((b["labels"][:, 1:] != -100).sum()) / n_all)).backward()
    if plan is not None:
        plan.stop()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, torch.get_rng_state()


def test_micro_batches_draw_the_noise_one_batch_would():
    from langadapt.train import activations

    inputs = batch(rows=4, width=24)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    inputs["attention_mask"][2:, 14:] = 0  # the last two rows are padded: their micro-batch is 14 tokens wide
    inputs["labels"][2:, 14:] = -100
    parts = [slice(0, 1), slice(1, 2), slice(2, 4)]

    reference = lora_model()
    _, grads, rng, _ = step(reference, inputs)  # the 4 rows at once, PEFT's own dropout

    model = copy.deepcopy(reference)
    plan = activations.StepDropout()
    activations.install(model, plan)
    split, rng2 = micro_batched(model, inputs, parts, plan)
    assert torch.equal(rng, rng2)  # the same random numbers, drawn in the same order
    for n in grads:  # the same noise; only the sum of the micro-batches' gradients is in another order
        torch.testing.assert_close(split[n], grads[n], rtol=1e-5, atol=1e-6, msg=n)

    # without the plan each micro-batch draws its own noise: other gradients (the comparison above can fail)
    plain = copy.deepcopy(reference)
    activations.install(plain)
    unplanned, _ = micro_batched(plain, inputs, parts, None)
    assert max((unplanned[n] - grads[n]).abs().max().item() for n in grads if "lora_A" in n) > 1e-3

    # steps of other widths reuse the noise buffers (one pair per dtype, grown to the largest step)
    fresh = activations.StepDropout()
    for width in (24, 14, 20):
        fresh.micro_batch(0, 1, 2, width)
        fresh.mask(torch.ones(1, width, 8), 0.3)
        fresh.stop()
    assert len(fresh._scratch) == 1 and fresh._scratch[torch.float32][0].numel() == 2 * 24 * 8

    # a micro-batch of a layout the plan was not told about draws its own noise instead of failing
    plan.micro_batch(0, 3, 4, 24)
    with torch.no_grad():
        assert plan.mask(torch.ones(2, 24, 8), 0.3) is None and plan.mask(torch.ones(3, 30, 8), 0.3) is None
    plan.stop()


def test_the_split_of_a_step_into_micro_batches_keeps_the_training_run(tmp_path, monkeypatch):
    from langadapt.train import activations
    from langadapt.train.core import train_model

    tok = tiny_tokenizer()
    docs = documents(tok)

    def trained(bs: int, accum: int, tag: str = ""):
        model = lora_model(seed=1)
        r = train_model(model, tok, docs, settings(max_steps=3, batch_size=bs, grad_accum=accum),
                        tmp_path / f"{bs}x{accum}{tag}", log=lambda m: None, seed=3)
        return {n: p.detach().clone() for n, p in r.model.named_parameters() if p.requires_grad}

    whole = trained(4, 1)
    for bs, accum in [(1, 4), (2, 2)]:
        split = trained(bs, accum)
        for n in whole:  # Adam divides by the gradients' running size: the summation order's last bits reach ~2e-5
            torch.testing.assert_close(split[n], whole[n], rtol=0, atol=1e-4, msg=n)
    original = activations.install
    monkeypatch.setattr(activations, "install", lambda model, plan=None: original(model))  # noise per micro-batch
    unplanned = trained(1, 4, "-unplanned")
    assert max((unplanned[n] - whole[n]).abs().max().item() for n in whole) > 1e-3  # measured: 0.02
