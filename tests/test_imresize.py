"""MATLAB-compatible bicubic: the reference port's outputs, and the properties we rely on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import reference_file

from imresize import _resize_axis_gather, degrade, imresize, modcrop


def _reference_cases(reference_dir):
    arrays = np.load(reference_file(reference_dir, "imresize_matlab.npz"))
    for key in arrays.files:
        if "__scale_" not in key:
            continue
        name, scale_text = key.split("__scale_")
        scale = 1 / 3 if scale_text == "0.333333" else float(scale_text)
        yield key, arrays[f"{name}__input"], scale, arrays[key]


def test_matches_matlab_reference_at_every_scale(reference_dir):
    cases = list(_reference_cases(reference_dir))
    assert len(cases) >= 20
    scales = {round(scale, 6) for _, _, scale, _ in cases}
    assert {2.0, 3.0, 4.0, 0.5, 0.25, 0.7, 1.5, round(1 / 3, 6)} <= scales
    for key, image, scale, expected in cases:
        x = torch.from_numpy(image).permute(2, 0, 1)
        for dtype in (torch.float64, torch.float32):
            out = imresize(x.to(dtype), scale).permute(1, 2, 0).double().numpy()
            assert out.shape == expected.shape, key
            np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0, err_msg=f"{key} {dtype}")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(reference_dir):
    for key, image, scale, _ in _reference_cases(reference_dir):
        x = torch.from_numpy(image).permute(2, 0, 1).float()
        cpu = imresize(x, scale)
        cuda = imresize(x.cuda(), scale).cpu()
        torch.testing.assert_close(cuda, cpu, atol=1e-5, rtol=0, msg=key)


def test_batch_equals_images_one_by_one():
    batch = torch.rand(3, 2, 17, 23, dtype=torch.float64)
    together = imresize(batch, 1 / 3)
    apart = torch.stack([imresize(img, 1 / 3) for img in batch])
    torch.testing.assert_close(together, apart)
    assert together.shape == (3, 2, 6, 8)


def test_is_not_pytorch_bicubic():
    x = torch.rand(1, 3, 20, 20, dtype=torch.float64)
    ours = imresize(x, 2)
    theirs = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() > 1e-3


def test_is_differentiable():
    x = torch.rand(1, 1, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: imresize(t, 0.5), (x,))
    assert torch.autograd.gradcheck(lambda t: imresize(t, 1.5), (x,))
    assert torch.autograd.gradcheck(lambda t: imresize(t, 3), (x,))  # the integer-upscaling path


def test_integer_upscaling_path_equals_the_general_path():
    x = torch.rand(2, 3, 9, 14, dtype=torch.float64)
    for method in ("bicubic", "bilinear"):
        for factor in (2, 3, 4):
            general = _resize_axis_gather(x, -2, 9 * factor, float(factor), method)
            general = _resize_axis_gather(general, -1, 14 * factor, float(factor), method)
            torch.testing.assert_close(imresize(x, factor, method=method), general, atol=1e-12, rtol=0)


def test_size_argument_and_output_size():
    x = torch.rand(3, 10, 13)
    assert imresize(x, size=(30, 39)).shape == (3, 30, 39)
    torch.testing.assert_close(imresize(x, size=(30, 39)), imresize(x, 3))
    assert imresize(x, 0.7).shape == (3, 7, 10)  # ceil(10 * 0.7), ceil(13 * 0.7)


def test_constant_image_stays_constant_for_every_method():
    x = torch.full((1, 12, 15), 0.3, dtype=torch.float64)
    for method in ("bicubic", "bilinear", "nearest"):
        for scale in (0.25, 1 / 3, 0.5, 2, 3):
            torch.testing.assert_close(
                imresize(x, scale, method=method), torch.full_like(imresize(x, scale), 0.3)
            )


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        imresize(torch.rand(3, 4, 4), 0)
    with pytest.raises(TypeError):
        imresize(torch.zeros(3, 4, 4, dtype=torch.uint8), 2)
    with pytest.raises(ValueError):
        imresize(torch.rand(3, 4, 4), 2, method="lanczos")


def test_nearest_degradation_takes_block_centres():
    hr = torch.rand(3, 12, 9)
    lr = degrade(hr, 3, "nearest", bits=None)
    torch.testing.assert_close(lr, hr[:, 1::3, 1::3])


def test_degradations_crop_and_quantise():
    hr = modcrop(torch.rand(3, 25, 31), 3)
    assert hr.shape == (3, 24, 30)
    for kernel in ("bicubic", "bilinear", "nearest"):
        lr = degrade(hr, 3, kernel)
        assert lr.shape == (3, 8, 10)
        assert lr.min() >= 0 and lr.max() <= 1
        torch.testing.assert_close(lr * 255, torch.round(lr * 255))
    assert not torch.equal(degrade(hr, 3, "bicubic"), degrade(hr, 3, "bilinear"))
    with pytest.raises(ValueError):
        degrade(torch.rand(3, 25, 30), 3)


def test_integer_output_size_with_a_non_integer_scale_uses_that_scale():
    x = torch.rand(1, 10, 10, dtype=torch.float64)
    out = imresize(x, 1.95)  # 20 pixels, but the weights of 1.95, not of 2
    general = _resize_axis_gather(_resize_axis_gather(x, -2, 20, 1.95, "bicubic"), -1, 20, 1.95, "bicubic")
    torch.testing.assert_close(out, general, atol=1e-12, rtol=0)
    assert (out - imresize(x, 2)).abs().max() > 1e-3
