"""Images in and out (BMP/PNG/JPEG/TIFF, 8 and 16 bits), colour conversions, and the
training patches (random crops with flips/rotations, deterministic per seed and epoch).

Conventions: images are float32 tensors (C, H, W) or (B, C, H, W) with values in [0, 1];
`hr` is the high-resolution image, `lr` its low-resolution version, `scale` the integer
factor between them. HR images are cropped to a multiple of the scale before LR is made.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from utils import DatasetError, ImageError, UserError, atomic_write, first_line

if TYPE_CHECKING:
    from catalog import ImagePair

IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")
MAX_PIXELS = 120_000_000  # decoding more than this (about 1.4 GB as float32 RGB) is refused


# ---------------------------------------------------------------------------------------
# Image I/O
# ---------------------------------------------------------------------------------------


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Tensor:
    """Read BMP/PNG/JPEG/TIFF into a float32 (C, H, W) tensor in [0, 1]; C is 1 or 3.

    8- and 16-bit data keep their precision; RGBA and palette images become RGB; grayscale
    stays one channel; the EXIF orientation is applied. Raises ImageError on any problem.
    """
    return read_image(path, max_pixels)[0]


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> tuple[Tensor, int]:
    """`load_image`, and the bit depth of the file (8 or 16)."""
    image, bits, _ = read_image_and_alpha(path, max_pixels)
    return image, bits


def read_image_and_alpha(
    path: str | os.PathLike, max_pixels: int = MAX_PIXELS
) -> tuple[Tensor, int, Tensor | None]:
    """`read_image`, and the file's alpha channel as a (1, H, W) tensor in [0, 1] (None when it
    has none), from one decoding."""
    path = _check_file(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            array = _read_tiff(path, max_pixels)
        elif _png_bit_depth(path) == 16:
            array = _read_png16(path, max_pixels)
        else:
            array = _read_pil(path, max_pixels)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise ImageError(f"{path}: not a readable image ({first_line(err)})") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as err:
        raise ImageError(f"{path}: corrupt or truncated image ({first_line(err)})") from None
    alpha = None
    if array.ndim == 3 and array.shape[-1] in (2, 4):  # gray + alpha, RGB + alpha
        alpha = _to_tensor(np.ascontiguousarray(array[..., -1]), path)
        array = array[..., :-1]
    return _to_tensor(array, path), 16 if array.dtype == np.uint16 else 8, alpha


def _check_file(path: str | os.PathLike) -> Path:
    """The path, if it names a non-empty file (else an ImageError)."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file")
    return path


def _check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    """Refuse images over the pixel limit before decoding them (decompression bombs)."""
    if width * height > max_pixels:
        raise ImageError(
            f"{path}: {width}x{height} pixels is over the limit of {max_pixels} (possible decompression bomb)"
        )


def _read_pil(path: Path, max_pixels: int) -> np.ndarray:
    """Decode with Pillow: 8-bit images, 16-bit grayscale, palette, alpha (kept as the last
    channel), EXIF orientation."""
    with Image.open(path) as img:
        _check_pixels(path, img.width, img.height, max_pixels)
        img.load()
        return pil_array(ImageOps.exif_transpose(img), str(path))


def pil_array(img: Image.Image, where: str) -> np.ndarray:
    """A Pillow image as the (H, W) or (H, W, C) array `read_image` decodes: uint16 for 16-bit
    grayscale, else uint8 gray or RGB, with alpha last where the image has transparency."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img, dtype=np.uint16)
    if img.mode == "I":  # 32-bit integer grayscale (how Pillow opens some 16-bit files)
        return np.asarray(img, dtype=np.int64).clip(0, 65535).astype(np.uint16)
    if img.mode == "F":
        raise ImageError(f"{where}: floating-point images are not supported")
    alpha = pil_has_alpha(img)
    gray = img.mode in ("1", "L", "LA", "La")
    mode = ("LA" if alpha else "L") if gray else ("RGBA" if alpha else "RGB")
    return np.asarray(img.convert(mode), dtype=np.uint8)


def pil_has_alpha(image: Image.Image) -> bool:
    """Whether a Pillow image has an alpha band or a transparent colour (palette, tRNS)."""
    return "A" in image.getbands() or "transparency" in image.info


def _png_bit_depth(path: Path) -> int | None:
    """Bit depth from a PNG header, or None for files that are not PNG."""
    with open(path, "rb") as f:
        head = f.read(25)
    if len(head) < 25 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return head[24]


def _read_png16(path: Path, max_pixels: int) -> np.ndarray:
    """Decode a 16-bit PNG (Pillow reduces 16-bit RGB to 8 bits, pypng does not)."""
    import png

    reader = png.Reader(filename=str(path))
    width, height, rows, info = reader.asDirect()
    _check_pixels(path, width, height, max_pixels)
    planes = info["planes"]
    array = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    array = array.reshape(height, width, planes)  # alpha, if any, is the last plane
    return array[..., 0] if array.shape[-1] == 1 else array


def _read_tiff(path: Path, max_pixels: int) -> np.ndarray:
    """Decode a TIFF with tifffile (keeps 16-bit RGB and multi-band data)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.pages) > 1:  # a stack (frames, bands, pages): which one is the image?
                raise ImageError(f"{path}: a TIFF of {len(tif.pages)} pages; give one image per file")
            page = tif.pages[0]
            _check_pixels(path, page.imagewidth, page.imagelength, max_pixels)
            array = page.asarray()
            planar = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
    except tifffile.TiffFileError as err:
        raise ImageError(f"{path}: corrupt or not a TIFF ({first_line(err)})") from None
    if planar and array.ndim == 3:  # planes (C, H, W) -> pixels (H, W, C)
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] not in (1, 2, 3, 4):  # 2 and 4: with alpha
        channels = array.shape[-1]
        raise ImageError(f"{path}: a TIFF of {channels} channels; only gray and RGB (+ alpha) are read")
    return array


