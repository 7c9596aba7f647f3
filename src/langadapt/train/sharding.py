"""What the training core does differently under FSDP and DeepSpeed: both engines on a machine without a
GPU (so their paths run, and are tested, on CPU processes with gloo), and a plain model back from FSDP.

accelerate (1.15) takes ``accelerate launch``'s FSDP and DeepSpeed settings only on GPU-like devices: with
``cpu=True`` it silently runs plain data parallel. PyTorch's FSDP2 (``fully_shard``) runs on the CPU with
gloo (FSDP1 does not: refused in one line); DeepSpeed's CPU accelerator talks over gloo when oneCCL is not
installed. ``cpu_plugins`` builds the plugin the launcher configured and
``enable`` switches the accelerator's state to it before anything is prepared.

FSDP shards the model in place (FSDP2 swaps every wrapped module's class and turns its parameters into
``DTensor`` shards; FSDP1 replaces blocks with wrappers over flat shards), so the model a training call
was given is no longer a usable transformers/PEFT model afterwards. ``prepare`` keeps its structure on the
meta device (a ``Skeleton``, no memory); ``Skeleton.rebuild`` fills it with the trained weights, gathered
in full on the CPU of every process one tensor at a time. ZeRO-2 keeps whole weights on every process and
needs none of this.
"""

from __future__ import annotations

import copy
import os

from langadapt.errors import LangadaptError

_RAM_ENV = "FSDP_CPU_RAM_EFFICIENT_LOADING"
_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def fsdp_requested() -> bool:
    """True under ``accelerate launch`` with an FSDP config and several processes."""
    return _flag("ACCELERATE_USE_FSDP") and int(os.environ.get("WORLD_SIZE", "1")) > 1


def deepspeed_requested() -> bool:
    """True under ``accelerate launch`` with a DeepSpeed config and several processes."""
    return _flag("ACCELERATE_USE_DEEPSPEED") and int(os.environ.get("WORLD_SIZE", "1")) > 1


def cpu_plugins() -> dict:
    """The ``Accelerator`` keyword arguments for a CPU process of an FSDP or DeepSpeed launch (none otherwise)."""
    reset_cpu_state()
    if fsdp_requested():
        return {"fsdp_plugin": cpu_fsdp_plugin()}
    if deepspeed_requested():
        from accelerate.utils import DeepSpeedPlugin

        return {"deepspeed_plugin": DeepSpeedPlugin()}
    return {}


def enable(accelerator, plugins: dict) -> None:
    """Switch the accelerator to the engine ``cpu_plugins`` built a plugin for."""
    if "fsdp_plugin" in plugins:
        enable_fsdp(accelerator, plugins["fsdp_plugin"])
    elif "deepspeed_plugin" in plugins:
        enable_deepspeed(accelerator, plugins["deepspeed_plugin"])


