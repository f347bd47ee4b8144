"""Generate the reference datasets and print their per-task success and returns (Markdown).

    python bench/dataset_report.py --benchmark MT10 \
        --levels expert near-optimal sub-optimal random --episodes 50
    python bench/dataset_report.py --benchmark MT50 --levels expert --episodes 10

Datasets go to --root (default: $MINARI_DATASETS_PATH); existing ones are reused, not remade.
The tables in docs/datasets.md come from these two commands.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from orl.datasets.generation import GenerationConfig, generate
from orl.datasets.info import summarize
from orl.envs.benchmarks import get_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", default="MT10")
    parser.add_argument("--levels", nargs="+", default=["expert"])
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--root", type=Path, default=None)
    args = parser.parse_args()

    tasks = get_benchmark(args.benchmark)
    start = time.perf_counter()
    cfg = GenerationConfig(tasks=tasks, levels=args.levels, episodes=args.episodes,
                           seed=args.seed, workers=args.workers)
    generate(cfg, root=args.root, exist_ok=True)
    elapsed = time.perf_counter() - start

    print(f"\n{args.benchmark}, {args.episodes} episodes per task and level, seed {args.seed} "
          f"({platform.machine()}, generation+report {elapsed:.0f} s)\n")
    header = "| task | " + " | ".join(f"{lv} success | {lv} return" for lv in args.levels) + " |"
    print(header)
    print("|" + "---|" * (1 + 2 * len(args.levels)))
    means = {lv: [0.0, 0.0] for lv in args.levels}
    for task in tasks:
        cells = []
        for level in args.levels:
            s = summarize(f"metaworld/{task}/{level}-v0", args.root)
            cells += [f"{s.success_rate:.2f}", f"{s.return_mean:.0f} ± {s.return_std:.0f}"]
            means[level][0] += s.success_rate / len(tasks)
            means[level][1] += s.return_mean / len(tasks)
        print(f"| {task} | " + " | ".join(cells) + " |")
    print("| **mean** | " + " | ".join(f"**{m[0]:.2f}** | **{m[1]:.0f}**" for m in means.values()) + " |")


if __name__ == "__main__":
    main()
