"""One short GPU visit that proves every --cuda path and then trains with the minutes left.

    python tools/gpu_check.py pack                  # here: copy the data it needs into .gpudata/
    python3 tools/gpu_check.py run --out "$OUT"     # there, on the bare GPU machine (about 9 minutes)
    python tools/gpu_check.py run --dry-run         # anywhere: the same steps on the CPU, tiny, seconds

`run` needs nothing beyond a CUDA PyTorch and the packages such machines carry (numpy,
Pillow, tqdm, scikit-image, matplotlib, pytest): no pip, no network, no benchmark folder
beside the checkout. It reads the data that `pack` put into `.gpudata/` (git-ignored, inside
the checkout, under 64 MiB with the working tree) and writes at most 8 files into --out:
summary.json (every check's pass/fail and figures, rewritten after each step, so a killed
run still leaves one), gpu_check.log (each command and its output) and the last checkpoint
of the closing training run (split into parts under 16 MiB if it is larger).

Steps, in order of value, each under its own time limit, all inside --budget seconds:
  tests        every test marked cuda: the CPU/GPU equality tests (pytest -m cuda)
  train        train.py train --cuda (bf16 autocast), resume on the GPU, resume --no-cuda on
               the CPU, and the same with --no-amp
  sr           super_resolve.py --cuda on the validation set against the CPU: PSNR and pixels,
               bf16 and fp32, whole images and small tiles
  bench        tools/bench.py --cuda: inference, training step and PIUnet layouts, as fractions of
               the bf16 matrix-product ceiling
  piunet       PIUnet training steps at the published size and on a 256x256 scene (attention
               split into CUDA-sized pieces), the fast layout against the authors' outputs
  run          a real training run until the budget is spent (SIGTERM: train.py saves its
               position), its checkpoint returned to be resumed on the CPU; with --resume CKPT
               it continues that checkpoint instead
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]  # the checkout: commands run there
if str(ROOT) not in sys.path:  # run as `python tools/gpu_check.py`: the toolkit's modules sit one folder up
    sys.path.insert(0, str(ROOT))
PACK_DIR = ROOT / ".gpudata"
PART_BYTES = 15 * 2**20  # returned files must stay under 16 MiB each

# the closing training run (wip/README.md: an EDSR body on the LR grid with at most half of
# VDSR's multiply-adds per output pixel at x2; the x3/x4 models can start from it)
RUN_MODEL = ["--model", "edsr", "--model-option", "blocks=14", "--model-option", "features=64"]
RUN_OPTIONS = ["--scale", "2", "--patch-size", "64", "--patches-per-image", "128", "--batch-size", "32"]
RUN_OPTIONS += ["--lr", "3e-4", "--schedule", "constant", "--num-epoch", "10000", "--val-freq", "5"]


def build_parser() -> argparse.ArgumentParser:
    """The pack / run command line."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    pack = sub.add_parser("pack", help="copy the data `run` needs into .gpudata/ (from $SR_DATA_ROOT)")
    pack.add_argument("--limit-mib", type=float, default=60, help="working tree plus data, at most")
    pack.add_argument(
        "--run-only",
        action="store_true",
        help="only what `run --steps env run` reads (Set5 and training images)",
    )
    pack.add_argument(
        "--init", metavar="CKPT", help="also a checkpoint without Adam's moments, into .gpudata/init/"
    )
    run = sub.add_parser("run", help="run the checks and the training run")
    run.add_argument("--out", default=os.environ.get("OUT", "gpu-check"), help="results folder ($OUT)")
    run.add_argument("--budget", type=float, default=540, help="seconds for everything (default 540)")
    run.add_argument("--dry-run", action="store_true", help="on the CPU, tiny sizes, seconds")
    run.add_argument("--steps", nargs="+", choices=STEPS, help="only these steps (default: all)")
    run.add_argument("--train-data", default=None, help="training set of the checks (default T91)")
    run.add_argument("--val-data", default=None, help="validation set (default Set5)")
    run.add_argument("--run-data", default=None, help="training set of the closing run")
    run.add_argument(
        "--resume",
        metavar="CKPT",
        help="the closing run continues this checkpoint (stopped at an epoch's end) instead of a new run",
    )
    run.add_argument(
        "--run-option",
        metavar="ARGS",
        help='more train.py arguments for the closing run, in one string (e.g. "--lr 1e-4")',
    )
    run.add_argument(
        "--also",
        action="append",
        metavar="ARGS",
        help="another training run beside the closing one, sharing the GPU: train.py arguments in one "
        'string (e.g. "train --scale 3 --init-from CKPT ..."); its checkpoint returns as gpu_runN_last.pth',
    )
    run.add_argument(PIUNET_WORKER, nargs=4, metavar=("B", "H", "W", "DEVICE"), help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`pack` the data, or `run` the checks."""
    args = build_parser().parse_args(argv)
    if args.command == "pack":
        return pack_data(args.limit_mib, run_only=args.run_only, init=args.init)
    if args.piunet_step:
        print(json.dumps(piunet_step(*args.piunet_step)))
        return 0
    return Visit(args).run()


# ---------------------------------------------------------------------------------------
# pack: the data, copied into the checkout


def pack_data(
    limit_mib: float, folder: Path = PACK_DIR, run_only: bool = False, init: str | None = None
) -> int:
    """Copy Set5, the training images (T91, then as much of BSD200 as fits, as lossless WebP)
    and, unless `run_only`, the PROBA-V sample and the reference vectors; `init`: a checkpoint,
    without Adam's moments, into init/ for the closing run's --init-from."""
    data_root = os.environ.get("SR_DATA_ROOT")
    reference = os.environ.get("SR_REFERENCE_DIR")
    if not data_root or (not reference and not run_only):
        print(
            "tools/gpu_check.py: error: set SR_DATA_ROOT and SR_REFERENCE_DIR (see README)", file=sys.stderr
        )
        return 2
    shutil.rmtree(folder, ignore_errors=True)
    for name in ("Set5",) if run_only else ("Set5", "PROBAV-sample"):
        shutil.copytree(Path(data_root) / name, folder / "datasets" / name)
    if not run_only:
        shutil.copytree(reference, folder / "reference")
    if init:
        _copy_weights(Path(init), folder / "init" / Path(init).name)
    train = folder / "train"
    train.mkdir()
    tree, limit = _tree_bytes(folder), limit_mib * 2**20
    t91, bsd = sorted((Path(data_root) / "T91").iterdir()), sorted((Path(data_root) / "BSD200").glob("*.png"))
    for image in t91 + bsd:
        encoded, suffix = _lossless(image)
        if image.parent.name == "BSD200" and tree + len(encoded) > limit:
            break
        (train / f"{image.stem}{suffix}").write_bytes(encoded)
        tree += len(encoded)
    packed = len(list(train.iterdir()))
    print(f"packed {folder} ({packed} training images); tree {tree / 2**20:.1f} MiB")
    if packed < len(t91) + len(bsd):
        print(
            f"  {packed - len(t91)} of BSD200's {len(bsd)} fit; for the whole 291 set, move the tracked "
            "checkpoints aside (they travel) and pack with --run-only (for `run --steps env run`)"
        )
    return 0


def _lossless(image: Path) -> tuple[bytes, str]:
    """An image file's pixels as lossless WebP (a third smaller than PNG), or PNG where WebP
    would not give back the same pixels and mode (gray: WebP has none); (bytes, suffix)."""
    import io

    import numpy as np
    from PIL import Image

    with Image.open(image) as img:
        pixels = img.convert("RGB") if img.mode not in ("L", "RGB") else img.copy()
    for fmt, options in (
        ("WEBP", {"lossless": True, "quality": 100, "method": 4}),
        ("PNG", {"optimize": True}),
    ):
        buffer = io.BytesIO()
        pixels.save(buffer, format=fmt, **options)
        with Image.open(io.BytesIO(buffer.getvalue())) as back:
            if back.mode == pixels.mode and np.array_equal(np.asarray(back), np.asarray(pixels)):
                return buffer.getvalue(), "." + fmt.lower()
    raise RuntimeError(f"{image}: no lossless encoding gave back its pixels")


def _copy_weights(source: Path, target: Path) -> None:
    """A train.py checkpoint without Adam's moments (half the size; --init-from reads only weights)."""
    from checkpoint import load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(source)
    checkpoint["optimizer"] = {"state": {}, "param_groups": checkpoint["optimizer"]["param_groups"]}
    target.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(checkpoint, target)


def _tree_bytes(folder: Path = PACK_DIR) -> int:
    """Bytes of what would travel: git's tracked and untracked-not-ignored files, and `folder`."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    files = [ROOT / name for name in listed if name] + list(folder.rglob("*"))
    return sum(path.stat().st_size for path in files if path.is_file())


# ---------------------------------------------------------------------------------------
# run: the checks


PIUNET_WORKER = "--piunet-step"
STEPS = ("env", "tests", "train", "sr", "bench", "piunet", "run")


class Visit:
    """The checks of one visit, their log and their summary."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry = args.dry_run
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = self.out / "work" if self.dry else Path("/tmp/gpu_check_work")
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.log = open(self.out / "gpu_check.log", "w")  # noqa: SIM115 (kept open for the visit)
        self.start = time.monotonic()
        self.summary: dict[str, Any] = {"dry_run": self.dry, "budget_s": args.budget, "checks": {}}
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        if not self.dry and (PACK_DIR / "datasets").is_dir():
            self.env.setdefault("SR_DATA_ROOT", str(PACK_DIR / "datasets"))
            self.env.setdefault("SR_REFERENCE_DIR", str(PACK_DIR / "reference"))
        packed = (PACK_DIR / "train").is_dir() and not self.dry
        self.train_data = args.train_data or (str(PACK_DIR / "train") if packed else "T91")
        self.val_data = args.val_data or "Set5"
        self.run_data = args.run_data or self.train_data
        self.cuda = [] if self.dry else ["--cuda"]

    def run(self) -> int:
        """Every step in turn; exit status 0 when every check passed."""
        steps: dict[str, Callable[[Visit], dict]] = {
            "env": check_env,
            "tests": check_tests,
            "train": check_train,
            "sr": check_super_resolve,
            "bench": check_bench,
            "piunet": check_piunet,
            "run": training_run,
        }
        for name in self.args.steps or STEPS:
            self.say(f"=== {name} ({self.left():.0f} s left)")
            began = time.monotonic()
            try:
                result = steps[name](self)
            except Exception as error:  # a step that breaks is a failed check, not a lost visit
                result = {"passed": False, "error": f"{type(error).__name__}: {error}"}
            result["seconds"] = round(time.monotonic() - began, 1)
            self.summary["checks"][name] = result
            self.write_summary()
            self.say(f"--- {name}: {'pass' if result.get('passed') else 'FAIL'} {json.dumps(result)[:2000]}")
        failed = [name for name, result in self.summary["checks"].items() if not result.get("passed")]
        self.summary["passed"] = not failed
        self.summary["failed"] = failed
        self.write_summary()
        print(f"gpu_check: {'all passed' if not failed else 'FAILED: ' + ', '.join(failed)}; {self.out}")
        return 0 if not failed else 1

    # -- helpers ------------------------------------------------------------------------

    def left(self) -> float:
        """Seconds left of the budget."""
        return self.args.budget - (time.monotonic() - self.start)

    def say(self, text: str) -> None:
        """A line on stdout and in the log."""
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def write_summary(self) -> None:
        """summary.json, replaced whole."""
        self.summary["elapsed_s"] = round(time.monotonic() - self.start, 1)
        path = self.out / "summary.json"
        path.with_suffix(".tmp").write_text(json.dumps(self.summary, indent=2))
        path.with_suffix(".tmp").replace(path)

    def sh(self, command: list[str], limit: float, stop_signal: int = signal.SIGKILL) -> tuple[int, str]:
        """Run a command (python scripts with this interpreter) under a time limit; (status, output)."""
        return self.sh_together([command], limit, stop_signal)[0]

    def json_of(self, command: list[str], limit: float) -> Any:
        """The JSON a command prints (last JSON document of its output); raises on failure."""
        status, output = self.sh(command, limit)
        if status != 0:
            raise RuntimeError(f"{' '.join(command[:3])} exited {status}: {output.strip().splitlines()[-1:]}")
        start = output.find("{") if output.lstrip().startswith("{") else output.find("\n{") + 1
        return json.loads(output[start:])

    def sh_together(self, commands: list[list[str]], limit: float, stop_signal: int) -> list[tuple[int, str]]:
        """Run commands side by side (python scripts with this interpreter) under one time limit,
        then stop those still running (`stop_signal`, SIGKILL a minute later); each one's
        (status, output), and the output in the log."""
        limit = max(1.0, min(limit, self.left()))
        together = ", side by side" if len(commands) > 1 else ""
        processes, outputs = [], []
        for command in commands:
            python = command[0].endswith(".py") or command[0] == "-m"
            command = [sys.executable, *command] if python else command
            self.say("$ " + " ".join(command) + f"   [limit {limit:.0f} s{together}]")
            pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
            processes.append(subprocess.Popen(command, cwd=ROOT, env=self.env, **pipes))
            outputs.append(Collector(processes[-1]))
        deadline = time.monotonic() + limit
        stopped = []
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.send_signal(stop_signal)
                stopped.append(process)
        for process in stopped:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        results = []
        for command, output, process in zip(commands, outputs, processes, strict=True):
            text = output.text() + (f"\n[stopped after {limit:.0f} s]" if process in stopped else "")
            header = f"$ {' '.join(command)}\n" if together else ""
            self.log.write(f"{header}{text}\n[exit {process.returncode}]\n")
            results.append((process.returncode, text))
        self.log.flush()
        return results


# ---------------------------------------------------------------------------------------
# the checks: each takes the visit and returns its result (passed, figures)


def check_env(visit: Visit) -> dict:
    """The interpreter, torch, the GPU and what it supports."""
    import torch

    result: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__}
    result["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        result["device"] = torch.cuda.get_device_name(0)
        result["capability"] = list(torch.cuda.get_device_capability(0))
        result["bf16"] = torch.cuda.is_bf16_supported()
        result["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        visit.sh(["nvidia-smi"], 30)
    for module in ("numpy", "PIL", "tqdm", "skimage", "matplotlib", "png", "tifffile", "onnxruntime"):
        try:
            __import__(module)
            result[module] = True
        except ImportError:
            result[module] = False
    result["passed"] = result["cuda_available"] or visit.dry
    return result


def check_tests(visit: Visit) -> dict:
    """Every test marked `cuda` (the CPU/GPU equality tests; not this script's own tests: CPU
    dry runs that would use up the step's time, as they did on the second visit)."""
    selection = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "tests"]
    selection += ["--ignore", "tests/test_gpu_check.py"]
    if visit.dry:  # the tests skip on a CPU; collecting them is what can rot
        selection.append("--collect-only")
    status, output = visit.sh(selection, 180)
    counts = _pytest_counts(output)
    selected = counts.get("passed", 0) + counts.get("tests collected", 0) + counts.get("collected", 0)
    return {"passed": status == 0 and selected > 0 and not counts.get("failed"), **counts}


def check_train(visit: Visit) -> dict:
    """train --cuda, resume on the GPU, resume on the CPU; with bf16 autocast and without."""
    result: dict[str, Any] = {"passed": True}
    common = ["--model", "srcnn", "--train-data", visit.train_data, "--val-data", visit.val_data]
    common += ["--patches-per-image", "2" if visit.dry else "16", "--batch-size", "16", "--quiet"]
    for amp in ("--amp", "--no-amp"):
        run = visit.work / f"train{amp}"
        steps = [
            ["train.py", "train", *common, *visit.cuda, amp, "--num-epoch", "2", "--out-dir", str(run)],
            ["train.py", "resume", str(run / "last.pth"), "--num-epoch", "3"],
            ["train.py", "resume", str(run / "last.pth"), "--num-epoch", "4", "--no-cuda"],
        ]
        for step in steps:
            status, _ = visit.sh(step, 90)
            if status != 0:
                result["passed"] = False
                result[f"{amp}_failed"] = " ".join(step[:2])
                break
        else:
            history = visit.json_of(["train.py", "inspect", str(run / "last.pth"), "--json"], 60)
            result[amp.lstrip("-")] = _history_figures(history)
            result["passed"] &= result[amp.lstrip("-")]["epochs"] == 4
    return result


def check_super_resolve(visit: Visit) -> dict:
    """super_resolve.py --cuda against the CPU on the validation set: PSNR and pixels."""
    checkpoint = str(ROOT / "checkpoints" / "edsr_x3.pth")
    base = ["super_resolve.py", "--checkpoint", checkpoint, "--dataset", visit.val_data, "--json"]
    base += ["--quiet", "--save"]
    variants = {"cpu": [], "gpu_bf16": [*visit.cuda, "--amp"], "gpu_fp32": [*visit.cuda, "--no-amp"]}
    variants["gpu_bf16_tiled"] = [*visit.cuda, "--amp", "--tile", "24", "--tile-overlap", "8"]
    variants["gpu_fp32_tiled"] = [*visit.cuda, "--no-amp", "--tile", "24", "--tile-overlap", "8"]
    outputs = {}
    for name, flags in variants.items():
        outputs[name] = visit.json_of([*base, *flags, "--out-dir", str(visit.work / f"sr_{name}")], 90)
    # fp32 on the GPU (TF32 off in super_resolve) equals the CPU to rounding; bf16 within
    # the tests' 2e-2 of the [0, 1] range, i.e. 5 grey levels, and 0.1 dB of PSNR
    tolerances = {"fp32": (0.01, 1), "bf16": (0.1, 5)}
    result: dict[str, Any] = {"passed": True}
    cpu = outputs["cpu"]
    for name, output in outputs.items():
        if name == "cpu":
            continue
        db, levels = tolerances["bf16" if "bf16" in name else "fp32"]
        psnr_diff = abs(_mean_psnr(output) - _mean_psnr(cpu))
        pixel_diff = _max_pixel_diff(visit.work / "sr_cpu", visit.work / f"sr_{name}")
        ok = psnr_diff <= db and pixel_diff <= levels
        result[name] = {"psnr": _mean_psnr(output), "psnr_diff": psnr_diff, "max_level_diff": pixel_diff}
        result[name]["passed"] = ok
        result["passed"] &= ok
    result["cpu_psnr"] = _mean_psnr(cpu)
    return result


def check_bench(visit: Visit) -> dict:
    """tools/bench.py --cuda: each figure as a fraction of the bf16 ceiling."""
    if visit.dry:
        flags = ["--size", "48", "--tile", "64", "--models", "srcnn", "--steps", "1", "--repeats", "1"]
        flags += ["--train-data", visit.train_data, "--only", "inference", "training"]
    else:  # the piunet section's CPU path is bench.py's own test; the dry run skips it for time
        flags = ["--cuda", "--repeats", "3", "--train-data", visit.train_data, "--only"]
        flags += ["inference", "training", "piunet"]
    report = visit.json_of(["tools/bench.py", "--json", *flags], 200)
    rows = [{key: value for key, value in row.items() if key not in ("output",)} for row in report["rows"]]
    piunet_same = all(row.get("same_output", True) for row in rows if row["section"] == "piunet")
    return {"passed": bool(rows) and piunet_same, "device": report["device"], "rows": rows}


def check_piunet(visit: Visit) -> dict:
    """PIUnet training steps at the published size and on whole scenes up to 256x256."""
    device = "cpu" if visit.dry else "cuda"
    sizes = [(1, 8, 8)] if visit.dry else [(24, 32, 32), (4, 128, 128), (1, 256, 256)]
    result: dict[str, Any] = {"passed": True}
    for batch, height, width in sizes:
        step = [__file__, "run", PIUNET_WORKER, str(batch), str(height), str(width), device]
        try:
            figures = visit.json_of(step, 90)
        except RuntimeError as error:
            figures = {"passed": False, "error": str(error)}
        result[f"{batch}x9x{height}x{width}"] = figures
        result["passed"] &= figures["passed"]
    return result


def training_run(visit: Visit) -> dict:
    """Train until the budget is spent, then SIGTERM (train.py saves its place); return the
    checkpoints. The --also runs share the GPU with the closing run, each its own process."""
    if visit.args.resume:  # the data folder differs from the one it was trained on: an epoch's end
        main = ["resume", visit.args.resume, "--num-epoch", "10000"]
    else:
        main = ["train", *RUN_MODEL, *RUN_OPTIONS]
    runs = [main + shlex.split(visit.args.run_option or "")]
    runs += [shlex.split(extra) for extra in visit.args.also or []]
    workers = "0" if visit.dry else str(max(1, min(8, (os.cpu_count() or 1) // len(runs) - 1)))
    commands, folders = [], []
    for index, arguments in enumerate(runs):
        folders.append(visit.work / ("run" if index == 0 else f"run{index + 1}"))
        command = ["train.py", *arguments, *visit.cuda, "--quiet", "--train-data", visit.run_data]
        command += ["--val-data", visit.val_data, "--out-dir", str(folders[-1]), "--workers", workers]
        if visit.dry and arguments[0] == "train":
            command += ["--model-option", "blocks=1", "--model-option", "features=8"]
            command += ["--patches-per-image", "1", "--num-epoch", "1", "--batch-size", "4"]
            command += ["--patch-size", "48"]
        commands.append(command)
    results = visit.sh_together(commands, visit.left() - 25 * len(runs), stop_signal=signal.SIGTERM)
    result: dict[str, Any] = {"passed": True}
    for index, (folder, (status, _)) in enumerate(zip(folders, results, strict=True)):
        name = "gpu_run" if index == 0 else f"gpu_run{index + 1}"
        figures: dict[str, Any] = {"status": status, "args": " ".join(runs[index])}
        checkpoint = folder / "last.pth"
        if checkpoint.is_file():
            history = visit.json_of(["train.py", "inspect", str(checkpoint), "--json"], 60)
            figures.update(files=_copy_in_parts(checkpoint, visit.out / f"{name}_last.pth"))
            figures.update(_history_figures(history))
        figures["passed"] = checkpoint.is_file() and status in (0, 128 + signal.SIGTERM)
        result["passed"] &= figures["passed"]
        if index == 0:
            result.update(figures)
        else:
            result[name] = figures
    return result


class Collector:
    """A process's output, read on a thread so that its pipe never fills."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(process.stdout), daemon=True)
        self.thread.start()

    def text(self) -> str:
        """Everything read so far."""
        self.thread.join(timeout=5)
        return "".join(self.lines)


# ---------------------------------------------------------------------------------------
# figures


def piunet_step(batch: str, height: str, width: str, device_name: str) -> dict:
    """One PIUnet training step (bf16 autocast on a GPU), its time and memory, and the fast
    layout's fp32 output against the authors' layout on the same weights."""
    import torch
    from bench import piunet_loss

    from model import build_model

    device = torch.device(device_name)
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    size = {} if cuda else {"features": 16, "blocks": 2}  # the published size on a GPU; tiny on a CPU
    model = build_model("piunet", 3, **size).to(device, memory_format=torch.channels_last)
    frames = torch.rand(int(batch), 9, int(height), int(width), device=device)
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)

    def step() -> float:
        _, loss = piunet_loss(model, frames)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    losses = [step() for _ in range(2)]  # the first includes cuDNN's autotuning
    began = time.perf_counter()
    losses.append(step())
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    authors = build_model("piunet", 3, attention="mha", **size).to(device)
    authors.load_state_dict(model.state_dict())
    with torch.no_grad():
        fast = model.eval()(frames[:1])[0].float()
        reference = authors.eval()(frames[:1])[0].float()
    diff = (fast - reference).abs().max().item()
    figures = {"step_s": seconds, "losses": losses, "finite_grads": bool(finite), "max_diff_vs_authors": diff}
    if cuda:
        figures["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    figures["passed"] = bool(finite) and all(map(_finite, losses)) and diff <= 1e-2
    return figures


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def _pytest_counts(output: str) -> dict[str, int]:
    """{'passed': 12, 'skipped': 1, ...} from pytest's closing line."""
    counts: dict[str, int] = {}
    for line in output.splitlines()[-5:]:
        for part in line.replace("=", "").split(","):
            words = part.split(" in ")[0].split(" (")[0].split()
            if len(words) >= 2 and words[0].split("/")[0].isdigit():
                counts[" ".join(words[1:])] = int(words[0].split("/")[0])
    return counts


def _history_figures(history: dict) -> dict:
    """Epochs done and the last validation figures of `train.py inspect --json`."""
    rows = history.get("history", [])
    validated = [row for row in rows if row.get("psnr") is not None]
    figures: dict[str, Any] = {"epochs": history.get("epoch", len(rows)), "in_epoch": history.get("in_epoch")}
    if validated:
        figures["val_psnr"] = validated[-1]["psnr"]
        figures["val_epoch"] = validated[-1].get("epoch")
    if rows:
        figures["loss"] = rows[-1].get("train_loss")
        figures["epoch_s"] = rows[-1].get("seconds")
    return figures


def _mean_psnr(report: dict) -> float:
    """Mean model PSNR of a `super_resolve.py --dataset --json` report."""
    return float(report["mean"]["model_psnr"])


def _max_pixel_diff(left: Path, right: Path) -> int:
    """Largest difference in grey levels between same-named images of two folders."""
    import numpy as np
    from PIL import Image

    worst = 0
    names = sorted(path.name for path in left.iterdir())
    if not names:
        raise RuntimeError(f"no images in {left}")
    for name in names:
        a = np.asarray(Image.open(left / name), dtype=np.int32)
        b = np.asarray(Image.open(right / name), dtype=np.int32)
        worst = max(worst, int(np.abs(a - b).max()))
    return worst


def _copy_in_parts(source: Path, target: Path) -> list[str]:
    """Copy a file as one piece, or as .partN pieces under the returned-file limit (`cat` joins)."""
    data = source.read_bytes()
    if len(data) <= PART_BYTES:
        shutil.copy(source, target)
        return [target.name]
    names = []
    for index in range(0, len(data), PART_BYTES):
        part = target.with_name(f"{target.name}.part{index // PART_BYTES}")
        part.write_bytes(data[index : index + PART_BYTES])
        names.append(part.name)
    return names


if __name__ == "__main__":
    sys.exit(main())
