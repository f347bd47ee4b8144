"""Markdown table of success rates from train-agent run directories (final and best checkpoint).

    python bench/summarize_runs.py runs/harmodt-mt10

Runs are grouped by name without the trailing ``-s<seed>``; "final" is the evaluation of the
last checkpoint (eval_final.json), "best" the highest periodic evaluation in metrics.jsonl.
"task-agnostic" is the final checkpoint evaluated without task ids (eval_task_agnostic.json) and
"unseen" its evaluation on the held-out tasks (eval_final_unseen.json), where a run has them.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def success(path: Path) -> float | None:
    return json.loads(path.read_text())["success_mean"] if path.is_file() else None


def stat(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    return "-" if not values else f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def best(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return max(row["eval/success_mean"] for row in rows if "eval/success_mean" in row)


def main() -> None:
    root = Path(sys.argv[1])
    groups: dict[str, list[Path]] = defaultdict(list)
    for run in sorted(p for p in root.iterdir() if (p / "eval_final.json").is_file()):
        groups[re.sub(r"-s\d+$", "", run.name)].append(run)
    print("| method | seeds | final success (mean ± std over seeds) | best success | "
          "per seed (final) | task-agnostic (final) | unseen tasks (final) |")
    print("|---|---|---|---|---|---|---|")
    for method, runs in groups.items():
        final = [success(r / "eval_final.json") for r in runs]
        print(f"| {method} | {len(runs)} | {stat(final)} | {np.mean([best(r) for r in runs]):.3f} | "
              f"{', '.join(f'{v:.2f}' for v in final)} | "
              f"{stat([success(r / 'eval_task_agnostic.json') for r in runs])} | "
              f"{stat([success(r / 'eval_final_unseen.json') for r in runs])} |")


if __name__ == "__main__":
    main()
