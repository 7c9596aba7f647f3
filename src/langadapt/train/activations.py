"""Less activation memory for training (LoRA dropout on the CPU, SiLU MLPs anywhere), with the same numbers.

A PEFT LoRA layer computes ``lora_B(lora_A(dropout(x)))``. For the backward pass autograd keeps two
tensors the size of ``x`` per adapted layer: the dropout noise (float) and the dropped-out input of
``lora_A``. With LoRA on the seven linear layers of a Llama block that is about 40 KB per token per block
in fp32: measured on the demo's sft step (SmolLM2-135M, 8 x 256 tokens) 2.3 of the 4.3 GiB autograd
keeps between the forward and backward passes (bench/activation_census.py).

``install(model)`` makes ``lora_A(dropout(x))`` one autograd step that keeps ``x`` (which the q, k and v
layers share, and the gate and up layers) and a one-byte mask instead, and rebuilds the dropped-out input
in the backward pass by the forward's own operations, then takes F.linear's two products. On the CPU
``torch.nn.functional.dropout`` draws its noise as ``bernoulli_(1 - p)`` divided by ``1 - p`` (ATen's
``_dropout_impl``; the fused kernel is for accelerators only); this draws it the same way, so outputs,
gradients and the random state after a step are bit-identical to PEFT's own layers
(tests/test_train_activations.py). On any other device, in evaluation mode and without gradients the
layer runs PEFT's way. Only plain LoRA layers (no DoRA, no
bias on ``lora_A``) with an ``nn.Dropout`` change; ``install`` returns the function that undoes it.

A step fed as micro-batches (``batch_size`` x ``grad_accum``) would draw each layer's noise micro-batch by
micro-batch: the random stream in another order, so other numbers than the same rows fed at once. With a
``StepDropout`` plan, the training core names each micro-batch's rows within the step; the first micro-batch
draws every layer's noise for all the step's rows, exactly as one batch of them would (same shape, same order
of calls), keeps it at a bit per element (38 MB for the demo's sft step of 8 x 256 tokens), and each
micro-batch takes its own rows. So the split of a step changes memory and speed, not the numbers (up to the
order in which micro-batch gradients are summed).

``install`` also routes the SiLU MLPs of Llama-layout models, ``down_proj(silu(gate_proj(x)) * up_proj(x))``,
through ``_GatedProduct``, on any device: autograd would keep the activation's output besides ``gate`` and
``up`` (6 KB per token per layer in fp32 for SmolLM2); it is recomputed in the backward pass by the same
operation, so again the same bits (tests/test_train_activations.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from langadapt.train.loss import compute_dtype


class _DroppedLinear(torch.autograd.Function):
    """``F.linear(F.dropout(x, p), weight)`` on the CPU, keeping ``x`` and a boolean mask for backward."""

    @staticmethod
    def forward(ctx, x, weight, p: float, mask: torch.Tensor | None):
        if mask is None:
            noise = torch.empty_like(x).bernoulli_(1 - p)
            mask = noise.ne(0)
        else:  # drawn by a StepDropout plan: bernoulli's 0 and 1 again, then divided as below
            noise = mask.to(x.dtype)
        noise.div_(1 - p)
        out = F.linear(x * noise, weight)
        ctx.save_for_backward(x, mask, weight)
        ctx.p = p
        ctx.cast = compute_dtype(x)  # F.linear's dtype here: autocast's or x's own
        return out

    @staticmethod
    def backward(ctx, grad):
        x, mask, weight = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        noise = mask.to(x.dtype).div_(1 - ctx.p)  # 1 (or 0) divided as in forward: the same values
        # the products F.linear's backward takes on 2-D views (grad @ W for the input, grad^T @ input for
        # the weight; the same bits, tests/test_train_activations.py), in the forward's compute dtype
        cast = ctx.cast
        w = weight.to(cast)
        g2 = grad.reshape(-1, grad.shape[-1]).to(cast)
        gx = gw = None
        if need_x:
            gx = g2.mm(w).reshape(x.shape).to(x.dtype) * noise
        if need_w:
            dropped = (x * noise).to(cast).reshape(-1, x.shape[-1])
            gw = g2.t().mm(dropped).to(weight.dtype)
        return gx, gw, None, None


class StepDropout:
    """The LoRA dropout noise of one optimizer step, drawn as if the step's rows were fed at once.

    The training core calls ``micro_batch(first, rows, step_rows, step_width)`` before each micro-batch's forward
    pass (rows ``first`` to ``first + rows`` of a step of ``step_rows`` rows, the longest ``step_width`` tokens)
    and ``stop()`` after the step. During micro-batch 0 each layer draws its noise for the whole step, in the
    order one batch of all the rows would call the layers; later micro-batches take their rows of it.
    """

    def __init__(self) -> None:
        self._window: tuple[int, int, int, int] | None = None
        self._masks: list[np.ndarray] = []  # per call: the step's mask, 8 elements to a byte (np.packbits)
        self._call = 0
        self._scratch: dict = {}  # dtype -> (noise, mask): flat buffers as large as the largest draw so far

    def micro_batch(self, first: int, rows: int, step_rows: int, step_width: int) -> None:
        if first == 0:
            self._masks = []
        self._window, self._call = (first, rows, step_rows, step_width), 0

    def stop(self) -> None:
        self._window, self._masks = None, []

    def close(self) -> None:
        """Drop the noise buffers too (after training)."""
        self.stop()
        self._scratch = {}

    def mask(self, x: torch.Tensor, p: float) -> torch.Tensor | None:
        """This micro-batch's boolean mask for the next layer's input ``x`` (None: draw it the plain way)."""
        if self._window is None or x.dim() < 3:
            return None
        first, rows, step_rows, step_width = self._window
        if x.shape[0] != rows or x.shape[1] > step_width or first + rows > step_rows:
            return None  # not the (rows, tokens, features) layout the plan was told about
        k, self._call = self._call, self._call + 1
        if first == 0:
            # the step's noise in buffers kept from call to call (bernoulli_ overwrites every element of a
            # contiguous view, in the order a fresh tensor's would be drawn): a new step-sized tensor per layer
            # would leave the allocator's heap fragmented (+100 MB resident in sft). One pair per dtype, grown
            # to the largest draw, whatever widths the steps have.
            shape = (step_rows, step_width, *x.shape[2:])
            n = step_rows * step_width * x.shape[2:].numel()
            noise, whole = self._scratch.get(x.dtype, (None, None))
            if noise is None or noise.numel() < n:
                noise, whole = torch.empty(n, dtype=x.dtype), torch.empty(n, dtype=torch.bool)
                self._scratch[x.dtype] = noise, whole
            noise, whole = noise[:n].view(shape), whole[:n].view(shape)
            torch.ne(noise.bernoulli_(1 - p), 0, out=whole)
            self._masks.append(np.packbits(whole.numpy(), axis=-1))
            return whole[:rows, : x.shape[1]].clone()
        if k >= len(self._masks):
            return None
        bits = self._masks[k][first : first + rows, : x.shape[1]]
        return torch.from_numpy(np.unpackbits(bits, axis=-1, count=x.shape[-1]).view(np.bool_))


def _dropped_forward(linear: torch.nn.Linear, dropout: torch.nn.Dropout, plan: StepDropout | None):
    def forward(x):
        if dropout.training and dropout.p > 0:
            if torch.is_grad_enabled() and x.device.type == "cpu":
                p = float(dropout.p)
                return _DroppedLinear.apply(x, linear.weight, p, plan.mask(x, p) if plan is not None else None)
            x = F.dropout(x, dropout.p, True, dropout.inplace)
        return F.linear(x, linear.weight)

    return forward


def _identity(x):
    return x


class _GatedProduct(torch.autograd.Function):
    """``silu(gate) * up`` keeping ``gate`` and ``up`` for backward, not also the activation's output:
    it is recomputed there by the same operation (so the same bits), and the two gradients are the ones
    autograd's own mul and SiLU steps take."""

    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        grad_gate = grad_up = None
        if ctx.needs_input_grad[1]:
            grad_up = grad * F.silu(gate)
        if ctx.needs_input_grad[0]:
            grad_gate = torch.ops.aten.silu_backward(grad * up, gate)
        return grad_gate, grad_up


