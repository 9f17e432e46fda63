"""Train, resume and inspect super-resolution models.

    python train.py train --cuda --lr=0.0005 --batch-size=256 --num-epoch=100 --save-freq=10
    python train.py train --lr=0.001 --batch-size=128 --num-epoch=20 --save-freq=2
    python train.py train --config configs/edsr_x3.toml     # a shipped model's recipe
    python train.py resume runs/srcnn_x3/last.pth --cuda
    python train.py resume runs/srcnn_x3/last.pth --batch-size=16 --num-epoch=200
    python train.py inspect runs/srcnn_x3/last.pth [--json] [--plot curves.png] [--all] [--reach DB]
    python train.py ship runs/srcnn_x3/last.pth checkpoints/srcnn_x3.pth

The command line of the training loop in `trainer.py`: `train` starts a run from the
defaults and the flags given, `resume` continues a checkpoint (as if never stopped; flags
given now override the saved ones where that keeps the run the same run), `inspect` shows
what a checkpoint holds, `export` writes its model as ONNX and `ship` writes it as a model to
publish (the validated weights alone, a quarter of a training file). Under `torchrun` the same
script trains with DistributedDataParallel; only rank 0 logs and writes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from checkpoint import (
    check_checkpoint,
    is_training_checkpoint,
    load_checkpoint,
    save_checkpoint,
    shipped,
)
from config import FIXED_EPOCH, FIXED_RUN, TrainConfig, fixed, load_recipe, recorded_config
from figures import plot_history
from imresize import degradation_kernels
from inference import export_onnx
from metrics import PROTOCOL, score_labels
from model import MULTI_FRAME, SINGLE_IMAGE, load_model, model_zoo
from runtime import process_rank
from trainer import TrainingStopped, train
from utils import (
    CheckpointError,
    Parser,
    UserError,
    atomic_write,
    check_outputs,
    run_cli,
)
from validation import named_history, validation_of

# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def _degradation(text: str) -> str:
    """Validate --degradation: one kernel, a comma list, or 'random' (all of them)."""
    try:
        degradation_kernels(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _factors(text: str) -> list[float]:
    """Parse --train-scales: comma-separated factors in (0, 1]."""
    try:
        factors = [float(f) for f in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,0.9,0.8, got {text!r}") from None
    bad = [f for f in factors if not 0 < f <= 1]
    if bad:
        raise argparse.ArgumentTypeError(f"factor {bad[0]:g} is not in (0, 1]")
    return factors


# How a field's value is read from the command line: by its type, or by its name.
PARSERS: dict[str, Any] = {"int": int, "float": float, "str": str, "degradation": _degradation,
                           "train_scales": _factors}  # fmt: skip


def _add_training_options(parser: argparse.ArgumentParser, resume: bool) -> None:
    """The options of `train` and `resume`, one per TrainConfig field. None has an argparse
    default: a flag not given stays absent, so that a recipe file (train) or the checkpoint's
    arguments (resume) fill it, and the defaults come from TrainConfig alone."""
    for spec in fields(TrainConfig):
        if spec.name == "config":
            continue
        meta, kind = spec.metadata, spec.type.replace(" | None", "")
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": meta["help"]}
        if not resume and spec.default not in (None, (), ""):
            shown = ",".join(map(str, spec.default)) if isinstance(spec.default, tuple) else spec.default
            kwargs["help"] += f" (default: {shown})"
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = meta["metavar"]
            if kind == "tuple[str, ...]":
                kwargs["action"] = "append"
            else:
                kwargs["type"] = PARSERS.get(spec.name, PARSERS.get(kind))
            if meta["choices"] is not None:
                kwargs["choices"] = list(meta["choices"])
        parser.add_argument(f"--{spec.name.replace('_', '-')}", **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The train / resume / inspect command line."""
    zoo = "\n".join(f"  {name:10} {params:>9,} params  {text}" for name, params, text in model_zoo())
    parser = Parser(
        description=__doc__.split("\n\n")[0],
        epilog=f"models (x3):\n{zoo}\n\n{PROTOCOL}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    train = sub.add_parser(
        "train",
        help="train a model from scratch",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"models (x3):\n{zoo}\n\n{PROTOCOL}",
    )
    train.add_argument(
        "--config",
        metavar="FILE",
        help="a recipe file (TOML, e.g. configs/edsr_x2.toml): its settings, then the flags given beside it",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="start even if --out-dir holds another run's files, removing them (default: refuse)",
    )
    _add_training_options(train, resume=False)
    resume = sub.add_parser("resume", help="continue from a checkpoint; given flags override saved ones")
    resume.add_argument("checkpoint", help="a checkpoint written by train.py")
    _add_training_options(resume, resume=True)
    inspect = sub.add_parser("inspect", help="describe a checkpoint and its history")
    inspect.add_argument("checkpoint", help="a checkpoint written by train.py")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    inspect.add_argument("--plot", metavar="FILE", help="draw loss and validation PSNR curves into a PNG")
    inspect.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    inspect.add_argument("--all", action="store_true", help="print every epoch and every argument")
    inspect.add_argument(
        "--reach",
        type=float,
        metavar="DB",
        help="time to quality: the first epoch whose validation reached DB, and the epoch time until then",
    )
    export = sub.add_parser("export", help="export a single-image model to ONNX (dynamic height and width)")
    export.add_argument("checkpoint", help="a checkpoint written by train.py")
    export.add_argument("output", help="the .onnx file to write")
    export.add_argument(
        "--overwrite", action="store_true", help="replace an existing output (default: refuse)"
    )
    ship = sub.add_parser(
        "ship",
        help="write a finished run's checkpoint as a model to publish: the weights it was validated "
        "with (the average under --ema), without Adam's moments",
    )
    ship.add_argument("checkpoint", help="a checkpoint written by train.py")
    ship.add_argument("output", help="the .pth file to write")
    ship.add_argument("--overwrite", action="store_true", help="replace an existing output (default: refuse)")
    return parser


