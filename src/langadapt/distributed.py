"""Which process this is under ``accelerate launch`` (torchrun), and a barrier between them.

Read from the launcher's environment, so they cost nothing in a single-process run and can be
called before any ``Accelerator`` exists (stage folders, the token store).
"""

import os


def is_main_process() -> bool:
    """True in a single-process run and on rank 0 under ``accelerate launch``: the one that writes."""
    return int(os.environ.get("RANK", "0")) == 0


def wait_for_everyone() -> None:
    """Barrier between the processes of an ``accelerate launch`` run (no-op with one process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        from accelerate import PartialState

        # The same choice as the training core: gloo on a machine without a GPU.
        PartialState(cpu=not torch.cuda.is_available()).wait_for_everyone()
