"""The training configuration: every option of `train.py` defined once, in `TrainConfig`.

Each field carries its default, help text, range and whether it may change on resume; the
command line (`train.py`), the checks (`check`), the recipe files (`configs/*.toml`, read with
`load_recipe`) and the arguments a checkpoint records (`to_dict` / `from_dict`) all derive
from it. A checkpoint written before this module existed loads the same way: its `args`
dict holds the same names.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from imresize import degradation_kernels
from losses import LOSS_NAMES
from model import MODELS
from registration import REGISTRATIONS
from utils import CheckpointError, UserError, brief

SCHEDULES = ("constant", "step", "cosine")
# The factors train.py trains at: those the benchmark sets publish LR images for (a checkpoint
# may hold any of model.SCALES, and super_resolve.py applies each).
TRAIN_SCALES = (2, 3, 4)
BURST_STYLES = ("plain", "probav")
SMALL_IMAGES = ("refuse", "skip")  # what --small-images does with images smaller than a patch

# What may change when a run is resumed: "run" options never (they would make it another
# run), "epoch" options not inside an interrupted epoch (that would skip or repeat data).
FIXED_RUN, FIXED_EPOCH = "run", "epoch"


class ConfigError(UserError):
    """A setting that is unknown, of the wrong type or out of its range."""


def option(
    default: Any,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    bounds: str = "[]",
    choices: tuple[str, ...] | tuple[int, ...] | None = None,
    fixed: str | None = None,
    recipe: bool = True,
    metavar: str | None = None,
) -> Any:
    """A configuration field: its default and the metadata the CLI and the checks read.

    `low`/`high` bound a number (`bounds`: "[]" both included, "(]" low excluded, "()" both
    excluded; a tuple is checked element by element); `choices` the allowed strings;
    `fixed` what resume may not change; `recipe=False` marks where and how a run executes
    (folder, device, workers, output), not what it trains, so recipes leave it out."""
    metadata = {
        "help": help,
        "low": low,
        "high": high,
        "bounds": bounds,
        "choices": choices,
        "fixed": fixed,
        "recipe": recipe,
        "metavar": metavar,
    }
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class TrainConfig:
    """Every training option (SRCNN's classic set-up by default: x3, Adam, lr 1e-4, batch 128,
    100 epochs, MSE, T91 / Set5)."""

    model: str = option(
        "srcnn", "network (the models are listed below)", choices=tuple(MODELS), fixed=FIXED_RUN
    )
    model_option: tuple[str, ...] = option(
        (),
        "model constructor option, repeatable (value parsed as JSON), e.g. f2=5",
        fixed=FIXED_RUN,
        metavar="KEY=VALUE",
    )
    scale: int = option(3, "upscaling factor", choices=TRAIN_SCALES, fixed=FIXED_RUN)
    lr: float = option(1e-4, "peak learning rate (Adam)", low=0, high=1, bounds="(]")
    batch_size: int = option(128, "patches per step (per process under torchrun)", low=1, fixed=FIXED_EPOCH)
    num_epoch: int = option(100, "train until this epoch", low=1)
    save_freq: int = option(10, "write epoch-NNNN.pth every this many epochs (last.pth every epoch)", low=1)
    loss: str = option("mse", "training loss (perceptual: VGG16 features + 0.1 L1)", choices=LOSS_NAMES)
    loss_border: int = option(
        0,
        "leave this many HR pixels at each patch edge out of the loss (the SRCNN paper's 'valid' "
        "training: the zero padding of the convolutions reaches only the edges, rare in full images)",
        low=0,
        metavar="PX",
    )
    registration: str = option(
        "none",
        "register the HR target to the SR inside the loss, for pairs from two sensors: geometric (a "
        "sub-pixel translation per patch, up to one LR pixel), radiometric (a gain and offset per band), "
        "or both; the loss is taken on the pixels the shift keeps (registration.py)",
        choices=REGISTRATIONS,
    )
    perceptual_weights: str | None = option(
        None, "torchvision VGG16 weights for --loss perceptual (default: download them)", metavar="FILE"
    )
    train_data: str = option(
        "T91",
        "training set: a name (T91, BSD200, 291 = T91+BSD200, sample-train, ...), a folder of "
        "images, or several joined by commas (T91,my/photos); a multispectral raster (or a folder "
        "of GeoTIFFs) trains by Wald's protocol on itself, degraded by --degradation (sensor or bicubic); "
        "a folder with hr/ and lr/ trains on those pairs (images, or GeoTIFFs from two sensors)",
        fixed=FIXED_EPOCH,
    )
    val_data: str = option("Set5", "validation set: a name (Set5, Set14, sample-test, ...) or a folder")
    degradation: str = option(
        "bicubic", "LR kernel: bicubic, bilinear, nearest, a,b list, or random", fixed=FIXED_EPOCH
    )
    holdout: float = option(
        0.25,
        "rasters (Wald's protocol): the eastern fraction of each raster's columns kept out of training, "
        "for validation",
        low=0,
        high=1,
        bounds="()",
        fixed=FIXED_EPOCH,
    )
    value_scale: float = option(
        10000.0,
        "rasters: DN per unit of reflectance, reflectance = (DN + --value-offset) / this (Sentinel-2: 10000)",
        low=0,
        high=1e12,
        bounds="(]",
        fixed=FIXED_EPOCH,
    )
    value_offset: float = option(
        0.0,
        "rasters: added to DN before dividing (Sentinel-2 L2A from processing baseline 04.00: -1000)",
        low=-1e12,
        high=1e12,
        fixed=FIXED_EPOCH,
    )
    patch_size: int = option(
        33, "HR patch size in pixels (a multiple of the scale)", low=1, fixed=FIXED_EPOCH
    )
    patches_per_image: int = option(
        256, "random patches per training image per epoch", low=1, fixed=FIXED_EPOCH
    )
    small_images: str = option(
        "refuse",
        "training images smaller than --patch-size on a side: refuse (one line naming them) or skip "
        "(left out, counted in the log), for patches larger than the smallest images (T91's is 78 px)",
        choices=SMALL_IMAGES,
        fixed=FIXED_EPOCH,
    )
    grid_stride: int | None = option(
        None, "instead: the SRCNN paper's fixed grid of patches at this stride", low=1, fixed=FIXED_EPOCH
    )
    train_scales: tuple[float, ...] = option(
        (1.0,),
        "scale augmentation: train on every image at each of these factors, 1 being the original "
        "(e.g. 1,0.9,0.8,0.7,0.6: five times the images)",
        low=0,
        high=1,
        bounds="(]",
        fixed=FIXED_EPOCH,
        metavar="F,F,...",
    )
    workers: int = option(
        min(4, max(0, (os.cpu_count() or 1) - 2)),
        "DataLoader worker processes",
        low=0,
        high=256,
        recipe=False,
    )
    seed: int = option(
        0,
        "seed of initialisation, data order, crops and augmentation",
        low=-(2**63),
        high=2**63 - 1,
        fixed=FIXED_EPOCH,
    )
    out_dir: str | None = option(
        None,
        "folder for checkpoints and history.csv (default runs/<model>_x<scale>, with --config "
        "runs/<recipe name>; on resume, the checkpoint's folder)",
        recipe=False,
    )
    val_freq: int = option(1, "validate every this many epochs (and at the last)", low=1)
    schedule: str = option(
        "constant",
        "learning-rate schedule: constant, step (x gamma every --lr-step epochs) or cosine (to 0 at "
        "--num-epoch)",
        choices=SCHEDULES,
    )
    lr_step: int = option(30, "epochs between decays of the step schedule", low=1)
    lr_gamma: float = option(0.5, "decay factor of the step schedule", low=0, high=1, bounds="(]")
    warmup_epochs: float = option(0, "linear warm-up from 0 over this many epochs", low=0, high=10**6)
    grad_clip: float | None = option(
        None, "clip the gradient norm to this value (piunet: 15 unless given)", low=0, high=1e6, bounds="(]"
    )
    ema: float | None = option(
        None,
        "keep an exponential moving average of the weights (e.g. 0.999, as BasicSR's params_ema); "
        "validation and super_resolve.py use it",
        low=0,
        high=1,
        bounds="()",
        metavar="DECAY",
    )
    init_from: str | None = option(
        None,
        "start from another run's weights wherever name and shape match (e.g. x3 from a trained x2 "
        "body, as EDSR does); the rest is initialised as usual",
        metavar="CKPT",
    )
    frames: int = option(9, "piunet: LR frames per scene", low=1, high=64, fixed=FIXED_EPOCH)
    burst_shift: int = option(2, "piunet synthetic bursts: largest frame shift, in HR pixels", low=0, high=64)
    burst_noise: float = option(
        0.01, "piunet synthetic bursts: Gaussian noise on the LR frames", low=0, high=1
    )
    burst_blur: float = option(
        0.0, "piunet synthetic bursts: extra Gaussian blur (HR pixels)", low=0, high=16
    )
    burst_occlusion: float = option(
        0.3, "piunet synthetic bursts: chance of an occluded rectangle", low=0, high=1
    )
    burst_style: str = option(
        "plain",
        "piunet synthetic bursts: plain, or PROBA-V-like (radiometry, per-day changes, real cloud "
        "statistics, clearest frames kept; --burst-blur/--burst-noise are then upper bounds, the noise "
        "relative to the scene's contrast)",
        choices=BURST_STYLES,
    )
    amp: bool | None = option(
        None, "mixed precision (bf16 where supported, else fp16); default: on with --cuda"
    )
    cuda: bool = option(False, "train on the GPU (error if CUDA is missing)", recipe=False)
    device: str | None = option(
        None, "where to train: cpu, cuda, cuda:N or mps (--cuda is --device cuda)", recipe=False
    )
    tensorboard: str | None = option(
        None,
        "also log losses, validation, learning rate and a validation image for TensorBoard "
        "(pip install -r requirements-tensorboard.txt)",
        recipe=False,
        metavar="DIR",
    )
    quiet: bool = option(False, "no progress bars (the per-epoch line stays)", recipe=False)
    config: str | None = option(
        None, "the recipe file this run was started from (train --config)", recipe=False
    )

    def to_dict(self) -> dict[str, Any]:
        """The arguments a checkpoint records (plain lists, as checkpoints always held)."""
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "settings") -> TrainConfig:
        """A configuration from a dict of settings (a checkpoint's args, a recipe file), each
        checked for its type; names it lacks take their defaults."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown setting {unknown[0]!r}")
        return cls(**{key: _typed(known[key], value, source) for key, value in values.items()})

    def recipe(self) -> dict[str, Any]:
        """The settings that decide what is trained (not where or how it runs)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["recipe"]}

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some settings changed."""
        return replace(self, **changes)


