"""Every network of the toolkit, and the registry that builds them by name.

Every model maps an LR batch (B, C, H, W) in [0, 1] to the SR batch (B, C, sH, sW).
Models that work on a pre-upsampled image do the MATLAB-compatible bicubic upscaling
inside (`imresize.imresize`), so callers treat all models alike.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from images import BT601_LUMA
from imresize import upscale
from piunet import PIUnet
from utils import CheckpointError, UserError, first_line


class SRCNN(nn.Module):
    """SRCNN (Dong et al. 2014) in its classic training set-up: 9-1-5, 64/32 filters, RGB.

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
        upscaled = upscale(lr, self.scale, "bicubic")
        x = self.relu(self.features(upscaled))
        x = self.relu(self.mapping(x))
        return self.reconstruction(x)


def _normal_init(module: nn.Module, std: float) -> None:
    """Every conv weight ~ N(0, std), biases 0 (std 0.05: the plain CNNs' small-init option)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)


class PlainCNN(nn.Module):
    """Plain CNN baselines: `depth` 3x3 conv blocks on the upscaled image.

    `global_residual` adds the upscaled image to the output (the `residual` model, the
    global residual learning of VDSR, Kim et al. 2016); `upsample` is "bilinear" or
    "bicubic"; `init_std` draws every conv weight from N(0, init_std) (default: PyTorch's).
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
        upscaled = upscale(lr, self.scale, self.upsample)
        out = self.body(upscaled)
        return out + upscaled if self.global_residual else out


def basic(scale: int = 3, **options: Any) -> PlainCNN:
    """The basic plain CNN: 10 conv blocks on the bilinear-upscaled image."""
    return PlainCNN(scale, **options)


def residual(scale: int = 3, **options: Any) -> PlainCNN:
    """The basic model plus the upscaled image (global residual)."""
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
    `band_by_band` runs every band of the input through one single-band network (the bands
    folded into the batch): for multispectral data, in_channels times a gray network's cost.
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
        band_by_band: bool = False,
    ) -> None:
        super().__init__()
        if preset not in EDSR_PRESETS:
            raise ValueError(f"unknown EDSR preset {preset!r}; use one of {list(EDSR_PRESETS)}")
        config = EDSR_PRESETS[preset]
        blocks = config["blocks"] if blocks is None else blocks
        features = config["features"] if features is None else features
        res_scale = config["res_scale"] if res_scale is None else res_scale
        self.scale, self.image_skip, self.band_by_band = scale, image_skip, band_by_band
        bands = 1 if band_by_band else in_channels
        self.head = nn.Conv2d(bands, features, 3, padding=1)
        self.body = nn.Sequential(
            *[ResBlock(features, res_scale) for _ in range(blocks)],
            nn.Conv2d(features, features, 3, padding=1),
        )
        self.upsample = _pixel_shuffle_upsampler(features, scale)
        self.tail = nn.Conv2d(features, bands, 3, padding=1)

    def forward(self, lr: Tensor) -> Tensor:
        if self.band_by_band:
            batch, bands, height, width = lr.shape
            sr = self._forward(lr.reshape(batch * bands, 1, height, width))
            return sr.reshape(batch, bands, *sr.shape[-2:])
        return self._forward(lr)

    def _forward(self, lr: Tensor) -> Tensor:
        x = self.head(lr)
        x = x + self.body(x)
        out = self.tail(self.upsample(x))
        return out + upscale(lr, self.scale, "bicubic") if self.image_skip else out


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
        upscaled = upscale(lr, self.scale, "bicubic")
        height, width = upscaled.shape[-2:]
        multiple = 2**self.levels
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        x = F.pad(upscaled, (0, pad_w, 0, pad_h), mode="replicate")  # no branch: exports with any size
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
# The two kinds of model, as checkpoints record them: one LR image in, or a burst of frames.
SINGLE_IMAGE, MULTI_FRAME = "single-image", "multi-frame"
KINDS = (SINGLE_IMAGE, MULTI_FRAME)


def model_kind(model: nn.Module | type | str) -> str:
    """SINGLE_IMAGE or MULTI_FRAME, for a network, its class or its registry name."""
    if isinstance(model, str):
        model = MODELS[model][0]
    return MULTI_FRAME if getattr(model, "multi_frame", False) else SINGLE_IMAGE


MODELS: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "srcnn": (SRCNN, "SRCNN 9-1-5 on the bicubic-upscaled image (Dong et al. 2014), RGB"),
    "basic": (basic, "plain CNN: 10 conv blocks on the bilinear-upscaled image"),
    "residual": (residual, "the basic model plus a global residual (as VDSR, Kim et al. 2016)"),
    "vdsr": (vdsr, "VDSR: 20 conv layers, global residual on bicubic (Kim et al. 2016)"),
    "edsr": (EDSR, "EDSR: residual blocks on LR, pixel shuffle (Lim et al. 2017); presets tiny..paper"),
    "unet": (UNet, "U-Net (Ronneberger et al. 2015) feature extractor on bicubic, residual output"),
    "piunet": (
        PIUnet,
        "PIUnet: multi-frame fusion with uncertainty, permutation-invariant (Valsesia & Magli 2022)",
    ),
}


def parse_model_options(items: list[str]) -> dict[str, Any]:
    """['f2=5', 'in_channels=1'] -> {'f2': 5, 'in_channels': 1} (values parsed as JSON if they parse)."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--model-option {item!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def build_model(name: str, scale: int = 3, **options: Any) -> nn.Module:
    """Build a registered model; raises KeyError for unknown names, TypeError for bad options."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name][0](scale=scale, **options)


