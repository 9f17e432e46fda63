"""The cross-sensor method on real data (issue [18], item 4): Landsat 8's 30 m visible bands as
the LR raster, its 15 m panchromatic band as the HR one, trained with and without registration
inside the loss and scored plain and registered on a held-out region.

    SR_DATA_ROOT=../shared/datasets python tools/landsat_study.py --out runs/landsat_study

How the bands are matched: the panchromatic band (500-680 nm) spans the blue, green and red
bands (B2, B3, B4), so the LR raster is their mean (the visible bands' sum, scaled); the gain,
offset and spectral mismatch between that mean and the panchromatic band (a linear fit at
30 m, written to the results) is the pair's radiometric distortion. Geometry: the
panchromatic grid starts half a 15 m pixel west and north of the 30 m grid (the transforms say
so), so its first 2 x 603 rows and 2 x 627 columns are the HR raster of the 30 m raster with a
(0.5, 0.5) HR-pixel offset left in: the geometric distortion, beside whatever band-to-band
misregistration and cloud motion the scene holds. Both are uint16 DN; reflectance = DN x 2e-5
- 0.1 (the scene's MTL), so --value-scale 50000 --value-offset -5000.

Two trainings of one budget from the photograph model `edsr_x2.pth` (its input and output
convolutions adapted to one band): (a) the pair as it is, (b) `--registration both`. The
eastern quarter of the pair is held out (--holdout 0.25). Each method (bicubic, the photograph
model applied to the band, (a), (b)) is scored there on reflectance, plain and with the
reference registered to its result (shift, then gain and offset fitted to it), with the shift
of the reference against the result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from checkpoint import load_checkpoint  # noqa: E402
from imresize import upscale  # noqa: E402
from inference import Upscaler  # noqa: E402
from multispectral import (  # noqa: E402
    Radiometry,
    band_by_band,
    model_on_reflectance,
    paired_data,
    raster_pairs,
    registered_scores,
    scores,
)
from registration import estimate_shift, max_shift_for  # noqa: E402
from utils import DatasetError, UserError, ensure_folder, run_cli  # noqa: E402

SCALE = 2
DIVISOR, OFFSET = 50_000.0, -5_000.0  # reflectance = (DN + OFFSET) / DIVISOR (MTL: 2e-5, -0.1)
VISIBLE = ("B2", "B3", "B4")
RUNS = {"a_as_is": "none", "b_registered": "both"}


def read_band(folder: Path, band: str) -> tuple[np.ndarray, dict]:
    """One band file of the scene: its DN as float64 and its rasterio profile."""
    import rasterio

    path = folder / f"l8_{band}.tif"
    if not path.is_file():
        raise DatasetError(f"{path}: missing (the Landsat 8 sample of RS-sample/landsat8)")
    with rasterio.open(path) as raster:
        return raster.read(1).astype(np.float64), raster.profile


def radiometric_fit(lr: np.ndarray, pan: np.ndarray) -> dict:
    """The gain and offset that best map the LR raster onto the panchromatic band averaged over
    2x2 blocks (its resolution), in least squares over the pixels where both have data, and R^2:
    the pair's radiometric distortion, as a whole-scene figure."""
    blocks = pan.reshape(pan.shape[0] // 2, 2, pan.shape[1] // 2, 2).mean((1, 3))
    valid = (lr > 0) & (blocks > 0)
    gain, offset = np.polyfit(lr[valid], blocks[valid], 1)
    residual = blocks[valid] - (gain * lr[valid] + offset)
    return {
        "gain": float(gain),
        "offset": float(offset),
        "r2": float(1 - residual.var() / blocks[valid].var()),
    }


def make_pair(scene: Path, folder: Path) -> dict:
    """Write folder/hr/l8.tif (the panchromatic band, cropped) and folder/lr/l8.tif (the visible
    bands' mix at 30 m), both uint16 with their own geotransforms; what was fitted."""
    import rasterio

    visible, profiles = zip(*(read_band(scene, band) for band in VISIBLE))
    visible = np.stack(visible)
    pan, pan_profile = read_band(scene, "B8")
    rows, cols = visible.shape[1:]
    pan = pan[: rows * SCALE, : cols * SCALE]
    lr = np.where((visible > 0).all(0), visible.mean(0), 0).round().astype(np.uint16)
    for half, array, profile in (("hr", pan.astype(np.uint16), pan_profile), ("lr", lr, profiles[0])):
        profile = {**profile, "height": array.shape[0], "width": array.shape[1], "count": 1, "nodata": 0}
        with rasterio.open(ensure_folder(folder / half) / "l8.tif", "w", **profile) as raster:
            raster.write(array[None])
    return {
        "lr_is": "the mean of B2, B3 and B4 (DN)",
        "pan_against_lr": radiometric_fit(lr.astype(np.float64), pan),
        "lr": f"{cols} x {rows} px, 30 m",
        "hr": f"{cols * SCALE} x {rows * SCALE} px, 15 m, origin 7.5 m west and north of the LR's",
    }


def train_run(name: str, pairs: Path, registration: str, args: argparse.Namespace) -> float:
    """One training of the study's budget; its wall time in seconds."""
    argv = [sys.executable, "train.py", "train", "--model", "edsr", "--model-option", "blocks=14",
            "--model-option", "features=64", "--model-option", "in_channels=1", "--scale", str(SCALE),
            "--train-data", str(pairs), "--init-from", args.photo, "--value-scale", str(DIVISOR),
            "--value-offset", str(OFFSET), "--holdout", str(args.holdout), "--registration", registration,
            "--loss", "l1", "--lr", "1e-4", "--schedule", "cosine", "--ema", "0.995",
            "--num-epoch", str(args.epochs), "--patch-size", str(args.patch_size),
            "--patches-per-image", str(args.patches), "--batch-size", "16", "--seed", str(args.seed),
            "--workers", "1", "--quiet", "--out-dir", str(args.out / name)]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=Path(__file__).resolve().parents[1])
    if done.returncode:
        raise UserError(f"training {name} failed (train.py exit {done.returncode}; its message is above)")
    return time.perf_counter() - start


