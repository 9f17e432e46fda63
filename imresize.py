"""MATLAB-compatible resizing (`imresize`: bicubic, bilinear, nearest, antialiased when
shrinking) and the degradations that make LR images from HR ones by the benchmark protocol.

Never `F.interpolate(mode="bicubic")` where the protocol says bicubic: MATLAB's kernel
(a = -0.5), its antialiasing and its border handling differ from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

MATLAB_KERNELS = ("bicubic", "bilinear", "nearest")
# `sensor`: a Gaussian blur of sigma = scale / 3 HR pixels, then the mean of each scale x scale
# block: a modulation of exp(-2 pi^2 sigma^2 f^2) x sin(pi f scale) / (scale sin(pi f)) at f
# cycles per HR pixel, 0.41 (x2), 0.39 (x3) at the LR Nyquist frequency, as satellite optics
DEGRADATIONS = (*MATLAB_KERNELS, "sensor")


def degradation_kernels(text: str) -> tuple[str, ...]:
    """The LR kernels a --degradation value names: one, a comma list, or 'random' (MATLAB's
    three); ValueError names the first unknown one."""
    kernels = MATLAB_KERNELS if text == "random" else tuple(text.split(","))
    unknown = [k for k in kernels if k not in DEGRADATIONS]
    if unknown:
        raise ValueError(f"unknown kernel {unknown[0]!r}; use {', '.join(DEGRADATIONS)} or random")
    return kernels


# ---------------------------------------------------------------------------------------
# MATLAB-compatible resizing
# ---------------------------------------------------------------------------------------


def _cubic(x: Tensor) -> Tensor:
    """Keys cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic')."""
    ax = x.abs()
    ax2, ax3 = ax**2, ax**3
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


def _triangle(x: Tensor) -> Tensor:
    """Linear interpolation kernel (MATLAB's 'bilinear')."""
    return (1 - x.abs()).clamp(min=0)


def _box(x: Tensor) -> Tensor:
    """Box kernel (MATLAB's 'nearest')."""
    return ((x >= -0.5) & (x < 0.5)).to(x.dtype)


# name -> (kernel, support width, antialias when shrinking), as in MATLAB's imresize
_KERNELS: dict[str, tuple[Callable[[Tensor], Tensor], float, bool]] = {
    "bicubic": (_cubic, 4.0, True),
    "bilinear": (_triangle, 2.0, True),
    "nearest": (_box, 1.0, False),
}


def _contributions(in_len: int, out_len: int, scale: float, method: str) -> tuple[Tensor, Tensor]:
    """Source indices and weights (out_len, P) of one resized axis, as MATLAB computes them."""
    kernel, width, antialias = _KERNELS[method]
    shrink = scale < 1 and antialias
    if shrink:
        width = width / scale
    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # output pixel centre in input coordinates (1-based)
    left = torch.floor(u - width / 2)
    taps = math.ceil(width) + 2
    index = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]
    distance = u[:, None] - index
    weights = scale * kernel(distance * scale) if shrink else kernel(distance)
    weights = weights / weights.sum(1, keepdim=True)
    # symmetric border: index i outside [1, in_len] reflects onto the edge pixel included
    mirror = torch.cat([torch.arange(in_len), torch.arange(in_len - 1, -1, -1)])
    index = mirror[(index.long() - 1) % (2 * in_len)]
    return index, weights


def _resize_axis(x: Tensor, axis: int, out_len: int, scale: float, method: str) -> Tensor:
    """Resize one spatial axis (-2 or -1) of x: integer upscaling as a convolution, anything
    else by gathering one kernel tap at a time (memory ~ 2 outputs)."""
    in_len = x.shape[axis]
    factor = out_len // in_len
    exact = out_len == factor * in_len and scale == factor  # MATLAB weights depend on the scale given
    if method != "nearest" and factor > 1 and exact and in_len >= 3:
        return _upsample_axis(x, axis, factor, method)
    return _resize_axis_gather(x, axis, out_len, scale, method)


