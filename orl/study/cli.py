"""``orl study run | run-one | status | report``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from orl.cli import HelpFormatter
from orl.study.places import Places
from orl.study.progress import inherited_minutes, minutes_left, run_states, share_done
from orl.study.report import DEFAULT_REPS, DEFAULT_SEED
from orl.study.runner import run_local, run_one, run_ray
from orl.study.spec import Study, load_study
from orl.study.store import ResultsStore, split_records


def _places(args: argparse.Namespace, study: Study) -> Places:
    return Places.of(study, args.runs_dir, args.results_dir)


def _cmd_run(args: argparse.Namespace) -> int:
    study = load_study(args.study)
    places = _places(args, study)
    study.select(args.only)  # an unknown key fails before anything starts
    if args.launcher == "ray":
        if not args.address:
            raise ValueError("--launcher ray needs --address HOST:PORT of the Ray head")
        failed = run_ray(study, places, args.address, args.only, args.threads)
    else:
        try:
            failed = run_local(study, places, args.only, args.workers, args.threads)
        except KeyboardInterrupt:
            print(f"study {study.name}: interrupted; its runs stopped, `orl study run` resumes them",
                  file=sys.stderr)
            return 130
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)} (their logs: {places.runs / 'logs'})")
        return 1
    return 0


def _cmd_run_one(args: argparse.Namespace) -> int:
    study = load_study(args.study)
    places = _places(args, study)
    record = run_one(study, args.key, places, args.threads)
    written = ResultsStore(places.results).append(record)
    print(f"{args.key}: {'recorded' if written else 'already recorded'} in {places.results}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    study = load_study(args.study)
    places = _places(args, study)
    rows = run_states(study, places)
    selected = {run.key for run in study.select(args.only)}
    _, stale = split_records(ResultsStore(places.results).records(), study.runs)
    table = Table("run", "state", "step", "minutes", title=f"study {study.name}: {places.runs}")
    for row in (row for row in rows if row["key"] in selected):
        minutes = f"{row['wall_s'] / 60:.1f}" if row.get("wall_s") else ""
        step = "" if row["step"] is None else str(row["step"])
        table.add_row(row["key"], row["state"], f"{step} ({row['stage']})" if "stage" in row else step,
                      minutes)
    Console().print(table)
    counts: dict[str, int] = {}
    for row in (row for row in rows if row["key"] in selected):
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    print(", ".join(f"{n} {state}" for state, n in counts.items())
          + (f"; {len(stale)} stale record(s) left out" if stale else ""))
    print("recorded runs per condition: " + _per_condition(study, rows, selected))
    print(_estimate(study, places, rows, selected))
    return 0


def _per_condition(study: Study, rows: list[dict[str, Any]], selected: set[str]) -> str:
    """``label recorded/total`` for every condition with a selected run, in study order."""
    recorded = {row["key"] for row in rows if row["state"] == "recorded"}
    counts: dict[str, list[int]] = {}
    for run in (run for run in study.runs if run.key in selected):
        done_total = counts.setdefault(run.label, [0, 0])
        done_total[0] += run.key in recorded
        done_total[1] += 1
    return ", ".join(f"{label} {done}/{total}" for label, (done, total) in counts.items())


def _estimate(study: Study, places: Places, rows: list[dict[str, Any]], selected: set[str]) -> str:
    """Core-hours left (``minutes_left`` of every selected run not recorded; minutes per run
    measured on every recorded run)."""
    records = {row["key"]: row for row in rows if row["state"] == "recorded"}
    left = [(run, row) for run, row in zip(study.runs, rows)
            if row["state"] != "recorded" and run.key in selected]
    minutes = minutes_left(study, records, inherited_minutes(study, places), {run.key for run, _ in left},
                           {run.key: share_done(run, row) for run, row in left})
    if minutes is None:
        return f"{len(left)} run(s) left; no run time measured yet (set budget.minutes_per_run)"
    hours = minutes * study.file.budget.threads_per_run / 60
    return (f"{len(left)} run(s) left = {hours:.1f} core-hours (each variant's measured minutes "
            "per run, else the study's budget; partial runs by their steps done)")


def _cmd_report(args: argparse.Namespace) -> int:
    from orl.study.report import report

    study = load_study(args.study)
    places = _places(args, study)
    # The store's report.* and the pages' sections are the default bootstrap's: trying another seed
    # or replication count must not rewrite the committed files.
    default = args.seed == DEFAULT_SEED and args.reps == DEFAULT_REPS
    if args.write_docs and not default:
        raise ValueError(f"--write-docs writes the page's generated section, which uses the default "
                         f"bootstrap (--seed {DEFAULT_SEED} --reps {DEFAULT_REPS}): drop --seed/--reps, "
                         "or drop --write-docs to see this bootstrap's report")
    docs = args.docs_dir if args.write_docs else None
    logger = None
    if default and study.runs[0].config["run"]["logger"] == "wandb":
        logger = _report_wandb_run(study, places.results)
    out = args.out or (places.results if default else None)
    try:
        print(report(study, places.results, docs, reps=args.reps, seed=args.seed, logger=logger,
                     out=out, write=out is not None))
    finally:
        if logger is not None:
            logger.finish()
    if not default and args.out is None:
        print(f"(not written: {places.results} keeps the default bootstrap's report; --out DIR keeps "
              "this one's files)", file=sys.stderr)
    return 0


def _report_wandb_run(study: Study, folder: Path) -> Any:
    """An offline wandb run in the study's group that holds the report's tables."""
    import os

    import wandb

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    folder.mkdir(parents=True, exist_ok=True)
    cfg = study.runs[0].config["run"]
    return wandb.init(project=cfg["wandb_project"], group=study.name, job_type="report",
                      name=f"{study.name}-report", dir=str(folder))


def add_study_command(commands: Any) -> None:
    """Register ``orl study``."""
    study = commands.add_parser("study", help="run, follow and report experiment grids "
                                              "(studies/<name>.yaml)")
    sub = study.add_subparsers(dest="study_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("study", type=Path, help="study file, e.g. studies/harmodt_mt10.yaml")
        p.add_argument("--runs-dir", type=Path, default=None,
                       help="where run dirs go (default: runs/; a study's are in runs/<study>/)")
        p.add_argument("--results-dir", type=Path, default=None,
                       help="results store (default: results/ beside the study file's folder)")

    run = sub.add_parser("run", help="run the missing runs (resumes started ones, skips recorded)",
                         formatter_class=HelpFormatter)
    common(run)
    run.add_argument("--workers", type=int, default=None, help="runs at once (default: one per core)")
    run.add_argument("--threads", type=int, default=None,
                     help="torch threads per run (default: the study's budget.threads_per_run)")
    run.add_argument("--only", nargs="+", default=None, metavar="KEY",
                     help="run keys, variants or conditions to run")
    run.add_argument("--launcher", choices=["local", "ray"], default="local",
                     help="local processes, or Ray tasks on a cluster (--address)")
    run.add_argument("--address", default=None, help="Ray head HOST:PORT (--launcher ray)")
    run.set_defaults(func=_cmd_run)

    one = sub.add_parser("run-one", help="train, evaluate and record one run (e.g. one array job)")
    common(one)
    one.add_argument("key", help="run key, e.g. mtdt-s0 (orl study status lists them)")
    one.add_argument("--threads", type=int, default=None)
    one.set_defaults(func=_cmd_run_one)

    status = sub.add_parser("status", help="recorded / running / partial / missing, per run")
    common(status)
    status.add_argument("--only", nargs="+", default=None, metavar="KEY",
                        help="run keys, variants or conditions to show (default: every run)")
    status.set_defaults(func=_cmd_status)

    rep = sub.add_parser("report", help="tables and plots from the records (rliable)",
                         formatter_class=HelpFormatter)
    common(rep)
    rep.add_argument("--write-docs", action="store_true",
                     help="write the generated section of DOCS_DIR/<study>.md and its plots")
    rep.add_argument("--docs-dir", type=Path, default=Path("docs/results"))
    rep.add_argument("--reps", type=int, default=DEFAULT_REPS, help="bootstrap replications")
    rep.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the bootstrap")
    rep.add_argument("--out", type=Path, default=None,
                     help="folder for report.md, report.json and the plots (default: the study's "
                          "store folder with the default --seed and --reps; else not written)")
    rep.set_defaults(func=_cmd_report)
