"""The shipped checkpoints: each loads with weights_only=True, was written by train.py,
stays small, beats its baseline on Set5 (at its scale) by the issue's margin, and reproduces the
figures recorded in checkpoints/results (from which checkpoints/README.md is written)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import info
import super_resolve
from utils import run_cli

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
RESULTS = CHECKPOINTS / "results"
MAX_BYTES = 20 * 2**20
MAX_FOLDER_BYTES = 40 * 2**20  # the whole folder: every user's download (train.py ship halves a file)

# shipped file -> (metric of its results, least gain over the baseline on Set5 at its scale in dB)
SHIPPED = {
    "srcnn_x3.pth": ("psnr", 1.5),
    "edsr_x2.pth": ("psnr", 2.5),  # the margin is for x3; recorded gain at x2 3.94 dB
    "edsr_x3.pth": ("psnr", 2.5),
    "edsr_x4.pth": ("psnr", 2.5),  # the margin is for x3; recorded gain at x4 3.08 dB
    "piunet_x3.pth": ("cpsnr", 1.0),  # no margin set; recorded gain 2.02 dB on PROBA-V-like bursts
    "s2_20m_x2.pth": ("wald", 0.0),  # scored on its held-out region, every band (issue [17])
}
RESULT_SETS = {"psnr": ("Set5", "Set14"), "cpsnr": ("Set5", "Set14"), "wald": ("wald",)}


# issue [9]: the published figure each file must reach (dB PSNR on Y, single pass), trained on 291
PUBLISHED_BAR = {
    "edsr_x2.pth": {"Set5": 37.53, "Set14": 33.03},  # VDSR (Kim et al. 2016), 291 images
    "edsr_x3.pth": {"Set5": 33.66, "Set14": 29.77},
    "edsr_x4.pth": {"Set5": 31.35, "Set14": 28.01},
    "srcnn_x3.pth": {"Set5": 32.39},  # the SRCNN paper's 9-1-5 (item 4)
}


def recorded(name: str, dataset: str) -> dict:
    """The results JSON `make results` wrote for a shipped file on one dataset."""
    return json.loads((RESULTS / f"{Path(name).stem}_{dataset}.json").read_text())


def test_every_shipped_file_is_guarded():
    assert sorted(p.name for p in CHECKPOINTS.glob("*.pth")) == sorted(SHIPPED)


def test_the_shipped_models_stay_under_40_mb_in_all():
    assert sum(path.stat().st_size for path in CHECKPOINTS.glob("*.pth")) < MAX_FOLDER_BYTES


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_checkpoint_loads_safely_with_its_history(name):
    path = CHECKPOINTS / name
    assert path.stat().st_size < MAX_BYTES
    checkpoint = torch.load(path, weights_only=True)
    history = checkpoint["history"]
    assert [row["epoch"] for row in history] == list(range(1, checkpoint["epoch"] + 1))
    assert checkpoint["epoch"] == checkpoint["args"]["num_epoch"]  # a finished run, not a snapshot
    readme = (CHECKPOINTS / "README.md").read_text()
    sets = RESULT_SETS[SHIPPED[name][0]]
    assert name in readme and all(f"{Path(name).stem}_{s}.json" in readme for s in sets)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n, (metric, _) in SHIPPED.items() if metric != "wald"))
def test_checkpoint_beats_bicubic_on_set5_as_recorded(name, data_root, capsys):
    metric, least_gain = SHIPPED[name]
    argv = ["--checkpoint", str(CHECKPOINTS / name), "--dataset", "Set5", "--json"]
    assert run_cli(super_resolve.main, argv) == 0
    mean = json.loads(capsys.readouterr().out)["mean"]
    assert mean[f"model_{metric}"] - mean[f"bicubic_{metric}"] >= least_gain, mean
    expected = recorded(name, "Set5")["mean"]
    for key in (f"model_{metric}", f"bicubic_{metric}"):
        assert mean[key] == pytest.approx(expected[key], abs=1e-3), key


@pytest.mark.parametrize("name", sorted(PUBLISHED_BAR))
def test_recorded_results_reach_the_published_bar_trained_on_291(name):
    # the Set5 figures are the ones re-scored above to 0.001 dB
    assert torch.load(CHECKPOINTS / name, weights_only=True)["args"]["train_data"] == "291"
    for dataset, bar in PUBLISHED_BAR[name].items():
        psnr = recorded(name, dataset)["mean"]["model_psnr"]
        assert psnr >= bar, (dataset, psnr, bar)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n, (metric, _) in SHIPPED.items() if metric == "cpsnr"))
def test_multi_frame_checkpoint_beats_the_challenge_on_real_probav_scenes(name, data_root, capsys, tmp_path):
    argv = ["--checkpoint", str(CHECKPOINTS / name), "--dataset", "PROBAV-sample", "--json",
            "--out-dir", str(tmp_path)]  # fmt: skip
    assert run_cli(super_resolve.main, argv) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)["images"]}
    assert sorted(rows) == ["imgset0000", "imgset0594"]  # the two scenes with HR
    for row in recorded(name, "PROBAV-sample")["images"]:
        scene = rows[row["name"]]
        assert scene["score"] < 1.0, scene  # beats the challenge's baseline (norm / cPSNR)
        assert scene["uncertainty_rank_correlation"] > 0, scene  # sigma ranks the errors
        for key in ("model_cpsnr", "score", "norm", "uncertainty_rank_correlation"):
            assert scene[key] == pytest.approx(row[key], abs=1e-3), (row["name"], key)
    written = sorted(p.name for p in tmp_path.iterdir())  # the two test scenes, without HR
    assert [w for w in written if w.endswith("_piunet_x3.png")] == [
        "imgset1160_piunet_x3.png",
        "imgset1306_piunet_x3.png",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n, (metric, _) in SHIPPED.items() if metric == "wald"))
def test_multispectral_checkpoint_reproduces_its_held_out_scores(name, data_root, tmp_path):
    """Issue [17], item 4, as far as it holds (checkpoints/README.md says where it does not): on
    the held-out region the model is above bicubic on every band with both degradations, and
    above edsr_x2.pth band by band on the mean with the training kernel; as recorded."""
    out = tmp_path / "wald.json"
    argv = [sys.executable, "tools/wald_study.py", "--checkpoint", f"checkpoints/{name}", "--json", str(out)]
    subprocess.run(argv, cwd=CHECKPOINTS.parent, check=True, capture_output=True)
    record = json.loads(out.read_text())
    expected = recorded(name, "wald")["degradations"]
    model = Path(name).stem
    for kernel, by_method in record["degradations"].items():
        ours, bicubic = by_method[model]["band_psnr"], by_method["bicubic"]["band_psnr"]
        assert all(a > b for a, b in zip(ours, bicubic)), kernel
        for who, values in by_method.items():
            assert values["band_psnr"] == pytest.approx(expected[kernel][who]["band_psnr"], abs=1e-3)
    sensor = record["degradations"]["sensor"]
    assert sensor[model]["psnr"] > sensor["edsr_x2"]["psnr"]


def test_info_lists_the_shipped_checkpoints_with_their_recorded_results(tmp_path):
    listed = dict(info.shipped_checkpoints())
    assert sorted(listed) == sorted(SHIPPED)
    for name, (metric, _) in SHIPPED.items():
        if metric == "wald":
            psnr = recorded(name, "wald")["degradations"]["sensor"][Path(name).stem]["psnr"]
            assert f"Wald held-out mean band PSNR {psnr:.2f} dB" in listed[name], listed[name]
            continue
        sets = ["PROBAV-sample"] if metric == "cpsnr" else ["Set5", "Set14"]  # the real scenes for PIUnet
        means = [recorded(name, s)["mean"] for s in sets]
        figures = " / ".join(f"{mean[f'model_{metric}']:.2f}" for mean in means)
        baselines = " / ".join(f"{mean[f'bicubic_{metric}']:.2f}" for mean in means)
        assert f"{' / '.join(sets)} {metric.replace('psnr', 'PSNR')} {figures} dB" in listed[name], listed[
            name
        ]
        assert f"{baselines} dB" in listed[name]
    (tmp_path / "new.pth").write_bytes(b"")
    assert info.shipped_checkpoints(tmp_path) == [("new.pth", "no recorded results (make results)")]


def test_info_results_line_joins_sets_and_names_the_baseline():
    def record(model_metric: float, baseline: float, metric: str = "psnr", **extra: float) -> dict:
        mean = {f"model_{metric}": model_metric, f"bicubic_{metric}": baseline, **extra}
        return {"model": "edsr", "scale": 2, "mean": mean}

    line = info.results_line({"Set5": record(37.617, 33.68), "Set14": record(33.09, 30.234)})
    assert line == "edsr x2, Set5 / Set14 PSNR 37.62 / 33.09 dB (bicubic 33.68 / 30.23 dB)"
    burst = record(51.656, 51.213, "cpsnr", score=0.99162)
    assert info.results_line({"PROBAV-sample": burst}).endswith(
        "cPSNR 51.66 dB (baseline 51.21 dB, score 0.992)"
    )
    burst["mean"].pop("score")  # written only where the scenes have a baseline
    assert info.results_line({"PROBAV-sample": burst}).endswith("(baseline 51.21 dB)")


@pytest.mark.slow
def test_info_prints_the_environment_that_figures_depend_on():
    env = info.environment()
    assert env["torch"] == torch.__version__ and env["cpu"] and int(env["threads"]) >= 1
    done = subprocess.run([sys.executable, "info.py"], capture_output=True, text=True, cwd=CHECKPOINTS.parent)
    assert done.returncode == 0 and f"cpu             {env['cpu']}" in done.stdout
    shipped = done.stdout.split("shipped checkpoints")[1].splitlines()[1:]
    columns = {len(line) - len(line.split(".pth", 1)[1].lstrip()) for line in shipped if ".pth" in line}
    assert len(columns) == 1, shipped  # the description column lines up under every file name
