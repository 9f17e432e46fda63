"""Real PROBA-V scenes: the challenge's baseline and norm, its score, whole-set evaluation."""

from __future__ import annotations

import json

import pytest
import torch

import super_resolve
import train
from bursts import bicubic_of_mean, challenge_baseline, load_probav_scene, probav_scenes
from images import save_image
from metrics import cpsnr
from utils import run_cli

TRAIN_SCENES = ("train/RED/imgset0000", "train/NIR/imgset0594")


@pytest.mark.parametrize("scene", TRAIN_SCENES)
def test_challenge_baseline_reproduces_norm_csv(data_root, scene):
    folder = data_root / "PROBAV-sample" / scene
    norms = dict(line.split() for line in (data_root / "PROBAV-sample" / "norm.csv").read_text().splitlines())
    burst = load_probav_scene(folder)
    assert burst.norm == float(norms[folder.name])
    score = cpsnr(burst.baseline_image(3)[None], burst.hr[None], burst.mask[None]).item()
    assert abs(score - burst.norm) < 0.01
    # the toolkit's former baseline (the mean of the 9 clearest frames) does not reproduce it
    # on imgset0594, where a single frame has the most clear pixels
    if folder.name == "imgset0594":
        former = bicubic_of_mean(burst.frames, 3).clamp(0, 1)
        assert abs(cpsnr(former[None], burst.hr[None], burst.mask[None]).item() - burst.norm) > 1.0


def test_challenge_baseline_averages_only_the_frames_tied_at_most_clear():
    frames = torch.stack([torch.full((8, 8), v) for v in (0.1, 0.3, 0.9, 0.5)])
    clear = torch.ones(4, 8, 8)
    clear[2, 0, 0] = 0  # one concealed pixel: frame 2 is out
    clear[3, :2] = 0
    baseline = challenge_baseline(frames, clear, 3)
    assert baseline.shape == (1, 24, 24)
    torch.testing.assert_close(baseline, torch.full((1, 24, 24), 0.2))


def _scene(folder, seed: int, with_hr: bool) -> None:
    """A small scene in the PROBA-V layout (16-bit frames, 0/1 masks)."""
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    hr = torch.rand(1, 48, 48, generator=generator) * 0.1 + 0.05
    if with_hr:
        save_image(hr, folder / "HR.png", bits=16)
        save_image(torch.ones(1, 48, 48), folder / "SM.png")
    for i in range(5):
        save_image(hr[:, 1::3, 1::3] + 0.002 * i, folder / f"LR{i:03d}.png", bits=16)
        clear = torch.ones(1, 16, 16)
        clear[:, : i % 3] = 0
        save_image(clear, folder / f"QM{i:03d}.png")


def test_dataset_in_the_challenge_layout_scores_and_writes_the_rest(tmp_path, capsys):
    root = tmp_path / "probav"
    _scene(root / "train" / "RED" / "imgset0000", 0, with_hr=True)
    _scene(root / "train" / "NIR" / "imgset0594", 1, with_hr=True)
    _scene(root / "test" / "RED" / "imgset1160", 2, with_hr=False)
    (root / "norm.csv").write_text("imgset0000 40.5\nimgset0594 41.25\n")
    assert [p.name for p in probav_scenes(root)] == ["imgset0000", "imgset0594", "imgset1160"]
    argv = ["train", "--model", "piunet", "--model-option", "features=8", "--model-option", "blocks=1",
            "--train-data", str(root / "train"), "--val-data", str(root / "train"), "--patch-size", "24",
            "--patches-per-image", "1", "--batch-size", "2", "--num-epoch", "1", "--frames", "3",
            "--quiet", "--out-dir", str(tmp_path / "run")]  # fmt: skip
    assert run_cli(train.main, argv) == 0
    capsys.readouterr()
    argv = ["--checkpoint", str(tmp_path / "run" / "last.pth"), "--dataset", str(root),
            "--out-dir", str(tmp_path / "out"), "--json"]  # fmt: skip
    assert run_cli(super_resolve.main, argv) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {row["name"]: row for row in result["images"]}
    assert set(rows) == {"imgset0000", "imgset0594"}
    for name, norm in (("imgset0000", 40.5), ("imgset0594", 41.25)):
        assert rows[name]["norm"] == norm
        assert rows[name]["score"] == pytest.approx(norm / rows[name]["model_cpsnr"])
    assert result["mean"]["score"] == pytest.approx(
        (rows["imgset0000"]["score"] + rows["imgset0594"]["score"]) / 2
    )
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == [
        "imgset1160_bicubic_x3.png",
        "imgset1160_piunet_x3.png",
        "imgset1160_piunet_x3_uncertainty.png",
    ]


@pytest.mark.slow
def test_probav_like_bursts_have_the_measured_statistics():
    import random

    from bursts import PROBAV_CONTRAST, PROBAV_MEAN, BurstConfig, synthesize

    config = BurstConfig(frames=9, scale=3, max_shift=3, blur=1.0, noise=0.1, style="probav")
    generator = torch.Generator().manual_seed(0)
    image = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 408, 408, generator=generator), 4)[0]
    bursts = [synthesize(image, config, random.Random(seed)) for seed in range(12)]
    again = synthesize(image, config, random.Random(3))
    assert torch.equal(again.frames, bursts[3].frames) and torch.equal(again.hr, bursts[3].hr)
    for burst in bursts:
        assert burst.frames.shape == (9, 32, 32) and burst.hr.shape == burst.mask.shape == (1, 96, 96)
        assert PROBAV_MEAN[0] - 1e-4 <= burst.hr.mean() <= PROBAV_MEAN[1] + 1e-4
        assert PROBAV_CONTRAST[0] - 1e-3 <= burst.hr.std() / burst.hr.mean() <= PROBAV_CONTRAST[1] + 1e-3
        assert burst.frames.max() <= 16383 / 65535  # 14-bit values in 16-bit steps
        steps = burst.frames.double() * 65535  # 16-bit steps, except where concealed pixels were filled
        assert ((steps - steps.round()).abs() < 1e-2).float().mean() > 0.6
        weights = burst.weights.tolist()
        assert weights[0] == 1 and weights == sorted(weights, reverse=True)  # clearest first
        assert burst.baseline.shape == (1, 96, 96)
    # the clouds are concealed and filled: no frame keeps cloud-bright values (1.3x+ the mean)
    # over more than a sliver of its pixels, though some frames had clouds before filling
    bright = [(b.frames > 1.3 * b.hr.mean() * 1.2).float().mean().item() for b in bursts]
    assert max(bright) < 0.02


@pytest.mark.slow
def test_training_on_probav_like_bursts(tmp_path, capsys):
    argv = ["train", "--model", "piunet", "--model-option", "features=8", "--model-option", "blocks=1",
            "--model-option", "normalize=true", "--model-option", "upsample=bicubic",
            "--model-option", "residual_gain=true", "--burst-style", "probav", "--burst-shift", "3",
            "--burst-blur", "1.0", "--burst-noise", "0.1", "--train-data", "sample-train",
            "--val-data", "sample-test", "--patch-size", "24", "--patches-per-image", "2",
            "--batch-size", "4", "--num-epoch", "1", "--quiet",
            "--out-dir", str(tmp_path / "run")]  # fmt: skip
    assert run_cli(train.main, argv) == 0
    checkpoint = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert checkpoint["args"]["burst_style"] == "probav" and checkpoint["history"][-1]["cpsnr"] > 20
