"""Speed and memory benchmark (not a test): the toolkit's hot paths against this machine's ceiling.

    python tools/bench.py                          # every section, a table on stdout
    python tools/bench.py --only ceiling inference # some sections
    python tools/bench.py --json                   # machine-readable
    python tools/bench.py --cuda                   # on the GPU (bf16 ceiling and autocast paths too)

Sections:
  ceiling    FLOP/s of a large float32 matrix product (and bf16 on a GPU), the faster of torch.mm
             and a 1x1 convolution (oneDNN) on a CPU: the reference
  inference  megapixels/s super-resolving a 1-megapixel output per model, FLOPs per output
             pixel, achieved FLOP/s as a fraction of the ceiling; the plain NCHW float32
             forward and the toolkit's fast path (what super_resolve.py runs) side by side;
             --compile adds the fast path through torch.compile, with its first-call time
  layers     each SRCNN convolution alone (1 megapixel, channels_last, inference_mode) and
             the three summed: the fraction of the ceiling the whole network can reach at best
  training   patches/s and fraction of the ceiling of train.py's real step (data loading
             included) for srcnn (33x33 patches, batch 128) and a residual model
  piunet     forward+backward time and peak memory per batch, the fast layout (channels_last,
             SDPA on views of the tokens) against the authors'
             nn.MultiheadAttention layout, at equal outputs
  data       the training patch pipeline alone, patches/s
Every figure is the best of --repeats timed runs after a warm-up run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python tools/bench.py`: the toolkit's modules sit one folder up
    sys.path.insert(0, str(ROOT))

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from data import PatchDataset, PatchSampler, load_pairs
from inference import Upscaler
from info import cpu_name
from model import build_model
from utils import run_cli

INFERENCE_MODELS = {
    "srcnn": {},
    "residual": {},
    "vdsr": {},
    "edsr": {"preset": "baseline"},
    "unet": {},
}


def best_time(fn: Callable[[], object], repeats: int, cuda: bool) -> float:
    """Best wall time of `repeats` runs of fn after one warm-up run."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matrix products and convolutions fn runs (torch's flop counter)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def bench_ceiling(args: argparse.Namespace) -> list[dict]:
    """FLOP/s of a large matrix product (float32, and bf16 on a GPU), through each library torch
    has for it: torch.mm (MKL or cuBLAS) and, on a CPU, a 1x1 convolution (oneDNN), because on
    some CPUs (AMD's, where MKL takes a slower code path) the two differ by more than 1.5x."""
    device = torch.device("cuda" if args.cuda else "cpu")
    dtypes = [torch.float32] + ([torch.bfloat16] if args.cuda else [])
    n = 8192 if args.cuda else 2048
    rows = []
    for dtype in dtypes:
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        products = {"torch.mm": lambda a=a, b=b: a @ b}
        if not args.cuda:  # the same n x n x n product as a 1x1 convolution: n channels, n pixels
            image, kernel = a.reshape(1, n, 32, n // 32), b.reshape(n, n, 1, 1)
            products["1x1 conv"] = lambda image=image, kernel=kernel: F.conv2d(image, kernel)
        for library, product in products.items():
            seconds = best_time(product, max(args.repeats, 5), args.cuda)
            rows.append(
                {
                    "section": "ceiling",
                    "what": f"matmul {n}x{n} {str(dtype)[6:]} ({library})",
                    "flops_per_s": 2 * n**3 / seconds,
                    "dtype": str(dtype)[6:],
                }
            )
    return rows


def ceiling_of(rows: list[dict], dtype: str = "float32") -> float:
    """The measured ceiling for a dtype: the fastest way torch ran the product."""
    return max(r["flops_per_s"] for r in rows if r["section"] == "ceiling" and r["dtype"] == dtype)


def bench_inference(args: argparse.Namespace, ceiling: float) -> list[dict]:
    """MP/s of each model on a ~1-megapixel output: plain NCHW float32 vs the fast path."""
    rows = []
    for name in args.models or list(INFERENCE_MODELS):
        rows += _bench_model_inference(name, args, ceiling)
    return rows


def bench_layers(args: argparse.Namespace, ceiling: float) -> list[dict]:
    """Each SRCNN convolution alone on a ~1-megapixel image, and their sum: the network's bound."""
    device = torch.device("cuda" if args.cuda else "cpu")
    torch.manual_seed(0)
    model = build_model("srcnn", 3).to(device, memory_format=torch.channels_last).eval()
    x = torch.rand(1, 3, args.size, args.size, device=device).contiguous(memory_format=torch.channels_last)
    rows = []
    with torch.inference_mode():
        for name, conv in model.named_children():
            if not isinstance(conv, torch.nn.Conv2d):
                continue
            seconds = best_time(lambda conv=conv, x=x: conv(x), args.repeats, args.cuda)
            flops = count_flops(lambda conv=conv, x=x: conv(x))
            shape = f"{conv.in_channels}->{conv.out_channels} {conv.kernel_size[0]}x{conv.kernel_size[1]}"
            rows.append(
                {
                    "section": "layers",
                    "what": f"srcnn {name} {shape}",
                    "seconds": seconds,
                    "flops_per_s": flops / seconds,
                    "fraction_of_ceiling": flops / seconds / ceiling,
                }
            )
            x = torch.relu(conv(x))
    seconds = sum(row["seconds"] for row in rows)
    flops = sum(row["flops_per_s"] * row["seconds"] for row in rows)
    rows.append(
        {
            "section": "layers",
            "what": "srcnn three layers, no overhead",
            "seconds": seconds,
            "flops_per_s": flops / seconds,
            "fraction_of_ceiling": flops / seconds / ceiling,
        }
    )
    return rows


@contextlib.contextmanager
def quiet_compilation() -> Iterator[None]:
    """Hold back torch.compile's one-time notices (it traces through the lru_cache of the
    bicubic skip's kernel weights, which imresize.py marks as constants)."""
    logger = logging.getLogger("torch._dynamo")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _bench_model_inference(name: str, args: argparse.Namespace, ceiling: float) -> list[dict]:
    """The two inference rows of one model."""
    device = torch.device("cuda" if args.cuda else "cpu")
    torch.manual_seed(0)
    scale = 3
    side = -(-args.size // scale)  # LR side whose x3 output is about size x size
    lr = torch.rand(1, 3, side, side, device=device)
    model = build_model(name, scale, **INFERENCE_MODELS.get(name, {})).to(device).eval()
    pixels = (side * scale) ** 2

    def plain() -> torch.Tensor:
        with torch.no_grad():
            return model(lr)

    flops = count_flops(plain)
    reference = plain()
    amp_dtype = torch.bfloat16 if args.cuda and args.bf16 else None
    upscaler = Upscaler(
        model=model,
        name=name,
        scale=scale,
        channels=3,
        device=device,
        tile=args.tile,
        overlap=16,
        amp_dtype=amp_dtype,
    )

    def fast() -> torch.Tensor:  # super_resolve.py's Upscaler: channels_last, inference_mode, tiles
        return upscaler(lr[0])

    paths = [("plain NCHW fp32", plain, torch.contiguous_format), ("fast path", fast, torch.channels_last)]
    if args.compile:  # the same fast path with the model through torch.compile (inductor)
        compiled = dataclasses.replace(upscaler, model=torch.compile(model))
        paths.append(("fast path + compile", lambda: compiled(lr[0]), torch.channels_last))
    rows = []
    for path, fn, memory_format in paths:
        model.to(memory_format=memory_format)
        start = time.perf_counter()
        with quiet_compilation():
            error = (fn().float().reshape(reference.shape) - reference.clamp(0, 1)).abs().max().item()
        first_call = time.perf_counter() - start  # includes the compilation on the compiled path
        seconds = best_time(fn, args.repeats, args.cuda)
        rows.append(
            {
                "section": "inference",
                "what": f"{name} {path}",
                "model": name,
                "path": path,
                "output_pixels": pixels,
                "seconds": seconds,
                "first_call_seconds": first_call,
                "mp_per_s": pixels / seconds / 1e6,
                "flops_per_pixel": flops / pixels,
                "flops_per_s": flops / seconds,
                "fraction_of_ceiling": flops / seconds / ceiling,
                "max_abs_difference": error if path != "plain NCHW fp32" else 0.0,
            }
        )
    return rows


def _training_setup(name: str, options: list[str], args: argparse.Namespace):
    """The trainer module and a real training Run (task, model, optimizer, loader) for a model on
    the bench data, built by the trainer's own `build_run`."""
    import trainer
    from config import TrainConfig

    config = TrainConfig(
        model=name,
        model_option=tuple(options),
        train_data=args.train_data,
        val_data="sample-test",
        patch_size=33,
        batch_size=128,
        patches_per_image=128 * (args.steps * (args.repeats + 1) + 2) // 5 + 1,  # enough for 5+ images
        workers=args.workers,
        cuda=args.cuda,
        out_dir="unused",
        quiet=True,
    )
    return trainer, trainer.build_run(trainer.check_config(config), None)


def bench_training(args: argparse.Namespace, ceiling: float) -> list[dict]:
    """Patches/s of the training step (`trainer.train_step`) with its data pipeline, and its FLOPs."""
    return [_bench_model_training(name, options, args, ceiling) for name, options in TRAINING_MODELS]


TRAINING_MODELS = (("srcnn", []), ("edsr", ["preset=small"]))


def _bench_model_training(name: str, options: list[str], args: argparse.Namespace, ceiling: float) -> dict:
    """The training row of one model."""
    trainer, run = _training_setup(name, options, args)
    batches = iter(run.loader)
    first = next(batches)

    def step(batch: list[torch.Tensor]) -> torch.Tensor:
        return trainer.train_step(run, batch, 1)

    flops = count_flops(lambda: step(first))
    best = float("inf")
    for _ in range(args.repeats):
        if args.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            step(next(batches))  # data loading is part of the step's cost
        if args.cuda:
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / args.steps)
    if args.profile:  # where the step's time goes, operator by operator
        with torch.profiler.profile() as profiler:
            for _ in range(args.steps):
                step(next(batches))
        key = "self_cuda_time_total" if args.cuda else "self_cpu_time_total"
        table = profiler.key_averages().table(sort_by=key, row_limit=12)
        print(f"{name}: {args.steps} training steps\n{table}", file=sys.stderr)
    return {
        "section": "training",
        "what": f"{name} {' '.join(options)} batch 128 33x33".strip(),
        "model": name,
        "seconds_per_step": best,
        "patches_per_s": 128 / best,
        "flops_per_step": flops,
        "flops_per_s": flops / best,
        "fraction_of_ceiling": flops / best / ceiling,
        "amp": str(run.runtime.amp_dtype),
    }


PIUNET_WORKER = "--piunet-worker"


def piunet_loss(model: torch.nn.Module, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The PIUnet step that this benchmark and the GPU visit time: the forward pass (bf16
    autocast on a GPU) and an L1-plus-uncertainty loss; (SR image, loss)."""
    cuda = frames.device.type == "cuda"
    with torch.autocast(frames.device.type, dtype=torch.bfloat16, enabled=cuda):
        mu, sigma = model(frames)
    return mu, (mu.float() - 0.5).abs().mean() + sigma.float().mean()


def piunet_step(layout: str, args: argparse.Namespace) -> dict:
    """Time and peak memory of one PIUnet forward+backward (run in a fresh process)."""
    device = torch.device("cuda" if args.cuda else "cpu")
    torch.manual_seed(0)
    # the fast layout runs as train.py runs it (channels_last); the authors' as they wrote it
    memory_format = torch.contiguous_format if layout == "mha" else torch.channels_last
    model = build_model("piunet", 3, attention=layout).to(device, memory_format=memory_format)
    frames = torch.rand(args.piunet_batch, 9, 32, 32, device=device)

    def step() -> torch.Tensor:
        mu, loss = piunet_loss(model, frames)
        loss.backward()
        return mu

    if args.cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = best_time(step, args.repeats, args.cuda)
    peak = (
        torch.cuda.max_memory_allocated()
        if args.cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    model.zero_grad()
    with torch.no_grad():
        output = model.eval()(frames[:1])[0].float().flatten().tolist()
    return {"layout": layout, "seconds": seconds, "peak_bytes": peak, "output": output}


def bench_piunet(args: argparse.Namespace) -> list[dict]:
    """PIUnet forward+backward: SDPA layout against nn.MultiheadAttention's, each in its own process."""
    rows = []
    results = {}
    for layout in ("mha", "sdpa"):
        command = [
            sys.executable,
            __file__,
            PIUNET_WORKER,
            layout,
            "--repeats",
            str(args.repeats),
            "--piunet-batch",
            str(args.piunet_batch),
        ] + (["--cuda"] if args.cuda else [])
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[layout] = json.loads(done.stdout)
    tolerance = 1e-2 if args.cuda else 1e-4  # fp32 on CPU; TF32 convolutions on a GPU
    for layout, result in results.items():
        diff = max(abs(a - b) for a, b in zip(result["output"], results["mha"]["output"]))
        rows.append(
            {
                "section": "piunet",
                "what": f"piunet fwd+bwd batch {args.piunet_batch}x9x32x32 {layout}",
                "layout": layout,
                "seconds": result["seconds"],
                "peak_bytes": result["peak_bytes"],
                "speedup_vs_mha": results["mha"]["seconds"] / result["seconds"],
                "max_abs_diff": diff,
                "same_output": diff <= tolerance,
            }
        )
    return rows


def bench_data(args: argparse.Namespace) -> list[dict]:
    """Patches/s of the training pipeline alone: random and grid patches, with and without workers."""
    start = time.perf_counter()
    pairs = load_pairs(args.train_data, 3, progress=False)
    decode_s = time.perf_counter() - start
    rows = []
    for mode, options in {"random": {"patches_per_image": 128}, "grid": {"grid_stride": 14}}.items():
        dataset = PatchDataset(pairs, 33, seed=0, **options)
        for workers in (0, 2):
            loader = DataLoader(
                dataset,
                batch_size=128,
                sampler=PatchSampler(len(dataset)),
                num_workers=workers,
                drop_last=True,
            )
            next(iter(loader))  # start-up (worker processes) is not throughput
            start, patches = time.perf_counter(), 0
            for lr, _ in loader:
                patches += lr.shape[0]
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "section": "data",
                    "what": f"{args.train_data} {mode} 33x33 x3 workers={workers}",
                    "patches_per_s": patches / seconds,
                    "patches": patches,
                    "decode_s": decode_s,
                }
            )
    return rows


