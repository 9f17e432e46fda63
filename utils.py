"""Metrics by the benchmark protocol, the toolkit's error types, and small shared helpers.

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

import argparse
import contextlib
import math
import os
import pickle
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


def ssim_map(a: Tensor, b: Tensor, data_range: float) -> Tensor:
    """Per-pixel SSIM of (B, C, H, W) images ('valid' 11x11 Gaussian window, sigma 1.5)."""
    if min(a.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels, got {tuple(a.shape[-2:])}")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    moments = _gaussian_blur_valid(torch.cat([a, b, a * a, b * b, a * b], dim=1))
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
    if img.shape[0] == 3:
        return 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
    return img.mean(0)


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
# Multi-frame (PROBA-V) losses and metrics: registered, bias-corrected, masked
# ---------------------------------------------------------------------------------------
# The HR reference may be misaligned with the reconstruction by up to `border` pixels. The
# prediction is cropped by `border` on each side and compared with each of the
# (2 * border + 1)^2 HR crops, after removing the mean brightness difference over the clear
# pixels of that crop; the best shift counts. All shifts are computed at once on views.


def _all_shifts(
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


def registered_l1(pred: Tensor, target: Tensor, mask: Tensor, border: int = 3) -> Tensor:
    """PIUnet's registered L1: per image, the smallest masked mean |target - pred - bias| over
    the shifts; the batch mean of that. (B, 1, H, W) inputs, scalar output."""
    crop, targets, masks, bias = _all_shifts(pred, target, mask, border)
    count = masks.sum(dim=(-2, -1)).clamp(min=1)
    l1 = (masks * (targets - crop - bias).abs()).sum(dim=(-2, -1)) / count  # (B, S, S)
    return l1.flatten(1).min(dim=1).values.mean()


def registered_uncertainty_loss(
    mu: Tensor, sigma: Tensor, target: Tensor, mask: Tensor, border: int = 3
) -> Tensor:
    """Registered Laplace negative log-likelihood, sigma + |y - mu - bias| * exp(-sigma), with
    the same shift search as `registered_l1`.

    The brightness bias corrects the mean `mu` only. (The authors' code also adds it to the
    log-scale `sigma`, which has no meaning for a scale parameter; we follow the math.)
    """
    crop, targets, masks, bias = _all_shifts(mu, target, mask, border)
    h, w = crop.shape[-2:]
    log_scale = sigma[:, 0, border : border + h, border : border + w][:, None, None]
    count = masks.sum(dim=(-2, -1)).clamp(min=1)
    nll = log_scale + (targets - crop - bias).abs() * torch.exp(-log_scale)
    per_shift = (masks * nll).sum(dim=(-2, -1)) / count
    return per_shift.flatten(1).min(dim=1).values.mean()


def cpsnr(sr: Tensor, hr: Tensor, mask: Tensor, border: int = 3) -> Tensor:
    """cPSNR of the PROBA-V challenge, per image: (B, 1, H, W) in [0, 1] -> (B,) dB.

    cPSNR = -10 log10(min over shifts of the masked mean of (hr - sr - bias)^2). Each image
    is scored on its own clear pixels, at any batch size.
    """
    crop, targets, masks, bias = _all_shifts(sr.double(), hr.double(), mask, border)
    count = masks.sum(dim=(-2, -1)).clamp(min=1)
    cmse = (masks * (targets - crop - bias).pow(2)).sum(dim=(-2, -1)) / count
    return -10.0 * torch.log10(cmse.flatten(1).min(dim=1).values)


def cssim(sr: Tensor, hr: Tensor, mask: Tensor, border: int = 3) -> Tensor:
    """cSSIM, per image: SSIM between the masked HR crop and the masked, bias-corrected SR
    crop at the shift that gives the cPSNR. (B, 1, H, W) in [0, 1] -> (B,).

    PIUnet's authors take the best SSIM over all 49 shifts instead; that costs 49 SSIMs per
    image (seconds for a 500x500 image on a CPU), and picks the same shift wherever the
    registration is unambiguous.
    """
    crop, targets, masks, bias = _all_shifts(sr.double(), hr.double(), mask, border)
    count = masks.sum(dim=(-2, -1)).clamp(min=1)
    cmse = ((masks * (targets - crop - bias).pow(2)).sum(dim=(-2, -1)) / count).flatten(1)
    best = cmse.argmin(dim=1)
    rows = torch.arange(targets.shape[0])
    shift_y, shift_x = best // targets.shape[1], best % targets.shape[1]
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
    crop, targets, masks, bias = _all_shifts(mu[None].double(), hr[None].double(), mask[None], border)
    count = masks.sum(dim=(-2, -1)).clamp(min=1)
    cmse = ((masks * (targets - crop - bias).pow(2)).sum(dim=(-2, -1)) / count).flatten(1)
    best = cmse.argmin(dim=1).item()
    y, x = best // targets.shape[1], best % targets.shape[1]
    h, w = crop.shape[-2:]
    error = (targets[0, y, x] - crop[0, 0, 0] - bias[0, y, x]).abs()
    scale = log_scale[0, border : border + h, border : border + w].double()
    clear = masks[0, y, x] > 0
    ranks = [v[clear].argsort().argsort().double() for v in (error, scale)]
    ranks = [r - r.mean() for r in ranks]
    return ((ranks[0] * ranks[1]).sum() / (ranks[0].norm() * ranks[1].norm()).clamp(min=1e-12)).item()


# ---------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------


def scene_scores(sr: Tensor, hr: Tensor, mask: Tensor) -> tuple[float, float]:
    """cPSNR and cSSIM of one (1, H, W) fused image against its HR image and clear mask."""
    return cpsnr(sr[None], hr[None], mask[None]).item(), cssim(sr[None], hr[None], mask[None]).item()


def new_figure(*args, **kwargs):
    """A matplotlib figure and axes from the headless backend (`plt.subplots` arguments)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write a figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_write(path, "figure") as tmp:
            fig.tight_layout()
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------------------------------
# Command-line plumbing
# ---------------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit status 2, for every CLI."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


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


