"""super_resolve.py: outputs, metrics, datasets, panels, tiling, bit depth, channels, errors, demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import evaluation
import super_resolve
import train
from images import dihedral, load_image, save_image
from imresize import degrade, imresize
from inference import Upscaler, tiled_forward
from metrics import psnr, ssim
from model import build_model
from utils import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _smooth(size: tuple[int, int], seed: int, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size[0] // 5 + 1, size[1] // 5 + 1, channels), dtype=np.uint8)
    image = Image.fromarray(coarse[..., 0] if channels == 1 else coarse)
    return np.array(image.resize((size[1], size[0]), Image.BICUBIC))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A tiny training set, a trained RGB and Y checkpoint, and a folder of HR/LR pairs."""
    root = tmp_path_factory.mktemp("sr")
    (root / "train").mkdir()
    for i in range(4):
        Image.fromarray(_smooth((48, 48), i)).save(root / "train" / f"t{i}.png")
    pairs = root / "pairs"
    pairs.mkdir()
    for i in range(2):
        hr = torch.from_numpy(_smooth((45, 60), 10 + i)).permute(2, 0, 1).float() / 255
        save_image(hr, pairs / f"p{i}_HR.png")
        save_image(degrade(hr, 3), pairs / f"p{i}_LR.png")
    common = [
        "--train-data",
        str(root / "train"),
        "--val-data",
        str(pairs),
        "--patch-size",
        "12",
        "--patches-per-image",
        "4",
        "--batch-size",
        "8",
        "--num-epoch",
        "1",
        "--quiet",
    ]
    assert run_cli(train.main, ["train", *common, "--out-dir", str(root / "rgb")]) == 0
    assert (
        run_cli(
            train.main, ["train", *common, "--out-dir", str(root / "y"), "--model-option", "in_channels=1"]
        )
        == 0
    )
    return {"root": root, "pairs": pairs, "rgb": root / "rgb" / "last.pth", "y": root / "y" / "last.pth"}


def _sr(*argv: str) -> int:
    return run_cli(super_resolve.main, list(argv))


def test_writes_model_and_bicubic_beside_the_input(world, tmp_path, capsys):
    lr = tmp_path / "lr.bmp"
    Image.fromarray(_smooth((20, 25), 3)).save(lr)
    assert _sr("--checkpoint", str(world["rgb"]), str(lr)) == 0
    out = capsys.readouterr().out
    sr_path, bic_path = tmp_path / "lr_rgb_last.png", tmp_path / "lr_bicubic_x3.png"
    assert str(sr_path) in out and str(bic_path) in out
    assert load_image(sr_path).shape == (3, 60, 75)
    expected_bicubic = imresize(load_image(lr), 3).clamp(0, 1)
    assert torch.equal(load_image(bic_path), torch.round(expected_bicubic * 255) / 255)


def test_many_inputs_globs_and_folders_into_out_dir(world, tmp_path):
    (tmp_path / "in").mkdir()
    for name in ("a.png", "b.png", "c.jpg"):
        Image.fromarray(_smooth((15, 15), len(name))).save(tmp_path / "in" / name)
    assert (
        _sr(
            "--checkpoint",
            str(world["rgb"]),
            str(tmp_path / "in"),
            str(tmp_path / "in" / "*.png"),
            "--out-dir",
            str(tmp_path / "out"),
            "--quiet",
        )
        == 0
    )
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(f"{s}_{k}.png" for s in "abc" for k in ("rgb_last", "bicubic_x3"))


