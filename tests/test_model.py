"""model.py: SRCNN as specified, every network's shapes and trainability, rebuild, losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import SINGLE_IMAGE, SMALL

import losses
import metrics
from losses import LossError, PerceptualLoss, make_loss
from model import MODELS, SRCNN, build_model, count_parameters, load_model, model_zoo


def test_srcnn_is_exactly_the_9_1_5_rgb_network():
    model = SRCNN()
    shapes = [(name, tuple(p.shape)) for name, p in model.named_parameters()]
    assert shapes == [
        ("features.weight", (64, 3, 9, 9)), ("features.bias", (64,)),
        ("mapping.weight", (32, 64, 1, 1)), ("mapping.bias", (32,)),
        ("reconstruction.weight", (3, 32, 5, 5)), ("reconstruction.bias", (3,)),
    ]  # fmt: skip
    assert count_parameters(model) == 20099
    assert (model.features.padding, model.reconstruction.padding) == ((4, 4), (2, 2))
    assert isinstance(model.relu, torch.nn.ReLU)


def test_srcnn_paper_variants():
    assert (
        count_parameters(build_model("srcnn", f2=5)) == 3 * 81 * 64 + 64 + 64 * 25 * 32 + 32 + 32 * 25 * 3 + 3
    )
    assert build_model("srcnn", f2=3).mapping.weight.shape == (32, 64, 3, 3)
    y_model = build_model("srcnn", in_channels=1)
    assert y_model(torch.rand(1, 1, 7, 9)).shape == (1, 1, 21, 27)


@pytest.mark.parametrize("name", SINGLE_IMAGE)
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_every_model_maps_lr_to_sr_on_odd_sizes(name, scale):
    for channels in (1, 3, 4):
        model = build_model(name, scale, in_channels=channels, **SMALL.get(name, {}))
        out = model(torch.rand(2, channels, 13, 11))
        assert out.shape == (2, channels, 13 * scale, 11 * scale), (name, scale, channels)


@pytest.mark.parametrize("name", SINGLE_IMAGE)
def test_a_few_steps_lower_the_loss(name):
    torch.manual_seed(0)
    model = build_model(name, 3, **SMALL.get(name, {}))
    hr = F.avg_pool2d(torch.rand(4, 3, 48, 48), 3, stride=1, padding=1)  # some structure
    lr = F.avg_pool2d(hr, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss = F.mse_loss(model(lr), hr)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.9, (name, losses)


@pytest.mark.parametrize("name", SINGLE_IMAGE)
def test_rebuild_from_checkpoint_gives_identical_outputs(name, tmp_path):
    options = SMALL.get(name, {})
    model = build_model(name, 2, **options).eval()
    checkpoint = {
        "format": "srkit-checkpoint",
        "model": {"name": name, "scale": 2, "options": options},
        "state_dict": model.state_dict(),
    }
    torch.save(checkpoint, tmp_path / "c.pth")
    rebuilt = load_model(torch.load(tmp_path / "c.pth", weights_only=True))
    lr = torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        assert torch.equal(model(lr), rebuilt(lr))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", SINGLE_IMAGE)
def test_cuda_matches_cpu(name):
    model = build_model(name, 3, **SMALL.get(name, {})).eval()
    lr = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.cuda()(lr.cuda()).cpu(), model.cpu()(lr), atol=1e-4, rtol=1e-4)


def test_edsr_presets_and_report_init():
    assert count_parameters(build_model("edsr", 2, preset="baseline")) == 1_369_859  # EDSR-baseline x2
    assert count_parameters(build_model("edsr", 3, preset="tiny")) < count_parameters(build_model("edsr", 3))
    with pytest.raises(ValueError, match="preset"):
        build_model("edsr", 3, preset="huge")
    weights = build_model("basic", 3, init_std=0.05).body[0].weight
    assert abs(weights.std().item() - 0.05) < 0.005


def test_registry_lists_names_descriptions_and_counts():
    zoo = {name: (params, text) for name, params, text in model_zoo()}
    assert set(zoo) == set(MODELS) and zoo["srcnn"][0] == 20099
    assert all(text for _, text in zoo.values())
    with pytest.raises(KeyError, match="unknown model"):
        build_model("srgan")


def test_simple_losses():
    sr, hr = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
    assert make_loss("mse", torch.device("cpu"))(sr, hr).item() == pytest.approx(0.25)
    assert make_loss("l1", torch.device("cpu"))(sr, hr).item() == pytest.approx(0.5)
    assert make_loss("charbonnier", torch.device("cpu"))(sr, hr).item() == pytest.approx((0.25 + 1e-6) ** 0.5)


def test_luma_loss_weighs_y_fully_and_chroma_by_its_weight():
    luma = make_loss("luma", torch.device("cpu"))
    torch.manual_seed(0)
    sr, hr = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    y_mse = F.mse_loss(metrics.rgb_to_y(sr * 255), metrics.rgb_to_y(hr * 255)) / 255**2
    gray = torch.full((1, 3, 4, 4), 0.5)  # a gray offset changes Y only: no chroma term
    offset = torch.tensor([0.0, 0.1, 0.0]).view(1, 3, 1, 1)
    assert luma(gray + 0.1, gray).item() == pytest.approx(
        (0.1 * 219 / 255) ** 2 / (1 + 2 * losses.CHROMA_WEIGHT), rel=1e-5
    )
    assert luma(gray + offset, gray).item() > 0 and luma(sr, sr).item() == 0
    weights = 1 + 2 * losses.CHROMA_WEIGHT
    assert luma(sr, hr).item() > y_mse.item() / weights  # chroma errors count too
    assert luma(sr[:, :1], hr[:, :1]).item() == pytest.approx(F.mse_loss(sr[:, :1], hr[:, :1]).item())


def test_perceptual_loss_offline_with_random_weights():
    torch.manual_seed(0)
    loss_fn = PerceptualLoss(state_dict=None)
    hr = torch.rand(2, 3, 32, 32)
    assert loss_fn(hr, hr).item() == pytest.approx(0.0, abs=1e-7)
    sr = (hr + 0.1 * torch.randn_like(hr)).requires_grad_()
    loss = loss_fn(sr, hr)
    loss.backward()
    assert loss.item() > 0 and sr.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in loss_fn.parameters())
    assert loss_fn(hr[:, :1], hr[:, :1]).item() == pytest.approx(0.0, abs=1e-7)  # gray input works


def test_perceptual_loss_reads_torchvision_layout_weights(tmp_path):
    reference = PerceptualLoss(state_dict=None)
    weights = {f"features.{k}": v for k, v in reference.features.state_dict().items()}
    weights["classifier.0.weight"] = torch.zeros(2, 2)  # other VGG16 keys are ignored
    torch.save(weights, tmp_path / "vgg16.pth")
    loaded = make_loss("perceptual", torch.device("cpu"), str(tmp_path / "vgg16.pth"))
    x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    assert loaded(x, y).item() == pytest.approx(reference(x, y).item())
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(LossError, match="lack"):
        make_loss("perceptual", torch.device("cpu"), str(tmp_path / "partial.pth"))


def test_perceptual_loss_without_weights_is_a_clear_error(monkeypatch):
    from torchvision.models import VGG16_Weights

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(VGG16_Weights, "get_state_dict", offline)
    with pytest.raises(LossError, match="--perceptual-weights") as caught:
        make_loss("perceptual", torch.device("cpu"))
    assert VGG16_Weights.IMAGENET1K_V1.url in str(caught.value)


def test_perceptual_features_are_torchvisions_vgg16():
    """The loss taps torchvision's own VGG16 (relu1_2, relu2_2, relu3_3) under its ImageNet
    normalization: with the same weights, the same activations as `torchvision.models.vgg16`."""
    from torchvision.models import VGG16_Weights, vgg16

    torch.manual_seed(0)
    reference = vgg16(weights=None).eval()
    loss_fn = PerceptualLoss(state_dict=reference.state_dict())
    img = torch.rand(1, 3, 24, 24)
    normalize = VGG16_Weights.IMAGENET1K_V1.transforms()
    x = (img - torch.tensor(normalize.mean).view(1, 3, 1, 1)) / torch.tensor(normalize.std).view(1, 3, 1, 1)
    expected = [reference.features[: tap + 1](x) for tap in PerceptualLoss.taps]
    for got, want in zip(loss_fn._features(img), expected):
        torch.testing.assert_close(got, want)
    assert [type(layer).__name__ for layer in loss_fn.features][-1] == "ReLU" and len(loss_fn.features) == 16


def test_perceptual_loss_without_torchvision_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchvision.models", None)  # import fails as if not installed
    with pytest.raises(LossError, match="needs torchvision"):
        PerceptualLoss(state_dict=None)


def test_multiply_adds_per_pixel_match_the_layer_arithmetic():
    from model import multiply_adds_per_pixel

    srcnn = 9 * 9 * 3 * 64 + 64 * 32 + 5 * 5 * 32 * 3  # on the HR grid
    vdsr = 3 * 64 * 9 + 18 * 64 * 64 * 9 + 64 * 3 * 9
    # bicubic upscaling of the input adds a few tens per pixel
    assert srcnn <= multiply_adds_per_pixel(build_model("srcnn", 3), 3) <= srcnn + 100
    assert vdsr <= multiply_adds_per_pixel(build_model("vdsr", 2), 2) <= vdsr + 100
    edsr = build_model("edsr", 2, blocks=14, features=64)  # on the LR grid: a quarter per HR pixel at x2
    lr_grid = (3 * 64 * 9 + 29 * 64 * 64 * 9 + 64 * 256 * 9) / 4 + 64 * 3 * 9
    assert lr_grid <= multiply_adds_per_pixel(edsr, 2) <= lr_grid + 100


def test_a_deeper_body_from_a_trained_one_starts_as_that_network(monkeypatch):
    """--init-from a 4-block EDSR into an 8-block one (issue [19], a deeper body within the
    budget): the closing convolution moves to its new index and the new blocks start as the
    identity, so the deeper network's output is the trained one's."""
    import trainer

    shallow = build_model("edsr", scale=3, blocks=4, features=16)
    for parameter in shallow.parameters():  # not the zero-free default: every tensor matters
        torch.nn.init.normal_(parameter, std=0.05)
    spec = {"name": "edsr", "scale": 3, "options": {"blocks": 4, "features": 16}}
    monkeypatch.setattr(
        trainer, "load_checkpoint", lambda _: {"model": spec, "state_dict": shallow.state_dict()}
    )
    deep = build_model("edsr", scale=3, blocks=8, features=16)
    message = trainer.initialise_from(deep, "shallow.pth")
    assert "new blocks start as the identity" in message
    lr = torch.rand(2, 3, 14, 17)
    with torch.no_grad():
        torch.testing.assert_close(deep(lr), shallow(lr), rtol=0, atol=1e-6)
