"""PIUnet: the authors' network reproduced, permutation invariance, losses and metrics against
their references, bursts and PROBA-V scenes, training that beats bicubic-of-mean, inference."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from conftest import reference_file

import super_resolve
import train
from bursts import (
    BurstConfig,
    BurstDataset,
    SceneDataset,
    bicubic_of_mean,
    load_probav_scene,
    synthetic_bursts,
)
from catalog import sample_paths
from images import load_image, save_image
from losses import registered_l1, registered_uncertainty_loss
from metrics import cpsnr, cssim
from model import build_model
from piunet import PIUnet, TemporalAttention, piunet_from_official
from utils import run_cli

TINY = {"features": 12, "blocks": 1}


def _official(reference_dir):
    arrays = np.load(reference_file(reference_dir, "piunet_official_small.npz"))
    state = {
        k[len("param__") :]: torch.from_numpy(arrays[k]) for k in arrays.files if k.startswith("param__")
    }
    return state, arrays


def test_authors_weights_reproduce_their_outputs(reference_dir):
    state, arrays = _official(reference_dir)
    model = piunet_from_official(state).eval()
    with torch.no_grad():
        mu, sigma = model(torch.from_numpy(arrays["input"]))
    torch.testing.assert_close(mu, torch.from_numpy(arrays["mu"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(sigma, torch.from_numpy(arrays["sigma"]), atol=1e-5, rtol=0)


def test_output_does_not_depend_on_frame_order(reference_dir):
    state, arrays = _official(reference_dir)
    model = piunet_from_official(state).eval()
    frames = torch.from_numpy(arrays["input"])
    with torch.no_grad():
        mu, sigma = model(frames)
        for seed in range(3):
            order = torch.randperm(frames.shape[1], generator=torch.Generator().manual_seed(seed))
            mu_p, sigma_p = model(frames[:, order])
            torch.testing.assert_close(mu_p, mu, atol=1e-5, rtol=0)
            torch.testing.assert_close(sigma_p, sigma, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "options",
    [{}, {"norm": "group", "tern_identity_init": True, "residual_gain": True, "upsample": "bicubic"}],
)
def test_shapes_and_invariance_of_every_variant(options):
    torch.manual_seed(0)
    model = build_model("piunet", 3, **TINY, **options)
    frames = torch.rand(2, 5, 11, 13)
    mu, sigma = model(frames)  # train mode: batch statistics are order-free too
    assert mu.shape == sigma.shape == (2, 1, 33, 39)
    mu_p, _ = model(frames[:, [4, 2, 0, 1, 3]])
    torch.testing.assert_close(mu_p, mu, atol=1e-5, rtol=1e-5)
    assert build_model("piunet", 2, **TINY)(frames)[0].shape == (2, 1, 22, 26)


def test_rebuild_from_checkpoint_gives_identical_outputs(tmp_path):
    from model import load_model

    options = {**TINY, "norm": "group"}
    model = build_model("piunet", 3, **options).eval()
    checkpoint = {
        "model": {"name": "piunet", "scale": 3, "options": options},
        "state_dict": model.state_dict(),
    }
    torch.save(checkpoint, tmp_path / "c.pth")
    rebuilt = load_model(torch.load(tmp_path / "c.pth", weights_only=True))
    frames = torch.rand(1, 4, 8, 8)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(frames), rebuilt(frames)))


def test_published_defaults():
    model = PIUnet()
    assert len(model.blocks) == 16 and model.input.conv.out_channels == 42
    assert model.blocks[0].se_down.out_features == 42 // 8 and model.input.attention.heads == 1


def test_identity_tern_and_zero_gain_start_from_the_upscaled_mean():
    model = build_model("piunet", 3, **TINY, tern_identity_init=True, residual_gain=True, upsample="bicubic")
    frames = torch.rand(1, 4, 9, 9)
    x = torch.rand(4, 12, 9, 9)
    torch.testing.assert_close(model.tern(x, 4), x)  # every kernel is the identity at first
    mu, _ = model(frames)

    torch.testing.assert_close(mu[0], bicubic_of_mean(frames[0], 3))


def test_attention_runs_in_reduced_precision_under_autocast():
    attention = TemporalAttention(16, 2)
    x = torch.rand(2 * 3, 16, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert attention(x, 3).dtype == torch.bfloat16
    mha = torch.nn.MultiheadAttention(16, 2)
    mha.in_proj_weight.data.copy_(attention.qkv.weight)
    mha.in_proj_bias.data.copy_(attention.qkv.bias)
    mha.out_proj.weight.data.copy_(attention.out.weight)
    mha.out_proj.bias.data.copy_(attention.out.bias)
    tokens = x.view(2, 3, 16, 16).permute(1, 0, 3, 2).reshape(3, 32, 16)  # (T, B*H*W, F)
    expected = mha(tokens, tokens, tokens)[0].reshape(3, 2, 16, 16).permute(1, 0, 3, 2).reshape(6, 16, 4, 4)
    torch.testing.assert_close(attention(x, 3), expected, atol=1e-6, rtol=1e-5)


def _naive_registered(mu, target, mask, sigma=None, border=3):
    """The 49-shift loop as the authors write it (bias on mu only), for comparison."""
    size = mu.shape[-1]
    crop = mu[:, 0, border : size - border, border : size - border]
    crop_sigma = None if sigma is None else sigma[:, 0, border : size - border, border : size - border]
    losses = []
    for i in range(2 * border + 1):
        for j in range(2 * border + 1):
            y = target[:, 0, i : i + size - 2 * border, j : j + size - 2 * border]
            m = mask[:, 0, i : i + size - 2 * border, j : j + size - 2 * border]
            count = m.sum(dim=(1, 2))
            bias = ((y - crop) * m).sum(dim=(1, 2)) / count
            error = (y - crop - bias[:, None, None]).abs()
            per = error if crop_sigma is None else crop_sigma + error * torch.exp(-crop_sigma)
            losses.append((per * m).sum(dim=(1, 2)) / count)
    return torch.stack(losses).min(dim=0).values.mean()


def test_registered_l1_matches_the_authors_reference(reference_dir):
    arrays = np.load(reference_file(reference_dir, "piunet_registered_l1.npz"))
    for case in range(3):
        y, pred, mask = (torch.from_numpy(arrays[f"case{case}_{k}"]) for k in ("y", "pred", "mask"))
        expected = float(arrays[f"case{case}_l1_registered"])
        assert registered_l1(pred, y, mask).item() == pytest.approx(expected, abs=1e-6)


def test_vectorised_losses_equal_the_49_shift_loop():
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(3, 1, 30, 30, generator=generator)
    mu = torch.roll(target, (1, -2), (2, 3)) + 0.05 * torch.randn(3, 1, 30, 30, generator=generator)
    sigma = 0.5 * torch.randn(3, 1, 30, 30, generator=generator)
    mask = (torch.rand(3, 1, 30, 30, generator=generator) > 0.2).float()
    torch.testing.assert_close(registered_l1(mu, target, mask), _naive_registered(mu, target, mask))
    torch.testing.assert_close(
        registered_uncertainty_loss(mu, sigma, target, mask), _naive_registered(mu, target, mask, sigma)
    )


def test_cpsnr_matches_the_challenge_kit_at_any_batch_size(reference_dir):
    arrays = np.load(reference_file(reference_dir, "cpsnr_probav.npz"))
    batch_sr, batch_hr, batch_sm, expected = [], [], [], []
    for case in range(5):
        sr, hr, sm = (torch.from_numpy(arrays[f"case{case}_{k}"]).double() for k in ("sr", "hr", "sm"))
        value = cpsnr(sr[None, None], hr[None, None], sm[None, None]).item()
        assert value == pytest.approx(float(arrays[f"case{case}_cpsnr"]), abs=1e-4)
        if case < 4:  # same size: score them as one batch
            batch_sr.append(sr)
            batch_hr.append(hr)
            batch_sm.append(sm)
            expected.append(float(arrays[f"case{case}_cpsnr"]))
    batched = cpsnr(
        torch.stack(batch_sr)[:, None], torch.stack(batch_hr)[:, None], torch.stack(batch_sm)[:, None]
    )
    np.testing.assert_allclose(batched.numpy(), expected, atol=1e-4)


def test_cssim_is_one_for_a_shifted_brighter_copy():
    hr = torch.rand(1, 1, 40, 40)
    shifted = torch.roll(hr, (2, -1), (2, 3)) + 0.1
    mask = torch.ones_like(hr)
    assert cssim(shifted, hr, mask).item() > 0.95
    assert cssim(torch.rand(1, 1, 40, 40), hr, mask).item() < 0.2
    assert cpsnr(shifted, hr, mask).item() > 60


def test_synthetic_bursts_are_deterministic_and_shaped():
    image = torch.rand(3, 60, 66)
    config = BurstConfig(frames=5, occlusion=1.0)
    a, b = synthetic_bursts([("x", image)], config), synthetic_bursts([("x", image)], config)
    assert torch.equal(a[0].frames, b[0].frames)
    assert a[0].frames.shape == (5, 20, 22) and a[0].hr.shape == (1, 60, 66)
    assert (a[0].frames == 1.0).any()  # occlusions present
    dataset = BurstDataset([image], config, patch_size=24, bursts_per_image=4, seed=3)
    frames, weights, hr, mask = dataset[(2, 1)]
    assert frames.shape == (5, 8, 8) and hr.shape == mask.shape == (1, 24, 24)
    assert torch.equal(dataset[(2, 1)][0], frames) and not torch.equal(dataset[(3, 1)][0], frames)


def _probav_scene(folder, frames: int, seed: int, clear: list[float]):
    """A tiny scene in the PROBA-V layout: 16-bit LR/QM frames, HR and SM."""
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    hr = torch.rand(1, 30, 30, generator=generator) * 0.5 + 0.2
    save_image(hr, folder / "HR.png", bits=16)
    sm = torch.ones(1, 30, 30)
    sm[:, :3] = 0
    save_image(sm, folder / "SM.png")
    for i in range(frames):
        lr = hr[:, ::3, ::3] + 0.001 * i
        save_image(lr, folder / f"LR{i:03d}.png", bits=16)
        qm = (torch.rand(1, 10, 10, generator=generator) < clear[i]).float()
        save_image(qm, folder / f"QM{i:03d}.png")
    return rng


def test_probav_scene_takes_the_clearest_frames_and_pads(tmp_path):
    _probav_scene(tmp_path / "imgset0000", 4, 0, clear=[0.2, 0.9, 0.5, 0.99])
    burst = load_probav_scene(tmp_path / "imgset0000", frames=6)
    assert burst.frames.shape == (6, 10, 10) and burst.hr.shape == (1, 30, 30)
    # LR003, LR001, LR002, LR000, then repeated in order; concealed pixels filled from the others
    for frame, i in zip(burst.frames, [3, 1, 2, 0, 3, 1]):
        lr = load_image(tmp_path / "imgset0000" / f"LR{i:03d}.png")[0]
        clear = load_image(tmp_path / "imgset0000" / f"QM{i:03d}.png")[0] > 0.5
        assert torch.equal(frame[clear], lr[clear]) and not torch.equal(frame[~clear], lr[~clear])
    assert burst.weights.tolist() == [1, 0, 0, 0, 1, 0]  # the clearest frame, as the baseline
    assert burst.mask[:, :3].sum() == 0 and burst.mask[:, 3:].min() == 1
    patches = SceneDataset([burst], 3, 12, patches_per_scene=3)
    frames, weights, hr, mask = patches[(0, 2)]
    assert frames.shape == (6, 4, 4) and hr.shape == mask.shape == (1, 12, 12)


def test_training_on_probav_scenes(tmp_path, capsys):
    for i in range(2):
        _probav_scene(tmp_path / "train" / f"imgset{i:04d}", 5, i, clear=[0.9] * 5)
    argv = [
        "train",
        "--model",
        "piunet",
        "--model-option",
        "features=12",
        "--model-option",
        "blocks=1",
        "--train-data",
        str(tmp_path / "train"),
        "--val-data",
        str(tmp_path / "train"),
        "--patch-size",
        "24",
        "--patches-per-image",
        "2",
        "--batch-size",
        "2",
        "--num-epoch",
        "2",
        "--frames",
        "5",
        "--quiet",
        "--out-dir",
        str(tmp_path / "run"),
    ]
    assert run_cli(train.main, argv) == 0
    assert "cPSNR" in capsys.readouterr().out
    checkpoint = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert checkpoint["kind"] == "multi-frame" and checkpoint["history"][-1]["cpsnr"] is not None


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short run on synthetic bursts from the bundled photos (ReZero start at bicubic of mean)."""
    out = tmp_path_factory.mktemp("piunet")
    argv = [
        "train",
        "--model",
        "piunet",
        "--model-option",
        "features=16",
        "--model-option",
        "blocks=2",
        "--model-option",
        "upsample=bicubic",
        "--model-option",
        "residual_gain=true",
        "--train-data",
        "sample-train",
        "--val-data",
        "sample-test",
        "--patch-size",
        "48",
        "--patches-per-image",
        "32",
        "--batch-size",
        "8",
        "--num-epoch",
        "4",
        "--val-freq",
        "4",
        "--lr",
        "1e-3",
        "--quiet",
        "--out-dir",
        str(out),
    ]
    assert run_cli(train.main, argv) == 0
    return out


