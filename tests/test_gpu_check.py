"""gpu_check.py: the dry run of the GPU visit (every step on the CPU, tiny), so it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gpu_check
import numpy as np
import pytest
import torch
from conftest import smooth_image_folder

ROOT = Path(__file__).resolve().parents[1]


def _inspect(checkpoint: Path) -> str:
    """`train.py inspect --json` of a checkpoint (it must succeed)."""
    info = subprocess.run(
        [sys.executable, "train.py", "inspect", str(checkpoint), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert info.returncode == 0, info.stderr
    return info.stdout


def _gpu_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gpu_check.py"), "run", "--dry-run", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """One whole dry run on tiny folders."""
    root = tmp_path_factory.mktemp("gpu_check")
    train = smooth_image_folder(root / "train", 4, 66, seed=0)
    val = smooth_image_folder(root / "val", 2, 48, seed=1)
    out = root / "out"
    done = _gpu_check("--out", str(out), "--train-data", str(train), "--val-data", str(val))
    return done, out


@pytest.mark.slow
def test_dry_run_passes_every_step_and_writes_its_summary(dry_run):
    done, out = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] and summary["failed"] == []
    assert list(summary["checks"]) == list(gpu_check.STEPS)
    checks = summary["checks"]
    assert checks["tests"]["tests collected"] > 0  # the CUDA tests are found by the selection
    log = (out / "gpu_check.log").read_text()
    assert "tests/test_model.py::test_cuda_matches_cpu" in log
    assert "tests/test_gpu_check.py::" not in log  # its own dry runs would eat the step's time
    assert checks["train"]["amp"]["epochs"] == checks["train"]["no-amp"]["epochs"] == 4
    assert checks["sr"]["gpu_fp32"]["max_level_diff"] == 0  # on the CPU the "GPU" run is the same run
    assert {row["section"] for row in checks["bench"]["rows"]} >= {"ceiling", "inference", "training"}
    assert all(figures["finite_grads"] for key, figures in checks["piunet"].items() if "x9x" in key)
    assert checks["run"]["files"] == ["gpu_run_last.pth"]
    assert sorted(path.name for path in out.iterdir() if path.is_file()) == [
        "gpu_check.log",
        "gpu_run_last.pth",
        "summary.json",
    ]


@pytest.mark.slow
def test_returned_checkpoint_resumes_on_the_cpu(dry_run, tmp_path):
    _, out = dry_run
    checkpoint = tmp_path / "last.pth"
    checkpoint.write_bytes((out / "gpu_run_last.pth").read_bytes())
    assert json.loads(_inspect(checkpoint))["model"] == "edsr"


@pytest.mark.slow
def test_the_closing_run_can_continue_a_checkpoint_until_the_budget_is_spent(dry_run, tmp_path):
    _, out = dry_run
    train = smooth_image_folder(tmp_path / "train", 4, 66, seed=2)
    done = _gpu_check(
        "--out", str(tmp_path / "out"), "--steps", "run", "--budget", "70",
        "--resume", str(out / "gpu_run_last.pth"), "--run-data", str(train), "--val-data", str(train),
        "--run-option", "--lr 1e-4", "--also", "train --model edsr --scale 3",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    run = json.loads((tmp_path / "out" / "summary.json").read_text())["checks"]["run"]
    assert run["status"] in (0, 143) and run["epochs"] > 1  # went on past the returned epoch 1
    assert "override lr: 0.0003 -> 0.0001" in (tmp_path / "out" / "gpu_check.log").read_text()
    beside = run["gpu_run2"]  # the --also run, trained side by side and returned
    assert beside["passed"] and beside["files"] == ["gpu_run2_last.pth"]
    assert json.loads(_inspect(tmp_path / "out" / "gpu_run2_last.pth"))["scale"] == 3


@pytest.mark.slow
def test_a_failing_step_fails_the_visit_and_is_named(tmp_path):
    done = _gpu_check("--out", str(tmp_path), "--steps", "sr", "--val-data", str(tmp_path / "missing"))
    assert done.returncode == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failed"] == ["sr"] and "exited 2" in summary["checks"]["sr"]["error"]


def test_large_files_come_back_in_parts_that_join(tmp_path):
    source = tmp_path / "big.pth"
    data = np.random.default_rng(0).integers(0, 256, gpu_check.PART_BYTES * 2 + 5, dtype=np.uint8).tobytes()
    source.write_bytes(data)
    names = gpu_check._copy_in_parts(source, tmp_path / "back.pth")
    assert names == ["back.pth.part0", "back.pth.part1", "back.pth.part2"]
    assert all((tmp_path / name).stat().st_size <= gpu_check.PART_BYTES for name in names)
    assert b"".join((tmp_path / name).read_bytes() for name in names) == data


def test_pytest_closing_lines_are_counted():
    assert gpu_check._pytest_counts("x\n8 passed, 1 skipped, 189 deselected, 8 warnings in 4.50s") == {
        "passed": 8,
        "skipped": 1,
        "deselected": 189,
        "warnings": 8,
    }
    assert gpu_check._pytest_counts("9/198 tests collected (189 deselected) in 0.69s") == {
        "tests collected": 9
    }
    assert gpu_check._pytest_counts("===== 1 failed, 2 passed in 3.1s =====") == {"failed": 1, "passed": 2}


def test_pack_stores_the_training_images_losslessly_and_stops_at_the_limit(tmp_path, monkeypatch):
    from PIL import Image

    root = tmp_path / "data"
    smooth_image_folder(root / "T91", 2, 40, seed=1)
    for image in smooth_image_folder(root / "BSD200", 3, 60, seed=2).iterdir():
        image.rename(image.with_name("bsd_" + image.name))
    gray = np.arange(30 * 50, dtype=np.uint8).reshape(30, 50)
    Image.fromarray(gray).save(root / "T91" / "gray.bmp")
    for name in ("Set5", "PROBAV-sample", "reference"):
        smooth_image_folder(root / name, 1, 24, seed=3)
    monkeypatch.setenv("SR_DATA_ROOT", str(root))
    monkeypatch.setenv("SR_REFERENCE_DIR", str(root / "reference"))
    pack = tmp_path / "pack"
    init = ROOT / "checkpoints" / "srcnn_x3.pth"
    assert gpu_check.pack_data(10_000, folder=pack, init=str(init)) == 0
    sources = sorted((root / "T91").iterdir()) + sorted((root / "BSD200").iterdir())
    packed = {p.stem: p for p in (pack / "train").iterdir()}
    assert sorted(packed) == sorted(p.stem for p in sources)
    for source in sources:
        assert np.array_equal(np.asarray(Image.open(packed[source.stem])), np.asarray(Image.open(source)))
    assert {p.stem for p in packed.values() if p.suffix != ".webp"} == {"gray"}  # WebP has no gray: PNG
    assert (pack / "reference").is_dir() and (pack / "datasets" / "PROBAV-sample").is_dir()
    original, stripped = (torch.load(p, weights_only=True) for p in (init, pack / "init" / init.name))
    assert stripped["optimizer"]["state"] == {} and stripped["epoch"] == original["epoch"]
    assert all(torch.equal(stripped["state_dict"][k], v) for k, v in original["state_dict"].items())

    assert gpu_check.pack_data(10_000, folder=pack, run_only=True) == 0
    assert not (pack / "reference").exists() and not (pack / "datasets" / "PROBAV-sample").exists()
    limit = (gpu_check._tree_bytes(pack) - 1) / 2**20  # one byte short of room for the last image
    assert gpu_check.pack_data(limit, folder=pack, run_only=True) == 0
    assert sorted(p.stem for p in (pack / "train").iterdir()) == sorted(p.stem for p in sources[:-1])
