"""Image I/O: formats, bit depths, channel handling, and one clear error per kind of bad file."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import data
import images
from images import load_image, save_image
from utils import ImageError, run_cli

ROOT = Path(__file__).resolve().parents[1]


def _rgb8(h: int = 12, w: int = 17) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_8bit_rgb_round_trips_exactly(tmp_path, suffix):
    array = _rgb8()
    path = tmp_path / f"img{suffix}"
    Image.fromarray(array).save(path)
    img = load_image(path)
    assert img.dtype == torch.float32 and img.shape == (3, 12, 17)
    np.testing.assert_array_equal(np.round(img.permute(1, 2, 0).numpy() * 255), array)
    save_image(img, tmp_path / f"again{suffix}")
    assert torch.equal(load_image(tmp_path / f"again{suffix}"), img)


def test_jpeg_loads_close_to_source(tmp_path):
    array = np.full((16, 16, 3), (200, 100, 50), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "img.jpg", quality=95)
    img = load_image(tmp_path / "img.jpg")
    assert img.shape == (3, 16, 16)
    assert (img.permute(1, 2, 0) * 255 - torch.tensor([200.0, 100, 50])).abs().max() < 4


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_rgb_keeps_precision(tmp_path, suffix):
    img = torch.randint(0, 65536, (3, 9, 11)).float() / 65535
    save_image(img, tmp_path / f"deep{suffix}", bits=16)
    back = load_image(tmp_path / f"deep{suffix}")
    assert back.shape == (3, 9, 11)
    torch.testing.assert_close(back, img, atol=1e-7, rtol=0)
    assert not torch.equal(torch.round(back * 255) / 255, back)  # not reduced to 8 bits


def test_16bit_grayscale_png_from_pillow(tmp_path):
    array = np.random.default_rng(1).integers(0, 65536, (10, 14), dtype=np.uint16)
    Image.fromarray(array).save(tmp_path / "gray16.png")
    img = load_image(tmp_path / "gray16.png")
    assert img.shape == (1, 10, 14)
    np.testing.assert_array_equal(np.round(img[0].numpy().astype(np.float64) * 65535), array)


def test_16bit_tiff_grayscale(tmp_path):
    array = np.random.default_rng(2).integers(0, 65536, (8, 6), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "thermal.tif", array)
    img = load_image(tmp_path / "thermal.tif")
    assert img.shape == (1, 8, 6)
    np.testing.assert_array_equal(np.round(img[0].numpy().astype(np.float64) * 65535), array)


def test_grayscale_stays_one_channel(tmp_path):
    Image.fromarray(_rgb8()[..., 0]).save(tmp_path / "gray.png")
    img = load_image(tmp_path / "gray.png")
    assert img.shape == (1, 12, 17)
    save_image(img, tmp_path / "gray_out.png")
    assert Image.open(tmp_path / "gray_out.png").mode == "L"


def test_rgba_and_palette_become_rgb(tmp_path):
    rgba = np.dstack([_rgb8(), np.full((12, 17), 128, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    img = load_image(tmp_path / "rgba.png")
    assert img.shape == (3, 12, 17)
    np.testing.assert_array_equal(np.round(img.permute(1, 2, 0).numpy() * 255), rgba[..., :3])
    Image.fromarray(_rgb8()).convert("P", palette=Image.ADAPTIVE, colors=16).save(tmp_path / "pal.png")
    assert load_image(tmp_path / "pal.png").shape == (3, 12, 17)


def test_alpha_comes_from_the_same_decoding_as_the_image(tmp_path):
    rgb, alpha = _rgb8(), (np.arange(12 * 17).reshape(12, 17) % 256).astype(np.uint8)
    files = {"rgba.png": np.dstack([rgb, alpha]), "la.png": np.dstack([rgb[..., 0], alpha])}
    Image.fromarray(files["rgba.png"], mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(files["la.png"], mode="LA").save(tmp_path / "la.png")
    tifffile.imwrite(tmp_path / "rgba.tif", files["rgba.png"], extrasamples=["unassalpha"])
    files["rgba.tif"] = files["rgba.png"]
    for name, array in files.items():
        image, bits, read = images.read_image_and_alpha(tmp_path / name)
        assert bits == 8 and read is not None and read.shape == (1, 12, 17), name
        np.testing.assert_array_equal(np.round(read[0].numpy() * 255), array[..., -1])
        pixels = np.round(image.permute(1, 2, 0).numpy() * 255)
        np.testing.assert_array_equal(pixels, array[..., :-1].reshape(pixels.shape))
        assert images.read_image(tmp_path / name)[0].shape == image.shape  # read_image drops alpha
    wide = np.dstack([rgb.astype(np.uint16) * 257, alpha.astype(np.uint16) * 257])
    images.save_array(wide, tmp_path / "rgba16.png")
    image, bits, read = images.read_image_and_alpha(tmp_path / "rgba16.png")
    assert bits == 16 and image.shape == (3, 12, 17)
    np.testing.assert_array_equal(np.round(read[0].numpy() * 65535), wide[..., -1])
    palette = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "pal.png", transparency=0)
    image, _, read = images.read_image_and_alpha(tmp_path / "pal.png")
    assert image.shape == (3, 12, 17) and read is not None and read.min() == 0 and read.max() == 1
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert images.read_image_and_alpha(tmp_path / "rgb.png")[2] is None


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((10, 20, 3), np.uint8)
    array[:, :5] = 255  # white band on the left
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    img = load_image(tmp_path / "rotated.jpg")
    assert img.shape == (3, 20, 10)
    assert img[:, :5].mean() > 0.9 and img[:, -5:].mean() < 0.1  # band now on top


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size in a few bytes, as a decompression bomb does."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Each kind of bad input, with a word its error message must contain."""
    good = tmp_path / "good.png"
    Image.fromarray(_rgb8(64, 64)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(30000, 30000))
    return {
        "missing": (tmp_path / "missing.png", "no such file"),
        "empty": (empty, "empty"),
        "truncated": (truncated, "truncated"),
        "not an image": (text, "not a readable image"),
        "bomb": (bomb, "decompression bomb"),
        "folder": (tmp_path, "folder"),
    }


