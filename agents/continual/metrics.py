"""Continual-learning metrics of a success matrix.

``R[i][j]`` is the success rate on task ``j`` after training on task ``i`` (T x T; rows of stages
not finished yet are NaN, and so are the entries ``j > i + 1`` of a run that evaluates only the
tasks seen so far and the next, ``continual.matrix_tasks: seen``) and ``b[j]`` the success on
task ``j`` before any training. With the last finished row ``n - 1`` (``n = T`` for a finished
run), as the OCW code defines them:

* performance ``P = mean_j R[n-1][j]`` (over the tasks that row evaluated)
* forgetting ``F = mean_{i<n} (R[i][i] - R[n-1][i])``: after the sequence ``R[n-1][i]`` is the
  success on the episodes that ``R[i][i]`` played (``final_matched``, the first ``eval.episodes``
  of the final evaluation) when the run has it, so F compares one policy's success on one set of
  episodes (goal variations) before and after the later stages
* forward transfer ``FWT = mean_{i<n-1} (R[i][i+1] - b[i+1])``

A finished run with an evaluation after the sequence (``continual.final_episodes``, more
episodes than a stage's) has that evaluation as its last row (:func:`sequence_matrix`): P is then
the run's final success, and ``R[T-1]`` one number per task, not two.

Continual World's forward transfer compares the area under each task's success curve during
its own stage with that of a single-task reference run of the task: ``FT_i = (AUC_i - AUC_i^ref)
/ (1 - AUC_i^ref)`` (``AUC_i - 1`` when the reference is always successful), ``FT = mean_i FT_i``.
A curve (:class:`Curve`) holds the success at steps ``0 .. train.steps`` into the stage's training
(``orl.agents.continual.report.own_stage_curve``: the stage's start, then every
``train.eval_every`` steps and the last step); ``AUC`` is its trapezoid area divided by the
stage's length, so a success of 1 throughout has ``AUC = 1``. Both curves must be sampled at the
same steps: ``train.eval_every <= train.steps / 5`` gives Continual World's 5 points or more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, TypedDict

import numpy as np


class Curve(TypedDict):
    """Success on a task at ``steps`` (ascending, the first 0) into its stage's training."""

    steps: list[int]
    success: list[float]


@dataclass(frozen=True)
class ContinualMetrics:
    """P, F and FWT of a (possibly unfinished) run; ``stages_done`` of ``num_tasks`` rows."""

    performance: float
    forgetting: float
    forward_transfer: float | None  # None with fewer than two finished stages
    stages_done: int
    num_tasks: int
    cw_forward_transfer: float | None = None  # with single-task reference curves

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def finished_rows(matrix: np.ndarray) -> int:
    """Number of leading rows ``i`` of ``matrix`` whose tasks ``0 .. i`` have a success (stages
    finished)."""
    done = np.array([not np.isnan(row[: i + 1]).any() for i, row in enumerate(matrix)])
    return int(np.argmin(done)) if not done.all() else len(matrix)


def sequence_matrix(matrix: np.ndarray | Sequence, final: Sequence[float] | None) -> np.ndarray:
    """Success matrix ``R`` whose last row is ``final``, the evaluation of every task after the
    sequence (``continual.final_episodes``), when the run has one and finished every stage
    before the last (the run evaluates ``final`` after the last, whose own row then holds only
    the last task's curve point); ``matrix`` (None -> NaN) as it is otherwise."""
    out = np.array(matrix, dtype=float)
    if final is not None and finished_rows(out) >= len(out) - 1:
        if len(final) != len(out):
            raise ValueError(f"final evaluation has {len(final)} tasks, the success matrix {len(out)}")
        out[-1] = np.asarray(final, dtype=float)
    return out


def performance(matrix: np.ndarray) -> float:
    n = finished_rows(matrix)
    return float(np.nanmean(matrix[n - 1]))


def forgetting(matrix: np.ndarray, matched: Sequence[float] | None = None) -> float:
    """F of the finished rows; ``matched``: the success of every task after the sequence on the
    episodes of the matrix's rows (used once every stage is finished; the last task's own
    stage ends the sequence, so it forgets nothing either way)."""
    n = finished_rows(matrix)
    after = matrix[n - 1, :n].copy()
    if matched is not None and n == len(matrix):
        after[: n - 1] = np.asarray(matched, dtype=float)[: n - 1]
    return float(np.mean(np.diag(matrix)[:n] - after))


def forward_transfer(matrix: np.ndarray, before: np.ndarray) -> float | None:
    n = finished_rows(matrix)
    if n < 2:
        return None
    return float(np.mean([matrix[i, i + 1] - before[i + 1] for i in range(n - 1)]))


