"""Train, resume and inspect super-resolution models.

    python train.py train --cuda --lr=0.0005 --batch-size=256 --num-epoch=100 --save-freq=10
    python train.py train --lr=0.001 --batch-size=128 --num-epoch=20 --save-freq=2
    python train.py resume checkpoint.x --cuda
    python train.py resume checkpoint.x --batch-size=16 --num-epoch=200
    python train.py inspect checkpoint.x [--json] [--plot curves.png]

A checkpoint holds everything to continue as if never stopped: model name and options,
weights, optimizer state, the arguments, the epoch (and position inside it when
interrupted), the history, the best PSNR and every RNG state. It is written atomically
and loads with torch.load(weights_only=True). Under `torchrun` the same script trains with
DistributedDataParallel; only rank 0 logs and writes.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from bursts import Burst, BurstConfig, burst_evaluation_set, burst_training_set
from catalog import canonical_name, load_pairs, rescaled_pairs, resolve_dataset, set_names
from data import PatchDataset, PatchSampler
from imresize import DEGRADATIONS, upscale
from losses import LOSS_NAMES, make_loss, registered_l1, registered_uncertainty_loss
from metrics import PROTOCOL, psnr, scene_scores, ssim
from model import (
    KINDS,
    MODELS,
    MULTI_FRAME,
    SINGLE_IMAGE,
    Upscaler,
    build_model,
    checkpoint_weights,
    count_parameters,
    export_onnx,
    load_model,
    model_kind,
    model_zoo,
)
from utils import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    DatasetError,
    Parser,
    UserError,
    atomic_write,
    ensure_folder,
    load_checkpoint,
    new_figure,
    rng_state,
    run_cli,
    save_checkpoint,
    save_figure,
    seed_everything,
    set_rng_state,
)

# Defaults: SRCNN's classic set-up (x3, Adam, lr 1e-4, batch 128, 100 epochs, MSE, T91 / Set5).
DEFAULTS: dict[str, Any] = {
    "model": "srcnn",
    "model_option": [],
    "scale": 3,
    "lr": 1e-4,
    "batch_size": 128,
    "num_epoch": 100,
    "save_freq": 10,
    "loss": "mse",
    "perceptual_weights": None,
    "train_data": "T91",
    "val_data": "Set5",
    "degradation": "bicubic",
    "patch_size": 33,
    "patches_per_image": 256,
    "grid_stride": None,
    "train_scales": [1.0],
    "workers": min(4, max(0, (os.cpu_count() or 1) - 2)),
    "seed": 0,
    "out_dir": None,
    "val_freq": 1,
    "schedule": "constant",
    "lr_step": 30,
    "lr_gamma": 0.5,
    "warmup_epochs": 0,
    "grad_clip": None,
    "ema": None,
    "init_from": None,
    "frames": 9,
    "burst_shift": 2,
    "burst_noise": 0.01,
    "burst_blur": 0.0,
    "burst_occlusion": 0.3,
    "burst_style": "plain",
    "amp": None,
    "cuda": False,
    "quiet": False,
}
# Changing these on resume would not continue the same run.
FIXED_ON_RESUME = ("model", "model_option", "scale")
# Changing these inside an interrupted epoch would skip or repeat part of its data.
FIXED_MID_EPOCH = ("batch_size", "patch_size", "patches_per_image", "grid_stride", "train_data", "seed",
                   "degradation", "frames", "train_scales")  # fmt: skip
SCHEDULES = ("constant", "step", "cosine")


class TrainingStopped(Exception):
    """Training cannot go on (non-finite loss); the last good checkpoint is kept."""


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option; description and epilog kept as written."""


def _degradation(text: str) -> str:
    """Validate --degradation: one kernel, a comma list, or 'random' (all of them)."""
    kernels = DEGRADATIONS if text == "random" else tuple(text.split(","))
    unknown = [k for k in kernels if k not in DEGRADATIONS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown kernel {unknown[0]!r}; use {', '.join(DEGRADATIONS)} or random"
        )
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


