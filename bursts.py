"""Multi-frame data for PIUnet: bursts of LR frames of one scene, synthetic or real (PROBA-V).

A burst is T single-band LR frames (T, h, w) of one scene, its HR image (1, sh, sw) and the
HR clear mask (1 where the HR pixel may be scored). Real scenes come in the layout of the
PROBA-V super-resolution challenge (Märtens et al., "Super-resolution of PROBA-V images
using convolutional neural networks", 2019): `LR000.png`, `QM000.png` (1 = clear), ...,
`HR.png`, `SM.png` per `imgset*` folder, 16-bit PNGs holding 14-bit values.
"""

from __future__ import annotations

import argparse
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils.data import Dataset

from catalog import SCENE_SETS, canonical_name, resolve_dataset
from data import item_rng, load_pairs, mix_seed
from images import dihedral, load_image, to_channels
from imresize import gaussian_filter, imresize, modcrop
from utils import DatasetError, ImageError

if TYPE_CHECKING:
    from config import TrainConfig


@dataclass
class Burst:
    """T LR frames of one scene (T, h, w), its HR image (1, sh, sw) and the HR clear mask;
    for real scenes also the challenge's baseline upscale and norm."""

    name: str
    frames: Tensor
    hr: Tensor
    mask: Tensor
    baseline: Tensor | None = None  # (1, sh, sw); None: bicubic of the mean of `frames`
    norm: float | None = None  # the challenge's norm (baseline cPSNR) from its norm.csv
    weights: Tensor | None = None  # (T,) the frames' weights in the model's global residual

    def frame_weights(self) -> Tensor:
        """The (T,) weights the model gets with the frames (all 1 when none were set)."""
        return self.weights if self.weights is not None else torch.ones(self.frames.shape[0])

    def baseline_image(self, scale: int) -> Tensor:
        """The multi-frame baseline this scene is scored against, clamped to [0, 1]."""
        baseline = self.baseline if self.baseline is not None else bicubic_of_mean(self.frames, scale)
        return baseline.clamp(0, 1)


@dataclass(frozen=True)
class BurstConfig:
    """How synthetic bursts are degraded from one HR image."""

    frames: int = 9
    scale: int = 3
    max_shift: int = 2  # HR pixels: sub-pixel shifts of the LR frames
    blur: float = 0.0  # extra Gaussian blur (HR pixels) before downsampling
    noise: float = 0.01  # Gaussian noise on the LR frames
    occlusion: float = 0.3  # chance that a frame has an occluded (cloudy) rectangle
    style: str = "plain"  # "probav": PROBA-V-like bursts (synthesize_probav_burst)

    @classmethod
    def from_options(cls, options: TrainConfig) -> BurstConfig:
        """The burst settings of a training configuration (frames, scale, burst_*)."""
        return cls(
            frames=options.frames,
            scale=options.scale,
            max_shift=options.burst_shift,
            blur=options.burst_blur,
            noise=options.burst_noise,
            occlusion=options.burst_occlusion,
            style=options.burst_style,
        )


