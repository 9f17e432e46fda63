"""Metrics by the benchmark protocol, the toolkit's error types, and small shared helpers.

Benchmark protocol (the MATLAB scripts behind the published SR tables):
  1. the SR image is clamped to [0, 1] and rounded to 8 bits (so is HR, a no-op for 8-bit files);
  2. colour images are scored on Y of ITU-R BT.601 as MATLAB's rgb2ycbcr computes it,
     Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 with R, G, B in [0, 255], kept as a
     float (not rounded); grayscale images are scored on their own gray values;
  3. `shave` pixels are cropped from every border (by convention shave = scale);
  4. PSNR with peak 255; SSIM with an 11x11 Gaussian window, sigma 1.5, K1 = 0.01,
     K2 = 0.03, 'valid' filtering, on the same 0..255 values; float64 throughout.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

PROTOCOL = (
    "Metrics follow the benchmark protocol: SR rounded to 8 bits, Y channel of BT.601 "
    "(MATLAB rgb2ycbcr, as a float) for colour images, own values for grayscale, "
    "a border of `scale` pixels shaved, PSNR with peak 255, SSIM with an 11x11 Gaussian "
    "window (sigma 1.5)."
)


# ---------------------------------------------------------------------------------------
# Errors: one type per kind of user error; the CLIs print them as one line and exit 2.
# ---------------------------------------------------------------------------------------


class UserError(Exception):
    """An error caused by the user's input, reported as one line without a traceback."""


class ImageError(UserError):
    """An image file that is missing, unreadable, truncated, too large or of the wrong kind."""


class DatasetError(UserError):
    """A dataset that cannot be found, downloaded, verified or that holds no usable images."""


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, unsafe or of the wrong kind."""


# ---------------------------------------------------------------------------------------
# Benchmark metrics
# ---------------------------------------------------------------------------------------

# ITU-R BT.601 luma as MATLAB's rgb2ycbcr, for R, G, B in [0, 255].
_Y_WEIGHTS = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)
_Y_OFFSET = 16.0


def rgb_to_y(rgb: Tensor) -> Tensor:
    """Y of BT.601 (MATLAB rgb2ycbcr) for (..., 3, H, W) in [0, 255]; returns (..., 1, H, W)."""
    r, g, b = rgb.unbind(-3)
    y = _Y_OFFSET + _Y_WEIGHTS[0] * r + _Y_WEIGHTS[1] * g + _Y_WEIGHTS[2] * b
    return y.unsqueeze(-3)


def quantize(img: Tensor) -> Tensor:
    """Image in [0, 1] -> float64 values 0..255 rounded to integers (the 8-bit file it would be)."""
    return torch.round(img.detach().to(torch.float64).clamp(0.0, 1.0) * 255.0)


def _protocol_planes(img: Tensor, shave: int, y_channel: bool) -> Tensor:
    """The (B, C, H, W) float64 0..255 planes that the protocol scores."""
    planes = quantize(img)
    if y_channel and planes.shape[-3] == 3:
        planes = rgb_to_y(planes)
    if shave > 0:
        planes = planes[..., shave:-shave, shave:-shave]
    return planes


def _check_pair(sr: Tensor, hr: Tensor, shave: int) -> tuple[Tensor, Tensor, bool]:
    """Validate shapes and lift (C, H, W) inputs to a batch of one."""
    if sr.shape != hr.shape:
        raise ValueError(f"SR {tuple(sr.shape)} and HR {tuple(hr.shape)} differ in shape")
    if sr.dim() not in (3, 4):
        raise ValueError(f"expected (C,H,W) or (B,C,H,W), got {tuple(sr.shape)}")
    if shave < 0 or 2 * shave >= min(sr.shape[-2:]):
        raise ValueError(f"shave={shave} leaves nothing of a {sr.shape[-2]}x{sr.shape[-1]} image")
    single = sr.dim() == 3
    if single:
        sr, hr = sr.unsqueeze(0), hr.unsqueeze(0)
    return sr, hr, single


def psnr(sr: Tensor, hr: Tensor, shave: int, y_channel: bool = True) -> Tensor:
    """PSNR in dB by the benchmark protocol; (B,C,H,W) -> (B,) float64, (C,H,W) -> scalar."""
    sr, hr, single = _check_pair(sr, hr, shave)
    a, b = _protocol_planes(sr, shave, y_channel), _protocol_planes(hr, shave, y_channel)
    mse = (a - b).pow(2).flatten(1).mean(1)
    out = 10.0 * torch.log10(255.0**2 / mse)
    return out[0] if single else out


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> Tensor:
    """Normalised 1-D Gaussian; its outer product is MATLAB's fspecial('gaussian', size, sigma)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _gaussian_blur_valid(x: Tensor, size: int = 11, sigma: float = 1.5) -> Tensor:
    """'valid' 2-D Gaussian filtering of (B, C, H, W), as two separable 1-D passes."""
    channels = x.shape[1]
    g = _gaussian_1d(size, sigma).to(x.device, x.dtype)
    x = F.conv2d(x, g.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)
    return F.conv2d(x, g.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels)


def ssim(sr: Tensor, hr: Tensor, shave: int, y_channel: bool = True) -> Tensor:
    """SSIM by the benchmark protocol (Wang et al. 2004); mean over channels for RGB."""
    sr, hr, single = _check_pair(sr, hr, shave)
    a, b = _protocol_planes(sr, shave, y_channel), _protocol_planes(hr, shave, y_channel)
    if min(a.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels after shaving, got {tuple(a.shape[-2:])}")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    moments = _gaussian_blur_valid(torch.cat([a, b, a * a, b * b, a * b], dim=1))
    mu_a, mu_b, aa, bb, ab = moments.chunk(5, dim=1)
    var_a, var_b, cov = aa - mu_a**2, bb - mu_b**2, ab - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    out = ssim_map.flatten(1).mean(1)
    return out[0] if single else out


# ---------------------------------------------------------------------------------------
# Command-line plumbing
# ---------------------------------------------------------------------------------------


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a CLI's main: user errors become one line on stderr and exit status 2."""
    try:
        return main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