def _add_training_options(parser: argparse.ArgumentParser, resume: bool) -> None:
    """Options of `train`; for `resume` they default to 'not given' and override the saved ones."""

    def add(*flags: str, **kwargs: Any) -> None:
        dest = flags[0].lstrip("-").replace("-", "_")
        if resume:
            kwargs["default"] = argparse.SUPPRESS
        else:
            kwargs.setdefault("default", DEFAULTS[dest])
        parser.add_argument(*flags, **kwargs)

    add("--model", choices=list(MODELS), help="network (the models are listed below)")
    add(
        "--model-option",
        action="append",
        metavar="KEY=VALUE",
        help="model constructor option, repeatable (value parsed as JSON), e.g. f2=5",
    )
    add("--scale", type=int, choices=(2, 3, 4), help="upscaling factor")
    add("--lr", type=float, help="peak learning rate (Adam)")
    add("--batch-size", type=int, help="patches per step (per process under torchrun)")
    add("--num-epoch", type=int, help="train until this epoch")
    add("--save-freq", type=int, help="write epoch-NNNN.pth every this many epochs (last.pth every epoch)")
    add("--loss", choices=list(LOSS_NAMES), help="training loss (perceptual: VGG16 features + 0.1 L1)")
    add(
        "--perceptual-weights",
        metavar="FILE",
        help="torchvision VGG16 weights for --loss perceptual (default: download them)",
    )
    add(
        "--train-data",
        help="training set: a name (T91, BSD200, 291 = T91+BSD200, sample-train, ...), a folder of "
        "images, or several joined by commas (T91,my/photos)",
    )
    add("--val-data", help="validation set: a name (Set5, Set14, sample-test, ...) or a folder")
    add("--degradation", type=_degradation, help="LR kernel: bicubic, bilinear, nearest, a,b list, or random")
    add("--patch-size", type=int, help="HR patch size in pixels (a multiple of the scale)")
    add("--patches-per-image", type=int, help="random patches per training image per epoch")
    add("--grid-stride", type=int, help="instead: the SRCNN paper's fixed grid of patches at this stride")
    add(
        "--train-scales",
        type=_factors,
        metavar="F,F,...",
        help="scale augmentation: train on every image at each of these factors, 1 being the original "
        "(e.g. 1,0.9,0.8,0.7,0.6: five times the images)",
    )
    add("--workers", type=int, help="DataLoader worker processes")
    add("--seed", type=int, help="seed of initialisation, data order, crops and augmentation")
    add("--out-dir", help="folder for checkpoints and history.csv (default runs/<model>_x<scale>)")
    add("--val-freq", type=int, help="validate every this many epochs (and at the last)")
    add(
        "--schedule",
        choices=SCHEDULES,
        help="learning-rate schedule: constant, step (x gamma every "
        "--lr-step epochs) or cosine (to 0 at --num-epoch)",
    )
    add("--lr-step", type=int, help="epochs between decays of the step schedule")
    add("--lr-gamma", type=float, help="decay factor of the step schedule")
    add("--warmup-epochs", type=float, help="linear warm-up from 0 over this many epochs")
    add("--grad-clip", type=float, help="clip the gradient norm to this value (piunet: 15 unless given)")
    add(
        "--ema",
        type=float,
        metavar="DECAY",
        help="keep an exponential moving average of the weights (e.g. 0.999, as BasicSR's params_ema); "
        "validation and super_resolve.py use it",
    )
    add(
        "--init-from",
        metavar="CKPT",
        help="start from another run's weights wherever name and shape match (e.g. x3 from a "
        "trained x2 body, as EDSR does); the rest is initialised as usual",
    )
    add("--frames", type=int, help="piunet: LR frames per scene")
    add("--burst-shift", type=int, help="piunet synthetic bursts: largest frame shift, in HR pixels")
    add("--burst-noise", type=float, help="piunet synthetic bursts: Gaussian noise on the LR frames")
    add("--burst-blur", type=float, help="piunet synthetic bursts: extra Gaussian blur (HR pixels)")
    add("--burst-occlusion", type=float, help="piunet synthetic bursts: chance of an occluded rectangle")
    add(
        "--burst-style",
        choices=("plain", "probav"),
        help="piunet synthetic bursts: plain, or PROBA-V-like (radiometry, per-day changes, real "
        "cloud statistics, clearest frames kept; --burst-blur/--burst-noise are then upper bounds, "
        "the noise relative to the scene's contrast)",
    )
    add(
        "--amp",
        action=argparse.BooleanOptionalAction,
        help="mixed precision (bf16 where supported, else fp16); default: on with --cuda",
    )
    add("--cuda", action=argparse.BooleanOptionalAction, help="train on the GPU (error if CUDA is missing)")
    add("--quiet", action=argparse.BooleanOptionalAction, help="no progress bars (the per-epoch line stays)")


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
        formatter_class=HelpFormatter,
        epilog=f"models (x3):\n{zoo}\n\n{PROTOCOL}",
    )
    _add_training_options(train, resume=False)
    resume = sub.add_parser("resume", help="continue from a checkpoint; given flags override saved ones")
    resume.add_argument("checkpoint", help="a checkpoint written by train.py")
    _add_training_options(resume, resume=True)
    inspect = sub.add_parser("inspect", help="describe a checkpoint and its history")
    inspect.add_argument("checkpoint", help="a checkpoint written by train.py")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    inspect.add_argument("--plot", metavar="FILE", help="draw loss and validation PSNR curves into a PNG")
    export = sub.add_parser("export", help="export a single-image model to ONNX (dynamic height and width)")
    export.add_argument("checkpoint", help="a checkpoint written by train.py")
    export.add_argument("output", help="the .onnx file to write")
    return parser


