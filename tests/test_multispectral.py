"""Issue [17]: multispectral rasters in and out (any band count, uint8/uint16/int16/float32), the
value scale a model stores, Wald's protocol training with a held-out region, window-by-window
SR, the field's scores, and the real rasters' geometry (BigEarthNet, Landsat 8)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine, xy

import multispectral
import super_resolve
import train
from checkpoint import load_checkpoint, save_checkpoint
from imresize import downsample
from model import build_model, multiply_adds_per_pixel
from multispectral import Radiometry, holdout_column, wald_data
from registration import shift_image
from trainer import initialise_from
from utils import run_cli

ROOT = Path(__file__).resolve().parents[1]
EDSR_X2 = ROOT / "checkpoints" / "edsr_x2.pth"
CRS = "EPSG:32618"
GRID = Affine(20.0, 0.0, 435_720.0, 0.0, -20.0, 4_179_460.0)
BANDS = ["B05", "B06", "B07", "B8A"]


def _raster(
    path: Path, array: np.ndarray, transform: Affine | None = GRID, nodata=None, descriptions=BANDS
) -> Path:
    """A GeoTIFF of (bands, H, W) `array` (no georeferencing when `transform` is None)."""
    profile = {"driver": "GTiff", "width": array.shape[2], "height": array.shape[1], "count": array.shape[0],
               "dtype": array.dtype.name, "nodata": nodata}  # fmt: skip
    if transform is not None:
        profile.update(crs=CRS, transform=transform)
    with rasterio.open(path, "w", **profile) as raster:
        raster.write(array)
        for index, text in enumerate(descriptions[: array.shape[0]], start=1):
            raster.set_band_description(index, text)
    return path


def _landscape(bands: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Reflectance-like uint16 DN (x 10,000): smooth fields with edges, bands correlated."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, 1, height // 4 + 1, width // 4 + 1))).float()
    field = torch.nn.functional.interpolate(coarse, scale_factor=4, mode="bilinear")[0, 0, :height, :width]
    fields = [(field * (0.2 + 0.1 * b) + 0.05 * (field > 0.5) + 0.02 * b).numpy() for b in range(bands)]
    return (np.stack(fields) * 10_000).round().astype(np.uint16)


@pytest.fixture(scope="module")
def model_checkpoint(tmp_path_factory) -> Path:
    """A tiny 4-band x2 model trained for one short epoch by Wald's protocol on a synthetic raster."""
    folder = tmp_path_factory.mktemp("wald")
    raster = _raster(folder / "scene.tif", _landscape(4, 64, 96))
    argv = ["train", "--model", "edsr", "--model-option", "preset=\"tiny\"", "--model-option",
            "in_channels=4", "--scale", "2", "--train-data", str(raster), "--degradation", "sensor,bicubic",
            "--patch-size", "16", "--patches-per-image", "8", "--batch-size", "4", "--num-epoch", "1",
            "--workers", "0", "--out-dir", str(folder / "run"), "--quiet"]  # fmt: skip
    assert run_cli(train.main, argv) == 0
    return folder / "run" / "last.pth"


def _sr(checkpoint: Path, source: Path, out: Path, *extra: str) -> int:
    argv = ["--checkpoint", str(checkpoint), str(source), "--out-dir", str(out), "--quiet", *extra]
    return run_cli(super_resolve.main, argv)


# ---------------------------------------------------------------------------------------
# Radiometry, degradation, Wald's protocol
# ---------------------------------------------------------------------------------------


def test_a_model_trained_on_a_raster_stores_its_value_scale(model_checkpoint):
    checkpoint = load_checkpoint(model_checkpoint)
    radiometry = Radiometry.from_dict(checkpoint["radiometry"])
    assert radiometry.bands == tuple(BANDS) and radiometry.dtype == "uint16"
    assert (radiometry.divisor, radiometry.offset) == (10_000.0, 0.0)
    assert all(lo < hi for lo, hi in zip(radiometry.low, radiometry.high))
    dn = torch.from_numpy(_landscape(4, 8, 8).astype(np.float32))
    torch.testing.assert_close(radiometry.to_dn(radiometry.to_model(dn)), dn, rtol=0, atol=1e-2)


