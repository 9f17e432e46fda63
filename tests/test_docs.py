"""The READMEs and docs/ name the code as it is: every `module.name` they cite exists, the model
table (docs/models.md) lists every registered model with options its constructor takes, the
README keeps its size and its sections in order, and every relative link points to a file."""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import typing
from pathlib import Path

import pytest

from model import MODELS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "checkpoints/README.md", "wip/README.md"]
DOCS += sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "docs").glob("*.md"))
MODEL_TABLE = "docs/models.md"  # where the `| name | network | options |` table lives
README_MAX_BYTES = 15_000
# The README's sections (its `## ` headings), in this order and no others.
README_SECTIONS = [
    "What it is",
    "Two commands: `make demo` and `make test`",
    "Upscale your own image",
    "Evaluate on a benchmark",
    "Train",
    "Remote sensing",
    "Python API",
    "What we promise",
    "File map",
    "Where the rest is",
]
MODULES = {path.stem for path in [*ROOT.glob("*.py"), *ROOT.glob("tools/*.py")]}
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


def model_table(text: str) -> dict[str, list[str]]:
    """The model table of a document: name -> the option names in its options column ("as `basic`"
    standing for that row's options)."""
    table = text.split("| name | network | options |", 1)[1].split("\n\n", 1)[0]
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
    rows = model_table((ROOT / MODEL_TABLE).read_text())
    assert set(rows) == set(MODELS)
    assert rows["residual"] == rows["basic"]  # "as `basic`"
    for name, options in rows.items():
        parameters = constructor_parameters(MODELS[name][0])
        assert "in_channels" in parameters, (
            f"{name} does not take in_channels, as {MODEL_TABLE} says each does"
        )
        unknown = [o for o in options if o not in parameters]
        assert not unknown, f"{MODEL_TABLE}'s {name} row names options {name} does not take: {unknown}"


def without_fences(text: str) -> str:
    """Markdown text with its fenced code blocks removed."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def without_code(text: str) -> str:
    """Markdown text with its fenced code blocks and inline code spans removed."""
    return re.sub(r"`[^`\n]*`", "", without_fences(text))


def relative_links(text: str) -> list[str]:
    """Targets of the Markdown links and images that are not URLs or in-page anchors."""
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", without_code(text))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_the_readme_is_short_and_its_sections_come_in_order():
    readme = ROOT / "README.md"
    size = readme.stat().st_size
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes; at most {README_MAX_BYTES} (move detail to docs/)"
    )
    text = without_fences(readme.read_text())
    assert text.startswith("# "), "README.md starts with its title"
    assert re.findall(r"^## (.+?)\s*$", text, re.M) == README_SECTIONS


@pytest.mark.parametrize("doc", DOCS)
def test_every_relative_link_points_to_a_file_that_exists(doc):
    path = ROOT / doc
    links = relative_links(path.read_text())
    broken = [link for link in links if not (path.parent / link.split("#", 1)[0]).exists()]
    assert not broken, f"{doc} links to files that do not exist: {broken}"


def test_the_link_pattern_finds_relative_links_only():
    text = (
        'See [training](docs/training.md), ![panel](docs/p.png "title"), [sec](docs/a.md#part), '
        "[web](https://example.org/x.md), [here](#top), `[not](code.md)` and\n```\n[nor](block.md)\n```\n"
    )
    assert relative_links(text) == ["docs/training.md", "docs/p.png", "docs/a.md#part"]


def test_the_readme_links_every_docs_page():
    linked = {
        (ROOT / link.split("#", 1)[0]).resolve() for link in relative_links((ROOT / "README.md").read_text())
    }
    unlinked = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"README.md does not link these docs pages: {unlinked}"


# The command-line scripts and how to reach each parser's options (subcommands included).
SCRIPTS = ("train", "super_resolve", "data", "info", "bench", "gpu_check", "bursts", "landsat_study")
# Flags of other programs that the documents show (git, torchrun, tensorboard, pip, pytest, make).
FOREIGN_FLAGS = {"--depth", "--nproc_per_node", "--logdir", "--strict-markers", "--durations", "--help",
                 "--no-cache-dir", "--index-url", "--extra-index-url", "--upgrade", "--no-deps"}  # fmt: skip


FLAG = r"(?<![\w-])(--[a-z][a-z0-9_-]*[a-z0-9])"  # a long option as written: --num-epoch


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every script's parser and subparser, by name ('train resume', 'super_resolve', ...)."""
    found = {}
    for name in SCRIPTS:
        module = importlib.import_module(name)
        build = getattr(module, "build_parser", None)
        if build is None:
            continue
        found.update(_with_subparsers(name, build()))
    return found


def _with_subparsers(name: str, parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """A parser and, under 'name sub', each of its subcommands' parsers."""
    found = {name: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                found.update(_with_subparsers(f"{name} {sub}", subparser))
    return found


def known_flags() -> set[str]:
    """Every option string of every script."""
    return {
        flag for parser in parsers().values() for action in parser._actions for flag in action.option_strings
    }


def help_texts() -> str:
    """The help of every script and subcommand, as a user reads it."""
    return "\n".join(parser.format_help() for parser in parsers().values())


@pytest.mark.parametrize("doc", DOCS)
def test_every_flag_a_document_shows_exists(doc):
    shown = set(re.findall(FLAG, (ROOT / doc).read_text()))
    unknown = sorted(shown - known_flags() - FOREIGN_FLAGS)
    assert not unknown, f"{doc} shows options no script has: {unknown}"


def test_every_name_a_help_text_cites_exists():
    texts = help_texts()
    cited = cited_names(texts)
    missing = [f"{m}.{name}" for m, name in sorted(cited) if not hasattr(importlib.import_module(m), name)]
    assert not missing, f"--help texts cite names the code does not have: {missing}"
    unknown = sorted(
        set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*[a-z0-9])", texts)) - known_flags() - FOREIGN_FLAGS
    )
    assert not unknown, f"--help texts mention options no script has: {unknown}"