@pytest.mark.slow
def test_short_training_beats_bicubic_of_mean_on_held_out_scenes(trained):
    history = torch.load(trained / "last.pth", weights_only=True)["history"]
    assert history[-1]["cpsnr"] > history[-1]["baseline_cpsnr"], history[-1]  # held-out scenes


@pytest.mark.slow
def test_super_resolve_fuses_a_folder_of_frames(trained, tmp_path, capsys):
    image = load_image(sample_paths("test")[0])  # chelsea, held out
    burst = synthetic_bursts([("scene", image[:, :120, :150])], BurstConfig())[0]
    (tmp_path / "scene").mkdir()
    for i, frame in enumerate(burst.frames):
        save_image(frame[None], tmp_path / "scene" / f"frame{i}.png", bits=16)
    save_image(burst.hr, tmp_path / "hr.png", bits=16)
    assert (
        run_cli(
            super_resolve.main,
            [
                "--checkpoint",
                str(trained / "last.pth"),
                str(tmp_path / "scene"),
                "--gt",
                str(tmp_path / "hr.png"),
                "--json",
            ],
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    row = result["images"][0]
    assert set(row) >= {"model_cpsnr", "bicubic_cpsnr", "model_cssim"}
    for suffix in ("piunet_x3.png", "piunet_x3_uncertainty.png", "bicubic_x3.png"):
        assert (tmp_path / f"scene_{suffix}").exists(), suffix
    save_image(burst.hr[:, :50, :50], tmp_path / "small_hr.png")
    (tmp_path / "out").mkdir()
    argv = [
        "--checkpoint",
        str(trained / "last.pth"),
        str(tmp_path / "scene"),
        "--out-dir",
        str(tmp_path / "out"),
    ]
    assert run_cli(super_resolve.main, [*argv, "--gt", str(tmp_path / "small_hr.png")]) == 2
    assert list((tmp_path / "out").iterdir()) == []  # the wrong ground truth is found before any writing


@pytest.mark.slow
def test_dataset_scores_bursts_as_training_validated_them(trained, capsys):
    checkpoint = str(trained / "last.pth")
    history = torch.load(checkpoint, weights_only=True)["history"][-1]
    argv = ["--checkpoint", checkpoint, "--dataset", "sample-test"]
    assert run_cli(super_resolve.main, [*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "piunet" and "cPSNR" in result["protocol"]
    assert len(result["images"]) == len(sample_paths("test"))
    # the same fixed bursts and the same network: the figures training logged at its last validation
    assert result["mean"]["model_cpsnr"] == pytest.approx(history["cpsnr"], abs=1e-6)
    assert result["mean"]["bicubic_cpsnr"] == pytest.approx(history["baseline_cpsnr"], abs=1e-6)
    assert run_cli(super_resolve.main, [*argv, "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "piunet CPSNR" in table and "baseline CPSNR" in table and "mean" in table
    for bad in (["--degradation", "bicubic"], ["--fda-plot", "x.png"]):
        assert run_cli(super_resolve.main, [*argv, *bad]) == 2


def test_chunked_attention_equals_one_call():
    from piunet import chunked_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 23, 9, 8) for _ in range(3))
    whole = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(chunked_attention(q, k, v, max_heads=5), whole, atol=1e-6, rtol=1e-6)
    assert chunked_attention(q, k, v, max_heads=5).shape == whole.shape


def test_scene_normalization_makes_piunet_equivariant_to_brightness_and_contrast():
    torch.manual_seed(0)
    model = build_model("piunet", 3, normalize=True, **TINY).eval()
    frames = torch.rand(2, 5, 12, 12) * 0.02 + 0.05  # PROBA-V-like: dark, low contrast
    with torch.no_grad():
        mu, sigma = model(frames)
        mu2, sigma2 = model(frames * 4 + 0.3)
    torch.testing.assert_close(mu2, mu * 4 + 0.3, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sigma2, sigma + math.log(4), atol=1e-4, rtol=1e-4)


def test_frame_weights_choose_the_global_residual():
    model = build_model("piunet", 3, upsample="bicubic", residual_gain=True, **TINY).eval()
    frames = torch.rand(1, 4, 10, 10)
    weights = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    with torch.no_grad():
        mu, _ = model(frames, weights)  # the residual gain starts at 0: mu is the global residual
        uniform, _ = model(frames)
    torch.testing.assert_close(mu[0], bicubic_of_mean(frames[0, :2], 3))
    torch.testing.assert_close(uniform[0], bicubic_of_mean(frames[0], 3))


@pytest.mark.slow
def test_multi_frame_history_names_its_columns_and_old_runs_read_the_same(trained, tmp_path, capsys):
    checkpoint = torch.load(trained / "last.pth", weights_only=True)
    header = (trained / "history.csv").read_text().splitlines()[0].split(",")
    assert header[2:6] == ["cpsnr", "cssim", "baseline_cpsnr", "baseline_cssim"]
    old = dict(checkpoint)  # as written before the columns were named for cPSNR
    old["history"] = [
        {("psnr" if k == "cpsnr" else "ssim" if k == "cssim" else k.replace("baseline_c", "bicubic_")): v
         for k, v in row.items()}
        for row in checkpoint["history"]
    ]  # fmt: skip
    torch.save(old, tmp_path / "old.pth")
    texts = []
    for path in (trained / "last.pth", tmp_path / "old.pth"):
        assert run_cli(train.main, ["inspect", str(path), "--all"]) == 0
        texts.append(capsys.readouterr().out.split("arguments")[1].split("\n", 1)[1])
    assert texts[0] == texts[1] and "cPSNR" in texts[0] and "baseline" in texts[0]
