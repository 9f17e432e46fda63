"""Issue [16]: a fuzzer (Hypothesis) over what users hand the toolkit: checkpoints, image files,
PIUnet scene folders and option values, each mutated and run through the CLIs in-process and
the Python API.

Every run must end in exit status 0, or 2 with one line on stderr; no traceback; nothing
written when it fails; the inputs byte-identical afterwards. The fast tier runs FAST examples
of each kind, `make test-all` FULL more (marked slow). Both are derandomized: the same examples
every run. A failure prints Hypothesis's falsifying example (each draw) and a
`@reproduce_failure` line that replays it.
"""

from __future__ import annotations

import copy
import io
import os
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import super_resolve
import train
from images import save_image
from srkit import SuperResolver
from utils import UserError, run_cli

ROOT = Path(__file__).resolve().parents[1]
SRCNN = ROOT / "checkpoints" / "srcnn_x3.pth"
PIUNET = ROOT / "checkpoints" / "piunet_x3.pth"
FAST, FULL = 12, 150  # examples of each kind: the fast tier, and `make test-all` on top of it
EXPLORE = int(os.environ.get("SR_FUZZ_EXAMPLES", "0"))  # > 0: that many fresh random examples instead


def budget(examples: int) -> Callable:
    """Hypothesis settings for a fixed, replayable budget of examples (SR_FUZZ_EXAMPLES=N: N new
    random ones, to explore; a failure prints its @reproduce_failure line all the same)."""
    return settings(
        max_examples=EXPLORE or examples,
        derandomize=not EXPLORE,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# ---------------------------------------------------------------------------------------
# The harness: run, then check the outcome
# ---------------------------------------------------------------------------------------


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(main: Callable, argv: list[str], capsys) -> tuple[int, str]:
    """A CLI in-process: its exit status and stderr (an exception other than the CLI's own
    one-line errors propagates and fails the test with its traceback)."""
    capsys.readouterr()
    try:
        status = run_cli(main, argv)
    except SystemExit as parse_error:  # argparse's one-line refusal
        status = parse_error.code
    return status, capsys.readouterr().err.strip()


def _check(status: int, err: str, before: dict[str, bytes], folder: Path, what: str) -> None:
    """Exit 0, or exit 2 with one line and nothing written; the inputs as they were."""
    after = _files(folder)
    assert status in (0, 2), f"{what}: exit status {status}: {err}"
    assert "Traceback" not in err, f"{what}: {err}"
    changed = [name for name, data in before.items() if after.get(name) != data]
    assert not changed, f"{what}: inputs changed or removed: {changed}"
    if status == 2:
        assert len(err.splitlines()) == 1, f"{what}: exit 2 with {len(err.splitlines())} lines: {err}"
        assert after == before, f"{what}: failed, yet wrote {sorted(set(after) - set(before))}"


def _api(call: Callable[[], object], what: str) -> None:
    """An API call either works or raises a UserError of one line."""
    try:
        call()
    except UserError as err:
        assert "\n" not in str(err), f"{what}: {err}"


# ---------------------------------------------------------------------------------------
# Checkpoints: drop, retype or resize any entry
# ---------------------------------------------------------------------------------------

ODD_VALUES = [None, True, -1, 0, 3, 10**12, 2.5, float("nan"), float("inf"), "", "x", "3", [], [1, 2],
              {}, {"a": 1}, torch.zeros(2), torch.zeros(0), torch.full((2, 2), float("nan")),
              torch.zeros(2, dtype=torch.int64)]  # fmt: skip


def _entries(value: object, path: tuple = ()) -> list[tuple]:
    """The paths to every entry of a checkpoint (long lists: their first and last items)."""
    found = [path]
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _entries(inner, (*path, key))
    elif isinstance(value, list | tuple):
        for index in sorted({0, len(value) - 1} if len(value) > 2 else range(len(value))):
            found += _entries(value[index], (*path, index))
    return found


def _resized(value: object) -> object:
    """The value with another size: a tensor reshaped or cut, a list or text shorter or longer."""
    if isinstance(value, torch.Tensor):
        return value.flatten()[: max(value.numel() - 1, 0)] if value.numel() > 1 else value.reshape(1, -1)
    if isinstance(value, list | tuple):
        return type(value)(list(value)[:-1]) if value else type(value)([0])
    if isinstance(value, str):
        return value * 40 + "\x1b[2J"
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value * 1000 + 1
    if isinstance(value, dict):
        return {**value, "extra": 1}
    return value


def _mutate(checkpoint: dict, path: tuple, operation: str, odd: object) -> object:
    """A copy of the checkpoint with the entry at `path` dropped, retyped (to `odd`) or resized."""
    spoiled = copy.deepcopy(checkpoint)
    if not path:
        return odd if operation == "retype" else _resized(spoiled)
    parent = spoiled
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if isinstance(parent, tuple):  # Adam's betas: tuples cannot be changed in place
        return spoiled
    if operation == "drop":
        del parent[key]
    elif operation == "retype":
        parent[key] = odd
    else:
        parent[key] = _resized(parent[key])
    return spoiled


class Trained(dict):
    """A tiny finished run's last.pth (loaded) and data, shown short in a falsifying example."""

    def __repr__(self) -> str:
        return "<a tiny finished run>"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny finished run: its last.pth loaded, and the folder of images it trained on."""
    from conftest import smooth_image_folder

    root = tmp_path_factory.mktemp("fuzz")
    data = smooth_image_folder(root / "train", 2, 36, seed=0)
    argv = ["train", "--train-data", str(data), "--val-data", str(data), "--out-dir", str(root / "run"),
            "--patch-size", "12", "--patches-per-image", "2", "--batch-size", "4", "--num-epoch", "1",
            "--quiet"]  # fmt: skip
    assert run_cli(train.main, argv) == 0
    return Trained(checkpoint=torch.load(root / "run" / "last.pth", weights_only=True), data=data)


def _fuzz_checkpoint(trained: dict, data: st.DataObject, tmp_path: Path, capsys, monkeypatch) -> None:
    checkpoint = trained["checkpoint"]
    path = data.draw(st.sampled_from(_entries(checkpoint)), label="entry")
    operation = data.draw(st.sampled_from(["drop", "retype", "resize"]), label="operation")
    odd = data.draw(st.sampled_from(ODD_VALUES), label="odd value") if operation == "retype" else None
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    torch.save(_mutate(checkpoint, path, operation, odd), folder / "fuzzed.pth")
    lr = folder / "lr.png"
    Image.fromarray(np.full((12, 12, 3), 100, dtype=np.uint8)).save(lr)
    fuzzed = str(folder / "fuzzed.pth")
    commands = [
        (train.main, ["inspect", fuzzed]),
        (super_resolve.main, ["--checkpoint", fuzzed, str(lr), "--out-dir", str(folder / "sr"), "--quiet"]),
        (train.main, ["resume", fuzzed, "--num-epoch", "1", "--quiet"]),  # checks all, trains nothing
    ]
    for main, argv in commands:
        before = _files(folder)
        status, err = _run(main, argv, capsys)
        _check(status, err, before, folder, f"{argv[0]} of a checkpoint with {path} {operation} {odd!r}")
        if status == 0 and main is super_resolve.main:  # leave the next command the same inputs
            for output in (folder / "sr").iterdir():
                output.unlink()
    _api(lambda: SuperResolver(fuzzed), f"SuperResolver of {path} {operation}")


# ---------------------------------------------------------------------------------------
# Image files: truncated, bytes flipped, headers that lie
# ---------------------------------------------------------------------------------------


def _image_bytes(kind: str) -> bytes:
    """A small image file of each kind the toolkit reads."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (14, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    if kind == "geotiff":
        from rasterio.io import MemoryFile
        from rasterio.transform import from_origin

        grid = from_origin(500_000, 4_600_000, 20, 20)
        profile = {"driver": "GTiff", "width": 16, "height": 14, "count": 3, "dtype": "uint8",
                   "crs": "EPSG:32633", "transform": grid, "nodata": 0}  # fmt: skip
        with MemoryFile() as memory:
            with memory.open(**profile) as raster:
                raster.write(rgb.transpose(2, 0, 1))
            return memory.read()
    if kind == "png16":
        path = Path(tempfile.mkdtemp()) / "a.png"
        save_image(torch.from_numpy(rgb).permute(2, 0, 1) / 255.0, path, bits=16)
        return path.read_bytes()
    pil_format = {"png8": "PNG", "tiff": "TIFF", "bmp": "BMP", "jpeg": "JPEG", "webp": "WEBP"}[kind]
    Image.fromarray(rgb).save(buffer, format=pil_format)
    return buffer.getvalue()


IMAGE_KINDS = {
    "png8": ".png",
    "png16": ".png",
    "tiff": ".tif",
    "bmp": ".bmp",
    "jpeg": ".jpg",
    "webp": ".webp",
    "geotiff": ".tif",
}
SIZES = [0, 1, 2, 3, 255, 65535, 2**31 - 1, 2**32 - 1]


def _lie(data: bytes, kind: str, width: int, height: int, depth: int) -> bytes:
    """The file with its header claiming another size (and for PNG another bit depth), its
    checksum made right again so that only the claim is false."""
    data = bytearray(data)
    if kind.startswith("png"):
        data[16:24] = struct.pack(">II", width, height)
        data[24] = depth
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    elif kind == "bmp":
        data[18:26] = struct.pack("<ii", min(width, 2**31 - 1), min(height, 2**31 - 1))
        data[28:30] = struct.pack("<H", depth)
    elif kind == "jpeg":
        sof = bytes(data).find(b"\xff\xc0")
        if sof > 0:
            data[sof + 5 : sof + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
    else:  # TIFF and WebP: the first bytes after the signature
        data[8:12] = struct.pack("<I", width)
    return bytes(data)


def _mutated_image(data: st.DataObject, kind: str) -> bytes:
    original = _image_bytes(kind)
    operation = data.draw(st.sampled_from(["truncate", "flip", "lie"]), label="operation")
    if operation == "truncate":
        return original[: data.draw(st.integers(0, len(original) - 1), label="keep bytes")]
    if operation == "flip":
        mutated = bytearray(original)
        for position in data.draw(
            st.lists(st.integers(0, len(original) - 1), min_size=1, max_size=4), label="at"
        ):
            mutated[position] ^= data.draw(st.integers(1, 255), label="xor")
        return bytes(mutated)
    width, height = (
        data.draw(st.sampled_from(SIZES), label="width"),
        data.draw(st.sampled_from(SIZES), label="height"),
    )
    depth = data.draw(st.sampled_from([1, 2, 4, 8, 16, 32, 3]), label="depth")
    return _lie(original, kind, width, height, depth)


def _fuzz_image(trained: dict, data: st.DataObject, tmp_path: Path, capsys, monkeypatch) -> None:
    kind = data.draw(st.sampled_from(list(IMAGE_KINDS)), label="kind")
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    path = folder / f"fuzzed{IMAGE_KINDS[kind]}"
    path.write_bytes(_mutated_image(data, kind))
    before = _files(folder)
    argv = ["--checkpoint", str(SRCNN), str(path), "--out-dir", str(folder / "sr"), "--quiet"]
    if kind == "geotiff":  # its SR written as a GeoTIFF on the finer grid
        argv += ["--ext", "tif"]
    status, err = _run(super_resolve.main, argv, capsys)
    _check(status, err, before, folder, f"super_resolve of a mutated {kind}")
    try:
        image = Image.open(path)  # Pillow's own refusal comes before the API is called
    except (OSError, SyntaxError, ValueError, struct.error, Image.DecompressionBombError):
        return
    _api(lambda: _resolver().upscale(image), f"SuperResolver.upscale of a mutated {kind}")


_RESOLVERS: dict[str, SuperResolver] = {}


def _resolver() -> SuperResolver:
    """One SuperResolver for every example (loading is not what is fuzzed here)."""
    return _RESOLVERS.setdefault("srcnn", SuperResolver(SRCNN))


# ---------------------------------------------------------------------------------------
# PIUnet scene folders: files dropped, spoiled, replaced or added
# ---------------------------------------------------------------------------------------


def _scene(folder: Path) -> None:
    """A small PROBA-V-layout scene: three 16-bit 12x12 frames with QMs, HR and SM at x3."""
    folder.mkdir(parents=True)
    hr = torch.rand(1, 36, 36, generator=torch.Generator().manual_seed(0)) * 0.2 + 0.1
    save_image(hr, folder / "HR.png", bits=16)
    save_image(torch.ones(1, 36, 36), folder / "SM.png")
    for i in range(3):
        save_image(hr[:, 1::3, 1::3], folder / f"LR{i:03d}.png", bits=16)
        save_image(torch.ones(1, 12, 12), folder / f"QM{i:03d}.png")


SCENE_FILES = ["HR.png", "SM.png", "LR000.png", "LR001.png", "QM000.png", "QM002.png"]
REPLACEMENTS = {
    "rgb": lambda: Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)),
    "tiny": lambda: Image.fromarray(np.zeros((1, 1), dtype=np.uint8)),
    "larger": lambda: Image.fromarray(np.zeros((13, 12), dtype=np.uint8)),
    "16-bit": lambda: Image.fromarray(np.zeros((12, 12), dtype=np.uint16)),
}


