"""Run the OCW10 continual-learning comparison at the CPU budget and summarize it.

    python bench/continual_ocw10.py --methods finetune packnet --seeds 0 1 --parallel 2
    python bench/continual_ocw10.py --summarize          # only the table of finished runs

Each run is ``train-agent --config configs/cpu/ocw10_<method>_small.yaml run.seed=S`` in
``--out/<method>-s<S>`` (an existing run is resumed, a finished one skipped); ``--version
TASK=V`` takes that task's dataset from version V. ``mtdt`` is the multi-task upper bound
(``configs/cpu/ocw10_mtdt_small.yaml``; its final success is its P).
The method ``reference`` runs every OCW10 task alone from scratch (the finetune config, in
``--out/references``): the single-task reference curves of Continual World's forward transfer.
The summary is a markdown table of P, F, FWT and, once the references of a seed are there, the
CW forward transfer (mean and per seed) from each run's success matrix (``eval_final.json`` for
mtdt); ``--first N`` compares the first N tasks of runs that got that far (``R[:N, :N]``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from launch import run_parallel, train_command

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "cpu"


def data_override(method: str, versions: dict[str, int], level: str = "expert") -> list[str]:
    """Overrides taking some OCW10 tasks' datasets from another version: explicit
    ``continual.stages``, or ``data.datasets`` for the multi-task mtdt."""
    if not versions:
        return []
    from orl.envs.benchmarks import OCW10

    ids = {t: f"metaworld/{t}/{level}-v{versions.get(t, 0)}" for t in OCW10}
    if method == "mtdt":
        return [f"data.datasets=[{', '.join(ids.values())}]", f"data.eval_tasks=[{', '.join(OCW10)}]"]
    stages = ", ".join(f"{{name: {t}, dataset: {ids[t]}, eval_task: {t}}}" for t in OCW10)
    return ["continual.tasks=[]", f"continual.stages=[{stages}]"]


def command(method: str, seed: int, out: Path, versions: dict[str, int]) -> list[str]:
    return train_command(out / f"{method}-s{seed}", [
        "--config", str(CONFIGS / f"ocw10_{method}_small.yaml"), f"run.seed={seed}",
        *data_override(method, versions)])


def reference_jobs(seeds: list[int], out: Path) -> list[tuple[str, list[list[str]]]]:
    """Single-task reference runs for Continual World's forward transfer: each OCW10 task
    learnt alone from scratch with the finetune config, in ``out/references/<task>-s<seed>``."""
    from orl.envs.benchmarks import OCW10

    jobs = []
    for seed in seeds:
        for task in OCW10:
            run = out / "references" / f"{task}-s{seed}"
            if (run / "report.json").is_file():
                continue
            cmd = train_command(run, ["--config", str(CONFIGS / "ocw10_finetune_small.yaml"),
                                      f"continual.tasks=[{task}]", f"run.seed={seed}"])
            jobs.append((f"reference-{task}-s{seed}", [cmd]))
    return jobs


def cw_transfer(run: Path, seed: int, stages: int) -> float | None:
    """Continual World's forward transfer of the first ``stages`` tasks against the reference
    runs (those of the same seed first, then any other seed's), when every task has one."""
    from orl.agents.continual.metrics import cw_forward_transfer
    from orl.agents.continual.report import load_results, own_stage_curve, reference_curves

    refs = sorted((ref for ref in (run.parent / "references").glob("*-s*")
                   if (ref / "report.json").is_file()),  # finished ones
                  key=lambda ref: (not ref.name.endswith(f"-s{seed}"), ref.name))
    if not refs:
        return None
    results = load_results(run)
    try:
        references = reference_curves(results, refs)[:stages]
    except ValueError:  # not every task has its reference yet
        return None
    return cw_forward_transfer([own_stage_curve(results, i) for i in range(stages)], references)


def finished(method: str, seed: int, out: Path) -> bool:
    run = out / f"{method}-s{seed}"
    return (run / ("eval_final.json" if method == "mtdt" else "report.json")).is_file() and (
        method == "mtdt" or json.loads((run / "report.json").read_text()).get("stages_done") == 10)


def run_metrics(run: Path, method: str, first: int | None) -> dict | None:
    """P/F/FWT of a finished run, or of its first ``first`` tasks (the sub-matrix
    ``R[:first, :first]``) when it has finished at least that many; None otherwise."""
    from orl.agents.continual.metrics import summarize
    from orl.agents.continual.report import load_results

    if method == "mtdt":
        final = run / "eval_final.json"
        return ({"performance": json.loads(final.read_text())["success_mean"]}
                if final.is_file() and first is None else None)
    if not (run / "continual.json").is_file():
        return None
    results = load_results(run)
    matrix, before = results["matrix"], results["before"]
    k = first or len(before)
    if np.isnan(matrix[:k]).any():
        return None
    seed = int(run.name.rpartition("-s")[2])
    return summarize(matrix[:k, :k], before[:k]).to_dict() | {"cw": cw_transfer(run, seed, k)}


def summarize(out: Path, first: int | None = None) -> str:
    """Markdown table: method, seeds, P / F / FWT as mean ± std, P per seed."""
    rows: dict[str, list[dict]] = {}
    for run in sorted(p for p in out.iterdir() if p.is_dir()):
        method, _, seed = run.name.rpartition("-s")
        metrics = run_metrics(run, method, first)
        if metrics is not None:
            rows.setdefault(method, []).append(metrics | {"seed": int(seed)})

    def stat(values: list) -> str:
        values = [v for v in values if v is not None]
        return "-" if not values else f"{np.mean(values):.2f} ± {np.std(values):.2f}"

    lines = ["| method | seeds | P | F | FWT | CW FT | P per seed |", "|---|---|---|---|---|---|---|"]
    for method, reports in sorted(rows.items(), key=lambda kv: -np.mean(
            [r["performance"] for r in kv[1]])):
        per_seed = ", ".join(f"{r['performance']:.2f}" for r in sorted(reports, key=lambda r: r["seed"]))
        lines.append(f"| {method} | {len(reports)} | {stat([r['performance'] for r in reports])} | "
                     f"{stat([r.get('forgetting') for r in reports])} | "
                     f"{stat([r.get('forward_transfer') for r in reports])} | "
                     f"{stat([r.get('cw') for r in reports])} | {per_seed} |")
    return "\n".join(lines)


def diagonals(out: Path) -> str:
    """Markdown table: each finished run's success right after every task's stage (``R[i][i]``)
    and after the last stage (``R[T-1][i]``)."""
    from orl.agents.continual.report import load_results

    lines = ["| run | R[i][i], i = 0..T-1 | R[T-1][i] |", "|---|---|---|"]
    for run in sorted(p for p in out.iterdir() if (p / "continual.json").is_file()):
        matrix = load_results(run)["matrix"]
        if np.isnan(matrix).any():
            continue

        def row(values: np.ndarray) -> str:
            return " ".join(f"{v:.1f}".removeprefix("0").replace(".0", "") or "0" for v in values)

        lines.append(f"| {run.name} | {row(np.diag(matrix))} | {row(matrix[-1])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["finetune", "packnet", "compoformer_grow",
                                                          "compoformer_prune"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/ocw10-cpu"))
    parser.add_argument("--version", nargs="*", default=[], metavar="TASK=V",
                        help="dataset version of some tasks, e.g. shelf-place-v3=1 (default 0)")
    parser.add_argument("--summarize", action="store_true", help="only print the table")
    parser.add_argument("--diagonals", action="store_true",
                        help="also print R[i][i] and the last row of every finished run")
    parser.add_argument("--first", type=int, default=None,
                        help="metrics of the first N tasks only (runs that finished N stages)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.summarize:
        versions = {k: int(v) for k, v in (item.split("=") for item in args.version)}
        runs = [(m, s) for s in args.seeds for m in args.methods if m != "reference"
                and not finished(m, s, args.out)]
        jobs = [(f"{m}-s{s}", [command(m, s, args.out, versions)]) for m, s in runs]
        if "reference" in args.methods:
            jobs += reference_jobs(args.seeds, args.out)
        run_parallel(jobs, args.out, args.parallel)
    print(summarize(args.out, args.first))
    if args.diagonals:
        print("\n" + diagonals(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
