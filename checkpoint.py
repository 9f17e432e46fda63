"""Checkpoint files: what one holds (SCHEMA, one declarative description), atomic writes, and
safe loads that check the whole file against the schema before anything reads it.

A checkpoint is a dict saved by `torch.save` and loaded with `weights_only=True`. Its model
part (format, model, state_dict, ...) is what super_resolve.py and the API need; its training
part (optimizer, args, epoch, history, rng, ...) is what `train.py resume` needs, and is there
as a whole or not at all. `load_checkpoint` refuses, in one line naming the key, any file
that departs from SCHEMA, whose tensors do not fit the model it names, or whose optimizer
state does not fit that model's parameters.
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from config import ConfigError, TrainConfig, check
from model import KINDS, MODELS, SCALES, build_model, checkpoint_weights, model_kind
from rasters import RASTER_DTYPES
from utils import CheckpointError, UserError, atomic_write, brief, first_line
from validation import VALIDATION_KEYS

CHECKPOINT_FORMAT = "srkit-checkpoint"
CHECKPOINT_VERSION = 1  # bumped when the layout changes; files from before versions are version 1
MAX_OPTION = 4096  # the largest whole-number model option a checkpoint may name (blocks, features)


@dataclass(frozen=True)
class Key:
    """What one entry of a checkpoint may hold: its types, a test of its value, and what it
    nests (named `keys` of a mapping, and `each` other value of a mapping or item of a list)."""

    what: str  # the rule in words, for the error message
    types: tuple[type, ...]
    test: Callable[[Any], bool] | None = None
    keys: dict[str, Key] | None = None
    each: Key | None = None
    optional: bool = False


def _whole(low: int, high: float = math.inf) -> Callable[[Any], bool]:
    """A test that a whole number lies in [low, high]."""
    return lambda value: low <= value <= high


def _finite(value: float | None) -> bool:
    """Whether a number is finite (None passes: nothing recorded)."""
    return value is None or math.isfinite(value)


def _dense_finite(tensor: Tensor) -> bool:
    """Whether a tensor is an ordinary (strided) one whose floating values are all finite."""
    if tensor.layout != torch.strided or tensor.is_quantized:
        return False
    return not tensor.is_floating_point() or bool(torch.isfinite(tensor).all())


def _rng_words(dtype: torch.dtype, length: int) -> Callable[[Tensor], bool]:
    """A test for a 1-D generator state of `length` words of `dtype`, each a 32-bit word."""

    def test(t: Tensor) -> bool:
        return t.dtype == dtype and tuple(t.shape) == (length,) and bool(((t >= 0) & (t < 2**32)).all())

    return test


NONE = type(None)
NUMBER = (int, float)
COUNT = Key("a whole number of at least 0", (int,), _whole(0))
FINITE = Key("a finite number", NUMBER, _finite)
TENSOR = Key("a dense tensor with finite values", (Tensor,), _dense_finite)
WEIGHTS = Key("a mapping of parameter names to tensors", (dict,), len, each=TENSOR)
RNG_BYTES = Key(
    "a generator state (1-D uint8 tensor)", (Tensor,), lambda t: t.dtype == torch.uint8 and t.dim() == 1
)

ADAM_GROUP = Key(
    "a parameter group of Adam",
    (dict,),
    keys={
        "params": Key("a list of parameter indices", (list,), each=COUNT),
        "lr": Key("a learning rate of at least 0", NUMBER, lambda v: math.isfinite(v) and v >= 0),
        "betas": Key(
            "two decays in [0, 1)",
            (tuple, list),
            lambda v: len(v) == 2 and all(isinstance(b, NUMBER) and 0 <= b < 1 for b in v),
        ),  # fmt: skip
        "eps": Key("a positive number", NUMBER, lambda v: math.isfinite(v) and v > 0),
        "weight_decay": Key("a number of at least 0", NUMBER, lambda v: math.isfinite(v) and v >= 0),
        "amsgrad": Key("true or false", (bool,)),
        "initial_lr": Key("a learning rate", NUMBER, _finite, optional=True),
    },
    each=Key("a flag, finite number or nothing", (bool, NONE, *NUMBER), _finite),
)

ADAM_MOMENTS = Key(
    "a parameter's step count and moments",
    (dict,),
    keys={
        "step": Key(
            "a step count (a tensor of one number, at least 0)",
            (Tensor,),
            lambda t: t.numel() == 1 and _dense_finite(t) and t.item() >= 0,
        ),  # fmt: skip
        "exp_avg": TENSOR,
        "exp_avg_sq": Key(
            "a dense tensor of finite values, at least 0",
            (Tensor,),
            lambda t: _dense_finite(t) and (t.numel() == 0 or t.min() >= 0),
        ),  # fmt: skip
        "max_exp_avg_sq": replace(TENSOR, optional=True),
    },
)


def _validated_whole(row: dict) -> bool:
    """Whether a history row's validation columns of each kind come in whole pairs (score and
    similarity; None: not measured), the baseline's wherever the model's are."""
    for score, similarity, base_score, base_similarity in VALIDATION_KEYS.values():
        model = (row.get(score) is None, row.get(similarity) is None)
        base = (row.get(base_score) is None, row.get(base_similarity) is None)
        if model[0] != model[1] or base[0] != base[1] or (not model[0] and base[0]):
            return False
    return True


HISTORY_ROW = Key(
    "an epoch's row (a mapping of column names to numbers, its validation scores all or none)",
    (dict,),
    _validated_whole,
    keys={
        "epoch": Key("an epoch number of at least 1", (int,), _whole(1)),
        "train_loss": FINITE,
        "lr": FINITE,
        "seconds": Key("a number of seconds, at least 0", NUMBER, lambda v: math.isfinite(v) and v >= 0),
    },
    each=Key("a finite number or nothing", (*NUMBER, NONE), _finite),
)

RNG = Key(
    "the random generators' states",
    (dict,),
    keys={
        "torch": Key(
            "the CPU generator's state (1-D uint8 tensor of its size)",
            (Tensor,),
            lambda t: t.dtype == torch.uint8 and t.shape == torch.get_rng_state().shape,
        ),
        "cuda": Key("a list of CUDA generator states", (list,), each=RNG_BYTES),
        "numpy": Key(
            "numpy's generator state",
            (dict,),
            keys={
                "kind": Key("'MT19937'", (str,), lambda v: v == "MT19937"),
                "keys": Key("624 32-bit words (int64 tensor)", (Tensor,), _rng_words(torch.int64, 624)),
                "pos": Key("a position from 0 to 624", (int,), _whole(0, 624)),
                "has_gauss": Key("0 or 1", (int,), _whole(0, 1)),
                "cached": FINITE,
            },
        ),
        "python": Key(
            "python's generator state",
            (dict,),
            keys={
                "version": Key("3", (int,), lambda v: v == 3),
                "internal": Key(
                    "624 32-bit words and a position",
                    (list,),
                    lambda v: len(v) == 625 and all(0 <= w < 2**32 for w in v[:624]) and 0 <= v[624] <= 624,
                    each=Key("a whole number", (int,)),
                ),  # fmt: skip
                "gauss": Key("a finite number or nothing", (float, NONE), _finite),
            },
        ),
    },
)


def _ranges(radiometry: dict) -> bool:
    """Whether a radiometry's per-band lists match its band names and each low lies below its high."""
    columns = (radiometry.get(key) for key in ("low", "high", "mean"))
    lists = [column for column in columns if isinstance(column, list)]
    if any(len(column) != len(radiometry.get("bands") or ()) for column in lists):
        return False
    low, high = radiometry.get("low"), radiometry.get("high")
    numbers = all(isinstance(v, NUMBER) for v in (*(low or ()), *(high or ())))
    return not numbers or all(lo < hi for lo, hi in zip(low, high))


