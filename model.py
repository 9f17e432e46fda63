"""Every network of the toolkit, and the registry that builds them by name.

Every model maps an LR batch (B, C, H, W) in [0, 1] to the SR batch (B, C, sH, sW).
Models that work on a pre-upsampled image do the MATLAB-compatible bicubic upscaling
inside (`data.imresize`), so callers treat all models alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
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


def _upscale(lr: Tensor, scale: int, method: str) -> Tensor:
    """MATLAB-compatible bicubic or bilinear upscaling by an integer factor."""
    return imresize(lr, size=(lr.shape[-2] * scale, lr.shape[-1] * scale), method=method)


def _normal_init(module: nn.Module, std: float) -> None:
    """The exercise report's initialisation: every conv weight ~ N(0, std), biases 0."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)


class PlainCNN(nn.Module):
    """The exercise report's networks: `depth` 3x3 conv blocks on the upscaled image.

    `global_residual` adds the upscaled image to the output (the report's `residual`
    model); `upsample` is "bilinear" as in the report, or "bicubic"; `init_std` = 0.05
    gives the report's initialisation (default: PyTorch's).
    """

    def __init__(
        self,
        scale: int = 3,
        in_channels: int = 3,
        depth: int = 10,
        features: int = 64,
        upsample: str = "bilinear",
        global_residual: bool = False,
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        self.scale, self.upsample, self.global_residual = scale, upsample, global_residual
        layers: list[nn.Module] = [nn.Conv2d(in_channels, features, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(features, in_channels, 3, padding=1))
        self.body = nn.Sequential(*layers)
        if init_std is not None:
            _normal_init(self, init_std)

    def forward(self, lr: Tensor) -> Tensor:
        upscaled = _upscale(lr, self.scale, self.upsample)
        out = self.body(upscaled)
        return out + upscaled if self.global_residual else out


def basic(scale: int = 3, **options: Any) -> PlainCNN:
    """The report's basic model: 10 conv blocks on the bilinear-upscaled image."""
    return PlainCNN(scale, **options)


def residual(scale: int = 3, **options: Any) -> PlainCNN:
    """The report's residual model: the basic model plus the upscaled image (global residual)."""
    return PlainCNN(scale, global_residual=True, **options)


def vdsr(scale: int = 3, in_channels: int = 3, depth: int = 20, features: int = 64) -> PlainCNN:
    """VDSR (Kim et al. 2016): 20 3x3 conv layers of 64 channels on bicubic, global residual."""
    return PlainCNN(scale, in_channels, depth, features, upsample="bicubic", global_residual=True)


class ResBlock(nn.Module):
    """EDSR residual block: conv-ReLU-conv, scaled, plus the input; no BatchNorm."""

    def __init__(self, features: int, res_scale: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


def _pixel_shuffle_upsampler(features: int, scale: int) -> nn.Sequential:
    """Sub-pixel upsampling: x2 and x3 in one stage, x4 as two x2 stages."""
    stages = {2: [2], 3: [3], 4: [2, 2]}.get(scale)
    if stages is None:
        raise ValueError(f"pixel-shuffle upsampling supports x2, x3, x4, not x{scale}")
    layers: list[nn.Module] = []
    for factor in stages:
        layers += [nn.Conv2d(features, features * factor**2, 3, padding=1), nn.PixelShuffle(factor)]
    return nn.Sequential(*layers)


EDSR_PRESETS = {
    "tiny": {"blocks": 4, "features": 32, "res_scale": 1.0},
    "small": {"blocks": 8, "features": 48, "res_scale": 1.0},
    "baseline": {"blocks": 16, "features": 64, "res_scale": 1.0},
    "paper": {"blocks": 32, "features": 256, "res_scale": 0.1},
}


class EDSR(nn.Module):
    """EDSR (Lim et al. 2017): residual blocks without BatchNorm on the LR grid, residual
    scaling, long skip over the body, pixel-shuffle upsampling.

    Presets: tiny, small (trains on a CPU in hours), baseline (16 blocks, 64 features, the
    paper's EDSR-baseline), paper (32 blocks, 256 features, res_scale 0.1). `image_skip`
    adds the bicubic-upscaled input to the output (in place of the paper's RGB mean shift:
    the network learns only the residual, which speeds up training on small budgets).
    """

    def __init__(
        self,
        scale: int = 3,
        in_channels: int = 3,
        preset: str = "baseline",
        blocks: int | None = None,
        features: int | None = None,
        res_scale: float | None = None,
        image_skip: bool = True,
    ) -> None:
        super().__init__()
        if preset not in EDSR_PRESETS:
            raise ValueError(f"unknown EDSR preset {preset!r}; use one of {list(EDSR_PRESETS)}")
        config = EDSR_PRESETS[preset]
        blocks = config["blocks"] if blocks is None else blocks
        features = config["features"] if features is None else features
        res_scale = config["res_scale"] if res_scale is None else res_scale
        self.scale, self.image_skip = scale, image_skip
        self.head = nn.Conv2d(in_channels, features, 3, padding=1)
        self.body = nn.Sequential(
            *[ResBlock(features, res_scale) for _ in range(blocks)],
            nn.Conv2d(features, features, 3, padding=1),
        )
        self.upsample = _pixel_shuffle_upsampler(features, scale)
        self.tail = nn.Conv2d(features, in_channels, 3, padding=1)

    def forward(self, lr: Tensor) -> Tensor:
        x = self.head(lr)
        x = x + self.body(x)
        out = self.tail(self.upsample(x))
        return out + _upscale(lr, self.scale, "bicubic") if self.image_skip else out


class UNet(nn.Module):
    """U-Net feature extractor on the bicubic-upscaled image with residual output (the DIY
    project): `levels` encoder stages (two 3x3 convs, then 2x2 max-pool), a bottleneck, and
    a decoder that upsamples, concatenates the encoder features and convolves.
    """

    def __init__(self, scale: int = 3, in_channels: int = 3, features: int = 32, levels: int = 2) -> None:
        super().__init__()
        self.scale, self.levels = scale, levels
        widths = [features * 2**i for i in range(levels + 1)]
        self.down = nn.ModuleList()
        channels = in_channels
        for width in widths[:-1]:
            self.down.append(self._block(channels, width))
            channels = width
        self.bottleneck = self._block(channels, widths[-1])
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.up.append(nn.Conv2d(width * 2, width, 1))
            self.merge.append(self._block(width * 2, width))
        self.out = nn.Conv2d(widths[0], in_channels, 1)

    @staticmethod
    def _block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True),
        )  # fmt: skip

    def forward(self, lr: Tensor) -> Tensor:
        upscaled = _upscale(lr, self.scale, "bicubic")
        height, width = upscaled.shape[-2:]
        multiple = 2**self.levels
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        x = F.pad(upscaled, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else upscaled
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            x = up(F.interpolate(x, scale_factor=2.0, mode="nearest"))
            x = merge(torch.cat([x, skip], dim=1))
        return self.out(x)[..., :height, :width] + upscaled


# name -> (class, one-line description); the registry is a plain dict.
MODELS: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "srcnn": (SRCNN, "SRCNN 9-1-5 on the bicubic-upscaled image (Dong et al. 2014), as the assignment"),
    "basic": (basic, "10 conv blocks on the bilinear-upscaled image (the exercise report)"),
    "residual": (residual, "the basic model plus a global residual (the exercise report)"),
    "vdsr": (vdsr, "VDSR: 20 conv layers, global residual on bicubic (Kim et al. 2016)"),
    "edsr": (EDSR, "EDSR: residual blocks on LR, pixel shuffle (Lim et al. 2017); presets tiny..paper"),
    "unet": (UNet, "U-Net feature extractor on bicubic with residual output (the DIY project)"),
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