def cpu_fsdp_plugin():
    """accelerate's FSDP plugin from the launcher's settings, for processes on the CPU."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    if int(os.environ.get("FSDP_VERSION", "1")) == 1:
        # sync_module_states insists on a GPU, and without it the full-state-dict gather of the first
        # checkpoint ends the main process with a segmentation fault (torch 2.13, gloo)
        raise LangadaptError("FSDP1 (fsdp_version: 1) does not run on CPU processes; use fsdp_version: 2 in the "
                             "accelerate config (configs/accelerate/fsdp.yaml is FSDP2)")
    ram_efficient = _flag(_RAM_ENV)
    # Built with the loading flag off (on, it makes the plugin look for a GPU), then set as the launcher
    # asked; the plugin writes the flag back to the environment, which transformers reads at load time.
    saved = os.environ.get(_RAM_ENV)
    plugin = FullyShardedDataParallelPlugin(cpu_ram_efficient_loading=False)
    if saved is None:
        os.environ.pop(_RAM_ENV, None)
    else:
        os.environ[_RAM_ENV] = saved
    plugin.cpu_ram_efficient_loading = ram_efficient
    return plugin


def enable_fsdp(accelerator, plugin) -> None:
    """Switch a CPU accelerator (gloo process group already up) to FSDP with ``plugin``."""
    import torch
    from accelerate.utils import DistributedType

    state = accelerator.state
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    # FSDP computes on torch.device("cpu") and refuses a device_id of "cpu:0", accelerate's CPU device
    _switch(state, DistributedType.FSDP, torch.device("cpu"))


def enable_deepspeed(accelerator, plugin) -> None:
    """Switch a CPU accelerator (gloo process group already up) to DeepSpeed with ``plugin``: DeepSpeed's
    CPU accelerator talks over the same gloo group when oneCCL is not installed."""
    from accelerate.utils import DistributedType

    state = accelerator.state
    plugin.set_mixed_precision(state.mixed_precision)
    plugin.select(_from_accelerator_state=True)
    state.deepspeed_plugins = plugin
    _switch(state, DistributedType.DEEPSPEED, state.device)


def _switch(state, kind, device) -> None:
    """Set the engine in the accelerator's state and in the process-wide state it is refreshed from
    (accelerate copies the latter into the former whenever anything calls ``AcceleratorState()``)."""
    from accelerate.state import PartialState

    for shared in (state.__dict__, PartialState._shared_state):
        shared["distributed_type"] = kind
        shared["device"] = device


def reset_cpu_state() -> None:
    """Undo ``enable_fsdp``/``enable_deepspeed`` before the next accelerator (align's second step) is made,
    so that accelerate builds it from its own CPU state again."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    shared = PartialState._shared_state
    if shared.get("distributed_type") in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        shared["distributed_type"] = DistributedType.MULTI_CPU
        shared["device"] = None
        PartialState().set_device()


def check_precision(accelerator, precision: str) -> None:
    """FSDP1 flattens each wrapped block into one tensor of one dtype, which cannot hold the frozen 16-bit
    weights and fp32 trainable ones (LoRA, embeddings) every langadapt stage trains; FSDP2 can."""
    if getattr(accelerator, "is_fsdp2", False) or precision == "fp32":
        return
    raise LangadaptError(f"precision {precision} under FSDP1 mixes {precision} frozen and fp32 trainable weights in "
                         "one flat tensor, which FSDP1 refuses; set fsdp_version: 2 in the accelerate config "
                         "(configs/accelerate/fsdp.yaml) or precision: fp32")


def full(tensor):
    """A plain tensor: FSDP2 returns the gradient norm as a DTensor, which cannot be stacked or read."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def prepare(accelerator, model, optimizer):
    """``accelerator.prepare`` under FSDP; returns (model, optimizer, a ``Skeleton`` of the model).

    With ``cpu_ram_efficient_loading`` accelerate moves the model to the meta device, which unties tied
    tensors, and re-ties them with transformers' ``tie_weights``: that sets ``lm_head.weight``, which fails
    when PEFT wraps the head (trainable-token rows). The ties are restored here by parameter name instead.
    """
    skeleton = Skeleton(model)
    model.tie_weights = lambda *args, **kwargs: retie(model, skeleton.tied)
    try:
        model, optimizer = accelerator.prepare(model, optimizer)
    finally:
        for m in (model, accelerator.unwrap_model(model)):
            m.__dict__.pop("tie_weights", None)
    return model, optimizer, skeleton


class Skeleton:
    """The structure of a model before FSDP shards it, on the meta device, to be filled after training."""

    def __init__(self, model):
        import torch

        # Parameters become meta tensors through deepcopy's memo (shared ones stay shared); buffers are
        # small and copied as they are.
        memo = {}
        for p in model.parameters():
            if id(p) not in memo:
                memo[id(p)] = torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        self.model = copy.deepcopy(model, memo)
        self.tied = tie_groups(self.model)

    def rebuild(self, accelerator, sharded):
        """The skeleton holding ``sharded``'s current weights (every process); returns the plain model."""
        state = full_state_dict(accelerator, sharded)
        model = self.model
        model.load_state_dict(state, strict=True, assign=True)
        retie(model, self.tied)  # assign=True gave each name its own tensor
        # buffers left out of state dicts (rotary frequencies) as the sharded model used them
        live = {clean_name(n): b for n, b in accelerator.unwrap_model(sharded).named_buffers()}
        for name, _ in list(model.named_buffers()):
            if name not in state and name in live:
                owner, _, leaf = name.rpartition(".")
                model.get_submodule(owner)._buffers[leaf] = live[name].detach().cpu().clone()
        leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
        if leftover:
            raise RuntimeError(f"weights not recovered from the sharded model: {leftover[:3]}")
        self.model = None
        return model


def tie_groups(model) -> list[list[str]]:
    """Names that share one parameter (tied embeddings and head, wherever wrappers put them)."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def retie(model, groups: list[list[str]]) -> None:
    """Make every name of each group hold the group's first parameter again."""
    for names in groups:
        first = model.get_parameter(names[0])
        for name in names[1:]:
            owner, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(owner), leaf, first)


def full_state_dict(accelerator, model) -> dict:
    """The whole model's state on the CPU of every process (FSDP), gathered one tensor at a time."""
    import torch

    if getattr(accelerator, "is_fsdp2", False):
        from torch.distributed.tensor import DTensor

        out, seen = {}, {}
        for name, value in model.state_dict(keep_vars=True).items():
            if id(value) not in seen:  # tied parameters are gathered once
                seen[id(value)] = (value.full_tensor() if isinstance(value, DTensor) else value).detach().cpu()
            out[clean_name(name)] = seen[id(value)]
        return out
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    config = FullStateDictConfig(offload_to_cpu=True, rank0_only=False)
    with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, config):
        return {clean_name(k): v.detach().cpu() if isinstance(v, torch.Tensor) else v
                for k, v in model.state_dict().items()}


def clean_name(name: str) -> str:
    """A parameter or buffer name without the wrappers' own module names."""
    for prefix in _PREFIXES:
        name = name.replace(prefix, "")
    return name


__all__ = ["fsdp_requested", "deepspeed_requested", "cpu_plugins", "enable", "cpu_fsdp_plugin", "enable_fsdp",
           "enable_deepspeed", "reset_cpu_state", "check_precision", "full", "prepare", "Skeleton", "tie_groups",
           "retie", "full_state_dict", "clean_name"]
