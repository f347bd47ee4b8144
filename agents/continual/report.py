"""``orl report RUN_DIR``: the success matrix, P/F/FWT and per-task success curves of a
continual run (finished or interrupted), as a table, ``report.json`` and plots in the run dir
(``success_matrix.png``, ``success_curves.png``; matplotlib, a dependency)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from orl.agents.continual.metrics import Curve, finished_rows, record_metrics, sequence_matrix

PLOTS_HINT = "no plots: matplotlib is missing (pip install matplotlib)"


def load_results(run_dir: Path) -> dict[str, Any]:
    """Stage names, envs, before-training success ``b``, success matrix ``R`` (NaN rows for
    stages not finished), the recorded evaluations of a continual run and its ``final``
    evaluation (``continual.final_episodes``; None without one) with ``final_matched``, its
    success on the rows' episodes (None in runs made before it was recorded)."""
    path = Path(run_dir) / "continual.json"
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"Run directory {str(run_dir)!r} does not exist.")
    if not path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} has no continual.json: it is not a continual "
                                "run directory (train-agent with continual.enabled=true)")
    state = json.loads(path.read_text())
    names = [s["name"] for s in state["stages"]]
    matrix = np.full((len(names), len(names)), np.nan)
    for i, row in enumerate(state["rows"]):
        matrix[i] = row
    before = np.full(len(names), np.nan) if state["before"] is None else np.array(state["before"])
    return {"names": names, "envs": [s["eval_task"] for s in state["stages"]], "before": before,
            "matrix": matrix, "evaluations": state["evaluations"], "notes": state["notes"],
            "final": state.get("final"), "final_matched": state.get("final_matched")}


def own_stage_curve(results: dict[str, Any], stage: int) -> Curve:
    """Success on task ``stage`` during its own (finished) stage, at steps into its training:
    step 0 is the stage's start, before it trains (the previous stage's end-of-stage evaluation
    ``R[stage-1][stage]``; ``b[0]`` for the first stage), then each evaluation of its ``train``
    phase (every ``train.eval_every`` steps and at ``train.steps``). A stage that trained nothing
    (CompoFormer composed it from an earlier policy) plays one fixed policy through the stage: its
    curve has the end-of-stage success at every step at which the run's trained stages were
    evaluated (the policy and the evaluation seed are the same, so are the results)."""
    start = results["before"][0] if stage == 0 else results["matrix"][stage - 1][stage]
    trained = train_evaluations(results, stage)
    if trained:
        steps, success = [e["step"] for e in trained], [e["success"][stage] for e in trained]
    else:
        steps = stage_steps(results)
        success = [results["matrix"][stage][stage]] * len(steps)
    return {"steps": [0, *steps], "success": [float(v) for v in (start, *success)]}


def train_evaluations(results: dict[str, Any], stage: int) -> list[dict[str, Any]]:
    """The evaluations during stage ``stage``'s ``train`` phase, by step."""
    return sorted((e for e in results["evaluations"] if e["stage"] == stage and e["phase"] == "train"),
                  key=lambda e: e["step"])


def stage_steps(results: dict[str, Any]) -> list[int]:
    """The steps at which the first trained stage of a run was evaluated (every stage trains
    ``train.steps`` and is evaluated every ``train.eval_every`` steps)."""
    for stage in range(len(results["names"])):
        trained = train_evaluations(results, stage)
        if trained:
            return [e["step"] for e in trained]
    raise ValueError("no stage of this run was trained: its success curves have no steps")


def continual_record(results: dict[str, Any]) -> dict[str, Any]:
    """What the results store keeps of a continual run (JSON, NaN as None): ``stages``,
    ``envs``, ``before``, ``matrix`` (None rows for unfinished stages), the ``curves`` of its
    finished stages (``own_stage_curve``), ``final`` and ``final_matched`` (None when the run
    has none) and the stages' ``notes`` (parameters added, CompoFormer's decisions);
    ``record_metrics`` computes the metrics from it."""
    def plain(values: np.ndarray) -> list[Any]:
        return [None if np.isnan(v) else float(v) for v in values]

    n = finished_rows(sequence_matrix(results["matrix"], results["final"]))
    return {"stages": results["names"], "envs": results["envs"],
            "before": plain(results["before"]), "matrix": [plain(row) for row in results["matrix"]],
            "curves": [own_stage_curve(results, i) for i in range(n)], "final": results["final"],
            "final_matched": results.get("final_matched"), "notes": results["notes"]}


def continual_metrics(results: dict[str, Any],
                      reference_curves: dict[str, Curve] | None = None) -> dict[str, Any]:
    """P, F, FWT of a continual run (``load_results``) and, given single-task reference curves by
    env (``reference_curves``), Continual World's forward transfer: ``orl report`` and the
    study's records compute them here, through ``record_metrics``."""
    return record_metrics(continual_record(results), reference_curves)


def reference_curves(references: list[Path]) -> dict[str, Curve]:
    """The single-task reference curve of each env from reference runs (``continual.reference``:
    one-stage continual runs), by env; an env given twice is an error."""
    curves: dict[str, Curve] = {}
    for run in references:
        record = continual_record(load_results(run))
        for env, curve in zip(record["envs"], record["curves"]):
            if env in curves:
                raise ValueError(f"two reference runs of {env} (the second in {str(run)!r}): "
                                 "give one per env")
            curves[env] = curve
    return curves


