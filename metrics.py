"""The benchmark protocol: PSNR/SSIM on Y, the frequency bands, PROBA-V's cPSNR/cSSIM.

Benchmark protocol (the MATLAB scripts behind the published SR tables):
  1. the SR image is clamped to [0, 1] and rounded to 8 bits (so is HR, a no-op for 8-bit files);
  2. colour images are scored on Y of ITU-R BT.601 as MATLAB's rgb2ycbcr computes it,
     Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 with R, G, B in [0, 255], kept as a
     float (not rounded: the figures of the reference table are computed so; scripts that
     call rgb2ycbcr on uint8 images round Y, which moves results by about 0.01-0.02 dB);
     grayscale images are scored on their own gray values;
  3. `shave` pixels are cropped from every border (by convention shave = scale);
  4. PSNR with peak 255; SSIM with an 11x11 Gaussian window, sigma 1.5, K1 = 0.01,
     K2 = 0.03, 'valid' filtering, on the same 0..255 values; float64 throughout.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from images import MATLAB_YCBCR, MATLAB_YCBCR_OFFSETS, luma
from imresize import gaussian_filter
from utils import ImageError

PROTOCOL = (
    "Metrics follow the benchmark protocol: SR rounded to 8 bits, Y channel of BT.601 "
    "(MATLAB rgb2ycbcr, as a float) for colour images, own values for grayscale, "
    "a border of `scale` pixels shaved, PSNR with peak 255, SSIM with an 11x11 Gaussian "
    "window (sigma 1.5)."
)
BURST_PROTOCOL = (
    "Multi-frame metrics follow the PROBA-V challenge: cPSNR is the best PSNR over shifts of up "
    "to 3 HR pixels of the SR crop, after removing the mean brightness bias, on clear pixels of "
    "the HR mask; cSSIM is SSIM at that shift and bias. Baseline: MATLAB-compatible bicubic "
    "upscale of the frames' mean (for PROBA-V scenes the challenge's: of the frames with the most "
    "clear pixels); score = norm / cPSNR (norm: the baseline's cPSNR, as the challenge's norm.csv; "
    "1 = baseline, lower is better)."
)


def score_labels(multi_frame: bool) -> tuple[str, str, str]:
    """(score, similarity index, baseline) as printed for one protocol or the other."""
    return ("cPSNR", "cSSIM", "baseline") if multi_frame else ("PSNR", "SSIM", "bicubic")


# ---------------------------------------------------------------------------------------
# Benchmark metrics
# ---------------------------------------------------------------------------------------

# ITU-R BT.601 luma as MATLAB's rgb2ycbcr, for R, G, B in [0, 255] (images.MATLAB_YCBCR's Y row).
_Y_WEIGHTS = tuple(weight / 255.0 for weight in MATLAB_YCBCR[0])
_Y_OFFSET = MATLAB_YCBCR_OFFSETS[0]


def rgb_to_y(rgb: Tensor) -> Tensor:
    """Y of BT.601 (MATLAB rgb2ycbcr) for (..., 3, H, W) in [0, 255]; returns (..., 1, H, W)."""
    r, g, b = rgb.unbind(-3)
    y = _Y_OFFSET + _Y_WEIGHTS[0] * r + _Y_WEIGHTS[1] * g + _Y_WEIGHTS[2] * b
    return y.unsqueeze(-3)


def round_to_8bit(img: Tensor) -> Tensor:
    """Image in [0, 1] -> float64 tensor of its values 0..255 rounded to integers (the 8-bit file
    it would be): the protocol's step 1, in the float64 it computes in. (The array a file
    holds is images.to_file_array's.)"""
    return torch.round(img.detach().to(torch.float64).clamp(0.0, 1.0) * 255.0)


def shave_border(img: Tensor, shave: int) -> Tensor:
    """(..., H, W) without `shave` pixels at each edge (all of it for 0)."""
    height, width = img.shape[-2:]
    return img[..., shave : height - shave, shave : width - shave]