def _fuzz_scene(trained: dict, data: st.DataObject, tmp_path: Path, capsys, monkeypatch) -> None:
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    scene = folder / "imgset0001"
    _scene(scene)
    name = data.draw(st.sampled_from([*SCENE_FILES, "LR007.png"]), label="file")
    operation = data.draw(
        st.sampled_from(["drop", "truncate", "flip", "empty", *REPLACEMENTS]), label="operation"
    )
    target = scene / name
    if operation in REPLACEMENTS:
        REPLACEMENTS[operation]().save(target)
    elif operation == "empty":
        target.write_bytes(b"")
    elif target.exists() and operation == "drop":
        target.unlink()
    elif target.exists():
        original = target.read_bytes()
        at = data.draw(st.integers(0, len(original) - 1), label="at")
        target.write_bytes(original[:at] if operation == "truncate" else
                           original[:at] + bytes([original[at] ^ 0xFF]) + original[at + 1 :])  # fmt: skip
    before = _files(folder)
    argv = ["--checkpoint", str(PIUNET), str(scene), "--out-dir", str(folder / "sr"), "--quiet"]
    status, err = _run(super_resolve.main, argv, capsys)
    _check(status, err, before, folder, f"super_resolve of a scene with {name} {operation}")


# ---------------------------------------------------------------------------------------
# Option values
# ---------------------------------------------------------------------------------------

