"""Read Minari datasets and D4RL-format HDF5 files into a :class:`TrajectoryStore`.

Minari's per-episode API is walked once per dataset; the resulting arrays are cached in
``<dataset dir>/orl-cache.npz`` and reused while the dataset's files are unchanged.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from orl.datasets.registry import minari_root, require_dataset
from orl.datasets.store import TrajectoryStore
from orl.io import atomic_path

CACHE_NAME = "orl-cache.npz"
CACHE_FORMAT = 1
D4RL_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
_ARRAYS = ("observations", "actions", "rewards", "terminals", "timeouts", "episode_starts")


def _fingerprint(data_dir: Path) -> str:
    """Changes whenever the dataset's files change (size and modification time)."""
    parts = [f"format={CACHE_FORMAT}"]
    for path in sorted(data_dir.iterdir()):
        stat = path.stat()
        parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _task_name(metadata: dict, dataset_id: str) -> str:
    generation = metadata.get("orl_generation")
    if isinstance(generation, dict) and "task" in generation:
        return str(generation["task"])
    spec = metadata.get("env_spec")
    if spec:
        return str(json.loads(spec)["id"]) if isinstance(spec, str) else str(spec["id"])
    return dataset_id


def _read_minari(dataset_id: str, root: Path | None) -> dict[str, np.ndarray | str]:
    """Walk a Minari dataset episode by episode (the slow path, run once per dataset)."""
    import minari

    with minari_root(root):
        dataset = minari.load_dataset(dataset_id)
        metadata = dataset.storage.metadata
        obs, act, rew, term, trunc, lengths, success = [], [], [], [], [], [], []
        for episode in dataset.iterate_episodes():
            if not isinstance(episode.observations, np.ndarray):
                raise ValueError(
                    f"Dataset {dataset_id!r} has structured (dict/tuple) observations; "
                    "orl needs flat Box observations."
                )
            n = len(episode.actions)
            obs.append(episode.observations[:n].reshape(n, -1))
            act.append(episode.actions.reshape(n, -1))
            rew.append(episode.rewards)
            term.append(episode.terminations)
            trunc.append(episode.truncations)
            lengths.append(n)
            flags = episode.infos.get("success") if isinstance(episode.infos, dict) else None
            success.append(bool(np.any(flags)) if flags is not None else None)
    if not lengths:
        raise ValueError(f"Dataset {dataset_id!r} holds no episodes.")
    arrays: dict[str, np.ndarray | str] = {
        "observations": np.concatenate(obs).astype(np.float32),
        "actions": np.concatenate(act).astype(np.float32),
        "rewards": np.concatenate(rew).astype(np.float32),
        "terminals": np.concatenate(term).astype(bool),
        "timeouts": np.concatenate(trunc).astype(bool),
        "episode_starts": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "task_name": _task_name(metadata, dataset_id),
    }
    if all(s is not None for s in success):
        arrays["episode_success"] = np.array(success, dtype=bool)
    tasks = metadata.get("orl_tasks")
    if isinstance(tasks, dict):  # several tasks in one dataset (e.g. an `orl data select` export)
        arrays["task_names"] = np.array(tasks["task_names"], dtype=str)
        arrays["episode_task"] = np.array(tasks["episode_task"], dtype=np.int64)
    return arrays


def load_minari(dataset_id: str, root: Path | None = None, cache: bool = True) -> TrajectoryStore:
    """Load one local Minari dataset (single task) into a store, through the array cache."""
    path = require_dataset(dataset_id, root)
    cache_file = path / CACHE_NAME
    fingerprint = _fingerprint(path / "data")
    arrays = None
    if cache and cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as f:
                if str(f["fingerprint"]) == fingerprint:
                    arrays = {k: f[k] for k in f.files if k != "fingerprint"}
                    arrays["task_name"] = str(arrays["task_name"])
        except (OSError, ValueError, KeyError):
            arrays = None  # unreadable cache: rebuilt below
    if arrays is None:
        arrays = _read_minari(dataset_id, root)
        if cache:
            with atomic_path(cache_file) as tmp, open(tmp, "wb") as f:
                np.savez(f, fingerprint=np.array(fingerprint), **arrays)
    num_episodes = len(arrays["episode_starts"]) - 1
    return TrajectoryStore(
        **{k: arrays[k] for k in _ARRAYS},
        episode_task=arrays.get("episode_task", np.zeros(num_episodes, dtype=np.int64)),
        task_names=[str(n) for n in arrays.get("task_names", [arrays["task_name"]])],
        episode_success=arrays.get("episode_success"),
        sources=[dataset_id],
    )


def load_d4rl(path: str | Path, task_name: str | None = None) -> TrajectoryStore:
    """Load a D4RL-format HDF5 file (observations, actions, rewards, terminals, timeouts).

    Episodes end where ``terminals`` or ``timeouts`` is set; trailing steps after the last end
    form a final (truncated) episode.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"D4RL file {str(path)!r} does not exist.")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in D4RL_KEYS if k not in f]
            if missing:
                raise ValueError(
                    f"D4RL file {str(path)!r} lacks the key(s) {', '.join(missing)}; a D4RL-format "
                    f"file needs {', '.join(D4RL_KEYS)} (found: {', '.join(sorted(f.keys()))})."
                )
            data = {k: f[k][()] for k in D4RL_KEYS}
    except OSError as err:
        raise ValueError(
            f"Cannot read {str(path)!r} as HDF5 (corrupt or truncated file?): {err}"
        ) from err
    n = len(data["observations"])
    bad = {k: len(v) for k, v in data.items() if len(v) != n}
    if n == 0 or bad:
        raise ValueError(
            f"D4RL file {str(path)!r}: arrays must be non-empty and equally long "
            f"(observations has {n} rows; mismatched: {bad})."
        )
    ends = np.flatnonzero(data["terminals"].astype(bool) | data["timeouts"].astype(bool)) + 1
    if len(ends) == 0 or ends[-1] != n:
        ends = np.append(ends, n)
    return TrajectoryStore(
        observations=data["observations"].reshape(n, -1),
        actions=data["actions"].reshape(n, -1),
        rewards=data["rewards"],
        terminals=data["terminals"],
        timeouts=data["timeouts"],
        episode_starts=np.concatenate([[0], ends]),
        episode_task=np.zeros(len(ends), dtype=np.int64),
        task_names=[task_name or path.stem],
        sources=[str(path)],
    )


def load(sources: str | Path | list[str | Path], root: Path | None = None) -> TrajectoryStore:
    """Load Minari ids and/or D4RL ``.hdf5``/``.h5`` files into one (multi-task) store."""
    items = [sources] if isinstance(sources, (str, Path)) else list(sources)
    if not items:
        raise ValueError("load needs at least one dataset id or file")
    stores = [
        load_d4rl(item) if str(item).endswith((".hdf5", ".h5")) else load_minari(str(item), root)
        for item in items
    ]
    return stores[0] if len(stores) == 1 else TrajectoryStore.concatenate(stores)
