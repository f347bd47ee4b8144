"""Continual-learning metrics of a success matrix.

``R[i][j]`` is the success rate on task ``j`` after training on task ``i`` (T x T; rows of stages
not finished yet are NaN) and ``b[j]`` the success on task ``j`` before any training. With the
last finished row ``n - 1`` (``n = T`` for a finished run), as the OCW code defines them:

* performance ``P = mean_j R[n-1][j]``
* forgetting ``F = mean_{i<n} (R[i][i] - R[n-1][i])``
* forward transfer ``FWT = mean_{i<n-1} (R[i][i+1] - b[i+1])``

Continual World's forward transfer compares the area under each task's success curve during
its own stage with that of a single-task reference run: ``FT_i = (AUC_i - AUC_i^ref) /
(1 - AUC_i^ref)`` (``AUC_i - 1`` when the reference is always successful), ``FT = mean_i FT_i``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


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
    """Number of leading rows of ``matrix`` without NaN (stages finished)."""
    done = ~np.isnan(matrix).any(axis=1)
    return int(np.argmin(done)) if not done.all() else len(matrix)


def performance(matrix: np.ndarray) -> float:
    n = finished_rows(matrix)
    return float(np.mean(matrix[n - 1]))


def forgetting(matrix: np.ndarray) -> float:
    n = finished_rows(matrix)
    return float(np.mean(np.diag(matrix)[:n] - matrix[n - 1, :n]))


def forward_transfer(matrix: np.ndarray, before: np.ndarray) -> float | None:
    n = finished_rows(matrix)
    if n < 2:
        return None
    return float(np.mean([matrix[i, i + 1] - before[i + 1] for i in range(n - 1)]))


def cw_forward_transfer(curves: Sequence[Sequence[float]],
                        references: Sequence[Sequence[float]]) -> float:
    """Continual World's normalized forward transfer from each task's success curve during its
    own stage and the single-task reference curve of the same task (AUC = curve mean)."""
    if len(curves) != len(references) or not curves:
        raise ValueError(f"{len(curves)} task curves but {len(references)} reference curves")
    values = []
    for curve, reference in zip(curves, references):
        auc, ref = float(np.mean(curve)), float(np.mean(reference))
        values.append(auc - 1.0 if ref >= 1.0 else (auc - ref) / (1.0 - ref))
    return float(np.mean(values))


def summarize(matrix: np.ndarray, before: np.ndarray) -> ContinualMetrics:
    """P, F, FWT of success matrix ``matrix`` (T x T) and pre-training successes ``before``."""
    matrix, before = np.asarray(matrix, dtype=float), np.asarray(before, dtype=float)
    t = len(before)
    if matrix.shape != (t, t):
        raise ValueError(f"success matrix must be {t} x {t} (one row per stage), got {matrix.shape}")
    n = finished_rows(matrix)
    if n == 0:
        raise ValueError("no finished stage yet: the success matrix has no complete row")
    return ContinualMetrics(performance(matrix), forgetting(matrix),
                            forward_transfer(matrix, before), n, t)
