"""srkit.SuperResolver: the README's example runs as written, each kind of image comes back as
it went in, with the same pixels as super_resolve.py, and bad input is one-line UserError."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from srkit import SuperResolver
from utils import UserError

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "checkpoints" / "srcnn_x3.pth"


def test_the_readme_example_runs_and_prints_what_it_says():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    promised = [line.split("# ")[1].split(":")[0] for line in code.splitlines() if line.startswith("print(")]
    assert printed == ["(192, 144)", "(144, 192, 3)", "torch.Size([2, 3, 48, 48])"]
    assert [p.split(" ")[0] for p in promised] == [p.split(" ")[0] for p in printed]


def test_each_kind_comes_back_as_it_went_in_with_the_cli_pixels(tmp_path):
    import super_resolve

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "lr.png")
    assert super_resolve.main(["--checkpoint", str(CHECKPOINT), str(tmp_path / "lr.png"), "--quiet"]) == 0
    cli = np.asarray(Image.open(tmp_path / "lr_srcnn_x3.png"))
    sr = SuperResolver(CHECKPOINT, tile=16)  # tiles smaller than the image: the same pixels
    np.testing.assert_array_equal(sr.upscale(rgb), cli)
    np.testing.assert_array_equal(np.asarray(sr.upscale(Image.fromarray(rgb))), cli)
    tensor = sr.upscale(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    assert tensor.dtype == torch.float32 and tensor.shape == (3, 60, 90)
    assert np.abs(np.round(tensor.permute(1, 2, 0).numpy() * 255) - cli).max() <= 1
    gray16 = rng.integers(0, 65536, (10, 12), dtype=np.uint16)
    out16 = sr.upscale(gray16)
    assert out16.dtype == np.uint16 and out16.shape == (30, 36)
    rgba = sr.upscale(Image.fromarray(np.dstack([rgb, rgb[..., :1]])))
    assert rgba.mode == "RGBA" and rgba.size == (90, 60)
    assert sr.upscale(Image.fromarray(rgb[..., 0])).mode == "L"
    batch = sr.upscale(torch.rand(2, 3, 8, 8))
    assert batch.shape == (2, 3, 24, 24) and batch.min() >= 0 and batch.max() <= 1


def test_a_pil_image_is_decoded_as_the_same_image_read_from_a_file(tmp_path):
    from images import read_image_and_alpha

    rng = np.random.default_rng(1)
    gray = Image.fromarray(rng.integers(0, 256, (12, 14), dtype=np.uint8))
    keyed = gray.copy()
    keyed.info["transparency"] = int(np.asarray(gray)[0, 0])  # gray with a transparent value
    images = {
        "1-bit": gray.convert("1"),
        "gray, transparent value": keyed,
        "palette": gray.convert("RGB").convert("P"),
        "16-bit": Image.fromarray(rng.integers(0, 65536, (12, 14), dtype=np.uint16)),
    }
    sr = SuperResolver(CHECKPOINT)
    for kind, image in images.items():
        image.save(tmp_path / "in.png")
        color, _, alpha = read_image_and_alpha(tmp_path / "in.png")
        out = np.asarray(sr.upscale(Image.open(tmp_path / "in.png")))
        channels = color.shape[0] + (alpha is not None)
        assert (out.shape[-1] if out.ndim == 3 else 1) == channels, kind
        assert out.dtype == (np.uint16 if kind == "16-bit" else np.uint8), kind


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((8, 8), np.float32),
        np.zeros((8, 8, 5), np.uint8),
        torch.zeros(8, 8),
        torch.zeros(3, 8, 8, dtype=torch.uint8),
        "lr.png",
    ],
)
def test_images_of_the_wrong_kind_are_one_line_errors(bad):
    with pytest.raises(UserError) as caught:
        SuperResolver(CHECKPOINT).upscale(bad)
    assert "\n" not in str(caught.value)


def test_bad_checkpoints_and_devices_are_one_line_errors(tmp_path):
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    piunet = ROOT / "checkpoints" / "piunet_x3.pth"
    for args, message in [((tmp_path / "missing.pth",), "missing"), ((tmp_path / "broken.pth",), "broken"),
                          ((piunet,), "single-image"), ((CHECKPOINT, "tpu"), "--device")]:  # fmt: skip
        with pytest.raises(UserError, match=message) as caught:
            SuperResolver(*args)
        assert "\n" not in str(caught.value)


def test_evaluate_gives_the_record_the_cli_prints(capsys):
    """The API and `super_resolve.py --dataset --json` (so `make results`) score through one function."""
    import json

    import super_resolve
    from utils import run_cli

    record = SuperResolver(str(CHECKPOINT)).evaluate("sample-test")
    assert (
        run_cli(super_resolve.main, ["--checkpoint", str(CHECKPOINT), "--dataset", "sample-test", "--json"])
        == 0
    )
    assert record == json.loads(capsys.readouterr().out)
    assert record["mean"]["model_psnr"] > record["mean"]["bicubic_psnr"]
    shaved = SuperResolver(str(CHECKPOINT)).evaluate("sample-test", shave=8)
    assert shaved["shave"] == 8 and "Here 8 pixels are shaved" in shaved["protocol"]
    assert shaved["mean"]["model_psnr"] != record["mean"]["model_psnr"]
