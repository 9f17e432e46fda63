"""Georeferenced rasters (rasterio, GDAL underneath): what an input's georeferencing is, and the
SR raster written on the grid `scale` times finer over the same footprint.

The output's geotransform is the input's composed with a scaling by 1/scale: pixel (row, col)
of the output has its centre at input pixel coordinates ((col + 0.5) / scale, (row + 0.5) /
scale), the ground point of the matching sub-pixel position of the input. CRS, dtype, band
descriptions and nodata are the input's. Nodata pixels are filled with their band's mean of
valid pixels before the model sees them (so a fill value such as 0 is not smeared into valid
neighbours by the convolutions), and are nodata again in the output (the input's nodata mask
upscaled by nearest neighbour); a valid output pixel that rounds to the nodata value is moved
one step off it, so that it is not taken for nodata (GDAL reads nodata band by band).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from images import save_array
from utils import ImageError, atomic_write

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2")
RASTER_DTYPES = ("uint8", "uint16", "int16", "float32")  # the pixel types rasters are read and written in


@dataclass(frozen=True)
class Georeference:
    """Where a raster lies: its CRS (WKT), geotransform (affine, 6 numbers), nodata value and
    band descriptions."""

    crs: str | None
    transform: tuple[float, ...]
    nodata: float | None
    descriptions: tuple[str | None, ...]

    def scaled(self, scale: float) -> tuple[float, ...]:
        """The geotransform of the grid `scale` times finer over the same footprint."""
        from affine import Affine

        return tuple((Affine(*self.transform) @ Affine.scale(1 / scale))[:6])


def georeference(path: str | os.PathLike) -> Georeference | None:
    """The georeferencing of a raster file, or None for a file that has none (a plain image, or
    not a raster); a rotated or sheared geotransform, or a CRS that PROJ does not know (GDAL
    reads an unknown EPSG code as a local one), is refused in one line."""
    path = Path(path)
    if path.suffix.lower() not in RASTER_SUFFIXES:
        return None
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(path) as raster:
            transform, crs = raster.transform, raster.crs
            nodata, descriptions = raster.nodata, tuple(raster.descriptions)
    except RasterioIOError as err:
        raise ImageError(f"{path}: not a readable raster ({str(err).splitlines()[0]})") from None
    if crs is None and transform.is_identity:
        return None
    if crs is not None and not (crs.is_projected or crs.is_geographic):  # GDAL reads unknown codes so
        raise ImageError(f"{path}: its CRS is unknown ({crs.to_wkt()[:60]}...); the output could not be "
                         "placed on a map: set it first (gdal_edit.py -a_srs EPSG:<code>)")  # fmt: skip
    if transform.b or transform.d:
        raise ImageError(f"{path}: a rotated or sheared geotransform is not supported; warp it to a "
                         "north-up grid first (gdalwarp)")  # fmt: skip
    return Georeference(crs.to_wkt() if crs else None, tuple(transform)[:6], nodata, descriptions)


@dataclass(frozen=True)
class RasterHeader:
    """What a raster file holds, read without its pixels: size, bands, pixel type, nodata and
    georeferencing (None for a plain TIFF)."""

    path: Path
    height: int
    width: int
    count: int
    dtype: str
    nodata: float | None
    descriptions: tuple[str | None, ...]
    georef: Georeference | None
    alpha: bool  # whether the last band is marked as alpha (an RGBA or gray + alpha image)
    files: tuple[Path, ...] = ()  # the files whose bands are stacked (`stack_header`); () for one file

    @property
    def sources(self) -> tuple[Path, ...]:
        """The files the bands are read from, in order."""
        return self.files or (self.path,)


def raster_header(path: str | os.PathLike) -> RasterHeader:
    """The header of a raster of any band count in one of RASTER_DTYPES; anything else (not a
    raster, another pixel type, a rotated grid) is an ImageError in one line."""
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.errors import RasterioIOError

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    georef = georeference(path)
    try:
        with rasterio.open(path) as raster:
            dtypes = set(raster.dtypes)
            alpha = raster.colorinterp[-1] == ColorInterp.alpha
            header = RasterHeader(path, raster.height, raster.width, raster.count, raster.dtypes[0],
                                  raster.nodata, tuple(raster.descriptions), georef, alpha)  # fmt: skip
    except RasterioIOError as err:
        raise ImageError(f"{path}: not a readable raster ({str(err).splitlines()[0]})") from None
    if len(dtypes) > 1 or header.dtype not in RASTER_DTYPES:
        raise ImageError(f"{path}: pixel type {'/'.join(sorted(dtypes))}; rasters of "
                         f"{', '.join(RASTER_DTYPES)} are read")  # fmt: skip
    return header


def stack_header(files: Sequence[Path], name: Path, bands: Sequence[str]) -> RasterHeader:
    """One raster made of the bands of several files on one grid (one file per band, as
    Sentinel-2 products and BigEarthNet store them), named `name`, its bands `bands`; files of
    different grids, CRS or pixel types are an ImageError in one line."""
    headers = [raster_header(path) for path in files]
    first = headers[0]
    for header in headers[1:]:
        grid = (header.height, header.width, header.georef and header.georef.transform)
        if grid != (first.height, first.width, first.georef and first.georef.transform):
            raise ImageError(f"{header.path}: {header.width}x{header.height} px on another grid than "
                             f"{first.path.name} ({first.width}x{first.height}); band files must share "
                             "one grid (resample them to one resolution first)")  # fmt: skip
        if (header.georef and header.georef.crs) != (first.georef and first.georef.crs):
            raise ImageError(f"{header.path}: another CRS than {first.path.name}")
        if header.dtype != first.dtype or header.nodata != first.nodata:
            raise ImageError(f"{header.path}: {header.dtype} pixels with nodata {header.nodata}, but "
                             f"{first.path.name} has {first.dtype} with {first.nodata}")  # fmt: skip
    count = sum(header.count for header in headers)
    names = tuple(bands) if len(bands) == count else tuple(d for h in headers for d in h.descriptions)
    return replace(first, path=name, count=count, descriptions=names, alpha=False, files=tuple(files))


def read_window(sources: Sequence[Path], box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The (C, h, w) pixels of the bands of `sources` (a raster, or band files stacked) inside
    `box` (top, left, bottom, right; None: all), in the files' own type; a corrupt or truncated
    file is an ImageError in one line."""
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    window = None
    if box is not None:
        top, left, bottom, right = box
        window = Window(left, top, right - left, bottom - top)
    planes = []
    for path in sources:
        try:
            with rasterio.open(path) as raster:
                planes.append(raster.read(window=window))
        except RasterioError as err:
            raise ImageError(f"{path}: cannot read its pixels ({str(err).splitlines()[0]})") from None
    return planes[0] if len(planes) == 1 else np.concatenate(planes)