def check_forward(model: nn.Module, scale: int, in_channels: int = 3) -> None:
    """Run a small input through a newly built network: options that build a network which
    cannot run, or that maps to the wrong size, raise ValueError here, before training starts."""
    multi_frame = model_kind(model) == MULTI_FRAME
    if not multi_frame and (not isinstance(in_channels, int) or in_channels < 1):
        raise ValueError(f"in_channels must be a whole number of at least 1, got {in_channels!r}")
    lr = torch.rand(1, 3, 12, 12) if multi_frame else torch.rand(1, in_channels, 12, 12)
    expected = (1, 1 if multi_frame else in_channels, 12 * scale, 12 * scale)
    state = model.training
    try:
        with torch.no_grad():
            out = model.eval()(lr)
    except RuntimeError as err:
        raise ValueError(first_line(err)) from None
    finally:
        model.train(state)
    out = out[0] if multi_frame else out
    if tuple(out.shape) != expected:
        raise ValueError(f"it maps a 12x12 input to {tuple(out.shape)}, not {expected}")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def multiply_adds_per_pixel(model: nn.Module, scale: int, in_channels: int = 3, side: int = 24) -> float:
    """Multiply-adds of one forward pass per output (HR) pixel: convolutions and matrix
    products, as torch's flop counter sees them on a side x side LR input (PIUnet: 9 frames)."""
    from torch.utils.flop_counter import FlopCounterMode

    shape = (1, 9, side, side) if model_kind(model) == MULTI_FRAME else (1, in_channels, side, side)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.rand(shape))
    return counter.get_total_flops() / 2 / (side * scale) ** 2


def model_zoo(scale: int = 3) -> list[tuple[str, int, str]]:
    """(name, parameters at default options, description) for every registered model."""
    return [(name, count_parameters(build_model(name, scale)), text) for name, (_, text) in MODELS.items()]


# The tensors of a model's input and output convolutions, with the axis that counts its bands:
# what `adapt_bands` changes to start a multispectral model from a photograph model's weights.
BAND_AXES = {"head.weight": 1, "tail.weight": 0, "tail.bias": 0}


def adapt_bands(name: str, weight: Tensor, shape: torch.Size) -> Tensor | None:
    """A photograph (RGB) model's input or output tensor made to fit `shape`, another number of
    bands, or None when `name` is not one of BAND_AXES or more than the band count differs.

    Input: each band's kernel is the sum of the RGB kernels over the band count, so the model
    first sees the mean band as a gray photograph; output: each band's kernel is the BT.601 luma
    of the RGB kernels, the gray output of that photograph. Training then tells the bands apart."""
    axis = BAND_AXES.get(name)
    if axis is None or weight.dim() != len(shape) or weight.shape[axis] != 3:
        return None
    if any(a != b for i, (a, b) in enumerate(zip(weight.shape, shape)) if i != axis):
        return None
    bands = shape[axis]
    if axis == 1:
        mean = weight.sum(1, keepdim=True) / bands
    else:
        luma = torch.tensor(BT601_LUMA, dtype=weight.dtype).view(3, *[1] * (weight.dim() - 1))
        mean = (weight * luma).sum(0, keepdim=True)
    return mean.expand(shape).clone()


def deepen(weights: dict[str, Tensor], own: dict[str, Tensor]) -> dict[str, Tensor]:
    """A trained residual body's weights for a deeper body of the same width (EDSR's `body`):
    its closing convolution moved to the new last index and each new block's second convolution
    zero, so that every new block starts as the identity and the deeper network as the trained
    one; {} when `own` is not a deeper body of the same kind."""
    source, target = _body_end(weights), _body_end(own)
    if source is None or target is None or target <= source:
        return {}
    end = {f"body.{target}.{p}": weights[f"body.{source}.{p}"] for p in ("weight", "bias")}
    if any(end[key].shape != own[key].shape for key in end):
        return {}
    zero = {f"body.{k}.conv2.{p}": torch.zeros_like(own[f"body.{k}.conv2.{p}"])
            for k in range(source, target) for p in ("weight", "bias")}  # fmt: skip
    return {**end, **zero}


def _body_end(weights: dict[str, Tensor]) -> int | None:
    """The index of a residual body's closing convolution (`body.N.weight`), or None."""
    ends = [int(match.group(1)) for key in weights if (match := re.fullmatch(r"body\.(\d+)\.weight", key))]
    return ends[0] if len(ends) == 1 else None


def checkpoint_weights(checkpoint: dict) -> dict[str, Tensor]:
    """A checkpoint's weights to use: their moving average (train.py --ema) when the run kept one,
    since that is what was validated; else the trained weights."""
    return checkpoint.get("ema_state_dict") or checkpoint.get("state_dict")


SCALES = range(2, 9)  # the SR factors a model of this toolkit may have


def load_model(checkpoint: dict) -> nn.Module:
    """Rebuild a checkpoint's model with its weights (their moving average if kept), in eval mode.
    The checkpoint is one `checkpoint.load_checkpoint` checked against its schema."""
    spec = checkpoint["model"]
    name, scale, options = spec["name"], spec["scale"], spec.get("options", {})
    weights = checkpoint_weights(checkpoint)
    try:
        model = build_model(name, scale=scale, **options)
        model.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"cannot rebuild model {name!r} from the checkpoint ({first_line(err)})"
        ) from None
    return model.eval()
