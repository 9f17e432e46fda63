"""Applying a trained model to images of any size: overlapping tiles, the device, channel
handling and test-time self-ensemble (`Upscaler`); ONNX export of single-image models and
running such a file with onnxruntime (`OnnxModel`)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from images import dihedral, rgb_to_ycbcr, to_channels, to_file_array, undo_dihedral, ycbcr_to_rgb
from imresize import imresize
from model import SCALES, load_model
from utils import CheckpointError, ImageError, UserError, atomic_write, first_line, memory_available

MIN_TILE = 8  # LR pixels: exported models need at least 3, and slivers waste work
Box = tuple[int, int, int, int]  # top, left, bottom, right


# Peak memory of super-resolving one image beyond the model and its tiles' work (RESERVE_BYTES):
# per input pixel, the decoded file and its float32 copy; per output pixel, the output in its
# final form (8-bit RGB: 3 bytes, and Pillow's copy while encoding, 4 more; 16-bit: 6 bytes,
# encoded row by row); scoring against a ground truth adds three float32 RGB images.
INPUT_BYTES, OUTPUT_BYTES, SCORING_BYTES = 3 * 2 + 3 * 4, 3 + 4, 3 * 3 * 4
RESERVE_BYTES = 1 << 30


def check_memory(where: str, width: int, height: int, scale: float, scoring: bool = False) -> None:
    """Refuse, before decoding, an input whose x`scale` output will not fit in the memory this
    process can still allocate (`utils.memory_available`): the input cap follows from the bound."""
    available = memory_available()
    per_output = OUTPUT_BYTES + (SCORING_BYTES if scoring else 0)
    need = RESERVE_BYTES + width * height * (INPUT_BYTES + per_output * scale * scale)
    if available is not None and need > available:
        cap = max(available - RESERVE_BYTES, 0) // (INPUT_BYTES + per_output * scale * scale)  # pixels
        raise ImageError(
            f"{where}: {width}x{height} at x{scale:g} needs about {need / 2**30:.1f} GiB, "
            f"{available / 2**30:.1f} GiB are free (inputs up to {cap / 1e6:.1f} MP fit); split the image"
        )


def tile_boxes(height: int, width: int, tile: int, overlap: int) -> list[tuple[Box, Box]]:
    """(crop, keep) boxes (top, left, bottom, right) in LR pixels: each tile of `tile` pixels,
    extended by `overlap` on every side that has a neighbour (never to a sliver)."""
    boxes = []
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            t0, l0 = max(top - overlap, 0), max(left - overlap, 0)
            b0, r0 = min(bottom + overlap, height), min(right + overlap, width)
            t0, l0 = max(0, min(t0, b0 - MIN_TILE)), max(0, min(l0, r0 - MIN_TILE))  # no sliver tiles
            boxes.append(((t0, l0, b0, r0), (top, left, bottom, right)))
    return boxes


def tiled_apply(
    fn: Callable[[Tensor], Tensor],
    lr: Tensor,
    scale: int,
    tile: int = 256,
    overlap: int = 16,
    bits: int | None = None,
    progress: str | None = None,
) -> Tensor | np.ndarray:
    """Apply `fn` (an LR crop (..., C, h, w) -> its x`scale` SR) to `lr` in overlapping tiles,
    keeping the centre of each, so that seams are invisible where `fn`'s reach fits in the
    overlap: the result then equals `fn(lr)`.

    Returns a float tensor on lr's device, or with `bits` (8 or 16) the (H, W, C) uint8/uint16
    array of the output file, each tile rounded into it as it comes: no float copy of the
    whole output exists, so memory is the tiles' work plus the output in its final form.
    `progress` names a progress bar over the tiles (shown when there are several).
    """
    from tqdm import tqdm

    height, width = lr.shape[-2:]
    boxes = tile_boxes(height, width, tile, overlap)
    out = None
    for (t0, l0, b0, r0), (top, left, bottom, right) in tqdm(
        boxes, desc=progress, disable=progress is None or len(boxes) == 1, leave=False, unit="tile"
    ):
        sr = fn(lr[..., t0:b0, l0:r0])
        y, x = (top - t0) * scale, (left - l0) * scale
        sr = sr[..., y : y + (bottom - top) * scale, x : x + (right - left) * scale]
        if bits is not None:
            sr = to_file_array(sr.reshape(sr.shape[-3:]), bits)
        if out is None:
            size = (height * scale, width * scale)
            out = (
                np.empty((*size, sr.shape[-1]), dtype=sr.dtype)
                if bits is not None
                else lr.new_empty(*sr.shape[:-2], *size, dtype=sr.dtype)
            )
        if bits is not None:
            out[top * scale : bottom * scale, left * scale : right * scale] = sr
        else:
            out[..., top * scale : bottom * scale, left * scale : right * scale] = sr
    return out


def tiled_forward(
    model: nn.Module,
    lr: Tensor,
    scale: int,
    tile: int = 256,
    overlap: int = 16,
    device: torch.device | str | None = None,
) -> Tensor:
    """Run `model` on (B, C, H, W) `lr` in overlapping tiles of `tile` LR pixels (`tiled_apply`),
    on `device` if given; output on lr's device. Activation memory stays bounded by the tile."""
    device = torch.device(device) if device is not None else lr.device
    return tiled_apply(lambda crop: model(crop.to(device)).to(lr.device), lr, scale, tile, overlap)


