"""Multispectral rasters (Sentinel-2, Landsat) for single-image SR: the value scale a model
learns in (`Radiometry`), training pairs made from a raster alone by Wald's protocol with a
spatial hold-out, the SR of a raster written window by window as a GeoTIFF on the finer grid,
and the scores the field reports.

Units. A raster holds digital numbers (DN); reflectance = (DN + offset) / divisor (Sentinel-2
L1C: divisor 10,000, offset 0; L2A from processing baseline 04.00: offset -1,000). The model
sees each band's reflectance mapped linearly from [low, high] (the band's 0.1st and 99.9th
percentiles over the training region) onto [0, 1], as a photograph model sees its pixels; its
output is mapped back to DN, rounded and clipped to the range of the raster's pixel type.
Nothing is clipped to [0, 1] on the way.

Wald's protocol (Wald et al. 1997, as DSen2 trains): the raster is the HR target and its LR
input the raster degraded by the scale (`imresize.downsample`): `sensor`, a Gaussian blur of
sigma = scale / 3 HR pixels then the mean of each scale x scale block (a modulation of 0.41 at
the LR Nyquist frequency at x2), or `bicubic`, MATLAB's imresize; nothing is clipped. The
eastern `holdout` fraction of each raster's columns stays out of training; validation and the
shipped model's scores use it.

Scores: PSNR and SSIM of each band on reflectance (peak and data range 1) and their means,
SAM (degrees), ERGAS and the frequency-band energy ratios, with `scale` pixels shaved.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from catalog import matched_pairs, paired_folders
from data import ImagePair
from images import IMAGE_SUFFIXES
from imresize import downsample, modcrop
from inference import tile_boxes
from metrics import band_energy_ratios, band_psnr, shave_border, spectral_angle, ssim_map
from metrics import ergas as ergas_index
from rasters import RASTER_SUFFIXES, RasterHeader, raster_header, read_window, stack_header
from registration import max_shift_for, register
from utils import DatasetError, ImageError, atomic_write

WALD_DEGRADATIONS = ("sensor", "bicubic")  # the LR kernels of Wald's protocol (imresize.downsample)
PERCENTILES = (0.001, 0.999)  # of reflectance over the training region: [low, high] -> [0, 1]
QUANTILE_SAMPLES = 1_000_000  # pixels per band the percentiles are taken from, at most
PRODUCT_METADATA = ("MTD_MSIL2A.xml", "MTD_MSIL1C.xml")  # a Sentinel-2 product's (SAFE) metadata file
PRODUCT_DEPTH = 5  # folders above a band file searched for it (SAFE/GRANULE/<tile>/IMG_DATA/R20m/)


# ---------------------------------------------------------------------------------------
# Radiometry
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Radiometry:
    """The value scale of a multispectral model: band names, the pixel type and DN-to-reflectance
    conversion of the rasters it was trained on, each band's [low, high] reflectance mapped onto
    the model's [0, 1] and its mean (the filler of nodata pixels), and the rasters' nodata."""

    bands: tuple[str, ...]
    dtype: str
    divisor: float
    offset: float
    low: tuple[float, ...]
    high: tuple[float, ...]
    mean: tuple[float, ...]
    nodata: float | None = None

    def _column(self, values: Sequence[float]) -> Tensor:
        return torch.tensor(values, dtype=torch.float32)[:, None, None]

    def reflectance(self, dn: Tensor) -> Tensor:
        """(C, H, W) DN -> reflectance."""
        return (dn + self.offset) / self.divisor

    def to_model(self, dn: Tensor) -> Tensor:
        """(C, H, W) DN -> the model's units."""
        return self.reflectance_to_model(self.reflectance(dn))

    def reflectance_to_model(self, reflectance: Tensor) -> Tensor:
        """(C, H, W) reflectance -> the model's units."""
        low, high = self._column(self.low), self._column(self.high)
        return (reflectance - low) / (high - low)

    def model_to_reflectance(self, values: Tensor) -> Tensor:
        """(C, H, W) in the model's units -> reflectance."""
        low, high = self._column(self.low), self._column(self.high)
        return values * (high - low) + low

    def to_dn(self, values: Tensor) -> Tensor:
        """(C, H, W) in the model's units -> DN (float, unrounded)."""
        return self.model_to_reflectance(values) * self.divisor - self.offset

    def for_raster(self, header: RasterHeader) -> Radiometry:
        """This radiometry with the DN units that the raster's product states, when it states
        them (a Sentinel-2 product of another processing baseline than the training rasters');
        the normalisation is in reflectance and stays."""
        units = product_units(header)
        return self if units is None else replace(self, divisor=units.divisor, offset=units.offset)

    def units(self) -> str:
        """How DN become reflectance, in words."""
        return units_text(self.divisor, self.offset)

    def check(self, header: RasterHeader, model: str) -> None:
        """Refuse, naming both, a raster of another band count or pixel type than the model's."""
        units = f"{self.dtype} DN, {self.units()}"
        if header.count != len(self.bands):
            raise ImageError(f"{header.path}: {header.count} bands, but {model} takes {len(self.bands)} "
                             f"({', '.join(self.bands)})")  # fmt: skip
        if header.dtype != self.dtype:
            raise ImageError(f"{header.path}: {header.dtype} pixels, but {model} was trained on {units}")

    def as_dict(self) -> dict:
        """The plain dict a checkpoint and an export's metadata hold."""
        values = asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}

    @classmethod
    def from_dict(cls, values: dict) -> Radiometry:
        """From `as_dict`'s dict (a checkpoint's, checked by its schema)."""
        tuples = ("bands", "low", "high", "mean")
        return cls(**{key: tuple(value) if key in tuples else value for key, value in values.items()})


