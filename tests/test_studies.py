"""The source studies as commands: degradation robustness, frequency-domain analysis, ONNX export."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import super_resolve
import train
from images import save_image
from inference import OnnxModel
from metrics import band_energy_ratios, radial_power_spectrum
from model import build_model, load_model
from utils import run_cli


def _smooth(size: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size[0] // 4 + 1, size[1] // 4 + 1, 3), dtype=np.uint8)
    return np.array(Image.fromarray(coarse).resize((size[1], size[0]), Image.BICUBIC))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    (root / "train").mkdir()
    for i in range(4):
        Image.fromarray(_smooth((48, 48), i)).save(root / "train" / f"t{i}.png")
    (root / "hr").mkdir()
    for i in range(2):
        Image.fromarray(_smooth((60, 66), 10 + i)).save(root / "hr" / f"h{i}.png")
    common = ["--train-data", str(root / "train"), "--val-data", str(root / "hr"), "--patch-size", "12",
              "--patches-per-image", "4", "--batch-size", "8", "--num-epoch", "1", "--quiet"]  # fmt: skip
    assert run_cli(train.main, ["train", *common, "--out-dir", str(root / "srcnn")]) == 0
    residual = ["--model", "residual", "--model-option", "depth=4", "--model-option", "features=16"]
    assert run_cli(train.main, ["train", *common, *residual, "--out-dir", str(root / "residual")]) == 0
    return root


# -- frequency-domain analysis ------------------------------------------------------------


def _band_limited(image: torch.Tensor, cutoff: float) -> torch.Tensor:
    """The image with every frequency at or above `cutoff` cycles/pixel removed (ideal filter)."""
    spectrum = torch.fft.fft2(image.double())
    fy = torch.fft.fftfreq(image.shape[-2], dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(image.shape[-1], dtype=torch.float64)[None, :]
    return torch.fft.ifft2(spectrum * ((fy**2 + fx**2).sqrt() < cutoff)).real


def test_band_limited_image_gives_the_expected_ratios():
    hr = torch.rand(1, 96, 96, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    low_only = _band_limited(hr, 1 / 6)
    ratios = band_energy_ratios(low_only, hr)
    assert ratios["low"] == pytest.approx(1.0, abs=1e-9)
    assert ratios["mid"] < 1e-9 and ratios["high"] < 1e-9
    low_and_mid = _band_limited(hr, 1 / 3)
    ratios = band_energy_ratios(low_and_mid, hr)
    assert ratios["low"] == pytest.approx(1.0, abs=1e-9) and ratios["mid"] == pytest.approx(1.0, abs=1e-9)
    assert ratios["high"] < 1e-9


def test_identical_images_give_ratio_one_in_every_band():
    hr = torch.rand(3, 50, 70, generator=torch.Generator().manual_seed(1))
    assert band_energy_ratios(hr, hr) == {"low": 1.0, "mid": 1.0, "high": 1.0}


def test_radial_spectrum_of_white_noise_is_flat_and_blur_lowers_high_frequencies():
    noise = torch.rand(1, 128, 128, generator=torch.Generator().manual_seed(2))
    spectrum = radial_power_spectrum(noise)
    assert spectrum[1:].std() / spectrum[1:].mean() < 0.3
    blurred = torch.nn.functional.avg_pool2d(noise[None], 3, stride=1, padding=1, count_include_pad=False)[0]
    ratios = band_energy_ratios(blurred, noise)
    assert ratios["high"] < ratios["mid"] < ratios["low"] < 1


@pytest.mark.slow
def test_dataset_report_has_energy_ratios_and_plots_spectra(world, tmp_path, capsys):
    argv = ["--checkpoint", str(world / "srcnn" / "last.pth"), "--dataset", str(world / "hr"), "--quiet"]
    assert run_cli(super_resolve.main, [*argv, "--json", "--fda-plot", str(tmp_path / "fda.png")]) == 0
    result = json.loads(capsys.readouterr().out)
    for who in ("model", "bicubic"):
        for band in ("low", "mid", "high"):
            assert math.isfinite(result["mean"][f"{who}_energy_{band}"])
    assert result["mean"]["bicubic_energy_high"] < 1  # bicubic upscaling is blurrier than HR
    assert (tmp_path / "fda.png").read_bytes()[:4] == b"\x89PNG"
    assert run_cli(super_resolve.main, argv) == 0
    assert "spectral energy SR/HR" in capsys.readouterr().out


# -- degradation robustness ------------------------------------------------------------------


def test_degradation_study_reports_every_kernel_and_method(world, capsys):
    argv = ["--checkpoint", str(world / "residual" / "last.pth"), "--dataset", str(world / "hr"), "--quiet",
            "--degradation", "bicubic,bilinear,nearest", "--json"]  # fmt: skip
    assert run_cli(super_resolve.main, argv) == 0
    result = json.loads(capsys.readouterr().out)["degradations"]
    assert list(result) == ["bicubic", "bilinear", "nearest"]
    for by_method in result.values():
        assert set(by_method) == {"residual", "bicubic", "bilinear"}
        for values in by_method.values():
            assert 0 < values["l1"] < 0.5 and values["psnr"] > 10 and 0 < values["ssim"] <= 1
    assert result["nearest"]["bicubic"]["psnr"] != result["bicubic"]["bicubic"]["psnr"]  # kernels differ
    # with bicubic LR the figures are those of the plain --dataset report
    assert run_cli(super_resolve.main, argv[:5] + ["--json"]) == 0
    plain = json.loads(capsys.readouterr().out)["mean"]
    assert result["bicubic"]["residual"]["psnr"] == pytest.approx(plain["model_psnr"])
    assert result["bicubic"]["bicubic"]["psnr"] == pytest.approx(plain["bicubic_psnr"])
    assert run_cli(super_resolve.main, [*argv[:-3], "--degradation", "lanczos"]) == 2


# -- ONNX ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["srcnn", "residual"])
def test_onnx_export_matches_pytorch(world, tmp_path, name, capsys):
    checkpoint = world / name / "last.pth"
    assert run_cli(train.main, ["export", str(checkpoint), str(tmp_path / "model.onnx")]) == 0
    assert "exported" in capsys.readouterr().out
    described = json.loads((tmp_path / "model.onnx.json").read_text())  # [17] item 6
    assert (described["model"], described["scale"], described["bands"]) == (name, 3, 3)
    assert described["nodata"] is None and described["value_range"] == [0.0, 1.0]
    onnx_model = OnnxModel(tmp_path / "model.onnx")
    assert onnx_model.metadata["model"] == name and onnx_model.metadata["scale"] == "3"
    torch_model = load_model(torch.load(checkpoint, weights_only=True))
    for shape in ((1, 3, 17, 23), (2, 3, 9, 31)):  # dynamic batch, height and width
        lr = torch.rand(*shape)
        with torch.no_grad():
            expected = torch_model(lr)
        torch.testing.assert_close(onnx_model(lr), expected, atol=1e-4, rtol=0)
    lr_path = tmp_path / "lr.png"
    save_image(torch.rand(3, 14, 19), lr_path)
    for flag, source in (("--onnx", tmp_path / "model.onnx"), ("--checkpoint", checkpoint)):
        (tmp_path / flag).mkdir()
        assert (
            run_cli(
                super_resolve.main,
                [
                    flag,
                    str(source),
                    str(lr_path),
                    "--out-dir",
                    str(tmp_path / flag),
                    "--suffix",
                    f"{name}_x3",
                ],
            )  # fmt: skip
            == 0
        )
    a = np.asarray(Image.open(tmp_path / "--onnx" / f"lr_{name}_x3.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "--checkpoint" / f"lr_{name}_x3.png")).astype(int)
    assert np.abs(a - b).max() <= 1


def test_export_refuses_multi_frame_and_bad_onnx_files(world, tmp_path, capsys):
    model = build_model("piunet", 3, features=12, blocks=1)
    checkpoint = {"format": "srkit-checkpoint", "kind": "multi-frame",
                  "model": {"name": "piunet", "scale": 3, "options": {"features": 12, "blocks": 1}},
                  "state_dict": model.state_dict()}  # fmt: skip
    torch.save(checkpoint, tmp_path / "piunet.pth")
    assert run_cli(train.main, ["export", str(tmp_path / "piunet.pth"), str(tmp_path / "p.onnx")]) == 2
    assert "single-image" in capsys.readouterr().err and not (tmp_path / "p.onnx").exists()
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    assert run_cli(super_resolve.main, ["--onnx", str(tmp_path / "bad.onnx"), str(tmp_path / "x.png")]) == 2
    assert "ONNX" in capsys.readouterr().err


@pytest.mark.parametrize("scale", ["abc", "0", "4"])
def test_onnx_metadata_is_checked_not_believed(world, tmp_path, capsys, scale):
    import onnx

    assert (
        run_cli(train.main, ["export", str(world / "srcnn" / "last.pth"), str(tmp_path / "model.onnx")]) == 0
    )
    proto = onnx.load(str(tmp_path / "model.onnx"))
    next(
        entry for entry in proto.metadata_props if entry.key == "scale"
    ).value = scale  # the file says x4, is x3
    onnx.save(proto, str(tmp_path / "lying.onnx"))
    capsys.readouterr()
    save_image(torch.rand(3, 12, 12), tmp_path / "lr.png")
    argv = [
        "--onnx",
        str(tmp_path / "lying.onnx"),
        str(tmp_path / "lr.png"),
        "--out-dir",
        str(tmp_path / "out"),
    ]
    assert run_cli(super_resolve.main, argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "metadata" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
