"""The training core: packing, held-out bits per character, checkpoints, resume after SIGKILL,
and two-process data parallel training with gloo."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, tiny_llama

TEXT = [
    "the cat sat on the mat", "a dog ran in the park", "birds fly over the sea",
    "we walk to the old town", "rain falls on the roof", "the sun is warm today",
    "she reads a long book", "they sing in the hall",
]


def tiny_tokenizer(extra: list[str] | None = None):
    """A word-level tokenizer trained in the test: ids 0-2 are <unk>, <s>, </s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    words = TEXT + (extra or [])
    tk.train_from_iterator(words, trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


def documents(tok, texts=TEXT, repeat: int = 4) -> list[dict]:
    out = []
    for t in texts * repeat:
        ids = [tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out.append({"input_ids": ids, "labels": list(ids)})
    return out


def settings(**kw):
    from langadapt.recipe import TrainSettings

    base = dict(max_steps=4, batch_size=2, grad_accum=1, seq_len=16, lr=5e-3, warmup_ratio=0.0)
    base.update(kw)
    return TrainSettings(**base)


# --------------------------------------------------------------------------- packing


def test_packing_restarts_positions_and_never_predicts_across_documents():
    from langadapt.train.packing import IGNORE, pack

    docs = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]},
            {"input_ids": [10, 11, 12, 13], "labels": [10, -100, 12, 13]}]
    rows = pack(docs, seq_len=4, pad_id=0)
    assert rows.input_ids.tolist() == [[5, 6, 7, 8], [9, 10, 11, 12], [13, 0, 0, 0]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 0], [0, 0, 1, 2], [0, 0, 1, 2]]
    # first token of every document (and padding) is never a target; the caller's -100 is kept
    assert rows.labels.tolist() == [[IGNORE, 6, 7, IGNORE], [9, IGNORE, IGNORE, 12], [13, IGNORE, IGNORE, IGNORE]]
    assert rows.tokens.tolist() == [4, 4, 1]


def test_packed_documents_do_not_attend_to_each_other():
    from langadapt.train.packing import pack

    model = tiny_llama().eval()
    a, b = [5, 6, 7, 8, 9], [20, 21, 22]
    rows = pack([{"input_ids": a}, {"input_ids": b}], seq_len=8, pad_id=0)
    batch = rows.batch(torch.tensor([0]))
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0, len(a):]
        alone = model(input_ids=torch.tensor([b])).logits[0]
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)