SR_OPTIONS = ["--tile", "--tile-overlap", "--shave", "--quality", "--outscale", "--suffix", "--ext",
              "--device", "--gt", "--alpha-upsampler", "--compare"]  # fmt: skip
TRAIN_OPTIONS = ["--lr", "--batch-size", "--patch-size", "--patches-per-image", "--scale", "--ema", "--seed",
                 "--grad-clip", "--warmup-epochs", "--lr-gamma", "--lr-step", "--train-scales", "--model",
                 "--model-option", "--loss", "--degradation", "--schedule", "--val-freq", "--save-freq",
                 "--loss-border", "--frames", "--burst-shift", "--burst-noise", "--workers"]  # fmt: skip
VALUES = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(
        [
            "",
            "0",
            "-1",
            "1e309",
            "nan",
            "3",
            "x",
            "a" * 300,
            "cuda:7",
            "features=0",
            "f2=4",
            "blocks=-1",
            "2,3",
            "1.5,0",
            "png",
            "jpg",
            "../x",
            "/dev/null",
        ]
    ),  # fmt: skip
    st.text(max_size=20),
)


def _option_values(data: st.DataObject, options: list[str]) -> list[str]:
    """One to three of the options, each with a drawn value, as --flag=value."""
    flags = data.draw(st.lists(st.sampled_from(options), min_size=1, max_size=3, unique=True), label="flags")
    return [f"{flag}={data.draw(VALUES, label=flag)}" for flag in flags]