def _protocol_planes(img: Tensor, shave: int, y_channel: bool) -> Tensor:
    """The (B, C, H, W) float64 0..255 planes that the protocol scores."""
    planes = round_to_8bit(img)
    if y_channel and planes.shape[-3] == 3:
        planes = rgb_to_y(planes)
    return shave_border(planes, shave)


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


def check_scorable(hr: Tensor, where: str, shave: int) -> None:
    """Refuse HR images too small for SSIM (11x11 pixels) once `shave` pixels are shaved."""
    if min(hr.shape[-2:]) - 2 * shave < 11:
        raise ImageError(f"{where}: too small to score (SSIM needs 11x11 pixels after shaving {shave})")


def psnr(sr: Tensor, hr: Tensor, shave: int, y_channel: bool = True) -> Tensor:
    """PSNR in dB by the benchmark protocol; (B,C,H,W) -> (B,) float64, (C,H,W) -> scalar."""
    sr, hr, single = _check_pair(sr, hr, shave)
    a, b = _protocol_planes(sr, shave, y_channel), _protocol_planes(hr, shave, y_channel)
    mse = (a - b).pow(2).flatten(1).mean(1)
    out = 10.0 * torch.log10(255.0**2 / mse)
    return out[0] if single else out


def ssim_map(a: Tensor, b: Tensor, data_range: float) -> Tensor:
    """Per-pixel SSIM of (B, C, H, W) images ('valid' 11x11 Gaussian window, sigma 1.5)."""
    if min(a.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels, got {tuple(a.shape[-2:])}")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    moments = gaussian_filter(torch.cat([a, b, a * a, b * b, a * b], dim=1), 1.5, size=11, borders="valid")
    mu_a, mu_b, aa, bb, ab = moments.chunk(5, dim=1)
    var_a, var_b, cov = aa - mu_a**2, bb - mu_b**2, ab - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def ssim(sr: Tensor, hr: Tensor, shave: int, y_channel: bool = True) -> Tensor:
    """SSIM by the benchmark protocol (Wang et al. 2004); mean over channels for RGB."""
    sr, hr, single = _check_pair(sr, hr, shave)
    a, b = _protocol_planes(sr, shave, y_channel), _protocol_planes(hr, shave, y_channel)
    out = ssim_map(a, b, data_range=255.0).flatten(1).mean(1)
    return out[0] if single else out


# ---------------------------------------------------------------------------------------
# Frequency-domain analysis (as in Michel, Kalinicheva & Inglada 2024, torchsisr)
# ---------------------------------------------------------------------------------------
# Radially averaged power spectrum of the luma, on normalised frequency 0..0.5 cycles/pixel,
# and the energy of SR relative to HR in three bands: low [0, 1/6), mid [1/6, 1/3) and
# high [1/3, 0.5]. For x3 SR the LR image's own Nyquist limit is 1/6: above it, energy is
# what the model restored (or invented); a ratio near 1 in the mid and high bands means
# HR-like detail, far below 1 a blurry result, above 1 over-sharpening or noise.

FDA_BANDS = {"low": (0.0, 1 / 6), "mid": (1 / 6, 1 / 3), "high": (1 / 3, 0.5 + 1e-9)}
FDA_BINS = 64


def _luma(img: Tensor) -> Tensor:
    """(C, H, W) in [0, 1] -> (H, W) float64: BT.601 Y of RGB, gray as is."""
    img = img.detach().double()
    return luma(img)[0] if img.shape[0] == 3 else img.mean(0)


def _power_and_radius(img: Tensor) -> tuple[Tensor, Tensor]:
    """|FFT|^2 of the mean-removed luma (divided by the pixel count), and each frequency's radius."""
    luma = _luma(img)
    power = torch.fft.fft2(luma - luma.mean()).abs().pow(2) / luma.numel()
    fy = torch.fft.fftfreq(luma.shape[0], dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(luma.shape[1], dtype=torch.float64)[None, :]
    return power, torch.sqrt(fy**2 + fx**2)


def radial_power_spectrum(img: Tensor, bins: int = FDA_BINS) -> Tensor:
    """Mean power in `bins` rings of normalised frequency 0..0.5 (cycles per pixel;
    frequencies past 0.5, the corners of the spectrum, are left out)."""
    power, radius = _power_and_radius(img)
    index = (radius / 0.5 * bins).long()
    inside = index < bins
    total = torch.zeros(bins, dtype=torch.float64).index_add_(0, index[inside], power[inside])
    count = torch.zeros(bins, dtype=torch.float64).index_add_(
        0, index[inside], torch.ones_like(power[inside])
    )
    return total / count.clamp(min=1)


def band_energy_ratios(sr: Tensor, hr: Tensor) -> dict[str, float]:
    """Energy of SR over energy of HR in each band (power summed over the band's frequencies)."""
    energies = []
    for img in (sr, hr):
        power, radius = _power_and_radius(img)
        energies.append({band: power[(radius >= lo) & (radius < hi)].sum().item()
                         for band, (lo, hi) in FDA_BANDS.items()})  # fmt: skip
    return {
        band: energies[0][band] / energies[1][band] if energies[1][band] > 0 else math.nan
        for band in FDA_BANDS
    }


# ---------------------------------------------------------------------------------------
# Multispectral metrics, as remote sensing reports them: on physical values (reflectance),
# per band, and across bands (SAM, ERGAS). Images are (C, H, W), `shave` pixels left out.
# ---------------------------------------------------------------------------------------


def band_psnr(sr: Tensor, hr: Tensor, peak: float = 1.0, shave: int = 0) -> Tensor:
    """(C,) PSNR of each band in dB against `peak` (1 for reflectance), in float64."""
    sr, hr = (shave_border(img, shave).double() for img in (sr, hr))
    mse = (sr - hr).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(peak**2 / mse)


def spectral_angle(sr: Tensor, hr: Tensor, shave: int = 0) -> Tensor:
    """Mean spectral angle mapper (SAM, degrees) between the band vectors of each pixel, over the
    pixels where neither vector is zero."""
    sr, hr = (shave_border(img, shave).double().flatten(1) for img in (sr, hr))
    squares = sr.pow(2).sum(0) * hr.pow(2).sum(0)
    dot = (sr * hr).sum(0)
    sine = (squares - dot.pow(2)).clamp(min=0).sqrt()  # |sr| |hr| sin: atan2 is exact near 0
    valid = squares > 0
    return torch.rad2deg(torch.atan2(sine[valid], dot[valid])).mean()


def ergas(sr: Tensor, hr: Tensor, scale: float, shave: int = 0) -> Tensor:
    """ERGAS (Wald 2000): 100 / scale x the root mean over bands of (RMSE of the band / mean of
    the reference band)^2; 0 for a perfect result, lower is better."""
    sr, hr = (shave_border(img, shave).double().flatten(1) for img in (sr, hr))
    rmse = (sr - hr).pow(2).mean(1).sqrt()
    return 100 / scale * (rmse / hr.mean(1)).pow(2).mean().sqrt()


# ---------------------------------------------------------------------------------------
# Multi-frame (PROBA-V) losses and metrics: registered, bias-corrected, masked
# ---------------------------------------------------------------------------------------
# The HR reference may be misaligned with the reconstruction by up to `border` pixels. The
# prediction is cropped by `border` on each side and compared with each of the
# (2 * border + 1)^2 HR crops, after removing the mean brightness difference over the clear
# pixels of that crop; the best shift counts. All shifts are computed at once on views.


def shift_search(
    pred: Tensor, target: Tensor, mask: Tensor, border: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(pred crop (B,1,1,h,w), target crops (B,S,S,h,w), mask crops, bias (B,S,S,1,1)) for all S*S shifts."""
    if pred.shape != target.shape or target.shape != mask.shape or pred.shape[1] != 1:
        raise ValueError(
            f"expected equal (B, 1, H, W) shapes, got {pred.shape}, {target.shape}, {mask.shape}"
        )
    h, w = pred.shape[-2] - 2 * border, pred.shape[-1] - 2 * border
    crop = pred[:, 0, border : border + h, border : border + w][:, None, None]
    targets = target[:, 0].unfold(1, h, 1).unfold(2, w, 1)
    masks = mask[:, 0].to(pred.dtype).unfold(1, h, 1).unfold(2, w, 1)
    count = masks.sum(dim=(-2, -1), keepdim=True).clamp(min=1)
    bias = (masks * (targets - crop)).sum(dim=(-2, -1), keepdim=True) / count
    return crop, targets, masks, bias


def best_shift(
    pred: Tensor, target: Tensor, mask: Tensor, border: int
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """The registration behind cPSNR, in float64, for (B, 1, H, W) inputs: per image the
    smallest masked mean of (target - pred - bias)^2 over the shifts (B,), the row and column
    of the shift that gives it (B,) each, and `shift_search`'s (crop, targets, masks, bias)."""
    search = crop, targets, masks, bias = shift_search(pred.double(), target.double(), mask, border)
    count = masks.sum(dim=(-2, -1)).clamp(min=1)
    cmse = ((masks * (targets - crop - bias).pow(2)).sum(dim=(-2, -1)) / count).flatten(1)
    best = cmse.argmin(dim=1)
    return cmse.min(dim=1).values, best // targets.shape[1], best % targets.shape[1], search


def cpsnr(sr: Tensor, hr: Tensor, mask: Tensor, border: int = 3) -> Tensor:
    """cPSNR of the PROBA-V challenge, per image: (B, 1, H, W) in [0, 1] -> (B,) dB.

    cPSNR = -10 log10(min over shifts of the masked mean of (hr - sr - bias)^2). Each image
    is scored on its own clear pixels, at any batch size.
    """
    return -10.0 * torch.log10(best_shift(sr, hr, mask, border)[0])


def cssim(sr: Tensor, hr: Tensor, mask: Tensor, border: int = 3) -> Tensor:
    """cSSIM, per image: SSIM between the masked HR crop and the masked, bias-corrected SR
    crop at the shift that gives the cPSNR. (B, 1, H, W) in [0, 1] -> (B,).

    PIUnet's authors take the best SSIM over all 49 shifts instead; that costs 49 SSIMs per
    image (seconds for a 500x500 image on a CPU), and picks the same shift wherever the
    registration is unambiguous.
    """
    _, shift_y, shift_x, (crop, targets, masks, bias) = best_shift(sr, hr, mask, border)
    rows = torch.arange(targets.shape[0])
    m = masks[rows, shift_y, shift_x].unsqueeze(1)
    a = m * targets[rows, shift_y, shift_x].unsqueeze(1)
    c = m * (crop[:, 0, 0] + bias[rows, shift_y, shift_x]).unsqueeze(1)
    return ssim_map(a, c, data_range=1.0).flatten(1).mean(1)


def uncertainty_rank_correlation(
    mu: Tensor, log_scale: Tensor, hr: Tensor, mask: Tensor, border: int = 3
) -> float:
    """Spearman's rank correlation, over the clear pixels of one (1, H, W) scene, between the
    predicted scale exp(log_scale) and the actual absolute error |hr - mu - bias| at the shift
    and bias that give the cPSNR (positive: the model knows where it errs)."""
    _, shift_y, shift_x, (crop, targets, masks, bias) = best_shift(mu[None], hr[None], mask[None], border)
    y, x = shift_y.item(), shift_x.item()
    h, w = crop.shape[-2:]
    error = (targets[0, y, x] - crop[0, 0, 0] - bias[0, y, x]).abs()
    scale = log_scale[0, border : border + h, border : border + w].double()
    clear = masks[0, y, x] > 0
    ranks = [v[clear].argsort().argsort().double() for v in (error, scale)]
    ranks = [r - r.mean() for r in ranks]
    return ((ranks[0] * ranks[1]).sum() / (ranks[0].norm() * ranks[1].norm()).clamp(min=1e-12)).item()


def scene_scores(sr: Tensor, hr: Tensor, mask: Tensor) -> tuple[float, float]:
    """cPSNR and cSSIM of one (1, H, W) fused image against its HR image and clear mask."""
    return cpsnr(sr[None], hr[None], mask[None]).item(), cssim(sr[None], hr[None], mask[None]).item()