def test_the_held_out_region_stays_out_of_training(tmp_path):
    array = _landscape(3, 40, 100)
    raster = _raster(tmp_path / "scene.tif", array)
    data = wald_data([raster], 2, ("sensor",), 0.25, 10_000.0, 0.0)
    split = holdout_column(100, 0.25, 2)
    assert split == 74 and data.train[0].hr.shape[-1] == 74 and data.held_out[0].hr.shape[-1] == 26
    west = torch.from_numpy(array[..., :split].astype(np.float32))
    torch.testing.assert_close(data.radiometry.to_dn(data.train[0].hr), west, rtol=0, atol=0.05)
    # the radiometry is fitted on the western part alone: a brighter east does not move it
    array[..., split:] = 60_000
    again = wald_data([_raster(tmp_path / "bright.tif", array)], 2, ("sensor",), 0.25, 10_000.0, 0.0)
    assert again.radiometry == data.radiometry


def test_the_sensor_degradation_has_the_stated_modulation_transfer():
    """A cosine of frequency f (cycles per HR pixel) keeps exp(-2 pi^2 sigma^2 f^2) x
    sin(pi f s) / (s sin(pi f)) of its amplitude (Gaussian, sigma = s / 3, then the s-pixel block
    mean), sampled at the LR pixel centres i s + (s - 1) / 2."""
    for scale in (2, 3):
        for f in (1 / (4 * scale), 1 / (2 * scale)):  # half the LR Nyquist frequency, and Nyquist
            x = torch.arange(96 * scale, dtype=torch.float64)
            hr = torch.cos(2 * math.pi * f * x).expand(1, 6 * scale, -1).contiguous()
            lr = downsample(hr, scale, "sensor")[0, 3, 8:-8]  # away from the mirrored borders
            wave = torch.cos(
                2 * math.pi * f * (torch.arange(8, 88, dtype=torch.float64) * scale + (scale - 1) / 2)
            )
            amplitude = ((lr * wave).sum() / wave.pow(2).sum()).item()
            gauss = math.exp(-2 * math.pi**2 * (scale / 3) ** 2 * f**2)
            expected = gauss * math.sin(math.pi * f * scale) / (scale * math.sin(math.pi * f))
            assert abs(amplitude - expected) < 0.005, (scale, f, amplitude, expected)
    assert abs(expected - 0.385) < 0.001  # x3 at the LR Nyquist frequency, as imresize.py states


