"""Next-token loss without the full logits: the output head and cross-entropy, a chunk of tokens at a time.

The plain path (``lm_head(hidden)`` then ``cross_entropy``) holds ``tokens x vocabulary`` logits in the
compute dtype, again in fp32 for the loss, and their gradient: at 16k tokens and a 50k vocabulary
that is about 8 GB, more than a 135M model's weights, gradients and optimizer together. Here the head
runs on ``chunk`` tokens at a time, and only on tokens that have a target (an instruction's prompt
tokens and padding cost nothing). The gradients of the hidden states and of the head's weight are
computed in the same pass (the logits are never kept for backward), so the head costs the same
three matrix products as the plain path while peak memory holds one chunk of logits.

Numerics follow the plain path under autocast: logits come out of the matmul in the compute dtype
and are upcast to fp32 for log-softmax; the head's weight gradient is summed over chunks in fp32.

``install(model, chunk)`` swaps the forward of a causal LM (plain or inside a PEFT wrapper) for one
that calls the decoder and this loss when ``labels`` are given, and the original forward otherwise
(generation, held-out bits per character). It works when the head is tied to the embeddings, untied,
or wrapped by PEFT trainable tokens (new rows only): the head's effective weight is taken from the
wrapper, so gradients reach the trainable-token deltas.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

IGNORE = -100
# Causal LMs whose forward is exactly: hidden = self.model(...); logits = self.lm_head(hidden); shifted
# cross-entropy (checked against transformers 5.x). Others (logit soft-capping, logit scaling, MoE
# auxiliary losses, GPT-2's layout) keep the plain loss.
PLAIN_HEAD_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "gemma", "smollm3"})


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropy over rows of ``hidden @ weight.T (+ bias)``; gradients made in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk: int, compute_dtype):
        n = hidden.shape[0]
        need_h = ctx.needs_input_grad[0]
        need_w = ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        w = weight.to(compute_dtype)
        b = bias.to(compute_dtype) if bias is not None else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = None  # the first chunk's product becomes the buffer: no zeros to add it to, one head-sized copy less
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, n, chunk):
                h = hidden[s : s + chunk].to(compute_dtype)
                t = targets[s : s + chunk]
                logits = h @ w.T
                if b is not None:
                    logits = logits + b
                logits = logits.float()
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
                if need_h or need_w or need_b:
                    # d(sum of losses)/d(logits) = softmax - one_hot, computed in place over the logits
                    g = logits.sub_(lse[:, None]).exp_()
                    g[torch.arange(g.shape[0], device=g.device), t] -= 1.0
                    g = g.to(compute_dtype)
                    if need_h:
                        grad_h[s : s + chunk] = (g @ w).to(hidden.dtype)
                    if need_w:
                        part = (g.T @ h).float()
                        grad_w = part if grad_w is None else grad_w.add_(part)
                        del part
                    if need_b:
                        grad_b += g.float().sum(0)
                    del g
                del logits
        if need_w and grad_w is None:  # no token to predict
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        # in place: these buffers are not read again, and the weight's gradient (the size of the head) waits
        # for the embeddings' own when the two are tied, through the whole backward pass. A second backward
        # through the same graph (retain_graph) fails in autograd's check of the saved tensors' versions.
        gh = grad_h.mul_(grad_out.to(grad_h.dtype)) if grad_h is not None else None
        gw = grad_w.mul_(grad_out).to(w_dtype) if grad_w is not None else None
        gb = grad_b.mul_(grad_out).to(b_dtype) if grad_b is not None else None
        return gh, gw, gb, None, None, None


def compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The dtype ``hidden`` is computed in here: the autocast dtype of its device when autocast is on, else its own."""
    kind = hidden.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return hidden.dtype


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                         bias: torch.Tensor | None = None, chunk: int = 1024,
                         target_index: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """(mean next-token cross-entropy, number of predicted tokens) of ``hidden`` ([B, T, H]) through a
    linear head ``weight`` ([V, H]) against ``labels`` ([B, T], shifted here as transformers does:
    position t predicts label t+1; -100 = no target).

    ``target_index``: the flat positions (``b * T + t``) that have a target, when the caller already
    knows them; otherwise they are found here, which waits for the device once.
    With no target the loss is 0 and still connected to the graph.
    """
    bsz, seq, dim = hidden.shape
    flat_h = hidden.reshape(bsz * seq, dim)
    flat_labels = labels.reshape(bsz * seq)
    if target_index is None:
        has_target = torch.zeros_like(flat_labels, dtype=torch.bool).view(bsz, seq)
        has_target[:, :-1] = labels[:, 1:] != IGNORE
        target_index = has_target.reshape(-1).nonzero().squeeze(1)
    target_index = target_index.to(hidden.device)
    n = int(target_index.numel())
    h = flat_h.index_select(0, target_index)
    targets = flat_labels.index_select(0, target_index + 1).long()
    total = _ChunkedLinearCrossEntropy.apply(h, weight, bias, targets, max(1, chunk), compute_dtype(hidden))
    return total / max(n, 1), n


