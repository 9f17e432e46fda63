"""Using a trained checkpoint from Python: load it once, then upscale tensors, PIL images or
numpy arrays with the same tiling, precision and channel handling as `super_resolve.py`.

    from srkit import SuperResolver

    sr = SuperResolver("checkpoints/edsr_x3.pth")   # device="cuda" for a GPU
    big = sr.upscale(Image.open("lr.png"))                 # PIL in, PIL out (alpha kept)
    array = sr.upscale(np.asarray(...))                    # uint8/uint16 (H, W[, C]) in, same out
    tensor = sr.upscale(torch.rand(3, 64, 64))             # float (C, H, W) / (B, C, H, W) in [0, 1]
    SuperResolver("checkpoints/s2_20m_x2.pth").upscale_file("bands.tif", "sr.tif")  # multispectral
    record = sr.evaluate("Set5")                           # PSNR/SSIM by the protocol, as --dataset --json

Errors are `utils.UserError` subclasses with a one-line message (a missing or wrong kind of
checkpoint, an unavailable device, an image the model cannot take).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from checkpoint import load_checkpoint
from data import load_pairs
from evaluation import check_size, evaluate_pairs, protocol_note, set_record
from images import image_size, output_bits, pil_array, read_image_and_alpha, to_file_array
from imresize import upscale as bicubic_upscale
from inference import Upscaler, check_memory, tiled_apply
from model import SINGLE_IMAGE
from multispectral import Radiometry, to_dtype, upscale_raster
from rasters import raster_header, raster_input, save_output
from runtime import parse_device
from utils import CheckpointError, ImageError, check_outputs, first_line

Picture = Tensor | np.ndarray | Image.Image


class SuperResolver:
    """A single-image checkpoint loaded once, ready to upscale images of any size."""

    def __init__(
        self,
        checkpoint: str | Path,
        device: str = "cpu",
        tile: int = 256,
        tile_overlap: int = 16,
        amp: bool | None = None,
        self_ensemble: bool = False,
    ) -> None:
        """`device`: cpu, cuda, cuda:N or mps; `amp` None: bf16 on a GPU that has it, as the CLI."""
        loaded = load_checkpoint(checkpoint)
        if loaded.get("kind", SINGLE_IMAGE) != SINGLE_IMAGE:
            raise CheckpointError(f"{checkpoint}: a {loaded.get('kind')} checkpoint; SuperResolver takes "
                                  "single-image models (super_resolve.py runs bursts)")  # fmt: skip
        if tile < 8 or tile_overlap < 0:
            raise ImageError(
                f"tile must be at least 8 and tile_overlap at least 0, got {tile}, {tile_overlap}"
            )
        self.upscaler = Upscaler.from_checkpoint(
            loaded, parse_device(device), tile, tile_overlap, amp, self_ensemble
        )
        self.scale = self.upscaler.scale
        self.name = self.upscaler.name
        self.checkpoint = str(checkpoint)
        radiometry = loaded.get("radiometry")
        self.radiometry = Radiometry.from_dict(radiometry) if radiometry else None

    def upscale(self, image: Picture) -> Picture:
        """The SR of `image`, in its own kind: a float tensor (C, H, W) or (B, C, H, W) in [0, 1];
        a uint8/uint16 numpy array (H, W) or (H, W, C), rounded to its own depth; or a PIL
        image (gray, RGB, RGBA: alpha upscaled by bicubic)."""
        if self.radiometry is not None:
            return self._upscale_bands(image)
        if isinstance(image, Image.Image):
            return self._upscale_pil(image)
        if isinstance(image, np.ndarray):
            return self._upscale_array(image)
        if isinstance(image, Tensor):
            return self._upscale_tensor(image)
        raise ImageError(
            f"upscale takes a torch tensor, numpy array or PIL image, not {type(image).__name__}"
        )

    __call__ = upscale

    def upscale_file(self, lr: str | Path, sr: str | Path, overwrite: bool = False) -> Path:
        """Super-resolve an image file into `sr` as `super_resolve.py` writes it (8 or 16 bits as
        the input, alpha upscaled by bicubic); a georeferenced raster into a .tif becomes a
        GeoTIFF on its grid made `scale` times finer, its CRS, nodata and band names kept. An
        existing `sr` is replaced only with `overwrite`."""
        lr_path, sr_path = Path(lr), Path(sr)
        check_outputs([sr_path], [lr_path], overwrite)
        if self.radiometry is not None:
            header = raster_header(lr_path)
            self.radiometry.check(header, f"{self.checkpoint} ({self.name} x{self.scale})")
            radiometry = self.radiometry.for_raster(header)  # the units its product states, if any
            return upscale_raster(self.upscaler.upscale_tile, header, sr_path, radiometry, self.scale,
                                  self.upscaler.tile, self.upscaler.overlap)  # fmt: skip
        check_memory(str(lr_path), *image_size(lr_path), self.scale)
        image, bits, alpha = read_image_and_alpha(lr_path)
        check_size(image, str(lr_path))
        source = raster_input(lr_path, image, bits)
        bits = output_bits(sr_path, bits)
        array = self.upscaler.to_array(source.image, bits)
        if alpha is not None:
            array = np.concatenate([array, self._upscaled_alpha(alpha, bits)], axis=-1)
        return save_output(array, sr_path, source, self.scale)

    def evaluate(self, dataset: str, shave: int | None = None) -> dict:
        """Score the model on a benchmark set (a name such as Set5, or a folder) by the protocol:
        the record `super_resolve.py --dataset NAME --json` prints (each image, the mean)."""
        pairs = load_pairs(dataset, self.scale, progress=False)
        border = self.scale if shave is None else shave
        rows, _ = evaluate_pairs(self.upscaler, pairs, border)
        return set_record(
            rows,
            checkpoint=self.checkpoint,
            model=self.name,
            scale=self.scale,
            dataset=dataset,
            protocol=protocol_note(self.scale, shave),
            self_ensemble=self.upscaler.self_ensemble,
            shave=shave,
        )

    def _upscale_bands(self, image: Picture) -> np.ndarray:
        """A multispectral model on a (bands, H, W) numpy array of the pixel type it was trained
        on, in its units: the SR array in the same type and units."""
        radiometry, model = self.radiometry, f"{self.name} x{self.scale}"
        bands = ", ".join(radiometry.bands)
        wanted = f"a ({len(radiometry.bands)}, H, W) {radiometry.dtype} numpy array ({bands})"
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.dtype.name != radiometry.dtype:
            kind = (
                f"{image.dtype.name} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            )
            raise ImageError(f"{model} takes {wanted}, not {kind}")
        if image.shape[0] != len(radiometry.bands):
            raise ImageError(f"{image.shape[0]} bands, but {model} takes {wanted}")
        values = radiometry.to_model(torch.from_numpy(image.astype(np.float32)))
        self._check(values, "the array")
        upscaler = self.upscaler
        sr = tiled_apply(upscaler.upscale_tile, values, self.scale, upscaler.tile, upscaler.overlap)
        return to_dtype(radiometry.to_dn(sr), radiometry.dtype)

    def _upscale_tensor(self, image: Tensor) -> Tensor:
        if not image.is_floating_point() or image.dim() not in (3, 4):
            raise ImageError(f"a tensor image is float (C, H, W) or (B, C, H, W) in [0, 1], got "
                             f"{image.dtype} {tuple(image.shape)}")  # fmt: skip
        if image.dim() == 4 and not len(image):
            raise ImageError(f"an empty batch {tuple(image.shape)}: nothing to upscale")
        items = image if image.dim() == 4 else image[None]
        for item in items:
            self._check(item, "the tensor image")
        sr = torch.stack([self.upscaler(item.float().cpu()) for item in items])
        return (sr if image.dim() == 4 else sr[0]).to(device=image.device, dtype=image.dtype)

    def _check(self, image: Tensor, where: str) -> None:
        """Refuse, as the CLI does, an image too small to upscale, one whose output will not fit in
        memory, and one that holds NaN or infinity."""
        check_size(image, where)
        check_memory(where, image.shape[-1], image.shape[-2], self.scale)
        if not torch.isfinite(image).all():
            raise ImageError(f"{where}: holds NaN or infinite values")

    def _upscale_array(self, array: np.ndarray) -> np.ndarray:
        if array.dtype not in (np.uint8, np.uint16) or array.ndim not in (2, 3):
            raise ImageError(
                f"a numpy image is uint8/uint16 (H, W) or (H, W, C), got {array.dtype} {array.shape}"
            )
        bits = 16 if array.dtype == np.uint16 else 8
        planes = array[..., None] if array.ndim == 2 else array
        if planes.shape[-1] not in (1, 2, 3, 4):
            raise ImageError(f"a numpy image has 1 to 4 channels, got {planes.shape[-1]}")
        check_size(torch.empty(planes.shape[:2]), "the numpy image")
        check_memory("the numpy image", planes.shape[1], planes.shape[0], self.scale)
        image = torch.from_numpy(planes.astype(np.float32) / (65535.0 if bits == 16 else 255.0))
        image = image.permute(2, 0, 1)
        color, alpha = (image[:-1], image[-1:]) if image.shape[0] in (2, 4) else (image, None)
        out = self.upscaler.to_array(color.contiguous(), bits)
        if alpha is not None:
            out = np.concatenate([out, self._upscaled_alpha(alpha, bits)], axis=-1)
        return out[..., 0] if array.ndim == 2 else out

    def _upscaled_alpha(self, alpha: Tensor, bits: int) -> np.ndarray:
        """An alpha channel (1, H, W) in [0, 1] upscaled by bicubic, as the (H, W, 1) array of `bits`."""
        return to_file_array(bicubic_upscale(alpha, self.scale).clamp(0, 1), bits)

    def _upscale_pil(self, image: Image.Image) -> Image.Image:
        """Decoded as a file is by `read_image`: shown upright (EXIF orientation), 16-bit gray stays
        16-bit, transparency kept."""
        if 0 in image.size:
            raise ImageError(f"the PIL image is {image.width}x{image.height}: nothing to upscale")
        check_memory("the PIL image", image.width, image.height, self.scale)
        try:
            array = pil_array(ImageOps.exif_transpose(image), "the PIL image")
        except (OSError, ValueError, SyntaxError, struct.error) as err:  # Pillow's truncated or bad data
            raise ImageError(f"the PIL image cannot be decoded ({first_line(err)})") from None
        return Image.fromarray(self._upscale_array(array))
