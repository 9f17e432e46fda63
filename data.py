"""Training data: HR/LR image pairs of a dataset (with scale augmentation), and the training
patches cut from them (random crops with flips/rotations, deterministic per seed and epoch);
`python data.py fetch` downloads the named sets ahead of time.

Conventions: images are float32 tensors (C, H, W) or (B, C, H, W) with values in [0, 1];
`hr` is the high-resolution image, `lr` its low-resolution version, `scale` the integer
factor between them. HR images are cropped to a multiple of the scale before LR is made.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from catalog import BENCHMARKS, SCENE_SETS, canonical_name, dataset_sources, resolve_dataset
from images import dihedral, load_image, to_channels
from imresize import DEGRADATIONS, degrade, imresize, modcrop
from utils import DatasetError

# ---------------------------------------------------------------------------------------
# Image pairs
# ---------------------------------------------------------------------------------------


@dataclass
class ImagePair:
    """An HR image and its LR version(s): one per degradation kernel in use."""

    name: str
    hr: Tensor
    lrs: tuple[Tensor, ...]

    @property
    def lr(self) -> Tensor:
        """The first (usually only) LR version."""
        return self.lrs[0]

    @property
    def scale(self) -> int:
        """The SR factor between the HR image and its LR versions."""
        return self.hr.shape[-1] // self.lrs[0].shape[-1]


def load_pairs(
    name: str,
    scale: int,
    degradations: Sequence[str] = ("bicubic",),
    channels: int | None = None,
    download: bool = True,
    progress: bool = True,
) -> list[ImagePair]:
    """Decode a dataset into memory as HR/LR pairs.

    A given LR image (SelfExSR layout) is used for the bicubic degradation; other kernels,
    and sets without LR images, get LR made from the HR image cropped to a multiple of
    `scale`. `channels` (1 or 3) converts every image; None keeps each as it is.
    """
    for kernel in degradations:
        if kernel not in DEGRADATIONS:
            raise DatasetError(f"unknown degradation {kernel!r}; use one of {DEGRADATIONS}")
    pairs = []
    for hr_path, lr_path in dataset_sources(name, scale, None, download, progress):
        image = load_image(hr_path)
        hr = modcrop(image, scale)
        if channels is not None:
            hr = to_channels(hr, channels)
        if min(hr.shape[-2:]) < scale:
            raise DatasetError(f"{hr_path}: too small for scale x{scale}")
        lrs = []
        for kernel in degradations:
            if kernel == "bicubic" and lr_path is not None:
                lr = load_image(lr_path)
                if lr.shape[0] != image.shape[0]:  # pairs from two sensors: never guess
                    raise DatasetError(f"{lr_path}: {lr.shape[0]} channels, but its HR image {hr_path.name} "
                                       f"has {image.shape[0]}")  # fmt: skip
                lr = to_channels(lr, hr.shape[0])
                if tuple(lr.shape[-2:]) != (hr.shape[-2] // scale, hr.shape[-1] // scale):
                    raise DatasetError(
                        f"{lr_path}: {lr.shape[-1]}x{lr.shape[-2]} is not HR "
                        f"{hr.shape[-1]}x{hr.shape[-2]} divided by {scale}"
                    )
            else:
                lr = degrade(hr, scale, kernel)
            lrs.append(lr)
        pairs.append(ImagePair(hr_path.stem, hr, tuple(lrs)))
    return pairs


def rescaled_pairs(
    pairs: Sequence[ImagePair],
    factors: Sequence[float],
    scale: int,
    degradations: Sequence[str] = ("bicubic",),
    min_size: int = 1,
) -> list[ImagePair]:
    """Every pair at each factor (1: the pair itself; below 1: the HR image shrunk, with its own LR).

    The scale augmentation of FSRCNN and VDSR: the HR copy is MATLAB-bicubic resized,
    rounded to 8 bits as a saved image would be (after any conversion to Y, where VDSR
    rounds in RGB), and cropped to a multiple of `scale`; its LR versions are made with
    `degradations`. Copies smaller than `min_size` pixels on a side are left out; a factor
    given twice counts once.
    """
    factors = list(dict.fromkeys(float(f) for f in factors))
    for factor in factors:
        if not 0 < factor <= 1:
            raise DatasetError(f"scale-augmentation factor {factor:g} is not in (0, 1]")
    out = list(pairs) if 1 in factors else []
    for factor in (f for f in factors if f != 1):
        for pair in pairs:
            hr = imresize(pair.hr, float(factor)).clamp(0, 1)
            hr = modcrop(torch.round(hr * 255) / 255, scale)
            if min(hr.shape[-2:]) < max(min_size, scale):
                continue
            lrs = tuple(degrade(hr, scale, kernel) for kernel in degradations)
            out.append(ImagePair(f"{pair.name}@{factor:g}", hr, lrs))
    return out


# ---------------------------------------------------------------------------------------
# Training patches
# ---------------------------------------------------------------------------------------


class PatchDataset(Dataset):
    """Pairs of (LR, HR) patches cut from in-memory images, deterministic for a seed.

    Random mode: `patches_per_image` random crops per image per epoch, each with a random
    flip/rotation when `augment`. Grid mode (`grid_stride`): the SRCNN paper's fixed
    sub-images, every `grid_stride` HR pixels (snapped down to a multiple of the scale so
    LR and HR stay aligned). Patch size is in HR pixels and must be a multiple of the scale,
    which the pairs give (all the same). Images smaller than a patch are refused, or left out
    with `skip_small` (their names in `left_out`).

    Items are indexed by (epoch, index), as `PatchSampler` yields them, so the crops of an
    epoch do not depend on DataLoader workers; a plain int index means epoch 0.
    """

    def __init__(
        self,
        pairs: Sequence[ImagePair],
        patch_size: int,
        patches_per_image: int = 1,
        augment: bool = True,
        seed: int = 0,
        grid_stride: int | None = None,
        skip_small: bool = False,
    ) -> None:
        if not pairs:
            raise DatasetError("no images to cut patches from")
        scales = {pair.scale for pair in pairs}
        if len(scales) > 1:
            raise DatasetError(f"image pairs of different scales ({sorted(scales)}) in one dataset")
        scale = scales.pop()
        if patch_size % scale:
            raise DatasetError(f"patch size {patch_size} is not a multiple of scale {scale}")
        small = [p.name for p in pairs if min(p.hr.shape[-2:]) < patch_size]
        if small and (not skip_small or len(small) == len(pairs)):
            raise DatasetError(f"images smaller than the {patch_size}px patch: {', '.join(small[:5])}"
                               + (" (all of them)" if skip_small else ""))  # fmt: skip
        self.left_out = small  # the images too small for a patch, with skip_small
        self.pairs = [p for p in pairs if min(p.hr.shape[-2:]) >= patch_size]
        self.scale, self.patch_size = scale, patch_size
        self.patches_per_image = patches_per_image
        self.augment, self.seed = augment, seed
        self.grid = self._grid(grid_stride) if grid_stride else None

    def _grid(self, stride: int) -> list[tuple[int, int, int]]:
        """(image, top, left) of every fixed sub-image, in HR pixels."""
        cells = []
        for i, pair in enumerate(self.pairs):
            h, w = pair.hr.shape[-2:]
            for top in range(0, h - self.patch_size + 1, stride):
                for left in range(0, w - self.patch_size + 1, stride):
                    cells.append((i, top - top % self.scale, left - left % self.scale))
        return cells

    def __len__(self) -> int:
        return len(self.grid) if self.grid is not None else len(self.pairs) * self.patches_per_image

    def _choose(self, key: int | tuple[int, int]) -> tuple[int, int, int, int, int]:
        """(image, top, left, LR variant, transform) of one item, from (seed, epoch, index) alone."""
        index, rng = item_rng(self.seed, key)
        if self.grid is not None:
            image, top, left = self.grid[index]
        else:
            image = index // self.patches_per_image
            h, w = self.pairs[image].hr.shape[-2:]
            top = rng.randrange((h - self.patch_size) // self.scale + 1) * self.scale
            left = rng.randrange((w - self.patch_size) // self.scale + 1) * self.scale
        variant = rng.randrange(len(self.pairs[image].lrs))
        transform = rng.randrange(8) if self.augment else 0
        return image, top, left, variant, transform

    def _crop(self, image: int, top: int, left: int, variant: int) -> tuple[Tensor, Tensor]:
        """The aligned LR and HR crops at an HR position."""
        pair, s, p = self.pairs[image], self.scale, self.patch_size
        hr = pair.hr[:, top : top + p, left : left + p]
        lr = pair.lrs[variant][:, top // s : (top + p) // s, left // s : (left + p) // s]
        return lr, hr

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Tensor]:
        image, top, left, variant, transform = self._choose(key)
        lr, hr = self._crop(image, top, left, variant)
        return dihedral(lr, transform).contiguous(), dihedral(hr, transform).contiguous()

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> list[tuple[Tensor, Tensor]]:
        """A batch of items, equal to [self[k] for k in keys], transformed group-wise for speed."""
        choices = [self._choose(key) for key in keys]
        crops = [self._crop(*choice[:4]) for choice in choices]
        lr = torch.stack([c[0] for c in crops])
        hr = torch.stack([c[1] for c in crops])
        transforms = torch.tensor([choice[4] for choice in choices])
        for k in transforms.unique().tolist():
            if k:
                rows = (transforms == k).nonzero().flatten()
                lr[rows] = dihedral(lr[rows], k)
                hr[rows] = dihedral(hr[rows], k)
        return list(zip(lr.unbind(0), hr.unbind(0)))


def mix_seed(*values: int) -> int:
    """A well-mixed 64-bit integer from a few integers (splitmix64 steps), to seed an RNG."""
    state = 0
    for value in values:
        state = (state + (value & 0xFFFFFFFFFFFFFFFF) + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        state = z ^ (z >> 31)
    return state


def item_rng(seed: int, key: int | tuple[int, int]) -> tuple[int, random.Random]:
    """A dataset item's index and its own RNG, from the dataset's seed and the item's key:
    (epoch, index) as `PatchSampler` yields, or a bare index (epoch 0). The stream depends on
    (seed, epoch, index) alone, so workers, ranks and resumed runs draw the same items."""
    epoch, index = key if isinstance(key, tuple) else (0, key)
    return index, random.Random(mix_seed(seed, epoch, index))


class PatchSampler(Sampler):
    """Yields (epoch, index) keys: a seeded shuffle per epoch, split across `world` ranks.

    `start` skips the first keys of this rank's share of the epoch (to continue an epoch
    that was interrupted); `set_epoch` resets it.
    """

    def __init__(
        self, length: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world: int = 1
    ) -> None:
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.rank, self.world = rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Choose the epoch whose order and crops the next iteration yields, from key `start` on."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return math.ceil(self.length / self.world) - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        share = math.ceil(self.length / self.world)
        order += order[: share * self.world - self.length]  # pad so every rank gets as many
        for index in order[self.rank :: self.world][self.start :]:
            yield (self.epoch, index)


# ---------------------------------------------------------------------------------------
# Command line: fetch datasets ahead of time, describe image files
# ---------------------------------------------------------------------------------------


def _describe(path: str) -> str:
    """One line about an image file: size, channels, value range."""
    img = load_image(path)
    c, h, w = img.shape
    kind = {1: "gray", 3: "RGB"}.get(c, f"{c}-band")
    return f"{path}: {w}x{h} {kind}, values {img.min():.4f}..{img.max():.4f}"


def build_parser() -> argparse.ArgumentParser:
    """The fetch / show command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download named datasets into the cache (or find them)")
    fetch.add_argument("names", nargs="+", help=f"dataset names: {', '.join(BENCHMARKS)}")
    fetch.add_argument("--scale", type=int, nargs="+", default=[2, 3, 4], help="scales to fetch")
    show = sub.add_parser("show", help="read image files and describe them")
    show.add_argument("paths", nargs="+", help="image files")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python data.py fetch NAME...` downloads sets; `python data.py show IMAGE...` reads images."""
    args = build_parser().parse_args(argv)
    if args.command == "fetch":
        for name in args.names:
            scales = [None] if canonical_name(name) in ("T91", "BSD200", *SCENE_SETS) else args.scale
            for scale in scales:
                print(f"{name}{'' if scale is None else f' x{scale}'}: {resolve_dataset(name, scale)}")
    else:
        for path in args.paths:
            print(_describe(path))
    return 0


if __name__ == "__main__":
    from utils import run_cli

    raise SystemExit(run_cli(main))
