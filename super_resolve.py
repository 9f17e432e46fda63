"""Super-resolve images with a trained checkpoint, beside bicubic, with metrics and panels.

    python super_resolve.py --checkpoint checkpoints/edsr_x3.pth lr.bmp
    python super_resolve.py --checkpoint CKPT photos/ 'more/*.png' --out-dir out/ --compare-dir panels/
    python super_resolve.py --checkpoint CKPT lr.png --gt hr.png --compare panel.png
    python super_resolve.py --checkpoint CKPT --dataset Set5 [--json] [--save] [--compare-dir panels/]

For each LR input it writes `<name>_<checkpoint>.<ext>` (the model; `--suffix` names it
otherwise, and a run's last/best/epoch file is named with its folder: `<name>_<run>_last.png`)
and `<name>_bicubic_x<scale>.<ext>` (MATLAB-compatible bicubic) beside the input or in
--out-dir, `<ext>` being the input's unless --ext says otherwise.
Large images run in overlapping tiles, so memory stays bounded whatever their size.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from bursts import (
    Burst,
    BurstConfig,
    burst_evaluation_set,
    load_frames,
    load_probav_scene,
    probav_layout,
)
from checkpoint import load_checkpoint
from config import recorded_config
from data import load_pairs
from evaluation import (
    bicubic,
    bicubic_array,
    check_size,
    evaluate_pairs,
    image_row,
    mean_row,
    print_table,
    protocol_note,
    robustness,
    set_record,
)
from figures import panel_images, save_panel, save_spectra_plot
from fusion import fuse, scene_paths, scene_row, write_scene
from images import (
    IMAGE_SUFFIXES,
    has_alpha,
    image_size,
    list_images,
    load_image,
    output_bits,
    read_image,
    read_image_and_alpha,
    to_channels,
    to_file_array,
)
from imresize import DEGRADATIONS, imresize, upscale
from inference import OnnxModel, Upscaler, check_memory
from metrics import (
    FDA_BANDS,
    PROTOCOL,
    check_scorable,
    score_labels,
)
from model import MODELS, MULTI_FRAME, SINGLE_IMAGE, load_model
from multispectral import Radiometry, raster_inputs, read_reflectance, registered_scores, upscale_raster
from multispectral import scores as multispectral_scores
from rasters import (
    RASTER_SUFFIXES,
    RasterHeader,
    RasterInput,
    raster_header,
    raster_input,
    save_output,
    stack_header,
)
from registration import REGISTRATIONS
from runtime import parse_device
from utils import (
    DatasetError,
    ImageError,
    Parser,
    UserError,
    check_outputs,
    ensure_folder,
    run_cli,
)

OUTPUT_EXTS = ("png", "jpg", "webp", "tif")


def build_parser() -> argparse.ArgumentParser:
    """The super_resolve.py command line."""
    parser = Parser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1] + "\n" + PROTOCOL,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="*", help="LR images, globs or folders of images (or of rasters)")
    parser.add_argument(
        "--bands",
        metavar="FILES",
        help="multispectral model: one input made of these band files (comma list, the model's band order, "
        "one grid); a folder input of one file per band (*_B05.tif, ...) is stacked the same way",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint written by train.py")
    source.add_argument("--onnx", metavar="FILE", help="a model exported by `train.py export` (onnxruntime)")
    parser.add_argument("--out-dir", help="write outputs here instead of beside each input")
    parser.add_argument("--gt", help="ground-truth HR image (one input) or folder (matched by name)")
    parser.add_argument(
        "--dataset", help="evaluate on a set: Set5, Set14, BSD100, Urban100, sample, a folder"
    )
    parser.add_argument(
        "--degradation",
        metavar="KERNELS",
        help="with --dataset: LR made by each kernel of a comma list (bicubic,bilinear,nearest); "
        "reports L1, PSNR and SSIM of the model and of bicubic and bilinear upscaling per kernel",
    )
    parser.add_argument(
        "--fda-plot",
        metavar="FILE",
        help="with --dataset: plot the radially averaged power spectra of SR, bicubic and HR",
    )
    parser.add_argument(
        "--registration",
        choices=REGISTRATIONS,
        help="with --gt or --dataset: also score after registering the reference to each result "
        "(geometric: a sub-pixel shift; radiometric: a gain and offset per band; both), for references "
        "from another sensor",
    )
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--save", action="store_true", help="with --dataset: also write the SR images")
    parser.add_argument("--compare", metavar="FILE", help="write a comparison panel PNG (one input)")
    parser.add_argument("--compare-dir", metavar="DIR", help="write a comparison panel per image here")
    out = parser.add_argument_group("output files of positional inputs (as Real-ESRGAN's inference script)")
    out.add_argument("--suffix", help="SR output {input}_{suffix}.{ext} (default: the checkpoint's name)")
    out.add_argument(
        "--ext", choices=OUTPUT_EXTS, help="format (default png; jpg, webp: 8-bit; multispectral: tif)"
    )
    out.add_argument("--quality", type=int, default=95, help="JPEG / WebP quality, 1-100 (default 95)")
    out.add_argument("--outscale", type=float, help="final scale, if not the model's (MATLAB bicubic resize)")
    out.add_argument(
        "--alpha-upsampler",
        choices=("bicubic", "model"),
        default="bicubic",
        help="how an RGBA input's alpha is upscaled (default bicubic); kept, as PNG for --ext jpg",
    )
    out.add_argument("--no-baseline", action="store_true", help="do not write the bicubic image")
    out.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: refuse)")
    parser.add_argument(
        "--shave",
        type=int,
        metavar="PX",
        help="border pixels left out of PSNR/SSIM (default: the scale, as the benchmark protocol)",
    )
    parser.add_argument("--tile", type=int, default=256, help="tile size in LR pixels (default 256)")
    parser.add_argument("--tile-overlap", type=int, default=16, help="tile overlap in LR pixels (default 16)")
    parser.add_argument("--cuda", action="store_true", help="run the model on the GPU (--device cuda)")
    parser.add_argument("--device", help="where to run the model: cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        help="bf16 autocast for the model (default: on with --cuda where the GPU has bf16)",
    )
    parser.add_argument(
        "--self-ensemble",
        action="store_true",
        help="average the model over the 8 flips/rotations of each input (EDSR's '+'; 8x the time)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


# ---------------------------------------------------------------------------------------
# Model and baseline
# ---------------------------------------------------------------------------------------


def check_options(args: argparse.Namespace) -> torch.device:
    """Validate device, tiling and output options; the device to run on."""
    if args.cuda and args.device and not args.device.startswith("cuda"):
        raise UserError(f"--cuda and --device {args.device} disagree")
    device = parse_device(args.device or ("cuda" if args.cuda else "cpu"))
    if args.shave is not None and args.shave < 0:
        raise UserError(f"--shave must be at least 0, got {args.shave}")
    if args.tile < 8 or args.tile_overlap < 0:
        raise UserError(
            f"--tile must be at least 8 and --tile-overlap at least 0, got {args.tile}, {args.tile_overlap}"
        )
    if not 1 <= args.quality <= 100:
        raise UserError(f"--quality must be in [1, 100], got {args.quality}")
    if args.outscale is not None:
        if not (math.isfinite(args.outscale) and 1 <= args.outscale <= 16):
            raise UserError(f"--outscale must be in [1, 16], got {args.outscale}")
        given = {"--gt": args.gt, "--dataset": args.dataset, "--compare": args.compare,
                 "--compare-dir": args.compare_dir}  # fmt: skip
        clash = [flag for flag, value in given.items() if value]
        if clash:
            raise UserError(f"--outscale changes the output's size; {clash[0]} scores at the model's scale")
    if args.suffix is not None and not re.fullmatch(r"[\w.+-]+", args.suffix):
        raise UserError(f"--suffix {args.suffix!r}: use letters, digits, '.', '+', '-' and '_'")
    return device


def shave_of(args: argparse.Namespace, scale: int) -> int:
    """The border left out of the scores: --shave, or the protocol's `scale` pixels."""
    return scale if args.shave is None else args.shave


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------


