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

from imresize import upscale
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
        upscaled = _upscale(lr, self.scale, "bicubic")
        x = self.relu(self.features(upscaled))
        x = self.relu(self.mapping(x))
        return self.reconstruction(x)


def _upscale(lr: Tensor, scale: int, method: str) -> Tensor:
    """MATLAB-compatible bicubic or bilinear upscaling by an integer factor."""
    return upscale(lr, scale, method)


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
        upscaled = _upscale(lr, self.scale, self.upsample)
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


# ---------------------------------------------------------------------------------------
# PIUnet: multi-frame SR with uncertainty (Valsesia & Magli, IEEE TGRS 2022)
# ---------------------------------------------------------------------------------------
# Features are kept as (B*T, F, H, W): a 1x3x3 Conv3d over (B, F, T, H, W) is a 3x3 Conv2d
# per frame, and BatchNorm3d's statistics over (B, T, H, W) are BatchNorm2d's over (B*T, H, W).


SDPA_MAX_HEADS = 65_535  # CUDA's fused attention kernels put heads on a grid axis of this size


def chunked_attention(q: Tensor, k: Tensor, v: Tensor, max_heads: int = SDPA_MAX_HEADS) -> Tensor:
    """F.scaled_dot_product_attention of (B, heads, T, D) tensors, in pieces of at most
    `max_heads` heads (PIUnet has pixels x heads of them: a 256x256 scene is 65,536)."""
    if q.shape[1] <= max_heads:
        return F.scaled_dot_product_attention(q, k, v)
    pieces = zip(q.split(max_heads, 1), k.split(max_heads, 1), v.split(max_heads, 1))
    return torch.cat([F.scaled_dot_product_attention(*piece) for piece in pieces], dim=1)


