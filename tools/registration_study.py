"""The cross-sensor finding, reproduced (issue [18]): pairs whose HR does not line up with its
LR (a sub-pixel to one-LR-pixel shift, a gain and offset per band, another blur) teach a network
to blur; registering the target inside the loss (--registration both) undoes most of it.

    SR_DATA_ROOT=../shared/datasets python tools/registration_study.py --out runs/registration_study

Three trainings of one budget on pairs made from a training set: (a) clean pairs, (b) the
distorted pairs as they are, (c) the distorted pairs with --registration both; each scored on
clean Set5 and Set14 by the benchmark protocol and by the frequency-band energy ratios
(mid and high: 1 = HR-like detail, below 1 blur). The pairs: LR by MATLAB bicubic from the HR
image; the distorted HR target shifted by (dy, dx) drawn uniformly with |d| in [0.25, scale]
HR pixels on each axis, each band times a gain in [0.85, 1.15] plus an offset in [-0.05,
0.05], blurred by a Gaussian of sigma in [0.3, 0.7] HR pixels (one draw per image, seeded),
and cropped with its LR by 2 LR pixels on each side so that no shifted-in border remains.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from catalog import dataset_sources  # noqa: E402
from images import load_image, save_image  # noqa: E402
from imresize import degrade, gaussian_filter, modcrop  # noqa: E402
from registration import shift_image  # noqa: E402
from srkit import SuperResolver  # noqa: E402
from utils import UserError, ensure_folder, run_cli  # noqa: E402

RUNS = {
    "a_clean": ("clean", "none"),
    "b_distorted": ("distorted", "none"),
    "c_registered": ("distorted", "both"),
}


def distort(hr: torch.Tensor, scale: int, generator: torch.Generator) -> torch.Tensor:
    """The HR image as another sensor sees it: shifted, re-gained per band, blurred differently."""

    def uniform(low: float, high: float, size: int = 1) -> torch.Tensor:
        return low + (high - low) * torch.rand(size, generator=generator)

    magnitude = uniform(0.25, float(scale), 2)
    sign = torch.where(torch.rand(2, generator=generator) < 0.5, -1.0, 1.0)
    moved = shift_image(hr[None], (magnitude * sign)[None])[0]
    blurred = gaussian_filter(moved[None].double(), uniform(0.3, 0.7).item())[0].float()
    bands = hr.shape[0]
    gain, offset = uniform(0.85, 1.15, bands)[:, None, None], uniform(-0.05, 0.05, bands)[:, None, None]
    return (blurred * gain + offset).clamp(0, 1)


def make_pairs(train_data: str, scale: int, folder: Path, limit: int | None, seed: int) -> int:
    """Write clean/ and distorted/ pair folders (hr/, lr/ each) from a training set's images."""
    generator = torch.Generator().manual_seed(seed)
    sources = dataset_sources(train_data, scale)[:limit]
    margin = 2 * scale  # HR pixels cropped on each side: beyond any shift and blur
    for kind in ("clean", "distorted"):
        for half in ("hr", "lr"):
            ensure_folder(folder / kind / half)
    for hr_path, _ in sources:
        hr = modcrop(load_image(hr_path), scale)
        lr = degrade(hr, scale)
        distorted = distort(hr, scale, generator)
        crop = (slice(None), slice(margin, -margin), slice(margin, -margin))
        lr_crop = (slice(None), slice(2, -2), slice(2, -2))
        for kind, target in (("clean", hr), ("distorted", distorted)):
            save_image(target[crop], folder / kind / "hr" / f"{hr_path.stem}.png")
            save_image(lr[lr_crop], folder / kind / "lr" / f"{hr_path.stem}.png")
    return len(sources)


def train_run(name: str, pairs: Path, registration: str, args: argparse.Namespace) -> float:
    """One training of the study's budget; its wall time in seconds."""
    val_data = args.eval_sets.split(",")[0]
    argv = [sys.executable, "train.py", "train", "--model", "edsr", "--model-option", 'preset="tiny"',
            "--scale", str(args.scale), "--train-data", str(pairs), "--val-data", val_data, "--loss", "l1",
            "--registration", registration, "--patch-size", str(args.patch_size), "--patches-per-image",
            str(args.patches_per_image), "--batch-size", "16", "--num-epoch", str(args.epochs),
            "--lr", "1e-3", "--schedule", "cosine", "--seed", str(args.seed), "--workers", "0", "--quiet",
            "--out-dir", str(args.out / name), *(["--overwrite"] if args.overwrite else [])]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=Path(__file__).resolve().parents[1])
    if done.returncode:
        raise UserError(f"training {name} failed (train.py exit {done.returncode}; its message is above)")
    return time.perf_counter() - start


def scores(checkpoint: Path, sets: list[str]) -> dict:
    """Each set's means: PSNR, SSIM and the energy ratios of model and bicubic."""
    resolver = SuperResolver(checkpoint)
    return {name: resolver.evaluate(name)["mean"] for name in sets}


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path("runs/registration_study"), help="pairs, runs, results"
    )
    parser.add_argument("--train-data", default="291", help="the images the pairs are made from")
    parser.add_argument("--limit", type=int, help="use only the first N images")
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--patch-size", type=int, default=48)
    parser.add_argument("--patches-per-image", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-sets", default="Set5,Set14", help="clean sets scored (comma list)")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous study in --out")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.overwrite:
        raise UserError(f"{args.out} exists; give another --out, or --overwrite")
    images = make_pairs(args.train_data, args.scale, args.out / "pairs", args.limit, args.seed)
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    record = {"pairs": f"{images} images of {args.train_data}, x{args.scale}", "settings": settings}
    for name, (kind, registration) in RUNS.items():
        seconds = train_run(name, args.out / "pairs" / kind, registration, args)
        record[name] = {"seconds": seconds, **scores(args.out / name / "last.pth", args.eval_sets.split(","))}
        figures = "; ".join(
            f"{set_name} {mean['model_psnr']:.3f} dB, energy mid {mean['model_energy_mid']:.3f} high "
            f"{mean['model_energy_high']:.3f}"
            for set_name, mean in record[name].items() if set_name != "seconds"
        )  # fmt: skip
        print(f"{name:13} {figures} ({seconds:.0f} s)")
    (args.out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"results written to {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
