"""Training losses: pixel losses, the VGG16 perceptual loss, PIUnet's registered losses."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from images import MATLAB_YCBCR
from metrics import shift_search
from utils import UserError, first_line

# ---------------------------------------------------------------------------------------
# Multi-frame (PIUnet): registered, bias-corrected, masked (see metrics.shift_search)
# ---------------------------------------------------------------------------------------


def registered_l1(pred: Tensor, target: Tensor, mask: Tensor, border: int = 3) -> Tensor:
    """PIUnet's registered L1: per image, the smallest masked mean |target - pred - bias| over
    the shifts; the batch mean of that. (B, 1, H, W) inputs, scalar output."""
    crop, targets, masks, bias = shift_search(pred, target, mask, border)
    count = masks.sum(dim=(-2, -1)).clamp(min=1)
    l1 = (masks * (targets - crop - bias).abs()).sum(dim=(-2, -1)) / count  # (B, S, S)
    return l1.flatten(1).min(dim=1).values.mean()


def registered_uncertainty_loss(
    mu: Tensor, sigma: Tensor, target: Tensor, mask: Tensor, border: int = 3
) -> Tensor:
    """Registered Laplace negative log-likelihood, sigma + |y - mu - bias| * exp(-sigma), with
    the same shift search as `registered_l1`.

    The brightness bias corrects the mean `mu` only. (The authors' code also adds it to the
    log-scale `sigma`, which has no meaning for a scale parameter; we follow the math.)
    """
    crop, targets, masks, bias = shift_search(mu, target, mask, border)
    h, w = crop.shape[-2:]
    log_scale = sigma[:, 0, border : border + h, border : border + w][:, None, None]
    count = masks.sum(dim=(-2, -1)).clamp(min=1)
    nll = log_scale + (targets - crop - bias).abs() * torch.exp(-log_scale)
    per_shift = (masks * nll).sum(dim=(-2, -1)) / count
    return per_shift.flatten(1).min(dim=1).values.mean()


# ---------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------


def charbonnier_loss(sr: Tensor, hr: Tensor, eps: float = 1e-3) -> Tensor:
    """Charbonnier loss mean(sqrt((sr - hr)^2 + eps^2)), a smooth L1 (Lai et al. 2017)."""
    return torch.sqrt((sr - hr).pow(2) + eps * eps).mean()


VGG16_RELU3_3 = 16  # torchvision's VGG16 `features` up to and including relu3_3


class LossError(UserError):
    """A loss that cannot be set up (perceptual weights unavailable, torchvision missing)."""


def _vgg16_weights():  # noqa: ANN202  (torchvision's enum; imported only when the loss is used)
    """torchvision's VGG16 ImageNet weights entry (URL, normalization), imported on demand so
    that the other losses, training and inference never need torchvision."""
    try:
        from torchvision.models import VGG16_Weights
    except ImportError as err:
        raise LossError(f"the perceptual loss needs torchvision ({first_line(err)}): "
                        "pip install -r requirements.txt") from None  # fmt: skip
    return VGG16_Weights.IMAGENET1K_V1


class PerceptualLoss(nn.Module):
    """L1 between VGG16 features (relu1_2, relu2_2, relu3_3) of SR and HR, plus a small pixel L1.

    As in Johnson et al. 2016 ("Perceptual losses for real-time style transfer and
    super-resolution"); the pixel term keeps colours and brightness, to which the classifier's
    features are insensitive. The layers are torchvision's (`vgg.make_layers`, VGG16's
    configuration) with its ImageNet normalization; the network is frozen.
    """

    taps = (3, 8, 15)

    def __init__(self, state_dict: dict[str, Tensor] | None = None, pixel_weight: float = 0.1) -> None:
        super().__init__()
        normalize = _vgg16_weights().transforms()  # first: says so if torchvision is missing
        from torchvision.models.vgg import cfgs, make_layers

        self.features = make_layers(cfgs["D"])[:VGG16_RELU3_3]
        for layer in self.features:
            if isinstance(layer, nn.ReLU):
                layer.inplace = False  # the tapped activations feed the loss as they are
        if state_dict is not None:
            wanted = {k: v for k, v in state_dict.items() if k.startswith("features.")}
            try:
                missing = self.load_state_dict(wanted, strict=False).missing_keys
            except RuntimeError as err:  # tensors of other shapes
                raise LossError(f"perceptual weights do not fit VGG16 ({first_line(err)})") from None
            if missing:
                raise LossError(
                    f"perceptual weights lack {', '.join(missing[:3])} (not a torchvision VGG16?)"
                )
        self.features.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(normalize.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(normalize.std).view(1, 3, 1, 1), persistent=False)
        self.pixel_weight = pixel_weight

    def train(self, mode: bool = True) -> PerceptualLoss:
        """The feature network always stays in eval mode."""
        return self

    def _features(self, img: Tensor) -> list[Tensor]:
        x = (img.expand(-1, 3, -1, -1) - self.mean) / self.std  # gray -> RGB
        out = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                out.append(x)
        return out

    def forward(self, sr: Tensor, hr: Tensor) -> Tensor:
        loss = self.pixel_weight * F.l1_loss(sr, hr)
        for a, b in zip(self._features(sr), self._features(hr.detach())):
            loss = loss + F.l1_loss(a, b)
        return loss


def perceptual_weights(path: str | None) -> dict[str, Tensor]:
    """torchvision's VGG16 ImageNet weights: from `path`, else downloaded by torchvision (torch
    hub cache)."""
    if path:
        try:
            weights = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, KeyError, pickle.UnpicklingError) as err:
            raise LossError(f"{path}: cannot read perceptual weights ({first_line(err)})") from None
        if not isinstance(weights, dict) or not all(isinstance(w, Tensor) for w in weights.values()):
            raise LossError(f"{path}: not a state_dict of tensors (torchvision's VGG16 weights expected)")
        return weights
    weights = _vgg16_weights()
    try:
        return weights.get_state_dict(progress=False)
    except Exception as err:  # any network or cache failure ends in the same advice
        raise LossError(
            f"the perceptual loss needs torchvision's VGG16 weights and they could not be downloaded "
            f"({first_line(err)}); download {weights.url} elsewhere and pass --perceptual-weights FILE"
        ) from None


# BT.601 YCbCr (MATLAB rgb2ycbcr) rows for R, G, B in [0, 1]: Y, Cb, Cr without offsets, in [0, 1].
_YCBCR = torch.tensor(MATLAB_YCBCR) / 255.0
CHROMA_WEIGHT = 0.25


def luma_mse_loss(sr: Tensor, hr: Tensor) -> Tensor:
    """MSE in BT.601 YCbCr with Cb and Cr weighted by CHROMA_WEIGHT: the benchmark scores Y
    only, and the chroma term keeps colours right. Plain MSE for other than 3 channels."""
    if sr.shape[-3] != 3:
        return F.mse_loss(sr, hr)
    diff = torch.einsum("ij,bjhw->bihw", _YCBCR.to(sr.device, sr.dtype), sr - hr)
    weights = torch.tensor([1.0, CHROMA_WEIGHT, CHROMA_WEIGHT], device=sr.device, dtype=sr.dtype)
    return (diff.square().mean(dim=(0, 2, 3)) * weights).sum() / weights.sum()


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mse": F.mse_loss,
    "luma": luma_mse_loss,
    "l1": F.l1_loss,
    "charbonnier": charbonnier_loss,
}
LOSS_NAMES = (*LOSSES, "perceptual")


def make_loss(
    name: str, device: torch.device, weights_path: str | None = None
) -> Callable[[Tensor, Tensor], Tensor]:
    """The training loss by name; `perceptual` loads its VGG16 weights (before any training)."""
    if name == "perceptual":
        return PerceptualLoss(perceptual_weights(weights_path)).to(device)
    return LOSSES[name]