def expand_inputs(items: list[str], suffix: str | None = None) -> list[Path]:
    """Files, globs and folders -> image paths, in order, without repeats (a folder's files
    named as this script's outputs, SR ones by `suffix`, are left out)."""
    paths: list[Path] = []
    for item in items:
        if Path(item).is_dir():
            found = [path for path in list_images(item) if not is_output_name(path, suffix)]
            if not found:
                raise ImageError(f"{item}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        elif any(ch in item for ch in "*?["):
            found = [Path(p) for p in sorted(glob.glob(item)) if Path(p).suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise ImageError(f"{item}: matches no images")
        else:
            found = [Path(item)]
            if not found[0].is_file():  # fail before any output is written
                raise ImageError(f"{item}: no such file")
        paths += [p for p in found if p not in paths]
    return paths


def find_gt(gt: str, lr_path: Path, single: bool) -> Path:
    """The ground truth of an input: the --gt file, or a same-named file in the --gt folder."""
    folder = Path(gt)
    if not folder.is_dir():
        if not single:
            raise UserError("--gt is a file but there are several inputs; give a folder of HR images")
        return folder
    stems = [lr_path.stem, lr_path.stem.replace("_LR", "_HR"), lr_path.stem.replace("_lr", "_hr")]
    for candidate in list_images(folder):
        if candidate.stem in stems:
            return candidate
    raise ImageError(f"{folder}: no ground truth for {lr_path.name} (looked for {', '.join(stems)})")


def check_gt(gt: Tensor, lr: Tensor, gt_path: Path, lr_path: Path, scale: int, shave: int) -> Tensor:
    """Ground truth in the channels of the SR image of `lr` (cropped to a multiple of the
    scale, as the protocol does), or an error naming both sizes."""
    size = (lr.shape[-2] * scale, lr.shape[-1] * scale)
    extra = [g - s for g, s in zip(gt.shape[-2:], size)]
    if all(0 <= e < scale for e in extra):
        gt = gt[..., : size[0], : size[1]]
    if tuple(gt.shape[-2:]) != size:
        raise ImageError(
            f"{gt_path}: ground truth is {gt.shape[-1]}x{gt.shape[-2]} but the x{scale} output of "
            f"{lr_path.name} is {size[1]}x{size[0]}"
        )
    check_scorable(gt, str(gt_path), shave)
    return to_channels(gt, lr.shape[0])


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------


# Names this script writes beside its inputs; a folder given as input skips them, so that a
# second run on a folder does not super-resolve the first run's outputs.
OUTPUT_NAME = re.compile(
    rf"_({'|'.join(sorted(MODELS, key=len, reverse=True))})_x\d+\.png$"  # before --suffix existed
    rf"|_bicubic_x[\d.]+\.({'|'.join(OUTPUT_EXTS)})$|_compare\.png$"
)


def is_output_name(path: Path, suffix: str | None = None) -> bool:
    """Whether a file is named like an output of this script (SR with `suffix`, bicubic, panel)."""
    own = suffix is not None and any(path.name.endswith(f"_{suffix}.{ext}") for ext in OUTPUT_EXTS)
    return own or bool(OUTPUT_NAME.search(path.name))


@dataclass
class Outputs:
    """Where one input's results go: SR image, bicubic image (unless --no-baseline), panel."""

    sr: Path
    bicubic: Path | None
    panel: Path | None

    def paths(self) -> list[Path]:
        return [path for path in (self.sr, self.bicubic, self.panel) if path is not None]


def output_suffix(args: argparse.Namespace) -> str:
    """The SR output's name after the input's: --suffix, else the checkpoint's (or ONNX file's)
    own name, so that two checkpoints of one model never write the same file."""
    if args.suffix:
        return args.suffix
    path = Path(args.checkpoint or args.onnx)
    if re.fullmatch(r"last|best|epoch-\d+", path.stem):  # a run's own files: name the run too
        return f"{path.parent.name}_{path.stem}"
    return path.stem


def plan_outputs(paths: list[Path], args: argparse.Namespace, scale: int) -> list[Outputs]:
    """Every output path of every input, checked before anything is written: inputs that share
    a stem (a.bmp, a.png) get their extension in the name; no output may exist (without
    --overwrite), be a folder, be read-only, sit in a missing folder, or be written twice."""
    stems = Counter((path.parent, path.stem) for path in paths)
    suffix, final = output_suffix(args), f"x{args.outscale or scale:g}"
    plans = []
    for path in paths:
        stem = path.stem if stems[path.parent, path.stem] == 1 else f"{path.stem}_{path.suffix[1:].lower()}"
        folder = Path(args.out_dir) if args.out_dir else path.parent
        ext = "png" if args.ext == "jpg" and has_alpha(path) else args.ext  # JPEG has no alpha
        panel = Path(args.compare) if args.compare else None
        if args.compare_dir:
            panel = Path(args.compare_dir) / f"{stem}_compare.png"
        bicubic_path = None if args.no_baseline else folder / f"{stem}_bicubic_{final}.{ext}"
        plans.append(Outputs(folder / f"{stem}_{suffix}.{ext}", bicubic_path, panel))
    check_outputs([output for outputs in plans for output in outputs.paths()], paths, args.overwrite)
    return plans


# ---------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------


def run_dataset(args: argparse.Namespace, upscaler: Upscaler) -> int:
    """--dataset: per-image and mean PSNR/SSIM of model and bicubic."""
    show = not args.quiet and not args.json
    pairs = load_pairs(args.dataset, upscaler.scale, progress=show)
    out_dir = (
        ensure_folder(args.out_dir or Path("results") / f"{Path(args.dataset).name}_x{upscaler.scale}")
        if args.save
        else None
    )
    panel_dir = ensure_folder(args.compare_dir) if args.compare_dir else None
    suffix = output_suffix(args)
    sr_paths = [out_dir / f"{pair.name}_{suffix}.png" for pair in pairs] if out_dir else []
    panel_paths = [panel_dir / f"{pair.name}_compare.png" for pair in pairs] if panel_dir else []
    plots = [Path(args.fda_plot)] if args.fda_plot else []
    check_outputs(sr_paths + panel_paths + plots, [], args.overwrite)
    shave = shave_of(args, upscaler.scale)
    rows, spectra = evaluate_pairs(
        upscaler, pairs, shave, sr_paths, panel_paths, args.dataset if show else None, args.registration
    )
    report(args, upscaler.name, upscaler.scale, rows, f"{args.dataset} x{upscaler.scale}")
    if args.fda_plot:
        save_spectra_plot(Path(args.fda_plot), spectra, f"{args.dataset} x{upscaler.scale}", upscaler.name)
        if not args.json:
            print(f"spectra plotted to {args.fda_plot}")
    if out_dir is not None and not args.json:
        print(f"SR images written to {out_dir}")
    if panel_dir is not None and not args.json:
        print(f"comparison panels written to {panel_dir}")
    return 0


def report(
    args: argparse.Namespace, name: str, scale: int, rows: list[dict], title: str, multi_frame: bool = False
) -> None:
    """Print the results as a table or as JSON (single-image PSNR/SSIM or multi-frame cPSNR/cSSIM)."""
    protocol = protocol_note(scale, args.shave, multi_frame=multi_frame)
    if args.json:
        record = set_record(rows, checkpoint=args.checkpoint or args.onnx, model=name, scale=scale,
                            dataset=args.dataset, protocol=protocol, self_ensemble=args.self_ensemble,
                            shave=args.shave)  # fmt: skip
        print(json.dumps(record, indent=2))
    else:
        ensemble = ", self-ensemble of 8 flips/rotations" if args.self_ensemble else ""
        metric = score_labels(multi_frame)[0].upper()
        print_table(rows, name, f"{title} ({metric} in dB{ensemble})\n{protocol}", multi_frame)
        mean = mean_row(rows)
        if "uncertainty_rank_correlation" in mean:
            each = ", ".join(f"{r['name']} {r['uncertainty_rank_correlation']:+.3f}" for r in rows)
            print(f"uncertainty: rank correlation of the predicted scale with the actual |error|: {each}")
        if "model_energy_low" in mean:
            print(
                "\nspectral energy SR/HR (mean over images; 1 = HR-like) in bands of normalised frequency "
                "low <1/6, mid 1/6-1/3, high >1/3 cycles/pixel:"
            )
            for who in (name, "bicubic"):
                key = "model" if who == name else who
                bands = "  ".join(f"{band} {mean[f'{key}_energy_{band}']:.3f}" for band in FDA_BANDS)
                print(f"  {who:10} {bands}")


def run_robustness(args: argparse.Namespace, upscaler: Upscaler) -> int:
    """--dataset with --degradation: the model against bicubic and bilinear upscaling when the
    LR images are made by each kernel (the degradation-robustness study; README, 'Studies')."""
    kernels = [k.strip() for k in args.degradation.split(",") if k.strip()]
    unknown = [k for k in kernels if k not in DEGRADATIONS]
    if unknown or not kernels:
        raise UserError(f"--degradation {args.degradation!r}: use a comma list of {', '.join(DEGRADATIONS)}")
    scale, show = upscaler.scale, not args.quiet and not args.json
    results = robustness(upscaler, args.dataset, kernels, shave_of(args, scale), progress=show)
    if args.json:
        print(
            json.dumps(
                {
                    "checkpoint": args.checkpoint or args.onnx,
                    "model": upscaler.name,
                    "scale": scale,
                    "dataset": args.dataset,
                    "protocol": PROTOCOL,
                    "degradations": results,
                },
                indent=2,
            )
        )
        return 0
    print(
        f"{args.dataset} x{scale}: LR made by each kernel; mean L1 (8-bit SR, shaved, 0..1), PSNR (dB), SSIM"
    )
    print(PROTOCOL)
    for kernel, by_method in results.items():
        print(f"\nLR by {kernel}:")
        best = max(by_method, key=lambda name: by_method[name]["psnr"])
        for name, values in by_method.items():
            mark = "  <- best" if name == best else ""
            print(
                f"  {name:10} L1 {values['l1']:.4f}  PSNR {values['psnr']:7.3f}  "
                f"SSIM {values['ssim']:.4f}{mark}"
            )
    return 0


def write_outputs(
    args: argparse.Namespace,
    upscaler: Upscaler,
    lr_path: Path,
    source: RasterInput,
    bits: int,
    alpha: Tensor | None,
    outputs: Outputs,
) -> None:
    """The SR image (and the bicubic one), with the input's alpha when it has one, each built
    in its final 8/16-bit form (`--outscale`: resized from float, MATLAB bicubic); a
    georeferenced input gives GeoTIFF outputs on its grid made finer (`rasters`)."""
    lr = source.image
    bits = output_bits(outputs.sr, bits)
    size = None
    if args.outscale is not None:
        size = (round(lr.shape[-2] * args.outscale), round(lr.shape[-1] * args.outscale))
    tiles = None if args.quiet or args.json else lr_path.name

    def model(image: Tensor) -> np.ndarray:
        if size is None:
            return upscaler.to_array(image, bits, progress=tiles)
        return to_file_array(imresize(upscaler(image), size=size).clamp(0, 1), bits)

    def baseline(image: Tensor) -> np.ndarray:
        if size is None:
            return bicubic_array(image, upscaler.scale, bits)
        return to_file_array(imresize(image, size=size).clamp(0, 1), bits)

    upscaled_alpha = None
    if alpha is not None:
        upscaled_alpha = model(alpha) if args.alpha_upsampler == "model" else baseline(alpha)
    for path, make in ((outputs.sr, model), (outputs.bicubic, baseline)):
        if path is None:
            continue
        array = make(lr)
        if upscaled_alpha is not None:
            array = np.concatenate([array, upscaled_alpha], axis=-1)
        save_output(array, path, source, args.outscale or upscaler.scale, quality=args.quality)
        del array  # one output in memory at a time
    if not args.json:
        written = " and ".join(str(path) for path in (outputs.sr, outputs.bicubic) if path is not None)
        note = ""
        if source.georef:
            note = (" (GeoTIFF on the input's grid made finer)" if outputs.sr.suffix == ".tif" else
                    f" (no georeferencing in .{args.ext}; --ext tif keeps it)")  # fmt: skip
        if alpha is not None:
            note = " (alpha kept; PNG, as JPEG has none)" if args.ext == "jpg" else " (alpha kept)"
        print(f"wrote {written}{note}")


def run_inputs(args: argparse.Namespace, upscaler: Upscaler) -> int:
    """Positional inputs: write model and bicubic outputs, score against --gt, draw panels."""
    from tqdm import tqdm

    paths = expand_inputs(args.inputs, output_suffix(args))
    if args.compare and len(paths) > 1:
        raise UserError("--compare takes one input; use --compare-dir for several")
    for path in paths:
        check_photograph(path, f"{upscaler.name} x{upscaler.scale}")
    if args.out_dir:
        ensure_folder(args.out_dir)
    if args.compare_dir:
        ensure_folder(args.compare_dir)
    plans = plan_outputs(paths, args, upscaler.scale)
    rows = []
    show = not args.quiet and not args.json and len(paths) > 1
    shave = shave_of(args, upscaler.scale)
    for lr_path, outputs in zip(tqdm(paths, desc="super-resolving", disable=not show, leave=False), plans):
        gt_path = find_gt(args.gt, lr_path, single=len(paths) == 1) if args.gt else None
        scoring = bool(gt_path or outputs.panel or args.outscale)
        largest = max(upscaler.scale, args.outscale or 0)  # --outscale holds the model's output too
        check_memory(str(lr_path), *image_size(lr_path), largest, scoring=scoring)
        lr, bits, alpha = read_image_and_alpha(lr_path)
        check_size(lr, str(lr_path))
        gt = (
            check_gt(read_image(gt_path)[0], lr, gt_path, lr_path, upscaler.scale, shave) if gt_path else None
        )
        write_outputs(args, upscaler, lr_path, raster_input(lr_path, lr, bits), bits, alpha, outputs)
        if gt is None and not outputs.panel:
            continue
        sr = load_image(outputs.sr)  # scores and panels are of the files written
        bic = load_image(outputs.bicubic) if outputs.bicubic else bicubic(lr, upscaler.scale)
        row = None
        if gt is not None:
            row = image_row(lr_path.stem, sr, bic, gt, shave, args.registration, upscaler.scale)
            rows.append(row)
        if outputs.panel:
            panels = panel_images(lr, bic, sr, gt, row, upscaler.name)
            save_panel(outputs.panel, f"{lr_path.name} x{upscaler.scale}", panels)
            if not args.json:
                print(f"comparison panel: {outputs.panel}")
    if rows:
        report(args, upscaler.name, upscaler.scale, rows, f"against {args.gt}")
    return 0


def check_photograph(path: Path, model: str) -> None:
    """Refuse, naming both, a raster a photograph model cannot take: bands that are not gray or
    RGB (+ alpha), or pixels other than 8/16-bit unsigned; and a georeferencing that cannot be
    kept (`rasters.georeference`)."""
    if path.suffix.lower() not in RASTER_SUFFIXES:
        return
    try:
        header = raster_header(path)
    except ImageError as err:
        if "not a readable raster" in str(err):
            return  # not a raster GDAL reads: the image reader says what is wrong with it
        raise
    colours = header.count - header.alpha in (1, 3) and header.count <= 4
    if not colours or header.dtype not in ("uint8", "uint16"):
        raise ImageError(f"{path}: a raster of {header.count} {header.dtype} bands, but {model} is a "
                         "photograph model (gray or RGB, 8/16-bit); use a multispectral model "
                         "(checkpoints/s2_20m_x2.pth for Sentinel-2 20 m bands)")  # fmt: skip


def run_rasters(args: argparse.Namespace, checkpoint: dict, upscaler: Upscaler) -> int:
    """Multispectral model: each raster's SR (and bicubic) GeoTIFF on its grid made finer, window
    by window, in its units and pixel type; with --gt, per-band and spectral scores."""
    for flag, value in (("--outscale", args.outscale), ("--compare", args.compare),
                        ("--compare-dir", args.compare_dir), ("--fda-plot", args.fda_plot),
                        ("--degradation", args.degradation), ("--dataset", args.dataset)):  # fmt: skip
        if value:
            raise UserError(
                f"{flag} is for photograph models; a multispectral model writes and scores rasters"
            )
    if args.ext not in (None, "tif"):
        raise UserError(f"--ext {args.ext}: a multispectral model writes GeoTIFF (.tif)")
    radiometry, name, scale = Radiometry.from_dict(checkpoint["radiometry"]), upscaler.name, upscaler.scale
    if args.bands:
        files = [Path(item) for item in args.bands.split(",")]
        headers = [stack_header(files, files[0].with_name(stack_name(files[0], radiometry.bands[0])),
                                radiometry.bands)]  # fmt: skip
    else:
        headers = raster_inputs(args.inputs, radiometry.bands)
    paths = [header.path for header in headers]
    for header in headers:
        radiometry.check(header, f"{args.checkpoint} ({name} x{scale})")
    units = [radiometry.for_raster(header) for header in headers]  # as each product states them
    gts = [
        raster_gt(args.gt, header, radiometry, len(headers) == 1) if args.gt else None for header in headers
    ]
    for header, gt in zip(headers, gts):
        if gt is not None:
            check_raster_gt(gt, header, scale)
    if args.out_dir:
        ensure_folder(args.out_dir)
    plans = plan_outputs(paths, argparse.Namespace(**{**vars(args), "ext": "tif"}), scale)
    rows = []
    for header, outputs, gt, units_here in zip(headers, plans, gts, units):
        tiles = None if args.quiet or args.json else header.path.name
        if units_here != radiometry and not args.json:
            print(f"{header.path.name}: its product states {units_here.units()} (the model was trained "
                  f"on {radiometry.units()}); read and written in the product's units")  # fmt: skip
        makers = ((outputs.sr, upscaler.upscale_tile), (outputs.bicubic, lambda lr: upscale(lr, scale)))
        for path, make in makers:
            if path is not None:
                upscale_raster(make, header, path, units_here, scale, args.tile, args.tile_overlap, tiles)
        if not args.json:
            written = " and ".join(str(path) for path in (outputs.sr, outputs.bicubic) if path is not None)
            grid = "on the input's grid made finer" if header.georef else "(the input has no georeferencing)"
            print(f"wrote {written}: {header.count}-band {header.dtype} GeoTIFF {grid}")
        if gt is not None:
            hr = read_reflectance(gt, radiometry.for_raster(gt))
            shave = shave_of(args, scale)
            row = {"name": header.path.stem, "bands": list(radiometry.bands)}
            for who, path in ((name, outputs.sr), ("bicubic", outputs.bicubic)):
                if path is not None:
                    sr = read_reflectance(raster_header(path), units_here)
                    row[who] = multispectral_scores(sr, hr, scale, shave)
                    if args.registration:
                        row[who] |= registered_scores(sr, hr, scale, shave, args.registration)
            rows.append(row)
    if rows:
        report_rasters(args, name, scale, rows)
    return 0


def stack_name(first: Path, band: str) -> str:
    """The name of a stack of band files: the first file's without its band."""
    stem = first.stem.removesuffix(f"_{band}")
    return f"{stem}_stack" if stem == first.stem else stem


def raster_gt(gt: str, header: RasterHeader, radiometry: Radiometry, single: bool) -> RasterHeader:
    """The reference raster of an input: the --gt raster or folder of band files (one input), or
    the same-named raster in the --gt folder."""
    if single:
        found = raster_inputs([gt], radiometry.bands)
        if len(found) == 1:
            return found[0]
    return raster_header(find_gt(gt, header.path, single))


def check_raster_gt(gt: RasterHeader, lr: RasterHeader, scale: int) -> None:
    """Refuse a ground-truth raster that is not the input's bands at `scale` times its size."""
    size = (lr.height * scale, lr.width * scale)
    if (gt.height, gt.width) != size or gt.count != lr.count:
        raise ImageError(f"{gt.path}: {gt.count} bands of {gt.width}x{gt.height}, but the x{scale} output "
                         f"of {lr.path.name} has {lr.count} of {size[1]}x{size[0]}")  # fmt: skip


def report_rasters(args: argparse.Namespace, name: str, scale: int, rows: list[dict]) -> None:
    """Print multispectral scores per raster: per band PSNR/SSIM, their means, SAM, ERGAS."""
    note = (f"on reflectance (PSNR peak and SSIM range 1), {shave_of(args, scale)} px shaved; SAM in "
            "degrees; ERGAS lower is better")  # fmt: skip
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "model": name, "scale": scale, "protocol": note,
                          "rasters": rows}, indent=2))  # fmt: skip
        return
    print(f"x{scale} against {args.gt}, {note}")
    for row in rows:
        print(f"{row['name']}:")
        print(f"  {'':10} {'  '.join(f'{band:>7}' for band in row['bands'])}   mean PSNR/SSIM     SAM  ERGAS")
        for who in (name, "bicubic"):
            if who in row:
                values = row[who]
                bands = "  ".join(f"{v:7.2f}" for v in values["band_psnr"])
                print(f"  {who:10} {bands}   {values['psnr']:6.2f} {values['ssim']:.4f}  "
                      f"{values['sam']:6.3f} {values['ergas']:6.3f}")  # fmt: skip
                if "registered_psnr" in values:
                    bands = "  ".join(f"{v:7.2f}" for v in values["registered_band_psnr"])
                    print(f"  {'registered':10} {bands}   {values['registered_psnr']:6.2f} "
                          f"{values['registered_ssim']:.4f}  ({args.registration})")  # fmt: skip