FINITE_LIST = Key("a list of finite numbers", (list,), each=FINITE)
RADIOMETRY = Key(
    "a multispectral model's value scale (per-band lists as long as its bands, each low below its high)",
    (dict,),
    _ranges,
    keys={
        "bands": Key("a list of band names", (list,), len, each=Key("a band name", (str,))),
        "dtype": Key(f"a pixel type ({', '.join(RASTER_DTYPES)})", (str,), lambda v: v in RASTER_DTYPES),
        "divisor": Key("a positive number", NUMBER, lambda v: math.isfinite(v) and v > 0),
        "offset": FINITE,
        "low": FINITE_LIST,
        "high": FINITE_LIST,
        "mean": FINITE_LIST,
        "nodata": Key("a number or nothing", (*NUMBER, NONE)),
    },
    optional=True,
)

MODEL_PART: dict[str, Key] = {  # what every reader needs
    "format": Key(repr(CHECKPOINT_FORMAT), (str,), lambda v: v == CHECKPOINT_FORMAT),
    "version": Key(
        f"a format version from 1 to {CHECKPOINT_VERSION}",
        (int,),
        _whole(1, CHECKPOINT_VERSION),
        optional=True,
    ),  # fmt: skip
    "kind": Key(" or ".join(KINDS), (str,), lambda v: v in KINDS, optional=True),
    "model": Key(
        "the model's description",
        (dict,),
        keys={
            "name": Key(f"a model of this toolkit ({', '.join(MODELS)})", (str,), lambda v: v in MODELS),
            "scale": Key(f"an SR factor from {SCALES[0]} to {SCALES[-1]}", (int,), lambda v: v in SCALES),
            "options": Key(
                "a mapping of option names to values",
                (dict,),
                each=Key(
                    f"a flag, text, finite number or whole number up to {MAX_OPTION}",
                    (bool, str, *NUMBER),
                    lambda v: (
                        isinstance(v, bool | str)
                        or (abs(v) <= MAX_OPTION if isinstance(v, int) else math.isfinite(v))
                    ),
                ),  # fmt: skip
            ),
        },
    ),
    "params": Key("a count of parameters", (int,), _whole(0), optional=True),
    "state_dict": WEIGHTS,
    "ema_state_dict": Key(
        "the moving average's weights or nothing", (dict, NONE), each=TENSOR, optional=True
    ),
    "radiometry": RADIOMETRY,
}
TRAINING_PART: dict[str, Key] = {  # what `train.py resume` needs: all of it or none
    "optimizer": Key(
        "Adam's state",
        (dict,),
        keys={
            "state": Key("a mapping of parameter indices to moments", (dict,), each=ADAM_MOMENTS),
            "param_groups": Key("a list of parameter groups", (list,), len, each=ADAM_GROUP),
        },
        optional=True,
    ),
    "scaler": Key("the gradient scaler's state", (dict,), each=FINITE, optional=True),
    "args": Key("the run's settings", (dict,), optional=True),
    "epoch": Key("a count of finished epochs", (int,), _whole(0), optional=True),
    "in_epoch": Key(
        "the position inside an interrupted epoch",
        (dict,),
        keys={
            "world": Key("a number of processes, at least 1", (int,), _whole(1)),
            "samples": COUNT,
            "loss_sum": FINITE,
            "batches": COUNT,
            "seconds": FINITE,
        },
        optional=True,
    ),
    "history": Key("a list of epoch rows", (list,), each=HISTORY_ROW, optional=True),
    "best_psnr": Key("a finite PSNR or nothing", (*NUMBER, NONE), _finite, optional=True),
    "rng": replace(RNG, optional=True),
}
SCHEMA: dict[str, Key] = {**MODEL_PART, **TRAINING_PART}


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a toolkit checkpoint with weights_only=True and check it whole against SCHEMA and the
    model it names; raise CheckpointError (one line naming the file and key) on any problem.

    A file that holds pickled Python objects is refused without running their code.
    """
    checkpoint = _read(Path(path), map_location)
    try:
        check_checkpoint(checkpoint)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return checkpoint


def check_checkpoint(checkpoint: Any) -> None:
    """Raise CheckpointError unless `checkpoint` holds what SCHEMA describes, its weights fit the
    model it names, its optimizer state fits that model's parameters and its settings are valid."""
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            "not a checkpoint of this toolkit (a bare state_dict or another program's file?)"
        )
    version = checkpoint.get("version", 1)
    if isinstance(version, int) and version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint format version {version}; this toolkit reads versions 1 to "
            f"{CHECKPOINT_VERSION} (a newer toolkit wrote it?)"
        )
    _check_mapping(checkpoint, Key("a checkpoint", (dict,), keys=SCHEMA), "")
    present = [key for key in TRAINING_PART if key in checkpoint]
    if present and len(present) < len(TRAINING_PART):
        missing = next(key for key in TRAINING_PART if key not in checkpoint)
        raise CheckpointError(f"malformed checkpoint: it has {present[0]!r} but no {missing!r} (a training "
                              "checkpoint holds all of its training state)")  # fmt: skip
    model = _check_model(checkpoint)
    if present:
        _check_optimizer(checkpoint["optimizer"], [tuple(p.shape) for p in model.parameters()])
        _check_settings(checkpoint)