def _gated_mlp(mlp: torch.nn.Module):
    """A Llama-layout MLP's forward, ``down_proj(act_fn(gate_proj(x)) * up_proj(x))`` (Llama, Mistral,
    Qwen2/3, SmolLM), through ``_GatedProduct`` while gradients are recorded."""
    def forward(x):
        gate = mlp.gate_proj(x)
        if torch.is_grad_enabled():
            return mlp.down_proj(_GatedProduct.apply(gate, mlp.up_proj(x)))
        return mlp.down_proj(mlp.act_fn(gate) * mlp.up_proj(x))

    return forward


def _is_gated_silu_mlp(module: torch.nn.Module) -> bool:
    """Whether ``module`` is one of transformers' Llama-layout MLPs with SiLU: the forward above is theirs."""
    name = type(module).__name__
    return (name.endswith("MLP") and type(module).__module__.startswith("transformers.models.")
            and name[: -len("MLP")].lower() in _GATED_SILU_FAMILIES
            and all(hasattr(module, k) for k in ("gate_proj", "up_proj", "down_proj"))
            and type(getattr(module, "act_fn", None)).__name__ in ("SiLU", "SiLUActivation"))


# Families whose MLP forward is exactly down_proj(act_fn(gate_proj(x)) * up_proj(x)) (transformers 5.x), the
# activation torch's SiLU or transformers' SiLUActivation (which calls F.silu); another one (a config's
# hidden_act) leaves the MLP alone.
_GATED_SILU_FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3", "smollm3", "olmo2", "granite"})


def install(model: torch.nn.Module, plan: StepDropout | None = None) -> Callable[[], None]:
    """Route every plain LoRA layer's ``lora_A(dropout(x))`` of ``model`` through ``_DroppedLinear``, its
    noise from ``plan`` when one is given, and every Llama-layout SiLU MLP through ``_GatedProduct``; returns
    the function that undoes it. A model without such layers is left as it is."""
    try:
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:
        LoraLinear = None

    patched: list[torch.nn.Module] = []
    for module in model.modules():
        if _is_gated_silu_mlp(module):
            module.forward = _gated_mlp(module)
            patched.append(module)
        if LoraLinear is None or not isinstance(module, LoraLinear):
            continue
        for name, dropout in module.lora_dropout.items():
            linear = module.lora_A[name]
            if (type(dropout) is not torch.nn.Dropout or type(linear) is not torch.nn.Linear
                    or linear.bias is not None or module.use_dora.get(name, False)):
                continue
            linear.forward = _dropped_forward(linear, dropout, plan)
            dropout.forward = _identity
            patched += [linear, dropout]

    def undo() -> None:
        for m in patched:
            m.__dict__.pop("forward", None)

    return undo


__all__ = ["StepDropout", "install"]