# ---------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The training settings given on the command line (flags not given are absent)."""
    return {spec.name: getattr(args, spec.name) for spec in fields(TrainConfig) if hasattr(args, spec.name)}


def command_train(args: argparse.Namespace) -> int:
    """`train`: a new run from the defaults, the recipe file (--config) and the given flags, each
    overriding the one before."""
    recipe = load_recipe(args.config) if args.config else {}
    config = TrainConfig.from_dict({**recipe, **given_settings(args), "config": args.config}, "option")
    if config.device and config.cuda and not config.device.startswith("cuda"):
        raise UserError(f"--cuda and --device {config.device} disagree")
    if config.out_dir is None:
        name = Path(args.config).stem if args.config else f"{config.model}_x{config.scale}"
        config = config.replace(out_dir=str(Path("runs") / name))
    return train(config, overwrite=args.overwrite)


def command_resume(args: argparse.Namespace) -> int:
    """`resume`: the saved arguments, overridden by the flags given now."""
    checkpoint = load_checkpoint(args.checkpoint)
    if not is_training_checkpoint(checkpoint):
        raise CheckpointError(f"{args.checkpoint}: holds a model but no training state to resume")
    saved = recorded_config(checkpoint, args.checkpoint)
    # the run goes on beside the file it resumes, not in the folder recorded inside it (a copied
    # run must not write into the original, nor a checkpoint from elsewhere choose where to write)
    config = saved.replace(out_dir=str(Path(args.checkpoint).parent))
    given = given_settings(args)
    wanted = TrainConfig.from_dict({**config.to_dict(), **given}, "option")
    rank0 = process_rank() == 0
    mid_epoch = (checkpoint.get("in_epoch") or {}).get("samples", 0) > 0
    for key in given:
        old, new = getattr(config, key), getattr(wanted, key)
        if new == old:
            continue
        shown = repr(list(old) if isinstance(old, tuple) else old)
        if mid_epoch and key in fixed(FIXED_EPOCH):
            raise UserError(
                f"--{key.replace('_', '-')} cannot change when resuming inside an interrupted epoch "
                f"(saved {shown}); resume without it, then change it at the next run"
            )
        if key in fixed(FIXED_RUN):
            raise UserError(
                f"--{key.replace('_', '-')} cannot change on resume (saved {shown}); "
                "start a new run with train"
            )
        if rank0:
            print(f"override {key}: {shown} -> {given[key]!r}")
    if "cuda" in given and "device" not in given:  # a new --cuda / --no-cuda replaces the saved device
        wanted = wanted.replace(device=None)
    return train(wanted, checkpoint)


def describe(checkpoint: dict) -> dict:
    """The facts `inspect` shows, as plain JSON-able types."""
    return {
        "model": checkpoint["model"]["name"],
        "scale": checkpoint["model"]["scale"],
        "options": checkpoint["model"]["options"],
        "kind": checkpoint.get("kind"),
        "params": checkpoint.get("params", sum(t.numel() for t in checkpoint["state_dict"].values())),
        "epoch": checkpoint.get("epoch"),
        "in_epoch": checkpoint.get("in_epoch"),
        "best_psnr": checkpoint.get("best_psnr"),
        "args": checkpoint.get("args"),
        "history": named_history(checkpoint) if is_training_checkpoint(checkpoint) else None,
    }


def say(text: str) -> None:
    """Print text taken from a file with its control characters escaped (a checkpoint's strings
    cannot move the cursor or recolour the terminal)."""
    print("".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in text))


