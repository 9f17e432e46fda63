"""Image files in and out (BMP, PNG, JPEG, WebP, TIFF; 8 and 16 bits, alpha kept apart),
colour conversions (BT.601 YCbCr), and the eight flips/rotations.

Conventions: images are float32 tensors (C, H, W) or (B, C, H, W) with values in [0, 1].
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from utils import ImageError, UserError, atomic_write, first_line

IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")
SIXTEEN_BIT_SUFFIXES = (".png", ".tif", ".tiff")  # the formats written at 16 bits (JPEG, WebP: 8)
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

    try:
        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        _check_pixels(path, width, height, max_pixels)
        planes = info["planes"]
        array = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    except png.Error as err:  # a bad CRC or chunk, a truncated stream
        raise ImageError(f"{path}: corrupt or truncated image ({first_line(err)})") from None
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
    return save_array(to_file_array(img, bits), path)


def to_file_array(img: Tensor, bits: int = 8) -> np.ndarray:
    """A (C, H, W) image in [0, 1] -> the (H, W, C) uint8/uint16 array a file of `bits` holds,
    for `save_array`. (The protocol's rounding, a float64 tensor to score: metrics.round_to_8bit.)"""
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    peak, dtype = (65535.0, np.uint16) if bits == 16 else (255.0, np.uint8)
    array = img.detach().float().clamp(0, 1).mul_(peak).round_().cpu().numpy().astype(dtype)
    return array.transpose(1, 2, 0)


def output_bits(path: str | os.PathLike, bits: int) -> int:
    """The bit depth an output file at `path` gets for an input of `bits`: 8 where its format
    holds no more."""
    return bits if Path(path).suffix.lower() in SIXTEEN_BIT_SUFFIXES else 8


def save_array(array: np.ndarray, path: str | os.PathLike, quality: int = 95) -> Path:
    """Write an (H, W, C) uint8/uint16 array (C: 1 gray, 2 gray + alpha, 3 RGB, 4 RGBA; uint16:
    PNG/TIFF) atomically; `quality` for JPEG and WebP."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ImageError(f"{path}: unknown image type (use one of {', '.join(IMAGE_SUFFIXES)})")
    if array.dtype == np.uint16 and suffix not in SIXTEEN_BIT_SUFFIXES:
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
                header = page.imagewidth, page.imagelength, page.samplesperpixel in (2, 4)
        else:
            with Image.open(path) as img:
                header = img.width, img.height, pil_has_alpha(img)
    except Exception as err:  # Pillow and tifffile raise many types for a bad header
        raise ImageError(f"{path}: not a readable image ({first_line(err)})") from None
    if not all(isinstance(side, int) and side >= 0 for side in header[:2]):  # a damaged tag's count
        raise ImageError(
            f"{path}: not a readable image (its header gives a size of {header[0]!r} x {header[1]!r})"
        )
    return header


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


# ITU-R BT.601, the one place its coefficients are written. Two forms are in use:
#   full range (JPEG's YCbCr), R, G, B, Y in [0, 1]: Y = 0.299 R + 0.587 G + 0.114 B,
#     Cb = 0.5 + 0.564 (B - Y), Cr = 0.5 + 0.713 (R - Y): `luma`, `rgb_to_ycbcr`, the inference
#     path's Y-only models and gray conversions;
#   studio range as MATLAB's rgb2ycbcr, rows Y, Cb, Cr of R, G, B in [0, 1] giving 0..255 values
#     (the same rows / 255 take R, G, B in [0, 255]), plus the offsets 16, 128, 128: the
#     benchmark protocol's Y (metrics.rgb_to_y) and the luma loss (losses.luma_mse_loss).
BT601_LUMA = (0.299, 0.587, 0.114)
BT601_CHROMA_SCALES = (0.564, 0.713)  # Cb, Cr: 0.5 / (1 - 0.114), 0.5 / (1 - 0.299), rounded
MATLAB_YCBCR = ((65.481, 128.553, 24.966), (-37.797, -74.203, 112.0), (112.0, -93.786, -18.214))
MATLAB_YCBCR_OFFSETS = (16.0, 128.0, 128.0)


def luma(rgb: Tensor) -> Tensor:
    """Full-range BT.601 luma Y = 0.299 R + 0.587 G + 0.114 B of (..., 3, H, W), as (..., 1, H, W).
    (The benchmark's Y is MATLAB's studio-range rgb2ycbcr: metrics.rgb_to_y.)"""
    kr, kg, kb = BT601_LUMA
    r, g, b = rgb.unbind(-3)
    return (kr * r + kg * g + kb * b).unsqueeze(-3)


def rgb_to_ycbcr(rgb: Tensor) -> Tensor:
    """Full-range BT.601 YCbCr (JPEG's) of (..., 3, H, W) in [0, 1]; Y as `to_channels(.., 1)`."""
    cb_scale, cr_scale = BT601_CHROMA_SCALES
    r, g, b = rgb.unbind(-3)
    y = luma(rgb)[..., 0, :, :]
    return torch.stack([y, 0.5 + cb_scale * (b - y), 0.5 + cr_scale * (r - y)], dim=-3)


def ycbcr_to_rgb(ycbcr: Tensor) -> Tensor:
    """Inverse of `rgb_to_ycbcr`."""
    kr, kg, kb = BT601_LUMA
    cb_scale, cr_scale = BT601_CHROMA_SCALES
    y, cb, cr = ycbcr.unbind(-3)
    cb, cr = cb - 0.5, cr - 0.5
    r = y + cr / cr_scale
    b = y + cb / cb_scale
    g = (y - kr * r - kb * b) / kg
    return torch.stack([r, g, b], dim=-3)


# ---------------------------------------------------------------------------------------
# The eight flips and rotations (training augmentation, self-ensemble)
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
