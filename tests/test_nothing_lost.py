"""Issue [13]: nothing lost, nothing overwritten, nothing written where it should not be."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train
from utils import FolderLock, run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, count, size in (("train", 4, 48), ("val", 2, 36)):
        (root / split).mkdir()
        for i in range(count):
            coarse = rng.integers(0, 256, (size // 6, size // 6, 3), dtype=np.uint8)
            Image.fromarray(coarse).resize((size, size), Image.BICUBIC).save(root / split / f"img{i}.png")
    return {"train": root / "train", "val": root / "val"}


def _argv(data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["train", "--train-data", str(data["train"]), "--val-data", str(data["val"]),
            "--out-dir", str(out), "--patch-size", "12", "--patches-per-image", "4", "--batch-size", "8",
            "--save-freq", "1", "--lr", "1e-3", "--quiet", *extra]  # fmt: skip


def _epoch(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_last_pth_commits_the_epoch_only_once_its_other_files_are_written(data, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "epoch-0002.pth").mkdir(parents=True)  # epoch 2's own file cannot be written
    assert run_cli(train.main, _argv(data, out, "--num-epoch", "2")) == 2
    assert "epoch-0002.pth" in _one_line_error(capsys)
    assert _epoch(out / "last.pth") == 1  # epoch 2 not committed: resume redoes it
    (out / "epoch-0002.pth").rmdir()
    assert run_cli(train.main, ["resume", str(out / "last.pth")]) == 0
    last = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2 and _epoch(out / "epoch-0002.pth") == 2
    best_epoch = max(last["history"], key=lambda row: row["psnr"])["epoch"]
    assert _epoch(out / "best.pth") == best_epoch


def test_a_full_disk_is_one_line_and_status_2_with_nothing_half_written(data, tmp_path):
    out = tmp_path / "run"
    limit = 64 * 1024  # smaller than an SRCNN checkpoint: its first write fails (EFBIG)

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run([sys.executable, "train.py", *_argv(data, out, "--num-epoch", "1")], cwd=ROOT,
                          capture_output=True, text=True, preexec_fn=small_files, timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "cannot write checkpoint" in done.stderr
    assert not list(out.glob("*.pth")) and not list(out.glob(".*.tmp"))


def test_resume_writes_beside_the_checkpoint_it_is_given(data, tmp_path, capsys):
    original = tmp_path / "original"
    assert run_cli(train.main, _argv(data, original, "--num-epoch", "1")) == 0
    before = {path.name: path.read_bytes() for path in original.glob("*.pth")}
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    assert run_cli(train.main, ["resume", str(copy / "last.pth"), "--num-epoch", "2"]) == 0
    assert _epoch(copy / "last.pth") == 2 and (copy / "epoch-0002.pth").is_file()
    assert {path.name: path.read_bytes() for path in original.glob("*.pth")} == before  # untouched
    other = tmp_path / "elsewhere"  # --out-dir still chooses
    assert (
        run_cli(train.main, ["resume", str(copy / "last.pth"), "--num-epoch", "3", "--out-dir", str(other)])
        == 0
    )
    assert _epoch(other / "last.pth") == 3 and _epoch(copy / "last.pth") == 2


def test_an_out_dir_in_use_is_refused(data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    lock = FolderLock(out)  # as a run in progress holds it
    assert run_cli(train.main, _argv(data, out, "--num-epoch", "1")) == 2
    assert "in use by another training run" in _one_line_error(capsys)
    assert not list(out.glob("*.pth"))
    lock.release()
    assert run_cli(train.main, _argv(data, out, "--num-epoch", "1")) == 0


def test_stale_temporary_files_are_cleared_at_start(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".last.pth.999999999.tmp"  # its writer (no such PID) was killed mid-write
    stale.write_bytes(b"x" * 1000)
    live = out / f".other.pth.{os.getppid()}.tmp"  # a live process's: kept
    live.write_bytes(b"x")
    assert run_cli(train.main, _argv(data, out, "--num-epoch", "1")) == 0
    assert not stale.exists() and live.exists()


@pytest.mark.parametrize(
    "flag",
    [("--grad-clip", "-1"), ("--grad-clip", "0"), ("--lr", "inf"), ("--lr", "nan"), ("--scale", "0"),
     ("--scale", "-3"), ("--scale", "1000"), ("--ema", "1.5"), ("--warmup-epochs", "-1"),
     ("--lr-gamma", "0"), ("--burst-occlusion", "2"), ("--workers", "-1")],
)  # fmt: skip
def test_numeric_options_out_of_range_are_refused(data, tmp_path, capsys, flag):
    out = tmp_path / "run"
    try:
        status = run_cli(train.main, _argv(data, out, "--num-epoch", "1", *flag))
    except SystemExit as parse_error:  # argparse's own refusal (--scale has choices)
        status = parse_error.code
    assert status == 2
    assert flag[0] in _one_line_error(capsys)
    assert not out.exists()  # refused before anything is written
