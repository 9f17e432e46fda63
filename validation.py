"""Validation during training: the validation set and its scoring for each kind of model, and
the history columns that record it."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from bursts import Burst, BurstConfig, burst_evaluation_set, burst_training_set
from config import TrainConfig, default
from data import PatchDataset, load_pairs, rescaled_pairs
from imresize import degradation_kernels, upscale
from inference import Upscaler
from losses import make_loss, registered_l1, registered_uncertainty_loss
from metrics import check_scorable, psnr, scene_scores, score_labels, shave_border, ssim
from model import MULTI_FRAME, SINGLE_IMAGE, parse_model_options
from multispectral import WALD_DEGRADATIONS, RasterData, paired_data, raster_pairs, raster_paths, wald_data
from multispectral import scores as multispectral_scores
from registration import max_shift_for, register
from runtime import Runtime, autocast
from utils import DatasetError, UserError, atomic_write

# The validation columns of a history row, by kind of model: the score, its similarity
# index, and the same for the baseline (bicubic; for bursts the multi-frame baseline).
VALIDATION_KEYS = {
    SINGLE_IMAGE: ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim"),
    MULTI_FRAME: ("cpsnr", "cssim", "baseline_cpsnr", "baseline_cssim"),
}


def history_fields(kind: str) -> tuple[str, ...]:
    """The columns of a history row (and of history.csv) for a kind of model."""
    return ("epoch", "train_loss", *VALIDATION_KEYS[kind], "lr", "seconds", "patches_per_s")


def validation_of(row: dict) -> tuple[float | None, ...]:
    """(score, similarity, baseline score, baseline similarity) of a history row of either kind."""
    keys = VALIDATION_KEYS[MULTI_FRAME if "cpsnr" in row else SINGLE_IMAGE]
    return tuple(row.get(key) for key in keys)


def named_history(checkpoint: dict) -> list[dict]:
    """A checkpoint's history with its validation columns named for its kind (multi-frame
    runs written before the cPSNR columns had them as psnr, ssim, bicubic_psnr, bicubic_ssim)."""
    history = [dict(row) for row in checkpoint.get("history", [])]
    if checkpoint.get("kind") == MULTI_FRAME:
        old, new = VALIDATION_KEYS[SINGLE_IMAGE], VALIDATION_KEYS[MULTI_FRAME]
        for row in history:
            for a, b in zip(old, new):
                if a in row:
                    row[b] = row.pop(a)
    return history


def write_history_csv(history: list[dict], path: Path, kind: str) -> None:
    """history.csv, written atomically."""
    fields = history_fields(kind)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in fields})
    with atomic_write(path, "history") as tmp:
        tmp.write_text(buffer.getvalue())


@dataclass
class Task:
    """What differs between single-image and multi-frame training: data, loss, validation."""

    kind: str  # model.SINGLE_IMAGE or model.MULTI_FRAME, as stored in checkpoints
    dataset: Dataset
    step_loss: Callable[[nn.Module, list[Tensor], int], Tensor]  # (net, batch, epoch) -> loss
    validate: Callable[[nn.Module], tuple[float, float]]  # a network's (PSNR, SSIM) or (cPSNR, cSSIM)
    baseline: tuple[float, float]  # the same for the interpolation baseline
    summary: str  # one line for the start-up message
    example: Callable[[nn.Module], Tensor]  # a network's output on the first validation image
    radiometry: dict | None = None  # a multispectral model's value scale (multispectral.Radiometry)
    validation_name: str | None = None  # what the log calls the validation data (default --val-data)

    @property
    def labels(self) -> tuple[str, str, str]:
        """(score, similarity, baseline) as the log prints them: metrics.score_labels of the kind."""
        return score_labels(self.kind == MULTI_FRAME)


def single_image_task(config: TrainConfig, model: nn.Module, runtime: Runtime, show: bool) -> Task:
    """LR/HR patches, the chosen loss, PSNR/SSIM of full validation images against bicubic;
    rasters train by Wald's protocol instead (`wald_task`)."""
    rasters = raster_paths(config.train_data)
    if rasters is not None:
        return wald_task(config, rasters, runtime)
    raster_folder = raster_pairs(config.train_data)
    if raster_folder is not None:
        return paired_raster_task(config, raster_folder, runtime)
    options = parse_model_options(config.model_option)
    channels = options.get("in_channels", 3)
    kernels = degradation_kernels(config.degradation)
    train_pairs = load_pairs(config.train_data, config.scale, kernels, channels=channels, progress=show)
    train_pairs = rescaled_pairs(
        train_pairs, config.train_scales, config.scale, kernels, min_size=config.patch_size
    )
    # validation images keep their own channels: gray ones are scored on gray, as in the tables
    val_pairs = load_pairs(config.val_data, config.scale, progress=show)
    for pair in val_pairs:
        check_scorable(pair.hr, f"--val-data {pair.name}", shave=config.scale)
    dataset = PatchDataset(
        train_pairs,
        config.patch_size,
        config.patches_per_image,
        seed=config.seed,
        grid_stride=config.grid_stride,
        skip_small=config.small_images == "skip",
    )
    step_loss = patch_loss(config, runtime)
    scale = config.scale

    def scores(upscale: Callable[[Tensor], Tensor]) -> tuple[float, float]:
        results = [
            (psnr(sr, p.hr, shave=scale).item(), ssim(sr, p.hr, shave=scale).item())
            for p in val_pairs
            for sr in [upscale(p.lr)]
        ]
        return sum(r[0] for r in results) / len(results), sum(r[1] for r in results) / len(results)

    def evaluated(net: nn.Module, use: Callable[[Upscaler], Any]) -> Any:
        return evaluate_with(net, use, config, channels, runtime)

    def validate(net: nn.Module) -> tuple[float, float]:
        return evaluated(net, scores)

    def example(net: nn.Module) -> Tensor:
        return evaluated(net, lambda upscaler: upscaler(val_pairs[0].lr))

    baseline = scores(lambda lr: upscale(lr, scale))
    summary = (
        f"{len(dataset.pairs)} images{_left_out(dataset, config.patch_size)}, {len(dataset)} patches/epoch, "
        f"loss {config.loss}; validation "
        f"PSNR on {config.val_data} (bicubic {baseline[0]:.2f} dB)"
    )
    return Task(SINGLE_IMAGE, dataset, step_loss, validate, baseline, summary, example)