def format_row(row: dict) -> str:
    """One table line."""
    what = f"{row['section']:9} {row['what']:44}"
    if row["section"] == "ceiling":
        return f"{what} {row['flops_per_s'] / 1e9:9.1f} GFLOP/s"
    if row["section"] == "inference":
        return (
            f"{what} {row['mp_per_s']:7.3f} MP/s  {row['flops_per_pixel'] / 1e3:8.1f} kFLOP/px  "
            f"{row['flops_per_s'] / 1e9:7.1f} GFLOP/s = {100 * row['fraction_of_ceiling']:5.1f}% of ceiling"
            + (f"  (max diff {row['max_abs_difference']:.1e})" if row["path"] != "plain NCHW fp32" else "")
            + (f"  first call {row['first_call_seconds']:.0f} s" if "compile" in row["path"] else "")
        )
    if row["section"] == "layers":
        return (
            f"{what} {1000 * row['seconds']:7.1f} ms  {row['flops_per_s'] / 1e9:7.1f} GFLOP/s = "
            f"{100 * row['fraction_of_ceiling']:5.1f}% of ceiling"
        )
    if row["section"] == "training":
        return (
            f"{what} {row['patches_per_s']:7.0f} patches/s  {row['flops_per_s'] / 1e9:7.1f} GFLOP/s = "
            f"{100 * row['fraction_of_ceiling']:5.1f}% of ceiling"
        )
    if row["section"] == "piunet":
        return (
            f"{what} {1000 * row['seconds']:8.1f} ms  peak {row['peak_bytes'] / 2**20:8.0f} MiB  "
            f"{row['speedup_vs_mha']:4.2f}x vs mha  max |diff| {row['max_abs_diff']:.1e}"
        )
    patches = f"({row['patches']} patches; decode {row['decode_s']:.2f}s)"
    return f"{what} {row['patches_per_s']:9.0f} patches/s {patches}"


