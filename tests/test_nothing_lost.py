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
from conftest import smooth_image_folder
from PIL import Image

import super_resolve
import train
from utils import FolderLock, run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {"train": smooth_image_folder(root / "train", 4, 48, seed=0),
            "val": smooth_image_folder(root / "val", 2, 36, seed=1)}  # fmt: skip


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


@pytest.mark.slow
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


def _first(weights: dict) -> str:
    return next(iter(weights))


def _set(path: str, value):
    """A spoiler that sets one (dotted) key, or deletes it when value is DELETE."""

    def spoil(checkpoint: dict) -> None:
        *outer, last = path.split(".")
        inner = checkpoint
        for key in outer:
            inner = inner[int(key) if isinstance(inner, list) else key]
        if value is DELETE:
            del inner[last]
        else:
            key = int(last) if isinstance(inner, list) else last
            inner[key] = value(inner[key]) if callable(value) else value  # a callable: of the old value

    return spoil


DELETE = object()
# Each spoils a trained checkpoint one way; each still loads safely (only tensors and plain types).
# The [16] N5 cases are marked; every reader (resume, inspect, export, super_resolve, the API) must
# refuse each in one line before anything else happens.
SPOILED = {
    "wrong shape": lambda c: c["state_dict"].update({_first(c["state_dict"]): torch.zeros(2, 2)}),
    "unknown model": _set("model.name", "nope"),
    "empty weights": _set("state_dict", {}),
    "scale 0": _set("model.scale", 0),
    "scale -3": _set("model.scale", -3),
    "scale 1000": _set("model.scale", 1000),
    "nan weights": lambda c: c["state_dict"].update({_first(c["state_dict"]): torch.tensor(float("nan"))}),
    "args a string": _set("args", "lr=1"),  # N5
    "epoch a string": _set("epoch", "3"),  # N5
    "wrong optimizer": _set("optimizer", {"state": {}, "param_groups": []}),
    "empty rng": _set("rng", {}),
    "best NaN": _set("best_psnr", float("nan")),  # N9
    "history a string": _set("history", "x"),  # N5
    "history of numbers": _set("history", [1, 2, 3]),  # N5
    "history row without epoch": lambda c: c["history"][0].pop("epoch"),  # N5
    "model a list": _set("model", ["srcnn", 3]),  # N5
    "no model key": _set("model", DELETE),  # N5
    "options a string": _set("model.options", "f2=5"),  # N5
    "num_epoch a string": _set("args.num_epoch", "3"),  # N5
    "ema a string": _set("args.ema", "0.999"),  # N5
    "best_psnr text": _set("best_psnr", "high"),  # N5
    "in_epoch a string": _set("in_epoch", "x"),  # N5
    "sparse weights": lambda c: c["state_dict"].update(
        {_first(c["state_dict"]): c["state_dict"][_first(c["state_dict"])].to_sparse()}
    ),  # N5
    "optimizer moments of another shape": lambda c: c["optimizer"]["state"][0].update(
        {"exp_avg": torch.zeros(3)}
    ),  # N5
    "average weights of another model": _set("ema_state_dict", {"w": torch.zeros(1)}),
    "kind that is not the model's": _set("kind", "multi-frame"),
    "settings of another model": _set("args.model", "edsr"),
    "no rng (half a training state)": _set("rng", DELETE),
    "unknown key": _set("payload", "x"),
    "rng state out of range": _set("rng.python.internal", lambda internal: [2**40] * 625),
    # found by tests/test_fuzz.py
    "no model options": _set("model.options", DELETE),
    "Adam moments without their step": lambda c: c["optimizer"]["state"][0].pop("step"),
    "history row with half its scores": lambda c: c["history"][0].pop("ssim"),
    "a setting holding a tensor": _set("args.model", torch.full((2, 2), float("nan"))),
    "a CPU generator state one byte short": _set("rng.torch", lambda state: state[:-1]),
}
FORMAT_ONLY = "format-only dict"  # N5: a dict with nothing but the format key