def is_training_checkpoint(checkpoint: dict) -> bool:
    """Whether a checked checkpoint holds the training state that `train.py resume` needs."""
    return "args" in checkpoint


def shipped(checkpoint: dict) -> dict:
    """A checked checkpoint as a model to publish: the weights it was validated with (the moving
    average, when the run kept one) as its only weights and no Adam moments, a quarter of a training
    file's size; what it computes is unchanged, and `resume` from it starts a fresh Adam."""
    copy = {**checkpoint, "state_dict": checkpoint_weights(checkpoint), "ema_state_dict": None}
    if "optimizer" in copy:
        copy["optimizer"] = {**copy["optimizer"], "state": {}}
    return copy


def save_checkpoint(checkpoint: dict, path: str | os.PathLike) -> Path:
    """Write a checkpoint atomically (temporary file in the same folder, fsync, rename)."""
    with atomic_write(path, "checkpoint") as tmp:
        try:
            torch.save(checkpoint, tmp)
        except RuntimeError as err:  # torch's zip writer reports a full disk or a file-size limit so
            raise UserError(f"{path}: cannot write checkpoint ({first_line(err)})") from None
    return Path(path)


# ---------------------------------------------------------------------------------------
# Checking against the schema
# ---------------------------------------------------------------------------------------


