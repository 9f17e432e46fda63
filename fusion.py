"""Multi-frame checkpoints applied to scenes: a burst fused into one SR image and its
uncertainty, its cPSNR/cSSIM against the baseline (and the challenge's score for a real
PROBA-V scene), and the images written for a scene.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from bursts import Burst
from images import save_image
from metrics import scene_scores, uncertainty_rank_correlation


@torch.inference_mode()
def fuse(model: nn.Module, burst: Burst, device: torch.device) -> tuple[Tensor, Tensor]:
    """The fused SR image (1, sH, sW) in [0, 1] and its log-scale map of a burst (frames as weighted), on
    the CPU; no tiles: PIUnet's squeeze-excitation and registration pool over the whole scene."""
    mu, log_scale = model(burst.frames[None].to(device), burst.frame_weights()[None].to(device))
    return mu[0].float().cpu().clamp(0, 1), log_scale[0].float().cpu()


def scene_row(burst: Burst, sr: Tensor, log_scale: Tensor, scale: int, hr: Tensor, mask: Tensor) -> dict:
    """cPSNR/cSSIM of the fused image and of the baseline for one scene, and the rank correlation
    of the predicted uncertainty with the actual error; for a real scene also the challenge's
    norm (its norm.csv entry, else the baseline's cPSNR) and score (norm / cPSNR)."""
    model_cpsnr, model_cssim = scene_scores(sr, hr, mask)
    bicubic_cpsnr, bicubic_cssim = scene_scores(burst.baseline_image(scale), hr, mask)
    row = {"name": burst.name, "model_cpsnr": model_cpsnr, "model_cssim": model_cssim,
           "bicubic_cpsnr": bicubic_cpsnr, "bicubic_cssim": bicubic_cssim,
           "uncertainty_rank_correlation": uncertainty_rank_correlation(sr, log_scale, hr, mask)}  # fmt: skip
    if burst.baseline is not None:
        norm = burst.norm if burst.norm is not None else bicubic_cpsnr
        row.update(norm=norm, score=norm / model_cpsnr)
    return row


def scene_paths(folder: Path, stem: str, name: str, scale: int) -> dict[str, Path]:
    """Where a scene's SR image, uncertainty map and baseline go (keys as `write_scene`'s outputs)."""
    return {
        "sr": folder / f"{stem}_{name}_x{scale}.png",
        "log_scale": folder / f"{stem}_{name}_x{scale}_uncertainty.png",
        "baseline": folder / f"{stem}_bicubic_x{scale}.png",
    }


def write_scene(paths: dict[str, Path], outputs: dict[str, Tensor], bits: int) -> str:
    """Write a scene's SR image, its uncertainty map and its baseline to `scene_paths` (16-bit
    like PROBA-V's PNGs when the input was); the paths and the uncertainty's range as one line."""
    sr_path, sigma_path, bic_path = paths["sr"], paths["log_scale"], paths["baseline"]
    uncertainty = torch.exp(outputs["log_scale"])  # the Laplace scale b of each pixel
    top = torch.quantile(uncertainty.flatten()[:: max(1, uncertainty.numel() // 1_000_000)], 0.99)
    save_image(outputs["sr"], sr_path, bits=bits)
    save_image((uncertainty / top.clamp(min=1e-12)).clamp(0, 1), sigma_path)
    save_image(outputs["baseline"], bic_path, bits=bits)
    return (
        f"wrote {sr_path}, {bic_path} and {sigma_path} (uncertainty: Laplace scale, "
        f"{uncertainty.min():.4g}..{uncertainty.max():.4g}, white at its 99th percentile {top:.4g})"
    )