def _spoiled(checkpoint_path: Path, case: str, target: Path) -> Path:
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    if case == FORMAT_ONLY:
        checkpoint = {"format": checkpoint["format"]}
    else:
        SPOILED[case](checkpoint)
    torch.save(checkpoint, target)
    return target


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    assert run_cli(train.main, _argv(data, out, "--num-epoch", "1")) == 0
    return out / "last.pth"


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")
@pytest.mark.parametrize("case", [*SPOILED, FORMAT_ONLY])
def test_malformed_checkpoints_are_refused_by_every_reader_in_one_line(trained, data, tmp_path, capsys, case):
    from srkit import SuperResolver
    from utils import UserError

    spoiled = _spoiled(trained, case, tmp_path / "spoiled.pth")
    before = spoiled.read_bytes()
    lr = data["val"] / "img0.png"
    commands = [
        (train.main, ["resume", str(spoiled), "--num-epoch", "2"]),
        (train.main, ["inspect", str(spoiled), "--plot", str(tmp_path / "curve.png")]),
        (train.main, ["export", str(spoiled), str(tmp_path / "model.onnx")]),
        (super_resolve.main, ["--checkpoint", str(spoiled), str(lr), "--out-dir", str(tmp_path / "sr")]),
    ]
    for main, argv in commands:  # in-process: an exception other than the one-line kind fails the test
        capsys.readouterr()
        assert run_cli(main, argv) == 2, (case, argv[:2])
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err and str(spoiled) in err, (case, err)
    with pytest.raises(UserError) as caught:
        SuperResolver(spoiled)
    assert "\n" not in str(caught.value)
    assert spoiled.read_bytes() == before
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["spoiled.pth"]  # nothing written anywhere


def test_an_interrupted_epoch_past_its_end_is_refused_by_resume(trained, tmp_path, capsys):
    # [16] N9: samples 1e9 trained an "epoch" of nothing at 1e11 patches/s; the epoch's size
    # depends on the data, so resume checks it once the data set is built
    checkpoint = torch.load(trained, map_location="cpu", weights_only=True)
    checkpoint["in_epoch"]["samples"] = 10**9
    torch.save(checkpoint, tmp_path / "spoiled.pth")
    assert run_cli(train.main, ["resume", str(tmp_path / "spoiled.pth"), "--num-epoch", "2"]) == 2
    assert "in_epoch.samples" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".lock") == ["spoiled.pth"]


def test_a_model_only_checkpoint_is_read_by_inference_and_inspect_not_resume(trained, data, tmp_path, capsys):
    checkpoint = torch.load(trained, map_location="cpu", weights_only=True)
    model_only = {key: checkpoint[key] for key in ("format", "version", "kind", "model", "state_dict")}
    torch.save(model_only, tmp_path / "model.pth")
    assert run_cli(train.main, ["inspect", str(tmp_path / "model.pth")]) == 0
    assert "none recorded" in capsys.readouterr().out
    lr = data["val"] / "img0.png"
    assert run_cli(super_resolve.main, ["--checkpoint", str(tmp_path / "model.pth"), str(lr),
                                        "--out-dir", str(tmp_path / "sr"), "--quiet"]) == 0  # fmt: skip
    assert run_cli(train.main, ["resume", str(tmp_path / "model.pth")]) == 2
    assert "no training state" in _one_line_error(capsys)


