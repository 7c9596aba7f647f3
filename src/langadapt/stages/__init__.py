"""The training stages as short recipes over ``langadapt.train``: align (paper 4.2.1), pretrain
(4.2.2) and sft (3.2). Each is ``run(ctx) -> dict`` registered in ``langadapt.run``."""

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