def parse_model_options(items: list[str]) -> dict[str, Any]:
    """['f2=5', 'in_channels=1'] -> {'f2': 5, 'in_channels': 1} (values parsed as JSON if they parse)."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--model-option {item!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def check_config(config: dict) -> None:
    """Reject settings that cannot train, before anything is loaded or written."""
    for key in (
        "batch_size",
        "num_epoch",
        "save_freq",
        "val_freq",
        "patch_size",
        "patches_per_image",
        "lr_step",
    ):
        if config[key] < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1, got {config[key]}")
    if config["workers"] < 0:
        raise UserError(f"--workers must be 0 or more, got {config['workers']}")
    if not config["lr"] > 0:
        raise UserError(f"--lr must be positive, got {config['lr']}")
    if config["ema"] is not None and not 0 < config["ema"] < 1:
        raise UserError(f"--ema must be between 0 and 1 (e.g. 0.999), got {config['ema']}")
    if config["grid_stride"] is not None and config["grid_stride"] < 1:
        raise UserError(f"--grid-stride must be at least 1, got {config['grid_stride']}")
    if config["patch_size"] % config["scale"]:
        raise UserError(f"--patch-size {config['patch_size']} is not a multiple of --scale {config['scale']}")
    if config["cuda"] and not torch.cuda.is_available():
        raise UserError("--cuda given, but CUDA is not available here (no GPU, or a CPU-only torch)")
    if model_kind(config["model"]) == MULTI_FRAME:
        for key in ("train_scales", "grid_stride", "degradation"):
            if config[key] != DEFAULTS[key]:
                flag = f"--{key.replace('_', '-')}"
                raise UserError(
                    f"{flag} is for single-image models; {config['model']} trains on bursts (--burst-*)"
                )


# ---------------------------------------------------------------------------------------
# Training state and checkpoints
# ---------------------------------------------------------------------------------------


@dataclass
class Progress:
    """Where training stands: completed epochs, and the position inside an interrupted one."""

    epoch: int = 0
    samples: int = 0  # samples of epoch + 1 already trained on (this rank), after an interrupt
    loss_sum: float = 0.0
    batches: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    best_psnr: float | None = None


def make_checkpoint(run: Run) -> dict:
    """Everything needed to rebuild the model and continue training."""
    config, model, progress, ema = run.config, run.model, run.progress, run.ema
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "kind": run.task.kind,
        "model": {
            "name": config["model"],
            "scale": config["scale"],
            "options": parse_model_options(config["model_option"]),
        },
        "params": count_parameters(model),
        "state_dict": model.state_dict(),
        "ema_state_dict": ema.model.state_dict() if ema else None,
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "args": dict(config),
        "epoch": progress.epoch,
        "in_epoch": {
            "world": int(os.environ.get("WORLD_SIZE", "1")),
            "samples": progress.samples,
            "loss_sum": progress.loss_sum,
            "batches": progress.batches,
            "seconds": progress.seconds,
        },
        "history": progress.history,
        "best_psnr": progress.best_psnr,
        "rng": rng_state(),
    }


def progress_from(checkpoint: dict) -> Progress:
    """The Progress saved in a checkpoint."""
    in_epoch = checkpoint.get("in_epoch") or {}
    return Progress(
        epoch=checkpoint["epoch"],
        samples=in_epoch.get("samples", 0),
        loss_sum=in_epoch.get("loss_sum", 0.0),
        batches=in_epoch.get("batches", 0),
        seconds=in_epoch.get("seconds", 0.0),
        history=named_history(checkpoint),
        best_psnr=checkpoint.get("best_psnr"),
    )


# The validation columns of a history row, by kind of model: the score, its similarity
# index, and the same for the baseline (bicubic; for bursts the multi-frame baseline).
VALIDATION_KEYS = {
    SINGLE_IMAGE: ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim"),
    MULTI_FRAME: ("cpsnr", "cssim", "baseline_cpsnr", "baseline_cssim"),
}


def history_fields(kind: str) -> tuple[str, ...]:
    """The columns of a history row (and of history.csv) for a kind of model."""
    return ("epoch", "train_loss", *VALIDATION_KEYS[kind], "lr", "seconds", "patches_per_s")


def validation_of(row: dict) -> tuple[float | None, ...]:
    """(score, similarity, baseline score, baseline similarity) of a history row of either kind."""
    keys = VALIDATION_KEYS[MULTI_FRAME if "cpsnr" in row else SINGLE_IMAGE]
    return tuple(row.get(key) for key in keys)


def named_history(checkpoint: dict) -> list[dict]:
    """A checkpoint's history with its validation columns named for its kind (multi-frame
    runs written before the cPSNR columns had them as psnr, ssim, bicubic_psnr, bicubic_ssim)."""
    history = [dict(row) for row in checkpoint.get("history", [])]
    if checkpoint.get("kind") == MULTI_FRAME:
        old, new = VALIDATION_KEYS[SINGLE_IMAGE], VALIDATION_KEYS[MULTI_FRAME]
        for row in history:
            for a, b in zip(old, new):
                if a in row:
                    row[b] = row.pop(a)
    return history


def write_history_csv(history: list[dict], path: Path, kind: str) -> None:
    """history.csv, written atomically."""
    fields = history_fields(kind)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in fields})
    with atomic_write(path, "history") as tmp:
        tmp.write_text(buffer.getvalue())


# ---------------------------------------------------------------------------------------
# Learning rate, devices, distributed
# ---------------------------------------------------------------------------------------


def learning_rate(config: dict, progress: float) -> float:
    """Learning rate at a point of training, `progress` in epochs (a pure function)."""
    peak = config["lr"]
    if config["warmup_epochs"] and progress < config["warmup_epochs"]:
        return peak * progress / config["warmup_epochs"]
    if config["schedule"] == "step":
        return peak * config["lr_gamma"] ** int(progress // config["lr_step"])
    if config["schedule"] == "cosine":
        return 0.5 * peak * (1 + math.cos(math.pi * min(progress / config["num_epoch"], 1.0)))
    return peak


@dataclass
class Runtime:
    """Device, precision and process-group facts of this run."""

    device: torch.device
    rank: int = 0
    world: int = 1
    amp_dtype: torch.dtype | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_runtime(config: dict) -> Runtime:
    """Pick the device and precision; join the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if config["cuda"]:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if config["cuda"] else "gloo")
    amp = config["amp"] if config["amp"] is not None else config["cuda"]
    amp_dtype = None
    if amp:
        amp_dtype = (
            torch.bfloat16 if (not config["cuda"] or torch.cuda.is_bf16_supported()) else torch.float16
        )
    return Runtime(device, rank, world, amp_dtype)


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------