def test_gt_metrics_match_the_written_images(world, tmp_path, capsys):
    pairs = world["pairs"]
    assert (
        _sr(
            "--checkpoint",
            str(world["rgb"]),
            str(pairs / "p0_LR.png"),
            "--gt",
            str(pairs / "p0_HR.png"),
            "--out-dir",
            str(tmp_path),
            "--json",
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    row = result["images"][0]
    hr = load_image(pairs / "p0_HR.png")
    sr = load_image(tmp_path / "p0_LR_rgb_last.png")
    bic = load_image(tmp_path / "p0_LR_bicubic_x3.png")
    assert row["model_psnr"] == pytest.approx(psnr(sr, hr, shave=3).item(), abs=1e-9)
    assert row["bicubic_psnr"] == pytest.approx(psnr(bic, hr, shave=3).item(), abs=1e-9)
    assert row["model_ssim"] == pytest.approx(ssim(sr, hr, shave=3).item(), abs=1e-9)
    assert result["mean"]["model_psnr"] == row["model_psnr"]


def test_dataset_report_table_and_json(world, tmp_path, capsys):
    argv = ["--checkpoint", str(world["rgb"]), "--dataset", str(world["pairs"]), "--quiet"]
    assert _sr(*argv, "--json", "--save", "--out-dir", str(tmp_path / "saved")) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in result["images"]] == ["p0_HR", "p1_HR"]
    for key in ("model_psnr", "model_ssim", "bicubic_psnr", "bicubic_ssim"):
        assert result["mean"][key] == pytest.approx(sum(r[key] for r in result["images"]) / 2)
    hr = load_image(world["pairs"] / "p1_HR.png")
    bic = imresize(load_image(world["pairs"] / "p1_LR.png"), 3)
    assert result["images"][1]["bicubic_psnr"] == pytest.approx(psnr(bic, hr, shave=3).item())
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == [
        "p0_HR_rgb_last.png",
        "p1_HR_rgb_last.png",
    ]
    again = [*argv, "--save", "--out-dir", str(tmp_path / "saved")]
    assert _sr(*again) == 2  # the saved images exist: refused before anything is computed
    assert "--overwrite" in capsys.readouterr().err
    assert _sr(*again, "--overwrite") == 0
    capsys.readouterr()
    assert _sr(*argv) == 0
    table = capsys.readouterr().out
    assert "p0_HR" in table and "mean" in table and "Y channel" in table


def test_shave_changes_only_the_border_left_out_and_says_so(world, capsys):
    argv = ["--checkpoint", str(world["rgb"]), "--dataset", str(world["pairs"]), "--quiet", "--json"]
    results = {}
    for shave in (None, 0, 3, 7):
        assert _sr(*argv, *(["--shave", str(shave)] if shave is not None else [])) == 0
        results[shave] = json.loads(capsys.readouterr().out)
    hr = load_image(world["pairs"] / "p1_HR.png")
    bic = imresize(load_image(world["pairs"] / "p1_LR.png"), 3)
    for shave in (0, 3, 7):
        assert results[shave]["images"][1]["bicubic_psnr"] == pytest.approx(psnr(bic, hr, shave=shave).item())
        assert (
            results[shave]["shave"] == shave
            and f"Here {shave} pixels are shaved" in results[shave]["protocol"]
        )
    assert "shave" not in results[None] and results[None]["mean"] == results[3]["mean"]  # the protocol: scale
    assert results[0]["mean"]["model_psnr"] != results[7]["mean"]["model_psnr"]
    assert _sr(*argv, "--shave", "18") == 2  # 45 px high: SSIM needs the 11 px that 17 leaves
    assert "after shaving 18" in capsys.readouterr().err


def test_dataset_by_name_reproduces_the_bicubic_baseline(world, data_root, monkeypatch, capsys):
    monkeypatch.setenv("SR_DATA_ROOT", str(data_root))
    assert _sr("--checkpoint", str(world["rgb"]), "--dataset", "Set5", "--json", "--quiet") == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["images"]) == 5 and result["scale"] == 3
    assert result["mean"]["bicubic_psnr"] == pytest.approx(30.41, abs=0.03)