@dataclass(frozen=True)
class RasterInput:
    """An input image ready for the model (nodata filled), with what its outputs need to lie on
    its grid: its georeferencing (None for a plain image) and nodata mask."""

    image: Tensor
    georef: Georeference | None
    mask: Tensor | None


def raster_input(path: str | os.PathLike, image: Tensor, bits: int) -> RasterInput:
    """An image read from `path` (in [0, 1] from `bits`-bit integers) prepared for the model:
    its nodata pixels filled when the raster declares nodata."""
    georef = georeference(path)
    mask = nodata_mask(image, georef, bits) if georef else None
    return RasterInput(fill_nodata(image, mask) if mask is not None else image, georef, mask)


def save_output(array: np.ndarray, path: Path, source: RasterInput, scale: float, quality: int = 95) -> Path:
    """Write an (H, W, C) output array: a GeoTIFF on the finer grid when the input is georeferenced
    and `path` a TIFF, else a plain image file (`images.save_array`)."""
    if source.georef is not None and path.suffix.lower() in (".tif", ".tiff"):
        return write_georeferenced(array, path, source.georef, scale, source.mask)
    return save_array(array, path, quality=quality)


def nodata_mask(image: Tensor, georef: Georeference, bits: int) -> Tensor | None:
    """(H, W) True where every band holds the nodata value, for an image read into [0, 1] from
    `bits`-bit integers; None when the raster declares no nodata or has no such pixel."""
    if georef.nodata is None:
        return None
    level = georef.nodata / (2**bits - 1)
    mask = (image == level).all(0)
    return mask if bool(mask.any()) else None


def fill_nodata(image: Tensor, mask: Tensor) -> Tensor:
    """The image with its nodata pixels set to their band's mean of valid pixels."""
    valid = ~mask
    if not bool(valid.any()):
        raise ImageError("every pixel is nodata: nothing to super-resolve")
    means = image[:, valid].mean(1)
    return torch.where(mask, means[:, None, None], image)


def write_georeferenced(array: np.ndarray, path: Path, georef: Georeference, scale: float,
                        mask: Tensor | None) -> Path:  # fmt: skip
    """Write an (H, W, C) uint8/uint16 SR array as a GeoTIFF on the input's grid made `scale`
    times finer, with the input's CRS, nodata and band descriptions; atomically."""
    import rasterio
    from affine import Affine

    bands = array.transpose(2, 0, 1).copy()
    if georef.nodata is not None:
        nodata = np.array(georef.nodata).astype(array.dtype)
        bands[bands == nodata] = nodata + 1 if nodata < np.iinfo(array.dtype).max else nodata - 1
        if mask is not None:
            rows = torch.arange(array.shape[0]) * mask.shape[0] // array.shape[0]
            cols = torch.arange(array.shape[1]) * mask.shape[1] // array.shape[1]
            bands[:, mask[rows][:, cols].numpy()] = nodata
    profile = {
        "driver": "GTiff",
        "width": array.shape[1],
        "height": array.shape[0],
        "count": array.shape[2],
        "dtype": array.dtype.name,
        "crs": georef.crs,
        "transform": Affine(*georef.scaled(scale)),
        "nodata": georef.nodata,
        "compress": "deflate",
    }
    with atomic_write(path, "raster") as tmp, rasterio.open(tmp, "w", **profile) as raster:
        raster.write(bands)
        for index, description in enumerate(georef.descriptions[: array.shape[2]], start=1):
            if description:
                raster.set_band_description(index, description)
    return path