def area_under_curve(curve: Curve) -> float:
    """Trapezoid area under ``curve`` over its steps, divided by their span (in [0, 1])."""
    steps, success = np.asarray(curve["steps"], dtype=float), np.asarray(curve["success"], float)
    if len(steps) != len(success) or len(steps) < 2 or steps[0] != 0 or np.any(np.diff(steps) <= 0):
        raise ValueError(f"a success curve needs >= 2 points at ascending steps from 0, got {curve}")
    return float(np.sum(np.diff(steps) * (success[1:] + success[:-1]) / 2) / steps[-1])


def task_transfer(curve: Curve, reference: Curve) -> float:
    """``FT_i`` of one task from its curve and its reference's, sampled at the same steps."""
    if list(curve["steps"]) != list(reference["steps"]):
        raise ValueError(f"evaluated at steps {list(curve['steps'])} of its stage but its reference "
                         f"at {list(reference['steps'])}: run the reference with the same "
                         "train.steps and train.eval_every")
    auc, ref = area_under_curve(curve), area_under_curve(reference)
    return auc - 1.0 if ref >= 1.0 else (auc - ref) / (1.0 - ref)


def cw_forward_transfer(curves: Sequence[Curve], references: Sequence[Curve],
                        names: Sequence[str] = ()) -> float:
    """Continual World's forward transfer ``mean_i FT_i`` of tasks ``names`` (for the errors)
    from each task's curve during its own stage and its single-task reference curve."""
    if len(curves) != len(references) or not curves:
        raise ValueError(f"{len(curves)} task curves but {len(references)} reference curves")
    values = []
    for i, (curve, reference) in enumerate(zip(curves, references)):
        try:
            values.append(task_transfer(curve, reference))
        except ValueError as err:
            raise ValueError(f"task {names[i] if names else i}: {err}") from None
    return float(np.mean(values))


def summarize(matrix: np.ndarray | Sequence, before: np.ndarray | Sequence,
              final_matched: Sequence[float] | None = None) -> ContinualMetrics:
    """P, F, FWT of success matrix ``matrix`` (T x T) and pre-training successes ``before``;
    ``final_matched``: F's success after the sequence on the rows' episodes (see ``forgetting``)."""
    matrix, before = np.asarray(matrix, dtype=float), np.asarray(before, dtype=float)
    t = len(before)
    if matrix.shape != (t, t):
        raise ValueError(f"success matrix must be {t} x {t} (one row per stage), got {matrix.shape}")
    n = finished_rows(matrix)
    if n == 0:
        raise ValueError("no finished stage yet: the success matrix has no complete row")
    return ContinualMetrics(performance(matrix), forgetting(matrix, final_matched),
                            forward_transfer(matrix, before), n, t)


def record_metrics(record: Mapping[str, Any],
                   reference_curves: Mapping[str, Curve] | None = None) -> dict[str, Any]:
    """P, F, FWT (success-matrix definitions) of a continual run's ``record`` (what
    ``continual_record`` returns: ``stages``, ``envs``, ``before``, ``matrix`` with None/NaN rows
    for unfinished stages, ``final``, ``final_matched`` (absent from records of runs made before
    it existed: their F compares the rows' episodes with all of the final evaluation's),
    ``curves`` of the finished ones, ``notes`` by stage) and, given
    single-task reference curves by env, Continual World's forward transfer of its finished
    stages. From the notes of the finished stages: ``added_parameters``, the mean over the tasks
    after the first of the parameters each added, and CompoFormer's ``composed_tasks`` (tasks
    that reused an earlier policy)."""
    metrics = summarize(sequence_matrix(record["matrix"], record.get("final")), record["before"],
                        record.get("final_matched"))
    notes = [(record.get("notes") or {}).get(str(i), {}) for i in range(1, metrics.stages_done)]
    counts: dict[str, float] = {}
    if notes and all("added_parameters" in note for note in notes):
        counts["added_parameters"] = float(np.mean([note["added_parameters"] for note in notes]))
    decisions = [note["decision"] for note in notes if "decision" in note]
    if decisions:
        counts["composed_tasks"] = decisions.count("compose")
    if reference_curves is not None:
        n = metrics.stages_done
        envs = record["envs"][:n]
        missing = sorted({env for env in envs if env not in reference_curves})
        if missing:
            raise ValueError(f"no single-task reference curve for {missing}: give a reference "
                             "run (continual.reference=<stage>) of each")
        transfer = cw_forward_transfer(record["curves"][:n], [reference_curves[e] for e in envs],
                                       record["stages"][:n])
        metrics = replace(metrics, cw_forward_transfer=transfer)
    return metrics.to_dict() | counts
