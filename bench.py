"""Speed benchmark (not a test): throughput of the toolkit's hot paths on this machine.

    python bench.py                 # every section, a table on stdout
    python bench.py --only data     # one section
    python bench.py --json          # machine-readable

Sections: `data` (training patch pipeline, patches/s).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from torch.utils.data import DataLoader

from data import PatchDataset, PatchSampler, load_pairs
from utils import run_cli


def bench_data(args: argparse.Namespace) -> list[dict]:
    """Patches/s of the training pipeline: random and grid patches, with and without workers."""
    start = time.perf_counter()
    pairs = load_pairs(args.train_data, args.scale, progress=False)
    decode_s = time.perf_counter() - start
    rows = []
    modes = {"random": {"patches_per_image": 128}, "grid": {"grid_stride": 14}}
    for mode, options in modes.items():
        dataset = PatchDataset(pairs, args.scale, args.patch_size, seed=0, **options)
        for workers in (0, 2):
            sampler = PatchSampler(len(dataset), seed=0)
            loader = DataLoader(
                dataset, batch_size=args.batch_size, sampler=sampler, num_workers=workers, drop_last=True
            )
            next(iter(loader))  # start-up (worker processes) is not throughput
            start, patches = time.perf_counter(), 0
            for lr, _ in loader:
                patches += lr.shape[0]
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "section": "data",
                    "what": f"{args.train_data} {mode} {args.patch_size}x{args.patch_size} x{args.scale}",
                    "workers": workers,
                    "patches": patches,
                    "patches_per_s": patches / seconds,
                    "decode_s": decode_s,
                }
            )
    return rows


SECTIONS = {"data": bench_data}


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections and print a table (or JSON)."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--only", choices=list(SECTIONS), nargs="+", help="sections to run (default: all)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--train-data", default="T91", help="training set for the data section")
    parser.add_argument("--scale", type=int, default=3, help="scale factor")
    parser.add_argument("--patch-size", type=int, default=33, help="HR patch size")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size")
    args = parser.parse_args(argv)
    rows = []
    for name in args.only or list(SECTIONS):
        rows += SECTIONS[name](args)
    result = {"threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for row in rows:
        print(
            f"{row['section']:6} {row['what']:32} workers={row['workers']}  "
            f"{row['patches_per_s']:10.0f} patches/s  "
            f"({row['patches']} patches; decode {row['decode_s']:.2f}s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