def test_padded_rows_are_truncated_and_masked():
    from langadapt.train.packing import IGNORE, pad

    rows, truncated = pad([{"input_ids": [1, 2, 3, 4, 5, 6], "labels": [-100, -100, 3, 4, 5, 6]},
                           {"input_ids": [7, 8]}], seq_len=4, pad_id=0)
    assert truncated == 1
    batch = rows.batch(torch.tensor([1, 0]))
    assert batch["input_ids"].tolist() == [[7, 8, 0, 0], [1, 2, 3, 4]]
    assert batch["labels"].tolist() == [[7, 8, IGNORE, IGNORE], [IGNORE, IGNORE, 3, 4]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


# --------------------------------------------------------------------------- bits per character


def test_bits_per_char_scores_every_token_of_every_line_once():
    from langadapt.train.bpc import bits_per_char
    from langadapt.train.examples import boundary_id

    tok = tiny_tokenizer()
    model = tiny_llama().eval()
    lines = ["the cat sat on the mat", "a dog ran in the park and the sun is warm today"]
    bits = 0.0
    for line in lines:
        ids = tok(line, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([[boundary_id(tok)] + ids])).logits[0, :-1]
        bits += torch.nn.functional.cross_entropy(logits, torch.tensor(ids), reduction="sum").item() / math.log(2)
    expected = bits / sum(len(line) for line in lines)
    text = "\n".join(lines) + "\n\n"
    assert bits_per_char(model, tok, text) == pytest.approx(expected, rel=1e-5)
    assert bits_per_char(model, tok, text, batch_size=1) == pytest.approx(expected, rel=1e-5)
    # a line longer than the window is split, not dropped: same kind of number
    short = bits_per_char(model, tok, text, seq_len=4)
    assert 0.5 * expected < short < 2 * expected


def test_bits_per_char_batches_hold_at_most_the_logits_budget(monkeypatch):
    """Fewer windows per batch when their logits would pass LOGITS_BUDGET (large vocabularies, long
    windows): the same number, never a batch above the budget unless one window alone is."""
    from langadapt.train import bpc

    tok = tiny_tokenizer()
    model = tiny_llama().eval()
    text = "\n".join(["the cat sat on the mat", "a dog ran in the park and the sun is warm today",
                      "the sun is warm", "a cat and a dog"] * 3)
    widths = []
    model.register_forward_hook(lambda m, a, kw, out: widths.append(out.logits.numel() * 4), with_kwargs=True)
    whole = bpc.bits_per_char(model, tok, text)
    assert max(widths) > 600 * 4
    widths.clear()
    monkeypatch.setattr(bpc, "LOGITS_BUDGET", 600 * 4)  # bytes: a few windows of a 128-row head at a time
    assert bpc.bits_per_char(model, tok, text) == pytest.approx(whole, rel=1e-6)
    longest = max(len(ids) + 1 for ids in tok(text.splitlines(), add_special_tokens=False)["input_ids"])
    assert len(widths) > 1 and all(w <= max(600 * 4, longest * 128 * 4) for w in widths)


def test_read_heldout_cuts_at_a_line_break(tmp_path):
    from langadapt.recipe import parse_recipe
    from langadapt.train.bpc import read_heldout

    (tmp_path / "fa.txt").write_text("  first line here\n\nsecond line here\nthird line that is long\n", encoding="utf-8")
    recipe = parse_recipe({"name": "t", "base_model": "x", "data": {"heldout": {"target": str(tmp_path / "fa.txt"),
                                                                                "max_chars": 120}}})
    assert read_heldout(recipe) == {"target": "first line here\nsecond line here\nthird line that is long"}
    recipe.data.heldout.max_chars = 100
    (tmp_path / "fa.txt").write_text("a" * 60 + "\n" + "b" * 60 + "\n", encoding="utf-8")
    assert read_heldout(recipe)["target"] == "a" * 60


# --------------------------------------------------------------------------- the loop


def test_training_lowers_loss_and_writes_metrics_checkpoint_and_bpc(tmp_path):
    from langadapt.train.core import last_checkpoint, train_model
    from langadapt.train.freeze import apply_policy

    tok = tiny_tokenizer()
    model, counts = apply_policy(tiny_llama(), embeddings="all")
    heldout = {"target": "the cat ran in the park", "english": "birds sing in the hall"}
    result = train_model(model, tok, documents(tok), settings(max_steps=12, save_every=5, eval_every=6), tmp_path,
                         heldout=heldout, name="mono", log=lambda m: None)
    assert result.steps == 12 and result.trainable == counts.trainable
    assert result.tokens == 12 * 2 * 16 and result.tokens_per_s > 0 and result.cpu_seconds > 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 12 and losses[-1] < losses[0]
    assert all(r["tokens_per_s"] > 0 and r["memory_mb"] > 0 for r in rows if "loss" in r)
    assert [r["step"] for r in rows if "bpc_target" in r] == [0, 6, 12]
    bpc = json.loads((tmp_path / "bpc.json").read_text())
    assert bpc["target"]["end"] < bpc["target"]["start"]
    assert bpc["target"]["mono"] == {"start": bpc["target"]["start"], "end": bpc["target"]["end"]}
    ckpt = last_checkpoint(tmp_path, "mono")
    assert ckpt.name == "step-12" and not any(p.name.startswith(".tmp") for p in ckpt.parent.iterdir())
    assert [p.name for p in ckpt.parent.iterdir()] == ["step-12"]  # older checkpoints are removed
    # the last step's checkpoint: the trained tensors and the trainer's state; no optimizer state (no step
    # follows) and no frozen weights (the stage loaded them)
    assert {p.name for p in ckpt.iterdir()} == {"model", "trainer_state.json"}
    saved = load_file(ckpt / "model" / "trainable.safetensors")
    assert list(saved) == ["model.embed_tokens.weight"]  # the tied head is the same tensor
    assert torch.equal(saved["model.embed_tokens.weight"], result.model.get_input_embeddings().weight)


def test_checkpoints_before_the_last_step_hold_trained_tensors_and_optimizer_state_only(tmp_path):
    from langadapt.train.core import last_checkpoint, train_model
    from langadapt.train.freeze import apply_policy

    tok = tiny_tokenizer()
    model, counts = apply_policy(tiny_llama(), embeddings="all")
    seen = {}

    def look(step, metrics):
        if step == 2:
            ckpt = last_checkpoint(tmp_path, "mid")
            seen["files"] = sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file())
            seen["weights"] = load_file(ckpt / "model" / "trainable.safetensors")

    train_model(model, tok, documents(tok), settings(max_steps=3, save_every=2), tmp_path, name="mid",
                callback=look, log=lambda m: None)
    assert "state/optimizer.bin" in seen["files"] and "trainer_state.json" in seen["files"]
    assert not any(f.startswith("model/") and f.endswith(".safetensors") and f != "model/trainable.safetensors"
                   for f in seen["files"])
    assert sum(t.numel() for t in seen["weights"].values()) == counts.trainable