@dataclass(kw_only=True)
class Upscaler:
    """A model with what is needed to apply it to any image: tiles, device, channel handling."""

    model: nn.Module
    name: str
    scale: int
    channels: int
    device: torch.device
    tile: int
    overlap: int
    amp_dtype: torch.dtype | None = None  # autocast dtype of the forward (bf16 on GPUs by default)
    self_ensemble: bool = False  # average the 8 flips/rotations (EDSR's "+"; 8x the time)
    clip: bool = True  # clamp outputs to [0, 1] (not for multispectral models: see multispectral.py)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: dict,
        device: torch.device,
        tile: int = 256,
        overlap: int = 16,
        amp: bool | None = None,
        self_ensemble: bool = False,
    ) -> Upscaler:
        """The checkpoint's model on `device`, ready for inference; `amp` None means bf16
        autocast on a GPU that supports it, float32 elsewhere."""
        model = load_model(checkpoint).to(device, memory_format=torch.channels_last)
        spec = checkpoint["model"]
        if amp is None:
            amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
        amp_dtype = torch.bfloat16 if amp else None
        channels = spec["options"].get("in_channels", 3)
        return cls(
            model=model,
            name=spec["name"],
            scale=spec["scale"],
            channels=channels,
            device=device,
            tile=tile,
            overlap=overlap,
            amp_dtype=amp_dtype,
            self_ensemble=self_ensemble,
            clip="radiometry" not in checkpoint,
        )

    @torch.inference_mode()
    def __call__(self, lr: Tensor) -> Tensor:
        """SR of a (C, H, W) image in [0, 1]; keeps C (gray in, gray out), clamped to [0, 1]."""
        self._check_channels(lr)
        return tiled_apply(self._upscale_tile, lr, self.scale, self.tile, self.overlap)

    @torch.inference_mode()
    def to_array(self, lr: Tensor, bits: int, progress: str | None = None) -> np.ndarray:
        """SR of a (C, H, W) image as the (H, W, C) uint8/uint16 array of its output file,
        built tile by tile (memory: the tiles' work plus that array)."""
        self._check_channels(lr)
        return tiled_apply(self._upscale_tile, lr, self.scale, self.tile, self.overlap, bits, progress)

    @torch.inference_mode()
    def upscale_tile(self, lr: Tensor) -> Tensor:
        """SR of one (C, h, w) crop in one pass, for callers that do their own tiling."""
        self._check_channels(lr)
        return self._upscale_tile(lr)

    def _check_channels(self, lr: Tensor) -> None:
        if lr.shape[0] != self.channels and (self.channels, lr.shape[0]) not in ((3, 1), (1, 3)):
            raise ImageError(f"the model takes {self.channels}-channel images, this one has {lr.shape[0]}")

    def _upscale_tile(self, lr: Tensor) -> Tensor:
        """SR of one (C, h, w) crop, in the crop's channels: an RGB model on gray replicates it;
        a Y model on RGB does Y, with Cb/Cr by bicubic (exact away from the crop's edges)."""
        have = lr.shape[0]
        if have == self.channels:
            return self._run(lr)
        if have == 1:  # RGB model on gray: replicate, then back to gray
            return to_channels(self._run(to_channels(lr, 3)), 1).clamp(0, 1)
        ycbcr = rgb_to_ycbcr(lr)  # Y model on RGB
        y = self._run(ycbcr[:1])
        cbcr = imresize(ycbcr[1:], size=tuple(y.shape[-2:]))
        return ycbcr_to_rgb(torch.cat([y, cbcr])).clamp(0, 1)

    def _run(self, lr: Tensor) -> Tensor:
        if not self.self_ensemble:
            sr = self._forward(lr)
        else:
            sr = sum(undo_dihedral(self._forward(dihedral(lr, k)), k) for k in range(8)) / 8
        return sr.clamp(0, 1) if self.clip else sr

    def _forward(self, lr: Tensor) -> Tensor:
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            sr = self.model(lr.unsqueeze(0).to(self.device))
        return sr[0].float().to(lr.device)