def target_index(labels: torch.Tensor) -> torch.Tensor:
    """Flat positions ``b * T + t`` whose next label is a target, computed where ``labels`` live (the CPU
    copy of a batch, so the device never has to report how many there are)."""
    bsz, seq = labels.shape
    has_target = torch.zeros((bsz, seq), dtype=torch.bool)
    has_target[:, :-1] = labels[:, 1:].cpu() != IGNORE
    return has_target.reshape(-1).nonzero().squeeze(1)


# --------------------------------------------------------------------------- the head's weight


def head_weight(head: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight, bias) the output head multiplies by, inside the autograd graph; None if the head is a
    module this file does not know (the caller then keeps the plain loss)."""
    try:
        from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
        from peft.utils.other import TrainableTokensWrapper
    except ImportError:  # a PEFT without trainable tokens (before 0.15): no such wrappers to meet
        TrainableTokensLayer = TrainableTokensWrapper = ()

    if TrainableTokensWrapper and isinstance(head, TrainableTokensWrapper):
        head = head.token_adapter
    if TrainableTokensLayer and isinstance(head, TrainableTokensLayer):
        base = head.get_base_layer()
        if type(base) is not nn.Linear:
            return None
        active = head.active_adapters
        if head.disable_adapters or not active or head.merged:
            return base.weight, base.bias
        return head.get_merged_weights(active), base.bias
    if type(head) is nn.Linear:
        return head.weight, head.bias
    return None


def causal_lm_of(model: nn.Module) -> nn.Module:
    """The transformers causal LM inside ``model`` (itself, or the one a PEFT model wraps)."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def why_not(model: nn.Module) -> str | None:
    """Why the chunked loss cannot replace this model's loss, or None when it can."""
    lm = causal_lm_of(model)
    kind = getattr(getattr(lm, "config", None), "model_type", None)
    if kind not in PLAIN_HEAD_MODELS:
        return f"model type '{kind}' is not one whose head is known to be a plain linear layer"
    if not isinstance(getattr(lm, "model", None), nn.Module) or getattr(lm, "lm_head", None) is None:
        return f"{type(lm).__name__} has no .model/.lm_head"
    if lm.lm_head is not lm.get_output_embeddings():
        return "the output head is not lm_head"
    if head_weight(lm.lm_head) is None:
        return f"the output head is a {type(lm.lm_head).__name__}, which the chunked loss does not read"
    return None


def install(model: nn.Module, chunk: int) -> Callable[[], None]:
    """Route ``model``'s loss through ``linear_cross_entropy``; returns the function that undoes it.

    The replacement forward returns ``CausalLMOutputWithPast(loss=mean loss, logits=None)`` when
    ``labels`` are given. It accepts ``target_index`` (see ``linear_cross_entropy``) so a training
    loop can pass positions computed on the host. Raises ``ValueError`` (with ``why_not``'s reason)
    for models it does not support.
    """
    reason = why_not(model)
    if reason is not None:
        raise ValueError(reason)
    from transformers.modeling_outputs import CausalLMOutputWithPast

    lm = causal_lm_of(model)
    original = lm.forward
    # accelerate's mixed precision may already have put a wrapper on this instance: put it back after
    previous = lm.__dict__.get("forward")

    def forward(input_ids=None, attention_mask=None, position_ids=None, labels=None, use_cache=None,
                target_index=None, **kwargs):
        if labels is None:
            return original(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=use_cache, **kwargs)
        kwargs.pop("num_items_in_batch", None)  # a Trainer's normaliser; the mean is over this batch
        kwargs.pop("logits_to_keep", None)
        out = lm.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       use_cache=False, **kwargs)
        weight, bias = head_weight(lm.lm_head)
        loss, _ = linear_cross_entropy(out.last_hidden_state, weight, labels, bias=bias, chunk=chunk,
                                       target_index=target_index)
        return CausalLMOutputWithPast(loss=loss, logits=None)

    lm.forward = forward

    def undo() -> None:
        if lm.__dict__.get("forward") is forward:
            if previous is None:
                del lm.forward
            else:
                lm.forward = previous

    return undo


__all__ = ["linear_cross_entropy", "target_index", "head_weight", "why_not", "install", "PLAIN_HEAD_MODELS"]
