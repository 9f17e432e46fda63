"""The test run itself: it ends with one line naming what was skipped and how to enable it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import skip_summary

ROOT = Path(__file__).resolve().parent.parent


def test_skip_summary_groups_reasons_by_what_enables_them():
    reasons = ["SR_DATA_ROOT is unset: benchmark datasets not available"] * 3 + ["no CUDA device", "odd"]
    reasons += ["Skipped: CUDA is present"] * 2  # pytest's words for a skipif on a GPU machine
    line = skip_summary(reasons)
    assert line.startswith("skipped 7: 3 need benchmark sets (set SR_DATA_ROOT")
    assert "2 need a machine without CUDA" in line and "Skipped:" not in line
    assert "1 need a CUDA GPU" in line and "1 because odd" in line and "\n" not in line
    assert skip_summary([]) == "skipped: none"


@pytest.mark.slow
def test_a_run_without_the_data_ends_with_the_skip_line():
    env = {k: v for k, v in os.environ.items() if k not in ("SR_DATA_ROOT", "SR_REFERENCE_DIR", "CI")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_metrics.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("skipped ") and "need benchmark sets (set SR_DATA_ROOT" in last, last