def command_inspect(args: argparse.Namespace) -> int:
    """`inspect`: what a checkpoint holds, as text or JSON, and optionally its curves."""
    if args.plot:
        check_outputs([Path(args.plot)], [Path(args.checkpoint)], args.overwrite)
    info = describe(load_checkpoint(args.checkpoint))
    if info["args"] is None and (args.plot or args.reach is not None or args.all):
        raise UserError(f"{args.checkpoint}: holds a model but no training record to plot or list")
    if args.plot:
        plot_history(info, Path(args.plot))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    say(f"checkpoint {args.checkpoint}")
    for line in summary(info):
        say(line)
    if args.reach is not None:
        say(time_to_quality(info, args.reach))
    if args.all:
        say("arguments  " + "  ".join(f"{k}={v}" for k, v in sorted(info["args"].items())))
        print_history(info)
    elif info["history"]:
        say(f"({len(info['history'])} epochs recorded; --all prints each, and every argument)")
    if args.plot:
        say(f"\nplot written to {args.plot}")
    return 0


def summary(info: dict) -> list[str]:
    """`inspect`'s summary lines: model, data, epochs, best and last validation, time (and left)."""
    args, history = info["args"], info["history"]
    metric, similarity, baseline = score_labels(info["kind"] == MULTI_FRAME)
    options = f"  options {info['options']}" if info["options"] else ""
    model = f"model      {info['model']} x{info['scale']}{options}  {info['params']:,} parameters"
    if args is None:
        return [model, "training   none recorded (a model-only checkpoint)"]
    partial = (info["in_epoch"] or {}).get("batches", 0)
    scales = args.get("train_scales") or [1.0]
    augmented = f" at scales {','.join(f'{f:g}' for f in scales)}" if scales != [1.0] else ""
    lines = [
        model,
        f"data       {args.get('train_data') or 'the default set'}{augmented} "
        f"({args.get('patches_per_image')} patches of {args.get('patch_size')} px per image, "
        f"batch {args.get('batch_size')}), "
        f"validation {args.get('val_data')}",
        f"epochs     {info['epoch']} of {args.get('num_epoch')}"
        f"{f' (+{partial} steps of the next, interrupted)' if partial else ''}",
    ]
    scored = [(row["epoch"], *validation_of(row)) for row in history if validation_of(row)[0] is not None]
    if scored:
        best = max(scored, key=lambda entry: entry[1])
        last = scored[-1]
        lines.append(f"best {metric:5} {best[1]:.3f} dB at epoch {best[0]} ({similarity} {best[2]:.4f})")
        lines.append(f"last {metric:5} {last[1]:.3f} dB at epoch {last[0]} ({baseline} {last[3]:.3f} dB)")
    else:
        best = info["best_psnr"]
        lines.append(f"best {metric:5} {'-' if best is None else f'{best:.3f} dB'} (no validation recorded)")
    if history:
        seconds = sum(row["seconds"] for row in history)
        loss = history[-1]["train_loss"]
        lines.append(f"time       {seconds / 3600:.2f} h over {len(history)} epochs, last loss {loss:.6f}")
        lines += [line for line in [time_to_go(info)] if line]
    if args.get("ema"):
        lines.append(f"weights    moving average, decay {args['ema']} (validated, used by super_resolve.py)")
    return lines


def time_to_go(info: dict, recent: int = 10) -> str | None:
    """For an unfinished run: the epochs left and their time at the median pace of the last few."""
    history, planned = info["history"], info["args"].get("num_epoch") or 0
    left = planned - info["epoch"]
    if not history or left <= 0:
        return None
    times = [row["seconds"] for row in history[-max(recent, 1) :]]
    pace = statistics.median(times)
    total = left * pace
    duration = f"{total / 3600:.1f} h" if total >= 3600 else f"{total / 60:.0f} min"
    return (
        f"to go      {left} epochs, about {duration} at the recent pace "
        f"({pace:.0f} s an epoch, the median of the last {len(times)})"
    )


def time_to_quality(info: dict, target: float) -> str:
    """The first validated epoch at or above `target` dB and the summed epoch time up to it."""
    seconds, best = 0.0, None
    for row in info["history"]:
        seconds += row["seconds"]
        score = validation_of(row)[0]
        if score is None:
            continue
        if score >= target:
            return (
                f"reached    {target:.3f} dB at epoch {row['epoch']} ({score:.3f}), after {seconds:,.0f} s "
                f"({seconds / 60:.0f} min) of epoch time"
            )
        best = score if best is None else max(best, score)
    best_text = f" (best {best:.3f} dB)" if best is not None else " (no validation recorded)"
    return f"reached    {target:.3f} dB: not in {len(info['history'])} epochs{best_text}"