class TemporalAttention(nn.Module):
    """Self-attention across the T frames, separately at every pixel, without positional
    encoding (so it is permutation-equivariant). Same parameters as nn.MultiheadAttention
    (packed q/k/v projection, output projection), computed with F.scaled_dot_product_attention
    on views of the (B, T, H*W, C) tokens, so that a channels_last input is never transposed
    (runs in bf16/fp16 under autocast). `layout="mha"` computes the same function the
    authors' way, through nn.MultiheadAttention's (T, B*H*W, F) path (for bench.py).
    """

    def __init__(self, features: int, heads: int, layout: str = "sdpa") -> None:
        super().__init__()
        if features % heads:
            raise ValueError(f"{features} features do not split into {heads} heads")
        if layout not in ("sdpa", "mha"):
            raise ValueError(f"unknown attention layout {layout!r}; use sdpa or mha")
        self.heads, self.layout = heads, layout
        self.qkv = nn.Linear(features, 3 * features)
        self.out = nn.Linear(features, features)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        """Attend across the frames of (B*T, C, H, W) features; same shape out."""
        if self.layout == "mha":
            return self._forward_mha(x, frames)
        bt, c, h, w = x.shape
        b, per_head = bt // frames, c // self.heads
        # (B*T, C, H, W) -> (B, T, H*W, C): a view when x is channels_last, as train.py keeps it
        tokens = x.permute(0, 2, 3, 1).reshape(b, frames, h * w, c)
        # three products on slices of the packed weight, not one sliced output: slicing the
        # output would make autograd zero-fill a full-size gradient for each of q, k and v
        q, k, v = (
            F.linear(tokens, weight, bias)
            .unflatten(-1, (self.heads, per_head))
            .permute(0, 2, 3, 1, 4)
            .flatten(1, 2)
            for weight, bias in zip(self.qkv.weight.chunk(3), self.qkv.bias.chunk(3))
        )  # each (B, H*W*heads, T, C/heads), a view: 4-D, as SDPA's fused kernels require
        y = chunked_attention(q, k, v).unflatten(1, (h * w, self.heads)).permute(0, 3, 1, 2, 4)
        y = self.out(y.reshape(b, frames, h * w, c))
        return y.view(bt, h, w, c).permute(0, 3, 1, 2)

    def _forward_mha(self, x: Tensor, frames: int) -> Tensor:
        """The authors' layout: (T, B*H*W, C) through nn.MultiheadAttention's function."""
        bt, c, h, w = x.shape
        tokens = x.view(bt // frames, frames, c, h * w).permute(0, 3, 1, 2).reshape(-1, frames, c)
        sequence = tokens.transpose(0, 1)
        y = F.multi_head_attention_forward(
            sequence,
            sequence,
            sequence,
            c,
            self.heads,
            self.qkv.weight,
            self.qkv.bias,
            None,
            None,
            False,
            0.0,
            self.out.weight,
            self.out.bias,
            training=self.training,
            need_weights=False,
        )[0].transpose(0, 1)
        y = y.reshape(bt // frames, h * w, frames, c).permute(0, 2, 3, 1)
        return y.reshape(bt, c, h, w)


def _piunet_norm(kind: str, features: int) -> nn.Module:
    """BatchNorm (the paper) or GroupNorm of 6 groups per frame (small batches)."""
    if kind == "batch":
        return nn.BatchNorm2d(features)
    if kind == "group":
        return nn.GroupNorm(6 if features % 6 == 0 else 1, features)
    raise ValueError(f"unknown norm {kind!r}; use batch or group")


class AttentionStage(nn.Module):
    """conv 3x3 per frame -> norm -> LeakyReLU -> + temporal attention -> norm [-> LeakyReLU]."""

    def __init__(
        self, cin: int, features: int, heads: int, norm: str, activate: bool, layout: str = "sdpa"
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, features, 3, padding=1)
        self.norm_a = _piunet_norm(norm, features)
        self.attention = TemporalAttention(features, heads, layout)
        self.norm_b = _piunet_norm(norm, features)
        self.activate = activate

    def forward(self, x: Tensor, frames: int) -> Tensor:
        x = F.leaky_relu(self.norm_a(self.conv(x)))
        x = self.norm_b(x + self.attention(x, frames))
        return F.leaky_relu(x) if self.activate else x


class TEFA(nn.Module):
    """Temporal-attention feature block: two attention stages, squeeze-excitation gating from
    the global mean over frames and pixels, plus the block input."""

    def __init__(self, features: int, heads: int, se_ratio: int, norm: str, layout: str = "sdpa") -> None:
        super().__init__()
        self.stage0 = AttentionStage(features, features, heads, norm, activate=True, layout=layout)
        self.stage1 = AttentionStage(features, features, heads, norm, activate=False, layout=layout)
        self.se_down = nn.Linear(features, features // se_ratio)
        self.se_up = nn.Linear(features // se_ratio, features)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        h = self.stage1(self.stage0(x, frames), frames)
        bt, c = h.shape[:2]
        pooled = h.view(bt // frames, frames, c, -1).mean(dim=(1, 3))  # (B, F)
        gate = torch.sigmoid(self.se_up(F.leaky_relu(self.se_down(pooled))))
        gate = gate.repeat_interleave(frames, dim=0).view(bt, c, 1, 1)
        return h * gate + x


class TERN(nn.Module):
    """Temporal registration: from spatially pooled features, one 5x5 kernel per frame,
    applied to every feature channel of that frame (implicit sub-pixel registration).
    `identity_init` starts every kernel as the identity (a later variant)."""

    def __init__(
        self, features: int, heads: int, norm: str, identity_init: bool = False, layout: str = "sdpa"
    ) -> None:
        super().__init__()
        self.stage = AttentionStage(features, features, heads, norm, activate=True, layout=layout)
        self.kernels = nn.Linear(features, 25)
        if identity_init:
            nn.init.zeros_(self.kernels.weight)
            with torch.no_grad():
                self.kernels.bias.zero_()[12] = 1.0

    def forward(self, x: Tensor, frames: int) -> Tensor:
        bt, c, h, w = x.shape
        kernels = self.kernels(self.stage(x, frames).mean(dim=(2, 3)))  # (B*T, 25)
        # channels = frames, batch = features: each frame's kernel filters all its features
        filtered = F.conv2d(x.transpose(0, 1), kernels.view(bt, 1, 5, 5), padding=2, groups=bt)
        return filtered.transpose(0, 1)


class PIUnet(nn.Module):
    """PIUnet: T unregistered LR frames (B, T, H, W) of one scene -> (mu, sigma), each
    (B, 1, sH, sW); invariant to the order of the frames. `sigma` is the log-scale of a
    Laplace distribution around `mu` (per-pixel uncertainty).

    Published defaults: 42 features, 16 TEFA blocks, SE ratio 8, 1 head, x3, BatchNorm,
    bilinear upscaling of the frames' mean as the global residual. Later variants:
    `norm="group"`, `tern_identity_init`, `residual_gain` (a learned scalar on the network's
    residual, starting at 0 so that training starts from the upscaled mean), and
    `upsample="bicubic"` (MATLAB-compatible bicubic for the global residual).
    `attention="mha"` runs attention in the authors' nn.MultiheadAttention layout (bench.py).
    `normalize`: each scene is brought to zero mean and unit standard deviation before the
    network and back after it (mu scaled and shifted, log-scale sigma shifted), so that the
    model is equivariant to a scene's brightness and contrast (PROBA-V's 14-bit radiometry
    against natural training images).

    `weights` (B, T), optional in `forward`, weigh the frames in the global residual (default:
    the plain mean); the PROBA-V challenge's baseline is weights 1 on the frames with the
    most clear pixels, 0 elsewhere (bursts.py).
    """

    multi_frame = True

    def __init__(
        self,
        scale: int = 3,
        in_channels: int = 1,
        features: int = 42,
        blocks: int = 16,
        se_ratio: int = 8,
        heads: int = 1,
        norm: str = "batch",
        tern_identity_init: bool = False,
        residual_gain: bool = False,
        upsample: str = "bilinear",
        attention: str = "sdpa",
        normalize: bool = False,
    ) -> None:
        super().__init__()
        if in_channels != 1:
            raise ValueError("PIUnet fuses single-band frames (in_channels=1)")
        self.normalize = normalize
        if upsample not in ("bilinear", "bicubic"):
            raise ValueError(f"upsample must be bilinear or bicubic, not {upsample!r}")
        self.scale, self.upsample = scale, upsample
        self.input = AttentionStage(1, features, heads, norm, activate=False, layout=attention)
        self.blocks = nn.ModuleList([TEFA(features, heads, se_ratio, norm, attention) for _ in range(blocks)])
        self.middle = AttentionStage(features, features, heads, norm, activate=True, layout=attention)
        self.tern = TERN(features, heads, norm, identity_init=tern_identity_init, layout=attention)
        self.mu_head = nn.Conv2d(features, scale * scale, 3, padding=1)
        self.sigma_conv = nn.Conv2d(features, features, 3, padding=1)
        self.sigma_norm = _piunet_norm(norm, features)
        self.sigma_out = nn.Conv2d(features, 1, 1)
        self.gain = nn.Parameter(torch.zeros(())) if residual_gain else None

    def forward(self, frames: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not self.normalize:
            return self._fuse(frames, weights)
        mean = frames.mean(dim=(1, 2, 3), keepdim=True)
        std = frames.std(dim=(1, 2, 3), keepdim=True).clamp(min=1e-4)
        mu, sigma = self._fuse((frames - mean) / std, weights)
        return mu * std + mean, sigma + torch.log(std)

    def _fuse(self, frames: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor]:
        """The network on frames as given: (mu, log-scale sigma)."""
        b, t, h, w = frames.shape
        if weights is None:
            weights = frames.new_ones(b, t)
        weights = (weights / weights.sum(dim=1, keepdim=True)).to(frames.dtype)[:, :, None, None]
        x = self.input(frames.reshape(b * t, 1, h, w), t)
        skip = x
        for block in self.blocks:
            x = block(x, t)
        x = self.middle(x, t) + skip
        x = self.tern(x, t)
        x = x.view(b, t, *x.shape[1:]).mean(dim=1)  # permutation-invariant fusion
        residual = F.pixel_shuffle(self.mu_head(x), self.scale)
        if self.gain is not None:
            residual = residual * self.gain
        if self.upsample == "bicubic":
            upscaled = _upscale((frames * weights).sum(dim=1, keepdim=True), self.scale, "bicubic")
        else:
            upscaled = F.interpolate(frames, scale_factor=self.scale, mode="bilinear", align_corners=False)
            upscaled = (upscaled * weights).sum(dim=1, keepdim=True)
        mu = residual + upscaled
        features = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        sigma = self.sigma_out(F.leaky_relu(self.sigma_norm(self.sigma_conv(features))))
        return mu, sigma


# the authors' module names -> ours (their 1x3x3 Conv3d and kernel-1 Conv1d weights are
# squeezed to Conv2d / Linear; nn.MultiheadAttention's parameters map one to one)
_OFFICIAL_PIUNET_NAMES = [
    (r"^conv_in\.", "input.conv."),
    (r"^tran_in\.", "input.attention."),
    (r"^norm00\.", "input.norm_a."),
    (r"^norm0\.", "input.norm_b."),
    (r"^res\.(\d+)\.conv0\.", r"blocks.\1.stage0.conv."),
    (r"^res\.(\d+)\.norm00\.", r"blocks.\1.stage0.norm_a."),
    (r"^res\.(\d+)\.tran0\.", r"blocks.\1.stage0.attention."),
    (r"^res\.(\d+)\.norm0\.", r"blocks.\1.stage0.norm_b."),
    (r"^res\.(\d+)\.conv1\.", r"blocks.\1.stage1.conv."),
    (r"^res\.(\d+)\.norm11\.", r"blocks.\1.stage1.norm_a."),
    (r"^res\.(\d+)\.tran1\.", r"blocks.\1.stage1.attention."),
    (r"^res\.(\d+)\.norm1\.", r"blocks.\1.stage1.norm_b."),
    (r"^res\.(\d+)\.lin0\.", r"blocks.\1.se_down."),
    (r"^res\.(\d+)\.lin1\.", r"blocks.\1.se_up."),
    (r"^conv_mid\.", "middle.conv."),
    (r"^tran_mid\.", "middle.attention."),
    (r"^norm11\.", "middle.norm_a."),
    (r"^norm1\.", "middle.norm_b."),
    (r"^regnet\.conv0\.", "tern.stage.conv."),
    (r"^regnet\.norm00\.", "tern.stage.norm_a."),
    (r"^regnet\.tran0\.", "tern.stage.attention."),
    (r"^regnet\.norm0\.", "tern.stage.norm_b."),
    (r"^regnet\.conv1\.", "tern.kernels."),
    (r"^conv_d2s_mu\.", "mu_head."),
    (r"^conv_d2s_sigma\.", "sigma_conv."),
    (r"^norm_sigma\.", "sigma_norm."),
    (r"^conv_out_sigma\.", "sigma_out."),
]
_OFFICIAL_ATTENTION_NAMES = {"in_proj_weight": "qkv.weight", "in_proj_bias": "qkv.bias",
                             "out_proj.weight": "out.weight", "out_proj.bias": "out.bias"}  # fmt: skip


def convert_official_piunet(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The authors' PIUnet state_dict (their names and layout) -> this PIUnet's state_dict."""
    converted = {}
    for name, value in state_dict.items():
        new = name
        for pattern, replacement in _OFFICIAL_PIUNET_NAMES:
            new, hits = re.subn(pattern, replacement, name)
            if hits:
                break
        else:
            raise ValueError(f"unexpected parameter {name!r} in the authors' PIUnet state_dict")
        for theirs, ours in _OFFICIAL_ATTENTION_NAMES.items():
            if new.endswith(".attention." + theirs):
                new = new[: -len(theirs)] + ours
        if value.dim() == 5:  # Conv3d (out, in, 1, 3, 3) -> Conv2d (out, in, 3, 3)
            value = value.squeeze(2)
        elif new.startswith("tern.kernels.weight"):  # Conv1d (25, F, 1) -> Linear (25, F)
            value = value.squeeze(-1)
        converted[new] = value
    return converted


def piunet_from_official(state_dict: dict[str, Tensor]) -> PIUnet:
    """A PIUnet with the authors' weights, its size read from them."""
    converted = convert_official_piunet(state_dict)
    features = converted["input.conv.weight"].shape[0]
    blocks = len({k.split(".")[1] for k in converted if k.startswith("blocks.")})
    se_ratio = features // converted["blocks.0.se_down.weight"].shape[0] if blocks else 8
    scale = int(round(converted["mu_head.weight"].shape[0] ** 0.5))
    model = PIUnet(scale=scale, features=features, blocks=blocks, se_ratio=se_ratio)
    model.load_state_dict(converted)
    return model


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


def checkpoint_weights(checkpoint: dict) -> dict[str, Tensor]:
    """A checkpoint's weights to use: their moving average (train.py --ema) when the run kept one,
    since that is what was validated; else the trained weights."""
    return checkpoint.get("ema_state_dict") or checkpoint.get("state_dict")


SCALES = range(2, 9)  # the SR factors a model of this toolkit may have


def model_spec(checkpoint: dict) -> tuple[str, int, dict]:
    """A checkpoint's (model name, scale, options), checked against the registry before use."""
    spec = checkpoint.get("model")
    if not isinstance(spec, dict):
        raise CheckpointError("malformed checkpoint: its model description is missing")
    name, scale, options = spec.get("name"), spec.get("scale"), spec.get("options", {})
    if name not in MODELS:
        raise CheckpointError(f"the checkpoint names an unknown model {name!r} (known: {', '.join(MODELS)})")
    if not isinstance(scale, int) or isinstance(scale, bool) or scale not in SCALES:
        raise CheckpointError(
            f"the checkpoint's scale {scale!r} is not an SR factor from {SCALES[0]} to {SCALES[-1]}"
        )
    if not isinstance(options, dict):
        raise CheckpointError(f"the checkpoint's model options {options!r} are not a mapping")
    return name, scale, options


def load_model(checkpoint: dict) -> nn.Module:
    """Rebuild a checkpoint's model with its weights (their moving average if kept), in eval mode;
    CheckpointError when its description or weights are malformed, empty or not finite."""
    name, scale, options = model_spec(checkpoint)
    weights = checkpoint_weights(checkpoint)
    if (
        not isinstance(weights, dict)
        or not weights
        or not all(isinstance(w, Tensor) for w in weights.values())
    ):
        raise CheckpointError(f"the checkpoint's weights of {name!r} are missing or not tensors")
    if not all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point()):
        raise CheckpointError(f"the checkpoint's weights of {name!r} hold NaN or infinity")
    try:
        model = build_model(name, scale=scale, **options)
        model.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"cannot rebuild model {name!r} from the checkpoint ({first_line(err)})"
        ) from None
    return model.eval()