def _to_tensor(array: np.ndarray, path: Path) -> Tensor:
    """uint8/uint16 (H, W[, C]) array -> float32 (C, H, W) tensor in [0, 1]."""
    if array.dtype == np.uint8:
        peak = 255.0
    elif array.dtype == np.uint16:
        peak = 65535.0
    else:
        raise ImageError(f"{path}: unsupported pixel type {array.dtype}")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or min(array.shape[:2]) < 1:
        raise ImageError(f"{path}: unsupported image layout {array.shape}")
    tensor = torch.from_numpy(array.astype(np.float32) / peak)
    return tensor.permute(2, 0, 1).contiguous()


def save_image(img: Tensor, path: str | os.PathLike, bits: int = 8) -> Path:
    """Write a (C, H, W) image in [0, 1], rounded to 8 or 16 bits (16: PNG/TIFF), atomically."""
    if img.dim() == 4 and img.shape[0] == 1:
        img = img[0]
    if img.dim() != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"expected a (1|3, H, W) image, got {tuple(img.shape)}")
    return save_array(quantize(img, bits), path)


def quantize(img: Tensor, bits: int = 8) -> np.ndarray:
    """A (C, H, W) image in [0, 1] -> the (H, W, C) uint8/uint16 array a file of `bits` holds."""
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    peak, dtype = (65535.0, np.uint16) if bits == 16 else (255.0, np.uint8)
    array = img.detach().float().clamp(0, 1).mul_(peak).round_().cpu().numpy().astype(dtype)
    return array.transpose(1, 2, 0)


def save_array(array: np.ndarray, path: str | os.PathLike, quality: int = 95) -> Path:
    """Write an (H, W, C) uint8/uint16 array (C: 1 gray, 2 gray + alpha, 3 RGB, 4 RGBA; uint16:
    PNG/TIFF) atomically; `quality` for JPEG and WebP."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ImageError(f"{path}: unknown image type (use one of {', '.join(IMAGE_SUFFIXES)})")
    if array.dtype == np.uint16 and suffix not in (".png", ".tif", ".tiff"):
        raise ImageError(f"{path}: 16-bit output needs PNG or TIFF")
    try:
        with atomic_write(path, "image") as tmp:
            _write_array(array, tmp, suffix, quality)
    except UserError as err:
        raise ImageError(str(err)) from None
    return path


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """Width and height from an image file's header, without decoding its pixels."""
    return image_header(path)[:2]


def has_alpha(path: str | os.PathLike) -> bool:
    """Whether an image file has an alpha channel (or a transparent palette), from its header."""
    return image_header(path)[2]