def _resize_axis_gather(x: Tensor, axis: int, out_len: int, scale: float, method: str) -> Tensor:
    """The general resize of one axis: weighted sum of gathered input pixels."""
    in_len = x.shape[axis]
    index, weights = _contributions(in_len, out_len, scale, method)
    index, weights = index.to(x.device), weights.to(x.device, x.dtype)
    shape = (out_len, 1) if axis == -2 else (out_len,)
    out = x.index_select(axis, index[:, 0]).mul_(weights[:, 0].view(shape))
    for tap in range(1, index.shape[1]):
        out.add_(x.index_select(axis, index[:, tap]).mul_(weights[:, tap].view(shape)))
    return out


def _phase_kernels(factor: int, method: str) -> tuple[tuple[float, ...], ...]:
    """MATLAB's weights of each output phase: the table's for the model scales (a constant to
    compiled graphs, with no import of Dynamo at start-up), computed for any other factor."""
    kernels = _PHASE_KERNELS.get((factor, method))
    return kernels if kernels is not None else _compute_phase_kernels(factor, method)


def _compute_phase_kernels(factor: int, method: str) -> tuple[tuple[float, ...], ...]:
    """Weights of each output phase on input offsets -2..2 for integer upscaling, as MATLAB
    computes them (plain numbers, so that traced and exported graphs hold them as constants)."""
    kernel, _, _ = _KERNELS[method]
    kernels = []
    for phase in range(factor):
        # output pixel s*i + phase sits at input position i + (phase + 0.5) / s - 0.5
        centre = (phase + 0.5) / factor - 0.5
        taps = [float(kernel(torch.tensor(centre - offset, dtype=torch.float64))) for offset in range(-2, 3)]
        total = sum(taps)
        kernels.append(tuple(t / total for t in taps))
    return tuple(kernels)


_PHASE_KERNELS = {
    (factor, method): _compute_phase_kernels(factor, method) for factor in (2, 3, 4) for method in _KERNELS
}


def _upsample_axis(x: Tensor, axis: int, factor: int, method: str) -> Tensor:
    """Integer upscaling of one axis with MATLAB's weights: symmetric padding by 2, one 5-tap
    convolution per output phase, phases interleaved. Same values as the gather path, a few
    times faster, and exportable to ONNX with dynamic sizes."""
    if axis == -1:
        return _upsample_axis(x.transpose(-1, -2), -2, factor, method).transpose(-1, -2)
    lead, (height, width) = x.shape[:-2], x.shape[-2:]
    planes = x.reshape(-1, 1, height, width)
    padded = torch.cat(
        [planes[:, :, 1:2], planes[:, :, 0:1], planes, planes[:, :, -1:], planes[:, :, -2:-1]], dim=2
    )
    kernels = torch.tensor(_phase_kernels(factor, method), dtype=x.dtype, device=x.device).view(
        factor, 1, 5, 1
    )
    phases = torch.nn.functional.conv2d(padded, kernels)  # (N, factor, H, W)
    out = phases.permute(0, 2, 1, 3).reshape(*lead, height * factor, width)
    return out


def upscale(x: Tensor, factor: int, method: str = "bicubic") -> Tensor:
    """`imresize(x, factor)` for an integer factor: the convolution path on both axes, with no
    float arithmetic on sizes (so it traces and exports with dynamic height and width)."""
    if factor == 1:
        return x
    if min(x.shape[-2:]) < 3 or method == "nearest":
        return imresize(x, size=(x.shape[-2] * factor, x.shape[-1] * factor), method=method)
    return _upsample_axis(_upsample_axis(x, -2, factor, method), -1, factor, method)


def _out_len(in_len: int, scale: float) -> int:
    """MATLAB's output length ceil(in * scale), tolerant to float noise (9 * (1/3) -> 3)."""
    return max(1, math.ceil(in_len * scale - 1e-9))