def units_text(divisor: float, offset: float) -> str:
    """reflectance = (DN + offset) / divisor, in words: 'reflectance = (DN - 1000) / 10000'."""
    return f"reflectance = (DN {'-' if offset < 0 else '+'} {abs(offset):g}) / {divisor:g}"


@dataclass(frozen=True)
class ProductUnits:
    """The DN units a product's metadata states: reflectance = (DN + offset) / divisor."""

    divisor: float
    offset: float
    source: Path


def product_units(header: RasterHeader) -> ProductUnits | None:
    """The units stated by the Sentinel-2 product a raster's files lie in (MTD_MSIL2A.xml or
    MTD_MSIL1C.xml up to PRODUCT_DEPTH folders above them: the quantification value and, from
    processing baseline 04.00, the BOA_ADD_OFFSET / RADIO_ADD_OFFSET); None outside a product."""
    for source in header.sources:
        for folder in list(Path(os.path.abspath(source)).parents)[:PRODUCT_DEPTH]:
            for name in PRODUCT_METADATA:
                if (folder / name).is_file():
                    return _read_units(folder / name)
    return None


def _read_units(path: Path) -> ProductUnits:
    """The units a product metadata file states, or an ImageError in one line."""
    import xml.etree.ElementTree as ElementTree

    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as err:
        raise ImageError(f"{path}: not readable product metadata ({err})") from None

    def values(*tags: str) -> list[float]:
        found = [e.text for e in root.iter() if e.tag.rsplit("}", 1)[-1] in tags and e.text]
        try:
            return [float(text) for text in found]
        except ValueError:
            raise ImageError(f"{path}: a {'/'.join(tags)} that is not a number") from None

    divisors = values("BOA_QUANTIFICATION_VALUE", "QUANTIFICATION_VALUE")
    offsets = set(values("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET")) or {0.0}
    if not divisors or not divisors[0] > 0:
        raise ImageError(f"{path}: states no positive quantification value")
    if len(offsets) > 1:
        raise ImageError(f"{path}: its bands have different offsets ({sorted(offsets)}); not supported")
    return ProductUnits(divisors[0], offsets.pop(), path)


