"""Optional TensorBoard logging of a training run (`train.py --tensorboard DIR`): the loss,
validation scores and their baseline, the learning rate, and one validation SR image each
time the run validates. Needs the `tensorboard` package (requirements-tensorboard.txt)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from utils import UserError

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

TENSORBOARD_HINT = "pip install -r requirements-tensorboard.txt"


def check_board(folder: str) -> None:
    """Refuse, before training starts, a folder that cannot hold event files or a missing package."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise UserError(f"--tensorboard {folder}: exists and is not a folder")
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UserError(f"--tensorboard needs the tensorboard package: {TENSORBOARD_HINT}") from None


def open_board(folder: str) -> SummaryWriter:
    """An event writer into `folder` (created; a resumed run appends to the same curves)."""
    from torch.utils.tensorboard import SummaryWriter

    check_board(folder)
    try:
        return SummaryWriter(log_dir=folder)
    except OSError as err:
        raise UserError(f"--tensorboard {folder}: cannot write there ({err.strerror or err})") from None


def log_epoch(writer: SummaryWriter, row: dict, metric: str, example: Tensor | None) -> None:
    """One epoch's history row (loss, learning rate, validation and baseline scores when it
    validated) and, with it, the SR of the first validation image, at the epoch as step."""
    epoch = row["epoch"]
    writer.add_scalar("train/loss", row["train_loss"], epoch)
    writer.add_scalar("train/lr", row["lr"], epoch)
    writer.add_scalar("train/patches_per_s", row["patches_per_s"], epoch)
    for key, value in row.items():
        if value is not None and key not in ("epoch", "train_loss", "lr", "seconds", "patches_per_s"):
            writer.add_scalar(f"validation/{key}", value, epoch)
    if example is not None:
        writer.add_image(f"validation/{metric}_example", example.clamp(0, 1), epoch, dataformats="CHW")
    writer.flush()
