"""Every network of the toolkit, and the registry that builds them by name.

Every model maps an LR batch (B, C, H, W) in [0, 1] to the SR batch (B, C, sH, sW).
Models that work on a pre-upsampled image do the MATLAB-compatible bicubic upscaling
inside (`data.imresize`), so callers treat all models alike.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from data import imresize


class SRCNN(nn.Module):
    """SRCNN (Dong et al. 2014) as the assignment specifies it: 9-1-5, 64/32 filters, RGB.

    Input: the LR image, upscaled inside by bicubic. `f2` = 5 or 3 gives the paper's
    9-5-5 / 9-3-5 variants; `in_channels=1` the paper's Y-channel model.
    """

    def __init__(
        self,
        scale: int = 3,
        in_channels: int = 3,
        f1: int = 9,
        f2: int = 1,
        f3: int = 5,
        n1: int = 64,
        n2: int = 32,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.features = nn.Conv2d(in_channels, n1, f1, padding=f1 // 2)
        self.mapping = nn.Conv2d(n1, n2, f2, padding=f2 // 2)
        self.reconstruction = nn.Conv2d(n2, in_channels, f3, padding=f3 // 2)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, lr: Tensor) -> Tensor:
        upscaled = imresize(lr, self.scale)
        x = self.relu(self.features(upscaled))
        x = self.relu(self.mapping(x))
        return self.reconstruction(x)


# name -> (class, one-line description); the registry is a plain dict.
MODELS: dict[str, tuple[type[nn.Module], str]] = {
    "srcnn": (SRCNN, "SRCNN 9-1-5 on the bicubic-upscaled image (Dong et al. 2014), as the assignment"),
}


def build_model(name: str, scale: int = 3, **options: Any) -> nn.Module:
    """Build a registered model; raises KeyError for unknown names, TypeError for bad options."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name][0](scale=scale, **options)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_zoo(scale: int = 3) -> list[tuple[str, int, str]]:
    """(name, parameters at default options, description) for every registered model."""
    return [(name, count_parameters(build_model(name, scale)), text) for name, (_, text) in MODELS.items()]