@dataclass
class Task:
    """What differs between single-image and multi-frame training: data, loss, validation."""

    kind: str  # model.SINGLE_IMAGE or model.MULTI_FRAME, as stored in checkpoints
    dataset: Dataset
    step_loss: Callable[[nn.Module, list[Tensor], int], Tensor]  # (net, batch, epoch) -> loss
    validate: Callable[[nn.Module], tuple[float, float]]  # a network's (PSNR, SSIM) or (cPSNR, cSSIM)
    baseline: tuple[float, float]  # the same for the interpolation baseline
    summary: str  # one line for the start-up message
    metric: str = "PSNR"  # what validate() measures, for the log
    baseline_name: str = "bicubic"


def single_image_task(config: dict, model: nn.Module, runtime: Runtime, show: bool) -> Task:
    """LR/HR patches, the chosen loss, PSNR/SSIM of full validation images against bicubic."""
    options = parse_model_options(config["model_option"])
    channels = options.get("in_channels", 3)
    kernels = DEGRADATIONS if config["degradation"] == "random" else tuple(config["degradation"].split(","))
    train_pairs = load_pairs(config["train_data"], config["scale"], kernels, channels=channels, progress=show)
    train_pairs = rescaled_pairs(
        train_pairs, config["train_scales"], config["scale"], kernels, min_size=config["patch_size"]
    )
    # validation images keep their own channels: gray ones are scored on gray, as in the tables
    val_pairs = load_pairs(config["val_data"], config["scale"], progress=show)
    dataset = PatchDataset(
        train_pairs,
        config["scale"],
        config["patch_size"],
        config["patches_per_image"],
        seed=config["seed"],
        grid_stride=config["grid_stride"],
    )
    loss_fn = make_loss(config["loss"], runtime.device, config["perceptual_weights"])
    scale = config["scale"]

    def step_loss(net: nn.Module, batch: list[Tensor], epoch: int) -> Tensor:
        lr, hr = batch
        with _autocast(runtime):
            sr = net(lr.contiguous(memory_format=torch.channels_last))
        return loss_fn(sr.float(), hr)

    def scores(upscale: Callable[[Tensor], Tensor]) -> tuple[float, float]:
        results = [
            (psnr(sr, p.hr, shave=scale).item(), ssim(sr, p.hr, shave=scale).item())
            for p in val_pairs
            for sr in [upscale(p.lr)]
        ]
        return sum(r[0] for r in results) / len(results), sum(r[1] for r in results) / len(results)

    def validate(net: nn.Module) -> tuple[float, float]:
        mode = net.training
        upscaler = Upscaler(
            net.eval(), config["model"], scale, channels, runtime.device, tile=256, overlap=16
        )
        try:
            return scores(upscaler)
        finally:
            net.train(mode)

    baseline = scores(lambda lr: upscale(lr, scale))
    summary = (
        f"{len(train_pairs)} images, {len(dataset)} patches/epoch, loss {config['loss']}; validation "
        f"PSNR on {config['val_data']} (bicubic {baseline[0]:.2f} dB)"
    )
    return Task(SINGLE_IMAGE, dataset, step_loss, validate, baseline, summary)


def multi_frame_task(config: dict, model: nn.Module, runtime: Runtime, show: bool) -> Task:
    """Bursts (synthetic from any image set, or PROBA-V scenes), the paper's registered loss
    schedule, cPSNR/cSSIM of held-out scenes against the bicubic upscale of the frames' mean."""
    burst = BurstConfig.from_options(config)
    dataset = burst_training_set(
        config["train_data"], burst, config["patch_size"], config["patches_per_image"], config["seed"], show
    )
    val_bursts = burst_evaluation_set(config["val_data"], burst, show)
    if not val_bursts:
        raise DatasetError(f"{config['val_data']}: no validation scene with an HR image")

    def step_loss(net: nn.Module, batch: list[Tensor], epoch: int) -> Tensor:
        frames, weights, hr, mask = batch
        with _autocast(runtime):
            mu, sigma = net(frames, weights)
        if epoch == 1:  # the paper: registered L1 first, then the uncertainty loss
            return registered_l1(mu.float(), hr, mask)
        return registered_uncertainty_loss(mu.float(), sigma.float(), hr, mask)

    def scores(fuse: Callable[[Burst], Tensor]) -> tuple[float, float]:
        results = [scene_scores(fuse(b).clamp(0, 1), b.hr, b.mask) for b in val_bursts]
        return sum(r[0] for r in results) / len(results), sum(r[1] for r in results) / len(results)

    def validate(net: nn.Module) -> tuple[float, float]:
        mode = net.training
        net.eval()

        @torch.inference_mode()
        def fuse(burst: Burst) -> Tensor:
            frames, weights = (
                burst.frames[None].to(runtime.device),
                burst.frame_weights()[None].to(runtime.device),
            )
            return net(frames, weights)[0][0].float().cpu()

        try:
            return scores(fuse)
        finally:
            net.train(mode)

    baseline = scores(lambda burst: burst.baseline_image(config["scale"]))
    summary = (
        f"{len(dataset)} bursts/epoch of {config['frames']} frames, registered L1 (epoch 1) then "
        f"registered Laplace NLL; validation cPSNR on {len(val_bursts)} {config['val_data']} scenes "
        f"(baseline {baseline[0]:.2f} dB: bicubic of the frames' mean; for PROBA-V-like and real scenes "
        "of the clearest frames')"
    )
    return Task(MULTI_FRAME, dataset, step_loss, validate, baseline, summary, "cPSNR", "baseline")