def print_history(info: dict) -> None:
    """`inspect --all`'s table: loss, validation, baseline, learning rate, time per epoch."""
    if not info["history"]:
        return
    metric, similarity, baseline = score_labels(info["kind"] == MULTI_FRAME)
    say(f"\n{'epoch':>5} {'loss':>10} {metric:>7} {similarity:>7} {baseline:>8} {'lr':>9} {'seconds':>8}")

    def fmt(value: float | None, spec: str) -> str:
        return f"{'-':>{spec.split('.')[0]}}" if value is None else format(value, spec)

    for row in info["history"]:
        score, similar, base, _ = validation_of(row)
        say(
            f"{row['epoch']:>5} {row['train_loss']:>10.6f} {fmt(score, '7.3f')} {fmt(similar, '7.4f')} "
            f"{fmt(base, '8.3f')} {row['lr']:>9.3g} {row['seconds']:>8.1f}"
        )


def command_export(args: argparse.Namespace) -> int:
    """`export`: the checkpoint's model as ONNX, run by `super_resolve.py --onnx`, and beside it
    `<output>.json`: what a downstream tool needs to run it (bands, scale, value scale, nodata)."""
    sidecar = Path(f"{args.output}.json")
    check_outputs([Path(args.output), sidecar], [Path(args.checkpoint)], args.overwrite)
    checkpoint = load_checkpoint(args.checkpoint)
    if checkpoint.get("kind", SINGLE_IMAGE) != SINGLE_IMAGE:
        raise CheckpointError(f"{args.checkpoint}: ONNX export supports single-image models, not this "
                              f"{checkpoint.get('kind')} one")  # fmt: skip
    spec = checkpoint["model"]
    metadata = {"model": spec["name"], "scale": str(spec["scale"]),
                "in_channels": str(spec["options"].get("in_channels", 3)),
                "options": json.dumps(spec["options"]), "source": str(args.checkpoint)}  # fmt: skip
    path = export_onnx(load_model(checkpoint), args.output, metadata)
    with atomic_write(sidecar, "model description") as tmp:
        tmp.write_text(
            json.dumps(run_description(spec, args.checkpoint, checkpoint.get("radiometry")), indent=2) + "\n"
        )
    print(f"exported {spec['name']} x{spec['scale']} to {path} (input lr: N x C x H x W, any N, H, W >= 3) "
          f"and its description to {sidecar}")  # fmt: skip
    return 0


def command_ship(args: argparse.Namespace) -> int:
    """`ship`: the checkpoint as `checkpoint.shipped` describes, written atomically."""
    check_outputs([Path(args.output)], [Path(args.checkpoint)], args.overwrite)
    model_file = shipped(load_checkpoint(args.checkpoint))
    check_checkpoint(model_file)
    save_checkpoint(model_file, args.output)
    before, after = Path(args.checkpoint).stat().st_size, Path(args.output).stat().st_size
    print(f"wrote {args.output} ({after / 1e6:.1f} MB; {args.checkpoint}: {before / 1e6:.1f} MB)")
    return 0


def run_description(spec: dict, source: str, radiometry: dict | None = None) -> dict:
    """What a tool running an exported model must know: its bands, scale, the values it takes
    and gives, and nodata (photo models: a file's integers over their maximum; multispectral
    models: each band's reflectance mapped from [low, high] onto [0, 1], multispectral.py)."""
    bands = spec["options"].get("in_channels", 3)
    if radiometry is not None:
        return {
            "model": spec["name"],
            "scale": spec["scale"],
            "bands": bands,
            "band_names": radiometry["bands"],
            "input": "lr: float32, N x bands x H x W (H, W >= 3), (reflectance - low) / (high - low)",
            "output": "sr: float32, N x bands x scale*H x scale*W, the same units (not clipped)",
            "value_scale": f"reflectance = (DN + {radiometry['offset']:g}) / {radiometry['divisor']:g} "
            f"for {radiometry['dtype']} rasters",
            "normalisation": {"low": radiometry["low"], "high": radiometry["high"]},
            "fill": {"mean_reflectance": radiometry["mean"], "use": "in place of nodata pixels"},
            "value_range": None,
            "nodata": radiometry["nodata"],
            "source": str(source),
        }
    return {
        "model": spec["name"],
        "scale": spec["scale"],
        "bands": bands,
        "band_names": {1: ["gray"], 3: ["red", "green", "blue"]}.get(bands),
        "input": "lr: float32, N x bands x H x W (H, W >= 3)",
        "output": "sr: float32, N x bands x scale*H x scale*W",
        "value_scale": "pixel value / (2**bits - 1): 1/255 for 8-bit files, 1/65535 for 16-bit",
        "normalisation": None,
        "value_range": [0.0, 1.0],
        "nodata": None,
        "source": str(source),
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse the subcommand and run it."""
    args = build_parser().parse_args(argv)
    commands = {"train": command_train, "resume": command_resume, "inspect": command_inspect,
                "export": command_export, "ship": command_ship}  # fmt: skip
    command = commands[args.command]
    try:
        return command(args)
    except TrainingStopped as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