def _typed(spec: Any, value: Any, source: str) -> Any:
    """`value` as the field's type (int for float allowed, lists as tuples), or a ConfigError."""
    kind = spec.type.replace(" | None", "")
    name = f"{source}: {spec.name}"
    if value is None:
        if "None" in spec.type:
            return None
        raise ConfigError(f"{name} must be set, got None")
    if kind.startswith("tuple["):
        item = kind[len("tuple[") : -len(", ...]")]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name} must be a list, got {brief(value)}")
        return tuple(_scalar(item, v, name) for v in value)
    return _scalar(kind, value, name)


def _scalar(kind: str, value: Any, name: str) -> Any:
    """One value checked against a type name (str, int, float, bool)."""
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = {"str": str, "int": int, "float": float, "bool": bool}[kind]
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{name} must be {kind}, got {brief(value)}")
    return value


def default(name: str) -> Any:
    """The default of one setting."""
    spec = next(f for f in fields(TrainConfig) if f.name == name)
    return spec.default  # no field has a default factory


def check(config: TrainConfig) -> None:
    """Reject values outside each setting's range or choices (the cross-setting checks are the
    trainer's)."""
    for spec in fields(config):
        value, meta = getattr(config, spec.name), spec.metadata
        flag = f"--{spec.name.replace('_', '-')}"
        if meta["choices"] is not None and value not in meta["choices"]:
            raise ConfigError(
                f"{flag} must be one of {', '.join(map(str, meta['choices']))}, got {brief(value)}"
            )
        if value is None or (meta["low"] is None and meta["high"] is None):
            continue
        values = value if isinstance(value, tuple) else (value,)
        if not all(_in_range(v, meta) for v in values):
            raise ConfigError(f"{flag} must be {_interval(meta)}, got {_shown(value)}")
    try:
        degradation_kernels(config.degradation)
    except ValueError as err:
        raise ConfigError(f"--degradation: {err}") from None


