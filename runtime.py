"""Where a training run executes: device, mixed precision and the torchrun process group."""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Runtime:
    """Device, precision and process-group facts of this run."""

    device: torch.device
    rank: int = 0
    world: int = 1
    amp_dtype: torch.dtype | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def log(self, text: str) -> None:
        """Print on the main process only."""
        if self.main:
            print(text)


def process_rank() -> int:
    """This process's rank under `torchrun` (0 when launched alone)."""
    return int(os.environ.get("RANK", "0"))


def setup_runtime(config: dict) -> Runtime:
    """Pick the device and precision; join the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = process_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    if config["cuda"]:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if config["cuda"] else "gloo")
    amp = config["amp"] if config["amp"] is not None else config["cuda"]
    amp_dtype = None
    if amp:
        amp_dtype = (
            torch.bfloat16 if (not config["cuda"] or torch.cuda.is_bf16_supported()) else torch.float16
        )
    return Runtime(device, rank, world, amp_dtype)


def autocast(runtime: Runtime):
    """Autocast context for the run's mixed precision, or nothing."""
    if runtime.amp_dtype is None:
        return nullcontext()
    return torch.autocast(runtime.device.type, dtype=runtime.amp_dtype)


def agreed(flag: bool, runtime: Runtime) -> bool:
    """True on every rank when it is true on any (one rank's signal stops them all together)."""
    if runtime.world == 1:
        return flag
    value = torch.tensor([float(flag)], device=runtime.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
