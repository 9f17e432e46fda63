"""Shared fixtures: the benchmark data and reference vectors the tests read from outside."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model import MODELS

# small settings of every single-image model, for fast tests
SMALL = {
    "edsr": {"preset": "tiny"},
    "unet": {"features": 8},
    "vdsr": {"depth": 5, "features": 16},
    "basic": {"depth": 4, "features": 16},
    "residual": {"depth": 4, "features": 16},
}
SINGLE_IMAGE = [name for name, (make, _) in MODELS.items() if not getattr(make, "multi_frame", False)]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _external(variable: str, what: str) -> Path:
    """A folder named by an environment variable; skip outside CI when unset, fail in CI."""
    value = os.environ.get(variable)
    if not value:
        if _in_ci():
            pytest.fail(f"{variable} is unset in CI; .ci/run should point it at ../shared")
        pytest.skip(f"{variable} is unset: {what} not available")
    path = Path(value)
    if not path.is_dir():
        pytest.fail(f"{variable}={value} is not a folder")
    return path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """Folder of reference vectors ($SR_REFERENCE_DIR)."""
    return _external("SR_REFERENCE_DIR", "reference vectors")


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Folder of benchmark sets ($SR_DATA_ROOT)."""
    return _external("SR_DATA_ROOT", "benchmark datasets")


def reference_file(folder: Path, name: str) -> Path:
    """A reference file that must exist: a missing one is a failure, not a skip."""
    path = folder / name
    if not path.is_file():
        pytest.fail(f"reference file {path} is missing")
    return path


def smooth_image_folder(folder: Path, count: int, size: int, seed: int) -> Path:
    """`count` smooth random colour PNGs of size x size (bicubic-enlarged noise) in a new folder."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        coarse = rng.integers(0, 256, (size // 6, size // 6, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((size, size), Image.BICUBIC).save(folder / f"img{i}.png")
    return folder


# What each kind of skip needs, to say in the run's last line how to enable it.
SKIP_CAUSES = {
    "SR_DATA_ROOT": "benchmark sets (set SR_DATA_ROOT to their folder, or `python data.py fetch`)",
    "SR_REFERENCE_DIR": "reference vectors (set SR_REFERENCE_DIR to their folder)",
    "CUDA device": "a CUDA GPU (run on one, or `tools/gpu_check.py run` on a lent one)",
    "CUDA is present": "a machine without CUDA (they check what --cuda says where there is none)",
}


def skip_summary(reasons: list[str]) -> str:
    """One line: how many tests were skipped, grouped by what they need and how to enable them."""
    if not reasons:
        return "skipped: none"
    counts: dict[str, int] = {}
    for reason in reasons:
        reason = reason.removeprefix("Skipped: ")
        known = (f"need {text}" for key, text in SKIP_CAUSES.items() if key in reason)
        cause = next(known, f"because {reason}")
        counts[cause] = counts.get(cause, 0) + 1
    parts = [f"{count} {cause}" for cause, count in sorted(counts.items(), key=lambda kv: -kv[1])]
    return f"skipped {len(reasons)}: " + "; ".join(parts)


_SKIPS = pytest.StashKey[str]()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Keep the skip summary for the very end of the run (after pytest's own counts)."""
    reasons = []
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reasons.append(longrepr[2] if isinstance(longrepr, tuple) else str(longrepr))
    config.stash[_SKIPS] = skip_summary(reasons)


def pytest_unconfigure(config) -> None:
    """Print the skip summary as the run's last line."""
    if _SKIPS in config.stash:
        print(config.stash[_SKIPS])