def _check(value: Any, key: Key, where: str) -> None:
    """Check one value against its Key, recursing into what it nests."""
    wrong = not isinstance(value, key.types) or (isinstance(value, bool) and bool not in key.types)
    if wrong or not _passes(key, value):
        raise CheckpointError(f"malformed checkpoint: {where} must be {key.what}, got {brief(value)}")
    if isinstance(value, dict):
        _check_mapping(value, key, where)
    elif isinstance(value, list | tuple) and key.each is not None:
        for index, item in enumerate(value):
            _check(item, key.each, f"{where}[{index}]")


def _passes(key: Key, value: Any) -> bool:
    """Whether a value of the right type passes the key's test (one that cannot be applied to
    what the value holds fails)."""
    try:
        return key.test is None or bool(key.test(value))
    except (TypeError, ValueError, RuntimeError):
        return False


def _check_mapping(mapping: dict, key: Key, where: str) -> None:
    """Check a mapping's named keys (present unless optional) and every other value (a Key with
    neither leaves the mapping to a later check)."""
    if key.keys is None and key.each is None:
        return
    named = key.keys or {}
    for name, inner in named.items():
        if name in mapping:
            _check(mapping[name], inner, _inside(where, name))
        elif not inner.optional:
            raise CheckpointError(f"malformed checkpoint: no {_inside(where, name)} ({inner.what})")
    for name, value in mapping.items():
        if name in named:
            continue
        if key.each is None:
            raise CheckpointError(f"malformed checkpoint: unknown key {_inside(where, name)}")
        _check(value, key.each, f"{where}[{name!r}]")


def _inside(where: str, name: Any) -> str:
    """The dotted name of a key inside a mapping ('' is the checkpoint itself)."""
    return f"{where}.{name}" if where else str(name)


def _check_model(checkpoint: dict) -> torch.nn.Module:
    """The named model, built without memory (meta device); the weights must match its tensors."""
    spec = checkpoint["model"]
    name, scale, options = spec["name"], spec["scale"], spec.get("options", {})
    try:
        with torch.device("meta"):
            model = build_model(name, scale=scale, **options)
    except (KeyError, TypeError, ValueError, RuntimeError, AssertionError, ZeroDivisionError) as err:
        raise CheckpointError(f"malformed checkpoint: cannot build {name} x{scale} with options {options} "
                              f"({first_line(err)})") from None  # fmt: skip
    kind = checkpoint.get("kind")
    if kind is not None and kind != model_kind(model):
        raise CheckpointError(
            f"malformed checkpoint: kind {kind!r}, but {name} is a {model_kind(model)} model"
        )
    bands = len(checkpoint.get("radiometry", {}).get("bands", ()))
    if bands and bands != options.get("in_channels", 3):
        raise CheckpointError(f"malformed checkpoint: its radiometry names {bands} bands, but the model "
                              f"takes {options.get('in_channels', 3)}")  # fmt: skip
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    for field in ("state_dict", "ema_state_dict"):
        if checkpoint.get(field) is not None:
            _check_weights(checkpoint[field], shapes, f"{field} of {name} x{scale}")
    return model


