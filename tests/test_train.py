"""train.py: exact resume, overrides, safe and atomic checkpoints, signals, inspect, errors."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import smooth_image_folder

import train
from checkpoint import load_checkpoint
from config import TrainConfig
from data import load_pairs
from images import save_image
from inference import Upscaler
from losses import LOSSES
from metrics import psnr
from model import build_model, load_model
from runtime import Runtime
from utils import run_cli
from validation import single_image_task

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    smooth_image_folder(root / "train", 6, 48, seed=0)
    smooth_image_folder(root / "val", 2, 36, seed=1)
    return {"train": root / "train", "val": root / "val"}


def _args(data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "--train-data",
        str(data["train"]),
        "--val-data",
        str(data["val"]),
        "--out-dir",
        str(out),
        "--patch-size",
        "12",
        "--patches-per-image",
        "8",
        "--batch-size",
        "8",
        "--save-freq",
        "1",
        "--quiet",
        "--lr",
        "1e-3",
        *extra,
    ]


def _run(argv: list[str]) -> int:
    return run_cli(train.main, argv)


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _same_optimizer(a: dict, b: dict) -> bool:
    return (
        all(_same_weights(a["state"][i], b["state"][i]) for i in a["state"])
        and a["param_groups"] == b["param_groups"]
    )


@pytest.mark.parametrize("workers", ["0", "2"])
def test_resume_is_bit_identical(data, tmp_path, workers):
    assert _run(["train", *_args(data, tmp_path / "straight", "--num-epoch", "4", "--workers", workers)]) == 0
    assert _run(["train", *_args(data, tmp_path / "split", "--num-epoch", "2", "--workers", workers)]) == 0
    assert _run(["resume", str(tmp_path / "split" / "last.pth"), "--num-epoch", "4"]) == 0
    straight, split = _load(tmp_path / "straight" / "last.pth"), _load(tmp_path / "split" / "last.pth")
    assert straight["epoch"] == split["epoch"] == 4
    assert _same_weights(straight["state_dict"], split["state_dict"])
    assert _same_optimizer(straight["optimizer"], split["optimizer"])
    assert [r["train_loss"] for r in straight["history"]] == [r["train_loss"] for r in split["history"]]
    assert [r["psnr"] for r in straight["history"]] == [r["psnr"] for r in split["history"]]


def test_ema_is_saved_resumed_bit_for_bit_validated_and_used(data, tmp_path):
    ema = ["--ema", "0.9", "--num-epoch", "4"]
    assert _run(["train", *_args(data, tmp_path / "straight", *ema)]) == 0
    assert _run(["train", *_args(data, tmp_path / "split", "--ema", "0.9", "--num-epoch", "2")]) == 0
    assert _run(["resume", str(tmp_path / "split" / "last.pth"), "--num-epoch", "4"]) == 0
    straight, split = _load(tmp_path / "straight" / "last.pth"), _load(tmp_path / "split" / "last.pth")
    assert _same_weights(straight["ema_state_dict"], split["ema_state_dict"])
    assert _same_weights(straight["state_dict"], split["state_dict"])
    # the average lags the weights, and what was validated is the average
    assert not _same_weights(straight["ema_state_dict"], straight["state_dict"])
    model = load_model(straight)
    assert _same_weights(model.state_dict(), straight["ema_state_dict"])
    pairs = load_pairs(str(data["val"]), 3)
    upscaler = Upscaler(
        model=model, name="srcnn", scale=3, channels=3, device=torch.device("cpu"), tile=256, overlap=16
    )
    validated = sum(psnr(upscaler(p.lr), p.hr, shave=3).item() for p in pairs) / len(pairs)
    assert validated == pytest.approx(straight["history"][-1]["psnr"], abs=1e-9)
    # no --ema: no average; a bad decay is a one-line error
    assert _run(["train", *_args(data, tmp_path / "plain", "--num-epoch", "1")]) == 0
    assert _load(tmp_path / "plain" / "last.pth")["ema_state_dict"] is None
    assert _run(["train", *_args(data, tmp_path / "bad", "--ema", "1.5")]) == 2


def test_ema_resumes_from_the_saved_average_and_its_decay_can_change(data, tmp_path):
    out = tmp_path / "run"
    assert _run(["train", *_args(data, out, "--ema", "0.5", "--num-epoch", "1")]) == 0
    first = _load(out / "last.pth")["ema_state_dict"]
    assert _run(["resume", str(out / "last.pth"), "--num-epoch", "2"]) == 0
    resumed = _load(out / "last.pth")
    assert not _same_weights(first, resumed["ema_state_dict"])  # it moved on from the saved average
    assert _run(["resume", str(out / "last.pth"), "--num-epoch", "3", "--ema", "0.99"]) == 0
    assert _load(out / "last.pth")["args"]["ema"] == 0.99


def test_ship_keeps_what_the_model_computes_without_the_training_copies(data, tmp_path, capsys):
    out, folder = tmp_path / "run", tmp_path / "published"
    assert _run(["train", *_args(data, out, "--ema", "0.9", "--num-epoch", "2")]) == 0
    folder.mkdir()
    run_file, model_file = out / "last.pth", folder / "model.pth"
    assert _run(["ship", str(run_file), str(model_file)]) == 0
    run, model = load_checkpoint(run_file), load_checkpoint(model_file)
    assert model["ema_state_dict"] is None and model["optimizer"]["state"] == {}
    assert _same_weights(model["state_dict"], run["ema_state_dict"])  # the validated weights
    assert model["history"] == run["history"] and model["args"] == run["args"]
    assert model_file.stat().st_size < run_file.stat().st_size / 3
    lr = torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        assert torch.equal(load_model(run)(lr), load_model(model)(lr))
    before = model_file.read_bytes()
    assert _run(["ship", str(run_file), str(model_file)]) == 2  # never replaced without --overwrite
    assert "--overwrite" in capsys.readouterr().err and model_file.read_bytes() == before
    assert _run(["ship", str(tmp_path / "missing.pth"), str(folder / "other.pth")]) == 2
    assert not (folder / "other.pth").exists()
    # a shipped model resumes with a fresh Adam, from the weights it was validated with
    assert _run(["resume", str(model_file), "--num-epoch", "3"]) == 0
    assert _load(folder / "last.pth")["epoch"] == 3


def test_checkpoint_contents_and_files(data, tmp_path):
    out = tmp_path / "run"
    assert _run(["train", *_args(data, out, "--num-epoch", "3", "--save-freq", "2")]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == [".lock", "best.pth", "epoch-0002.pth", "history.csv", "last.pth"]
    ckpt = _load(out / "last.pth")
    for key in ("model", "state_dict", "optimizer", "args", "epoch", "history", "best_psnr", "rng"):
        assert key in ckpt, key
    assert ckpt["model"] == {"name": "srcnn", "scale": 3, "options": {}}
    assert set(ckpt["rng"]) == {"torch", "cuda", "numpy", "python"}
    row = ckpt["history"][-1]
    for key in ("train_loss", "psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "lr", "seconds"):
        assert row[key] is not None, key
    assert ckpt["best_psnr"] == max(r["psnr"] for r in ckpt["history"])
    assert _load(out / "best.pth")["best_psnr"] == ckpt["best_psnr"]
    lines = (out / "history.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,psnr") and len(lines) == 4


def test_small_images_are_refused_or_skipped_as_asked(data, tmp_path, capsys):
    train = smooth_image_folder(tmp_path / "mixed", 3, 48, seed=2)
    for path in smooth_image_folder(tmp_path / "small", 2, 24, seed=3).iterdir():
        path.rename(train / f"small_{path.name}")
    mixed = {**data, "train": train}
    argv = ["train", *_args(mixed, tmp_path / "refused", "--num-epoch", "1", "--patch-size", "36")]
    assert _run(argv) == 2
    assert "smaller than the 36px patch: small_img0, small_img1" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    argv = ["train", *_args(mixed, tmp_path / "run", "--num-epoch", "1", "--patch-size", "36"), "--no-quiet"]
    assert _run([*argv, "--small-images", "skip"]) == 0
    assert "3 images (2 smaller than the 36 px patch left out), 24 patches/epoch" in capsys.readouterr().out
    assert _load(tmp_path / "run" / "last.pth")["args"]["small_images"] == "skip"


def test_scale_augmentation_is_recorded_and_grows_the_epoch(data, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", *_args(data, out, "--num-epoch", "1", "--train-scales", "1,0.5"), "--no-quiet"]
    assert _run(argv) == 0
    assert "12 images, 96 patches/epoch" in capsys.readouterr().out  # 6 images + 6 at half size
    assert _load(out / "last.pth")["args"]["train_scales"] == [1.0, 0.5]
    assert _run(["inspect", str(out / "last.pth")]) == 0
    assert "at scales 1,0.5 (8 patches" in capsys.readouterr().out  # inspect names the augmentation


def test_loss_border_leaves_the_patch_edges_out_of_the_loss(data):
    config = TrainConfig(train_data=str(data["train"]), val_data=str(data["val"]), patch_size=12)
    net = build_model("srcnn", 3)
    runtime = Runtime(torch.device("cpu"))
    lr, hr = (
        torch.stack(t)
        for t in zip(*(single_image_task(config, net, runtime, False).dataset[i] for i in range(4)))
    )
    edited = hr.clone()
    edited[..., :3, :] = edited[..., -3:, :] = edited[..., :, :3] = edited[..., :, -3:] = 0.5
    losses = {}
    for border in (0, 3):
        step_loss = single_image_task(config.replace(loss_border=border), net, runtime, False).step_loss
        losses[border] = [step_loss(net, [lr, target], 1).item() for target in (hr, edited)]
    with torch.no_grad():
        inner = F.mse_loss(net(lr)[..., 3:9, 3:9], hr[..., 3:9, 3:9]).item()
    assert losses[3][0] == losses[3][1] == pytest.approx(inner, rel=1e-6)  # the edges do not count
    assert losses[0][0] != losses[0][1]  # without a border they do


def test_resume_overrides_and_reports_them(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(["train", *_args(data, out, "--num-epoch", "1")]) == 0
    capsys.readouterr()
    assert _run(["resume", str(out / "last.pth"), "--batch-size", "4", "--num-epoch", "2"]) == 0
    printed = capsys.readouterr().out
    assert "override batch_size: 8 -> 4" in printed and "override num_epoch: 1 -> 2" in printed
    ckpt = _load(out / "last.pth")
    assert ckpt["args"]["batch_size"] == 4 and ckpt["args"]["lr"] == 1e-3  # saved value reused
    assert _run(["resume", str(out / "last.pth"), "--num-epoch", "2"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert _run(["resume", str(out / "last.pth"), "--model-option", "f2=5"]) == 2
    assert "cannot change on resume" in capsys.readouterr().err


def test_cuda_checkpoint_resumes_on_cpu_with_no_cuda(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(["train", *_args(data, out, "--num-epoch", "1")]) == 0
    ckpt = _load(out / "last.pth")
    ckpt["args"]["cuda"] = True  # as if trained on a GPU
    torch.save(ckpt, out / "gpu.pth")
    assert _run(["resume", str(out / "gpu.pth"), "--num-epoch", "2", "--no-cuda"]) == 0
    assert "override cuda: True -> False" in capsys.readouterr().out


def test_unsafe_checkpoint_is_refused_without_running_its_code(tmp_path, capsys):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    torch.save({"format": "srkit-checkpoint", "payload": Payload()}, evil)
    for command in ("resume", "inspect"):
        assert _run([command, str(evil)]) == 2
        err = capsys.readouterr().err
        assert "refused" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_bad_input_is_one_line_and_status_2(data, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    bare = tmp_path / "bare.pth"
    torch.save({"weight": torch.zeros(3)}, bare)
    cases = {
        "unknown model": ["train", *_args(data, tmp_path / "o1", "--model", "nope")],
        "batch size": ["train", *_args(data, tmp_path / "o2", "--batch-size", "0")],
        "scale factor": ["train", *_args(data, tmp_path / "o5", "--train-scales", "1,1.5")],
        "loss border": ["train", *_args(data, tmp_path / "o7", "--loss-border", "6")],  # 12 px patches
        "loss border for bursts": [
            "train",
            *_args(data, tmp_path / "o8", "--model", "piunet", "--loss-border", "1"),
        ],
        "scales for bursts": [
            "train",
            *_args(data, tmp_path / "o6", "--model", "piunet", "--train-scales", "1,0.5"),
        ],
        "unwritable out-dir": ["train", *_args(data, blocker / "sub")],
        "no images": ["train", *_args(data, tmp_path / "o3"), "--train-data", str(tmp_path / "empty")],
        "perceptual weights": [
            "train",
            *_args(
                data,
                tmp_path / "o4",
                "--loss",
                "perceptual",
                "--perceptual-weights",
                str(tmp_path / "no-vgg.pth"),
            ),
        ],
        "missing checkpoint": ["resume", str(tmp_path / "missing.pth")],
        "corrupt checkpoint": ["inspect", str(corrupt)],
        "foreign checkpoint": ["resume", str(bare)],
    }
    for kind, argv in cases.items():
        parse_error = kind in ("unknown model", "scale factor")
        with pytest.raises(SystemExit) if parse_error else _nothing() as exit_info:
            status = _run(argv)
        if exit_info is not None:
            status = exit_info.value.code
        err = capsys.readouterr().err
        assert status == 2, kind
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (kind, err)
    assert not list(tmp_path.rglob("*.pth.*")) and not list(tmp_path.glob("o*/*.pth"))


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_flag_without_cuda_is_a_clear_error(data, tmp_path, capsys):
    assert _run(["train", *_args(data, tmp_path / "run", "--cuda")]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert _run(["train", *_args(data, out, "--num-epoch", "1")]) == 0
    good = (out / "last.pth").read_bytes()
    calls = {"n": 0}
    mse = LOSSES["mse"]

    def poisoned(sr, hr):
        calls["n"] += 1
        loss = mse(sr, hr)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setitem(LOSSES, "mse", poisoned)
    assert _run(["resume", str(out / "last.pth"), "--num-epoch", "3"]) == 1
    err = capsys.readouterr().err
    assert "epoch 2, step 3" in err and "nan" in err
    assert (out / "last.pth").read_bytes() == good


def test_inspect_text_json_and_plot(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(["train", *_args(data, out, "--num-epoch", "2")]) == 0
    capsys.readouterr()
    assert _run(["inspect", str(out / "last.pth")]) == 0
    text = capsys.readouterr().out
    assert "srcnn x3" in text and "20,099 parameters" in text and "epochs     2 of 2" in text
    assert "best PSNR" in text and "last PSNR" in text and "time " in text and "--all" in text
    assert "arguments" not in text and "\n    1 " not in text  # a summary: no per-epoch rows
    assert "to go" not in text  # finished
    assert _run(["inspect", str(out / "last.pth"), "--all"]) == 0
    full = capsys.readouterr().out
    assert full.startswith(text.rsplit("\n(", 1)[0]) and "arguments" in full
    assert "\n    1 " in full and "\n    2 " in full  # every epoch
    history = train.describe(load_checkpoint(out / "last.pth"))["history"]
    first, second = (train.validation_of(row)[0] for row in history)
    assert _run(["inspect", str(out / "last.pth"), "--reach", f"{min(first, second) - 0.01}"]) == 0
    seconds = history[0]["seconds"]  # reached at the first epoch: its time alone
    assert f"at epoch 1 ({first:.3f}), after {seconds:,.0f} s" in capsys.readouterr().out
    assert _run(["inspect", str(out / "last.pth"), "--reach", f"{max(first, second) + 1}"]) == 0
    assert f"not in 2 epochs (best {max(first, second):.3f} dB)" in capsys.readouterr().out
    assert _run(["inspect", str(out / "last.pth"), "--json", "--plot", str(tmp_path / "curves.png")]) == 0
    info = json.loads(capsys.readouterr().out)
    for key in ("model", "scale", "epoch", "params", "args", "history", "best_psnr"):
        assert key in info
    assert info["params"] == 20099 and info["epoch"] == 2 and len(info["history"]) == 2
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_inspect_estimates_the_time_left_from_the_recent_pace(data, tmp_path):
    out = tmp_path / "run"
    assert _run(["train", *_args(data, out, "--num-epoch", "2")]) == 0
    info = train.describe(load_checkpoint(out / "last.pth"))
    info["args"]["num_epoch"] = 102
    for row, seconds in zip(info["history"], (30.0, 90.0)):
        row["seconds"] = seconds
    expected = (
        "to go      100 epochs, about 1.7 h at the recent pace (60 s an epoch, the median of the last 2)"
    )
    assert train.time_to_go(info) == expected
    assert train.time_to_go(info) in train.summary(info)
    assert "about 2.5 h at the recent pace (90 s an epoch, the median of the last 1)" in train.time_to_go(
        info, 1
    )
    info["history"].append({**info["history"][-1], "seconds": 900.0})  # one slow epoch barely moves it
    info["epoch"], info["args"]["num_epoch"] = 3, 13
    assert "10 epochs, about 15 min at the recent pace (90 s an epoch" in train.time_to_go(info)
    info["epoch"] = 13
    assert train.time_to_go(info) is None
    info["epoch"], info["args"]["num_epoch"] = 3, None  # no planned length recorded: nothing to estimate
    assert train.time_to_go(info) is None


def test_device_option(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(["train", *_args(data, out, "--num-epoch", "1", "--device", "cpu")]) == 0
    assert torch.load(out / "last.pth", weights_only=True)["args"]["device"] == "cpu"
    cases = [["--device", "tpu"], ["--device", "cuda:x"], ["--device", "cpu", "--cuda"]]
    if not torch.cuda.is_available():
        cases += [["--device", "cuda"], ["--device", "cuda:3"]]
    for extra in cases:
        capsys.readouterr()
        assert _run(["train", *_args(data, tmp_path / "bad", *extra)]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("--device" in err or "--cuda" in err), err
        assert not (tmp_path / "bad" / "last.pth").exists()


def test_help_states_each_default_once(capsys):
    with pytest.raises(SystemExit):
        train.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: None)" not in text and "(default: [])" not in text
    assert text.count("(default: download them)") == 1 and "download them) (default" not in text
    assert "(default: 3)" in text  # real defaults are still shown


def _start(argv: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *argv],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _wait_until_training(proc: subprocess.Popen) -> None:
    """Read stdout up to the line train.py prints just before its first step."""
    for line in proc.stdout:
        if line.startswith("training "):
            return
    raise AssertionError(f"training did not start: {proc.communicate()}")


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.05)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_mid_epoch_and_resume_matches_straight_run(data, tmp_path, signum, status):
    # long epochs (many small steps) so that the signal lands inside one
    argv = _args(
        data, tmp_path / "stopped", "--num-epoch", "2", "--patches-per-image", "200", "--batch-size", "4"
    )
    proc = _start(["train", *argv], tmp_path)
    _wait_for(tmp_path / "stopped" / "history.csv", proc)  # epoch 1 done, epoch 2 running
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    assert "resume with: python train.py resume" in out
    stopped = _load(tmp_path / "stopped" / "last.pth")
    assert stopped["epoch"] == 1 and stopped["in_epoch"]["batches"] > 0
    assert _run(["resume", str(tmp_path / "stopped" / "last.pth")]) == 0
    straight = _args(
        data, tmp_path / "straight", "--num-epoch", "2", "--patches-per-image", "200", "--batch-size", "4"
    )
    assert _run(["train", *straight]) == 0
    a, b = _load(tmp_path / "stopped" / "last.pth"), _load(tmp_path / "straight" / "last.pth")
    assert _same_weights(a["state_dict"], b["state_dict"])
    assert a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]
    # inside an interrupted epoch the batch size is fixed (a new one would skip or repeat data)
    mid = _load(tmp_path / "stopped" / "last.pth")
    mid["epoch"], mid["in_epoch"] = stopped["epoch"], stopped["in_epoch"]
    torch.save(mid, tmp_path / "mid.pth")
    assert _run(["resume", str(tmp_path / "mid.pth"), "--batch-size", "8"]) == 2


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_workers_still_saves(data, tmp_path):
    # `pkill -f train.py` or `kill -- -PGID` reaches the DataLoader workers too; a worker that
    # died first used to make the main process fail with a traceback and nothing saved
    argv = _args(data, tmp_path / "run", "--num-epoch", "2", "--patches-per-image", "200",
                 "--batch-size", "64", "--patch-size", "24", "--model", "vdsr", "--workers", "1")  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "train", *argv],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    _wait_for(tmp_path / "run" / "history.csv", proc)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in err, err
    stopped = _load(tmp_path / "run" / "last.pth")
    assert stopped["epoch"] == 1 and stopped["in_epoch"]["batches"] > 0


@pytest.mark.slow
def test_sigkill_never_leaves_a_broken_checkpoint(data, tmp_path):
    out = tmp_path / "run"
    argv = _args(
        data,
        out,
        "--num-epoch",
        "1000",
        "--patches-per-image",
        "2",
        "--batch-size",
        "4",
        "--val-freq",
        "1000",
    )
    rng = random.Random(0)
    epochs_seen = []
    for attempt in range(6):
        command = ["train", *argv] if attempt == 0 else ["resume", str(out / "last.pth")]
        proc = _start(command, tmp_path)
        _wait_until_training(proc)
        time.sleep(rng.uniform(0.2, 1.5))  # epochs take ~0.1 s: kills land during saves too
        proc.kill()
        proc.wait()
        for path in out.glob("*.pth"):
            ckpt = _load(path)  # raises if truncated or unreadable
            assert ckpt["epoch"] >= 1
        epochs_seen.append(_load(out / "last.pth")["epoch"])
    assert epochs_seen == sorted(epochs_seen) and epochs_seen[-1] > epochs_seen[0]  # resume made progress


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(data, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "ddp"
    base = [
        str(torchrun),
        "--nproc_per_node=2",
        "--master_port",
        str(29500 + os.getpid() % 1000),
        str(ROOT / "train.py"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*base, "train", *_args(data, out, "--num-epoch", "1")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("epoch 1/1") == 1  # only rank 0 logs
    ckpt = _load(out / "last.pth")
    assert ckpt["epoch"] == 1 and ckpt["history"][0]["psnr"] is not None
    assert all(not k.startswith("module.") for k in ckpt["state_dict"])
    again = subprocess.run(
        [*base, "resume", str(out / "last.pth"), "--num-epoch", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert _load(out / "last.pth")["epoch"] == 2


def test_temporary_files_never_look_like_checkpoints_or_images(tmp_path):
    from utils import atomic_write

    for name in ("last.pth", "out.png", "model.onnx"):
        with atomic_write(tmp_path / name) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.suffix == ".tmp"
            tmp.write_bytes(b"x")
        assert (tmp_path / name).read_bytes() == b"x" and not tmp.exists()


def test_init_from_takes_the_matching_weights_of_another_scale(data, tmp_path, capsys):
    x2 = ["--model", "edsr", "--model-option", "preset=tiny", "--scale", "2", "--num-epoch", "1"]
    assert _run(["train", *_args(data, tmp_path / "x2", *x2, "--ema", "0.5")]) == 0
    source = _load(tmp_path / "x2" / "last.pth")
    x3 = ["--model", "edsr", "--model-option", "preset=tiny", "--num-epoch", "1", "--lr", "1e-12"]
    assert (
        _run(["train", *_args(data, tmp_path / "x3", *x3, "--init-from", str(tmp_path / "x2" / "last.pth"))])
        == 0
    )
    assert "new: upsample" in capsys.readouterr().out
    started = _load(tmp_path / "x3" / "last.pth")["state_dict"]
    for name, value in source["ema_state_dict"].items():  # the average is what is taken
        if name.startswith(("head", "body", "tail")):
            torch.testing.assert_close(started[name], value, atol=1e-8, rtol=0)  # lr 1e-12: barely moved
    assert started["upsample.0.weight"].shape != source["state_dict"]["upsample.0.weight"].shape
    srcnn = ["--model", "srcnn", "--num-epoch", "1", "--init-from", str(tmp_path / "x2" / "last.pth")]
    assert _run(["train", *_args(data, tmp_path / "bad", *srcnn)]) == 2
    assert "no weight of edsr fits SRCNN" in capsys.readouterr().err
    assert (
        _run(["train", *_args(data, tmp_path / "gone", *x3, "--init-from", str(tmp_path / "none.pth"))]) == 2
    )


def test_checkpoints_carry_a_format_version_checked_on_load(data, tmp_path, capsys):
    from checkpoint import CHECKPOINT_VERSION, load_checkpoint

    out = tmp_path / "run"
    assert _run(["train", *_args(data, out, "--num-epoch", "1")]) == 0
    checkpoint = _load(out / "last.pth")
    assert checkpoint["version"] == CHECKPOINT_VERSION
    unversioned = {k: v for k, v in checkpoint.items() if k != "version"}  # files from before versions
    torch.save(unversioned, tmp_path / "old.pth")
    assert load_checkpoint(tmp_path / "old.pth")["epoch"] == 1
    torch.save({**checkpoint, "version": CHECKPOINT_VERSION + 1}, tmp_path / "future.pth")
    png = tmp_path / "photo.pth"
    save_image(torch.rand(3, 8, 8), tmp_path / "photo.png")
    png.write_bytes((tmp_path / "photo.png").read_bytes())
    (tmp_path / "empty.pth").write_bytes(b"")
    for name, words in (("future.pth", "format version 2"), ("photo.pth", "not a checkpoint file (it looks "
                        "like a PNG image)"), ("empty.pth", "empty file")):  # fmt: skip
        assert _run(["inspect", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and words in err, err


def test_tensorboard_logs_losses_validation_lr_and_an_image(data, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = tmp_path / "board"
    args = _args(data, tmp_path / "run", "--num-epoch", "2", "--val-freq", "1", "--tensorboard", str(board))
    assert _run(["train", *args]) == 0
    events = EventAccumulator(str(board), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("train/loss", "train/lr", "validation/psnr", "validation/ssim", "validation/bicubic_psnr"):
        assert [e.step for e in events.Scalars(tag)] == [1, 2], tag
    history = _load(tmp_path / "run" / "last.pth")["history"]
    assert events.Scalars("validation/psnr")[1].value == pytest.approx(history[1]["psnr"], rel=1e-6)
    assert events.Scalars("train/loss")[0].value == pytest.approx(history[0]["train_loss"], rel=1e-6)
    assert tags["images"] == ["validation/PSNR_example"]
    assert len(events.Images("validation/PSNR_example")) == 2


def test_tensorboard_bad_folder_or_missing_package_is_one_line(data, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    cases = [(["--tensorboard", str(tmp_path / "file")], "not a folder")]
    for extra, message in cases:
        assert _run(["train", *_args(data, tmp_path / "run", *extra)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    assert _run(["train", *_args(data, tmp_path / "run", "--tensorboard", str(tmp_path / "tb"))]) == 2
    err = capsys.readouterr().err.strip()
    assert "requirements-tensorboard.txt" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "last.pth").exists() and not (tmp_path / "tb").exists()
