"""Issue [16]: hostile inputs (PIUnet scenes, odd options, the Python API) are one line and
exit status 2 (or a raised UserError), write nothing, and leave their inputs as they were."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import super_resolve
from images import save_image
from utils import run_cli

ROOT = Path(__file__).resolve().parents[1]
PIUNET = ROOT / "checkpoints" / "piunet_x3.pth"


def _scene(folder: Path, side: int = 16, frames: int = 5) -> Path:
    """A small scene in the PROBA-V layout: 16-bit LR frames, 0/1 QM masks, HR and SM at x3."""
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    hr = torch.rand(1, 3 * side, 3 * side, generator=generator) * 0.1 + 0.05
    save_image(hr, folder / "HR.png", bits=16)
    save_image(torch.ones(1, 3 * side, 3 * side), folder / "SM.png")
    for i in range(frames):
        save_image(hr[:, 1::3, 1::3] + 0.002 * i, folder / f"LR{i:03d}.png", bits=16)
        save_image(torch.ones(1, side, side), folder / f"QM{i:03d}.png")
    return folder


def _spoil_scene(folder: Path, case: str) -> list[str]:
    """Spoil a good scene one way ([16] N4); returns extra command-line options."""
    if case == "frames of different sizes":
        save_image(torch.rand(1, 17, 16), folder / "LR002.png", bits=16)
    elif case == "a QM of another size":
        save_image(torch.ones(1, 15, 15), folder / "QM001.png")
    elif case == "an SM of another size":
        save_image(torch.ones(1, 30, 30), folder / "SM.png")
    elif case == "an HR of another size":
        save_image(torch.rand(1, 40, 40), folder / "HR.png", bits=16)
    elif case == "RGB frames":
        Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(folder / "LR001.png")
    elif case == "2x2 frames":
        for path in folder.glob("*.png"):
            path.unlink()
        for i in range(3):
            save_image(torch.rand(1, 2, 2), folder / f"LR{i:03d}.png", bits=16)
            save_image(torch.ones(1, 2, 2), folder / f"QM{i:03d}.png")
    elif case == "only HR.png":
        for path in folder.glob("*.png"):
            if path.name != "HR.png":
                path.unlink()
    elif case == "--outscale":
        return ["--outscale", "2"]
    elif case == "--ext":
        return ["--ext", "jpg"]
    elif case == "an existing output":  # a scene's outputs are never replaced unasked either
        (folder.parent / "out").mkdir()
        (folder.parent / "out" / "imgset0000_piunet_x3_uncertainty.png").write_bytes(b"keep")
    return []


SCENE_CASES = ["frames of different sizes", "a QM of another size", "an SM of another size",
               "an HR of another size", "RGB frames", "2x2 frames", "only HR.png", "--outscale", "--ext",
               "an existing output"]  # fmt: skip


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", SCENE_CASES)
def test_a_spoiled_scene_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    scene = _scene(tmp_path / "imgset0000")
    extra = _spoil_scene(scene, case)
    before = _snapshot(tmp_path)
    argv = ["--checkpoint", str(PIUNET), str(scene), "--out-dir", str(tmp_path / "out"), *extra]
    assert run_cli(super_resolve.main, argv) == 2, case
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, (case, err)
    assert _snapshot(tmp_path) == before  # no file written (out/ included), the scene as it was


def test_a_good_scene_is_fused(tmp_path, capsys):
    scene = _scene(tmp_path / "imgset0000")
    argv = ["--checkpoint", str(PIUNET), str(scene), "--out-dir", str(tmp_path / "out")]
    assert run_cli(super_resolve.main, argv) == 0
    assert (tmp_path / "out" / "imgset0000_piunet_x3.png").is_file()