def test_a_photograph_model_adapted_to_bands_is_that_model_on_identical_bands():
    """--init-from an RGB model: on six copies of one gray band, the six-band model gives each band
    exactly what the RGB model gives the gray image (replicated in, BT.601 luma out)."""
    photo = build_model("edsr", scale=2, preset="tiny")
    path = ROOT / "checkpoints" / "srcnn_x3.pth"  # any valid file to carry the weights
    checkpoint = load_checkpoint(path)
    spec = {"name": "edsr", "scale": 2, "options": {"preset": "tiny"}}
    checkpoint = {"format": checkpoint["format"], "model": spec, "state_dict": photo.state_dict()}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("trainer.load_checkpoint", lambda _: checkpoint)
        bands = build_model("edsr", scale=2, preset="tiny", in_channels=6)
        message = initialise_from(bands, "photo.pth")
    assert "adapted to the band count" in message
    gray = torch.rand(1, 1, 12, 12)
    with torch.no_grad():
        rgb = photo(gray.expand(1, 3, 12, 12))
        expected = (rgb * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        out = bands(gray.expand(1, 6, 12, 12))
    torch.testing.assert_close(out, expected.expand(1, 6, 24, 24), rtol=1e-5, atol=1e-5)


def test_a_band_by_band_model_from_a_photograph_model_is_that_model_on_each_band():
    """band_by_band=true: one single-band network for every band; --init-from an RGB model makes
    it exactly that model applied to each band as a gray image, at six times a gray pass's cost."""
    photo = build_model("edsr", scale=2, preset="tiny")
    checkpoint = load_checkpoint(ROOT / "checkpoints" / "srcnn_x3.pth")
    spec = {"name": "edsr", "scale": 2, "options": {"preset": "tiny"}}
    checkpoint = {"format": checkpoint["format"], "model": spec, "state_dict": photo.state_dict()}
    bands = build_model("edsr", scale=2, preset="tiny", in_channels=6, band_by_band=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("trainer.load_checkpoint", lambda _: checkpoint)
        initialise_from(bands, "photo.pth")
    lr = torch.rand(2, 6, 12, 12)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    with torch.no_grad():
        out = bands(lr)
        for band in range(6):
            gray = lr[:, band : band + 1]
            expected = (photo(gray.expand(2, 3, 12, 12)) * luma).sum(1)
            torch.testing.assert_close(out[:, band], expected, rtol=1e-5, atol=1e-5)
    gray_cost = multiply_adds_per_pixel(build_model("edsr", scale=2, preset="tiny", in_channels=1), 2, 1)
    assert multiply_adds_per_pixel(bands, 2, 6) == pytest.approx(6 * gray_cost)


# ---------------------------------------------------------------------------------------
# SR of rasters
# ---------------------------------------------------------------------------------------


def test_the_sr_raster_keeps_grid_units_bands_and_nodata(model_checkpoint, tmp_path):
    array = _landscape(4, 40, 50, seed=3)
    array[:, :, :6] = 0  # a nodata margin
    source = _raster(tmp_path / "in.tif", array, nodata=0)
    assert _sr(model_checkpoint, source, tmp_path / "out") == 0
    with rasterio.open(tmp_path / "out" / "in_run_last.tif") as sr, rasterio.open(source) as lr:
        assert sr.crs == lr.crs and sr.dtypes == ("uint16",) * 4 and sr.descriptions == tuple(BANDS)
        assert (sr.width, sr.height) == (100, 80) and sr.nodata == 0 and sr.bounds == lr.bounds
        for row, col in [(0, 0), (79, 99), (33, 61)]:
            np.testing.assert_allclose(xy(sr.transform, row, col), GRID @ ((col + 0.5) / 2, (row + 0.5) / 2),
                                       rtol=0, atol=1e-6)  # fmt: skip
        out = sr.read()
    assert (out[:, :, :12] == 0).all() and (out[:, :, 12:] > 0).all()
    # in the input's units, not rescaled to 16 bits: the bicubic output's mean per band is the
    # input's, and the (barely trained) model's is near it
    with rasterio.open(tmp_path / "out" / "in_bicubic_x2.tif") as bicubic:
        np.testing.assert_allclose(
            bicubic.read()[:, :, 12:].mean((1, 2)), array[:, :, 6:].mean((1, 2)), rtol=0.01
        )
    np.testing.assert_allclose(out[:, :, 12:].mean((1, 2)), array[:, :, 6:].mean((1, 2)), rtol=0.25)


def _product(folder: Path, offset: float | None, level: str = "L2A") -> Path:
    """A Sentinel-2 SAFE folder's skeleton: its metadata file stating the quantification value
    and (from processing baseline 04.00) the offset; returns the folder band files go in."""
    quantification, add = ("BOA_QUANTIFICATION_VALUE", "BOA_ADD_OFFSET") if level == "L2A" else (
        "QUANTIFICATION_VALUE", "RADIO_ADD_OFFSET")  # fmt: skip
    offsets = "" if offset is None else "".join(f'<{add} band_id="{i}">{offset:g}</{add}>' for i in range(13))
    (folder / f"MTD_MSI{level}.xml").parent.mkdir(parents=True, exist_ok=True)
    (folder / f"MTD_MSI{level}.xml").write_text(
        f'<?xml version="1.0"?><n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int">'
        f"<n1:General_Info><Product_Image_Characteristics><QUANTIFICATION_VALUES_LIST><{quantification}>"
        f"10000</{quantification}></QUANTIFICATION_VALUES_LIST><OFFSETS>{offsets}</OFFSETS>"
        f"</Product_Image_Characteristics></n1:General_Info></n1:Level-2A_User_Product>"
    )
    bands = folder / "GRANULE" / "L2A_T18SVG" / "IMG_DATA" / "R20m"
    bands.mkdir(parents=True)
    return bands


def test_a_product_that_states_an_offset_is_read_and_written_in_its_units(model_checkpoint, tmp_path, capsys):
    """Item 2: a model trained on DN / 10,000 applied to a processing-baseline-04.00 L2A product
    (DN = 10,000 reflectance + 1,000): the product's offset is read from its metadata, so the SR
    is the same reflectance, written in the product's DN (1,000 higher)."""
    array = _landscape(4, 30, 40, seed=5) + 2000  # away from 0, where uint16 output is clipped
    (tmp_path / "plain").mkdir()
    plain = _raster(tmp_path / "plain" / "scene.tif", array)
    shifted = _raster(_product(tmp_path / "S2B.SAFE", -1000) / "scene.tif", array + 1000)
    assert _sr(model_checkpoint, plain, tmp_path / "out_plain") == 0
    assert "its product states" not in capsys.readouterr().out
    assert _sr(model_checkpoint, shifted, tmp_path / "out_l2a") == 0
    assert "its product states reflectance = (DN - 1000) / 10000" in capsys.readouterr().out
    with (
        rasterio.open(tmp_path / "out_plain" / "scene_run_last.tif") as a,
        rasterio.open(tmp_path / "out_l2a" / "scene_run_last.tif") as b,
    ):
        difference = b.read().astype(np.int64) - a.read().astype(np.int64)
    assert np.abs(difference - 1000).max() <= 1  # the same reflectance; rounding apart
    # training on it with other units than the product states is refused in one line
    argv = ["train", "--model", "edsr", "--model-option", "preset=\"tiny\"", "--model-option",
            "in_channels=4", "--scale", "2", "--train-data", str(shifted), "--patch-size", "16",
            "--num-epoch", "1", "--workers", "0", "--quiet", "--out-dir", str(tmp_path / "run")]  # fmt: skip
    capsys.readouterr()
    assert run_cli(train.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--value-offset -1000" in err and not (tmp_path / "run").exists()
    # a product whose metadata cannot be read: one line, nothing written
    broken = _product(tmp_path / "S2C.SAFE", None, "L1C")
    (tmp_path / "S2C.SAFE" / "MTD_MSIL1C.xml").write_text("<not xml")
    source = _raster(broken / "scene.tif", array)
    assert _sr(model_checkpoint, source, tmp_path / "out_broken") == 2
    assert "MTD_MSIL1C.xml" in capsys.readouterr().err and not (tmp_path / "out_broken").exists()


@pytest.mark.parametrize("dtype", ["int16", "float32"])
def test_rasters_of_other_pixel_types_come_back_in_their_type(model_checkpoint, tmp_path, dtype):
    checkpoint = load_checkpoint(model_checkpoint)
    checkpoint["radiometry"]["dtype"] = dtype
    path = save_checkpoint(checkpoint, tmp_path / f"{dtype}.pth")
    array = _landscape(4, 20, 20).astype(dtype)
    source = _raster(tmp_path / "in.tif", array, transform=None)
    assert _sr(path, source, tmp_path / "out", "--no-baseline") == 0
    with rasterio.open(tmp_path / "out" / f"in_{dtype}.tif") as sr:
        assert sr.dtypes == (dtype,) * 4 and (sr.width, sr.height) == (40, 40)
        assert abs(float(sr.read().mean()) - float(array.mean())) < 0.02 * float(array.mean())


def test_memory_is_bounded_by_the_tile_and_tiles_do_not_show(model_checkpoint, tmp_path, monkeypatch):
    source = _raster(tmp_path / "in.tif", _landscape(4, 70, 90, seed=5))
    assert _sr(model_checkpoint, source, tmp_path / "whole", "--no-baseline", "--tile", "512") == 0
    windows = []
    read = multispectral.read_window

    def spy(path, box=None):
        windows.append(box)
        return read(path, box)

    monkeypatch.setattr(multispectral, "read_window", spy)
    assert _sr(model_checkpoint, source, tmp_path / "tiled", "--no-baseline", "--tile", "24") == 0
    assert len(windows) == 12 and all(box is not None for box in windows)
    assert max((b - t) * (r - l) for t, l, b, r in windows) <= (24 + 2 * 16) ** 2
    with (
        rasterio.open(tmp_path / "whole" / "in_run_last.tif") as a,
        rasterio.open(tmp_path / "tiled" / "in_run_last.tif") as b,
    ):
        np.testing.assert_array_equal(a.read(), b.read())  # the tiny model's reach fits the overlap


def test_scores_against_a_reference_raster_are_reported_per_band(model_checkpoint, tmp_path, capsys):
    hr = _landscape(4, 40, 40, seed=7)
    lr = multispectral.to_dtype(downsample(torch.from_numpy(hr.astype(np.float32)), 2, "sensor"), "uint16")
    source = _raster(tmp_path / "lr.tif", lr)
    gt = _raster(tmp_path / "hr.tif", hr, transform=GRID @ Affine.scale(0.5))
    assert _sr(model_checkpoint, source, tmp_path / "out", "--gt", str(gt), "--json") == 0
    record = json.loads(capsys.readouterr().out)
    row = record["rasters"][0]
    assert row["bands"] == BANDS
    for who in ("edsr", "bicubic"):
        assert len(row[who]["band_psnr"]) == 4 and row[who]["sam"] >= 0 and row[who]["ergas"] > 0
        assert row[who]["psnr"] == pytest.approx(np.mean(row[who]["band_psnr"]))


def test_registered_scores_see_through_a_reference_raster_from_another_sensor(
    model_checkpoint, tmp_path, capsys
):
    """Issue [18], item 2, for rasters: a reference shifted by 0.6 HR pixel and 20 % brighter
    (another sensor) scores far lower than the same reference as it is; with --registration both
    the registered scores are back near the aligned reference's, printed beside the plain ones."""
    hr = _landscape(4, 48, 48, seed=8).astype(np.float32) + 1000
    lr = multispectral.to_dtype(downsample(torch.from_numpy(hr), 2, "bicubic"), "uint16")
    source = _raster(tmp_path / "lr.tif", lr)
    moved = shift_image(torch.from_numpy(hr)[None], torch.tensor([[0.6, -0.6]]))[0] * 1.2
    aligned = _raster(tmp_path / "aligned.tif", hr.astype(np.uint16), transform=GRID @ Affine.scale(0.5))
    other = _raster(tmp_path / "other.tif", multispectral.to_dtype(moved, "uint16"), GRID @ Affine.scale(0.5))
    scored = {}
    for name, gt in (("aligned", aligned), ("other", other)):
        argv = ["--gt", str(gt), "--json", "--registration", "both", "--overwrite"]
        assert _sr(model_checkpoint, source, tmp_path / "out", *argv) == 0
        scored[name] = json.loads(capsys.readouterr().out)["rasters"][0]["bicubic"]
    assert scored["other"]["psnr"] < scored["aligned"]["psnr"] - 5
    assert scored["other"]["registered_psnr"] > scored["other"]["psnr"] + 5
    assert abs(scored["other"]["registered_psnr"] - scored["aligned"]["registered_psnr"]) < 3
    assert len(scored["other"]["registered_band_psnr"]) == 4
    assert _sr(model_checkpoint, source, tmp_path / "text", "--gt", str(other), "--registration", "both") == 0
    assert "registered" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", ["band count", "pixel type", "all nodata", "corrupt", "photo model", "bad gt"]
)
def test_a_raster_that_does_not_fit_is_one_line_and_writes_nothing(model_checkpoint, tmp_path, capsys, case):
    array, checkpoint, nodata, extra = _landscape(4, 20, 20), model_checkpoint, None, []
    if case == "band count":
        array = _landscape(6, 20, 20)
    elif case == "pixel type":
        array = (array // 256).astype(np.uint8)
    elif case == "all nodata":
        array[:], nodata = 7, 7
    elif case == "photo model":
        checkpoint = EDSR_X2
    elif case == "bad gt":
        extra = ["--gt", str(_raster(tmp_path / "gt.tif", _landscape(4, 30, 30)))]
    source = _raster(tmp_path / "in.tif", array, nodata=nodata, descriptions=BANDS + ["B11", "B12"])
    if case == "corrupt":
        source.write_bytes(source.read_bytes()[:600])
    before = sorted(tmp_path.iterdir())
    assert _sr(checkpoint, source, tmp_path, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and str(source.name) in err, err
    assert sorted(tmp_path.iterdir()) == before
    expected = {"band count": "6 bands, but", "pixel type": "uint8 pixels", "all nodata": "nodata",
                "photo model": "photograph model", "bad gt": "gt.tif"}  # fmt: skip
    assert expected.get(case, "") in err


def test_wald_training_refuses_what_does_not_fit_in_one_line(tmp_path, capsys):
    raster = _raster(tmp_path / "scene.tif", _landscape(4, 40, 60))
    base = ["train", "--model", "edsr", "--model-option", "preset=\"tiny\"", "--scale", "2", "--train-data",
            str(raster), "--patch-size", "16", "--num-epoch", "1", "--workers", "0", "--quiet"]  # fmt: skip
    cases = {
        "in_channels": ([], "4 bands, but edsr is built for 3"),
        "kernel": (["--model-option", "in_channels=4", "--degradation", "bilinear"], "sensor or bicubic"),
        "scales": (["--model-option", "in_channels=4", "--train-scales", "1,0.8"], "--train-scales"),
    }
    for name, (extra, words) in cases.items():
        out = tmp_path / name
        assert run_cli(train.main, [*base, *extra, "--out-dir", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, (name, err)
        assert not out.exists()


# ---------------------------------------------------------------------------------------
# Raster pairs from two sensors (issue [18], item 1)
# ---------------------------------------------------------------------------------------


def _raster_pair(folder: Path, name: str = "scene", bands: int = 2, shift: float = 0.5, **change) -> Path:
    """hr/<name>.tif and lr/<name>.tif: a 20 m raster and its x2 counterpart on a 10 m grid whose
    origin is `shift` HR pixels off (as the Landsat pan band is), the HR another sensor's
    radiometry (gain 1.1); `change` replaces the HR's array or transform."""
    hr = _landscape(bands, 64, 96)
    lr = downsample(torch.from_numpy(hr.astype(np.float32)), 2, "sensor").round().numpy().astype(np.uint16)
    hr = (hr * 1.1).astype(np.uint16)
    fine = GRID @ Affine.scale(0.5) @ Affine.translation(-shift, -shift)
    for half, array, transform in (
        ("hr", change.get("hr", hr), change.get("transform", fine)),
        ("lr", lr, GRID),
    ):
        (folder / half).mkdir(parents=True, exist_ok=True)
        _raster(folder / half / f"{name}.tif", array, transform)
    return folder


def _pair_training(pairs: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", "edsr", "--model-option", "preset=\"tiny\"", "--model-option",
            "in_channels=2", "--scale", "2", "--train-data", str(pairs), "--patch-size", "24",
            "--patches-per-image", "8", "--batch-size", "4", "--num-epoch", "1", "--workers", "0",
            "--out-dir", str(out), "--quiet", *extra]  # fmt: skip


def test_raster_pairs_from_two_sensors_train_on_their_west_and_validate_on_their_east(tmp_path):
    pairs = _raster_pair(tmp_path / "pairs")
    data = multispectral.paired_data(multispectral.raster_pairs(str(pairs)), 2, 0.25, 10_000.0, 0.0)
    (train_pair,), (held_out,) = data.train, data.held_out
    assert train_pair.hr.shape == (2, 64, 72) and train_pair.lr.shape == (2, 32, 36)
    assert held_out.hr.shape == (2, 64, 24) and held_out.lr.shape == (2, 32, 12)
    lr_dn = torch.from_numpy(rasterio.open(pairs / "lr" / "scene.tif").read().astype(np.float32))
    torch.testing.assert_close(data.radiometry.to_dn(train_pair.lr), lr_dn[..., :36], rtol=0, atol=0.05)
    out = tmp_path / "run"
    assert run_cli(train.main, _pair_training(pairs, out, "--registration", "both")) == 0
    checkpoint = load_checkpoint(out / "last.pth")
    assert checkpoint["radiometry"]["bands"] == BANDS[:2]
    assert checkpoint["history"][0]["psnr"] > 0 and checkpoint["args"]["registration"] == "both"


@pytest.mark.parametrize(
    "case, words",
    [
        ("ratio", "is not its LR raster"),
        ("partner", "no image named"),
        ("bands", "1 bands of uint16, but its HR raster"),
        ("pixel", "divided by 2"),
        ("place", "not the same footprint"),
        ("kernel", "bring their own LR"),
    ],
)
def test_raster_pairs_that_do_not_fit_are_one_line_and_write_nothing(tmp_path, capsys, case, words):
    pairs, extra = tmp_path / "pairs", []
    if case == "ratio":
        _raster_pair(pairs, hr=_landscape(2, 60, 96))
    elif case == "partner":
        _raster_pair(pairs)
        _raster(pairs / "hr" / "alone.tif", _landscape(2, 64, 96))
    elif case == "bands":
        _raster_pair(pairs)
        _raster(pairs / "lr" / "scene.tif", _landscape(1, 32, 48))
    elif case == "pixel":
        _raster_pair(pairs, transform=GRID @ Affine.scale(0.4))
    elif case == "place":
        _raster_pair(pairs, transform=GRID @ Affine.scale(0.5) @ Affine.translation(5, 0))
    else:
        _raster_pair(pairs)
        extra = ["--degradation", "sensor"]
    out = tmp_path / "run"
    assert run_cli(train.main, _pair_training(pairs, out, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
    assert not out.exists()


# ---------------------------------------------------------------------------------------
# Real rasters' geometry
# ---------------------------------------------------------------------------------------


def test_the_sr_of_a_bigearthnet_20m_band_lies_on_its_10m_grid(data_root, tmp_path):
    patch = data_root / "RS-sample" / "bigearthnet-s2" / "S2A_MSIL2A_20170617T113321_4_55"
    band = patch / "S2A_MSIL2A_20170617T113321_4_55_B05.tif"
    argv = ["--checkpoint", str(EDSR_X2), str(band), "--ext", "tif", "--out-dir", str(tmp_path), "--quiet"]
    assert run_cli(super_resolve.main, argv) == 0
    sr = rasterio.open(tmp_path / f"{band.stem}_edsr_x2.tif")
    ten = rasterio.open(patch / "S2A_MSIL2A_20170617T113321_4_55_B02.tif")
    with sr, ten:
        assert sr.crs == ten.crs and sr.shape == ten.shape
        np.testing.assert_allclose(tuple(sr.transform)[:6], tuple(ten.transform)[:6], rtol=0, atol=1e-9)


def test_the_landsat_8_pan_grid_is_half_a_pixel_off_the_sr_grid(data_root, tmp_path):
    """The x2 SR of a 30 m band has 15 m pixels over the 30 m footprint; the panchromatic grid is
    offset by half a 15 m pixel, so each pan pixel centre falls on a corner of the SR grid."""
    folder = data_root / "RS-sample" / "landsat8"
    argv = ["--checkpoint", str(EDSR_X2), str(folder / "l8_B4.tif"), "--ext", "tif", "--out-dir",
            str(tmp_path), "--quiet", "--no-baseline", "--tile", "512"]  # fmt: skip
    assert run_cli(super_resolve.main, argv) == 0
    with rasterio.open(tmp_path / "l8_B4_edsr_x2.tif") as sr, rasterio.open(folder / "l8_B8.tif") as pan:
        assert sr.res == pan.res == (15.0, 15.0)
        assert sr.bounds == rasterio.open(folder / "l8_B4.tif").bounds
        for row, col in [(0, 0), (600, 700), (1206, 1253)]:
            on_sr = ~sr.transform @ pan.xy(row, col)  # pan pixel centre in SR pixel coordinates
            np.testing.assert_allclose(on_sr, (col, row), rtol=0, atol=1e-9)


def test_the_export_describes_bands_value_scale_and_normalisation(model_checkpoint, tmp_path):
    pytest.importorskip("onnx")
    assert run_cli(train.main, ["export", str(model_checkpoint), str(tmp_path / "s2.onnx")]) == 0
    described = json.loads((tmp_path / "s2.onnx.json").read_text())
    radiometry = load_checkpoint(model_checkpoint)["radiometry"]
    assert described["bands"] == 4 and described["band_names"] == BANDS
    assert described["value_scale"] == "reflectance = (DN + 0) / 10000 for uint16 rasters"
    assert described["normalisation"] == {"low": radiometry["low"], "high": radiometry["high"]}
    assert described["nodata"] is None


# ---------------------------------------------------------------------------------------
# One file per band
# ---------------------------------------------------------------------------------------


def test_band_files_are_stacked_in_the_models_order(model_checkpoint, tmp_path):
    """A folder of one file per band (as BigEarthNet), and --bands, give the output of the
    stacked raster, whatever order the files are listed in."""
    array = _landscape(4, 24, 30, seed=11)
    stacked = _raster(tmp_path / "scene.tif", array)
    folder = tmp_path / "patch"
    folder.mkdir()
    for index in (3, 1, 0, 2):  # written out of order; one extra file that is no band
        _raster(folder / f"patch_{BANDS[index]}.tif", array[index : index + 1], descriptions=[])
    _raster(folder / "patch_B01.tif", array[:1], descriptions=[])
    assert _sr(model_checkpoint, stacked, tmp_path / "a", "--no-baseline") == 0
    assert _sr(model_checkpoint, folder, tmp_path / "b", "--no-baseline") == 0
    files = ",".join(str(folder / f"patch_{band}.tif") for band in BANDS)
    argv = ["--checkpoint", str(model_checkpoint), "--bands", files, "--out-dir", str(tmp_path / "c"),
            "--quiet", "--no-baseline"]  # fmt: skip
    assert run_cli(super_resolve.main, argv) == 0
    outputs = [tmp_path / "a" / "scene_run_last.tif", tmp_path / "b" / "patch_run_last.tif",
               tmp_path / "c" / "patch_run_last.tif"]  # fmt: skip
    expected = rasterio.open(outputs[0]).read()
    for path in outputs[1:]:
        with rasterio.open(path) as sr:
            np.testing.assert_array_equal(sr.read(), expected)
            assert sr.descriptions == tuple(BANDS)


def test_band_files_of_different_grids_are_one_line(model_checkpoint, tmp_path, capsys):
    array = _landscape(4, 24, 30)
    files = [
        _raster(tmp_path / f"p_{band}.tif", array[i : i + 1], descriptions=[]) for i, band in enumerate(BANDS)
    ]
    _raster(files[2], _landscape(1, 12, 15), transform=GRID @ Affine.scale(2), descriptions=[])
    argv = ["--checkpoint", str(model_checkpoint), "--bands", ",".join(map(str, files)), "--out-dir",
            str(tmp_path / "out")]  # fmt: skip
    assert run_cli(super_resolve.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "one grid" in err and "p_B07.tif" in err
    assert not (tmp_path / "out").exists()


def test_the_api_gives_what_the_cli_gives(model_checkpoint, tmp_path):
    from srkit import SuperResolver

    array = _landscape(4, 24, 30, seed=13)
    source = _raster(tmp_path / "in.tif", array)
    assert _sr(model_checkpoint, source, tmp_path / "cli", "--no-baseline") == 0
    expected = rasterio.open(tmp_path / "cli" / "in_run_last.tif").read()
    resolver = SuperResolver(model_checkpoint)
    written = resolver.upscale_file(source, tmp_path / "api.tif")
    with rasterio.open(written) as sr:
        np.testing.assert_array_equal(sr.read(), expected)
        assert sr.transform == GRID @ Affine.scale(0.5)
    np.testing.assert_array_equal(resolver.upscale(array), expected)  # numpy (bands, H, W) in, same out
    from utils import ImageError

    with pytest.raises(ImageError, match="3 bands, but"):
        resolver.upscale(array[:3])
    with pytest.raises(ImageError, match="uint16 numpy array"):
        resolver.upscale(array.astype(np.float32))


def test_jpeg_2000_band_files_are_read_as_gdal_reads_them(model_checkpoint, tmp_path):
    """Sentinel-2 products ship one JPEG 2000 file per band: a folder of them is stacked as the
    GeoTIFF bands are, losslessly (the same output as from the GeoTIFF)."""
    array = _landscape(4, 24, 30, seed=17)
    stacked = _raster(tmp_path / "scene.tif", array)
    folder = tmp_path / "safe"
    folder.mkdir()
    profile = {"driver": "JP2OpenJPEG", "width": 30, "height": 24, "count": 1, "dtype": "uint16", "crs": CRS,
               "transform": GRID, "QUALITY": 100, "REVERSIBLE": "YES"}  # fmt: skip
    for index, band in enumerate(BANDS):
        with rasterio.open(folder / f"T18SVG_{band}.jp2", "w", **profile) as raster:
            raster.write(array[index : index + 1])
    assert _sr(model_checkpoint, stacked, tmp_path / "a", "--no-baseline") == 0
    assert _sr(model_checkpoint, folder, tmp_path / "b", "--no-baseline") == 0
    with (
        rasterio.open(tmp_path / "a" / "scene_run_last.tif") as a,
        rasterio.open(tmp_path / "b" / "safe_run_last.tif") as b,
    ):
        np.testing.assert_array_equal(a.read(), b.read())
        assert b.crs == a.crs and b.transform == a.transform
