"""PIUnet: multi-frame super-resolution with uncertainty (Valsesia & Magli, "Permutation
invariance and uncertainty in multitemporal image super-resolution", IEEE TGRS 2022): the
network, its attention in two layouts (fast SDPA, and the authors' nn.MultiheadAttention), and
the conversion of the authors' published weights. `model.py` registers it as `piunet`.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imresize import upscale

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
            upscaled = upscale((frames * weights).sum(dim=1, keepdim=True), self.scale, "bicubic")
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
