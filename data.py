"""Images in and out, MATLAB-compatible resizing, degradations, datasets and their download.

Conventions: images are float32 tensors (C, H, W) or (B, C, H, W) with values in [0, 1];
`hr` is the high-resolution image, `lr` its low-resolution version, `scale` the integer
factor between them. HR images are cropped to a multiple of the scale before LR is made.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import json
import math
import os
import random
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from utils import DatasetError, ImageError, UserError, atomic_write

IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
MAX_PIXELS = 120_000_000  # decoding more than this (about 1.4 GB as float32 RGB) is refused
DEGRADATIONS = ("bicubic", "bilinear", "nearest")

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
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file")
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
        raise ImageError(f"{path}: not a readable image ({_reason(err)})") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as err:
        raise ImageError(f"{path}: corrupt or truncated image ({_reason(err)})") from None
    return _to_tensor(array, path), 16 if array.dtype == np.uint16 else 8


def _reason(err: BaseException) -> str:
    """The first line of an exception's message, or its type name."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    """Refuse images over the pixel limit before decoding them (decompression bombs)."""
    if width * height > max_pixels:
        raise ImageError(
            f"{path}: {width}x{height} pixels is over the limit of {max_pixels} (possible decompression bomb)"
        )


def _read_pil(path: Path, max_pixels: int) -> np.ndarray:
    """Decode with Pillow: 8-bit images, 16-bit grayscale, palette, alpha, EXIF orientation."""
    with Image.open(path) as img:
        _check_pixels(path, img.width, img.height, max_pixels)
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            return np.asarray(img, dtype=np.uint16)
        if img.mode == "I":  # 32-bit integer grayscale (how Pillow opens some 16-bit files)
            return np.asarray(img, dtype=np.int64).clip(0, 65535).astype(np.uint16)
        if img.mode in ("1", "L"):
            return np.asarray(img.convert("L"), dtype=np.uint8)
        if img.mode in ("LA", "La"):
            return np.asarray(img.convert("L"), dtype=np.uint8)
        if img.mode == "F":
            raise ImageError(f"{path}: floating-point images are not supported")
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


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
    array = array.reshape(height, width, planes)
    if info["alpha"]:
        array = array[..., :-1]
    return array[..., 0] if array.shape[-1] == 1 else array


