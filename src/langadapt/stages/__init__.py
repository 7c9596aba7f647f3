"""The training stages as short recipes over ``langadapt.train``: align (paper 4.2.1), pretrain
(4.2.2) and sft (3.2). Each is ``run(ctx) -> dict`` registered in ``langadapt.run``."""

from langadapt.distributed import is_main_process, wait_for_everyone

__all__ = ["is_main_process", "wait_for_everyone"]
