"""The READMEs name the code as it is: every `module.name` they cite exists, and the model
table lists every registered model with options its constructor takes."""

from __future__ import annotations

import importlib
import inspect
import re
import typing
from pathlib import Path

import pytest

from model import MODELS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "checkpoints/README.md", "wip/README.md"]
MODULES = {path.stem for path in ROOT.glob("*.py")}
FILE_SUFFIXES = {
    "py",
    "log",
    "json",
    "csv",
    "pth",
    "pt",
    "onnx",
    "png",
    "jpg",
    "webp",
    "txt",
    "md",
    "toml",
    "sh",
}


def cited_names(text: str) -> set[tuple[str, str]]:
    """(module, attribute) pairs cited as `module.name`, `module.name(...)`, `module.name.more`..."""
    pairs = re.findall(r"`(\w+)\.(\w+)(?=[`(\[.,\s])", text)
    return {(module, name) for module, name in pairs if module in MODULES and name not in FILE_SUFFIXES}


def model_table(readme: str) -> dict[str, list[str]]:
    """The README's model table: name -> the option names in its options column ("as `basic`"
    standing for that row's options)."""
    table = readme.split("| name | network | options |", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        options = [token.split("=")[0] for token in re.findall(r"`([^`]+)`", cells[-1])]
        rows[cells[0].strip("`")] = [o for token in options for o in rows.get(token, [token])]
    return rows


def constructor_parameters(make) -> set[str]:
    """Keyword names a registry entry takes, following **options into the class it returns."""
    parameters = inspect.signature(make).parameters.values()
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        returned = typing.get_type_hints(make).get("return")
        assert returned is not None, f"{make.__name__} takes **options but names no class it returns"
        names |= constructor_parameters(returned)
    return names


@pytest.mark.parametrize("doc", DOCS)
def test_every_cited_module_name_exists(doc):
    cited = cited_names((ROOT / doc).read_text())
    missing = [f"{m}.{name}" for m, name in sorted(cited) if not hasattr(importlib.import_module(m), name)]
    assert not missing, f"{doc} cites names the code does not have: {missing}"


def test_the_citation_pattern_finds_stale_names():
    text = (
        "`utils.psnr(sr, hr)`, `metrics.ssim[0]`, `data.imresize`, `srkit.Upscaler.run` and `model.old, x`, "
        "written by `train.py inspect` to `gpu_check.log` and `model.onnx`; `torch.compile(m)` is not ours"
    )
    assert cited_names(text) == {
        ("utils", "psnr"),
        ("metrics", "ssim"),
        ("data", "imresize"),
        ("srkit", "Upscaler"),
        ("model", "old"),
    }


def test_the_model_table_lists_every_registered_model_and_real_options():
    rows = model_table((ROOT / "README.md").read_text())
    assert set(rows) == set(MODELS)
    assert rows["residual"] == rows["basic"]  # "as `basic`"
    for name, options in rows.items():
        parameters = constructor_parameters(MODELS[name][0])
        assert "in_channels" in parameters, f"{name} does not take in_channels, as the README says each does"
        unknown = [o for o in options if o not in parameters]
        assert not unknown, f"README's {name} row names options {name} does not take: {unknown}"
