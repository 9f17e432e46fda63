"""config.py: one source for every option; recipe files; old checkpoints load and resume."""

from __future__ import annotations

import re
import shutil
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from conftest import smooth_image_folder

import train
from config import (
    FIXED_EPOCH,
    FIXED_RUN,
    ConfigError,
    TrainConfig,
    check,
    fixed,
    load_recipe,
    recorded_config,
)
from utils import run_cli

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "checkpoints").glob("*.pth"))
OLD_FILES = sorted((ROOT / "wip").glob("*.pth"))

# Files that moved after a shipped run recorded their path: (checkpoint, setting) -> (then, now).
MOVED = {
    ("edsr_x2", "init_from"): ("checkpoints/edsr_x2.pth", "wip/edsr_x2_scaleaug.pth"),
    ("s2_20m_x2", "init_from"): ("checkpoints/s2_20m_x2.pth", "wip/s2_20m_x2_14blocks.pth"),
    ("edsr_x3", "init_from"): ("checkpoints/edsr_x3.pth", "wip/edsr_x3_l1.pth"),
    ("edsr_x4", "init_from"): ("checkpoints/edsr_x4.pth", "wip/edsr_x4_l1.pth"),
    ("piunet_x3", "init_from"): ("checkpoints/piunet_x3.pth", "wip/piunet_x3_t91.pth"),
}


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_each_shipped_checkpoint_ran_its_recipe_file(path):
    recipe_file = ROOT / "configs" / f"{path.stem}.toml"
    assert recipe_file.is_file(), f"no recipe file for {path.name}"
    recipe = TrainConfig.from_dict(load_recipe(recipe_file)).recipe()
    recorded = recorded_config(_load(path), path).recipe()
    for (name, key), (then, now) in MOVED.items():
        if name == path.stem and recorded[key] == then:
            recorded[key] = now
    assert recipe == recorded


def test_every_recipe_file_belongs_to_a_shipped_checkpoint():
    assert {p.stem for p in (ROOT / "configs").glob("*.toml")} == {p.stem for p in SHIPPED}


@pytest.mark.parametrize("path", SHIPPED + OLD_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recorded_arguments_load_and_round_trip(path):
    args = _load(path)["args"]
    config = recorded_config({"args": args}, path)
    assert {key: value for key, value in config.to_dict().items() if key in args} == args


def test_one_field_defines_each_option():
    parser = train.build_parser()
    flags = {action.dest for action in parser._subparsers._group_actions[0].choices["train"]._actions}
    assert {f.name for f in fields(TrainConfig)} <= flags
    assert fixed(FIXED_RUN) == ("model", "model_option", "scale")
    assert "batch_size" in fixed(FIXED_EPOCH) and "lr" not in fixed(FIXED_EPOCH)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_size": 0}, "--batch-size must be at least 1, got 0"),
        ({"lr": 0.0}, "--lr must be in (0, 1], got 0.0"),
        ({"train_scales": (1.0, 1.5)}, "--train-scales must be in (0, 1], got [1.0, 1.5]"),
        ({"ema": 1.0}, "--ema must be in (0, 1), got 1.0"),
        ({"schedule": "linear"}, "--schedule must be one of constant, step, cosine, got 'linear'"),
        ({"degradation": "bicubic,box"}, "unknown kernel 'box'"),
    ],
)
def test_checks_come_from_the_fields(change, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check(TrainConfig().replace(**change))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"num_epoch": "3"}, "num_epoch must be int, got '3'"),
        ({"num_epoch": True}, "num_epoch must be int, got True"),
        ({"model_option": "blocks=4"}, "model_option must be a list"),
        ({"lrate": 1e-3}, "unknown setting 'lrate'"),
        ({"model": None}, "model must be set"),
    ],
)
def test_settings_are_typed(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(values)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    smooth_image_folder(root / "train", 4, 36, seed=0)
    smooth_image_folder(root / "val", 1, 36, seed=1)
    return {"train": root / "train", "val": root / "val"}


def test_flags_beside_a_recipe_override_it_and_the_checkpoint_records_both(data, tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        f'# a comment\ntrain_data = "{data["train"]}"\nval_data = "{data["val"]}"\npatch_size = 12\n'
        "patches_per_image = 4\nbatch-size = 8\nnum_epoch = 5\nlr = 1e-3\n",
        encoding="utf-8",
    )
    out = tmp_path / "run"
    argv = ["train", "--config", str(recipe), "--num-epoch", "1", "--out-dir", str(out), "--quiet"]
    assert run_cli(train.main, argv) == 0
    args = _load(out / "last.pth")["args"]
    assert args["config"] == str(recipe)
    assert (args["num_epoch"], args["batch_size"], args["patches_per_image"], args["lr"]) == (1, 8, 4, 1e-3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr = [", "not a TOML file"),
        ("learning_rate = 0.1", "unknown setting 'learning_rate'"),
        ('num_epoch = "ten"', "num_epoch must be int"),
    ],
)
def test_a_bad_recipe_is_one_line_and_writes_nothing(tmp_path, capsys, text, message):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    assert run_cli(train.main, ["train", "--config", str(recipe), "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not out.exists()


def test_a_missing_recipe_is_one_line(tmp_path, capsys):
    assert run_cli(train.main, ["train", "--config", str(tmp_path / "none.toml")]) == 2
    assert "cannot read it" in capsys.readouterr().err


def test_an_old_checkpoint_resumes_the_same_way_twice(data, tmp_path):
    """wip/srcnn_x3_291.pth was written before config.py (no loss_border, device, tensorboard)."""
    old = ROOT / "wip" / "srcnn_x3_291.pth"
    assert {"loss_border", "device", "tensorboard"}.isdisjoint(_load(old)["args"])
    results = []
    for attempt in ("a", "b"):
        folder = tmp_path / attempt
        folder.mkdir()
        shutil.copy(old, folder / "last.pth")
        argv = ["resume", str(folder / "last.pth"), "--num-epoch", "61", "--schedule", "constant",
                "--train-data", str(data["train"]), "--val-data", str(data["val"]),
                "--patches-per-image", "4", "--patch-size", "12", "--quiet"]  # fmt: skip
        assert run_cli(train.main, argv) == 0
        results.append(_load(folder / "last.pth"))
    a, b = results
    assert a["epoch"] == b["epoch"] == 61
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["args"]["init_from"] == _load(old)["args"]["init_from"]  # the rest carried over
    assert not all(torch.equal(a["state_dict"][k], _load(old)["state_dict"][k]) for k in a["state_dict"])
