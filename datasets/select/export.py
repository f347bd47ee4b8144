"""Write a selection of episodes as a new Minari dataset, atomically.

The dataset is built in a staging folder and moved into place with one rename, so it appears
only when complete. Its metadata records the selection (``orl_selection``: method, parameters,
source ids, the source episode of every selected episode) and the task of every episode
(``orl_tasks``), which the loader uses to rebuild a multi-task store.

A store keeps no observation after an episode's last action, so the exported final
observation repeats the last stored one (``orl_selection.final_observation`` says so).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from orl.datasets.registry import DatasetExistsError, dataset_dir, datasets_root
from orl.datasets.store import TrajectoryStore
from orl.datasets.writer import write_dataset


def _episodes(store: TrajectoryStore) -> Iterator[dict[str, np.ndarray]]:
    """The store's episodes as :func:`write_dataset` takes them."""
    for e, (lo, hi) in enumerate(zip(store.episode_starts[:-1], store.episode_starts[1:])):
        success = np.zeros(hi - lo + 1, dtype=bool)
        if store.episode_success is not None:
            success[-1] = store.episode_success[e]
        yield {
            "observations": np.concatenate([store.observations[lo:hi], store.observations[hi - 1:hi]]),
            "actions": store.actions[lo:hi], "rewards": store.rewards[lo:hi].astype(np.float64),
            "terminations": store.terminals[lo:hi], "truncations": store.timeouts[lo:hi],
            "success": success,
        }


def export_selection(store: TrajectoryStore, episodes: np.ndarray, dataset_id: str,
                     selection: dict[str, Any], root: Path | None = None) -> Path:
    """Write ``store``'s ``episodes`` as the Minari dataset ``dataset_id``; returns its folder.

    ``selection`` (JSON-like: method, budget, seed, ...) goes into the metadata with the source
    ids. An existing ``dataset_id`` raises :class:`DatasetExistsError`.
    """
    from gymnasium.spaces import Box

    from orl.datasets.origin import recorded_bounds

    root = Path(root) if root is not None else datasets_root()
    final = dataset_dir(dataset_id, root)
    if final.exists():
        raise DatasetExistsError(
            f"Dataset {dataset_id!r} already exists in {root}: choose another id (e.g. a higher -vN)."
        )
    episodes = np.asarray(episodes, dtype=np.int64)
    chosen = store.select_episodes(episodes)
    present = np.unique(chosen.episode_task)
    bounds = recorded_bounds(list(store.sources), root)  # unknown: unbounded, not the data's range
    low, high = bounds or ([-np.inf] * chosen.act_dim, [np.inf] * chosen.act_dim)
    metadata = {
        "orl_selection": {
            **selection, "sources": list(store.sources), "source_episodes": episodes.tolist(),
            "pool_episodes": store.num_episodes,
            "final_observation": "repeat of the last stored observation of each episode",
        },
        "orl_tasks": {"task_names": [chosen.task_names[t] for t in present],  # tasks with episodes
                      "episode_task": np.searchsorted(present, chosen.episode_task).tolist()},
    }
    return write_dataset(
        dataset_id, _episodes(chosen), root, metadata,
        observation_space=Box(-np.inf, np.inf, (chosen.obs_dim,), np.float32),
        action_space=Box(np.array(low, np.float32), np.array(high, np.float32), dtype=np.float32),
        algorithm_name=f"orl select ({selection.get('method', 'unknown')})",
        description=(f"{chosen.num_episodes} of {store.num_episodes} episodes of "
                     f"{', '.join(store.sources) or 'a store'} selected by orl "
                     "(see metadata 'orl_selection')."),
    )