def test_each_bad_file_raises_one_clear_error(tmp_path):
    for kind, (path, words) in _bad_files(tmp_path).items():
        with pytest.raises(ImageError) as info:
            load_image(path)
        message = str(info.value)
        assert str(path) in message and words in message, kind
        assert "\n" not in message, kind


def test_cli_reports_bad_files_in_one_line_with_status_2(tmp_path, capsys):
    for kind, (path, words) in _bad_files(tmp_path).items():
        assert run_cli(data.main, ["show", str(path)]) == 2, kind
        err = capsys.readouterr().err
        assert "Traceback" not in err, kind
        lines = err.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (kind, err)
    # the same through a real process, for the exit status and the absence of a traceback
    path, words = _bad_files(tmp_path)["truncated"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "data.py"), "show", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}") and words in lines[0]


def test_save_is_atomic_and_reports_unwritable_folders(tmp_path):
    img = torch.rand(3, 8, 8)
    with pytest.raises(ImageError, match="cannot write"):
        save_image(img, tmp_path / "no" / "such" / "folder" / "out.png")
    save_image(img, tmp_path / "out.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temporary left
    with pytest.raises(ImageError, match="16-bit"):
        save_image(img, tmp_path / "out.jpg", bits=16)


@pytest.mark.parametrize("damage", ["truncated", "bad CRC"])
def test_a_damaged_16_bit_png_is_an_image_error(tmp_path, damage):
    """[16] N3: pypng's ChunkError escaped as a traceback (super_resolve, training data, PIUnet frames)."""
    path = tmp_path / "deep.png"
    images.save_array(np.random.default_rng(0).integers(0, 65536, (20, 24, 3), dtype=np.uint16), path)
    data = bytearray(path.read_bytes())
    idat = data.index(b"IDAT")
    if damage == "truncated":
        data = data[: idat + 40]
    else:
        data[idat + 20] ^= 0xFF  # inside the compressed data: its CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="corrupt or truncated"):
        images.load_image(path)
