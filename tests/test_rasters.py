"""Issue [17], item 1 (first part): georeferenced rasters in, GeoTIFFs on the finer grid out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine, xy

import super_resolve
from utils import run_cli

ROOT = Path(__file__).resolve().parents[1]
SRCNN = ROOT / "checkpoints" / "srcnn_x3.pth"
CRS = "EPSG:32633"


def _raster(path: Path, array: np.ndarray, transform: Affine, nodata=None, descriptions=None) -> Path:
    """A GeoTIFF of (bands, H, W) `array`."""
    profile = {"driver": "GTiff", "width": array.shape[2], "height": array.shape[1], "count": array.shape[0],
               "dtype": array.dtype.name, "crs": CRS, "transform": transform, "nodata": nodata}  # fmt: skip
    with rasterio.open(path, "w", **profile) as raster:
        raster.write(array)
        for index, text in enumerate(descriptions or [], start=1):
            raster.set_band_description(index, text)
    return path


def _argv(source: Path, out: Path) -> list[str]:
    return ["--checkpoint", str(SRCNN), str(source), "--ext", "tif", "--out-dir", str(out), "--quiet"]


def _smooth(bands: int, height: int, width: int, peak: int, dtype) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    planes = [(np.sin(x / (5 + b)) * np.cos(y / 7) * 0.4 + 0.5) * peak for b in range(bands)]
    return np.stack(planes).round().astype(dtype)


def test_the_sr_raster_lies_on_the_finer_grid_of_the_same_footprint(tmp_path):
    transform = Affine(20.0, 0.0, 500_000.0, 0.0, -20.0, 4_600_000.0)
    source = _raster(tmp_path / "in.tif", _smooth(3, 30, 40, 60_000, np.uint16), transform,
                     descriptions=["B04", "B03", "B02"])  # fmt: skip
    assert run_cli(super_resolve.main, _argv(source, tmp_path / "out")) == 0
    with rasterio.open(tmp_path / "out" / "in_srcnn_x3.tif") as sr:
        assert sr.crs == rasterio.crs.CRS.from_string(CRS)
        assert (sr.width, sr.height) == (120, 90) and sr.dtypes == ("uint16",) * 3
        assert sr.descriptions == ("B04", "B03", "B02")
        # the centre of output pixel (row, col) is the ground point of input position
        # ((col + 0.5) / 3, (row + 0.5) / 3): the same footprint, each pixel split in 3 x 3
        for row, col in [(0, 0), (89, 119), (45, 7)]:
            ground = xy(sr.transform, row, col)
            expected = transform @ ((col + 0.5) / 3, (row + 0.5) / 3)
            np.testing.assert_allclose(ground, expected, rtol=0, atol=1e-6)
        assert sr.bounds == rasterio.open(source).bounds


def test_nodata_stays_nodata_and_valid_pixels_never_become_it(tmp_path):
    array = _smooth(3, 30, 30, 250, np.uint8)
    array[:, :, :10] = 0  # a nodata margin, as at a scene's edge
    array[:, 20, 20] = 1  # a dark valid pixel, whose SR may round to 0
    transform = Affine(30.0, 0.0, 400_000.0, 0.0, -30.0, 3_000_000.0)
    source = _raster(tmp_path / "in.tif", array, transform, nodata=0)
    assert run_cli(super_resolve.main, _argv(source, tmp_path / "out")) == 0
    for name in ("in_srcnn_x3.tif", "in_bicubic_x3.tif"):
        with rasterio.open(tmp_path / "out" / name) as sr:
            assert sr.nodata == 0
            out = sr.read()
            assert (out[:, :, :30] == 0).all()  # the margin, 3 x as wide
            assert (out[:, :, 30:] > 0).all()  # no valid pixel reads as nodata


def test_a_rotated_geotransform_is_refused_in_one_line(tmp_path, capsys):
    rotated = Affine(20.0, 5.0, 500_000.0, 5.0, -20.0, 4_600_000.0)
    source = _raster(tmp_path / "in.tif", _smooth(3, 20, 20, 200, np.uint8), rotated)
    argv = ["--checkpoint", str(SRCNN), str(source), "--ext", "tif", "--out-dir", str(tmp_path / "out")]
    assert run_cli(super_resolve.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert "rotated" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before the out-dir is made


def test_a_real_landsat_raster_keeps_its_crs_and_nodata(data_root, tmp_path):
    source = data_root / "RS-sample" / "landsat7" / "RGB.byte.tif"
    if not source.is_file():
        pytest.fail(f"{source} is missing; the RS-sample set belongs in SR_DATA_ROOT")
    assert run_cli(super_resolve.main, _argv(source, tmp_path)) == 0
    with rasterio.open(source) as lr, rasterio.open(tmp_path / "RGB.byte_srcnn_x3.tif") as sr:
        assert sr.crs == lr.crs and sr.nodata == lr.nodata == 0 and sr.bounds == lr.bounds
        assert (sr.width, sr.height) == (3 * lr.width, 3 * lr.height)
        empty_lr = (lr.read() == 0).all(0).mean()
        empty_sr = (sr.read() == 0).all(0).mean()
        assert abs(empty_lr - empty_sr) < 0.01  # the nodata collar, upscaled, and no more


@pytest.mark.parametrize("case", ["all nodata", "truncated"])
def test_a_bad_raster_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    transform = Affine(20.0, 0.0, 500_000.0, 0.0, -20.0, 4_600_000.0)
    array = _smooth(3, 20, 20, 200, np.uint8)
    if case == "all nodata":
        array[:] = 0
    source = _raster(tmp_path / "in.tif", array, transform, nodata=0)
    if case == "truncated":
        source.write_bytes(source.read_bytes()[:600])
    before = source.read_bytes()
    assert run_cli(super_resolve.main, _argv(source, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not list((tmp_path / "out").iterdir()) and source.read_bytes() == before


def test_the_api_writes_the_same_geotiff_as_the_cli(tmp_path):
    from srkit import SuperResolver

    transform = Affine(30.0, 0.0, 400_000.0, 0.0, -30.0, 3_000_000.0)
    array = _smooth(3, 24, 28, 250, np.uint8)
    array[:, :4] = 0
    source = _raster(tmp_path / "in.tif", array, transform, nodata=0, descriptions=["R", "G", "B"])
    assert run_cli(super_resolve.main, _argv(source, tmp_path / "cli")) == 0
    written = SuperResolver(SRCNN).upscale_file(source, tmp_path / "api.tif")
    with rasterio.open(tmp_path / "cli" / "in_srcnn_x3.tif") as cli, rasterio.open(written) as api:
        assert api.profile == cli.profile and api.descriptions == cli.descriptions
        assert np.array_equal(api.read(), cli.read())
    from utils import UserError

    with pytest.raises(UserError, match="--overwrite"):
        SuperResolver(SRCNN).upscale_file(source, written)


def test_a_crs_gdal_does_not_know_is_refused_in_one_line(tmp_path, capsys):
    """An EPSG code PROJ does not know is read by GDAL as a local CS under the citation's name:
    an output on it could not be placed on a map, so the input is refused."""
    import struct

    grid = Affine(20.0, 0.0, 500_000.0, 0.0, -20.0, 4_600_000.0)
    source = _raster(tmp_path / "in.tif", _smooth(3, 20, 20, 200, np.uint8), grid)
    data = bytearray(source.read_bytes())
    code = struct.pack("<H", 32633)  # the ProjectedCSTypeGeoKey of CRS above
    assert data.count(code) == 1
    at = data.find(code)
    data[at : at + 2] = struct.pack("<H", 29999)  # no such EPSG code
    source.write_bytes(bytes(data))
    argv = ["--checkpoint", str(SRCNN), str(source), "--ext", "tif", "--out-dir", str(tmp_path / "out")]
    assert run_cli(super_resolve.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert "CRS is unknown" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