# ---------------------------------------------------------------------------------------
# Atomic writes: a file appears complete under its name, or not at all
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, what: str = "file") -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without error, fsync it and
    rename it to `path`. It is removed in every case. A failing write raises UserError naming
    the file. The temporary name is hidden and ends in `.tmp`, so that a process killed
    mid-write never leaves a file that looks like a checkpoint or an image (writers must not
    infer the format from the name)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError as err:
        raise UserError(f"{path}: cannot write {what} ({err.strerror or err})") from None
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------
# Checkpoints: atomic writes, safe loads
# ---------------------------------------------------------------------------------------

CHECKPOINT_FORMAT = "srkit-checkpoint"


def save_checkpoint(checkpoint: dict, path: str | os.PathLike) -> Path:
    """Write a checkpoint atomically (temporary file in the same folder, fsync, rename)."""
    with atomic_write(path, "checkpoint") as tmp:
        torch.save(checkpoint, tmp)
    return Path(path)


def _fsync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a toolkit checkpoint with weights_only=True; raise CheckpointError on any problem.

    A file that holds pickled Python objects is refused without running their code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()
        detail = next((line for line in first if "GLOBAL" in line or "Unsupported" in line), "")
        raise CheckpointError(
            f"{path}: refused, it holds pickled Python objects that weights_only loading does "
            f"not allow{f' ({detail.strip()})' if detail else ''}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: not a checkpoint of this toolkit (a bare state_dict or another program's file?)"
        )
    return checkpoint


# ---------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------


def charbonnier_loss(sr: Tensor, hr: Tensor, eps: float = 1e-3) -> Tensor:
    """Charbonnier loss mean(sqrt((sr - hr)^2 + eps^2)), a smooth L1 (Lai et al. 2017)."""
    return torch.sqrt((sr - hr).pow(2) + eps * eps).mean()


# torchvision's VGG16 `features` up to relu3_3, in its layout (so its weight files load as-is)
_VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256)
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class LossError(UserError):
    """A loss that cannot be set up (perceptual weights unavailable)."""