def report(run_dir: Path, references: list[Path] = (), logger: Any = None,
           quiet: bool = False) -> dict[str, Any]:
    """Print the table, write ``report.json`` and the plots; return the metrics."""
    from orl.experiment import write_json

    run_dir = Path(run_dir)
    results = load_results(run_dir)
    matrix = sequence_matrix(results["matrix"], results["final"])
    out: dict[str, Any] = {"stages": results["names"], "before": results["before"].tolist(),
                           "matrix": matrix.tolist(), "notes": results["notes"]}
    if finished_rows(matrix):
        out |= continual_metrics(results, reference_curves(list(references)) if references else None)
    write_json(run_dir / "report.json", out)
    results = results | {"matrix": matrix}  # the table and plots show R with the final row
    plots = write_plots(run_dir, results)
    if not quiet:
        print_table(results, out)
        print(f"plots: {', '.join(map(str, plots))}" if plots else PLOTS_HINT)
    if logger is not None and getattr(logger, "wandb_run", None) is not None and plots:
        import wandb

        logger.wandb_run.log({f"continual/{p.stem}": wandb.Image(str(p)) for p in plots})
    return out


def print_table(results: dict[str, Any], out: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    matrix, before = results["matrix"], results["before"]
    n = out.get("stages_done", 0)
    table = Table("stage", "before", "after own stage", "at the end", "forgetting",
                  title=f"success ({n}/{len(matrix)} stages done)")
    for i, name in enumerate(results["names"]):
        own = matrix[i, i] if i < n else np.nan
        end = matrix[n - 1, i] if n else np.nan
        table.add_row(name, *(f"{v:.2f}" if np.isfinite(v) else "-"
                              for v in (before[i], own, end, own - end if i < n else np.nan)))
    console = Console()
    console.print(table)
    if n:
        fwt, cw = out["forward_transfer"], out.get("cw_forward_transfer")
        counts = {"parameters added per task": out.get("added_parameters"),
                  "composed tasks": out.get("composed_tasks")}
        counts = {name: value for name, value in counts.items() if value is not None}
        summary = Table("P", "F", "FWT", "CW forward transfer", *counts)
        summary.add_row(f"{out['performance']:.3f}", f"{out['forgetting']:.3f}",
                        "-" if fwt is None else f"{fwt:.3f}", "-" if cw is None else f"{cw:.3f}",
                        *(f"{value:,.0f}" for value in counts.values()))
        console.print(summary)


def write_plots(run_dir: Path, results: dict[str, Any]) -> list[Path]:
    """Heatmap of the success matrix and success curves over the sequence (none without
    matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    from orl.io import atomic_path

    names, matrix = results["names"], results["matrix"]
    t = len(names)
    paths = [run_dir / "success_matrix.png", run_dir / "success_curves.png"]
    fig, ax = plt.subplots(figsize=(max(5.0, 2.5 + 0.55 * t), max(4.0, 2.0 + 0.5 * t)))
    image = ax.imshow(np.ma.masked_invalid(matrix), vmin=0, vmax=1, cmap="viridis")
    for i in range(t):
        for j in range(t):
            if np.isfinite(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] < 0.5 else "black")
    ax.set_xticks(range(t), names, rotation=90, fontsize=7)
    ax.set_yticks(range(t), names, fontsize=7)
    ax.set_xlabel("evaluated task j")
    ax.set_ylabel("after training stage i")
    fig.colorbar(image, ax=ax, label="success R[i][j]")
    fig.tight_layout()
    _save(fig, paths[0], atomic_path)

    evaluations = sorted(results["evaluations"], key=lambda e: e["position"])
    fig, ax = plt.subplots(figsize=(8, 4))
    final = results["final"] or []  # after the sequence: the curves' last point
    x = [0.0, *(e["position"] for e in evaluations), *([float(t)] if final else [])]
    for j, name in enumerate(names):
        y = [results["before"][j], *(e["success"][j] for e in evaluations), *final[j:j + 1]]
        ax.plot(x, y, label=name, linewidth=1)
    for boundary in range(1, t):
        ax.axvline(boundary, color="grey", linewidth=0.5, linestyle=":")
    ax.set_xlabel("stage (tasks trained)")
    ax.set_ylabel("success")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    _save(fig, paths[1], atomic_path)
    plt.close("all")
    return paths


def _save(fig: Any, path: Path, atomic_path: Any) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _cmd_report(args: argparse.Namespace) -> int:
    report(args.run_dir, references=args.reference)
    return 0


def add_report_parser(commands: Any) -> None:
    """Register ``orl report`` on the ``orl`` subcommands."""
    parser = commands.add_parser("report", help="success matrix, P/F/FWT and plots of a continual run")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--reference", type=Path, nargs="*", default=[],
                        help="single-task reference runs (continual.reference=<stage>) of the "
                        "run's envs: Continual World's forward transfer against them")
    parser.set_defaults(func=_cmd_report)
