"""Speed of trajectory selection: two benchmarks, one torch thread each.

``disf``: DiSF greedy, incremental (running statistics, all candidates of a step in one pass)
against the naive reference that recomputes the correlation matrix of ``selected + [c]`` for
every candidate, on one block of synthetic correlated features (latent factors plus noise); one
random first pick, ``k`` greedy picks; both must select the same items.

``datamask``: DATAMASK against greedy DiSF at equal budget on a large synthetic pool (the same
features; quality uniform in [0, 1]), with the settings ``orl.datasets.select.select`` uses:
DATAMASK with its default config (float32), the incremental greedy DiSF in blocks of 1024
(float64). ``--disf-items`` times DiSF on the first that many items only and scales the time
linearly by the number of blocks (every block costs the same); the output says when it does.

    python bench/selection_speed.py disf --items 4096 --dim 256 --k 16
    python bench/selection_speed.py datamask --items 100000 --dim 256 --budget 0.1
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch

from orl.datasets.select.datamask import DataMaskConfig, cosine_diversity, datamask_select
from orl.datasets.select.disf import disf_select, greedy_incremental, greedy_naive, offdiag_mass
from orl.experiment import write_json


def correlated_features(items: int, dim: int, rank: int = 16, seed: int = 0) -> torch.Tensor:
    """(items, dim) float64 features driven by ``rank`` latent factors plus 0.3 noise."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(items, rank, generator=g, dtype=torch.float64)
    mix = torch.randn(rank, dim, generator=g, dtype=torch.float64)
    return latent @ mix + 0.3 * torch.randn(items, dim, generator=g, dtype=torch.float64)


def bench_disf(args: argparse.Namespace) -> dict[str, Any]:
    x = correlated_features(args.items, args.dim, seed=args.seed)
    first = int(torch.randint(args.items, (), generator=torch.Generator().manual_seed(args.seed)))
    timings, picks = {}, {}
    for name, greedy in (("incremental", greedy_incremental), ("naive", greedy_naive)):
        start = time.perf_counter()
        picks[name] = greedy(x, first, args.k)
        timings[name] = time.perf_counter() - start
        print(f"{name:>12}: {timings[name]:8.2f} s")
    if picks["incremental"] != picks["naive"]:
        raise SystemExit("the incremental greedy picked different items than the naive reference")
    return {
        "items": args.items, "dim": args.dim, "k": args.k, "same_selection": True,
        "incremental_s": round(timings["incremental"], 3), "naive_s": round(timings["naive"], 3),
        "speedup": round(timings["naive"] / timings["incremental"], 1),
    }


def bench_datamask(args: argparse.Namespace) -> dict[str, Any]:
    x = correlated_features(args.items, args.dim, seed=args.seed)
    quality = torch.rand(args.items, generator=torch.Generator().manual_seed(args.seed + 1),
                         dtype=torch.float64)
    count = round(args.budget * args.items)
    cfg = DataMaskConfig()
    start = time.perf_counter()
    masked, _ = datamask_select(x.float(), quality.float(), count, cfg, seed=args.seed)
    datamask_s = time.perf_counter() - start
    print(f"DATAMASK: {datamask_s:.1f} s for {count} of {args.items} items")

    disf_items = min(args.disf_items or args.items, args.items)
    start = time.perf_counter()
    greedy = disf_select(x[:disf_items], round(args.budget * disf_items), args.block_size, args.seed)
    measured = time.perf_counter() - start
    scale = math.ceil(args.items / args.block_size) / math.ceil(disf_items / args.block_size)
    note = "measured on the whole pool" if disf_items == args.items else (
        f"measured on {disf_items} items ({measured:.1f} s), scaled x{scale:.2f} by block count")
    print(f"greedy DiSF: {measured * scale:.1f} s ({note})")

    def describe(rows: Any) -> dict[str, float]:
        rows = torch.as_tensor(rows)
        sample = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:2000]]
        pairs = args.dim * (args.dim - 1)
        return {"quality_mean": round(float(quality[rows].mean()), 4),
                "cosine_diversity": round(float(cosine_diversity(x[sample][None])), 4),
                "disf_mass_per_pair": round(float(offdiag_mass(x[sample])) / pairs, 4)}

    return {
        "items": args.items, "dim": args.dim, "selected": count,
        "datamask_s": round(datamask_s, 2), "datamask_config": vars(cfg),
        "disf_s": round(measured * scale, 2), "disf_timing": note, "disf_block_size": args.block_size,
        "speedup": round(measured * scale / datamask_s, 1),
        "datamask_selection": describe(masked), "disf_selection": describe(greedy),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benches = parser.add_subparsers(dest="bench", required=True)
    disf = benches.add_parser("disf", help="incremental vs naive DiSF greedy on one block")
    disf.add_argument("--items", type=int, default=4096)
    disf.add_argument("--dim", type=int, default=256)
    disf.add_argument("--k", type=int, default=16, help="items picked in the block")
    disf.set_defaults(run=bench_disf)
    mask = benches.add_parser("datamask", help="DATAMASK vs greedy DiSF at equal budget")
    mask.add_argument("--items", type=int, default=100_000)
    mask.add_argument("--dim", type=int, default=256)
    mask.add_argument("--budget", type=float, default=0.1)
    mask.add_argument("--block-size", type=int, default=1024, help="DiSF block size")
    mask.add_argument("--disf-items", type=int, default=None,
                      help="time DiSF on this many items and extrapolate to --items")
    mask.set_defaults(run=bench_datamask)
    for sub in (disf, mask):
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = args.run(args) | {
        "threads": 1, "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        write_json(Path(args.json), result)


if __name__ == "__main__":
    main()
