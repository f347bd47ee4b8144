"""Markdown table of success rates from train-agent run directories (final and best checkpoint).

    python bench/summarize_runs.py runs/harmodt-mt10

Runs are grouped by name without the trailing ``-s<seed>``; "final" is the evaluation of the
last checkpoint (eval_final.json), "best" the highest periodic evaluation in metrics.jsonl.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def main() -> None:
    root = Path(sys.argv[1])
    groups: dict[str, list[Path]] = defaultdict(list)
    for run in sorted(p for p in root.iterdir() if (p / "eval_final.json").is_file()):
        groups[re.sub(r"-s\d+$", "", run.name)].append(run)
    print("| method | seeds | final success (mean ± std over seeds) | best success | per seed (final) |")
    print("|---|---|---|---|---|")
    for method, runs in groups.items():
        final = [json.loads((r / "eval_final.json").read_text())["success_mean"] for r in runs]
        best = []
        for r in runs:
            rows = [json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()]
            best.append(max(row["eval/success_mean"] for row in rows if "eval/success_mean" in row))
        print(f"| {method} | {len(runs)} | {np.mean(final):.3f} ± {np.std(final):.3f} | "
              f"{np.mean(best):.3f} | {', '.join(f'{v:.2f}' for v in final)} |")
    agnostic = sorted(root.glob("*/eval_task_agnostic.json"))
    if agnostic:
        values = [json.loads(p.read_text())["success_mean"] for p in agnostic]
        print(f"| harmodt-F task-agnostic (merged mask, final) | {len(values)} | "
              f"{np.mean(values):.3f} ± {np.std(values):.3f} | - | "
              f"{', '.join(f'{v:.2f}' for v in values)} |")


if __name__ == "__main__":
    main()
