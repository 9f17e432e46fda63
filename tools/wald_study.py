"""Score a multispectral model on the held-out region of the raster it was trained on, by Wald's
protocol, against bicubic and a photograph model applied band by band (multispectral.py).

    SR_DATA_ROOT=../shared/datasets python tools/wald_study.py --checkpoint checkpoints/s2_20m_x2.pth \\
        [--photo checkpoints/edsr_x2.pth] [--json checkpoints/results/s2_20m_x2_wald.json] \\
        [--panel docs/panel_s2_20m_x2.png] [--on RASTER_OR_BAND_FOLDER ...]

The held-out region is the one the checkpoint's training left out (its --holdout, the eastern
columns of its --train-data). Its LR version is made by each degradation (`sensor`, the
training kernel, and `bicubic`, MATLAB's imresize); each method's SR is scored against the
region on reflectance (multispectral.scores). The photograph model sees each band scaled to
[0, 1] by the LR band's maximum, as a gray image. `--panel` draws the SR of the native raster
(no reference exists at the finer resolution) beside bicubic, in false colour.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from checkpoint import load_checkpoint  # noqa: E402
from config import recorded_config  # noqa: E402
from figures import save_panel  # noqa: E402
from imresize import downsample, modcrop, upscale  # noqa: E402
from inference import Upscaler  # noqa: E402
from multispectral import (  # noqa: E402
    Radiometry,
    band_by_band,
    holdout_column,
    model_on_reflectance,
    raster_inputs,
    raster_paths,
    read_reflectance,
    scores,
)
from rasters import raster_header  # noqa: E402
from utils import UserError, atomic_write, check_outputs, run_cli  # noqa: E402

KERNELS = ("sensor", "bicubic")
FALSE_COLOUR = ("B12", "B8A", "B05")  # red, green, blue of the panel (SWIR, NIR, red edge)


def held_out_region(checkpoint: dict, path: str) -> tuple[Tensor, Radiometry, int]:
    """The held-out region of the checkpoint's training raster as reflectance, cropped to the scale."""
    config = recorded_config(checkpoint, path)
    rasters = raster_paths(config.train_data)
    if rasters is None or "radiometry" not in checkpoint:
        raise UserError(f"{path}: not a multispectral model trained on rasters by Wald's protocol")
    radiometry, scale = Radiometry.from_dict(checkpoint["radiometry"]), config.scale
    reflectance = read_reflectance(raster_header(rasters[0]), radiometry)
    split = holdout_column(reflectance.shape[-1], config.holdout, scale)
    return modcrop(reflectance[..., split:], scale), radiometry, scale


def study(args: argparse.Namespace, checkpoint: dict) -> dict:
    """Every method's scores on the held-out region (and on each --on raster whole), per degradation."""
    hr, radiometry, scale = held_out_region(checkpoint, args.checkpoint)
    model = Upscaler.from_checkpoint(checkpoint, torch.device("cpu"))
    photo = Upscaler.from_checkpoint(load_checkpoint(args.photo), torch.device("cpu"))
    if photo.scale != scale:
        raise UserError(f"--photo {args.photo} is x{photo.scale}; the model is x{scale}")
    names = {"photo": Path(args.photo).stem, "model": Path(args.checkpoint).stem}

    def scored(hr: Tensor) -> dict:
        results = {}
        for kernel in KERNELS:
            lr = downsample(hr, scale, kernel)
            outputs = {
                "bicubic": upscale(lr, scale),
                names["photo"]: band_by_band(photo, lr),
                names["model"]: model_on_reflectance(model, radiometry, lr),
            }
            results[kernel] = {who: scores(sr, hr, scale, scale) for who, sr in outputs.items()}
        return results

    others = {}
    for item in args.on:
        header = raster_inputs([item], radiometry.bands)[0]
        radiometry.check(header, args.checkpoint)
        others[header.path.name] = scored(modcrop(read_reflectance(header, radiometry), scale))
    return {
        "checkpoint": args.checkpoint,
        "bands": list(radiometry.bands),
        "held_out": f"eastern {hr.shape[-1]} of the raster's columns, {hr.shape[-2]} rows",
        "protocol": "Wald: LR = the region degraded by the kernel; scores on reflectance (PSNR peak "
        f"and SSIM range 1), {scale} px shaved; the photograph model sees each band / its LR maximum",
        "degradations": scored(hr),
        "other_rasters": others,
    }


def print_table(record: dict) -> None:
    """Per band PSNR and the spectral scores of each method, per degradation and region."""
    bands = record["bands"]
    print(record["protocol"])
    regions = {f"held-out region ({record['held_out']})": record["degradations"], **record["other_rasters"]}
    for region, results in regions.items():
        print(f"\n{region}")
        for kernel, by_method in results.items():
            print(f"LR by {kernel:8} {'  '.join(f'{b:>6}' for b in bands)}    mean   SSIM    SAM  ERGAS")
            for who, values in by_method.items():
                psnr = "  ".join(f"{v:6.2f}" for v in values["band_psnr"])
                print(f"  {who:14} {psnr}  {values['psnr']:6.2f} {values['ssim']:.4f} {values['sam']:6.3f} "
                      f"{values['ergas']:6.3f}")  # fmt: skip


def native_panel(args: argparse.Namespace, checkpoint: dict) -> None:
    """False-colour panel of the native raster's SR beside bicubic, with a zoomed detail."""
    config = recorded_config(checkpoint, args.checkpoint)
    radiometry, scale = Radiometry.from_dict(checkpoint["radiometry"]), config.scale
    raster = raster_paths(config.train_data)[0]
    channels = [radiometry.bands.index(b) for b in FALSE_COLOUR]
    lr = read_reflectance(raster_header(raster), radiometry)[
        :, :256, -256:
    ]  # the north-east corner: held out
    model = Upscaler.from_checkpoint(checkpoint, torch.device("cpu"))
    sr = model_on_reflectance(model, radiometry, lr)
    bic = upscale(lr, scale)

    def colour(image: Tensor) -> Tensor:
        return radiometry.reflectance_to_model(image)[channels].clamp(0, 1)

    nearest = lr.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    panels = [
        ("LR (nearest)", colour(nearest)),
        ("bicubic", colour(bic)),
        (Path(args.checkpoint).stem, colour(sr)),
    ]
    save_panel(
        Path(args.panel), f"{raster.name}, held-out corner, x{scale} ({'/'.join(FALSE_COLOUR)})", panels
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint", required=True, help="a multispectral model trained by Wald's protocol"
    )
    parser.add_argument("--photo", default="checkpoints/edsr_x2.pth", help="the photograph model to compare")
    parser.add_argument(
        "--on",
        action="append",
        default=[],
        metavar="RASTER",
        help="also score on this raster or band folder",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    parser.add_argument("--panel", metavar="FILE", help="also draw the native-resolution panel here")
    parser.add_argument("--overwrite", action="store_true", help="replace --json / --panel files")
    args = parser.parse_args(argv)
    check_outputs([Path(p) for p in (args.json, args.panel) if p], [], args.overwrite)
    checkpoint = load_checkpoint(args.checkpoint)
    record = study(args, checkpoint)
    print_table(record)
    if args.json:
        with atomic_write(args.json, "results") as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")
        print(f"\nresults written to {args.json}")
    if args.panel:
        native_panel(args, checkpoint)
        print(f"panel written to {args.panel}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
