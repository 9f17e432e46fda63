"""Every figure the toolkit draws: comparison panels with a zoomed detail, power spectra and
training curves, written as PNG with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from metrics import score_labels
from model import MULTI_FRAME
from utils import UserError, atomic_write
from validation import validation_of


def new_figure(*args, **kwargs):
    """A matplotlib figure and axes from the headless backend (`plt.subplots` arguments)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write a figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_write(path, "figure") as tmp:
            fig.tight_layout()
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return Path(path)


def zoom_box(reference: Tensor, size: int) -> tuple[int, int]:
    """Top-left of the size x size window with the most detail (gradient energy) of an image."""
    gray = reference.mean(0, keepdim=True)
    energy = (gray[:, 1:, :-1] - gray[:, :-1, :-1]).abs() + (gray[:, :-1, 1:] - gray[:, :-1, :-1]).abs()
    pooled = torch.nn.functional.avg_pool2d(energy.unsqueeze(0), size, stride=max(1, size // 4))[0, 0]
    index = int(pooled.flatten().argmax())
    stride = max(1, size // 4)
    return (index // pooled.shape[1]) * stride, (index % pooled.shape[1]) * stride


def save_panel(path: Path, title: str, panels: list[tuple[str, Tensor]]) -> Path:
    """A PNG with each image (top) and the same zoomed region of each, boxed (bottom)."""
    from matplotlib.patches import Rectangle

    height, width = panels[-1][1].shape[-2:]
    size = max(8, min(height, width) // 4)
    top, left = zoom_box(panels[-1][1], size)
    fig, axes = new_figure(2, len(panels), figsize=(3.6 * len(panels), 7.4), squeeze=False)
    for column, (label, img) in enumerate(panels):
        array = img.clamp(0, 1).permute(1, 2, 0).numpy()
        gray = array.shape[-1] == 1
        shown = array[..., 0] if gray else array
        options = {"cmap": "gray", "vmin": 0, "vmax": 1} if gray else {}
        axes[0, column].imshow(shown, **options)
        axes[0, column].add_patch(
            Rectangle((left, top), size, size, fill=False, edgecolor="red", linewidth=1.5)
        )
        axes[0, column].set_title(label, fontsize=10)
        axes[1, column].imshow(
            shown[top : top + size, left : left + size], interpolation="nearest", **options
        )
        for ax in axes[:, column]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def panel_images(
    lr: Tensor, bic: Tensor, sr: Tensor, hr: Tensor | None, row: dict | None, name: str
) -> list[tuple[str, Tensor]]:
    """The labelled images of a comparison panel: LR (nearest), bicubic, model, GT."""
    scale = sr.shape[-1] // lr.shape[-1]
    nearest = lr.repeat_interleave(scale, -2).repeat_interleave(scale, -1)

    def label(what: str, key: str) -> str:
        return f"{what}\n{row[key + '_psnr']:.2f} dB / {row[key + '_ssim']:.4f}" if row else what

    panels = [
        (f"LR x{scale} (nearest)", nearest),
        (label("bicubic", "bicubic"), bic),
        (label(name, "model"), sr),
    ]
    if hr is not None:
        panels.append(("ground truth", hr))
    return panels


def save_spectra_plot(path: Path, spectra: dict[str, list[Tensor]], title: str, model_name: str) -> Path:
    """Mean radially averaged power spectra (log scale) of SR, bicubic and HR, as a PNG."""
    fig, ax = new_figure(figsize=(7, 4.5))
    for who, label, style in (("HR", "HR", "-"), ("model", model_name, "-"), ("bicubic", "bicubic", "--")):
        mean = torch.stack(spectra[who]).mean(0)
        frequency = (torch.arange(len(mean), dtype=torch.float64) + 0.5) * 0.5 / len(mean)
        ax.semilogy(frequency.numpy(), mean.clamp(min=1e-12).numpy(), style, label=label)
    for edge in (1 / 6, 1 / 3):
        ax.axvline(edge, color="gray", linewidth=0.8, linestyle=":")
    ax.set(
        xlabel="normalised frequency (cycles/pixel); bands: low | mid | high",
        ylabel="mean power (luma)",
        title=f"radially averaged power spectra, {title}",
    )
    ax.legend()
    return save_figure(fig, path)


def plot_history(info: dict, path: Path) -> None:
    """Training loss and validation PSNR (model vs bicubic) against epoch, as a PNG."""
    history = info["history"]
    if not history:
        raise UserError("the checkpoint has no history to plot yet")
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_psnr) = new_figure(1, 2, figsize=(11, 4))
    ax_loss.plot(epochs, [row["train_loss"] for row in history], marker=".")
    ax_loss.set(
        xlabel="epoch",
        ylabel=f"training loss ({info['args'].get('loss')})",
        yscale="log" if all(row["train_loss"] > 0 for row in history) else "linear",  # NLL < 0
        title="training loss",
    )
    validated = [row for row in history if validation_of(row)[0] is not None]
    ax_psnr.plot(
        [r["epoch"] for r in validated],
        [validation_of(r)[0] for r in validated],
        marker=".",
        label=info["model"],
    )
    multi = info["kind"] == MULTI_FRAME
    metric, _, baseline_label = score_labels(multi)
    baseline = [validation_of(row)[2] for row in history]
    ax_psnr.plot(epochs, baseline, linestyle="--", label=baseline_label)
    ax_psnr.set(
        xlabel="epoch",
        ylabel=f"{metric} (dB, {'PROBA-V challenge' if multi else 'Y, shave = scale'})",
        title=f"validation on {info['args'].get('val_data')} x{info['scale']}",
    )
    ax_psnr.legend()
    save_figure(fig, path)