def _build_only(config: object, checkpoint: object) -> int:
    """trainer._train_locked for the fuzzer: the run is built (data, model, loader), no epoch runs
    (valid values may ask for hours of training)."""
    import trainer

    trainer.build_run(config, checkpoint)
    return 0


def _fuzz_options(trained: dict, data: st.DataObject, tmp_path: Path, capsys, monkeypatch) -> None:
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    lr = folder / "lr.png"
    Image.fromarray(np.full((12, 12, 3), 100, dtype=np.uint8)).save(lr)
    if data.draw(st.booleans(), label="super_resolve, not train"):
        main, given_values = super_resolve.main, _option_values(data, SR_OPTIONS)
        argv = ["--checkpoint", str(SRCNN), str(lr), "--out-dir", str(folder / "sr"), "--quiet"]
    else:
        monkeypatch.setattr("trainer._train_locked", _build_only)
        main, given_values = train.main, _option_values(data, TRAIN_OPTIONS)
        argv = ["train", "--train-data", str(trained["data"]), "--val-data", str(trained["data"]),
                "--out-dir", str(folder / "run"), "--num-epoch", "1", "--quiet"]  # fmt: skip
    monkeypatch.chdir(folder)  # a relative path among the values (--compare=2) lands in the folder checked
    before = _files(folder)
    status, err = _run(main, [*argv, *given_values], capsys)
    _check(status, err, before, folder, f"{main.__module__} {' '.join(given_values)}")


# ---------------------------------------------------------------------------------------
# The tests: each kind, at each budget
# ---------------------------------------------------------------------------------------

FUZZERS = {"checkpoints": _fuzz_checkpoint, "image files": _fuzz_image, "scene folders": _fuzz_scene,
           "option values": _fuzz_options}  # fmt: skip


@pytest.mark.parametrize("kind", FUZZERS)
@budget(FAST)
@given(data=st.data())
def test_fuzzed_inputs(kind, trained, data, tmp_path, capsys, monkeypatch):
    FUZZERS[kind](trained, data, tmp_path, capsys, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("kind", FUZZERS)
@budget(FULL)
@given(data=st.data())
def test_fuzzed_inputs_longer(kind, trained, data, tmp_path, capsys, monkeypatch):
    FUZZERS[kind](trained, data, tmp_path, capsys, monkeypatch)
