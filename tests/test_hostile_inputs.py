"""Issue [16]: hostile inputs (PIUnet scenes, odd options, the Python API) are one line and
exit status 2 (or a raised UserError), write nothing, and leave their inputs as they were."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import super_resolve
from images import save_image
from utils import run_cli

ROOT = Path(__file__).resolve().parents[1]
PIUNET = ROOT / "checkpoints" / "piunet_x3.pth"


def _scene(folder: Path, side: int = 16, frames: int = 5) -> Path:
    """A small scene in the PROBA-V layout: 16-bit LR frames, 0/1 QM masks, HR and SM at x3."""
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    hr = torch.rand(1, 3 * side, 3 * side, generator=generator) * 0.1 + 0.05
    save_image(hr, folder / "HR.png", bits=16)
    save_image(torch.ones(1, 3 * side, 3 * side), folder / "SM.png")
    for i in range(frames):
        save_image(hr[:, 1::3, 1::3] + 0.002 * i, folder / f"LR{i:03d}.png", bits=16)
        save_image(torch.ones(1, side, side), folder / f"QM{i:03d}.png")
    return folder


def _spoil_scene(folder: Path, case: str) -> list[str]:
    """Spoil a good scene one way ([16] N4); returns extra command-line options."""
    if case == "frames of different sizes":
        save_image(torch.rand(1, 17, 16), folder / "LR002.png", bits=16)
    elif case == "a QM of another size":
        save_image(torch.ones(1, 15, 15), folder / "QM001.png")
    elif case == "an SM of another size":
        save_image(torch.ones(1, 30, 30), folder / "SM.png")
    elif case == "an HR of another size":
        save_image(torch.rand(1, 40, 40), folder / "HR.png", bits=16)
    elif case == "RGB frames":
        Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(folder / "LR001.png")
    elif case == "2x2 frames":
        for path in folder.glob("*.png"):
            path.unlink()
        for i in range(3):
            save_image(torch.rand(1, 2, 2), folder / f"LR{i:03d}.png", bits=16)
            save_image(torch.ones(1, 2, 2), folder / f"QM{i:03d}.png")
    elif case == "only HR.png":
        for path in folder.glob("*.png"):
            if path.name != "HR.png":
                path.unlink()
    elif case == "--outscale":
        return ["--outscale", "2"]
    elif case == "--ext":
        return ["--ext", "jpg"]
    elif case == "an existing output":  # a scene's outputs are never replaced unasked either
        (folder.parent / "out").mkdir()
        (folder.parent / "out" / "imgset0000_piunet_x3_uncertainty.png").write_bytes(b"keep")
    return []


SCENE_CASES = ["frames of different sizes", "a QM of another size", "an SM of another size",
               "an HR of another size", "RGB frames", "2x2 frames", "only HR.png", "--outscale", "--ext",
               "an existing output"]  # fmt: skip


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", SCENE_CASES)
def test_a_spoiled_scene_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    scene = _scene(tmp_path / "imgset0000")
    extra = _spoil_scene(scene, case)
    before = _snapshot(tmp_path)
    argv = ["--checkpoint", str(PIUNET), str(scene), "--out-dir", str(tmp_path / "out"), *extra]
    assert run_cli(super_resolve.main, argv) == 2, case
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, (case, err)
    assert _snapshot(tmp_path) == before  # no file written (out/ included), the scene as it was


def test_a_good_scene_is_fused(tmp_path, capsys):
    scene = _scene(tmp_path / "imgset0000")
    argv = ["--checkpoint", str(PIUNET), str(scene), "--out-dir", str(tmp_path / "out")]
    assert run_cli(super_resolve.main, argv) == 0
    assert (tmp_path / "out" / "imgset0000_piunet_x3.png").is_file()


# ---------------------------------------------------------------------------------------
# [16] N6: odd options and files
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    from conftest import smooth_image_folder

    root = tmp_path_factory.mktemp("data")
    small = root / "small"
    small.mkdir()
    Image.fromarray(np.zeros((6, 6, 3), dtype=np.uint8)).save(small / "tiny.png")
    return {"train": smooth_image_folder(root / "train", 4, 48, seed=0),
            "val": smooth_image_folder(root / "val", 2, 36, seed=1), "small": small}  # fmt: skip


def _train_argv(data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    settings = {
        "--train-data": data["train"],
        "--val-data": data["val"],
        "--out-dir": out,
        "--patch-size": 12,
        "--patches-per-image": 4,
        "--batch-size": 8,
        "--num-epoch": 1,
    }
    return ["train", *[str(x) for pair in settings.items() for x in pair], "--quiet", *extra]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


TRAINING_CASES = ["6x6 validation image", "empty --perceptual-weights", "other --perceptual-weights",
                  "--seed 1e20"]  # fmt: skip


@pytest.mark.parametrize("case", TRAINING_CASES)
def test_odd_training_inputs_are_one_line_and_leave_no_run_folder(data, tmp_path, capsys, case):
    import train

    out = tmp_path / "run"
    (tmp_path / "empty.pth").write_bytes(b"")
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "other.pth")
    perceptual = ["--loss", "perceptual", "--perceptual-weights"]
    argv = {
        "6x6 validation image": _train_argv(data, out, "--val-data", str(data["small"])),
        "empty --perceptual-weights": _train_argv(data, out, *perceptual, str(tmp_path / "empty.pth")),
        "other --perceptual-weights": _train_argv(data, out, *perceptual, str(tmp_path / "other.pth")),
        "--seed 1e20": _train_argv(data, out, "--seed", str(10**20)),
    }[case]
    assert run_cli(train.main, argv) == 2
    _one_line(capsys)
    assert not out.exists()  # the folder this run made is gone with its lock


def test_a_suffix_too_long_for_a_file_name_is_one_line(data, tmp_path, capsys):
    argv = ["--checkpoint", str(ROOT / "checkpoints" / "srcnn_x3.pth"), str(data["val"] / "img0.png"),
            "--out-dir", str(tmp_path / "out"), "--suffix", "a" * 300]  # fmt: skip
    assert run_cli(super_resolve.main, argv) == 2
    assert "255 bytes" in _one_line(capsys)
    assert not list((tmp_path / "out").iterdir())


def test_a_checkpoint_that_cannot_be_read_is_one_line(data, tmp_path, capsys, monkeypatch):
    # as root every file is readable, so the refusal of the system is simulated where it happens
    import pathlib

    locked = tmp_path / "locked.pth"
    locked.write_bytes((ROOT / "checkpoints" / "srcnn_x3.pth").read_bytes())
    real_open = pathlib.Path.open

    def refuse(self, *args, **kwargs):
        if self == locked:
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", refuse)
    argv = ["--checkpoint", str(locked), str(data["val"] / "img0.png"), "--out-dir", str(tmp_path / "out")]
    assert run_cli(super_resolve.main, argv) == 2
    assert "Permission denied" in _one_line(capsys)


# ---------------------------------------------------------------------------------------
# [16] N10: the Python API
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resolver():
    from srkit import SuperResolver

    return SuperResolver(ROOT / "checkpoints" / "srcnn_x3.pth")


def _truncated_png(tmp_path: Path) -> Image.Image:
    Image.fromarray(np.full((40, 40, 3), 128, dtype=np.uint8)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    return Image.open(tmp_path / "cut.png")  # lazy: the cut shows when the pixels are read


API_CASES = {
    "a batch of 0": lambda tmp: torch.rand(0, 3, 16, 16),
    "a tensor of height 0": lambda tmp: torch.rand(3, 0, 16),
    "a 0x0 PIL image": lambda tmp: Image.new("RGB", (0, 0)),
    "a truncated PIL file": _truncated_png,
    "a 0x0 array": lambda tmp: np.zeros((0, 0, 3), dtype=np.uint8),
    "a NaN tensor": lambda tmp: torch.full((3, 16, 16), float("nan")),
    "an infinite tensor": lambda tmp: torch.full((3, 16, 16), float("inf")),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_bad_api_inputs_raise_a_one_line_image_error(resolver, tmp_path, case):
    from utils import ImageError

    with pytest.raises(ImageError) as caught:
        resolver.upscale(API_CASES[case](tmp_path))
    assert "\n" not in str(caught.value)


def test_the_api_applies_the_cli_memory_check(resolver, monkeypatch):
    import inference
    from utils import ImageError

    monkeypatch.setattr(inference, "memory_available", lambda: 64 * 2**20)  # 64 MiB left
    for image in (torch.rand(3, 1000, 1000), np.zeros((1000, 1000, 3), dtype=np.uint8)):
        with pytest.raises(ImageError, match="GiB"):
            resolver.upscale(image)


def test_the_api_keeps_the_input_dtype_and_the_exif_orientation(resolver):
    image = torch.rand(3, 12, 16, dtype=torch.float64)
    sr = resolver.upscale(image)
    assert sr.dtype == torch.float64 and sr.shape == (3, 36, 48)
    torch.testing.assert_close(sr, resolver.upscale(image.float()).double())
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8))
    exif = photo.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to show
    with_exif = _reopened(photo, exif)
    sr = resolver.upscale(with_exif)
    assert sr.size == (36, 60)  # shown upright, as the CLI reads the file: 12 wide, 20 high, x3
    from PIL import ImageOps

    assert np.array_equal(np.asarray(sr), np.asarray(resolver.upscale(ImageOps.exif_transpose(with_exif))))


def _reopened(photo: Image.Image, exif) -> Image.Image:
    import io

    buffer = io.BytesIO()
    photo.save(buffer, format="PNG", exif=exif)
    buffer.seek(0)
    return Image.open(buffer)


def test_a_tiff_whose_size_tag_is_damaged_is_one_line(tmp_path, capsys):
    # found by tests/test_fuzz.py: one flipped bit made tifffile give the width as a tuple, and the
    # memory check raised TypeError
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((14, 16, 3), dtype=np.uint8)).save(buffer, format="TIFF")
    data = bytearray(buffer.getvalue())
    data[12] ^= 1
    (tmp_path / "bad.tif").write_bytes(bytes(data))
    argv = ["--checkpoint", str(ROOT / "checkpoints" / "srcnn_x3.pth"), str(tmp_path / "bad.tif"),
            "--out-dir", str(tmp_path / "out")]  # fmt: skip
    assert run_cli(super_resolve.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert "not a readable image" in err and len(err.splitlines()) == 1
