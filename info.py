"""Name, version, authors and license of the toolkit; `python info.py` prints them with the environment."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

NAME = "srkit"
VERSION = "0.1.0"
AUTHORS = ("the srkit developers",)
LICENSE = "MIT"
DESCRIPTION = (
    "Image super-resolution in PyTorch: SRCNN, residual networks and PIUnet, "
    "benchmarked by the literature's protocol."
)


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    """An installed package's version, or "not installed"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, str]:
    """Versions and hardware that results depend on."""
    import numpy
    import torch

    cuda = torch.cuda.is_available()
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "numpy": numpy.__version__,
        "cuda available": str(cuda),
        "cpu": cpu_name(),
        "threads": str(torch.get_num_threads()),
    }
    if cuda:
        env["cuda"] = str(torch.version.cuda)
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
# Groups of results JSONs (checkpoints/results/<stem>_<dataset>.json, as `make results` writes
# them) in display preference; info.py shows the first group that has any: real PROBA-V scenes,
# else Set5/14. (Not catalog.BENCHMARKS, the names of the benchmark datasets.)
RESULT_GROUPS = (("wald",), ("PROBAV-sample",), ("Set5", "Set14"))  # wald: tools/wald_study.py


def shipped_checkpoints(folder: Path = CHECKPOINTS) -> list[tuple[str, str]]:
    """(file name, results line) of each shipped checkpoint, from its recorded results: the real
    PROBA-V scenes where recorded, else Set5 and Set14."""
    rows = []
    for path in sorted(folder.glob("*.pth")):
        recorded = recorded_results(folder / "results", path.stem)
        if not recorded:
            rows.append((path.name, "no recorded results (make results)"))
            continue
        cost = f", {_multiply_adds(path) / 1e3:.0f}k multiply-adds per pixel"
        rows.append((path.name, results_line(recorded) + cost))
    return rows


def recorded_results(folder: Path, stem: str) -> dict[str, dict]:
    """A checkpoint's results JSONs by dataset, from the first group of RESULT_GROUPS that has any."""
    for group in RESULT_GROUPS:
        files = {name: folder / f"{stem}_{name}.json" for name in group}
        recorded = {name: json.loads(file.read_text()) for name, file in files.items() if file.is_file()}
        if recorded:
            return recorded
    return {}


def results_line(recorded: dict[str, dict]) -> str:
    """`model xS, Set5 / Set14 PSNR a / b dB (bicubic c / d dB)` from results JSONs by dataset."""
    first = next(iter(recorded.values()))
    if "degradations" in first:
        return wald_line(first)
    from metrics import score_labels

    label, _, baseline = score_labels("model_cpsnr" in first["mean"])
    metric = label.lower()

    def joined(key: str) -> str:
        return " / ".join(f"{record['mean'][key]:.2f}" for record in recorded.values())

    score = first["mean"].get("score") if len(recorded) == 1 else None
    score = f", score {score:.3f}" if score is not None else ""
    return (
        f"{first['model']} x{first['scale']}, {' / '.join(recorded)} {label} {joined(f'model_{metric}')} dB "
        f"({baseline} {joined(f'bicubic_{metric}')} dB{score})"
    )


def wald_line(record: dict) -> str:
    """`N bands, held-out PSNR a dB (bicubic b, photo c)` from a tools/wald_study.py record:
    the mean band PSNR on reflectance, LR by the sensor kernel."""
    by_method = record["degradations"]["sensor"]
    model = Path(record["checkpoint"]).stem
    baselines = ", ".join(f"{who} {by_method[who]['psnr']:.2f}" for who in by_method if who != model)
    return (f"{len(record['bands'])} bands ({', '.join(record['bands'])}), Wald held-out mean band PSNR "
            f"{by_method[model]['psnr']:.2f} dB ({baselines} dB)")  # fmt: skip


def _multiply_adds(path: Path) -> float:
    """Multiply-adds per output pixel of a checkpoint's model."""
    from checkpoint import load_checkpoint
    from model import load_model, multiply_adds_per_pixel

    checkpoint = load_checkpoint(path)
    options = checkpoint["model"]["options"]
    return multiply_adds_per_pixel(
        load_model(checkpoint), checkpoint["model"]["scale"], options.get("in_channels", 3)
    )


def main(argv: list[str] | None = None) -> int:
    """Print the toolkit's identity, the environment and the model zoo."""
    from model import model_zoo
    from utils import Parser

    Parser(
        description=f"{DESCRIPTION} Prints the environment, the models and the shipped checkpoints."
    ).parse_args(argv)

    print(f"{NAME} {VERSION} ({LICENSE}) by {', '.join(AUTHORS)}")
    print(DESCRIPTION)
    print("\nenvironment")
    for key, value in environment().items():
        print(f"  {key:15} {value}")
    print("\nmodels (parameters at x3, default options)")
    for name, params, text in model_zoo():
        print(f"  {name:10} {params:>10,}  {text}")
    print("\nshipped checkpoints (checkpoints/README.md)")
    shipped = shipped_checkpoints() or [("none", "")]
    width = max(len(name) for name, _ in shipped)
    for name, line in shipped:
        print(f"  {name:{width}}  {line}")
    return 0


if __name__ == "__main__":
    from utils import run_cli

    sys.exit(run_cli(main))