def image_header(path: str | os.PathLike) -> tuple[int, int, bool]:
    """Width, height and whether there is alpha, read from the header without decoding pixels."""
    path = _check_file(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return page.imagewidth, page.imagelength, page.samplesperpixel in (2, 4)
        with Image.open(path) as img:
            return img.width, img.height, pil_has_alpha(img)
    except Exception as err:  # Pillow and tifffile raise many types for a bad header
        raise ImageError(f"{path}: not a readable image ({first_line(err)})") from None


_PIL_FORMATS = {".bmp": "BMP", ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
_PIL_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def _write_array(array: np.ndarray, path: Path, suffix: str, quality: int = 95) -> None:
    """Encode an (H, W, C) uint8/uint16 array to `path` in the format of `suffix`."""
    planes = array.shape[-1]
    if suffix in (".tif", ".tiff"):
        import tifffile

        extra = {"extrasamples": ["unassalpha"]} if planes in (2, 4) else {}
        tifffile.imwrite(path, array[..., 0] if planes == 1 else array, **extra)
    elif array.dtype == np.uint16:
        import png

        height, width = array.shape[:2]
        writer = png.Writer(width, height, greyscale=planes < 3, alpha=planes in (2, 4), bitdepth=16)
        with open(path, "wb") as f:
            writer.write(f, array.reshape(height, width * planes))
    else:
        image = Image.fromarray(array[..., 0] if planes == 1 else array, mode=_PIL_MODES[planes])
        options = {"quality": quality} if suffix in (".jpg", ".jpeg", ".webp") else {}
        image.save(path, format=_PIL_FORMATS[suffix], **options)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def to_channels(img: Tensor, channels: int) -> Tensor:
    """Convert (..., C, H, W) between gray (1) and RGB (3): replicate gray, or take BT.601 Y."""
    have = img.shape[-3]
    if have == channels:
        return img
    if have == 1 and channels == 3:
        return img.expand(*img.shape[:-3], 3, *img.shape[-2:]).contiguous()
    if have == 3 and channels == 1:
        return luma(img)
    raise ValueError(f"cannot convert {have} channels to {channels}")


def luma(rgb: Tensor) -> Tensor:
    """Full-range BT.601 luma Y = 0.299 R + 0.587 G + 0.114 B of (..., 3, H, W), as (..., 1, H, W).
    (The benchmark's Y is MATLAB's studio-range rgb2ycbcr: metrics.rgb_to_y.)"""
    r, g, b = rgb.unbind(-3)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


def rgb_to_ycbcr(rgb: Tensor) -> Tensor:
    """Full-range BT.601 YCbCr (JPEG's) of (..., 3, H, W) in [0, 1]; Y as `to_channels(.., 1)`."""
    r, g, b = rgb.unbind(-3)
    y = luma(rgb)[..., 0, :, :]
    return torch.stack([y, 0.5 + 0.564 * (b - y), 0.5 + 0.713 * (r - y)], dim=-3)


def ycbcr_to_rgb(ycbcr: Tensor) -> Tensor:
    """Inverse of `rgb_to_ycbcr`."""
    y, cb, cr = ycbcr.unbind(-3)
    cb, cr = cb - 0.5, cr - 0.5
    r = y + cr / 0.713
    b = y + cb / 0.564
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    return torch.stack([r, g, b], dim=-3)


# Training patches
# ---------------------------------------------------------------------------------------


def dihedral(img: Tensor, k: int) -> Tensor:
    """One of the 8 flips/90-degree rotations of (..., H, W): k in 0..7."""
    if k & 4:
        img = img.flip(-1)
    return torch.rot90(img, k & 3, dims=(-2, -1))


def undo_dihedral(img: Tensor, k: int) -> Tensor:
    """The inverse of `dihedral(img, k)`."""
    img = torch.rot90(img, -(k & 3), dims=(-2, -1))
    return img.flip(-1) if k & 4 else img


class PatchDataset(Dataset):
    """Pairs of (LR, HR) patches cut from in-memory images, deterministic for a seed.

    Random mode: `patches_per_image` random crops per image per epoch, each with a random
    flip/rotation when `augment`. Grid mode (`grid_stride`): the SRCNN paper's fixed
    sub-images, every `grid_stride` HR pixels (snapped down to a multiple of the scale so
    LR and HR stay aligned). Patch size is in HR pixels and must be a multiple of the scale,
    which the pairs give (all the same).

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
        if small:
            raise DatasetError(f"images smaller than the {patch_size}px patch: {', '.join(small[:5])}")
        self.pairs = list(pairs)
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
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = random.Random(mix_seed(self.seed, epoch, index))
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


def main(argv: list[str] | None = None) -> int:
    """`python data.py fetch NAME...` downloads sets; `python data.py show IMAGE...` reads images."""
    import argparse

    from catalog import BENCHMARKS, SCENE_SETS, canonical_name, resolve_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download named datasets into the cache (or find them)")
    fetch.add_argument("names", nargs="+", help=f"dataset names: {', '.join(BENCHMARKS)}")
    fetch.add_argument("--scale", type=int, nargs="+", default=[2, 3, 4], help="scales to fetch")
    show = sub.add_parser("show", help="read image files and describe them")
    show.add_argument("paths", nargs="+", help="image files")
    args = parser.parse_args(argv)
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
