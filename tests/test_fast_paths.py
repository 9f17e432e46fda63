"""Fast paths compute what the plain paths compute (no test here times anything)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import bench
import pytest
import torch
import torch.nn.functional as F
from conftest import SINGLE_IMAGE, SMALL

from inference import Upscaler
from model import build_model


@pytest.mark.parametrize("name", SINGLE_IMAGE)
def test_upscaler_fast_path_equals_plain_forward(name):
    torch.manual_seed(0)
    model = build_model(name, 3, **SMALL.get(name, {})).eval()
    lr = torch.rand(1, 3, 40, 37)
    with torch.no_grad():
        plain = model(lr)[0].clamp(0, 1)
    fast = Upscaler(
        model=model.to(memory_format=torch.channels_last),
        name=name,
        scale=3,
        channels=3,
        device=torch.device("cpu"),
        tile=512,
        overlap=16,
    )(lr[0])
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)


def test_channels_last_training_step_equals_nchw():
    torch.manual_seed(0)
    plain = build_model("srcnn", 3)
    fast = build_model("srcnn", 3)
    fast.load_state_dict(plain.state_dict())
    fast.to(memory_format=torch.channels_last)
    lr, hr = torch.rand(8, 3, 11, 11), torch.rand(8, 3, 33, 33)
    loss_plain = F.mse_loss(plain(lr), hr)
    loss_fast = F.mse_loss(fast(lr.contiguous(memory_format=torch.channels_last)), hr)
    loss_plain.backward()
    loss_fast.backward()
    torch.testing.assert_close(loss_fast, loss_plain, atol=1e-6, rtol=1e-5)
    for a, b in zip(plain.parameters(), fast.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4)


def test_bf16_autocast_is_within_its_tolerance():
    torch.manual_seed(0)
    model = build_model("srcnn", 3).eval()
    lr = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        plain = model(lr)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reduced = model(lr).float()
    assert (reduced - plain).abs().max() < 2e-2  # bf16 keeps 8 bits of mantissa


def test_upscaler_bf16_autocast_is_within_its_tolerance():
    torch.manual_seed(0)
    model = build_model("srcnn", 3).eval()
    lr = torch.rand(3, 20, 20)
    plain = Upscaler(
        model=model, name="srcnn", scale=3, channels=3, device=torch.device("cpu"), tile=512, overlap=16
    )(lr)
    reduced = Upscaler(
        model=model,
        name="srcnn",
        scale=3,
        channels=3,
        device=torch.device("cpu"),
        tile=512,
        overlap=16,
        amp_dtype=torch.bfloat16,
    )(lr)
    assert reduced.dtype == torch.float32 and 0 < (reduced - plain).abs().max() < 2e-2


@pytest.mark.parametrize("heads", [1, 2])
def test_piunet_fast_attention_equals_the_authors_layout_in_outputs_and_gradients(heads):
    """train.py's PIUnet (channels_last, attention on views) against nn.MultiheadAttention's layout."""
    torch.manual_seed(0)
    fast = build_model("piunet", 3, features=12, blocks=1, heads=heads).to(memory_format=torch.channels_last)
    mha = build_model("piunet", 3, features=12, blocks=1, heads=heads, attention="mha")
    mha.load_state_dict(fast.state_dict())
    frames = torch.rand(2, 5, 8, 8)
    for mode in ("train", "eval"):
        outputs = []
        for model in (fast, mha):
            getattr(model, mode)()
            model.zero_grad()
            mu, sigma = model(frames)
            (mu.square().mean() + sigma.mean()).backward()
            outputs.append([mu, sigma] + [p.grad for p in model.parameters()])
        for a, b in zip(*outputs):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bench_runs_and_reports_ratios(capsys):
    assert (
        bench.main(["--only", "inference", "--models", "srcnn", "--size", "48", "--repeats", "1", "--json"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    rows = {row["what"]: row for row in result["rows"]}
    ceilings = [
        rows[f"matmul 2048x2048 float32 ({library})"]["flops_per_s"] for library in ("torch.mm", "1x1 conv")
    ]
    assert min(ceilings) > 0
    fast = rows["srcnn fast path"]
    assert fast["fraction_of_ceiling"] == pytest.approx(fast["flops_per_s"] / max(ceilings))
    convolutions = 2 * (3 * 81 * 64 + 64 * 32 + 32 * 25 * 3)  # per output pixel; bicubic adds ~0.1 %
    assert convolutions <= fast["flops_per_pixel"] < 1.01 * convolutions
    assert fast["fraction_of_ceiling"] > 0 and fast["max_abs_difference"] < 1e-5


def test_bench_layers_reports_each_srcnn_convolution(capsys):
    assert bench.main(["--only", "layers", "--size", "32", "--repeats", "1", "--json"]) == 0
    rows = [row for row in json.loads(capsys.readouterr().out)["rows"] if row["section"] == "layers"]
    assert [row["what"] for row in rows] == [
        "srcnn features 3->64 9x9",
        "srcnn mapping 64->32 1x1",
        "srcnn reconstruction 32->3 5x5",
        "srcnn three layers, no overhead",
    ]
    pixels = 32 * 32  # 'same' padding: every layer runs at the output size
    flops = [2 * 3 * 81 * 64 * pixels, 2 * 64 * 32 * pixels, 2 * 32 * 25 * 3 * pixels]
    for row, expected in zip(rows, flops + [sum(flops)]):
        assert row["flops_per_s"] * row["seconds"] == pytest.approx(expected, rel=1e-9), row["what"]
    assert rows[-1]["seconds"] == pytest.approx(sum(row["seconds"] for row in rows[:-1]))


@pytest.mark.slow
def test_bench_training_times_train_py_step_and_profiles_it(capsys):
    argv = ["--only", "training", "--train-data", "sample-train", "--steps", "1", "--repeats", "1"]
    assert bench.main(argv + ["--profile", "--json"]) == 0
    captured = capsys.readouterr()
    rows = [row for row in json.loads(captured.out)["rows"] if row["section"] == "training"]
    assert [row["model"] for row in rows] == ["srcnn", "edsr"]
    assert all(row["patches_per_s"] > 0 and row["fraction_of_ceiling"] > 0 for row in rows)
    # srcnn's step is its forward, the weight gradients of all three layers and the input
    # gradients of the last two (the data needs none): 40 kFLOP/px forward, 128 33x33 patches
    pixels = 128 * 33 * 33
    forward = [2 * 3 * 81 * 64 * pixels, 2 * 64 * 32 * pixels, 2 * 32 * 25 * 3 * pixels]
    expected = 2 * sum(forward) + forward[1] + forward[2]
    assert rows[0]["flops_per_step"] == pytest.approx(expected, rel=1e-3)
    assert "srcnn: 1 training steps" in captured.err and "convolution" in captured.err


@pytest.mark.slow
def test_bench_piunet_compares_both_layouts_on_their_outputs(capsys):
    assert bench.main(["--only", "piunet", "--piunet-batch", "1", "--repeats", "1", "--json"]) == 0
    rows = [row for row in json.loads(capsys.readouterr().out)["rows"] if row["section"] == "piunet"]
    assert [row["layout"] for row in rows] == ["mha", "sdpa"]
    assert rows[0]["max_abs_diff"] == 0 and rows[1]["max_abs_diff"] < 1e-4
    assert all(row["same_output"] and row["seconds"] > 0 and row["peak_bytes"] > 0 for row in rows)


@pytest.mark.slow
def test_bench_compile_row_computes_the_fast_path_numbers(capsys):
    argv = ["--only", "inference", "--models", "srcnn", "--size", "24", "--repeats", "1", "--json"]
    argv.append("--compile")
    assert bench.main(argv) == 0
    rows = {row["what"]: row for row in json.loads(capsys.readouterr().out)["rows"]}
    compiled = rows["srcnn fast path + compile"]
    assert compiled["max_abs_difference"] < 1e-5
    assert compiled["first_call_seconds"] >= compiled["seconds"] > 0


def test_bicubic_skip_compiles_without_graph_breaks_or_warnings():
    import torch._dynamo

    torch._dynamo.reset()  # trace afresh, whatever earlier tests compiled
    model = build_model("srcnn", 3).eval()
    with torch.inference_mode(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explanation = torch._dynamo.explain(model)(torch.rand(1, 3, 12, 12))
    assert explanation.graph_break_count == 0
    assert not [str(w.message) for w in caught if "imresize" in str(w.message)]


def test_no_command_imports_dynamo_at_start_up():
    """torch._dynamo costs about a second of every start-up; only torch.compile should load it."""
    code = "import sys, super_resolve, train, srkit; print('torch._dynamo' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
