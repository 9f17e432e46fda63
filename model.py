"""Every network of the toolkit, and the registry that builds them by name.

Every model maps an LR batch (B, C, H, W) in [0, 1] to the SR batch (B, C, sH, sW).
Models that work on a pre-upsampled image do the MATLAB-compatible bicubic upscaling
inside (`data.imresize`), so callers treat all models alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from data import imresize, rgb_to_ycbcr, to_channels, ycbcr_to_rgb
from utils import CheckpointError, ImageError


class SRCNN(nn.Module):
    """SRCNN (Dong et al. 2014) as the assignment specifies it: 9-1-5, 64/32 filters, RGB.

    Input: the LR image, upscaled inside by bicubic. `f2` = 5 or 3 gives the paper's
    9-5-5 / 9-3-5 variants; `in_channels=1` the paper's Y-channel model.
    """

    def __init__(
        self,
        scale: int = 3,
        in_channels: int = 3,
        f1: int = 9,
        f2: int = 1,
        f3: int = 5,
        n1: int = 64,
        n2: int = 32,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.features = nn.Conv2d(in_channels, n1, f1, padding=f1 // 2)
        self.mapping = nn.Conv2d(n1, n2, f2, padding=f2 // 2)
        self.reconstruction = nn.Conv2d(n2, in_channels, f3, padding=f3 // 2)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, lr: Tensor) -> Tensor:
        upscaled = imresize(lr, self.scale)
        x = self.relu(self.features(upscaled))
        x = self.relu(self.mapping(x))
        return self.reconstruction(x)


# name -> (class, one-line description); the registry is a plain dict.
MODELS: dict[str, tuple[type[nn.Module], str]] = {
    "srcnn": (SRCNN, "SRCNN 9-1-5 on the bicubic-upscaled image (Dong et al. 2014), as the assignment"),
}


def build_model(name: str, scale: int = 3, **options: Any) -> nn.Module:
    """Build a registered model; raises KeyError for unknown names, TypeError for bad options."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name][0](scale=scale, **options)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_zoo(scale: int = 3) -> list[tuple[str, int, str]]:
    """(name, parameters at default options, description) for every registered model."""
    return [(name, count_parameters(build_model(name, scale)), text) for name, (_, text) in MODELS.items()]


def load_model(checkpoint: dict) -> nn.Module:
    """Rebuild a checkpoint's model with its weights, in eval mode."""
    spec = checkpoint["model"]
    try:
        model = build_model(spec["name"], scale=spec["scale"], **spec["options"])
        model.load_state_dict(checkpoint["state_dict"])
    except (KeyError, TypeError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"cannot rebuild model {spec.get('name')!r} from the checkpoint ({reason})"
        ) from None
    return model.eval()


def tiled_forward(
    model: nn.Module,
    lr: Tensor,
    scale: int,
    tile: int = 256,
    overlap: int = 16,
    device: torch.device | str | None = None,
) -> Tensor:
    """Run `model` on (B, C, H, W) `lr` in overlapping tiles of `tile` LR pixels; output on lr's device.

    Each tile is extended by `overlap` pixels on every side that has a neighbour, and only
    its centre is kept, so seams are invisible: where the model's receptive field fits in
    the overlap, the result equals the whole-image output. Memory for activations stays
    bounded by the tile size whatever the image size. `device` runs the tiles elsewhere.
    """
    device = torch.device(device) if device is not None else lr.device
    height, width = lr.shape[-2:]
    if height <= tile and width <= tile:
        return model(lr.to(device)).to(lr.device)
    out = None
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            t0, l0 = max(top - overlap, 0), max(left - overlap, 0)
            b0, r0 = min(bottom + overlap, height), min(right + overlap, width)
            sr = model(lr[..., t0:b0, l0:r0].to(device)).to(lr.device)
            if out is None:
                out = lr.new_empty(*sr.shape[:-2], height * scale, width * scale, dtype=sr.dtype)
            y, x = (top - t0) * scale, (left - l0) * scale
            out[..., top * scale : bottom * scale, left * scale : right * scale] = sr[
                ..., y : y + (bottom - top) * scale, x : x + (right - left) * scale
            ]
    return out


@dataclass
class Upscaler:
    """A model with what is needed to apply it to any image: tiles, device, channel handling."""

    model: nn.Module
    name: str
    scale: int
    channels: int
    device: torch.device
    tile: int
    overlap: int

    @classmethod
    def from_checkpoint(
        cls, checkpoint: dict, device: torch.device, tile: int = 256, overlap: int = 16
    ) -> Upscaler:
        """The checkpoint's model on `device`, ready for inference."""
        model = load_model(checkpoint).to(device, memory_format=torch.channels_last)
        spec = checkpoint["model"]
        return cls(
            model, spec["name"], spec["scale"], spec["options"].get("in_channels", 3), device, tile, overlap
        )

    @torch.inference_mode()
    def __call__(self, lr: Tensor) -> Tensor:
        """SR of a (C, H, W) image in [0, 1]; keeps C (gray in, gray out), clamped to [0, 1]."""
        have = lr.shape[0]
        if have == self.channels:
            return self._run(lr)
        if self.channels == 3 and have == 1:  # RGB model on gray: replicate, then back to gray
            return to_channels(self._run(to_channels(lr, 3)), 1).clamp(0, 1)
        if self.channels == 1 and have == 3:  # Y model on RGB: Y by the model, Cb/Cr by bicubic
            ycbcr = rgb_to_ycbcr(lr)
            y = self._run(ycbcr[:1])
            cbcr = imresize(ycbcr[1:], size=tuple(y.shape[-2:]))
            return ycbcr_to_rgb(torch.cat([y, cbcr])).clamp(0, 1)
        raise ImageError(f"the model takes {self.channels}-channel images, this one has {have}")

    def _run(self, lr: Tensor) -> Tensor:
        sr = tiled_forward(self.model, lr.unsqueeze(0), self.scale, self.tile, self.overlap, self.device)
        return sr[0].float().clamp(0, 1)