def test_gt_not_cropped_to_the_scale_is_cropped_as_the_protocol_does(world, tmp_path, capsys):
    hr = load_image(world["pairs"] / "p0_HR.png")
    padded = torch.cat([hr, hr[:, -2:]], dim=1)  # two rows more than 3 x LR
    save_image(padded, tmp_path / "hr.png")
    argv = ["--checkpoint", str(world["rgb"]), str(world["pairs"] / "p0_LR.png"), "--out-dir", str(tmp_path)]
    assert _sr(*argv, "--gt", str(tmp_path / "hr.png"), "--json") == 0
    cropped = json.loads(capsys.readouterr().out)["images"][0]
    assert _sr(*argv, "--gt", str(world["pairs"] / "p0_HR.png"), "--json", "--overwrite") == 0
    assert json.loads(capsys.readouterr().out)["images"][0] == cropped


def test_comparison_panels(world, tmp_path):
    pairs = world["pairs"]
    assert (
        _sr(
            "--checkpoint",
            str(world["rgb"]),
            str(pairs / "p0_LR.png"),
            "--gt",
            str(pairs / "p0_HR.png"),
            "--out-dir",
            str(tmp_path),
            "--compare",
            str(tmp_path / "panel.png"),
        )
        == 0
    )
    panel = Image.open(tmp_path / "panel.png")
    assert panel.size[0] > 4 * 200  # four columns: LR, bicubic, model, GT
    assert (
        _sr(
            "--checkpoint",
            str(world["rgb"]),
            "--dataset",
            str(pairs),
            "--quiet",
            "--compare-dir",
            str(tmp_path / "panels"),
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "panels").iterdir()) == [
        "p0_HR_compare.png",
        "p1_HR_compare.png",
    ]


@pytest.mark.slow
def test_tiled_output_equals_whole_image_output():
    torch.manual_seed(0)
    model = build_model("srcnn").eval()
    lr = torch.rand(1, 3, 50, 70)
    with torch.no_grad():
        whole = model(lr)
        tiled = tiled_forward(model, lr, 3, tile=16, overlap=6)  # receptive radius of SRCNN x3: 4 LR px
        seams = tiled_forward(model, lr, 3, tile=16, overlap=1)
    assert tiled.shape == whole.shape
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)
    assert (seams - whole).abs().max() > 1e-3  # too small an overlap shows: the test can fail


@pytest.mark.parametrize("channels, image_channels", [(3, 3), (3, 1), (1, 3)])
def test_output_built_tile_by_tile_in_8_and_16_bits_is_the_rounded_whole_image(channels, image_channels):
    """`Upscaler.to_array` (tiles rounded straight into the output array, which bounds memory)
    gives the file `save_image` would write from the whole float image: RGB, gray through an
    RGB model, RGB through a Y model (Cb/Cr by bicubic per tile)."""
    from images import to_file_array

    torch.manual_seed(0)
    model = build_model("srcnn", in_channels=channels).eval()
    lr = torch.rand(image_channels, 40, 57)
    whole = Upscaler(
        model=model,
        name="srcnn",
        scale=3,
        channels=channels,
        device=torch.device("cpu"),
        tile=1000,
        overlap=16,
    )
    tiled = Upscaler(
        model=model, name="srcnn", scale=3, channels=channels, device=torch.device("cpu"), tile=16, overlap=6
    )
    for bits in (8, 16):
        expected = to_file_array(whole(lr), bits)
        got = tiled.to_array(lr, bits)
        assert got.dtype == expected.dtype and got.shape == (120, 171, image_channels)
        levels = np.abs(got.astype(np.int64) - expected.astype(np.int64))
        assert levels.max() <= 1 and (levels > 0).mean() < 1e-3, (bits, levels.max(), (levels > 0).mean())
    narrow = Upscaler(
        model=model, name="srcnn", scale=3, channels=channels, device=torch.device("cpu"), tile=16, overlap=1
    )  # too little overlap
    assert np.abs(narrow.to_array(lr, 8).astype(int) - to_file_array(whole(lr), 8).astype(int)).max() > 1


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_built_tile_by_tile_is_the_whole_image_bicubic(scale):
    from images import to_file_array

    torch.manual_seed(scale)
    lr = torch.rand(3, 300, 270)  # more than one 256-pixel tile each way
    expected = to_file_array(evaluation.bicubic(lr, scale), 8)
    got = evaluation.bicubic_array(lr, scale, 8)
    levels = np.abs(got.astype(np.int64) - expected.astype(np.int64))
    assert got.shape == expected.shape and levels.max() <= 1 and (levels > 0).mean() < 1e-4


