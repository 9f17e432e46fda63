"""Where a training run executes: device, mixed precision and the torchrun process group."""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from utils import UserError

if TYPE_CHECKING:
    from config import TrainConfig


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


def parse_device(text: str) -> torch.device:
    """A `--device` value (cpu, cuda, cuda:N, mps), checked against what this machine has."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    known = device is not None and device.type in ("cpu", "cuda", "mps")
    if not known or (device.type != "cuda" and device.index):
        raise UserError(f"--device {text!r}: use cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {text}: CUDA is not available here (no GPU, or a CPU-only torch)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {text}: Apple's MPS is not available here")
    return device


def process_rank() -> int:
    """This process's rank under `torchrun` (0 when launched alone)."""
    return int(os.environ.get("RANK", "0"))


def setup_runtime(config: TrainConfig) -> Runtime:
    """Pick the device and precision; join the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = process_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    chosen = torch.device(config.device) if config.device else None
    if config.cuda:
        device = torch.device("cuda", local_rank if chosen is None or chosen.index is None else chosen.index)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    else:
        device = chosen if chosen is not None and chosen.type == "mps" else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if config.cuda else "gloo")
    amp = config.amp if config.amp is not None else config.cuda
    amp_dtype = None
    if amp:
        amp_dtype = torch.bfloat16 if (not config.cuda or torch.cuda.is_bf16_supported()) else torch.float16
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