SINGLE_IMAGE_OPTIONS = ("degradation", "fda_plot", "compare", "compare_dir", "suffix", "ext", "quality",
                        "outscale", "alpha_upsampler", "no_baseline", "registration")  # fmt: skip


def load_fusion_model(args: argparse.Namespace, checkpoint: dict, device: torch.device) -> nn.Module:
    """The multi-frame network of a checkpoint marked multi-frame, in eval mode on `device`."""
    defaults = build_parser()
    for option in SINGLE_IMAGE_OPTIONS:
        if getattr(args, option) != defaults.get_default(option):
            raise UserError(f"--{option.replace('_', '-')} is for single-image checkpoints; a scene's "
                            "outputs are PNGs at the model's scale, named by the scene")  # fmt: skip
    return load_model(checkpoint).to(device)


def run_burst_dataset(args: argparse.Namespace, checkpoint: dict, device: torch.device) -> int:
    """--dataset with a multi-frame checkpoint: the scenes of a PROBA-V set (scored when they
    have an HR image, super-resolved into the output folder when not), or one synthetic
    burst per image of a single-image set (made with the checkpoint's burst settings and a
    fixed seed, as in training's validation); cPSNR/cSSIM of the model and the baseline."""
    from tqdm import tqdm

    model = load_fusion_model(args, checkpoint, device)
    name, scale = checkpoint["model"]["name"], checkpoint["model"]["scale"]
    config = BurstConfig.from_options(recorded_config(checkpoint, args.checkpoint))
    show = not args.quiet and not args.json
    bursts = burst_evaluation_set(args.dataset, config, progress=show, scored_only=False)
    unscored = [b for b in bursts if not b.hr.numel()]
    if len(unscored) == len(bursts):
        raise DatasetError(f"{args.dataset}: no scene with an HR image to score")
    default_dir = Path("results") / f"{Path(args.dataset).name}_bursts_x{scale}"
    out_dir = ensure_folder(args.out_dir or default_dir) if args.save or unscored else None
    targets = {b.name: scene_paths(out_dir, b.name, name, scale) for b in bursts
               if out_dir is not None and (args.save or not b.hr.numel())}  # fmt: skip
    check_outputs([path for paths in targets.values() for path in paths.values()], [], args.overwrite)
    for burst in bursts:
        check_size(burst.frames, burst.name)
    rows, written = [], []
    for burst in tqdm(bursts, desc=args.dataset, disable=not show, leave=False):
        sr, log_scale = fuse(model, burst, device)
        if burst.hr.numel():
            rows.append(scene_row(burst, sr, log_scale, scale, burst.hr, burst.mask))
        if burst.name in targets:
            outputs = {"sr": sr, "log_scale": log_scale, "baseline": burst.baseline_image(scale)}
            written.append(write_scene(targets[burst.name], outputs, 16))
    title = f"{args.dataset} x{scale}, bursts of {config.frames} frames"
    report(args, name, scale, rows, title, multi_frame=True)
    if written and not args.json:
        print(f"SR, uncertainty and baseline images of {len(written)} scenes written to {out_dir}")
    return 0