def test_self_ensemble_is_the_mean_over_flips_and_rotations_so_it_is_equivariant():
    torch.manual_seed(0)
    model = build_model("srcnn").eval()
    lr = torch.rand(3, 10, 14)  # not square: a transform left undone would not even fit
    plain = Upscaler(
        model=model, name="srcnn", scale=3, channels=3, device=torch.device("cpu"), tile=8, overlap=6
    )  # tiled: each view in tiles
    ensemble = Upscaler(
        model=model,
        name="srcnn",
        scale=3,
        channels=3,
        device=torch.device("cpu"),
        tile=8,
        overlap=6,
        self_ensemble=True,
    )
    sr = ensemble(lr)
    assert sr.shape == plain(lr).shape == (3, 30, 42)
    assert (sr - plain(lr)).abs().max() > 1e-3  # a random network is not symmetric: the mean differs
    for k in range(8):  # ... but the mean over the 8 views is (a plain network fails this)
        torch.testing.assert_close(ensemble(dihedral(lr, k)), dihedral(sr, k), atol=1e-5, rtol=0)
    assert (plain(dihedral(lr, 1)) - dihedral(plain(lr), 1)).abs().max() > 1e-3


def test_cli_self_ensemble_is_recorded(world, tmp_path, capsys):
    argv = ["--checkpoint", str(world["rgb"]), "--dataset", str(world["pairs"]), "--json"]
    results = []
    for extra in ([], ["--self-ensemble"]):
        assert _sr(*argv, *extra) == 0
        results.append(json.loads(capsys.readouterr().out))
    plain, ensemble = results
    assert (plain["self_ensemble"], ensemble["self_ensemble"]) == (False, True)
    assert plain["mean"]["bicubic_psnr"] == ensemble["mean"]["bicubic_psnr"]
    assert plain["mean"]["model_psnr"] != ensemble["mean"]["model_psnr"]
    multi = tmp_path / "multi.pth"
    checkpoint = torch.load(world["rgb"], weights_only=True)
    checkpoint["kind"] = "multi-frame"
    torch.save(checkpoint, multi)
    assert _sr("--checkpoint", str(multi), "--dataset", str(world["pairs"]), "--self-ensemble") == 2
    assert "single-image" in capsys.readouterr().err


