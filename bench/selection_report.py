"""Markdown tables for docs/results/selection.md from ``bench/selection_mt10_cpu.sh``'s output.

    python bench/selection_report.py runs/selection-mt10

Prints the selections (time, count, returns, dominance score, from ``select-*.json``), how much
the MT10 selections overlap (Jaccard index of their source episodes, from the datasets'
metadata), and the final success of every run group (runs named ``<method>-s<seed>``).
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def selections(root: Path) -> dict[str, dict]:
    return {p.stem.removeprefix("select-"): json.loads(p.read_text())
            for p in sorted(root.glob("select-*.json"))}


def source_episodes(dataset_id: str) -> set[int]:
    import minari

    return set(minari.load_dataset(dataset_id).storage.metadata["orl_selection"]["source_episodes"])


def main() -> None:
    root = Path(sys.argv[1])
    chosen = selections(root)
    print("| selection | selected / pool | time (s) | mean return (pool) | normalised return "
          "(pool) | dominance top-5 (pool) |")
    print("|---|---|---|---|---|---|")
    for name, s in chosen.items():
        print(f"| {name} | {s['selected']} / {s['pool_episodes']} | {s['seconds']:.2f} | "
              f"{s['return_mean_selected']:.0f} ({s['return_mean_pool']:.0f}) | "
              f"{s['normalized_return_selected']:.3f} ({s['normalized_return_pool']:.3f}) | "
              f"{s['dominance_selected']:.3f} ({s['dominance_pool']:.3f}) |")

    mt10 = {name: source_episodes(s["dataset"]) for name, s in chosen.items()
            if s["dataset"].startswith("selection/mt10-")}
    if len(mt10) > 1:
        print("\n| Jaccard overlap | " + " | ".join(mt10) + " |")
        print("|---" * (len(mt10) + 1) + "|")
        for a in mt10:
            cells = [f"{len(mt10[a] & mt10[b]) / len(mt10[a] | mt10[b]):.2f}" for b in mt10]
            print(f"| {a} | " + " | ".join(cells) + " |")

    groups: dict[str, list[dict]] = defaultdict(list)
    for run in sorted(p for p in root.iterdir() if (p / "eval_final.json").is_file()):
        groups[re.sub(r"-s\d+$", "", run.name)].append(json.loads((run / "eval_final.json").read_text()))
    print("\n| runs | seeds | final success (mean ± std over seeds) | per seed | mean return |")
    print("|---|---|---|---|---|")
    for name, results in groups.items():
        success = [r["success_mean"] for r in results]
        returns = [r["return_mean"] for r in results]
        print(f"| {name} | {len(results)} | {np.mean(success):.3f} ± {np.std(success):.3f} | "
              f"{', '.join(f'{v:.2f}' for v in success)} | {np.mean(returns):.0f} |")


if __name__ == "__main__":
    main()