def check_units(header: RasterHeader, divisor: float, offset: float) -> None:
    """Refuse, in one line, training on a raster whose product states other units than given."""
    units = product_units(header)
    if units is not None and (units.divisor, units.offset) != (divisor, offset):
        stated, given = units_text(units.divisor, units.offset), units_text(divisor, offset)
        raise DatasetError(
            f"{header.path}: its product ({units.source.name}) states {stated}, not {given}; give "
            f"--value-scale {units.divisor:g} --value-offset {units.offset:g}"
        )


def fit_radiometry(
    regions: Sequence[Tensor], header: RasterHeader, divisor: float, offset: float
) -> Radiometry:
    """The radiometry of (C, H, W) DN training regions, nodata pixels (NaN here) left out."""
    bands = header.count
    reflectance = torch.cat([((region + offset) / divisor).flatten(1) for region in regions], dim=1)
    low, high, mean = [], [], []
    for band in reflectance:
        values = band[~band.isnan()]
        if values.numel() == 0:
            raise DatasetError(f"{header.path}: no valid pixel in the training region")
        sample = values[:: max(1, values.numel() // QUANTILE_SAMPLES)].double()
        lo, hi = torch.quantile(sample, torch.tensor(PERCENTILES, dtype=torch.float64)).tolist()
        if not hi > lo:
            hi = lo + 1 / divisor  # a flat band: any positive range will do
        low.append(lo)
        high.append(hi)
        mean.append(values.double().mean().item())
    names = tuple(d or f"band {i}" for i, d in enumerate(header.descriptions[:bands], start=1))
    return Radiometry(
        names,
        header.dtype,
        float(divisor),
        float(offset),
        tuple(low),
        tuple(high),
        tuple(mean),
        header.nodata,
    )


def nodata_pixels(dn: np.ndarray, nodata: float | None) -> np.ndarray | None:
    """(h, w) True where every band of a (C, h, w) DN array holds `nodata`; None when none does."""
    if nodata is None:
        return None
    mask = np.isnan(dn).all(0) if math.isnan(nodata) else (dn == np.array(nodata).astype(dn.dtype)).all(0)
    return mask if mask.any() else None


def to_dtype(dn: Tensor, dtype: str) -> np.ndarray:
    """(C, H, W) float DN as the raster's pixel type: rounded and clipped to its range."""
    if np.dtype(dtype).kind == "f":
        return dn.numpy().astype(dtype)
    info = np.iinfo(dtype)
    return torch.round(dn.double()).clamp(info.min, info.max).numpy().astype(dtype)


# ---------------------------------------------------------------------------------------
# Wald's protocol
# ---------------------------------------------------------------------------------------


def holdout_column(width: int, holdout: float, scale: int) -> int:
    """The first held-out column of a raster `width` pixels wide: the eastern `holdout`
    fraction of its columns, from a multiple of `scale`."""
    return round(width * (1 - holdout)) // scale * scale


def raster_paths(train_data: str) -> list[Path] | None:
    """The rasters a --train-data value names for Wald's protocol, or None when it names images:
    one raster file (or a comma list of them), or a folder whose images are all GeoTIFF /
    JPEG 2000 files with georeferencing; a relative path not found here is looked for under
    $SR_DATA_ROOT, as named sets are."""
    items = [_located(Path(item)) for item in train_data.split(",")]
    if all(item.suffix.lower() in RASTER_SUFFIXES and item.is_file() for item in items):
        return items
    if len(items) == 1 and items[0].is_dir():
        files = sorted(p for p in items[0].iterdir() if p.suffix.lower() in IMAGE_SUFFIXES + (".jp2",))
        rasters = files and all(p.suffix.lower() in RASTER_SUFFIXES for p in files)
        if rasters and all(raster_header(p).georef is not None for p in files):
            return files
    return None


def _located(path: Path) -> Path:
    """`path` itself, or under $SR_DATA_ROOT when it is relative and only there."""
    root = os.environ.get("SR_DATA_ROOT")
    if path.exists() or path.is_absolute() or not root or not (Path(root) / path).exists():
        return path
    return Path(root) / path


@dataclass
class RasterData:
    """Training and held-out pairs (the model's units) made from rasters: by Wald's protocol
    from one sensor (`wald_data`) or from two sensors' pairs (`paired_data`)."""

    radiometry: Radiometry
    train: list[ImagePair]
    held_out: list[ImagePair]


def wald_data(paths: Sequence[Path], scale: int, kernels: Sequence[str], holdout: float, divisor: float,
              offset: float) -> RasterData:  # fmt: skip
    """Read rasters of one band count and pixel type whole, split each into its western training
    and eastern held-out region, fit the radiometry on the training regions and make the LR
    versions, one per kernel (training picks one at random per patch; the held-out pairs have
    the first kernel's only); nodata pixels are filled with their band's mean."""
    headers = [raster_header(path) for path in paths]
    first = headers[0]
    for header in headers[1:]:
        if (header.count, header.dtype) != (first.count, first.dtype):
            raise DatasetError(f"{header.path}: {header.count} bands of {header.dtype}, but {first.path} has "
                               f"{first.count} of {first.dtype}; train on rasters of one kind")  # fmt: skip
    regions = []
    for header in headers:
        check_units(header, divisor, offset)
        values = read_with_gaps(header)
        split = _split_column(header, holdout, scale)
        regions.append((header.path.stem, values[..., :split], values[..., split:]))
    radiometry = fit_radiometry([train for _, train, _ in regions], first, divisor, offset)

    def pair(name: str, dn: Tensor, kernels: Sequence[str]) -> ImagePair:
        hr = modcrop(radiometry.to_model(filled(dn, radiometry)), scale)
        return ImagePair(name, hr, tuple(downsample(hr, scale, kernel) for kernel in kernels))

    train = [pair(f"{name} (west)", region, kernels) for name, region, _ in regions]
    held_out = [pair(f"{name} (east)", region, kernels[:1]) for name, _, region in regions]
    return RasterData(radiometry, train, held_out)


def read_with_gaps(header: RasterHeader) -> Tensor:
    """A raster's (C, H, W) DN as float32, NaN where every band holds nodata."""
    dn = read_window(header.sources)
    mask = nodata_pixels(dn, header.nodata)
    values = torch.from_numpy(dn.astype(np.float32))
    if mask is not None:
        values[:, torch.from_numpy(mask)] = math.nan
    return values


def filled(dn: Tensor, radiometry: Radiometry) -> Tensor:
    """DN with its NaN (nodata) pixels replaced by their band's mean of the training region."""
    means = torch.tensor(radiometry.mean, dtype=torch.float32)[:, None, None]
    return torch.where(dn.isnan(), means * radiometry.divisor - radiometry.offset, dn)


def _split_column(header: RasterHeader, holdout: float, scale: int) -> int:
    """The first held-out column of a raster, checked to leave both regions at least `scale` wide."""
    split = holdout_column(header.width, holdout, scale)
    if split < scale or header.width - split < scale:
        raise DatasetError(f"{header.path}: {header.width} columns cannot be split {1 - holdout:g} / "
                           f"{holdout:g} at x{scale}")  # fmt: skip
    return split


# ---------------------------------------------------------------------------------------
# Pairs from two sensors
# ---------------------------------------------------------------------------------------


def raster_pairs(train_data: str) -> list[tuple[Path, Path]] | None:
    """(HR, LR) rasters of a folder of pairs from two sensors (`hr/` and `lr/` subfolders of
    georeferenced GeoTIFFs matched by name), or None when --train-data is not such a folder."""
    folder = _located(Path(train_data))
    halves = paired_folders(folder) if folder.is_dir() else None
    if halves is None:
        return None
    pairs = matched_pairs(*halves)
    files = [path for pair in pairs for path in pair]
    if all(p.suffix.lower() in RASTER_SUFFIXES and raster_header(p).georef is not None for p in files):
        return pairs
    return None


def paired_data(pairs: Sequence[tuple[Path, Path]], scale: int, holdout: float, divisor: float,
                offset: float) -> RasterData:  # fmt: skip
    """Read (HR, LR) raster pairs from two sensors whole (`check_pair`), split each into its
    western training and eastern held-out region, fit the radiometry on the LR training regions
    and map both sensors' DN with it; nodata pixels are filled with their band's mean."""
    regions = []
    for hr_path, lr_path in pairs:
        hr_header, lr_header = raster_header(hr_path), raster_header(lr_path)
        check_pair(hr_header, lr_header, scale)
        for header in (hr_header, lr_header):
            check_units(header, divisor, offset)
        if regions and (lr_header.count, lr_header.dtype) != (regions[0][0].count, regions[0][0].dtype):
            raise DatasetError(f"{lr_path}: {lr_header.count} bands of {lr_header.dtype}, but "
                               f"{regions[0][0].path} has {regions[0][0].count} of {regions[0][0].dtype}; "
                               "train on rasters of one kind")  # fmt: skip
        split = _split_column(lr_header, holdout, 1)
        hr, lr = read_with_gaps(hr_header), read_with_gaps(lr_header)
        regions.append((lr_header, (hr[..., : split * scale], lr[..., :split]),
                        (hr[..., split * scale :], lr[..., split:])))  # fmt: skip
    radiometry = fit_radiometry([lr for _, (_, lr), _ in regions], regions[0][0], divisor, offset)

    def pair(name: str, hr: Tensor, lr: Tensor) -> ImagePair:
        to_model = radiometry.to_model
        return ImagePair(name, to_model(filled(hr, radiometry)), (to_model(filled(lr, radiometry)),))

    train = [pair(f"{header.path.stem} (west)", *west) for header, west, _ in regions]
    held_out = [pair(f"{header.path.stem} (east)", *east) for header, _, east in regions]
    return RasterData(radiometry, train, held_out)


def check_pair(hr: RasterHeader, lr: RasterHeader, scale: int) -> None:
    """Raise DatasetError (one line) unless the HR raster has the LR's bands and pixel type,
    exactly `scale` times its rows and columns, and (both georeferenced) its CRS, a pixel
    `scale` times smaller and an origin within one LR pixel of the LR's: the misregistration
    that --registration fits, not another place."""
    if (hr.count, hr.dtype) != (lr.count, lr.dtype):
        raise DatasetError(f"{lr.path}: {lr.count} bands of {lr.dtype}, but its HR raster {hr.path.name} has "
                           f"{hr.count} of {hr.dtype} (pairs share bands and units)")  # fmt: skip
    if (hr.height, hr.width) != (lr.height * scale, lr.width * scale):
        raise DatasetError(f"{hr.path}: {hr.width}x{hr.height} is not its LR raster {lr.path.name} "
                           f"({lr.width}x{lr.height}) times {scale}")  # fmt: skip
    if hr.georef is None or lr.georef is None:
        return
    if hr.georef.crs != lr.georef.crs:
        raise DatasetError(f"{hr.path}: another CRS than its LR raster {lr.path.name}; warp one onto the "
                           "other first (gdalwarp)")  # fmt: skip
    fine, coarse = hr.georef.transform, lr.georef.transform  # (a, b, c, d, e, f): pixel width a, height e
    same_pixel = [math.isclose(fine[i] * scale, coarse[i], rel_tol=1e-6) for i in (0, 4)]
    if not all(same_pixel):
        raise DatasetError(f"{hr.path}: pixels of {fine[0]:g} x {-fine[4]:g}, not its LR raster's "
                           f"({coarse[0]:g} x {-coarse[4]:g}) divided by {scale}")  # fmt: skip
    east, north = fine[2] - coarse[2], fine[5] - coarse[5]
    if abs(east) > abs(coarse[0]) or abs(north) > abs(coarse[4]):
        raise DatasetError(f"{hr.path}: its origin is ({east:g}, {north:g}) from its LR "
                           f"raster's, more than one LR pixel: not the same footprint")  # fmt: skip


# ---------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------


def scores(sr: Tensor, hr: Tensor, scale: int, shave: int) -> dict:
    """The field's scores of a (C, H, W) SR raster against its reference, both in reflectance:
    per band and mean PSNR and SSIM, SAM (degrees), ERGAS, and frequency-band energy ratios."""
    if sr.shape != hr.shape:
        raise ImageError(f"SR {tuple(sr.shape)} and reference {tuple(hr.shape)} differ in size")
    psnr = band_psnr(sr, hr, peak=1.0, shave=shave)
    a, b = shave_border(sr.double(), shave), shave_border(hr.double(), shave)
    ssim = torch.stack(
        [ssim_map(a[i][None, None], b[i][None, None], data_range=1.0).mean() for i in range(len(a))]
    )
    return {
        "psnr": psnr.mean().item(),
        "ssim": ssim.mean().item(),
        "sam": spectral_angle(sr, hr, shave).item(),
        "ergas": ergas_index(sr, hr, scale, shave).item(),
        "band_psnr": psnr.tolist(),
        "band_ssim": ssim.tolist(),
        **{f"energy_{band}": ratio for band, ratio in band_energy_ratios(a.float(), b.float()).items()},
    }


def model_on_reflectance(upscaler: Callable[[Tensor], Tensor], radiometry: Radiometry, lr: Tensor) -> Tensor:
    """A multispectral model's SR of (C, h, w) reflectance, in reflectance (its units both ways)."""
    return radiometry.model_to_reflectance(upscaler(radiometry.reflectance_to_model(lr)))


def band_by_band(upscaler: Callable[[Tensor], Tensor], lr: Tensor) -> Tensor:
    """A photograph model applied to each band of (C, h, w) reflectance as a gray image in [0, 1]
    (the band over its maximum), the baseline a multispectral model must beat."""
    out = []
    for band in lr:
        peak = band.max().clamp(min=1e-6)
        out.append(upscaler((band / peak)[None])[0] * peak)
    return torch.stack(out)


def registered_scores(sr: Tensor, hr: Tensor, scale: int, shave: int, mode: str) -> dict:
    """Per band and mean PSNR/SSIM after registering the (C, H, W) reference to the result
    (registration.py: the shift, then each band's gain and offset fitted to the result), on the
    pixels the shift keeps and the shave beyond them: a reference from another sensor."""
    pred, target, border = register(sr[None], hr[None], mode, max_shift_for(scale))
    values = scores(pred[0], target[0], scale, max(0, shave - border))
    return {f"registered_{key}": values[key] for key in ("psnr", "ssim", "band_psnr")}


# ---------------------------------------------------------------------------------------
# SR of a raster, window by window
# ---------------------------------------------------------------------------------------


def upscale_raster(
    upscale_tile: Callable[[Tensor], Tensor],
    header: RasterHeader,
    out: Path,
    radiometry: Radiometry,
    scale: int,
    tile: int = 256,
    overlap: int = 16,
    progress: str | None = None,
) -> Path:
    """Write the x`scale` SR of a raster as a GeoTIFF on its grid made finer, reading and writing
    one tile (and its overlap) at a time, so memory is bounded by the tile whatever the raster's
    size. `upscale_tile` maps a (C, h, w) crop in the model's units to its SR. Nodata pixels get
    their band's mean before the model sees them and are nodata again in the output; an output
    pixel that rounds to the nodata value is moved one step off it."""
    import rasterio
    from rasterio.windows import Window
    from tqdm import tqdm

    profile = {
        "driver": "GTiff",
        "width": header.width * scale,
        "height": header.height * scale,
        "count": header.count,
        "dtype": header.dtype,
        "nodata": header.nodata,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    if header.georef is not None:
        from affine import Affine

        profile.update(crs=header.georef.crs, transform=Affine(*header.georef.scaled(scale)))
    fill = (
        torch.tensor(radiometry.mean, dtype=torch.float32)[:, None, None] * radiometry.divisor
        - radiometry.offset
    )
    boxes = tile_boxes(header.height, header.width, tile, overlap)
    valid = False
    with atomic_write(out, "raster") as tmp, rasterio.open(tmp, "w", **profile) as raster:
        for (t0, l0, b0, r0), (top, left, bottom, right) in tqdm(
            boxes, desc=progress, disable=progress is None or len(boxes) == 1, leave=False, unit="tile"
        ):
            dn = read_window(header.sources, (t0, l0, b0, r0))
            mask = nodata_pixels(dn, header.nodata)
            values = torch.from_numpy(dn.astype(np.float32))
            if mask is not None:
                values = torch.where(torch.from_numpy(mask), fill, values)
            sr = upscale_tile(radiometry.to_model(values))
            y, x = (top - t0) * scale, (left - l0) * scale
            sr = sr[:, y : y + (bottom - top) * scale, x : x + (right - left) * scale]
            pixels = to_dtype(radiometry.to_dn(sr), header.dtype)
            keep = None if mask is None else mask[top - t0 : bottom - t0, left - l0 : right - l0]
            valid |= keep is None or not keep.all()
            raster.write(_with_nodata(pixels, keep, header.nodata, scale),
                         window=Window(left * scale, top * scale, (right - left) * scale,
                                       (bottom - top) * scale))  # fmt: skip
        if not valid:
            raise ImageError(f"{header.path}: every pixel is nodata; nothing to super-resolve")
        for index, description in enumerate(header.descriptions, start=1):
            if description:
                raster.set_band_description(index, description)
    return out


def _with_nodata(pixels: np.ndarray, mask: np.ndarray | None, nodata: float | None, scale: int) -> np.ndarray:
    """Output pixels with the LR nodata mask (upscaled by nearest neighbour) set to nodata, and
    valid pixels equal to it moved one step off."""
    if nodata is None or math.isnan(nodata):
        if mask is not None:
            pixels[:, mask.repeat(scale, 0).repeat(scale, 1)] = nodata
        return pixels
    level = np.array(nodata).astype(pixels.dtype)
    step = 1 if np.dtype(pixels.dtype).kind != "f" else max(abs(float(level)) * 1e-6, 1e-6)
    top = np.iinfo(pixels.dtype).max if np.dtype(pixels.dtype).kind != "f" else np.inf
    pixels[pixels == level] = level + step if level < top else level - step
    if mask is not None:
        pixels[:, mask.repeat(scale, 0).repeat(scale, 1)] = level
    return pixels


def read_reflectance(header: RasterHeader, radiometry: Radiometry) -> Tensor:
    """A whole raster as (C, H, W) reflectance (for scoring)."""
    return radiometry.reflectance(torch.from_numpy(read_window(header.sources).astype(np.float32)))


def raster_inputs(items: Sequence[str], bands: Sequence[str]) -> list[RasterHeader]:
    """The rasters that inputs name, for a model of `bands`: raster files, globs, folders of
    rasters, and folders of one file per band (matched by name: `*_B05.tif` or `B05.jp2`),
    whose bands are stacked in the model's order."""
    headers: list[RasterHeader] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            stack = band_files(path, bands)
            if stack:
                headers.append(stack_header(stack, path, bands))
                continue
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in RASTER_SUFFIXES)
            if not files:
                raise ImageError(f"{path}: holds no rasters ({', '.join(RASTER_SUFFIXES)}) and no file per "
                                 f"band of {', '.join(bands)}")  # fmt: skip
            headers += [raster_header(p) for p in files]
        elif any(ch in item for ch in "*?["):
            files = sorted(Path(p) for p in glob.glob(item) if Path(p).suffix.lower() in RASTER_SUFFIXES)
            if not files:
                raise ImageError(f"{item}: matches no rasters")
            headers += [raster_header(p) for p in files]
        else:
            headers.append(raster_header(path))
    return headers


def band_files(folder: Path, bands: Sequence[str]) -> list[Path] | None:
    """The file of each band in a folder of one file per band (its name ends in `_<band>` or is
    the band), in the order of `bands`; None unless every band has exactly one."""
    files = [p for p in folder.iterdir() if p.suffix.lower() in RASTER_SUFFIXES]
    found = []
    for band in bands:
        matches = [p for p in files if p.stem == band or p.stem.endswith(f"_{band}")]
        if len(matches) != 1:
            return None
        found.append(matches[0])
    return found