def run_scene(args: argparse.Namespace, checkpoint: dict, device: torch.device) -> int:
    """Multi-frame checkpoint: the frames of one scene (files, a folder, or a PROBA-V imgset
    folder) -> SR image, its uncertainty map and the baseline upscale; cPSNR/cSSIM with --gt
    (or the scene's own HR.png), and the challenge's score for a PROBA-V scene."""
    model = load_fusion_model(args, checkpoint, device)
    name, scale = checkpoint["model"]["name"], checkpoint["model"]["scale"]
    single_folder = len(args.inputs) == 1 and Path(args.inputs[0]).is_dir()
    if single_folder and not probav_layout(args.inputs[0]) and (Path(args.inputs[0]) / "HR.png").exists():
        raise DatasetError(f"{args.inputs[0]}: HR.png but no LR*.png frames (a PROBA-V scene's LR000.png...)")
    if single_folder and probav_layout(args.inputs[0]):
        burst = load_probav_scene(args.inputs[0], checkpoint["args"]["frames"])
        bits, scene = 16, Path(args.inputs[0])
        inputs = list(scene.iterdir())
        gt, mask = (burst.hr, burst.mask) if burst.hr.numel() else (None, None)
    else:
        inputs = expand_inputs(args.inputs)
        scene = Path(args.inputs[0]) if single_folder else inputs[0].with_name(inputs[0].stem)
        burst = Burst(scene.name, load_frames(inputs), torch.empty(0), torch.empty(0))
        bits, gt, mask = max(read_image(p)[1] for p in inputs[:1]), None, None
    check_size(burst.frames, str(scene))
    if args.gt:
        gt = to_channels(read_image(args.gt)[0], 1)
        mask = torch.ones_like(gt)
    if gt is not None:  # checked before anything is written
        gt = check_gt(gt, burst.frames[:1], Path(args.gt or scene / "HR.png"), scene, scale, scale)
        mask = mask[..., : gt.shape[-2], : gt.shape[-1]]
    folder = ensure_folder(args.out_dir) if args.out_dir else scene.parent
    targets = scene_paths(folder, scene.name, name, scale)
    check_outputs(list(targets.values()), inputs, args.overwrite)
    sr, log_scale = fuse(model, burst, device)
    outputs = {"sr": sr, "log_scale": log_scale, "baseline": burst.baseline_image(scale)}
    line = write_scene(targets, outputs, bits)
    if not args.json:
        print(line)
    if gt is not None:
        row = scene_row(burst, sr, log_scale, scale, gt, mask)
        report(args, name, scale, [row], f"{scene}", multi_frame=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    if bool(args.inputs or args.bands) == bool(args.dataset) or (args.inputs and args.bands):
        raise UserError(
            "give LR images (or --bands) to super-resolve, or --dataset to evaluate (one of them)"
        )
    if args.gt and args.dataset:
        raise UserError("--gt goes with input images; a --dataset brings its own ground truth")
    if args.registration and not (args.gt or args.dataset) or args.registration and args.degradation:
        raise UserError(
            "--registration scores against a reference: give --gt or --dataset (without --degradation)"
        )
    device = check_options(args)
    if args.onnx and device.type != "cpu":
        raise UserError(f"--onnx runs on the CPU with onnxruntime; drop --cuda / --device {device}")
    if args.onnx:
        onnx_model = OnnxModel(args.onnx)
        meta = onnx_model.metadata
        upscaler = Upscaler(model=onnx_model, name=meta["model"], scale=onnx_model.scale,
                            channels=onnx_model.channels, device=torch.device("cpu"), tile=args.tile,
                            overlap=args.tile_overlap, self_ensemble=args.self_ensemble)  # fmt: skip
    else:
        checkpoint = load_checkpoint(args.checkpoint)
        kind = checkpoint.get("kind", SINGLE_IMAGE)
        if kind == MULTI_FRAME and args.self_ensemble:
            raise UserError("--self-ensemble is for single-image models; this checkpoint fuses bursts")
        if kind == MULTI_FRAME and args.shave is not None:
            raise UserError("--shave is for single-image models; cPSNR of bursts has its own border")
        if kind == MULTI_FRAME and args.bands:
            raise UserError("--bands is for multispectral models; this checkpoint fuses bursts")
        if kind == MULTI_FRAME:
            return (run_burst_dataset if args.dataset else run_scene)(args, checkpoint, device)
        upscaler = Upscaler.from_checkpoint(
            checkpoint, device, args.tile, args.tile_overlap, args.amp, args.self_ensemble
        )
        if "radiometry" in checkpoint:
            return run_rasters(args, checkpoint, upscaler)
    if args.bands:
        raise UserError(
            f"--bands is for multispectral models; {upscaler.name} x{upscaler.scale} takes gray or RGB"
        )
    args.ext = args.ext or "png"
    if args.dataset:
        return run_robustness(args, upscaler) if args.degradation else run_dataset(args, upscaler)
    return run_inputs(args, upscaler)


if __name__ == "__main__":
    sys.exit(run_cli(main))