def synthesize_burst(hr: Tensor, config: BurstConfig, rng: random.Random, name: str = "burst") -> Burst:
    """A synthetic burst of one (1, H + 2m, W + 2m) HR image (m = max_shift; H, W multiples
    of the scale): every frame sees the scene shifted by a random whole number of HR pixels
    (a sub-pixel shift on the LR grid), optionally blurred, bicubic-downsampled, with
    Gaussian noise and, at random, an occluded rectangle (mask 0). The HR target is the
    centre crop, fully clear."""
    m, s = config.max_shift, config.scale
    height, width = hr.shape[-2] - 2 * m, hr.shape[-1] - 2 * m
    crops = []
    for _ in range(config.frames):
        dy, dx = rng.randint(-m, m), rng.randint(-m, m)
        crops.append(hr[:, m + dy : m + dy + height, m + dx : m + dx + width])
    stack = torch.stack(crops)  # (T, 1, H, W)
    if config.blur > 0:
        stack = gaussian_filter(stack, config.blur)
    frames = imresize(stack, size=(height // s, width // s))[:, 0]
    generator = torch.Generator().manual_seed(rng.getrandbits(63))
    frames = frames + config.noise * torch.randn(frames.shape, generator=generator)
    for frame in frames:
        if rng.random() < config.occlusion:
            h, w = frame.shape
            rh, rw = rng.randint(h // 8 + 1, h // 3 + 1), rng.randint(w // 8 + 1, w // 3 + 1)
            top, left = rng.randint(0, h - rh), rng.randint(0, w - rw)
            frame[top : top + rh, left : left + rw] = 1.0  # a bright cloud
    target = hr[:, m : m + height, m : m + width]
    return Burst(name, frames.clamp(0, 1), target, torch.ones_like(target))


# Statistics of the real PROBA-V scenes, measured with `python bursts.py stats PROBAV-sample`
# (LR frames and QM masks of all four scenes; no HR image is used). Values are in [0, 1] of
# the 16-bit PNGs (14-bit data: at most 16383 / 65535 = 0.25).
PROBAV_CONCEALED = (  # concealed fraction of each of the 73 frames (QM = 0)
    0.052, 0.053, 0.043, 0.063, 0.047, 0.06, 0.378, 0.05, 0.041, 0.399, 0.046, 0.039, 0.056, 0.052,
    0.263, 0.288, 0.063, 0.011, 0.026, 0.0, 0.0, 0.347, 0.0, 0.0, 0.0, 0.0, 0.112, 0.005, 0.012,
    0.0, 0.0, 0.0, 0.008, 0.041, 0.0, 0.09, 0.048, 0.283, 0.032, 0.044, 0.054, 0.181, 0.035, 0.008,
    0.313, 0.129, 0.021, 0.017, 0.057, 0.11, 0.044, 0.199, 0.132, 0.028, 0.035, 0.112, 0.007,
    0.015, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.017, 0.0, 0.024, 0.203, 0.0, 0.0, 0.016, 0.127, 0.0,
)  # fmt: skip
PROBAV_MEAN = (0.045, 0.17)  # range of the scenes' mean value over clear pixels (0.049-0.163)
PROBAV_CONTRAST = (0.12, 0.23)  # range of a scene's std / mean (0.13-0.22)
PROBAV_FRAMES = (9, 21)  # frames per scene (16-21 here; the challenge has 9 or more)
PROBAV_GAIN_SPREAD = 0.08  # std of a frame's contrast gain against the frames' median (0.07-0.14)
PROBAV_CLOUD = (1.25, 2.0)  # concealed pixels: this many times the scene mean (1.28-1.95)
PROBAV_LEVELS = 65535  # 16-bit PNG steps


def smooth_field(shape: tuple[int, int], sigma: float, generator: torch.Generator) -> Tensor:
    """A (h, w) random field of zero mean and unit std, Gaussian-smoothed by `sigma` pixels
    (at most a third of the shorter side)."""
    sigma = min(sigma, (min(shape) - 1) / 3)
    field = gaussian_filter(torch.randn(1, 1, *shape, generator=generator), sigma)[0, 0]
    return (field - field.mean()) / field.std().clamp(min=1e-8)


def synthesize_probav_burst(
    hr: Tensor, config: BurstConfig, rng: random.Random, name: str = "burst"
) -> Burst:
    """A PROBA-V-like burst of one (1, H + 2m, W + 2m) natural HR image (m = max_shift):
    the scene is given a PROBA-V brightness and contrast; N frames (PROBAV_FRAMES) each see it
    shifted by whole HR pixels (sub-pixel on the LR grid), blurred by the scene's instrument
    Gaussian (sigma up to `blur` HR pixels) and bicubic-downsampled; each frame then differs
    from the HR date by a contrast gain and a smooth local change (acquisitions on other days,
    larger on cloudier days), gets Gaussian noise (std up to `noise` times the scene's std)
    and clouds covering a fraction drawn from the real frames' QM statistics (bright, QM 0),
    and is quantized to 16-bit steps. The `frames` clearest are kept, concealed pixels filled;
    the weights and the baseline are the challenge's (frames tied at the most clear pixels)."""
    m, s = config.max_shift, config.scale
    height, width = hr.shape[-2] - 2 * m, hr.shape[-1] - 2 * m
    generator = torch.Generator().manual_seed(rng.getrandbits(63))
    mean, contrast = rng.uniform(*PROBAV_MEAN), rng.uniform(*PROBAV_CONTRAST)
    scene = mean + (hr - hr.mean()) / hr.std().clamp(min=1e-3) * contrast * mean
    count = rng.randint(max(PROBAV_FRAMES[0], config.frames), max(PROBAV_FRAMES[1], config.frames))
    crops = []
    for _ in range(count):
        dy, dx = rng.randint(-m, m), rng.randint(-m, m)
        crops.append(scene[:, m + dy : m + dy + height, m + dx : m + dx + width])
    stack = torch.stack(crops)
    sigma = rng.uniform(0.0, config.blur)
    if sigma > 0.05:
        stack = gaussian_filter(stack, sigma)
    frames = imresize(stack, size=(height // s, width // s))[:, 0]
    noise = rng.uniform(config.noise / 5, config.noise) * contrast * mean
    clear = torch.ones_like(frames)
    for i, frame in enumerate(frames):
        concealed = rng.choice(PROBAV_CONCEALED)
        spread = PROBAV_GAIN_SPREAD + concealed
        local = 1 + 0.5 * spread * smooth_field(frame.shape, rng.uniform(2, 8), generator)
        frame.copy_(mean + rng.gauss(1.0, spread) * local * (frame - mean) + rng.gauss(0, 0.02) * mean)
        frame.add_(noise * torch.randn(frame.shape, generator=generator))
        if concealed > 0:
            field = smooth_field(frame.shape, rng.uniform(1, 6), generator)
            cloud = field >= torch.quantile(field.flatten(), 1 - concealed)
            level = mean * rng.uniform(*PROBAV_CLOUD) * (1 + 0.1 * field)
            frame.copy_(torch.where(cloud, level, frame))
            clear[i] = (~cloud).float()
    frames = (frames.clamp(0, 16383 / PROBAV_LEVELS) * PROBAV_LEVELS).round() / PROBAV_LEVELS
    chosen, weights, baseline = challenge_frames(frames, clear, config.frames, s)
    target = scene[:, m : m + height, m : m + width]
    return Burst(name, chosen, target, torch.ones_like(target), baseline, None, weights)


def synthesize(hr: Tensor, config: BurstConfig, rng: random.Random, name: str = "burst") -> Burst:
    """A synthetic burst in the config's style (plain or PROBA-V-like)."""
    if config.style == "probav":
        return synthesize_probav_burst(hr, config, rng, name)
    return synthesize_burst(hr, config, rng, name)


def fill_concealed(frames: Tensor, clear: Tensor) -> Tensor:
    """Frames (T, h, w) whose concealed pixels (clear 0) hold the mean of the other frames'
    clear values there (kept where no other frame is clear), so that clouds do not reach the
    network."""
    total, count = (frames * clear).sum(0), clear.sum(0)
    others = (total - frames * clear) / (count - clear).clamp(min=1)
    return torch.where((clear > 0) | (count - clear <= 0), frames, others)


class BurstDataset(Dataset):
    """Synthetic training bursts cut from in-memory HR images, deterministic for a seed.

    Items are (frames (T, p/s, p/s), weights (T,), hr (1, p, p), mask (1, p, p)) for `patch_size` p in HR
    pixels, each from a random crop with a random flip/rotation; keyed by (epoch, index)
    like `PatchDataset`.
    """

    def __init__(
        self,
        images: Sequence[Tensor],
        config: BurstConfig,
        patch_size: int,
        bursts_per_image: int = 1,
        seed: int = 0,
    ) -> None:
        if patch_size % config.scale:
            raise DatasetError(f"patch size {patch_size} is not a multiple of scale {config.scale}")
        need = patch_size + 2 * config.max_shift
        self.images = [to_channels(img, 1) for img in images if min(img.shape[-2:]) >= need]
        if not self.images:
            raise DatasetError(f"no image is at least {need} pixels on each side")
        self.config, self.patch_size = config, patch_size
        self.bursts_per_image, self.seed = bursts_per_image, seed

    def __len__(self) -> int:
        return len(self.images) * self.bursts_per_image

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        index, rng = item_rng(self.seed, key)
        image = self.images[index // self.bursts_per_image]
        size = self.patch_size + 2 * self.config.max_shift
        top, left = rng.randint(0, image.shape[-2] - size), rng.randint(0, image.shape[-1] - size)
        crop = dihedral(image[:, top : top + size, left : left + size], rng.randrange(8))
        burst = synthesize(crop, self.config, rng)
        return burst.frames, burst.frame_weights(), burst.hr, burst.mask


def synthetic_bursts(images: Sequence[tuple[str, Tensor]], config: BurstConfig, seed: int = 0) -> list[Burst]:
    """One fixed synthetic burst per whole image (held-out evaluation scenes)."""
    bursts = []
    for index, (name, img) in enumerate(images):
        band = modcrop(to_channels(img, 1), config.scale)
        m = config.max_shift
        padded = torch.nn.functional.pad(band[None], (m, m, m, m), mode="reflect")[0]
        bursts.append(synthesize(padded, config, random.Random(mix_seed(seed, index)), name))
    return bursts


PROBAV_SCALE = 3  # PROBA-V: 300 m LR frames, 100 m HR images


def load_probav_scene(folder: str | os.PathLike, frames: int = 9) -> Burst:
    """A PROBA-V scene folder (LR000.png..., QM000.png..., HR.png, SM.png; 16-bit): its
    `frames` clearest LR frames (most clear pixels in QM), repeated in order when it has
    fewer, concealed pixels filled from the other frames; weights 1 on those tied at the most
    clear pixels; the HR image (when present) and its status mask SM; the challenge's baseline
    and, when a norm.csv above the folder lists the scene, its norm."""
    folder = Path(folder)
    lr_paths = sorted(folder.glob("LR*.png"))
    if not lr_paths:
        raise DatasetError(f"{folder}: no LR*.png frames (PROBA-V scene layout expected)")
    first = _band(lr_paths[0])
    stack = torch.cat([first, *(_band(p, first, lr_paths[0].name) for p in lr_paths[1:])])
    clear = torch.stack([_quality_mask(folder / p.name.replace("LR", "QM"), stack[0]) for p in lr_paths])
    chosen, weights, baseline = challenge_frames(stack, clear, frames, PROBAV_SCALE)
    hr = _band(folder / "HR.png") if (folder / "HR.png").exists() else torch.empty(0)
    sm = folder / "SM.png"
    scored = sm.exists() and hr.numel()  # (the challenge's test scenes have an SM but no HR)
    mask = (_band(sm, hr, "HR.png") > 0.5).float() if scored else torch.ones_like(hr)
    return Burst(folder.name, chosen, hr, mask, baseline, challenge_norm(folder), weights)


def _band(path: Path, like: Tensor | None = None, named: str = "") -> Tensor:
    """One single-band image of a PROBA-V scene, (1, h, w), of the size of `like` (the image
    `named`) if given."""
    image = load_image(path)
    if image.shape[0] != 1:
        raise ImageError(f"{path}: {image.shape[0]} bands; the images of a PROBA-V scene are single-band")
    if like is not None:
        _check_same_size(image, path, like, named)
    return image


def _quality_mask(path: Path, frame: Tensor) -> Tensor:
    """A frame's QM as a 0/1 (h, w) clear mask of the frame's size; all clear when the file is missing."""
    if not path.exists():
        return torch.ones_like(frame)
    mask = load_image(path)[0]
    _check_same_size(mask, path, frame, "its frame")
    return (mask > 0.5).float()


def _check_same_size(image: Tensor, path: Path, like: Tensor, named: str) -> None:
    """Refuse an image (read from `path`) whose size is not that of `like` (the image `named`)."""
    if image.shape[-2:] != like.shape[-2:]:
        raise ImageError(f"{path}: {image.shape[-1]}x{image.shape[-2]}, but {named} is "
                         f"{like.shape[-1]}x{like.shape[-2]}")  # fmt: skip


def clearest(clear: Tensor, frames: int) -> list[int]:
    """Indices of the `frames` frames with the most clear pixels (ties: in file order), repeated
    in order when there are fewer; `clear` is (T, h, w) 0/1."""
    counts = clear.flatten(1).sum(1).tolist()
    order = sorted(range(len(counts)), key=lambda i: -counts[i])[:frames]
    return (order * math.ceil(frames / len(order)))[:frames]


def most_clear(clear: Tensor) -> Tensor:
    """(T,) True for the frames that have the most clear pixels (every one tied at the maximum)."""
    counts = clear.flatten(1).sum(1)
    return counts == counts.max()


def challenge_baseline(frames: Tensor, clear: Tensor, scale: int) -> Tensor:
    """The PROBA-V challenge's baseline: MATLAB-compatible bicubic upscale of the mean of the
    frames that have the most clear pixels, (1, sh, sw)."""
    return bicubic_of_mean(frames[most_clear(clear)], scale)


def challenge_frames(stack: Tensor, clear: Tensor, frames: int, scale: int) -> tuple[Tensor, Tensor, Tensor]:
    """What a model gets of a scene's (T, h, w) frames and clear masks, as the challenge chose
    frames: the `frames` clearest with their concealed pixels filled, their weights (1 on those
    tied at the most clear pixels) and the challenge's baseline."""
    order = clearest(clear, frames)
    chosen = fill_concealed(stack[order], clear[order])
    return chosen, most_clear(clear)[order].float(), challenge_baseline(stack, clear, scale)


def challenge_norm(folder: Path) -> float | None:
    """The scene's norm from the challenge's norm.csv (`imgsetNNNN value` lines) in a folder
    above it, or None when there is none."""
    for parent in list(folder.parents)[:3]:
        table = parent / "norm.csv"
        if table.is_file():
            for line in table.read_text().splitlines():
                fields = line.split()
                if len(fields) == 2 and fields[0] == folder.name:
                    return float(fields[1])
            return None
    return None


def load_frames(paths: Sequence[Path]) -> Tensor:
    """Frames of one scene from several image files, as (T, h, w) single-band."""
    frames = [to_channels(load_image(p), 1) for p in paths]
    sizes = {tuple(f.shape[-2:]) for f in frames}
    if len(sizes) > 1:
        raise ImageError(f"the frames differ in size: {', '.join(f'{w}x{h}' for h, w in sorted(sizes))}")
    return torch.cat(frames)


class SceneDataset(Dataset):
    """Aligned random patches of real multi-frame scenes (PROBA-V): (frames, weights, hr, mask) items,
    `patch_size` in HR pixels, keyed by (epoch, index) like `PatchDataset`."""

    def __init__(
        self, bursts: Sequence[Burst], scale: int, patch_size: int, patches_per_scene: int = 1, seed: int = 0
    ) -> None:
        if patch_size % scale:
            raise DatasetError(f"patch size {patch_size} is not a multiple of scale {scale}")
        self.bursts = [b for b in bursts if b.hr.numel() and min(b.hr.shape[-2:]) >= patch_size]
        if not self.bursts:
            raise DatasetError(f"no scene with an HR image of at least {patch_size} pixels")
        self.scale, self.patch_size, self.per_scene, self.seed = scale, patch_size, patches_per_scene, seed

    def __len__(self) -> int:
        return len(self.bursts) * self.per_scene

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        index, rng = item_rng(self.seed, key)
        burst, s, p = self.bursts[index // self.per_scene], self.scale, self.patch_size
        top = rng.randrange((burst.hr.shape[-2] - p) // s + 1) * s
        left = rng.randrange((burst.hr.shape[-1] - p) // s + 1) * s
        frames = burst.frames[:, top // s : (top + p) // s, left // s : (left + p) // s]
        return (
            frames.contiguous(),
            burst.frame_weights(),
            burst.hr[:, top : top + p, left : left + p],
            burst.mask[:, top : top + p, left : left + p],
        )


def probav_layout(folder: str | os.PathLike) -> bool:
    """True for a PROBA-V scene folder (LR000.png ...)."""
    return any(Path(folder).glob("LR*.png"))


def probav_scenes(name: str | os.PathLike) -> list[Path]:
    """The PROBA-V scene folders of a folder (itself, or imgset* folders at any depth, as in
    the challenge's train/RED/imgset0000) or of a named scene set ('PROBAV-sample'); []
    when it is neither."""
    folder = Path(name).expanduser()
    if not folder.is_dir():
        if canonical_name(str(name)) not in SCENE_SETS:
            return []
        folder = resolve_dataset(str(name))
    if probav_layout(folder):
        return [folder]
    return sorted(
        (p for p in folder.rglob("imgset*") if p.is_dir() and probav_layout(p)), key=lambda p: p.name
    )


def burst_training_set(
    name: str, config: BurstConfig, patch_size: int, per_image: int, seed: int, progress: bool = True
) -> Dataset:
    """Training bursts: PROBA-V scenes when `name` is a folder of imgset* scenes, else
    synthetic bursts from the images of a named set or folder."""
    scenes = probav_scenes(name)
    if scenes:
        bursts = [load_probav_scene(p, config.frames) for p in scenes]
        return SceneDataset(bursts, config.scale, patch_size, per_image, seed)
    images = [pair.hr for pair in load_pairs(name, config.scale, progress=progress)]
    return BurstDataset(images, config, patch_size, per_image, seed)


def burst_evaluation_set(
    name: str, config: BurstConfig, progress: bool = True, scored_only: bool = True
) -> list[Burst]:
    """Held-out scenes: the PROBA-V scenes of a folder or named set (those with an HR image
    unless not `scored_only`), or one fixed synthetic burst per image."""
    scenes = probav_scenes(name)
    if scenes:
        bursts = [load_probav_scene(p, config.frames) for p in scenes]
        return [b for b in bursts if b.hr.numel() or not scored_only]
    pairs = load_pairs(name, config.scale, progress=progress)
    return synthetic_bursts([(pair.name, pair.hr) for pair in pairs], config)


def bicubic_of_mean(frames: Tensor, scale: int) -> Tensor:
    """The multi-frame baseline: MATLAB-compatible bicubic upscale of the frames' mean, (1, sh, sw)."""
    mean = frames.mean(dim=0, keepdim=True)
    return imresize(mean, size=(mean.shape[-2] * scale, mean.shape[-1] * scale))


# ---------------------------------------------------------------------------------------
# Statistics of real scenes (the source of the PROBAV_* settings above)
# ---------------------------------------------------------------------------------------


def noise_level(frame: Tensor) -> float:
    """Immerkær's fast estimate of a frame's Gaussian noise std (an upper bound on textured
    scenes): the mean absolute response to a Laplacian-difference kernel."""
    kernel = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]], dtype=frame.dtype)
    response = torch.nn.functional.conv2d(frame[None, None], kernel[None, None])
    return math.sqrt(math.pi / 2) * response.abs().mean().item() / 6


def frame_shift(
    frame: Tensor, reference: Tensor, scale: int = PROBAV_SCALE, search: int = 6
) -> tuple[float, float]:
    """The (dy, dx) shift of a frame against a reference in LR pixels, to 1/scale of a pixel:
    the best normalised correlation of their bicubic upscales over +-search HR pixels."""
    a, b = (imresize(x[None].float(), scale=scale)[0] for x in (frame, reference))
    a, b = (a - a.mean()) / a.std(), (b - b.mean()) / b.std()
    m = search
    core = b[m:-m, m:-m]
    best = max(
        ((a[m + dy : a.shape[0] - m + dy, m + dx : a.shape[1] - m + dx] * core).mean().item(), dy, dx)
        for dy in range(-m, m + 1)
        for dx in range(-m, m + 1)
    )
    return best[1] / scale, best[2] / scale


def scene_statistics(folder: Path) -> dict:
    """What `synthesize_probav_burst` imitates, measured on one scene's LR frames and QM
    masks (never its HR image): value range, concealment, per-frame gain against the
    frames' median, shifts and noise."""
    lr_paths = sorted(folder.glob("LR*.png"))
    stack = torch.cat([load_image(p) for p in lr_paths]).double()
    clear = torch.stack([_quality_mask(folder / p.name.replace("LR", "QM"), stack[0]) for p in lr_paths]) > 0
    values = stack[clear]
    reference = stack.median(dim=0).values
    gains = []
    for frame, ok in zip(stack, clear):
        x, y = reference[ok], frame[ok]
        design = torch.stack([x, torch.ones_like(x)], 1)
        gains.append(torch.linalg.lstsq(design, y[:, None]).solution[0, 0].item())
    return {
        "scene": folder.name,
        "frames": len(lr_paths),
        "mean": values.mean().item(),
        "contrast": (values.std() / values.mean()).item(),
        "concealed": [round(1 - c.double().mean().item(), 3) for c in clear],
        "cloud_over_mean": (stack[~clear].mean() / values.mean()).item() if (~clear).any() else math.nan,
        "gains": gains,
        "shifts": [frame_shift(frame, reference) for frame in stack],
        "noise_over_std": [noise_level(frame) / values.std().item() for frame in stack],
    }


def build_parser() -> argparse.ArgumentParser:
    """The stats command line."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    stats = sub.add_parser("stats", help="measure the LR frames and QM masks of PROBA-V scenes")
    stats.add_argument("dataset", help="a folder in the challenge's layout, or PROBAV-sample")
    stats.add_argument("--json", action="store_true", help="print every figure as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python bursts.py stats SET`: the statistics of a PROBA-V set's frames and masks."""
    import statistics

    args = build_parser().parse_args(argv)
    scenes = probav_scenes(args.dataset)
    if not scenes:
        raise DatasetError(f"{args.dataset}: no PROBA-V scene folders (imgset*) found")
    rows = [scene_statistics(folder) for folder in scenes]
    if args.json:
        import json

        print(json.dumps(rows, indent=1))
        return 0
    for row in rows:
        shifts = [max(abs(dy), abs(dx)) for dy, dx in row["shifts"]]
        gains, concealed = row["gains"], row["concealed"]
        print(
            f"{row['scene']}: {row['frames']} frames, mean {row['mean']:.4f}, "
            f"std/mean {row['contrast']:.3f}, concealed {min(concealed):.3f}-{max(concealed):.3f} "
            f"(clouds {row['cloud_over_mean']:.2f}x the mean), gain spread {statistics.pstdev(gains):.3f} "
            f"({min(gains):.2f}-{max(gains):.2f}), shifts: {sum(s <= 1 for s in shifts)} of "
            f"{len(shifts)} within 1 LR pixel (max {max(shifts):.2f}), noise/std "
            f"{statistics.median(row['noise_over_std']):.3f} (median, Immerkær)"
        )
    concealed = [c for row in rows for c in row["concealed"]]
    print(f"concealed fractions of all {len(concealed)} frames: {concealed}")
    return 0


if __name__ == "__main__":
    from utils import run_cli

    raise SystemExit(run_cli(main))