def _read_tiff(path: Path, max_pixels: int) -> np.ndarray:
    """Decode a TIFF with tifffile (keeps 16-bit RGB and multi-band data)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            _check_pixels(path, page.imagewidth, page.imagelength, max_pixels)
            array = page.asarray()
    except tifffile.TiffFileError as err:
        raise ImageError(f"{path}: corrupt or not a TIFF ({_reason(err)})") from None
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
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
    path = Path(path)
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ImageError(f"{path}: unknown image type (use one of {', '.join(IMAGE_SUFFIXES)})")
    if bits == 16 and suffix not in (".png", ".tif", ".tiff"):
        raise ImageError(f"{path}: 16-bit output needs PNG or TIFF")
    if img.dim() == 4 and img.shape[0] == 1:
        img = img[0]
    if img.dim() != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"expected a (1|3, H, W) image, got {tuple(img.shape)}")
    peak = 65535.0 if bits == 16 else 255.0
    dtype = np.uint16 if bits == 16 else np.uint8
    array = img.detach().float().clamp(0, 1).mul_(peak).round_().cpu().numpy().astype(dtype)
    array = array.transpose(1, 2, 0)
    try:
        with atomic_write(path, "image") as tmp:
            _write_array(array, tmp, suffix)
    except UserError as err:
        raise ImageError(str(err)) from None
    return path


_PIL_FORMATS = {".bmp": "BMP", ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def _write_array(array: np.ndarray, path: Path, suffix: str) -> None:
    """Encode an (H, W, C) uint8/uint16 array to `path` in the format of `suffix`."""
    if suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, array[..., 0] if array.shape[-1] == 1 else array)
    elif array.dtype == np.uint16:
        import png

        height, width, planes = array.shape
        writer = png.Writer(width, height, greyscale=planes == 1, bitdepth=16)
        with open(path, "wb") as f:
            writer.write(f, array.reshape(height, width * planes))
    else:
        mode = "L" if array.shape[-1] == 1 else "RGB"
        Image.fromarray(array[..., 0] if mode == "L" else array, mode=mode).save(
            path, format=_PIL_FORMATS[suffix]
        )


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
        r, g, b = img.unbind(-3)
        return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)
    raise ValueError(f"cannot convert {have} channels to {channels}")


def rgb_to_ycbcr(rgb: Tensor) -> Tensor:
    """Full-range BT.601 YCbCr (JPEG's) of (..., 3, H, W) in [0, 1]; Y as `to_channels(.., 1)`."""
    r, g, b = rgb.unbind(-3)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return torch.stack([y, 0.5 + 0.564 * (b - y), 0.5 + 0.713 * (r - y)], dim=-3)


def ycbcr_to_rgb(ycbcr: Tensor) -> Tensor:
    """Inverse of `rgb_to_ycbcr`."""
    y, cb, cr = ycbcr.unbind(-3)
    cb, cr = cb - 0.5, cr - 0.5
    r = y + cr / 0.713
    b = y + cb / 0.564
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    return torch.stack([r, g, b], dim=-3)


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


@functools.lru_cache(maxsize=32)
@torch.compiler.assume_constant_result  # plain numbers of (factor, method): no graph break
def _phase_kernels(factor: int, method: str) -> tuple[tuple[float, ...], ...]:
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

    Downsampling by `kernel` (MATLAB's imresize: bicubic and bilinear antialiased,
    nearest not), clamped to [0, 1] and rounded to `bits` bits as an LR file would be
    (None keeps full precision).
    """
    if kernel not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kernel!r}; use one of {DEGRADATIONS}")
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"HR {h}x{w} is not a multiple of scale {scale}; modcrop it first")
    lr = imresize(hr, size=(h // scale, w // scale), method=kernel).clamp(0, 1)
    if bits is not None:
        peak = 2**bits - 1
        lr = torch.round(lr * peak) / peak
    return lr


# ---------------------------------------------------------------------------------------
# Named datasets: resolution, manifest, download
# ---------------------------------------------------------------------------------------

BENCHMARKS = ("T91", "BSD200", "Set5", "Set14", "BSD100", "Urban100")
SAMPLE_SETS = ("sample", "sample-train", "sample-test")
UNIONS = {"291": ("T91", "BSD200")}  # VDSR's and FSRCNN's training set
SCENE_SETS = ("PROBAV-sample",)  # multi-frame scenes in the PROBA-V challenge's layout (bursts.py)
MANIFEST_PATH = Path(__file__).with_name("datasets.json")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a named dataset: where it lives under the set root, and how to get it."""

    path: str
    url: str
    size: int
    sha256: str


def manifest_files(name: str, scale: int | None) -> list[RemoteFile]:
    """Files of a named dataset (for one scale when the set has per-scale folders)."""
    entry = json.loads(MANIFEST_PATH.read_text())["sets"][name]
    files = entry.get("files")
    if files is None:
        key = f"x{scale}"
        if key not in entry["files_by_scale"]:
            have = ", ".join(sorted(entry["files_by_scale"]))
            raise DatasetError(f"{name} has no scale x{scale} (it has {have})")
        files = entry["files_by_scale"][key]
    return [RemoteFile(f["path"], f["url"], f["bytes"], f["sha256"]) for f in files]


def canonical_name(name: str) -> str | None:
    """The benchmark's canonical spelling ('set5' -> 'Set5'), or None for other names."""
    for known in BENCHMARKS + SCENE_SETS:
        if name.lower() == known.lower():
            return known
    return None


def cache_dir() -> Path:
    """Per-user folder for downloaded datasets ($SR_CACHE_DIR, else the XDG cache)."""
    if os.environ.get("SR_CACHE_DIR"):
        return Path(os.environ["SR_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "srkit"


def _set_folder(root: Path, name: str, scale: int | None) -> Path:
    """Where a set's images for `scale` live under a root (T91 has no per-scale folders; a
    scene set is one folder of scene folders)."""
    if name in SCENE_SETS:
        return root / name
    files = manifest_files(name, scale)
    return root / Path(files[0].path).parent


def _complete(root: Path, files: Sequence[RemoteFile]) -> bool:
    """True when every file is present under root with its expected size."""
    return all((root / f.path).is_file() and (root / f.path).stat().st_size == f.size for f in files)


def resolve_dataset(
    name: str,
    scale: int | None = None,
    data_root: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = True,
) -> Path:
    """Folder holding the images of a dataset given by name or path.

    Order: `name` as an existing folder (with an `x<scale>` subfolder if it has one);
    `<data_root or $SR_DATA_ROOT>/<name>`; the per-user cache; else a verified download
    into the cache.
    """
    as_path = Path(name).expanduser()
    if as_path.is_dir():
        scaled = as_path / f"x{scale}"
        return scaled if scale is not None and scaled.is_dir() else as_path
    canonical = canonical_name(name)
    if canonical is None:
        known = ", ".join(BENCHMARKS + SCENE_SETS + tuple(UNIONS) + SAMPLE_SETS)
        raise DatasetError(f"{name}: no such folder, and not a known dataset ({known})")
    root = data_root or os.environ.get("SR_DATA_ROOT")
    if root:
        for folder in (
            _set_folder(Path(root).expanduser(), canonical, scale),
            Path(root).expanduser() / canonical,
        ):
            if folder.is_dir() and (
                list_images(folder) or canonical in SCENE_SETS and any(folder.rglob("LR*.png"))
            ):
                return folder
    files = manifest_files(canonical, scale)
    cache = cache_dir()
    if _complete(cache, files):
        return _set_folder(cache, canonical, scale)
    target = _set_folder(cache, canonical, scale)
    if not download:
        raise DatasetError(_missing_message(canonical, root, target))
    try:
        fetch_files(files, cache, progress=progress)
    except DatasetError as err:
        raise DatasetError(f"{err}. {_missing_message(canonical, root, target)}") from None
    return target


def _missing_message(name: str, root: str | os.PathLike | None, target: Path) -> str:
    """How to provide a dataset by hand when it cannot be downloaded."""
    where = f"$SR_DATA_ROOT ({root})" if root else "$SR_DATA_ROOT (unset)"
    return (
        f"{name} is not in {where} nor in the cache; put its images in {target} "
        f"or set SR_DATA_ROOT to a folder holding {name}/ (see README, 'Datasets')"
    )


def fetch_files(files: Sequence[RemoteFile], root: Path, progress: bool = True) -> None:
    """Download the missing files under root, verifying size and SHA-256 of each."""
    from tqdm import tqdm

    missing = [
        f for f in files if not ((root / f.path).is_file() and (root / f.path).stat().st_size == f.size)
    ]
    total = sum(f.size for f in missing)
    with tqdm(total=total, unit="B", unit_scale=True, desc="download", disable=not progress) as bar:
        for remote in missing:
            download_file(remote, root / remote.path, bar.update)


def download_file(remote: RemoteFile, dest: Path, on_bytes: Callable[[int], object] = lambda n: None) -> Path:
    """Fetch one file to dest via `dest.part`, resuming a cut transfer; verify, then rename.

    A file only ever appears under its final name after its size and SHA-256 match, so
    an interrupted or corrupted transfer never passes as complete.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > remote.size:
        part.unlink()
        have = 0
    if have < remote.size:  # a complete .part (killed before its check) needs no request
        _transfer(remote.url, part, have, on_bytes)
    size = part.stat().st_size
    if size != remote.size:
        if size > remote.size:
            part.unlink()
        raise DatasetError(
            f"download of {remote.url} incomplete ({size} of {remote.size} bytes); run again to resume"
        )
    digest = _sha256(part)
    if digest != remote.sha256:
        part.unlink()
        raise DatasetError(f"download of {remote.url} has SHA-256 {digest}, expected {remote.sha256}")
    os.replace(part, dest)
    return dest


def _transfer(url: str, part: Path, have: int, on_bytes: Callable[[int], object]) -> None:
    """Append the rest of `url` to `part` from byte `have` (Range request), or rewrite it whole."""
    request = urllib.request.Request(url, headers={"User-Agent": "srkit"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            if have and response.status != 206:  # server ignored the range: start over
                have = 0
            with open(part, "ab" if have else "wb") as out:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    on_bytes(len(chunk))
                out.flush()
                os.fsync(out.fileno())
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        raise DatasetError(f"download of {url} failed ({_reason(err)})") from None


def _sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------
# Image pairs
# ---------------------------------------------------------------------------------------

# The photos that ship inside scikit-image: training data and a held-back test set with
# no network. The test set has one grayscale image, as Set14 does.
SAMPLE_IMAGES = {
    "train": ("astronaut.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "ihc.png"),
    "test": ("chelsea.png", "camera.png"),
}


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


def sample_paths(split: str = "all") -> list[Path]:
    """Paths of the photos bundled with scikit-image ('train', 'test' or 'all')."""
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    names = SAMPLE_IMAGES["train"] + SAMPLE_IMAGES["test"] if split == "all" else SAMPLE_IMAGES[split]
    paths = [folder / name for name in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"scikit-image lacks its bundled photos {missing} in {folder}")
    return paths


def set_names(name: str) -> list[str]:
    """The sets a training-data name stands for: '291' -> T91, BSD200; 'T91,my/folder' -> both."""
    if Path(name).expanduser().is_dir():
        return [name]
    if name in UNIONS:
        return list(UNIONS[name])
    parts = [part.strip() for part in name.split(",")]
    if len(parts) > 1 and not all(parts):
        raise DatasetError(f"{name!r}: an empty name in the list")
    return [each for part in parts for each in set_names(part)] if len(parts) > 1 else parts


def dataset_sources(
    name: str,
    scale: int,
    data_root: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = True,
) -> list[tuple[Path, Path | None]]:
    """(HR path, given LR path or None) for every image of a named set or folder, or of a
    union of them ('291', 'T91,BSD200', 'T91,my/folder')."""
    names = set_names(name)
    if len(names) > 1:
        return [
            source for part in names for source in dataset_sources(part, scale, data_root, download, progress)
        ]
    if name in SAMPLE_SETS:
        split = {"sample": "all", "sample-train": "train", "sample-test": "test"}[name]
        return [(p, None) for p in sample_paths(split)]
    folder = resolve_dataset(name, scale, data_root=data_root, download=download, progress=progress)
    paths = list_images(folder)
    hr_paths = [p for p in paths if re.search(r"_HR$", p.stem)]
    if hr_paths:
        pairs = []
        for hr in hr_paths:
            lr = next((p for p in paths if p.stem == hr.stem[:-2] + "LR"), None)
            if lr is None:
                raise DatasetError(f"{hr}: no matching *_LR image beside it")
            pairs.append((hr, lr))
        return pairs
    if not paths:
        raise DatasetError(f"{folder}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return [(p, None) for p in paths]


def load_pairs(
    name: str,
    scale: int,
    degradations: Sequence[str] = ("bicubic",),
    channels: int | None = None,
    data_root: str | os.PathLike | None = None,
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
    for hr_path, lr_path in dataset_sources(name, scale, data_root, download, progress):
        hr = modcrop(load_image(hr_path), scale)
        if channels is not None:
            hr = to_channels(hr, channels)
        if min(hr.shape[-2:]) < scale:
            raise DatasetError(f"{hr_path}: too small for scale x{scale}")
        lrs = []
        for kernel in degradations:
            if kernel == "bicubic" and lr_path is not None:
                lr = load_image(lr_path)
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
    LR and HR stay aligned). Patch size is in HR pixels and must be a multiple of the scale.

    Items are indexed by (epoch, index), as `PatchSampler` yields them, so the crops of an
    epoch do not depend on DataLoader workers; a plain int index means epoch 0.
    """

    def __init__(
        self,
        pairs: Sequence[ImagePair],
        scale: int,
        patch_size: int,
        patches_per_image: int = 1,
        augment: bool = True,
        seed: int = 0,
        grid_stride: int | None = None,
    ) -> None:
        if patch_size % scale:
            raise DatasetError(f"patch size {patch_size} is not a multiple of scale {scale}")
        small = [p.name for p in pairs if min(p.hr.shape[-2:]) < patch_size]
        if small:
            raise DatasetError(f"images smaller than the {patch_size}px patch: {', '.join(small[:5])}")
        if not pairs:
            raise DatasetError("no images to cut patches from")
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