def imresize(
    x: Tensor,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    method: str = "bicubic",
) -> Tensor:
    """MATLAB `imresize` for (C, H, W) or (B, C, H, W) float tensors; differentiable.

    Give `scale` (any positive number; output size ceil(in * scale)) or `size` (H, W).
    Keys cubic (a = -0.5), antialiased when shrinking, symmetric borders. Values are not
    clamped. This is not `F.interpolate(mode="bicubic")`, which uses a = -0.75, no
    antialiasing and replicated borders.
    """
    if method not in _KERNELS:
        raise ValueError(f"unknown resize method {method!r}; use one of {list(_KERNELS)}")
    if not x.is_floating_point():
        raise TypeError(f"imresize needs a float tensor, got {x.dtype}")
    if x.dim() not in (3, 4):
        raise ValueError(f"expected (C,H,W) or (B,C,H,W), got {tuple(x.shape)}")
    in_h, in_w = x.shape[-2:]
    if size is not None:
        out_h, out_w = size
        scale_h, scale_w = out_h / in_h, out_w / in_w
    elif scale is not None and scale > 0:
        scale_h = scale_w = float(scale)
        out_h, out_w = _out_len(in_h, scale), _out_len(in_w, scale)
    else:
        raise ValueError(f"give a positive scale or a size, got scale={scale}, size={size}")
    # MATLAB resizes the axis with the smaller scale first; the result is the same up to
    # float rounding, and this order keeps the intermediate image small.
    if scale_h <= scale_w:
        x = _resize_axis(x, -2, out_h, scale_h, method)
        return _resize_axis(x, -1, out_w, scale_w, method)
    x = _resize_axis(x, -1, out_w, scale_w, method)
    return _resize_axis(x, -2, out_h, scale_h, method)


# ---------------------------------------------------------------------------------------
# Degradations
# ---------------------------------------------------------------------------------------


def modcrop(img: Tensor, scale: int) -> Tensor:
    """Crop the bottom/right of (..., H, W) so both sides are multiples of `scale`."""
    h, w = img.shape[-2:]
    return img[..., : h - h % scale, : w - w % scale]


def degrade(hr: Tensor, scale: int, kernel: str = "bicubic", bits: int | None = 8) -> Tensor:
    """LR image of an HR image already cropped to a multiple of `scale`.

    `downsample` by `kernel`, clamped to [0, 1] and rounded to `bits` bits as an LR file would
    be (None keeps full precision).
    """
    lr = downsample(hr, scale, kernel).clamp(0, 1)
    if bits is not None:
        peak = 2**bits - 1
        lr = torch.round(lr * peak) / peak
    return lr


def downsample(hr: Tensor, scale: int, kernel: str = "bicubic") -> Tensor:
    """(..., H, W) with sides multiples of `scale`, made `scale` times smaller by `kernel`:
    MATLAB's imresize (bicubic and bilinear antialiased, nearest not) or the `sensor` blur and
    block mean; nothing clipped or rounded."""
    if kernel not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kernel!r}; use one of {DEGRADATIONS}")
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"HR {h}x{w} is not a multiple of scale {scale}; modcrop it first")
    if kernel != "sensor":
        return imresize(hr, size=(h // scale, w // scale), method=kernel)
    batch = hr.reshape(-1, 1, h, w).double()
    blurred = gaussian_filter(batch, scale / 3)
    return (
        torch.nn.functional.avg_pool2d(blurred, scale)
        .reshape(*hr.shape[:-2], h // scale, w // scale)
        .to(hr.dtype)
    )


def gaussian_window(size: int, sigma: float, dtype: torch.dtype = torch.float64) -> Tensor:
    """Normalised 1-D Gaussian of `size` taps; its outer product is MATLAB's
    fspecial('gaussian', size, sigma)."""
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def gaussian_filter(img: Tensor, sigma: float, size: int | None = None, borders: str = "reflect") -> Tensor:
    """Separable Gaussian filtering of (N, C, H, W) with `size` taps (default 2 ceil(3 sigma) + 1):
    borders mirrored ("reflect", same size out) or dropped ("valid", as SSIM filters)."""
    size = size or 2 * max(1, math.ceil(3 * sigma)) + 1
    g = gaussian_window(size, sigma, img.dtype).to(img.device)
    if borders == "reflect":
        r = size // 2
        img = torch.nn.functional.pad(img, (r, r, r, r), mode="reflect")
    elif borders != "valid":
        raise ValueError(f"borders must be reflect or valid, not {borders!r}")
    channels = img.shape[1]
    img = torch.nn.functional.conv2d(img, g.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)
    return torch.nn.functional.conv2d(
        img, g.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels
    )