def _check_weights(weights: dict, shapes: dict[str, tuple], what: str) -> None:
    """The weights hold exactly the model's tensors, each of its shape."""
    missing = [key for key in shapes if key not in weights]
    if missing:
        raise CheckpointError(f"malformed checkpoint: the {what} lack {missing[0]!r}")
    extra = [key for key in weights if key not in shapes]
    if extra:
        raise CheckpointError(f"malformed checkpoint: the {what} have {extra[0]!r}, which the model has not")
    for key, shape in shapes.items():
        if tuple(weights[key].shape) != shape:
            raise CheckpointError(f"malformed checkpoint: the {what} have {key!r} of shape "
                                  f"{tuple(weights[key].shape)}, the model's is {shape}")  # fmt: skip


def _check_optimizer(optimizer: dict, shapes: list[tuple]) -> None:
    """Adam's groups cover the model's parameters once, in order; each moment has its shape."""
    indices = [index for group in optimizer["param_groups"] for index in group["params"]]
    if indices != list(range(len(shapes))):
        raise CheckpointError(f"malformed checkpoint: the optimizer's groups hold parameters "
                              f"{brief(indices)}, the model has {len(shapes)}")  # fmt: skip
    for index, moments in optimizer["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(shapes):
            raise CheckpointError(f"malformed checkpoint: optimizer state for parameter {index!r} "
                                  f"(the model has {len(shapes)})")  # fmt: skip
        for name, value in moments.items():
            wanted = () if name == "step" else shapes[index]
            if tuple(value.shape) != wanted:
                raise CheckpointError(f"malformed checkpoint: optimizer.state[{index}][{name!r}] has shape "
                                      f"{tuple(value.shape)}, the parameter's is {wanted}")  # fmt: skip


def _check_settings(checkpoint: dict) -> None:
    """The recorded settings are valid ones, for the model the checkpoint holds."""
    try:
        config = TrainConfig.from_dict(checkpoint["args"], source="recorded argument")
        check(config)
    except ConfigError as err:
        raise CheckpointError(f"malformed checkpoint: {err}") from None
    spec = checkpoint["model"]
    if (config.model, config.scale) != (spec["name"], spec["scale"]):
        raise CheckpointError(f"malformed checkpoint: its settings train {config.model} x{config.scale}, "
                              f"its weights are {spec['name']} x{spec['scale']}")  # fmt: skip


# ---------------------------------------------------------------------------------------
# Reading the file
# ---------------------------------------------------------------------------------------

_FILE_SIGNATURES = {  # what a file that is not a checkpoint most likely is, by its first bytes
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"BM": "a BMP image",
    b"II*\x00": "a TIFF image",
    b"MM\x00*": "a TIFF image",
    b"<": "an HTML/XML page",
    b"{": "a JSON file",
}


def _read(path: Path, map_location: str | torch.device) -> Any:
    """The object a checkpoint file holds, loaded with weights_only=True."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    _check_container(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()
        detail = next((line for line in first if "GLOBAL" in line or "Unsupported" in line), "")
        raise CheckpointError(
            f"{path}: refused, it holds pickled Python objects that weights_only loading does "
            f"not allow{f' ({detail.strip()})' if detail else ''}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as err:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({first_line(err)})") from None


def _check_container(path: Path) -> None:
    """Refuse a file that is not a torch.save file at all (a zip archive, or a legacy pickle
    starting with protocol 2+), naming what it looks like."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read it ({err.strerror or err})") from None
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return
    if not head:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    looks = next((what for magic, what in _FILE_SIGNATURES.items() if head.startswith(magic)), None)
    raise CheckpointError(f"{path}: not a checkpoint file{f' (it looks like {looks})' if looks else ''}")