def _super_resolve(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "super_resolve.py", "--checkpoint", str(ROOT / "checkpoints" / "srcnn_x3.pth")]
    return subprocess.run([*command, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _photo(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.slow
def test_outputs_never_collide_nor_become_inputs(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    _photo(folder / "a.bmp", 0), _photo(folder / "a.png", 1), _photo(folder / "b.png", 2)
    done = _super_resolve(str(folder), "--quiet")
    assert done.returncode == 0, done.stderr
    outputs = sorted(path.name for path in folder.glob("*_srcnn_x3.png"))
    assert outputs == ["a_bmp_srcnn_x3.png", "a_png_srcnn_x3.png", "b_srcnn_x3.png"]  # none overwritten
    again = _super_resolve(str(folder), "--quiet", "--overwrite")  # the first run's outputs are not inputs
    assert again.returncode == 0 and again.stdout.count("wrote ") == 3, again.stdout
    assert not list(folder.glob("*_x3_*_x3.png"))


@pytest.mark.parametrize(
    "case", ["read-only output", "bicubic output is a folder", "compare in a missing folder"]
)
def test_outputs_are_checked_before_any_is_written(tmp_path, case):
    lr = _photo(tmp_path / "a.png", 0)
    extra = []
    if case == "read-only output":
        (tmp_path / "a_bicubic_x3.png").write_bytes(b"keep")
        (tmp_path / "a_bicubic_x3.png").chmod(0o444)
        extra = ["--overwrite"]  # even then a read-only file is not replaced
    elif case == "bicubic output is a folder":
        (tmp_path / "a_bicubic_x3.png").mkdir()
    else:
        extra = ["--compare", str(tmp_path / "missing" / "panel.png")]
    done = _super_resolve(str(lr), *extra)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "a_srcnn_x3.png").exists()  # the model output was not written first
    if case == "read-only output":
        assert (tmp_path / "a_bicubic_x3.png").read_bytes() == b"keep"


# Runs super_resolve.py in this process and prints its peak resident memory; with a limit in
# bytes as the first argument, first caps the address space at what is mapped now plus that.
_MEASURED = """
import resource, sys
import super_resolve, utils
if sys.argv[1] != "-":
    status = open("/proc/self/status").read().split("VmSize:")[1]
    mapped = int(status.split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mapped + int(sys.argv[1]), resource.RLIM_INFINITY))
status = utils.run_cli(super_resolve.main, sys.argv[2:])
print("peak", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
sys.exit(status)
"""


def _super_resolve_measured(limit: str, *args: str) -> tuple[subprocess.CompletedProcess, int]:
    command = [
        sys.executable,
        "-c",
        _MEASURED,
        limit,
        "--checkpoint",
        str(ROOT / "checkpoints" / "srcnn_x3.pth"),
    ]
    done = subprocess.run([*command, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    peaks = [int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("peak ")]
    return done, peaks[0] if peaks else -1


def _smooth_photo(path: Path, side: int) -> Path:
    x = np.linspace(0, 8, side)
    wave = 127 + 120 * np.sin(x[:, None] * x[None, :] / 3)[..., None] * np.array([1.0, 0.8, 0.6])
    Image.fromarray(wave.astype(np.uint8)).save(path)
    return path


@pytest.mark.slow
def test_inference_memory_is_the_tiles_plus_the_output_in_its_final_form(tmp_path):
    """Peak memory at two input sizes (same tiles): what the larger input adds is its output
    in 8 bits plus Pillow's copy while encoding and the input itself, as `check_memory`
    budgets; float copies of the whole output (4 bytes a sample each) would exceed it."""
    peaks, pixels = [], []
    for side in (200, 800):
        lr = _smooth_photo(tmp_path / f"lr{side}.png", side)
        done, peak = _super_resolve_measured("-", str(lr), "--tile", "64", "--quiet")
        assert done.returncode == 0, done.stderr
        output = Image.open(tmp_path / f"lr{side}_srcnn_x3.png")
        assert output.size == (3 * side, 3 * side) and output.mode == "RGB"
        peaks.append(peak)
        pixels.append(side * side)
    per_input_pixel = 3 * 2 + 3 * 4 + (3 + 4) * 9  # file + float32 input; 8-bit output + Pillow's copy
    budget = (pixels[1] - pixels[0]) * per_input_pixel  # 49 MB here
    grown = peaks[1] - peaks[0]
    assert grown < budget + 32 * 2**20, (
        f"peak grew by {grown / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB"
    )


def test_an_input_whose_output_will_not_fit_in_memory_is_refused_before_decoding(tmp_path):
    lr = _smooth_photo(tmp_path / "big.png", 2000)  # x3: 36 MP out, 108 MB in 8 bits, 432 MB as float
    done, _ = _super_resolve_measured(str(1200 * 2**20), str(lr), "--quiet")
    assert done.returncode == 2, done.stderr
    error = done.stderr.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error, error
    assert "2000x2000 at x3 needs about" in error and "split the image" in error, error
    assert not list(tmp_path.glob("big_*"))


@pytest.mark.parametrize(
    "failure", [MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory")]
)
def test_running_out_of_memory_is_one_line_and_status_2(capsys, failure):
    def main(argv):
        raise failure

    assert run_cli(main, []) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("error: out of memory"), error
    with pytest.raises(RuntimeError, match="a bug"):  # other runtime errors are not hidden as memory
        run_cli(lambda argv: (_ for _ in ()).throw(RuntimeError("a bug")), [])


def test_a_loss_that_is_nan_at_once_names_no_checkpoint_that_does_not_exist(
    data, tmp_path, monkeypatch, capsys
):
    from losses import LOSSES

    monkeypatch.setitem(LOSSES, "mse", lambda sr, hr: (sr - hr).pow(2).mean() * float("nan"))
    out = tmp_path / "run"
    assert run_cli(train.main, _argv(data, out, "--num-epoch", "1")) == 1
    err = capsys.readouterr().err
    assert "No checkpoint was written" in err and "last good" not in err
    assert not (out / "last.pth").exists()


def test_a_signal_during_the_last_validation_is_not_swallowed(data, tmp_path, monkeypatch):
    import signal

    import trainer

    write = trainer.write_history_csv

    def interrupted(*args, **kwargs):  # SIGINT arrives while the last epoch is being closed
        os.kill(os.getpid(), signal.SIGINT)
        return write(*args, **kwargs)

    monkeypatch.setattr(trainer, "write_history_csv", interrupted)
    out = tmp_path / "run"
    assert run_cli(train.main, _argv(data, out, "--num-epoch", "1")) == 130
    assert _epoch(out / "last.pth") == 1  # and everything was saved


def test_inspect_escapes_control_characters_from_a_checkpoint(data, tmp_path, capsys):
    from checkpoint import save_checkpoint

    out = tmp_path / "run"
    assert run_cli(train.main, _argv(data, out, "--num-epoch", "1")) == 0
    checkpoint = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    checkpoint["args"]["val_data"] = "\x1b[2J\x1b[31mSet5"  # clear screen, then red
    save_checkpoint(checkpoint, tmp_path / "odd.pth")
    capsys.readouterr()
    assert run_cli(train.main, ["inspect", str(tmp_path / "odd.pth")]) == 0
    text = capsys.readouterr().out
    assert "\x1b" not in text and "\\x1b[31mSet5" in text


def test_tiff_planar_rgb_reads_as_rgb_and_a_stack_is_refused(tmp_path):
    import tifffile

    from images import load_image
    from utils import ImageError

    rgb = np.random.default_rng(0).integers(0, 65536, (3, 10, 12), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "planar.tif", rgb, photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "contig.tif", np.moveaxis(rgb, 0, -1), photometric="rgb")
    planar, contig = load_image(tmp_path / "planar.tif"), load_image(tmp_path / "contig.tif")
    assert planar.shape == (3, 10, 12) and torch.equal(planar, contig)
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((2, 10, 12), dtype=np.uint8))  # two pages
    with pytest.raises(ImageError, match="2 pages"):
        load_image(tmp_path / "stack.tif")


KILLED_MID_WRITE = """
import os, signal, sys
import torch
import checkpoint
good = {"format": checkpoint.CHECKPOINT_FORMAT, "version": 1, "epoch": 1, "w": torch.ones(1000)}
checkpoint.save_checkpoint(good, sys.argv[1])
def dies_half_way(obj, f):  # writes part of the file, then the process is killed (as by kill -9)
    with open(f, "wb") as out:
        out.write(b"PK\\x03\\x04" + b"x" * 5000)
        out.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dies_half_way
checkpoint.save_checkpoint({**good, "epoch": 2}, sys.argv[1])
"""


def test_a_writer_killed_mid_checkpoint_leaves_the_previous_one_whole(tmp_path):
    # This fails if save_checkpoint wrote in place (torch.save straight to the final name): the
    # half-written bytes would then be the checkpoint. The kill lands inside the write every time.
    path = tmp_path / "last.pth"
    done = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(path)], cwd=ROOT, capture_output=True)
    assert done.returncode == -9, done.stderr
    assert torch.load(path, map_location="cpu", weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name != "last.pth"] != []  # the killed write's .tmp
    from utils import clear_stale_temporaries

    assert len(clear_stale_temporaries(tmp_path)) == 1 and [p.name for p in tmp_path.iterdir()] == [
        "last.pth"
    ]


@pytest.mark.parametrize(
    "schedule",
    [["--schedule", "cosine", "--warmup-epochs", "1"],
     ["--schedule", "step", "--lr-step", "1", "--lr-gamma", "0.5"],
     ["--grad-clip", "0.01"], ["--ema", "0.9"], ["--amp"],
     ["--registration", "both", "--amp", "--patch-size", "30"]],
    ids=["warmup-cosine", "step", "grad-clip", "ema", "bf16-cpu", "registration-bf16"],
)  # fmt: skip
def test_resume_is_bit_identical_under_schedules_clipping_average_and_bf16(data, tmp_path, schedule):
    # the same 3-epoch run twice: straight through, and resumed from its own epoch-1 file (the
    # schedule depends on --num-epoch, so the run must not be shortened to make the split)
    assert run_cli(train.main, _argv(data, tmp_path / "straight", "--num-epoch", "3", *schedule)) == 0
    first = tmp_path / "split" / "epoch-0001.pth"
    first.parent.mkdir()
    shutil.copy(tmp_path / "straight" / "epoch-0001.pth", first)
    assert run_cli(train.main, ["resume", str(first)]) == 0
    straight, split = (
        torch.load(tmp_path / name / "last.pth", map_location="cpu", weights_only=True)
        for name in ("straight", "split")
    )
    assert straight["epoch"] == split["epoch"] == 3
    for key in ("state_dict", "ema_state_dict"):
        a, b = straight.get(key) or {}, split.get(key) or {}
        assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a), key
    assert [row["lr"] for row in straight["history"]] == [row["lr"] for row in split["history"]]
    assert [row["train_loss"] for row in straight["history"]] == [
        row["train_loss"] for row in split["history"]
    ]
    assert len({row["lr"] for row in straight["history"]}) > 1 or "--schedule" not in schedule  # it varied


def _contents(folder: Path) -> dict[str, bytes]:
    """Every file of a folder and its bytes (the lock file aside)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


def test_a_new_run_never_replaces_another_runs_files(data, tmp_path, capsys):
    """[16] N1: a second `train` into a run's folder replaced its best, last and first epoch and
    its history, and left its other epoch files beside the new run's."""
    out = tmp_path / "run"
    assert run_cli(train.main, _argv(data, out, "--num-epoch", "3")) == 0
    before = _contents(out)
    capsys.readouterr()
    assert run_cli(train.main, _argv(data, out, "--num-epoch", "1")) == 2
    error = _one_line_error(capsys)
    assert "another run's files" in error and "--overwrite" in error and "resume" in error
    assert _contents(out) == before  # nothing replaced, nothing added
    assert run_cli(train.main, _argv(data, out, "--num-epoch", "1", "--overwrite")) == 0
    assert sorted(_contents(out)) == ["best.pth", "epoch-0001.pth", "history.csv", "last.pth"]
    assert _epoch(out / "last.pth") == 1
    assert run_cli(train.main, ["resume", str(out / "last.pth"), "--num-epoch", "2"]) == 0  # its own run


def test_export_never_replaces_a_file_unasked_nor_its_checkpoint(trained, tmp_path, capsys):
    """[16] N2: `export v.pth v.pth` turned the checkpoint into an ONNX file."""
    copy = tmp_path / "v.pth"
    copy.write_bytes(trained.read_bytes())
    assert run_cli(train.main, ["export", str(copy), str(copy)]) == 2
    assert "is an input of this command" in _one_line_error(capsys)
    assert run_cli(train.main, ["export", str(copy), str(copy), "--overwrite"]) == 2
    assert "is an input of this command" in _one_line_error(capsys)
    assert copy.read_bytes() == trained.read_bytes()
    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"someone's file")
    assert run_cli(train.main, ["export", str(copy), str(existing)]) == 2
    assert "--overwrite" in _one_line_error(capsys)
    assert existing.read_bytes() == b"someone's file"


def test_sigterm_while_writing_an_output_leaves_nothing_half_written(tmp_path):
    """[16] N7: SIGTERM mid-write left `.NAME.PID.tmp` files (super_resolve.py did not handle it)."""
    lr = _photo(tmp_path / "in.png", 0)
    code = (
        "import os, signal, sys\n"
        "import images, super_resolve, utils\n"
        "write = images._write_array\n"
        "def dying(*args):\n"
        "    write(*args)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)  # the temporary is whole, not yet renamed\n"
        "images._write_array = dying\n"
        "sys.exit(utils.run_cli(super_resolve.main, sys.argv[1:]))\n"
    )
    checkpoint = str(ROOT / "checkpoints" / "srcnn_x3.pth")
    command = [sys.executable, "-c", code, "--checkpoint", checkpoint, str(lr), "--quiet"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 143, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]  # no temporary, no output


def test_the_next_run_removes_a_killed_writers_temporary_of_its_output(tmp_path, capsys):
    """[16] N7: a writer killed by SIGKILL cannot clean up; the next run writing that output does."""
    import super_resolve

    lr = _photo(tmp_path / "in.png", 0)
    stale = tmp_path / ".in_srcnn_x3.png.999999999.tmp"  # no process has this PID
    stale.write_bytes(b"half an image")
    unrelated = tmp_path / ".notes.txt.999999999.tmp"
    unrelated.write_bytes(b"not ours")
    argv = ["--checkpoint", str(ROOT / "checkpoints" / "srcnn_x3.pth"), str(lr), "--quiet"]
    assert run_cli(super_resolve.main, argv) == 0
    assert not stale.exists() and (tmp_path / "in_srcnn_x3.png").is_file()
    assert unrelated.read_bytes() == b"not ours"  # only the temporaries of what this run writes


@pytest.mark.parametrize(
    ("model", "option"),
    [("srcnn", "f2=4"), ("srcnn", "in_channels=0"), ("edsr", "features=0"), ("edsr", "preset=huge"),
     ("srcnn", "bogus=1")],
)  # fmt: skip
def test_model_options_that_build_no_working_network_are_one_line(data, tmp_path, capsys, model, option):
    """[16] N6: these raised a RuntimeError or ValueError traceback from inside the network."""
    out = tmp_path / "run"
    argv = _argv(data, out, "--num-epoch", "1", "--model", model, "--model-option", option)
    assert run_cli(train.main, argv) == 2
    assert "bad --model-option" in _one_line_error(capsys)
    assert not out.exists()  # refused before anything is written


def test_plots_never_replace_a_file_unasked(trained, tmp_path, capsys):
    """[16] item 4: `inspect --plot` and `--fda-plot` replaced an existing file silently."""
    existing = tmp_path / "curves.png"
    existing.write_bytes(b"someone's file")
    assert run_cli(train.main, ["inspect", str(trained), "--plot", str(existing)]) == 2
    assert "--overwrite" in _one_line_error(capsys)
    argv = ["--checkpoint", str(ROOT / "checkpoints" / "srcnn_x3.pth"), "--dataset", "sample-test",
            "--fda-plot", str(existing), "--quiet"]  # fmt: skip
    assert run_cli(super_resolve.main, argv) == 2
    assert "--overwrite" in _one_line_error(capsys)
    assert existing.read_bytes() == b"someone's file"
    assert run_cli(train.main, ["inspect", str(trained), "--plot", str(existing), "--overwrite"]) == 0
    assert existing.read_bytes().startswith(b"\x89PNG")
