"""Evaluation results: per-episode data of every task, per-task statistics and their outputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from orl.envs.mujoco import normalized_score, reference_for

if TYPE_CHECKING:
    from rich.table import Table

    from orl.logging import RunLogger

#: Columns of :meth:`EvalResult.rows`, :meth:`EvalResult.to_dataframe` and the logged table.
COLUMNS = ("task", "episodes", "success_rate", "return_mean", "return_std", "length_mean",
           "normalized_score")


@dataclass(frozen=True)
class TaskResult:
    """The episodes of one task, in episode order."""

    task: str
    env_id: str
    returns: np.ndarray  # (episodes,) float64
    lengths: np.ndarray  # (episodes,) int64
    successes: np.ndarray  # (episodes,) 1.0 / 0.0, NaN where the env reports no success

    @property
    def episodes(self) -> int:
        return len(self.returns)

    @property
    def success_rate(self) -> float | None:
        """Fraction of episodes with ``info["success"]`` true at some step; None without one."""
        reported = self.successes[~np.isnan(self.successes)]
        return float(reported.mean()) if len(reported) else None

    @property
    def return_mean(self) -> float:
        return float(self.returns.mean())

    @property
    def return_std(self) -> float:
        return float(self.returns.std())

    @property
    def length_mean(self) -> float:
        return float(self.lengths.mean())

    @property
    def normalized_score(self) -> float | None:
        """D4RL normalized score of the mean return; None for envs without D4RL references."""
        if reference_for(self.env_id) is None:
            return None
        return float(normalized_score(self.env_id, self.return_mean))

    def row(self) -> dict[str, Any]:
        """The statistics named in :data:`COLUMNS`."""
        return {name: getattr(self, name) for name in COLUMNS}


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


@dataclass(frozen=True)
class EvalResult:
    """What :func:`orl.eval.evaluate` measured: one :class:`TaskResult` per task."""

    tasks: list[TaskResult]
    env_steps: int = 0  # env steps of all counted episodes
    seconds: float = 0.0  # wall time of the episodes (env construction excluded)

    @property
    def success_mean(self) -> float | None:
        """Mean success rate over the tasks that report success (None if none does)."""
        return _mean([t.success_rate for t in self.tasks])

    @property
    def return_mean(self) -> float:
        return float(np.mean([t.return_mean for t in self.tasks]))

    @property
    def normalized_score_mean(self) -> float | None:
        """Mean normalized score over the tasks that have one (None if none has)."""
        return _mean([t.normalized_score for t in self.tasks])

    def rows(self) -> list[dict[str, Any]]:
        """One dict of :data:`COLUMNS` per task."""
        return [t.row() for t in self.tasks]

    def to_dict(self) -> dict[str, float]:
        """Flat scalars: ``success/<task>``, ``return/<task>``, ``length/<task>``,
        ``normalized_score/<task>``, ``success_mean``, ``return_mean``,
        ``normalized_score_mean``; undefined values are left out."""
        out: dict[str, float | None] = {}
        for t in self.tasks:
            out |= {f"success/{t.task}": t.success_rate, f"return/{t.task}": t.return_mean,
                    f"length/{t.task}": t.length_mean,
                    f"normalized_score/{t.task}": t.normalized_score}
        out |= {"success_mean": self.success_mean, "return_mean": self.return_mean,
                "normalized_score_mean": self.normalized_score_mean}
        return {key: value for key, value in out.items() if value is not None}

    def to_json(self) -> dict[str, Any]:
        """:meth:`to_dict` plus ``episodes``: for every task the lists ``success`` (None where
        the env reports none), ``return`` and ``length``, in episode order."""
        episodes = {t.task: {"success": [None if np.isnan(s) else bool(s) for s in t.successes],
                             "return": t.returns.tolist(), "length": t.lengths.tolist()}
                    for t in self.tasks}
        return self.to_dict() | {"episodes": episodes}

    def to_dataframe(self) -> Any:
        """A pandas DataFrame with one row per task (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as err:
            raise ImportError("EvalResult.to_dataframe needs pandas: pip install pandas") from err
        return pd.DataFrame(self.rows(), columns=list(COLUMNS))

    def table(self, title: str = "Evaluation") -> Table:
        """A rich table: one row per task and a row of means."""
        from rich.table import Table

        table = Table(title=title)
        for name in ("Task", "Episodes", "Success", "Return", "Length", "Norm. score"):
            table.add_column(name, justify="left" if name == "Task" else "right")
        for t in self.tasks:
            table.add_row(t.task, str(t.episodes), _percent(t.success_rate),
                          f"{t.return_mean:.1f} ± {t.return_std:.1f}", f"{t.length_mean:.1f}",
                          _number(t.normalized_score))
        table.add_section()
        table.add_row("mean", str(sum(t.episodes for t in self.tasks)),
                      _percent(self.success_mean), f"{self.return_mean:.1f}", "",
                      _number(self.normalized_score_mean))
        return table

    def print(self) -> None:
        """Print :meth:`table` to the terminal."""
        from rich.console import Console

        Console().print(self.table())

    def log(self, logger: RunLogger, step: int, prefix: str = "eval") -> None:
        """Log the :meth:`to_dict` scalars under ``prefix/``, the per-task table
        (``prefix/tasks``) and a per-task success bar chart (``prefix/success``, which also
        logs the ``prefix/success/<task>`` scalars)."""
        scalars = {f"{prefix}/{key}": value for key, value in self.to_dict().items()
                   if not key.startswith("success/")}
        logger.log(scalars, step)
        rows = [[row[name] for name in COLUMNS] for row in self.rows()]
        logger.log_table(f"{prefix}/tasks", list(COLUMNS), rows, step)
        rated = [t for t in self.tasks if t.success_rate is not None]
        if rated:
            logger.log_bar(f"{prefix}/success", [t.task for t in rated],
                           [t.success_rate for t in rated], step)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
