"""Benchmark metrics: the published bicubic baselines, and the protocol's details one by one."""

from __future__ import annotations

import math

import pytest
import torch

from data import load_pairs
from imresize import imresize
from metrics import psnr, rgb_to_y, ssim

# ../shared/datasets/README.md: bicubic PSNR / SSIM by the MATLAB protocol.
BASELINES = {
    ("Set5", 2): (33.68, 0.9304),
    ("Set5", 3): (30.41, 0.8690),
    ("Set5", 4): (28.43, 0.8113),
    ("Set14", 2): (30.23, 0.8692),
    ("Set14", 3): (27.54, 0.7745),
    ("Set14", 4): (26.00, 0.7030),
}


@pytest.mark.parametrize(
    ("name", "scale"),
    [pytest.param(*key, marks=() if key == ("Set5", 3) else pytest.mark.slow) for key in BASELINES],
)  # Set5 x3 in the fast tier, every published cell in the full suite
def test_bicubic_baseline_matches_published_table(data_root, monkeypatch, name, scale):
    monkeypatch.setenv("SR_DATA_ROOT", str(data_root))
    pairs = load_pairs(name, scale, download=False, progress=False)
    assert len(pairs) == {"Set5": 5, "Set14": 14}[name]
    psnrs, ssims = [], []
    for pair in pairs:
        sr = imresize(pair.lr, size=tuple(pair.hr.shape[-2:]))
        psnrs.append(psnr(sr, pair.hr, shave=scale).item())
        ssims.append(ssim(sr, pair.hr, shave=scale).item())
    expected_psnr, expected_ssim = BASELINES[(name, scale)]
    assert sum(psnrs) / len(psnrs) == pytest.approx(expected_psnr, abs=0.03)
    assert sum(ssims) / len(ssims) == pytest.approx(expected_ssim, abs=0.002)


def test_psnr_of_a_known_error():
    hr = torch.full((1, 3, 16, 16), 100 / 255)
    sr = hr + 10 / 255  # every channel off by 10 levels: Y off by 10 * (65.481+128.553+24.966)/255
    y_error = 10 * (65.481 + 128.553 + 24.966) / 255
    assert psnr(sr, hr, shave=0).item() == pytest.approx(10 * math.log10(255**2 / y_error**2), abs=1e-9)
    assert psnr(sr, hr, shave=0, y_channel=False).item() == pytest.approx(
        10 * math.log10(255**2 / 100), abs=1e-9
    )


def test_sr_is_rounded_to_8_bits():
    hr = torch.randint(0, 256, (3, 20, 20)).float() / 255
    assert psnr(hr + 0.4 / 255, hr, shave=2).item() == math.inf
    assert psnr(hr + 0.6 / 255, hr, shave=2).item() < math.inf


def test_y_is_matlab_rgb2ycbcr_as_float():
    rgb = torch.tensor([255.0, 0.0, 0.0]).view(3, 1, 1)
    assert rgb_to_y(rgb).item() == pytest.approx(16 + 65.481)
    white = torch.full((3, 1, 1), 255.0)
    assert rgb_to_y(white).item() == pytest.approx(235.0)


def test_grayscale_is_scored_on_its_own_values():
    hr = torch.rand(1, 1, 24, 24)
    sr = (hr + 0.05).clamp(0, 1)
    as_rgb = psnr(sr.expand(1, 3, 24, 24), hr.expand(1, 3, 24, 24), shave=3)
    gray = psnr(sr, hr, shave=3)
    assert gray.item() != pytest.approx(as_rgb.item(), abs=0.05)  # Y of gray-as-RGB is rescaled


def test_shave_ignores_the_border():
    hr = torch.rand(3, 30, 30)
    sr = hr.clone()
    sr[:, :3, :] = 0
    sr[:, :, -3:] = 1
    assert psnr(sr, hr, shave=3).item() == math.inf
    assert psnr(sr, hr, shave=2).item() < 40
    assert ssim(sr, hr, shave=3).item() == pytest.approx(1.0)


def test_batched_equals_one_by_one():
    hr = torch.rand(4, 3, 32, 40)
    sr = (hr + 0.03 * torch.randn_like(hr)).clamp(0, 1)
    for metric in (psnr, ssim):
        batch = metric(sr, hr, shave=4)
        assert batch.shape == (4,) and batch.dtype == torch.float64
        single = torch.stack([metric(s, h, shave=4) for s, h in zip(sr, hr)])
        torch.testing.assert_close(batch, single)


def test_ssim_of_identical_images_is_one_and_drops_with_noise():
    torch.manual_seed(0)
    hr = torch.rand(3, 40, 40)
    assert ssim(hr, hr, shave=2).item() == pytest.approx(1.0, abs=1e-12)
    noise = torch.randn_like(hr)
    scores = [ssim((hr + level * noise).clamp(0, 1), hr, shave=2).item() for level in (0.05, 0.1, 0.2)]
    assert 0 < scores[2] < scores[1] < scores[0] < 0.99
    assert ssim((hr + 0.1 * noise).clamp(0, 1), hr, shave=2, y_channel=False).item() < 0.99


def test_metric_input_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(torch.rand(3, 10, 10), torch.rand(3, 10, 12), shave=1)
    with pytest.raises(ValueError, match="shave"):
        psnr(torch.rand(3, 10, 10), torch.rand(3, 10, 10), shave=5)


def test_multispectral_metrics_by_their_definitions():
    """[17] item 4: per-band PSNR on reflectance, SAM and ERGAS, checked against values worked
    out by hand from their definitions."""
    from metrics import band_psnr, ergas, spectral_angle

    hr = torch.tensor([[[0.2, 0.4], [0.6, 0.8]], [[0.1, 0.1], [0.1, 0.1]]], dtype=torch.float64)
    sr = hr.clone()
    sr[0] += 0.01  # band 0 off by 0.01 everywhere: MSE 1e-4, PSNR 40 dB on a peak of 1
    torch.testing.assert_close(band_psnr(sr, hr)[0], torch.tensor(40.0, dtype=torch.float64))
    assert torch.isinf(band_psnr(sr, hr)[1])  # band 1 exact
    # ERGAS at x2: 100 / 2 * sqrt(((0.01 / 0.5)^2 + 0) / 2) = 50 * 0.02 / sqrt(2)
    torch.testing.assert_close(ergas(sr, hr, 2), torch.tensor(50 * 0.02 / 2**0.5, dtype=torch.float64))
    assert spectral_angle(hr, hr) == 0 and ergas(hr, hr, 2) == 0
    # SAM ignores a common gain (the spectra keep their shape) and measures a change of shape:
    # pixel spectra (1, 0) against (1, 1) are 45 degrees apart
    assert spectral_angle(hr * 3, hr).item() < 1e-5
    a = torch.tensor([[[1.0]], [[0.0]]])
    b = torch.tensor([[[1.0]], [[1.0]]])
    torch.testing.assert_close(spectral_angle(a, b), torch.tensor(45.0, dtype=torch.float64))