def evaluate_with(
    net: nn.Module,
    use: Callable[[Upscaler], Any],
    config: TrainConfig,
    channels: int,
    runtime: Runtime,
    clip: bool = True,
) -> Any:
    """`use` applied to the network in eval mode behind an Upscaler (tiles of 256, overlap 16;
    `clip` as Upscaler's), its training mode restored after."""
    mode = net.training
    upscaler = Upscaler(model=net.eval(), name=config.model, scale=config.scale, channels=channels,
                        device=runtime.device, tile=256, overlap=16, clip=clip)  # fmt: skip
    try:
        return use(upscaler)
    finally:
        net.train(mode)


def patch_loss(config: TrainConfig, runtime: Runtime) -> Callable[[nn.Module, list[Tensor], int], Tensor]:
    """The loss of a batch of (LR, HR) patches, `loss_border` HR pixels left out at the edges,
    after registering the target to the prediction when --registration asks."""
    loss_fn = make_loss(config.loss, runtime.device, config.perceptual_weights)
    border, registration, max_shift = config.loss_border, config.registration, max_shift_for(config.scale)

    def step_loss(net: nn.Module, batch: list[Tensor], epoch: int) -> Tensor:
        lr, hr = batch
        with autocast(runtime):
            sr = net(lr.contiguous(memory_format=torch.channels_last))
        sr, hr = shave_border(sr.float(), border), shave_border(hr, border)
        if registration != "none":  # the target moved onto the prediction (registration.py)
            anchor = shave_border(upscale(lr.float(), config.scale), border)
            sr, hr, _ = register(sr, hr, registration, max_shift, anchor)
        return loss_fn(sr, hr)

    return step_loss


