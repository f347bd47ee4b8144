"""How far a study is: each run's state (recorded, running, partial, ...), the share of its steps
done, the minutes left, and the progress bar of ``orl study run``. ``orl study status`` and the
bar's ETA read the same estimate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orl.study.places import Places, is_finished, is_running
from orl.study.spec import RunSpec, Study, expected_minutes, load_study
from orl.study.store import ResultsStore, split_records


def run_states(study: Study, places: Places) -> list[dict[str, Any]]:
    """Per run: recorded / running / partial (with its last step, and a continual run's stage) /
    finished (not yet recorded) / missing."""
    from orl.train.checkpoint import latest_checkpoint

    current, _ = split_records(ResultsStore(places.results).records(), study.runs)
    rows = []
    for run in study.runs:
        run_dir = places.run_dir(run)
        row = {"key": run.key, "state": "missing", "step": None}
        if run.key in current:
            row |= {"state": "recorded", "step": current[run.key].get("steps"),
                    "wall_s": current[run.key].get("wall_s")}
        elif is_running(run_dir) or run_dir.is_dir():
            latest = latest_checkpoint(run_dir) if (run_dir / "checkpoints").is_dir() else None
            state = ("running" if is_running(run_dir) else
                     "finished, not recorded" if is_finished(run_dir) else "partial")
            row |= {"state": state, "step": None if latest is None else
                    json.loads((latest / "state.json").read_text()).get("step")}
            row |= _continual_progress(run_dir)
        rows.append(row)
    return rows


def _continual_progress(run_dir: Path) -> dict[str, Any]:
    """A continual run's steps over its stages and the stage it is in (its top level has no
    checkpoints); nothing for other runs."""
    from orl.agents.continual.runner import STATE_FILE

    path = run_dir / STATE_FILE
    if not path.is_file():
        return {}
    progress = json.loads(path.read_text())
    total = len(progress["stages"])
    return {"step": progress["steps_done"], "stages": total,
            "stage": f"stage {min(progress['stage'] + 1, total)}/{total}"}


def share_done(run: RunSpec, row: dict[str, Any]) -> float:
    """The share of a run's training steps already done: its last checkpoint's step (a continual
    run: the steps of its finished stages) over its planned steps (``train.steps`` per stage)."""
    if row["state"] == "recorded":
        return 1.0
    if not row.get("step"):
        return 0.0
    planned = run.config["train"]["steps"] * row.get("stages", 1)
    return min(row["step"] / planned, 1.0)


def inherited_minutes(study: Study, places: Places) -> dict[str, list[float]]:
    """Variant -> measured minutes of each recorded run of the study ``study`` extends (its store
    beside this study's); empty for a study that extends none."""
    if study.parent is None:
        return {}
    parent = load_study(study.parent)
    current, _ = split_records(ResultsStore(places.results.parent / parent.name).records(), parent.runs)
    out: dict[str, list[float]] = {}
    for run in parent.runs:
        wall = current.get(run.key, {}).get("wall_s")
        if wall:
            out.setdefault(run.variant, []).append(wall / 60)
    return out


def minutes_left(study: Study, records: dict[str, dict[str, Any]], inherited: dict[str, list[float]],
                 keys: set[str], shares: dict[str, float]) -> float | None:
    """Run minutes (one run's wall time each, not core-minutes) the runs ``keys`` have left: each
    variant's measured minutes per run (``records``, else ``inherited``: the study it extends'
    ``inherited_minutes``), else the
    study's budget, less the share of its steps a run has done (``shares``); None when some run
    has no time to go by."""
    minutes = expected_minutes(study, records, inherited)
    if any(minutes[key] is None for key in keys):
        return None
    return sum(minutes[key] * (1 - shares.get(key, 0.0)) for key in keys)


class Progress:
    """Runs done/total and an ETA: the minutes the runs left have to go (``minutes_left``, partial
    runs by the steps they have done) over the runs that go at once."""

    def __init__(self, study: Study, places: Places, todo: list[RunSpec], workers: int):
        from tqdm import tqdm

        self.study = study
        rows = {row["key"]: row for row in run_states(study, places)}  # one read of the store
        self.records = {key: row for key, row in rows.items() if row["state"] == "recorded"}
        self.shares = {run.key: share_done(run, rows[run.key]) for run in todo}
        self.inherited = inherited_minutes(study, places)
        self.workers = workers
        # one ETA, the study's own: tqdm's (runs done per second so far) is wrong for runs of
        # unequal lengths, and for a resumed study
        self.bar = tqdm(total=len(todo), desc=f"study {study.name}", unit="run", dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        self.left = {run.key for run in todo}
        self.show()

    def eta_minutes(self) -> float | None:
        """Wall minutes until every run left is done, None while some run has no time to go by."""
        minutes = minutes_left(self.study, self.records, self.inherited, self.left, self.shares)
        return None if minutes is None else minutes / self.workers

    def done(self, record: dict[str, Any] | None, key: str) -> None:
        if record is not None:
            self.records[key] = record
        self.left.discard(key)
        self.bar.update(1)
        self.show(key)

    def show(self, last: str | None = None) -> None:
        eta = self.eta_minutes()
        parts = ([] if last is None else [f"last {last}"]) + ([] if eta is None else [f"ETA {eta:.0f} min"])
        self.bar.set_postfix_str(", ".join(parts))

    def close(self) -> None:
        self.bar.close()
