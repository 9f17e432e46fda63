"""Registration of a target to a prediction, for training on and scoring against images of
another sensor (the cross-sensor SISR paper's finding, issue [18]): pairs from two sensors never
line up exactly, so the target is first moved onto the prediction by a global sub-pixel
translation (geometric) and its bands by a gain and an offset (radiometric), both estimated
without gradients; the loss or metric then measures what the prediction got wrong, not how the
two images differ.

- Geometric: the normalised cross-correlation of the mean band over every whole-pixel shift up
  to `max_shift` + 1, refined to sub-pixel precision by a parabola through the peak and its
  neighbours on each axis, limited to `max_shift`; the target is resampled at the shifted
  positions (bicubic, `grid_sample`) and the `border` pixels a shift could have brought in
  from outside are left out.
- Radiometric: per image and band, the gain and offset that bring the target closest in least
  squares, over the pixels kept, to the prediction (metrics) or, inside a training loss, to the
  LR input upscaled by bicubic. Fitted to the prediction in a loss, they would leave the
  prediction's own gain and offset free: any per-band affine change of the output gives the
  same loss, and a network trained so drifts in brightness and colour (a study run fell to
  12.7 dB on Set5); the LR input holds the radiometry the output must keep.

Images are (B, C, H, W); shifts (B, 2) as (dy, dx) in pixels, the target's content at (y, x)
of the prediction lying at (y + dy, x + dx) of the target.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

REGISTRATIONS = ("none", "geometric", "radiometric", "both")


def estimate_shift(pred: Tensor, target: Tensor, max_shift: int) -> Tensor:
    """(B, 2) sub-pixel (dy, dx) of `target` relative to `pred`, each within [-max_shift, max_shift]
    (the search reaches one pixel further, so that a shift near the limit is refined too)."""
    limit, max_shift = max_shift, max_shift + 1
    a = _centred(pred.detach().float().mean(1), max_shift)  # (B, h, w), the fixed window
    b = target.detach().float().mean(1)
    span = 2 * max_shift + 1
    scores = torch.empty(a.shape[0], span, span, device=a.device)
    for i in range(span):
        for j in range(span):
            window = b[:, i : i + a.shape[1], j : j + a.shape[2]]
            window = window - window.mean(dim=(1, 2), keepdim=True)
            norm = (a.pow(2).sum((1, 2)) * window.pow(2).sum((1, 2))).sqrt().clamp(min=1e-12)
            scores[:, i, j] = (a * window).sum((1, 2)) / norm
    peak = scores.flatten(1).argmax(1)
    iy, ix = peak // span, peak % span
    rows = torch.arange(a.shape[0], device=a.device)
    dy = iy.float() + _parabola(scores, rows, iy, ix, axis=0)
    dx = ix.float() + _parabola(scores, rows, iy, ix, axis=1)
    return (torch.stack([dy, dx], dim=1) - max_shift).clamp(-limit, limit)


def _centred(image: Tensor, margin: int) -> Tensor:
    """(B, H, W) cropped by `margin` on every side, its mean removed."""
    crop = image[:, margin : image.shape[1] - margin, margin : image.shape[2] - margin]
    return crop - crop.mean(dim=(1, 2), keepdim=True)


def _parabola(scores: Tensor, rows: Tensor, iy: Tensor, ix: Tensor, axis: int) -> Tensor:
    """Sub-pixel offset of the peak along one axis: the vertex of the parabola through the peak
    and its two neighbours (0 at the edge of the search or on a flat top)."""
    span = scores.shape[1]
    index = iy if axis == 0 else ix
    inside = (index > 0) & (index < span - 1)
    lo, hi = (index - 1).clamp(0, span - 1), (index + 1).clamp(0, span - 1)
    centre = scores[rows, iy, ix]
    before = scores[rows, lo, ix] if axis == 0 else scores[rows, iy, lo]
    after = scores[rows, hi, ix] if axis == 0 else scores[rows, iy, hi]
    curvature = before - 2 * centre + after
    offset = (before - after) / (2 * curvature)
    ok = inside & (curvature < 0)
    return torch.where(ok, offset.clamp(-0.5, 0.5), torch.zeros_like(offset))


def shift_image(image: Tensor, shift: Tensor) -> Tensor:
    """`image` (B, C, H, W) sampled at (y + dy, x + dx) for each pixel (y, x): bicubic, zeros
    outside."""
    batch, _, height, width = image.shape
    ys = torch.arange(height, device=image.device, dtype=torch.float32)
    xs = torch.arange(width, device=image.device, dtype=torch.float32)
    grid_y = (ys[None, :, None] + shift[:, 0, None, None]).expand(batch, height, width)
    grid_x = (xs[None, None, :] + shift[:, 1, None, None]).expand(batch, height, width)
    grid = torch.stack([2 * grid_x / (width - 1) - 1, 2 * grid_y / (height - 1) - 1], dim=-1)
    return F.grid_sample(image.float(), grid, mode="bicubic", padding_mode="zeros", align_corners=True)


def fit_gain_offset(target: Tensor, pred: Tensor) -> Tensor:
    """`target` with each image's bands mapped by the gain and offset closest to `pred` in least
    squares (a flat band keeps gain 1)."""
    t, p = target.float().flatten(2), pred.detach().float().flatten(2)
    t_mean, p_mean = t.mean(2, keepdim=True), p.mean(2, keepdim=True)
    variance = (t - t_mean).pow(2).mean(2, keepdim=True)
    covariance = ((t - t_mean) * (p - p_mean)).mean(2, keepdim=True)
    gain = torch.where(variance > 1e-12, covariance / variance.clamp(min=1e-12), torch.ones_like(variance))
    return (gain * (t - t_mean) + p_mean).view_as(target)


def register(
    pred: Tensor, target: Tensor, mode: str, max_shift: int, anchor: Tensor | None = None
) -> tuple[Tensor, Tensor, int]:
    """(pred, target registered to it, border): both cropped by the `border` pixels a shift can
    have filled from outside (none without the geometric step). The gain and offset are fitted to
    `anchor` when given (in training: the LR input upscaled, see the module's note), else to
    `pred` (in metrics)."""
    if mode not in REGISTRATIONS:
        raise ValueError(f"unknown registration {mode!r}; use one of {', '.join(REGISTRATIONS)}")
    border = 0
    target = target.detach().float()  # moved onto the prediction, never learned through
    if mode in ("geometric", "both"):
        shift = estimate_shift(pred, target, max_shift)
        target = shift_image(target, shift)
        border = _border(max_shift)
    pred, target = _crop(pred, border), _crop(target, border)
    if mode in ("radiometric", "both"):
        target = fit_gain_offset(target, pred if anchor is None else _crop(anchor, border))
    return pred, target, border


def _crop(image: Tensor, border: int) -> Tensor:
    """(..., H, W) without `border` pixels on each side."""
    if border == 0:
        return image
    return image[..., border : image.shape[-2] - border, border : image.shape[-1] - border]


def max_shift_for(scale: int) -> int:
    """The largest shift searched: one LR pixel, as the distortions the paper describes."""
    return max(1, math.ceil(scale))


def _border(max_shift: int) -> int:
    """The pixels left out at each side after a shift: the search's reach and the bicubic kernel's."""
    return max_shift + 3


def registration_border(scale: int) -> int:
    """What geometric registration leaves out at each side of an image at `scale`."""
    return _border(max_shift_for(scale))
