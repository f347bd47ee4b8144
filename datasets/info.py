"""Summaries of local datasets for ``orl data list`` and ``orl data info``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from orl.datasets.loading import load


@dataclass
class DatasetSummary:
    dataset_id: str
    tasks: list[str]
    episodes: int
    steps: int
    obs_dim: int
    act_dim: int
    return_mean: float
    return_std: float
    return_min: float
    return_max: float
    success_rate: float | None  # None where the data records no success flag

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(dataset_id: str, root: Path | None = None) -> DatasetSummary:
    """Episodes, steps, return statistics and success rate of a dataset (id or D4RL file)."""
    store = load(dataset_id, root)
    returns = store.episode_returns
    return DatasetSummary(
        dataset_id=dataset_id,
        tasks=list(store.task_names),
        episodes=store.num_episodes,
        steps=store.num_steps,
        obs_dim=store.obs_dim,
        act_dim=store.act_dim,
        return_mean=float(returns.mean()),
        return_std=float(returns.std()),
        return_min=float(returns.min()),
        return_max=float(returns.max()),
        success_rate=(
            None if store.episode_success is None else float(np.mean(store.episode_success))
        ),
    )