def test_gradient_accumulation_matches_a_bigger_batch(tmp_path):
    from langadapt.train.core import train_model
    from langadapt.train.freeze import apply_policy

    tok = tiny_tokenizer()
    weights = []
    for i, (bs, accum) in enumerate([(4, 1), (2, 2), (1, 4)]):
        model, _ = apply_policy(tiny_llama(), embeddings="all")
        r = train_model(model, tok, documents(tok), settings(batch_size=bs, grad_accum=accum, max_steps=3),
                        tmp_path / str(i), log=lambda m: None)
        weights.append(r.model.get_input_embeddings().weight.detach().clone())
    torch.testing.assert_close(weights[1], weights[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(weights[2], weights[0], rtol=1e-4, atol=1e-6)


def test_training_is_reproducible_with_a_seed(tmp_path):
    from langadapt.recipe import LoraSettings
    from langadapt.train.core import train_model
    from langadapt.train.freeze import apply_policy

    tok = tiny_tokenizer()
    out = []
    for i in range(2):
        torch.manual_seed(123)
        model, _ = apply_policy(tiny_llama(), embeddings="all", lora=LoraSettings(r=2, alpha=4, dropout=0.2))
        r = train_model(model, tok, documents(tok), settings(max_steps=3), tmp_path / str(i), seed=7,
                        log=lambda m: None)
        out.append({k: v.detach().clone() for k, v in r.model.named_parameters() if v.requires_grad})
    assert out[0].keys() == out[1].keys()
    assert all(torch.equal(out[0][k], out[1][k]) for k in out[0])


# --------------------------------------------------------------------------- kill and resume

CHILD = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import torch
from safetensors.torch import load_file
from conftest import tiny_llama
from test_train_core import documents, settings, tiny_tokenizer
from langadapt.recipe import LoraSettings
from langadapt.train.core import train_model
from langadapt.train.freeze import apply_policy

out, kill_at, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
tok = tiny_tokenizer()
model, _ = apply_policy(tiny_llama(), embeddings="all", lora=LoraSettings(r=2, alpha=4, dropout=0.2))

def cb(step, metrics):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

r = train_model(model, tok, documents(tok), settings(max_steps=7, grad_accum=2, save_every=2), out, resume=resume,
                seed=11, callback=cb, name="pre", log=lambda m: None)
torch.save({{k: v.detach() for k, v in r.model.state_dict().items()}}, os.path.join(out, "final.pt"))
print("resumed_from", r.resumed_from)
"""


def _child(tmp_path: Path, out: Path, kill_at: int, resume: bool) -> subprocess.CompletedProcess:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(REPO / "tests")), encoding="utf-8")
    return subprocess.run([sys.executable, str(script), str(out), str(kill_at), "1" if resume else "0"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_run_killed_with_sigkill_resumes_to_the_same_weights(tmp_path):
    straight = _child(tmp_path, tmp_path / "straight", kill_at=-1, resume=False)
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed = _child(tmp_path, tmp_path / "killed", kill_at=5, resume=False)
    assert killed.returncode == -signal.SIGKILL
    ckpts = sorted(p.name for p in (tmp_path / "killed" / "checkpoints" / "pre").iterdir())
    assert ckpts == ["step-4"]
    # a checkpoint torn by a kill while being written is ignored
    (tmp_path / "killed" / "checkpoints" / "pre" / ".tmp-step-6" / "model").mkdir(parents=True)

    resumed = _child(tmp_path, tmp_path / "killed", kill_at=-1, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed_from 4" in resumed.stdout
    a = torch.load(tmp_path / "straight" / "final.pt")
    b = torch.load(tmp_path / "killed" / "final.pt")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    steps = [json.loads(x)["step"] for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 8))  # the killed run's step 5 row was dropped, not duplicated


def test_run_killed_after_its_last_checkpoint_resumes_from_it_without_optimizer_state(tmp_path):
    straight = _child(tmp_path, tmp_path / "straight", kill_at=-1, resume=False)
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = _child(tmp_path, tmp_path / "killed", kill_at=7, resume=False)
    assert killed.returncode == -signal.SIGKILL
    last = tmp_path / "killed" / "checkpoints" / "pre" / "step-7"
    assert (last / "trainer_state.json").is_file() and not (last / "state").exists()
    resumed = _child(tmp_path, tmp_path / "killed", kill_at=-1, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed_from 7" in resumed.stdout
    a = torch.load(tmp_path / "straight" / "final.pt")
    b = torch.load(tmp_path / "killed" / "final.pt")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


# --------------------------------------------------------------------------- two processes

GLOO = """
import os, sys
sys.path.insert(0, {tests!r})
import torch
from safetensors.torch import load_file
from accelerate import PartialState
from conftest import tiny_llama
from test_train_core import documents, settings, tiny_tokenizer
from langadapt.train.core import train_model
from langadapt.train.freeze import apply_policy

out = sys.argv[1]
tok = tiny_tokenizer()
model, _ = apply_policy(tiny_llama(), embeddings="all")

def look(step, metrics):  # the step-2 checkpoint (the last one, step 3, keeps no optimizer or RNG state)
    if step == 2:
        rng = os.path.join(out, "checkpoints", "ddp", "step-2", "state", "random_states_1.pkl")
        open(os.path.join(out, "rng" + os.environ["RANK"]), "w").write(str(os.path.isfile(rng)))

r = train_model(model, tok, documents(tok), settings(max_steps=3, grad_accum=2, save_every=2), out,
                seed=5, name="ddp", log=lambda m: None, callback=look)
state = PartialState()
torch.save({{"world": state.num_processes, "backend": state.backend,
            "weights": {{k: v.detach() for k, v in r.model.state_dict().items()}}}},
           os.path.join(out, f"rank{{state.process_index}}.pt"))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_run_ends_with_identical_weights_on_both_ranks(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(GLOO.format(tests=str(REPO / "tests")), encoding="utf-8")
    config = REPO / "configs" / "accelerate" / "cpu-gloo-2proc.yaml"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
         "--main_process_port", str(_free_port()), str(script), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "out" / "rank0.pt")
    r1 = torch.load(tmp_path / "out" / "rank1.pt")
    assert (r0["world"], r0["backend"]) == (2, "gloo")
    assert [k for k in r0["weights"] if not torch.equal(r0["weights"][k], r1["weights"][k])] == []
    untrained = tiny_llama().state_dict()
    emb = "model.embed_tokens.weight"
    assert not torch.equal(r0["weights"][emb], untrained[emb])
    assert (tmp_path / "out" / "rng0").read_text() == "True"  # every process's RNG state in the checkpoint


def test_lora_initialisation_follows_the_seed_not_the_global_rng():
    """The stages seed the LoRA matrices, so a rerun of a stage in a fresh process trains the same model."""
    import torch

    from langadapt.recipe import LoraSettings
    from langadapt.train.freeze import apply_policy

    lora = LoraSettings(r=4, alpha=8, dropout=0.0, targets="all-linear")

    def lora_weights(seed, noise):
        model = tiny_llama()
        torch.manual_seed(noise)  # whatever the process did before
        wrapped, _ = apply_policy(model, embeddings="all", lora=lora, seed=seed)
        return {n: p.detach().clone() for n, p in wrapped.named_parameters() if "lora_A" in n}

    a, b, c = lora_weights(0, noise=1), lora_weights(0, noise=2), lora_weights(1, noise=1)
    assert a and all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)
    model = tiny_llama()
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    apply_policy(model, embeddings="all", lora=lora, seed=5)
    assert torch.equal(torch.rand(3), expected)  # the caller's random stream is left alone


# --------------------------------------------------------------------------- divergence (issue 17 item 4)


def test_a_diverging_run_stops_at_the_first_nonfinite_step_and_saves_nothing_of_it(tmp_path):
    """lr 1e30 (finite, so the recipe takes it): step 2's gradient is NaN; training used to go on, checkpoint
    the NaN weights and finish with loss=nan."""
    from langadapt.errors import DivergedError
    from langadapt.train.core import last_checkpoint, train_model
    from langadapt.train.freeze import apply_policy

    tok = tiny_tokenizer()
    for i, extra in enumerate([{}, {"max_grad_norm": None, "log_every": 5}]):  # a logged NaN; weights at the save
        model, _ = apply_policy(tiny_llama(), embeddings="all")
        out = tmp_path / str(i)
        with pytest.raises(DivergedError, match=r"NaN or infinite (at step 2|.*at step 2 or before).*Lower lr"):
            train_model(model, tok, documents(tok), settings(max_steps=6, lr=1e30, save_every=2, **extra), out,
                        log=lambda m: None)
        assert last_checkpoint(out, "train") is None
        rows = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
        assert [json.loads(r)["step"] for r in rows] == ([1] if not extra else [])


def test_a_nan_loss_between_logged_steps_stops_before_the_next_checkpoint(tmp_path):
    from langadapt.errors import DivergedError
    from langadapt.train.core import last_checkpoint, train_model
    from langadapt.train.freeze import apply_policy

    tok = tiny_tokenizer()
    model, _ = apply_policy(tiny_llama(), embeddings="all")

    def poison(step, row):
        if step == 3:
            with torch.no_grad():
                model.get_input_embeddings().weight.fill_(float("nan"))

    with pytest.raises(DivergedError, match=r"step 4 or before"):
        train_model(model, tok, documents(tok), settings(max_steps=8, save_every=2, log_every=10), tmp_path,
                    callback=poison, log=lambda m: None)
    assert last_checkpoint(tmp_path, "train").name == "step-2"  # the last one before the NaN
    model, _ = apply_policy(tiny_llama(), embeddings="all")
    with pytest.raises(DivergedError, match=r"the training loss is nan at step 4 "):  # logged: named at once
        train_model(model, tok, documents(tok), settings(max_steps=8), tmp_path / "b", callback=poison,
                    log=lambda m: None)


def test_finish_stage_refuses_a_model_with_nan_weights(tmp_path):
    from types import SimpleNamespace

    from langadapt.errors import DivergedError
    from langadapt.layout import RunLayout
    from langadapt.train.finish import finish_stage

    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    ctx = SimpleNamespace(out_dir=tmp_path / "align", stage="align", layout=RunLayout(tmp_path), log=lambda m: None)
    ctx.out_dir.mkdir()
    with pytest.raises(DivergedError, match=r"align: the trained model has 3 NaN or infinite weights "
                                            r"\(in model.layers.1.mlp.down_proj.weight\); it was not saved"):
        finish_stage(ctx, model, tiny_tokenizer())
    assert list(ctx.out_dir.iterdir()) == []