ONNX_HINT = "pip install -r requirements-onnx.txt"


def export_onnx(model: nn.Module, path: str | Path, metadata: dict[str, str]) -> Path:
    """Export a single-image model to ONNX with dynamic batch, height and width (at least 3
    LR pixels), input `lr` and output `sr`; `metadata` is stored in the file. Atomic."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise UserError(f"ONNX export needs onnx and onnxscript: {ONNX_HINT}") from None
    path = Path(path)
    channels = int(metadata["in_channels"])
    example = torch.rand(2, channels, 24, 24)
    dims = {"lr": {0: torch.export.Dim("batch"), 2: torch.export.Dim("height", min=3),
                   3: torch.export.Dim("width", min=3)}}  # fmt: skip
    chatter = io.StringIO()  # the exporter's progress lines and warnings, shown only on failure
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with atomic_write(path, "ONNX model") as tmp:
            with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    model.eval(), (example,), dynamo=True, dynamic_shapes=dims,
                    input_names=["lr"], output_names=["sr"], verbose=False,
                )  # fmt: skip
                program.save(str(tmp))
            proto = onnx.load(str(tmp))
            for key, value in metadata.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, str(value)
            onnx.save(proto, str(tmp))
    except UserError:
        raise
    except Exception as err:
        raise RuntimeError(f"ONNX export failed: {err}\n{chatter.getvalue()}") from err
    finally:
        logger.setLevel(level)
    return path


class OnnxModel(nn.Module):
    """An exported model run by onnxruntime, usable wherever a model is (tiles, channels)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        try:
            import onnxruntime
        except ImportError:
            raise UserError(f"running ONNX models needs onnxruntime: {ONNX_HINT}") from None
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            raise CheckpointError(f"{path}: not a loadable ONNX model ({first_line(err)})") from None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        if not {"model", "scale", "in_channels"} <= set(self.metadata):
            raise CheckpointError(
                f"{path}: an ONNX model not exported by `train.py export` (no srkit metadata)"
            )
        self.scale, self.channels = self._checked_metadata(path)

    def _checked_metadata(self, path: str | Path) -> tuple[int, int]:
        """The scale and channels the metadata states, checked as numbers and against what the
        model does with a small input (a file whose metadata lies is refused, not believed)."""
        scale, channels = self.metadata["scale"], self.metadata["in_channels"]
        if not (scale.isdigit() and int(scale) in SCALES and channels in ("1", "3")):
            raise CheckpointError(
                f"{path}: ONNX metadata scale {scale!r} / in_channels {channels!r} is not valid"
            )
        probe = torch.zeros(1, int(channels), 8, 8)
        try:
            shape = tuple(self(probe).shape)
        except Exception as err:  # onnxruntime raises its own exception types
            raise CheckpointError(f"{path}: the ONNX model does not run ({first_line(err)})") from None
        if shape != (1, int(channels), 8 * int(scale), 8 * int(scale)):
            raise CheckpointError(
                f"{path}: ONNX metadata says x{scale}, {channels} channels, but the model turns 8x8 "
                f"into {shape[-2]}x{shape[-1]} with {shape[1]} channels"
            )
        return int(scale), int(channels)

    def forward(self, lr: Tensor) -> Tensor:
        array = np.ascontiguousarray(lr.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run(["sr"], {"lr": array})[0]).to(lr.device)