class PerceptualLoss(nn.Module):
    """L1 between VGG16 features (relu1_2, relu2_2, relu3_3) of SR and HR, plus a small pixel L1.

    As in the DIY project (Johnson et al. 2016), the pixel term keeps colours and
    brightness, to which the classifier's features are insensitive. The network is frozen.
    """

    taps = (3, 8, 15)

    def __init__(self, state_dict: dict[str, Tensor] | None = None, pixel_weight: float = 0.1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for spec in _VGG16_LAYERS:
            if spec == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, int(spec), 3, padding=1), nn.ReLU(inplace=False)]
                channels = int(spec)
        self.features = nn.Sequential(*layers)
        if state_dict is not None:
            wanted = {k: v for k, v in state_dict.items() if k.startswith("features.")}
            missing = self.load_state_dict(wanted, strict=False).missing_keys
            if missing:
                raise LossError(
                    f"perceptual weights lack {', '.join(missing[:3])} (not a torchvision VGG16?)"
                )
        self.features.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.pixel_weight = pixel_weight

    def train(self, mode: bool = True) -> PerceptualLoss:
        """The feature network always stays in eval mode."""
        return self

    def _features(self, img: Tensor) -> list[Tensor]:
        x = (img.expand(-1, 3, -1, -1) - self.mean) / self.std  # gray -> RGB
        out = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                out.append(x)
        return out

    def forward(self, sr: Tensor, hr: Tensor) -> Tensor:
        loss = self.pixel_weight * F.l1_loss(sr, hr)
        for a, b in zip(self._features(sr), self._features(hr.detach())):
            loss = loss + F.l1_loss(a, b)
        return loss


def perceptual_weights(path: str | None) -> dict[str, Tensor]:
    """torchvision's VGG16 ImageNet weights: from `path`, else downloaded (torch hub cache)."""
    if path:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, pickle.UnpicklingError) as err:
            raise LossError(f"{path}: cannot read perceptual weights ({_first_line(err)})") from None
    try:
        return torch.hub.load_state_dict_from_url(VGG16_URL, map_location="cpu", progress=False)
    except Exception as err:  # any network or cache failure ends in the same advice
        raise LossError(
            f"the perceptual loss needs torchvision's VGG16 weights and they could not be downloaded "
            f"({_first_line(err)}); download {VGG16_URL} elsewhere and pass --perceptual-weights FILE"
        ) from None


def _first_line(err: BaseException) -> str:
    """First line of an exception message, or its type name."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# BT.601 YCbCr (MATLAB rgb2ycbcr) rows for R, G, B in [0, 1]: Y, Cb, Cr without offsets.
_YCBCR = (
    torch.tensor([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255.0
)
CHROMA_WEIGHT = 0.25


def luma_mse_loss(sr: Tensor, hr: Tensor) -> Tensor:
    """MSE in BT.601 YCbCr with Cb and Cr weighted by CHROMA_WEIGHT: the benchmark scores Y
    only, and the chroma term keeps colours right. Plain MSE for other than 3 channels."""
    if sr.shape[-3] != 3:
        return F.mse_loss(sr, hr)
    diff = torch.einsum("ij,bjhw->bihw", _YCBCR.to(sr.device, sr.dtype), sr - hr)
    weights = torch.tensor([1.0, CHROMA_WEIGHT, CHROMA_WEIGHT], device=sr.device, dtype=sr.dtype)
    return (diff.square().mean(dim=(0, 2, 3)) * weights).sum() / weights.sum()


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mse": F.mse_loss,
    "luma": luma_mse_loss,
    "l1": F.l1_loss,
    "charbonnier": charbonnier_loss,
}
LOSS_NAMES = (*LOSSES, "perceptual")


def make_loss(
    name: str, device: torch.device, weights_path: str | None = None
) -> Callable[[Tensor, Tensor], Tensor]:
    """The training loss by name; `perceptual` loads its VGG16 weights (before any training)."""
    if name == "perceptual":
        return PerceptualLoss(perceptual_weights(weights_path)).to(device)
    return LOSSES[name]


# ---------------------------------------------------------------------------------------
# Random state
# ---------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python's random."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global RNG state, as plain types and tensors that weights_only loading accepts."""
    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` saved (CUDA states only where CUDA is there)."""
    import numpy as np

    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
