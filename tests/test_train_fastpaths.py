"""Fast paths of the training core: the chunked loss, whole-example packing, gradient checkpointing,
attention choice, and no optimizer state for frozen embedding rows. Each must compute what the plain
path computes (to floating-point rounding)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_llama
from test_train_core import documents, settings, tiny_tokenizer

VOCAB = 128


def batch(seed: int = 0, rows: int = 3, width: int = 20) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (rows, width), generator=g)
    labels = ids.clone()
    labels[0, :6] = -100  # a prompt: no loss
    labels[-1, 14:] = -100  # padding at the end of a row
    return {"input_ids": ids, "labels": labels}


def loss_and_grads(model, inputs: dict, *, fused: bool, chunk: int = 7, autocast: bool = False):
    from langadapt.train import loss as fused_loss

    undo = fused_loss.install(model, chunk) if fused else (lambda: None)
    try:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(**inputs, use_cache=False)
        out.loss.backward()
    finally:
        undo()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


POLICIES = [("all", None), ("new", None), ("new", 2), ("all", 2)]


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("rows,lora", POLICIES, ids=["all-rows", "new-rows", "new-rows+lora", "all-rows+lora"])
def test_chunked_loss_gives_the_plain_loss_and_gradients(tied, rows, lora):
    from langadapt.recipe import LoraSettings
    from langadapt.train.freeze import apply_policy

    model, _ = apply_policy(tiny_llama(VOCAB, tied=tied), embeddings=rows, base_vocab=100,
                            lora=LoraSettings(r=lora, alpha=4, dropout=0.0) if lora else None)
    for p in model.parameters():  # LoRA B starts at zero: give every trainable tensor a gradient to compare
        if p.requires_grad:
            p.data.add_(0.01 * torch.randn_like(p))
    inputs = batch()
    plain, g_plain = loss_and_grads(model, inputs, fused=False)
    chunked, g_chunked = loss_and_grads(model, inputs, fused=True)
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-6)
    assert g_chunked.keys() == g_plain.keys() and g_plain
    for name in g_plain:
        torch.testing.assert_close(g_chunked[name], g_plain[name], rtol=1e-4, atol=1e-6, msg=name)
    # trainable-token deltas (new rows only) receive their gradient through the wrapped head
    assert any("trainable_tokens_delta" in n for n in g_plain) == (rows == "new")


def test_chunked_loss_under_bf16_autocast_matches_the_plain_path():
    from langadapt.train.freeze import apply_policy

    model, _ = apply_policy(tiny_llama(VOCAB, tied=False), embeddings="all")
    inputs = batch(rows=4, width=32)
    plain, g_plain = loss_and_grads(model, inputs, fused=False, autocast=True)
    chunked, g_chunked = loss_and_grads(model, inputs, fused=True, autocast=True)
    torch.testing.assert_close(chunked, plain, rtol=5e-3, atol=5e-3)
    for name in g_plain:
        err = (g_chunked[name] - g_plain[name]).norm() / g_plain[name].norm()
        assert err < 2e-2, (name, float(err))


def test_chunked_loss_never_holds_the_full_logits():
    """No tensor of tokens x vocabulary is made: at most one chunk of logits at a time."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from langadapt.train.freeze import apply_policy

    class Largest(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.biggest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[-1] == VOCAB:
                    self.biggest = max(self.biggest, t.numel())
            return out

    hidden = 48  # no activation is vocabulary-wide (the MLP is 2 x hidden = 96)
    model, _ = apply_policy(tiny_llama(VOCAB, hidden=hidden), embeddings="all")
    inputs = batch(rows=8, width=64)
    sizes = {}
    for fused in (False, True):
        with Largest() as seen:
            loss_and_grads(model, inputs, fused=fused, chunk=16)
        sizes[fused] = seen.biggest
    assert sizes[False] >= 8 * 64 * VOCAB  # the plain path: every position's logits
    # one chunk of logits, or the embedding matrix itself (vocab x hidden, its gradient), is the largest
    assert sizes[True] <= max(16 * VOCAB, VOCAB * hidden)
    assert sizes[True] < sizes[False] / 4


def test_chunked_loss_scales_its_gradients_in_place_once():
    """backward scales the buffers made in forward in place (no second head-sized copy): a second backward
    through the same graph is a clear error, not silently doubled gradients."""
    from langadapt.train.loss import linear_cross_entropy

    hidden = torch.randn(2, 6, 8, requires_grad=True)
    weight = torch.randn(VOCAB, 8, requires_grad=True)
    labels = torch.randint(0, VOCAB, (2, 6))
    loss, n = linear_cross_entropy(hidden, weight, labels, chunk=4)
    (loss * 3).backward(retain_graph=True)
    plain = torch.nn.functional.cross_entropy((hidden @ weight.T)[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
    g_w, = torch.autograd.grad(plain * 3, weight)
    torch.testing.assert_close(weight.grad, g_w)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_fused_loss_trains_to_the_same_weights_and_unknown_models_keep_the_plain_loss(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from langadapt.train.core import train_model
    from langadapt.train.freeze import apply_policy

    tok = tiny_tokenizer()
    weights = []
    for fused in (False, True):
        model, _ = apply_policy(tiny_llama(), embeddings="all")
        r = train_model(model, tok, documents(tok), settings(max_steps=4, fused_loss=fused, loss_chunk=16),
                        tmp_path / str(fused), log=lambda m: None)
        weights.append(r.model.get_input_embeddings().weight.detach().clone())
        assert "forward" not in vars(r.model)  # the swapped forward is gone again
    # Adam divides by the gradient's own size, so a rounding-level difference can move a weight by ~lr x 1e-3
    torch.testing.assert_close(weights[1], weights[0], rtol=1e-4, atol=1e-5)

    lines = []
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    model, _ = apply_policy(gpt2, embeddings="all")
    r = train_model(model, tok, documents(tok), settings(max_steps=2), tmp_path / "gpt2", log=lines.append)
    assert r.final_loss is not None
    assert any("plain loss over the full logits" in line and "gpt2" in line for line in lines)


# --------------------------------------------------------------------------- whole-example packing


def sft_examples(n: int = 40, seed: int = 1) -> list[dict]:
    """Conversations: a prompt without loss, then an answer with loss; lengths 3..15."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(3, 16, (1,), generator=g))
        ids = torch.randint(3, VOCAB, (length,), generator=g).tolist()
        cut = length // 2
        out.append({"input_ids": ids, "labels": [-100] * cut + ids[cut:]})
    return out


def test_pack_whole_never_splits_an_example_and_keeps_every_token():
    from langadapt.train.packing import IGNORE, pack_whole

    examples = sft_examples() + [{"input_ids": list(range(3, 30)), "labels": list(range(3, 30))}]  # too long
    rows, truncated = pack_whole(examples, seq_len=16, pad_id=0)
    assert truncated == 1
    found = []
    for r in range(len(rows)):
        ids, pos, labels = rows.input_ids[r].tolist(), rows.position_ids[r].tolist(), rows.labels[r].tolist()
        n = int(rows.tokens[r])
        starts = [i for i in range(n) if pos[i] == 0] + [n]
        for a, b in zip(starts, starts[1:]):
            assert pos[a:b] == list(range(b - a))  # positions restart per example
            assert labels[a] == IGNORE  # the first token is never a target
            found.append((tuple(ids[a:b]), tuple(labels[a + 1 : b])))
        assert all(x == IGNORE for x in labels[n:])  # padding carries no loss
    expected = [(tuple(e["input_ids"][:16]), tuple(e["labels"][1:16])) for e in examples]
    assert sorted(found) == sorted(expected)  # every example exactly once, whole
    total = sum(min(len(e["input_ids"]), 16) for e in examples)
    assert len(rows) <= -(-total // 16) + 2  # nearly as few blocks as the tokens need


def test_whole_packed_rows_give_the_same_loss_as_one_example_per_row():
    from langadapt.train.packing import pack_whole, pad

    model = tiny_llama(VOCAB).eval()
    examples = sft_examples(12)
    totals = {}
    for layout in ("padded", "whole"):
        rows = pad(examples, 16, 0)[0] if layout == "padded" else pack_whole(examples, 16, 0)[0]
        b = rows.batch(torch.arange(len(rows)))
        with torch.no_grad():
            logits = model(**{k: v for k, v in b.items() if k != "labels"}, use_cache=False).logits
        # the packer masks each example's first label; mask it in the padded rows too
        labels = b["labels"].clone()
        labels[:, 0] = -100
        totals[layout] = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1),
                                                           reduction="sum")
    torch.testing.assert_close(totals["whole"], totals["padded"], rtol=1e-5, atol=1e-4)


def test_train_model_packs_whole_examples_into_fewer_rows(tmp_path):
    from langadapt.train.core import train_model
    from langadapt.train.freeze import apply_policy

    tok = tiny_tokenizer()
    examples = sft_examples(24)
    out = {}
    for pack in (False, "whole"):
        model, _ = apply_policy(tiny_llama(VOCAB), embeddings="all")
        out[pack] = train_model(model, tok, examples, settings(max_steps=2, seq_len=32), tmp_path / str(pack),
                                pack=pack, log=lambda m: None)
    assert out["whole"].rows < out[False].rows / 2
    real = sum(len(e["input_ids"]) for e in examples)
    assert out["whole"].tokens <= real  # tokens count real tokens, not the padding at the end of each block


# --------------------------------------------------------------------------- other switches


def test_gradient_checkpointing_trains_the_same_and_keeps_fewer_activations(tmp_path):
    from langadapt.train.core import train_model
    from langadapt.train.freeze import apply_policy

    tok = tiny_tokenizer()
    weights = []
    for ckpt in (False, True):
        model, _ = apply_policy(tiny_llama(layers=3), embeddings="all")
        r = train_model(model, tok, documents(tok), settings(max_steps=3, gradient_checkpointing=ckpt),
                        tmp_path / str(ckpt), log=lambda m: None)
        weights.append(r.model.get_input_embeddings().weight.detach().clone())
        assert not r.model.is_activation_checkpointing  # switched off again for whoever uses the model next
    torch.testing.assert_close(weights[1], weights[0], rtol=1e-5, atol=1e-6)

    saved = {}
    for ckpt in (False, True):
        model, _ = apply_policy(tiny_llama(layers=3), embeddings="all")
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        total = 0

        def pack_hook(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda t: t):
            model(**batch(rows=4, width=32), use_cache=False).loss.backward()
        saved[ckpt] = total
    assert saved[True] < saved[False] / 2


def test_attention_choice_is_applied_and_an_unavailable_kernel_is_a_one_line_error(tmp_path):
    from langadapt.errors import LangadaptError
    from langadapt.train.core import train_model
    from langadapt.train.freeze import apply_policy

    tok = tiny_tokenizer()
    losses = {}
    for attention in ("sdpa", "eager"):
        model, _ = apply_policy(tiny_llama(), embeddings="all")
        r = train_model(model, tok, documents(tok), settings(max_steps=2, attention=attention), tmp_path / attention,
                        log=lambda m: None)
        assert r.model.config._attn_implementation == attention
        losses[attention] = r.final_loss
    assert losses["eager"] == pytest.approx(losses["sdpa"], rel=1e-5)
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        model, _ = apply_policy(tiny_llama(), embeddings="all")
        with pytest.raises(LangadaptError, match="flash_attention_2") as e:
            train_model(model, tok, documents(tok), settings(max_steps=1, attention="flash_attention_2"),
                        tmp_path / "fa2", log=lambda m: None)
        assert "\n" not in str(e.value)


def test_new_rows_only_keeps_no_optimizer_state_for_frozen_rows(tmp_path):
    from langadapt.recipe import LoraSettings
    from langadapt.train.core import last_checkpoint, train_model
    from langadapt.train.freeze import apply_policy

    tok = tiny_tokenizer()
    hidden, base, rows = 32, 100, 128
    before = tiny_llama(rows, tied=False).state_dict()
    model, counts = apply_policy(tiny_llama(rows, tied=False), embeddings="new", base_vocab=base,
                                 lora=LoraSettings(r=2, alpha=4, dropout=0.0))
    states = []

    def look(step, metrics):  # the checkpoint of step 1 (the last step's keeps no optimizer state)
        if step == 1:
            states.append(torch.load(last_checkpoint(tmp_path, "new") / "state" / "optimizer.bin", weights_only=False))

    r = train_model(model, tok, documents(tok), settings(max_steps=2, save_every=1), tmp_path, name="new",
                    log=lambda m: None, callback=look)
    state = states[0]
    moments = sum(s["exp_avg"].numel() + s["exp_avg_sq"].numel() for s in state["state"].values())
    assert moments == 2 * counts.trainable  # two AdamW moments per trainable number, nothing for frozen rows
    embedding_state = counts.trainable - sum(p.numel() for n, p in r.model.named_parameters() if "lora_" in n)
    assert embedding_state == 2 * (rows - base) * hidden  # new rows of the embeddings and the untied head
    merged = r.model.merge_and_unload().state_dict()
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(merged[key][:base], before[key][:base])  # old rows bit-identical
    # the head's new rows trained (through the chunked loss); the text never uses a new token as input
    assert not torch.equal(merged["lm_head.weight"][base:], before["lm_head.weight"][base:])


def test_metrics_rows_are_complete_with_the_fast_paths_on(tmp_path):
    from langadapt.train.core import train_model
    from langadapt.train.freeze import apply_policy

    tok = tiny_tokenizer()
    model, _ = apply_policy(tiny_llama(), embeddings="all")
    seen = []
    train_model(model, tok, documents(tok), settings(max_steps=5, log_every=2), tmp_path, log=lambda m: None,
                callback=lambda step, m: seen.append((step, m.get("loss"))))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 5]
    assert all(r["loss"] > 0 and r["grad_norm"] is not None for r in rows)
    assert [s for s, loss in seen if loss is not None] == [2, 4, 5]  # on the CPU, values are immediate


# --------------------------------------------------------------------------- data parallel

DDP_CHILD = """
import json, os, sys
sys.path.insert(0, {tests!r})
import torch
from accelerate import PartialState
from conftest import tiny_llama
from test_train_fastpaths import fixed_rows
from test_train_core import settings, tiny_tokenizer
from langadapt.train.core import train_model
from langadapt.train.freeze import apply_policy

out = sys.argv[1]
lines = []
model, _ = apply_policy(tiny_llama(), embeddings="all")
r = train_model(model, tiny_tokenizer(), fixed_rows(), settings(max_steps=3, batch_size=2, grad_accum=2), out,
                seed=5, name="ddp", log=lines.append)
state = PartialState()
if state.is_main_process:
    torch.save(r.model.get_input_embeddings().weight.detach(), os.path.join(out, "emb.pt"))
    json.dump(lines, open(os.path.join(out, "log.json"), "w"))
"""


def fixed_rows(n: int = 32, length: int = 16) -> list[dict]:
    """Documents of exactly one block each, so every process predicts the same number of tokens."""
    g = torch.Generator().manual_seed(3)
    return [{"input_ids": torch.randint(3, 40, (length,), generator=g).tolist()} for _ in range(n)]


def test_fused_loss_under_two_process_data_parallel_matches_one_process(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from conftest import REPO
    from langadapt.train.core import train_model
    from langadapt.train.freeze import apply_policy

    script = tmp_path / "ddp.py"
    script.write_text(DDP_CHILD.format(tests=str(REPO / "tests")), encoding="utf-8")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(REPO / "configs" / "accelerate" / "cpu-gloo-2proc.yaml"), "--main_process_port", str(port), str(script),
         str(tmp_path / "ddp")], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = json.loads((tmp_path / "ddp" / "log.json").read_text())
    assert not any("plain loss" in line for line in lines)  # the chunked loss ran under DDP
    # one process, the same 8 rows per step (2 x 4 accumulation instead of 2 x 2 x 2 processes)
    model, _ = apply_policy(tiny_llama(), embeddings="all")
    r = train_model(model, tiny_tokenizer(), fixed_rows(), settings(max_steps=3, batch_size=2, grad_accum=4),
                    tmp_path / "one", seed=5, name="one", log=lambda m: None)
    torch.testing.assert_close(torch.load(tmp_path / "ddp" / "emb.pt"), r.model.get_input_embeddings().weight.detach(),
                               rtol=1e-4, atol=1e-5)