def scored(sr: Tensor, hr: Tensor) -> dict:
    """Plain and registered scores of a (1, H, W) reflectance result, and the reference's shift."""
    plain = scores(sr, hr, SCALE, SCALE)
    registered = registered_scores(sr, hr, SCALE, SCALE, "both")
    return {
        "psnr": plain["psnr"],
        "ssim": plain["ssim"],
        "energy_mid": plain["energy_mid"],
        "energy_high": plain["energy_high"],
        "registered_psnr": registered["registered_psnr"],
        "registered_ssim": registered["registered_ssim"],
        "shift_of_reference": estimate_shift(sr[None], hr[None], max_shift_for(SCALE))[0].tolist(),
    }


def evaluate(pairs: Path, runs: dict[str, Path], args: argparse.Namespace) -> dict:
    """Every method's scores on the pair's held-out eastern region."""
    data = paired_data(raster_pairs(str(pairs)), SCALE, args.holdout, DIVISOR, OFFSET)
    held_out, to_reflectance = data.held_out[0], data.radiometry.model_to_reflectance
    lr, hr = to_reflectance(held_out.lr), to_reflectance(held_out.hr)
    cpu = torch.device("cpu")
    outputs = {"bicubic": upscale(lr, SCALE), Path(args.photo).stem: band_by_band(
        Upscaler.from_checkpoint(load_checkpoint(args.photo), cpu), lr)}  # fmt: skip
    for name, checkpoint_path in runs.items():
        checkpoint = load_checkpoint(checkpoint_path)
        model, radiometry = (
            Upscaler.from_checkpoint(checkpoint, cpu),
            Radiometry.from_dict(checkpoint["radiometry"]),
        )
        outputs[name] = model_on_reflectance(model, radiometry, lr)
    return {who: scored(sr, hr) for who, sr in outputs.items()}


def build_parser() -> argparse.ArgumentParser:
    """The study's command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", type=Path, help="the Landsat 8 folder (default: "
                        "$SR_DATA_ROOT/RS-sample/landsat8)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("runs/landsat_study"), help="pair, runs, results")
    parser.add_argument(
        "--photo", default="checkpoints/edsr_x2.pth", help="the photograph model it starts from"
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--patches", type=int, default=1024, help="patches per epoch")
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--holdout", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace a previous study in --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    scene = args.scene or Path(_data_root()) / "RS-sample" / "landsat8"
    if args.out.exists() and not args.overwrite:
        raise UserError(f"{args.out} exists; give another --out, or --overwrite")
    pairs = args.out / "pairs"
    record = {"pair": make_pair(scene, pairs), "settings": {k: str(v) for k, v in vars(args).items()}}
    print(f"pair: {record['pair']}")
    runs = {}
    for name, registration in RUNS.items():
        record[f"{name}_seconds"] = train_run(name, pairs, registration, args)
        runs[name] = args.out / name / "last.pth"
    record["held_out"] = evaluate(pairs, runs, args)
    print(f"{'method':16} {'PSNR':>7} {'SSIM':>7} {'mid':>5} {'high':>5} {'reg. PSNR':>9} "
          f"{'reg. SSIM':>9}  shift")  # fmt: skip
    for who, row in record["held_out"].items():
        shift = ", ".join(f"{v:+.2f}" for v in row["shift_of_reference"])
        print(f"{who:16} {row['psnr']:7.2f} {row['ssim']:7.4f} {row['energy_mid']:5.2f} "
              f"{row['energy_high']:5.2f} {row['registered_psnr']:9.2f} {row['registered_ssim']:9.4f}  "
              f"({shift})")  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"results written to {args.out / 'results.json'}")
    return 0


def _data_root() -> str:
    """$SR_DATA_ROOT, or a one-line error."""
    root = os.environ.get("SR_DATA_ROOT")
    if not root:
        raise UserError("set SR_DATA_ROOT (the shared datasets) or give --scene")
    return root


if __name__ == "__main__":
    sys.exit(run_cli(main))