def test_cli_tiles_give_the_same_image(world, tmp_path):
    lr = tmp_path / "big.png"
    Image.fromarray(_smooth((70, 90), 5)).save(lr)
    for tile in ("16", "1000"):
        (tmp_path / tile).mkdir()
        assert (
            _sr("--checkpoint", str(world["rgb"]), str(lr), "--tile", tile, "--out-dir", str(tmp_path / tile))
            == 0
        )
    a = np.asarray(Image.open(tmp_path / "16" / "big_rgb_last.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "1000" / "big_rgb_last.png")).astype(int)
    assert np.abs(a - b).max() <= 1  # equal up to rounding of values within 1e-5 of a half level


_PEAK = """
import resource, sys
sys.path.insert(0, sys.argv[1])
import super_resolve
from utils import run_cli
status = run_cli(super_resolve.main, sys.argv[2:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
sys.exit(status)
"""


@pytest.mark.slow
def test_peak_memory_stays_flat_as_the_image_grows(world, tmp_path):
    peaks = {}
    for side in (100, 400):
        lr = tmp_path / f"lr{side}.png"
        Image.fromarray(_smooth((side, side), side)).save(lr)
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                _PEAK,
                str(ROOT),
                "--checkpoint",
                str(world["rgb"]),
                str(lr),
                "--tile",
                "64",
                "--out-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        peaks[side] = int(done.stdout.strip().splitlines()[-1])  # MiB
    # 400x400 -> 1200x1200: the image itself is ~17 MiB as float32 RGB; without tiles SRCNN's
    # 64+32 feature maps alone would add ~530 MiB
    assert peaks[400] - peaks[100] < 150, peaks


def test_16_bit_in_16_bit_out(world, tmp_path):
    lr = torch.from_numpy(_smooth((16, 16), 7)).permute(2, 0, 1).float() / 255
    lr = (lr + torch.rand_like(lr) / 300).clamp(0, 1)
    save_image(lr, tmp_path / "deep.png", bits=16)
    assert _sr("--checkpoint", str(world["rgb"]), str(tmp_path / "deep.png")) == 0
    for kind in ("rgb_last", "bicubic_x3"):
        out = Image.open(tmp_path / f"deep_{kind}.png")
        import png

        assert png.Reader(filename=str(tmp_path / f"deep_{kind}.png")).read()[3]["bitdepth"] == 16
        assert out.size == (48, 48)


def test_grayscale_stays_grayscale_and_y_model_takes_rgb(world, tmp_path):
    Image.fromarray(_smooth((18, 18), 8, channels=1)).save(tmp_path / "gray.png")
    assert _sr("--checkpoint", str(world["rgb"]), str(tmp_path / "gray.png")) == 0
    assert Image.open(tmp_path / "gray_rgb_last.png").mode == "L"
    Image.fromarray(_smooth((18, 18), 9)).save(tmp_path / "rgb.png")
    assert _sr("--checkpoint", str(world["y"]), str(tmp_path / "rgb.png")) == 0
    sr = load_image(tmp_path / "rgb_y_last.png")
    assert sr.shape == (3, 54, 54)
    assert (
        _sr("--checkpoint", str(world["y"]), str(tmp_path / "gray.png"), "--out-dir", str(tmp_path / "g"))
        == 0
    )
    assert Image.open(tmp_path / "g" / "gray_y_last.png").mode == "L"


def test_bad_input_is_one_line_status_2_and_writes_nothing(world, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    good = tmp_path / "in" / "good.png"
    Image.fromarray(_smooth((20, 20), 1)).save(good)
    tiny = tmp_path / "in" / "tiny.png"
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tiny)
    text = tmp_path / "in" / "text.png"
    text.write_text("not an image")
    wrong_gt = tmp_path / "in" / "gt.png"
    Image.fromarray(np.zeros((50, 61, 3), np.uint8)).save(wrong_gt)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(world["rgb"].read_bytes()[:1000])
    multi = tmp_path / "multi.pth"
    ckpt = torch.load(world["rgb"], weights_only=True)
    ckpt["kind"] = "multi-frame"
    torch.save(ckpt, multi)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    ok = str(world["rgb"])
    cases = {
        "missing file": (["--checkpoint", ok, str(tmp_path / "nope.png")], "no such file"),
        "non-image": (["--checkpoint", ok, str(text)], "not a readable image"),
        "too small": (["--checkpoint", ok, str(tiny)], "too small"),
        "corrupt checkpoint": (["--checkpoint", str(corrupt), str(good)], "corrupt"),
        "wrong kind": (["--checkpoint", str(multi), str(good)], "multi-frame"),
        "gt size": (["--checkpoint", ok, str(good), "--gt", str(wrong_gt)], "61x50"),
        "unwritable": (["--checkpoint", ok, str(good), "--out-dir", str(blocker / "x")], "cannot"),
    }
    for kind, (argv, words) in cases.items():
        assert _sr(*argv) == 2, kind
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and words in err and "Traceback" not in err, (kind, err)
    assert "60x60" in _last_error(capsys, ["--checkpoint", ok, str(good), "--gt", str(wrong_gt)])
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == [
        "good.png",
        "gt.png",
        "text.png",
        "tiny.png",
    ]


def _last_error(capsys, argv: list[str]) -> str:
    _sr(*argv)
    return capsys.readouterr().err


@pytest.mark.slow
def test_demo_pipeline_small(tmp_path):
    done = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-C",
            str(ROOT),
            "demo-run",
            f"PY={sys.executable}",
            f"DEMO_DIR={tmp_path}",
            "DEMO_EPOCHS=2",
            "DEMO_PATCHES=8",
            "DEMO_PATCH_SIZE=24",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "mean" in done.stdout and "chelsea" in done.stdout
    assert (tmp_path / "panels" / "chelsea_compare.png").exists()
    assert (tmp_path / "curves.png").exists() and (tmp_path / "run" / "last.pth").exists()


# --- conventions of Real-ESRGAN's and BasicSR's inference scripts -------------------------


def test_outputs_carry_the_checkpoint_name_and_are_never_overwritten_silently(world, tmp_path, capsys):
    lr = tmp_path / "lr.png"
    Image.fromarray(_smooth((16, 20), 3)).save(lr)
    other = tmp_path / "runs" / "second" / "last.pth"  # the same model, another checkpoint
    other.parent.mkdir(parents=True)
    other.write_bytes(world["rgb"].read_bytes())
    assert _sr("--checkpoint", str(world["rgb"]), str(lr)) == 0
    assert _sr("--checkpoint", str(other), str(lr), "--no-baseline") == 0
    written = {p.name for p in tmp_path.glob("lr_*")}
    assert written == {"lr_rgb_last.png", "lr_second_last.png", "lr_bicubic_x3.png"}
    before = {p: p.read_bytes() for p in tmp_path.glob("lr_*")}
    capsys.readouterr()
    assert _sr("--checkpoint", str(world["rgb"]), str(lr)) == 2  # both outputs exist
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err
    assert {p: p.read_bytes() for p in tmp_path.glob("lr_*")} == before  # nothing written
    assert _sr("--checkpoint", str(world["rgb"]), str(lr), "--overwrite", "--suffix", "mine") == 0
    assert (tmp_path / "lr_mine.png").exists()


def test_formats_quality_and_outscale(world, tmp_path):
    from images import to_file_array

    Image.fromarray(_smooth((20, 24), 4)).save(tmp_path / "lr.png")
    base = ["--checkpoint", str(world["rgb"]), str(tmp_path / "lr.png"), "--quiet"]
    sizes = {}
    for quality in (30, 95):
        out = tmp_path / f"q{quality}"
        assert _sr(*base, "--ext", "jpg", "--quality", str(quality), "--out-dir", str(out)) == 0
        sizes[quality] = (out / "lr_rgb_last.jpg").stat().st_size
        assert Image.open(out / "lr_rgb_last.jpg").format == "JPEG"
    assert sizes[30] < sizes[95]
    assert _sr(*base, "--ext", "webp", "--out-dir", str(tmp_path / "w"), "--no-baseline") == 0
    assert [p.name for p in (tmp_path / "w").iterdir()] == ["lr_rgb_last.webp"]
    assert _sr(*base, "--ext", "tif", "--out-dir", str(tmp_path / "t")) == 0
    assert load_image(tmp_path / "t" / "lr_rgb_last.tif").shape == (3, 60, 72)
    assert _sr(*base, "--outscale", "2", "--out-dir", str(tmp_path / "o")) == 0
    sr = np.asarray(Image.open(tmp_path / "o" / "lr_rgb_last.png"))
    lr = load_image(tmp_path / "lr.png")
    upscaler = Upscaler.from_checkpoint(torch.load(world["rgb"], weights_only=True), torch.device("cpu"))
    # x3 then MATLAB bicubic to x2
    expected = to_file_array(imresize(upscaler(lr), size=(40, 48)).clamp(0, 1))
    assert sr.shape == (40, 48, 3) and np.abs(sr.astype(int) - expected.astype(int)).max() <= 1
    bic = np.asarray(Image.open(tmp_path / "o" / "lr_bicubic_x2.png"))
    np.testing.assert_array_equal(bic, to_file_array(imresize(lr, 2).clamp(0, 1)))


def test_alpha_is_kept_by_bicubic_or_by_the_model(world, tmp_path):
    from images import to_file_array

    rgba = np.dstack([_smooth((16, 18), 5), _smooth((16, 18), 6, channels=1)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    base = ["--checkpoint", str(world["rgb"]), str(tmp_path / "a.png"), "--quiet"]
    assert _sr(*base, "--out-dir", str(tmp_path / "b")) == 0
    out = np.asarray(Image.open(tmp_path / "b" / "a_rgb_last.png"))
    alpha = torch.from_numpy(rgba[..., 3:]).permute(2, 0, 1).float() / 255
    assert out.shape == (48, 54, 4)
    np.testing.assert_array_equal(out[..., 3:], to_file_array(evaluation.bicubic(alpha, 3)))
    assert _sr(*base, "--out-dir", str(tmp_path / "m"), "--alpha-upsampler", "model", "--ext", "jpg") == 0
    by_model = np.asarray(Image.open(tmp_path / "m" / "a_rgb_last.png"))  # JPEG has no alpha: PNG
    assert by_model.shape == (48, 54, 4) and np.abs(by_model[..., 3].astype(int) - out[..., 3]).max() > 0
    np.testing.assert_array_equal(by_model[..., :3], out[..., :3])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--quality", "0"], "--quality"),
        (["--quality", "101"], "--quality"),
        (["--outscale", "0"], "--outscale"),
        (["--outscale", "nan"], "--outscale"),
        (["--outscale", "100"], "--outscale"),
        (["--outscale", "2", "--gt", "x.png"], "--gt"),
        (["--suffix", "a/b"], "--suffix"),
        (["--device", "tpu"], "--device"),
        (["--device", "cuda:x"], "--device"),
        (["--device", "cpu", "--cuda"], "disagree"),
        (["--shave", "-1"], "--shave"),
    ],
)
def test_bad_output_options_are_one_line_and_write_nothing(world, tmp_path, capsys, extra, message):
    Image.fromarray(_smooth((16, 16), 1)).save(tmp_path / "lr.png")
    assert _sr("--checkpoint", str(world["rgb"]), str(tmp_path / "lr.png"), *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["lr.png"]
    with pytest.raises(SystemExit) as caught:  # argparse's own one line for a choice it does not know
        _sr("--checkpoint", str(world["rgb"]), str(tmp_path / "lr.png"), "--ext", "gif")
    assert caught.value.code == 2 and "invalid choice: 'gif'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_device_cuda_without_a_gpu_is_one_line(world, tmp_path, capsys):
    Image.fromarray(_smooth((16, 16), 1)).save(tmp_path / "lr.png")
    assert _sr("--checkpoint", str(world["rgb"]), str(tmp_path / "lr.png"), "--device", "cuda:1") == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert _sr("--checkpoint", str(world["rgb"]), str(tmp_path / "lr.png"), "--device", "cpu") == 0


def test_a_progress_bar_runs_over_the_tiles_of_a_large_image(world, tmp_path):
    Image.fromarray(_smooth((40, 40), 2)).save(tmp_path / "big.png")
    done = subprocess.run(
        [sys.executable, "super_resolve.py", "--checkpoint", str(world["rgb"]), str(tmp_path / "big.png"),
         "--tile", "16"],
        cwd=Path(super_resolve.__file__).parent, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "big.png" in done.stderr and "/9 [" in done.stderr and "tile/s" in done.stderr
