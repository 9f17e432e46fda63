"""Scoring by the benchmark protocol: a model's SR of a set's images against bicubic (per-image
and mean PSNR/SSIM on Y, frequency-band energy ratios), the JSON record of a set, and the
degradation-robustness study. `super_resolve.py`, the Python API (`srkit.SuperResolver.evaluate`)
and `make results` all score through these functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from data import ImagePair, load_pairs
from figures import panel_images, save_panel
from images import save_image
from imresize import imresize, upscale
from inference import Upscaler, tiled_apply
from metrics import (
    BURST_PROTOCOL,
    PROTOCOL,
    band_energy_ratios,
    check_scorable,
    psnr,
    radial_power_spectrum,
    score_labels,
    shave_border,
    ssim,
)
from registration import max_shift_for, register
from utils import ImageError

MIN_LR_SIDE = 3  # smaller inputs have no meaningful upscaling (and bicubic needs a neighbourhood)


def bicubic(lr: Tensor, scale: int) -> Tensor:
    """MATLAB-compatible bicubic upscaling of a (C, H, W) image, clamped to [0, 1]."""
    return upscale(lr, scale).clamp(0, 1)


def bicubic_array(lr: Tensor, scale: int, bits: int) -> np.ndarray:
    """`bicubic` as the (H, W, C) uint8/uint16 array of its output file, built in tiles (the
    kernel reaches 2 LR pixels, so 4 of overlap make it equal to the whole-image result)."""
    return tiled_apply(lambda crop: bicubic(crop, scale), lr, scale, tile=256, overlap=4, bits=bits)


def score(sr: Tensor, hr: Tensor, shave: int) -> tuple[float, float]:
    """PSNR and SSIM by the benchmark protocol (which shaves `scale` pixels)."""
    return psnr(sr, hr, shave=shave).item(), ssim(sr, hr, shave=shave).item()


def check_size(lr: Tensor, where: str) -> None:
    """Refuse inputs too small to upscale."""
    if min(lr.shape[-2:]) < MIN_LR_SIDE:
        raise ImageError(
            f"{where}: {lr.shape[-1]}x{lr.shape[-2]} is too small "
            f"(at least {MIN_LR_SIDE}x{MIN_LR_SIDE} pixels)"
        )


def image_row(name: str, sr: Tensor, bic: Tensor, hr: Tensor, shave: int, registration: str | None = None,
              scale: int = 1) -> dict:  # fmt: skip
    """PSNR/SSIM of the model's and of bicubic's upscale of one image, by the benchmark protocol,
    and registered (`registered_scores`) when `registration` names a mode."""
    (model_psnr, model_ssim), (bicubic_psnr, bicubic_ssim) = score(sr, hr, shave), score(bic, hr, shave)
    row = {"name": name, "model_psnr": model_psnr, "model_ssim": model_ssim,
           "bicubic_psnr": bicubic_psnr, "bicubic_ssim": bicubic_ssim}  # fmt: skip
    if registration not in (None, "none"):
        row.update(registered_scores(sr, bic, hr, shave, registration, scale), registration=registration)
    return row


def registered_scores(sr: Tensor, bic: Tensor, hr: Tensor, shave: int, mode: str, scale: int) -> dict:
    """PSNR/SSIM of model and bicubic after registering the reference to each (registration.py:
    the cross-sensor paper's registered metrics), on the pixels the shift keeps and the
    protocol's shave beyond them."""
    row = {}
    for who, image in (("model", sr), ("bicubic", bic)):
        pred, target, border = register(image[None], hr[None], mode, max_shift_for(scale))
        pred, target = pred[0].clamp(0, 1), target[0].clamp(0, 1)
        psnr_value, ssim_value = score(pred, target, max(0, shave - border))
        row[f"registered_{who}_psnr"], row[f"registered_{who}_ssim"] = psnr_value, ssim_value
    return row


def mean_row(rows: list[dict]) -> dict:
    """The mean of every numeric column over the rows."""
    keys = [k for k, v in rows[0].items() if isinstance(v, float)]
    return {"name": "mean", **{k: sum(r[k] for r in rows) / len(rows) for k in keys}}


def print_table(rows: list[dict], model_name: str, title: str, multi_frame: bool = False) -> None:
    """Per-image scores of model and baseline (PSNR/SSIM, or cPSNR/cSSIM), and the mean."""
    metric, similarity, baseline = score_labels(multi_frame)
    metric, similarity = metric.lower(), similarity.lower()  # as in the rows' keys
    width = max([len(r["name"]) for r in rows] + [10])
    model_col = max(12, len(model_name) + len(metric) + 1)
    base_col = max(12, len(baseline) + len(metric) + 1)
    first = "scene" if multi_frame else "image"
    header = (
        f"{first:{width}}  {model_name + ' ' + metric.upper():>{model_col}} {similarity.upper():>7}  "
        f"{baseline + ' ' + metric.upper():>{base_col}} {similarity.upper():>7}  {'gain':>6}"
    )
    challenge = "score" in rows[0]  # a real PROBA-V scene: the challenge's norm and score
    if challenge:
        header += f"  {'norm':>7} {'score':>7}"
    rule = "-" * len(header)

    def line(r: dict) -> str:
        model, base = r[f"model_{metric}"], r[f"bicubic_{metric}"]
        text = (
            f"{r['name']:{width}}  {model:{model_col}.3f} {r[f'model_{similarity}']:7.4f}  "
            f"{base:{base_col}.3f} {r[f'bicubic_{similarity}']:7.4f}  {model - base:+6.2f}"
        )
        return text + (f"  {r['norm']:7.3f} {r['score']:7.4f}" if challenge else "")

    print(f"{title}\n{header}\n{rule}")
    print("\n".join(line(r) for r in rows))
    print(f"{rule}\n{line(mean_row(rows))}")
    mean = mean_row(rows)
    if "registered_model_psnr" in mean:
        print(f"mean PSNR / SSIM with the reference registered to each result ({rows[0]['registration']}): "
              f"{model_name} {mean['registered_model_psnr']:.3f} / {mean['registered_model_ssim']:.4f}, "
              f"bicubic {mean['registered_bicubic_psnr']:.3f} / "
              f"{mean['registered_bicubic_ssim']:.4f}")  # fmt: skip


def l1_error(sr: Tensor, hr: Tensor, shave: int) -> float:
    """Mean absolute error in [0, 1] of the 8-bit-rounded SR on all channels, border shaved."""
    a = torch.round(sr.clamp(0, 1) * 255) / 255
    return shave_border((a - hr).abs(), shave).mean().item()


def evaluate_pairs(
    upscaler: Upscaler,
    pairs: Sequence[ImagePair],
    shave: int,
    sr_paths: Sequence[Path] = (),
    panel_paths: Sequence[Path] = (),
    progress: str | None = None,
    registration: str | None = None,
) -> tuple[list[dict], dict[str, list[Tensor]]]:
    """Each pair's row (model and bicubic PSNR/SSIM, their frequency-band energy ratios, and with
    `registration` their registered scores) and the radial power spectra of model, bicubic and
    HR; the SR images written to `sr_paths` and comparison panels to `panel_paths` when given;
    a progress bar named `progress`."""
    from tqdm import tqdm

    rows: list[dict] = []
    spectra: dict[str, list[Tensor]] = {}
    for index, pair in enumerate(tqdm(pairs, desc=progress, disable=progress is None, leave=False)):
        check_size(pair.lr, pair.name)
        check_scorable(pair.hr, pair.name, shave)
        sr, bic = upscaler(pair.lr), bicubic(pair.lr, upscaler.scale)
        row = image_row(pair.name, sr, bic, pair.hr, shave, registration, upscaler.scale)
        for who, image in (("model", sr), ("bicubic", bic)):
            for band, ratio in band_energy_ratios(image, pair.hr).items():
                row[f"{who}_energy_{band}"] = ratio
        rows.append(row)
        for who, image in (("model", sr), ("bicubic", bic), ("HR", pair.hr)):
            spectra.setdefault(who, []).append(radial_power_spectrum(image))
        if sr_paths:
            save_image(sr, sr_paths[index])
        if panel_paths:
            panel = panel_images(pair.lr, bic, sr, pair.hr, row, upscaler.name)
            save_panel(panel_paths[index], f"{pair.name} x{upscaler.scale}", panel)
    return rows, spectra


def protocol_note(scale: int, shave: int | None = None, multi_frame: bool = False) -> str:
    """The protocol a record states (single-image or PROBA-V's), saying so when `shave` differs."""
    protocol = BURST_PROTOCOL if multi_frame else PROTOCOL
    return (
        protocol
        if shave is None
        else f"{protocol} Here {shave} pixels are shaved, not the protocol's {scale}."
    )


def set_record(
    rows: list[dict],
    *,
    checkpoint: str,
    model: str,
    scale: int,
    dataset: str,
    protocol: str,
    self_ensemble: bool,
    shave: int | None = None,
) -> dict:
    """The JSON record of a scored set: what was scored and how, each image, and the mean
    (`make results` writes it as checkpoints/results/<checkpoint>_<set>.json)."""
    mean = {k: v for k, v in mean_row(rows).items() if k != "name"}
    return {
        "checkpoint": checkpoint,
        "model": model,
        "scale": scale,
        "dataset": dataset,
        "protocol": protocol,
        "self_ensemble": self_ensemble,
        **({"shave": shave} if shave is not None else {}),
        "images": rows,
        "mean": mean,
    }


def robustness(
    upscaler: Upscaler, dataset: str, kernels: Sequence[str], shave: int, progress: bool = False
) -> dict[str, dict[str, dict[str, float]]]:
    """The degradation-robustness study: for LR made by each kernel, the mean L1, PSNR and SSIM
    of the model, bicubic and bilinear upscaling ({kernel: {method: {l1, psnr, ssim}}})."""
    scale = upscaler.scale
    methods = {upscaler.name: upscaler, "bicubic": lambda lr: bicubic(lr, scale),
               "bilinear": lambda lr: imresize(lr, size=(lr.shape[-2] * scale, lr.shape[-1] * scale),
                                               method="bilinear").clamp(0, 1)}  # fmt: skip
    results: dict[str, dict[str, dict[str, float]]] = {}
    for kernel in kernels:
        pairs = load_pairs(dataset, scale, degradations=(kernel,), progress=progress)
        sums = {name: {"l1": 0.0, "psnr": 0.0, "ssim": 0.0} for name in methods}
        for pair in pairs:
            check_size(pair.lr, pair.name)
            for name, method in methods.items():
                sr = method(pair.lr)
                p, q = score(sr, pair.hr, shave)
                sums[name]["psnr"] += p
                sums[name]["ssim"] += q
                sums[name]["l1"] += l1_error(sr, pair.hr, shave)
        results[kernel] = {
            name: {k: v / len(pairs) for k, v in values.items()} for name, values in sums.items()
        }
    return results