def _in_range(value: float, meta: Any) -> bool:
    """Whether a finite value lies in the field's interval."""
    low, high, bounds = meta["low"], meta["high"], meta["bounds"]
    above = low is None or (value > low if bounds[0] == "(" else value >= low)
    below = high is None or (value < high if bounds[1] == ")" else value <= high)
    return math.isfinite(value) and above and below


def _interval(meta: Any) -> str:
    """The allowed range in words: 'at least 1', or '(0, 1]'."""
    if meta["high"] is None:
        return f"at least {meta['low']}"
    return f"in {meta['bounds'][0]}{meta['low']}, {meta['high']}{meta['bounds'][1]}"


def _shown(value: Any) -> str:
    """A value as the user wrote it (lists as lists)."""
    return str(list(value)) if isinstance(value, tuple) else str(value)


def fixed(kind: str) -> tuple[str, ...]:
    """The settings that resume may not change (FIXED_RUN), or not mid-epoch (FIXED_EPOCH)."""
    return tuple(f.name for f in fields(TrainConfig) if f.metadata["fixed"] == kind)


def load_recipe(path: str | Path) -> dict[str, Any]:
    """The settings of a recipe file (TOML, flat `name = value` with the options' names), checked."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"--config {path}: cannot read it ({err.strerror or err})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"--config {path}: not a TOML file ({err})") from None
    values = {key.replace("-", "_"): value for key, value in values.items()}
    TrainConfig.from_dict(values, source=str(path))  # names and types checked here, once
    return values


def recorded_config(checkpoint: dict, path: str | Path) -> TrainConfig:
    """The configuration a training checkpoint recorded, or a CheckpointError naming the file."""
    args = checkpoint.get("args")
    if not isinstance(args, dict):
        raise CheckpointError(f"{path}: not a training checkpoint written by train.py (no arguments)")
    try:
        return TrainConfig.from_dict(args, source=f"{path}: recorded argument")
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