SECTIONS = ("ceiling", "inference", "layers", "training", "piunet", "data")


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--only", choices=SECTIONS, nargs="+", help="sections to run (default: all)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--cuda", action="store_true", help="benchmark on the GPU")
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bf16 autocast in the GPU fast path (default: on)",
    )
    parser.add_argument(
        "--size", type=int, default=1000, help="output side for inference (default 1000: 1 MP)"
    )
    parser.add_argument(
        "--tile",
        type=int,
        default=512,
        help="tile size of the fast path, LR pixels (default 512: a 1 MP output in one tile)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="add a row per model for the fast path through torch.compile (with its compile time)",
    )
    parser.add_argument("--models", nargs="+", choices=list(INFERENCE_MODELS), help="inference models")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (best is kept)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed run")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for the training section")
    parser.add_argument("--train-data", default="T91", help="training images (T91, sample-train, a folder)")
    parser.add_argument(
        "--profile", action="store_true", help="print torch.profiler's table of the training steps on stderr"
    )
    parser.add_argument("--piunet-batch", type=int, default=4, help="PIUnet batch size")
    parser.add_argument(PIUNET_WORKER, dest="piunet_worker", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections; print a table or JSON."""
    args = build_parser().parse_args(argv)
    if args.cuda and not torch.cuda.is_available():
        raise SystemExit("tools/bench.py: error: --cuda given, but CUDA is not available here")
    if args.piunet_worker:
        print(json.dumps(piunet_step(args.piunet_worker, args)))
        return 0
    sections = args.only or list(SECTIONS)
    rows = bench_ceiling(args)
    ceiling = ceiling_of(rows, "bfloat16" if args.cuda and args.bf16 else "float32")
    if "inference" in sections:
        rows += bench_inference(args, ceiling)
    if "layers" in sections:
        rows += bench_layers(args, ceiling)
    if "training" in sections:
        rows += bench_training(args, ceiling)
    if "piunet" in sections:
        rows += bench_piunet(args)
    if "data" in sections:
        rows += bench_data(args)
    threads = torch.get_num_threads()
    device = torch.cuda.get_device_name(0) if args.cuda else f"{cpu_name()}, {threads} threads"
    if args.json:
        print(
            json.dumps(
                {"device": device, "torch": torch.__version__, "cpus": os.cpu_count(), "rows": rows}, indent=2
            )
        )
    else:
        print(f"{device}, torch {torch.__version__}")
        for row in rows:
            print(format_row(row))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