def _leave_signals_to_the_trainer(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT/SIGTERM: a signal to the whole process group (Ctrl-C,
    `kill -- -PGID`, `pkill -f train.py`, a scheduler) reaches the main process, which saves
    its place and stops them; a worker killed first made the main process die unsaved."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _autocast(runtime: Runtime):
    """Autocast context for the run's mixed precision, or nothing."""
    if runtime.amp_dtype is None:
        return nullcontext()
    return torch.autocast(runtime.device.type, dtype=runtime.amp_dtype)


# ---------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------


class WeightAverage:
    """Exponential moving average of a model's weights (BasicSR's params_ema); buffers copied."""

    def __init__(self, model: nn.Module, decay: float, state_dict: dict | None = None) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        if state_dict is not None:
            self.model.load_state_dict(state_dict)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average a step towards the model's current weights."""
        for average, weight in zip(self.model.parameters(), model.parameters()):
            average.lerp_(weight.detach(), 1 - self.decay)
        for average, buffer in zip(self.model.buffers(), model.buffers()):
            average.copy_(buffer)


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop finishes its step, saves and exits."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: object) -> None:
        self.signal = signum


@dataclass
class Run:
    """The training loop's state: what its functions take instead of a dozen parameters."""

    config: dict
    runtime: Runtime
    model: nn.Module  # the network whose weights are saved
    net: nn.Module  # what is called: the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    task: Task
    loader: DataLoader  # its sampler is a PatchSampler
    progress: Progress
    ema: WeightAverage | None
    out_dir: Path
    stop: StopFlag = field(default_factory=StopFlag)

    @property
    def show(self) -> bool:
        """Whether this process draws progress bars."""
        return not self.config["quiet"] and self.runtime.main

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    def log(self, text: str) -> None:
        """Print on the main process only."""
        if self.runtime.main:
            print(text)


def train(config: dict, checkpoint: dict | None = None) -> int:
    """Train (or continue) the run described by `config`; returns the exit status."""
    check_config(config)
    runtime = setup_runtime(config)
    out_dir = Path(config["out_dir"])
    if runtime.main:
        ensure_folder(out_dir)
    log = print if runtime.main else (lambda *a, **k: None)
    options = parse_model_options(config["model_option"])

    seed_everything(config["seed"] + runtime.rank)
    try:
        model = build_model(config["model"], scale=config["scale"], **options)
    except TypeError as err:
        raise UserError(f"model {config['model']}: bad --model-option ({err})") from None
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    progress = Progress()
    if checkpoint is None and config["init_from"]:
        log(initialise_from(model, config["init_from"]))
    if checkpoint is not None:
        model.load_state_dict(checkpoint["state_dict"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        progress = progress_from(checkpoint)
        set_rng_state(checkpoint["rng"])
    # channels_last: faster convolutions on GPUs and on CPUs alike (bench.py measures it)
    model.to(runtime.device, memory_format=torch.channels_last)
    _move_optimizer_state(optimizer, runtime.device)
    ema = None
    if config["ema"] is not None:  # from the saved average when there is one, else from the weights
        ema = WeightAverage(model, config["ema"], (checkpoint or {}).get("ema_state_dict"))
    scaler = torch.amp.GradScaler("cuda", enabled=runtime.amp_dtype == torch.float16)
    if checkpoint is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    net = model
    if runtime.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[runtime.device] if config["cuda"] else None,
            find_unused_parameters=model_kind(model) == MULTI_FRAME,  # sigma head idle in epoch 1
        )

    saved_world = ((checkpoint or {}).get("in_epoch") or {}).get("world", runtime.world)
    if progress.samples and saved_world != runtime.world:
        raise UserError(f"the checkpoint stopped inside an epoch with {saved_world} processes; "
                        f"resume it with {saved_world}, not {runtime.world}")  # fmt: skip
    show = not config["quiet"] and runtime.main
    if runtime.world > 1:  # one process downloads missing sets, the others wait for it
        if runtime.main:
            for name in (*set_names(config["train_data"]), config["val_data"]):
                if canonical_name(name):
                    resolve_dataset(name, config["scale"], progress=show)
        dist.barrier()
    make_task = multi_frame_task if model_kind(model) == MULTI_FRAME else single_image_task
    task = make_task(config, model, runtime, show)
    loader = DataLoader(
        task.dataset,
        batch_size=config["batch_size"],
        sampler=PatchSampler(len(task.dataset), seed=config["seed"], rank=runtime.rank, world=runtime.world),
        num_workers=config["workers"],
        persistent_workers=config["workers"] > 0,
        pin_memory=runtime.device.type == "cuda",
        worker_init_fn=_leave_signals_to_the_trainer,
    )
    run = Run(config, runtime, model, net, optimizer, scaler, task, loader, progress, ema, out_dir)
    steps_per_epoch = run.steps_per_epoch

    if progress.epoch >= config["num_epoch"]:
        log(
            f"nothing to do: the checkpoint is at epoch {progress.epoch} "
            f"and --num-epoch is {config['num_epoch']}"
        )
        return 0
    log(
        f"training {config['model']} x{config['scale']} ({count_parameters(model):,} parameters) on "
        f"{runtime.device}{f' x{runtime.world} processes' if runtime.world > 1 else ''}"
        f"{f', {runtime.amp_dtype} autocast' if runtime.amp_dtype else ''}: {task.summary}; "
        f"{steps_per_epoch} steps/epoch; writing to {out_dir}"
    )

    previous = {s: signal.signal(s, run.stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for epoch in range(progress.epoch + 1, config["num_epoch"] + 1):
            status = _train_epoch(run, epoch)
            if status is not None:  # interrupted: save where we are
                if runtime.main:
                    path = save_checkpoint(make_checkpoint(run), out_dir / "last.pth")
                    log(
                        f"\ninterrupted at epoch {epoch}, "
                        f"after {progress.batches} of {steps_per_epoch} steps; "
                        f"saved {path}\nresume with: python train.py resume {path}"
                    )
                return status
            _end_epoch(run, epoch)
        if runtime.world > 1:
            dist.barrier()  # leave together
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if dist.is_initialized():
            # Gloo's destructor joins its worker threads with the GIL held, and a worker may be
            # waiting for the GIL to release a tensor: a deadlock (seen under load as a hang
            # after the last epoch). So drop DDP's reducer first (the group outlives it), let
            # the workers take the GIL, then destroy the group.
            net = run.net = None
            time.sleep(0.2)
            dist.destroy_process_group()
    return 0


def initialise_from(model: nn.Module, path: str) -> str:
    """Copy a checkpoint's weights (their average if kept) into the model where name and shape
    match; returns what was taken, for the log."""
    source = load_checkpoint(path)
    weights = checkpoint_weights(source)
    own = model.state_dict()
    taken = {name: value for name, value in weights.items() if name in own and own[name].shape == value.shape}
    if not taken:
        raise UserError(
            f"--init-from {path}: no weight of {source['model']['name']} fits {type(model).__name__}"
        )
    model.load_state_dict(taken, strict=False)
    left = sorted({name.split(".")[0] for name in own if name not in taken})
    origin = f"{source['model']['name']} x{source['model']['scale']}"
    fresh = f"; new: {', '.join(left)}" if left else ""
    return f"initialised {len(taken)} of {len(own)} tensors from {path} ({origin}){fresh}"


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Put loaded optimizer moments on the training device (Adam's step count stays on CPU)."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, Tensor) and key != "step":
                state[key] = value.to(device)


def train_step(run: Run, batch: list[Tensor], epoch: int) -> Tensor:
    """One optimisation step on a batch from the loader; returns the (detached) loss."""
    device, optimizer, scaler = run.runtime.device, run.optimizer, run.scaler
    batch = [tensor.to(device, non_blocking=device.type == "cuda") for tensor in batch]
    loss = run.task.step_loss(run.net, batch, epoch)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    clip = run.config["grad_clip"] or (15.0 if run.task.kind == MULTI_FRAME else None)  # PIUnet's 15
    if clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def _train_epoch(run: Run, epoch: int) -> int | None:
    """One epoch (or its rest, after an interrupt); returns an exit status if stopped by a signal."""
    from tqdm import tqdm

    config, progress, runtime, steps_per_epoch = run.config, run.progress, run.runtime, run.steps_per_epoch
    run.loader.sampler.set_epoch(epoch, start=progress.samples)
    if progress.samples == 0:
        progress.loss_sum, progress.batches, progress.seconds = 0.0, 0, 0.0
    cuda = runtime.device.type == "cuda"
    check_every = 16 if cuda else 1  # reading the loss syncs the GPU; check in groups there
    pending: list[Tensor] = []
    started = time.perf_counter()
    bar = tqdm(
        total=steps_per_epoch,
        initial=progress.batches,
        desc=f"epoch {epoch}/{config['num_epoch']}",
        disable=not run.show,
        leave=False,
        unit="step",
        dynamic_ncols=True,
    )
    run.net.train()
    rate = learning_rate(config, epoch - 1 + progress.batches / steps_per_epoch)
    for batch in run.loader:
        step = progress.batches + 1
        rate = learning_rate(config, epoch - 1 + step / steps_per_epoch)  # the rate at the step's end
        for group in run.optimizer.param_groups:
            group["lr"] = rate
        loss = train_step(run, batch, epoch)
        if run.ema is not None:
            run.ema.update(run.model)
        pending.append(loss)
        progress.batches = step
        progress.samples += batch[0].shape[0]
        stopping = _agreed(run.stop.signal is not None, runtime)
        if len(pending) >= check_every or step == steps_per_epoch or stopping:
            _account(run, pending, (epoch, step), rate)
            elapsed = progress.seconds + time.perf_counter() - started
            bar.set_postfix(
                loss=f"{progress.loss_sum / step:.5f}",
                patches_s=f"{progress.samples * runtime.world / max(elapsed, 1e-9):,.0f}",
            )
        bar.update(1)
        if stopping:
            progress.seconds += time.perf_counter() - started
            bar.close()
            return 128 + (run.stop.signal or signal.SIGTERM)
    _account(run, pending, (epoch, progress.batches), rate)
    bar.close()
    progress.seconds += time.perf_counter() - started
    return None


def _agreed(flag: bool, runtime: Runtime) -> bool:
    """True on every rank when it is true on any (one rank's signal stops them all together)."""
    if runtime.world == 1:
        return flag
    value = torch.tensor([float(flag)], device=runtime.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _account(run: Run, pending: list[Tensor], position: tuple[int, int], rate: float) -> None:
    """Add the pending losses (up to (epoch, step)) to the epoch's sum; stop every rank at the
    first non-finite one."""
    (epoch, step), progress = position, run.progress
    if not pending:
        return
    values = torch.stack(pending).tolist()
    pending.clear()
    bad = next((i for i, value in enumerate(values) if not math.isfinite(value)), None)
    if _agreed(bad is not None, run.runtime):
        where = f"epoch {epoch}, step {step - len(values) + bad + 1}" if bad is not None else f"epoch {epoch}"
        value = values[bad] if bad is not None else "non-finite on another rank"
        raise TrainingStopped(
            f"loss is {value} at {where} (lr {rate:.3g}); stopped. The last good checkpoint is "
            f"{run.out_dir / 'last.pth'} (epoch {progress.epoch}); "
            "try a lower --lr or --grad-clip"
        )
    progress.loss_sum += sum(values)


def _end_epoch(run: Run, epoch: int) -> None:
    """Validate (the weight average when there is one), record the epoch, write the checkpoints (rank 0)."""
    config, task, progress, runtime, out_dir = run.config, run.task, run.progress, run.runtime, run.out_dir
    loss = progress.loss_sum / max(progress.batches, 1)
    if runtime.world > 1:
        totals = torch.tensor([progress.loss_sum, float(progress.batches)], dtype=torch.float64,
                              device=runtime.device)  # fmt: skip
        dist.all_reduce(totals)
        loss = (totals[0] / totals[1]).item()
    due = epoch % config["val_freq"] == 0 or epoch == config["num_epoch"]
    score = task.validate(run.ema.model if run.ema else run.model) if due and runtime.main else None
    bicubic = task.baseline
    samples = progress.samples * runtime.world
    values = (epoch, loss, *(score or (None, None)), *bicubic, learning_rate(config, epoch - 1e-9),
              progress.seconds, samples / max(progress.seconds, 1e-9))  # fmt: skip
    row = dict(zip(history_fields(task.kind), values, strict=True))
    progress.history.append(row)
    progress.epoch = epoch
    progress.samples, progress.loss_sum, progress.batches, progress.seconds = 0, 0.0, 0, 0.0
    new_best = score is not None and (progress.best_psnr is None or score[0] > progress.best_psnr)
    if new_best:
        progress.best_psnr = score[0]
    if runtime.main:
        checkpoint = make_checkpoint(run)
        save_checkpoint(checkpoint, out_dir / "last.pth")
        if epoch % config["save_freq"] == 0:
            save_checkpoint(checkpoint, out_dir / f"epoch-{epoch:04d}.pth")
        if new_best:
            save_checkpoint(checkpoint, out_dir / "best.pth")
        write_history_csv(progress.history, out_dir / "history.csv", task.kind)
        similarity = task.metric.replace("PSNR", "SSIM")
        val = (
            f"{config['val_data']} {task.metric} {score[0]:.2f} dB {similarity} {score[1]:.4f} "
            f"({task.baseline_name} {bicubic[0]:.2f} / {bicubic[1]:.4f}){' best' if new_best else ''}"
            if score
            else "no validation"
        )
        run.log(
            f"epoch {epoch}/{config['num_epoch']}  loss {loss:.6f}  {val}  lr {row['lr']:.3g}  "
            f"{row['seconds']:.1f}s  {row['patches_per_s']:,.0f} patches/s"
        )
    if runtime.world > 1:
        dist.barrier()


# ---------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------


def command_train(args: argparse.Namespace) -> int:
    """`train`: a new run from the defaults and the given flags."""
    config = {key: getattr(args, key) for key in DEFAULTS}
    config["model_option"] = list(config["model_option"] or [])
    if config["out_dir"] is None:
        config["out_dir"] = str(Path("runs") / f"{config['model']}_x{config['scale']}")
    return train(config)


def command_resume(args: argparse.Namespace) -> int:
    """`resume`: the saved arguments, overridden by the flags given now."""
    checkpoint = load_checkpoint(args.checkpoint)
    if checkpoint.get("kind") not in KINDS or "args" not in checkpoint:
        raise CheckpointError(f"{args.checkpoint}: not a training checkpoint written by train.py")
    config = {**DEFAULTS, **checkpoint["args"]}
    given = {key: getattr(args, key) for key in DEFAULTS if hasattr(args, key)}
    rank0 = int(os.environ.get("RANK", "0")) == 0
    mid_epoch = (checkpoint.get("in_epoch") or {}).get("samples", 0) > 0
    for key, value in given.items():
        if value == config[key]:
            continue
        if mid_epoch and key in FIXED_MID_EPOCH:
            raise UserError(
                f"--{key.replace('_', '-')} cannot change when resuming inside an interrupted epoch "
                f"(saved {config[key]!r}); resume without it, then change it at the next run"
            )
        if key in FIXED_ON_RESUME:
            raise UserError(
                f"--{key.replace('_', '-')} cannot change on resume "
                f"(saved {config[key]!r}); start a new run with train"
            )
        if rank0:
            print(f"override {key}: {config[key]!r} -> {value!r}")
        config[key] = value
    return train(config, checkpoint)


def describe(checkpoint: dict) -> dict:
    """The facts `inspect` shows, as plain JSON-able types."""
    return {
        "model": checkpoint["model"]["name"],
        "scale": checkpoint["model"]["scale"],
        "options": checkpoint["model"]["options"],
        "kind": checkpoint.get("kind"),
        "params": checkpoint.get("params"),
        "epoch": checkpoint["epoch"],
        "in_epoch": checkpoint.get("in_epoch"),
        "best_psnr": checkpoint.get("best_psnr"),
        "args": checkpoint["args"],
        "history": named_history(checkpoint),
    }


def command_inspect(args: argparse.Namespace) -> int:
    """`inspect`: what a checkpoint holds, as text or JSON, and optionally its curves."""
    info = describe(load_checkpoint(args.checkpoint))
    if args.plot:
        plot_history(info, Path(args.plot))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"checkpoint {args.checkpoint}")
    print(
        f"model      {info['model']} x{info['scale']}  options {info['options'] or '{}'}  "
        f"{info['params']:,} parameters"
    )
    partial = (info["in_epoch"] or {}).get("batches", 0)
    print(
        f"epoch      {info['epoch']} of {info['args'].get('num_epoch')}"
        f"{f' (+{partial} steps of the next, interrupted)' if partial else ''}"
    )
    best, metric = info["best_psnr"], "cPSNR" if info["kind"] == MULTI_FRAME else "PSNR"
    print(f"best {metric:5} {'-' if best is None else f'{best:.3f} dB'} on {info['args'].get('val_data')}")
    if info["args"].get("ema"):
        print(f"weights    moving average, decay {info['args']['ema']} (validated, used by super_resolve.py)")
    print("arguments  " + "  ".join(f"{k}={v}" for k, v in sorted(info["args"].items())))
    if info["history"]:
        similarity, baseline = metric.replace("PSNR", "SSIM"), "baseline" if metric == "cPSNR" else "bicubic"
        print(
            f"\n{'epoch':>5} {'loss':>10} {metric:>7} {similarity:>7} {baseline:>8} {'lr':>9} {'seconds':>8}"
        )

        def fmt(value: float | None, spec: str) -> str:
            return f"{'-':>{spec.split('.')[0]}}" if value is None else format(value, spec)

        for row in info["history"]:
            score, similar, base, _ = validation_of(row)
            print(
                f"{row['epoch']:>5} {row['train_loss']:>10.6f} {fmt(score, '7.3f')} {fmt(similar, '7.4f')} "
                f"{fmt(base, '8.3f')} {row['lr']:>9.3g} {row['seconds']:>8.1f}"
            )
    if args.plot:
        print(f"\nplot written to {args.plot}")
    return 0


def command_export(args: argparse.Namespace) -> int:
    """`export`: the checkpoint's model as ONNX, run by `super_resolve.py --onnx`."""
    checkpoint = load_checkpoint(args.checkpoint)
    if checkpoint.get("kind", SINGLE_IMAGE) != SINGLE_IMAGE:
        raise CheckpointError(f"{args.checkpoint}: ONNX export supports single-image models, not this "
                              f"{checkpoint.get('kind')} one")  # fmt: skip
    spec = checkpoint["model"]
    metadata = {"model": spec["name"], "scale": str(spec["scale"]),
                "in_channels": str(spec["options"].get("in_channels", 3)),
                "options": json.dumps(spec["options"]), "source": str(args.checkpoint)}  # fmt: skip
    path = export_onnx(load_model(checkpoint), args.output, metadata)
    print(f"exported {spec['name']} x{spec['scale']} to {path} (input lr: N x C x H x W, any N, H, W >= 3)")
    return 0


def plot_history(info: dict, path: Path) -> None:
    """Training loss and validation PSNR (model vs bicubic) against epoch, as a PNG."""
    history = info["history"]
    if not history:
        raise UserError("the checkpoint has no history to plot yet")
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_psnr) = new_figure(1, 2, figsize=(11, 4))
    ax_loss.plot(epochs, [row["train_loss"] for row in history], marker=".")
    ax_loss.set(
        xlabel="epoch",
        ylabel=f"training loss ({info['args'].get('loss')})",
        yscale="log" if all(row["train_loss"] > 0 for row in history) else "linear",  # NLL < 0
        title="training loss",
    )
    validated = [row for row in history if validation_of(row)[0] is not None]
    ax_psnr.plot(
        [r["epoch"] for r in validated],
        [validation_of(r)[0] for r in validated],
        marker=".",
        label=info["model"],
    )
    multi = info["kind"] == MULTI_FRAME
    baseline = [validation_of(row)[2] for row in history]
    ax_psnr.plot(epochs, baseline, linestyle="--", label="baseline" if multi else "bicubic")
    ax_psnr.set(
        xlabel="epoch",
        ylabel="cPSNR (dB, PROBA-V challenge)" if multi else "PSNR (dB, Y, shave = scale)",
        title=f"validation on {info['args'].get('val_data')} x{info['scale']}",
    )
    ax_psnr.legend()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse the subcommand and run it."""
    args = build_parser().parse_args(argv)
    commands = {"train": command_train, "resume": command_resume, "inspect": command_inspect,
                "export": command_export}  # fmt: skip
    command = commands[args.command]
    try:
        return command(args)
    except TrainingStopped as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
