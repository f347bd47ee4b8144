"""FedAvg vs FedProx vs FedSkip (s = 2, 3, 5) on MT10, one task per client, CPU budget.

Every run is ``train-agent --config configs/cpu/fedskip_mt10_small.yaml`` with the strategy
overrides below and ``run.seed`` in SEEDS; finished runs are skipped and interrupted ones
resumed, so the script can be rerun until the grid is complete. Writes the per-run final
evaluation and communication to ``--json`` and prints a markdown table.

    python bench/fedskip_mt10.py --out runs/fedskip_mt10 --json bench/fedskip_mt10.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

CONFIG = "configs/cpu/fedskip_mt10_small.yaml"
METHODS = {
    "FedAvg": ["federated.strategy=fedavg"],
    "FedProx (mu=0.01)": ["federated.strategy=fedprox", "federated.mu=0.01"],
    "FedSkip s=2": ["federated.strategy=fedskip", "federated.skip_period=2"],
    "FedSkip s=3": ["federated.strategy=fedskip", "federated.skip_period=3"],
    "FedSkip s=5": ["federated.strategy=fedskip", "federated.skip_period=5"],
}
SEEDS = (0, 1)


def run_one(out: Path, name: str, overrides: list[str], seed: int, extra: list[str]) -> dict:
    from orl.experiment import train

    run_dir = out / f"{name.split(' (')[0].replace(' ', '').replace('=', '')}-s{seed}"
    final = run_dir / "checkpoints" / "final" / "state.json"
    if not final.is_file():
        if (run_dir / "config.yaml").is_file():
            train(resume=run_dir, overrides=extra)
        else:
            train(Path(CONFIG), [*overrides, f"run.seed={seed}", f"run.out_dir={out}",
                                 f"run.name={run_dir.name}", *extra])
    state = json.loads(final.read_text())
    result = json.loads((run_dir / "eval_final.json").read_text())
    return {"method": name, "seed": seed, "run": run_dir.name, "rounds": state["step"],
            "bytes_total": state["bytes_total"], "eval": result}


def table(rows: list[dict], metric: str) -> str:
    """Markdown: per-task ``metric`` (success or return) averaged over seeds, the mean over tasks
    (mean ± std over seeds) and the communication of each method."""
    tasks = sorted({k.split("/", 1)[1] for r in rows for k in r["eval"] if k.startswith(f"{metric}/")})
    lines = ["| method | seeds | " + " | ".join(t.removesuffix("-v3") for t in tasks)
             + " | mean | MB sent+received |", "|---" * (len(tasks) + 4) + "|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        cells = [np.mean([r["eval"][f"{metric}/{t}"] for r in mine]) for t in tasks]
        means = [r["eval"][f"{metric}_mean"] for r in mine]
        digits = 2 if metric == "success" else 0
        lines.append(f"| {method} | {len(mine)} | " + " | ".join(f"{c:.{digits}f}" for c in cells)
                     + f" | {np.mean(means):.{digits + 1}f} ± {np.std(means):.{digits + 1}f} | "
                     f"{np.mean([r['bytes_total'] for r in mine]) / 1e6:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/fedskip_mt10"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--report", action="store_true", help="only print the tables of --json")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = parser.parse_args()
    if args.report:
        rows = json.loads(args.json.read_text())
        print(table(rows, "success"), table(rows, "return"), sep="\n\n")
        return
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        for method in args.methods:
            rows.append(run_one(args.out, method, METHODS[method], seed, args.overrides))
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
    print(table(rows, "success"), table(rows, "return"), sep="\n\n")


if __name__ == "__main__":
    main()