def wald_task(config: TrainConfig, rasters: list[Path], runtime: Runtime) -> Task:
    """Wald's protocol on multispectral rasters (multispectral.py): patches of each raster's
    western part and its version degraded by --degradation; validated on the eastern part (LR
    by the first kernel)."""
    kernels = tuple(config.degradation.split(","))
    if not set(kernels) <= set(WALD_DEGRADATIONS):
        raise UserError(f"--degradation {config.degradation}: Wald's protocol on rasters takes "
                        f"{' or '.join(WALD_DEGRADATIONS)}, or both as a comma list")  # fmt: skip
    _check_raster_options(config, "rasters train by Wald's protocol")
    data = wald_data(rasters, config.scale, kernels, config.holdout, config.value_scale,
                     config.value_offset)  # fmt: skip
    bands = len(data.radiometry.bands)
    what = f"{len(rasters)} raster(s) of {bands} bands by Wald's protocol (LR by {config.degradation})"
    return raster_task(config, data, what, str(rasters[0]), runtime)


def paired_raster_task(config: TrainConfig, pairs: list[tuple[Path, Path]], runtime: Runtime) -> Task:
    """(HR, LR) raster pairs from two sensors (multispectral.paired_data): patches of each pair's
    western part; validated on the eastern part."""
    if config.degradation != default("degradation"):
        raise UserError(f"--degradation {config.degradation}: pairs from two sensors bring their own LR "
                        "rasters (lr/); leave it out")  # fmt: skip
    _check_raster_options(config, "raster pairs validate on their held-out region")
    data = paired_data(pairs, config.scale, config.holdout, config.value_scale, config.value_offset)
    what = f"{len(pairs)} raster pair(s) of {len(data.radiometry.bands)} bands from two sensors"
    return raster_task(config, data, what, str(pairs[0][1]), runtime)


def _left_out(dataset: PatchDataset, patch_size: int) -> str:
    """' (N smaller than the 144 px patch left out)' for the log, or '' when none were."""
    count = len(dataset.left_out)
    return f" ({count} smaller than the {patch_size} px patch left out)" if count else ""


def _check_raster_options(config: TrainConfig, why: str) -> None:
    """Refuse the options of image sets that rasters do not take, in one line."""
    for key in ("train_scales", "val_data"):
        if getattr(config, key) != default(key):
            raise UserError(f"--{key.replace('_', '-')} is for image sets; {why} and validate on their "
                            "held-out region (--holdout)")  # fmt: skip


def raster_task(config: TrainConfig, data: RasterData, what: str, first: str, runtime: Runtime) -> Task:
    """Patches of the rasters' training regions, the chosen loss; mean per-band PSNR/SSIM on
    reflectance of their eastern, held-out regions, against bicubic."""
    radiometry = data.radiometry
    channels = parse_model_options(config.model_option).get("in_channels", 3)
    if channels != len(radiometry.bands):
        raise UserError(f"{first}: {len(radiometry.bands)} bands, but {config.model} is built for "
                        f"{channels} (--model-option in_channels={len(radiometry.bands)})")  # fmt: skip
    dataset = PatchDataset(data.train, config.patch_size, config.patches_per_image, seed=config.seed,
                           grid_stride=config.grid_stride,
                           skip_small=config.small_images == "skip")  # fmt: skip
    for pair in data.held_out:
        check_scorable(pair.hr, f"the held-out region of {pair.name}", shave=config.scale)
    scale, to_reflectance = config.scale, radiometry.model_to_reflectance

    def scores(upscale: Callable[[Tensor], Tensor]) -> tuple[float, float]:
        results = [
            multispectral_scores(to_reflectance(upscale(p.lr)), to_reflectance(p.hr), scale, scale)
            for p in data.held_out
        ]
        return (
            sum(r["psnr"] for r in results) / len(results),
            sum(r["ssim"] for r in results) / len(results),
        )

    def evaluated(net: nn.Module, use: Callable[[Upscaler], Any]) -> Any:
        return evaluate_with(net, use, config, channels, runtime, clip=False)

    def validate(net: nn.Module) -> tuple[float, float]:
        return evaluated(net, scores)

    def example(net: nn.Module) -> Tensor:  # three bands, as a false-colour image
        return evaluated(net, lambda upscaler: upscaler(data.held_out[0].lr)[:3].clamp(0, 1))

    baseline = scores(lambda lr: upscale(lr, scale))
    summary = (
        f"{what}{_left_out(dataset, config.patch_size)}, {len(dataset)} patches/epoch from the western "
        f"{1 - config.holdout:.0%}, loss "
        f"{config.loss}; validation: mean band PSNR on reflectance of the eastern {config.holdout:.0%} "
        f"(bicubic {baseline[0]:.2f} dB)"
    )
    return Task(SINGLE_IMAGE, dataset, patch_loss(config, runtime), validate, baseline, summary, example,
                radiometry.as_dict(), "held-out")  # fmt: skip


def multi_frame_task(config: TrainConfig, model: nn.Module, runtime: Runtime, show: bool) -> Task:
    """Bursts (synthetic from any image set, or PROBA-V scenes), the paper's registered loss
    schedule, cPSNR/cSSIM of held-out scenes against the bicubic upscale of the frames' mean."""
    burst = BurstConfig.from_options(config)
    dataset = burst_training_set(
        config.train_data, burst, config.patch_size, config.patches_per_image, config.seed, show
    )
    val_bursts = burst_evaluation_set(config.val_data, burst, show)
    if not val_bursts:
        raise DatasetError(f"{config.val_data}: no validation scene with an HR image")

    def step_loss(net: nn.Module, batch: list[Tensor], epoch: int) -> Tensor:
        frames, weights, hr, mask = batch
        with autocast(runtime):
            mu, sigma = net(frames, weights)
        if epoch == 1:  # the paper: registered L1 first, then the uncertainty loss
            return registered_l1(mu.float(), hr, mask)
        return registered_uncertainty_loss(mu.float(), sigma.float(), hr, mask)

    def scores(fuse: Callable[[Burst], Tensor]) -> tuple[float, float]:
        results = [scene_scores(fuse(b).clamp(0, 1), b.hr, b.mask) for b in val_bursts]
        return sum(r[0] for r in results) / len(results), sum(r[1] for r in results) / len(results)

    def evaluated(net: nn.Module, use: Callable[[Callable[[Burst], Tensor]], Any]) -> Any:
        mode = net.training
        net.eval()

        @torch.inference_mode()
        def fuse(burst: Burst) -> Tensor:
            frames, weights = (
                burst.frames[None].to(runtime.device),
                burst.frame_weights()[None].to(runtime.device),
            )
            return net(frames, weights)[0][0].float().cpu()

        try:
            return use(fuse)
        finally:
            net.train(mode)

    def validate(net: nn.Module) -> tuple[float, float]:
        return evaluated(net, scores)

    def example(net: nn.Module) -> Tensor:
        return evaluated(net, lambda fuse: fuse(val_bursts[0]).clamp(0, 1))

    baseline = scores(lambda burst: burst.baseline_image(config.scale))
    summary = (
        f"{len(dataset)} bursts/epoch of {config.frames} frames, registered L1 (epoch 1) then "
        f"registered Laplace NLL; validation cPSNR on {len(val_bursts)} {config.val_data} scenes "
        f"(baseline {baseline[0]:.2f} dB: bicubic of the frames' mean; for PROBA-V-like and real scenes "
        "of the clearest frames')"
    )
    return Task(MULTI_FRAME, dataset, step_loss, validate, baseline, summary, example)
