"""One interface to every trajectory selector: ``select(store, budget, method, ...) -> indices``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from orl.datasets.select.datamask import DataMaskConfig, datamask_select
from orl.datasets.select.disf import disf_select
from orl.datasets.select.features import dt_features, raw_features
from orl.datasets.select.ntk import NTKConfig, ntk_select
from orl.datasets.store import TrajectoryStore

METHODS = ("disf", "datamask", "ntk", "random", "top-return")
FEATURES = ("auto", "raw", "dt")


def budget_count(budget: float, pool: int) -> int:
    """Items to select: a fraction in (0, 1] of the pool (a float), or a count (an int >= 1)."""
    if isinstance(budget, (bool, np.bool_)) or not isinstance(budget, (int, float, np.number)):
        raise ValueError(f"budget must be a fraction in (0, 1] or a count, got {budget!r}")
    if isinstance(budget, (int, np.integer)):
        count = int(budget)
        if count < 1:
            raise ValueError(f"budget must be a fraction in (0, 1] or a count >= 1, got {budget}")
    else:
        if not 0.0 < budget <= 1.0:
            raise ValueError(
                f"budget must be a fraction in (0, 1] of the pool (or an integer count), got {budget}"
            )
        count = max(1, round(budget * pool))
    if count > pool:
        raise ValueError(f"budget of {count} items is larger than the pool ({pool} episodes)")
    return count


def normalized_returns(store: TrajectoryStore) -> np.ndarray:
    """(E,) episode returns min-max scaled to [0, 1] within each task (0.5 where a task's
    returns are all equal)."""
    returns = store.episode_returns
    out = np.full(store.num_episodes, 0.5)
    for t in range(store.num_tasks):
        rows = store.task_episodes(t)
        if len(rows):
            lo, hi = returns[rows].min(), returns[rows].max()
            if hi > lo:
                out[rows] = (returns[rows] - lo) / (hi - lo)
    return out


def dominance_score(features: np.ndarray, top: int = 5) -> float:
    """Share of the total variance carried by the ``top`` largest eigenvalues of the feature
    correlation matrix: ``sum(top eigenvalues) / trace`` in (0, 1].

    1 means every dimension moves together (dimensional collapse); ``top / d`` is the floor,
    reached when the dimensions are uncorrelated. Constant dimensions are left out.
    """
    x = np.asarray(features, dtype=np.float64)
    x = x[:, x.std(0) > 1e-12]
    if len(x) < 2 or x.shape[1] == 0:
        return 1.0
    z = (x - x.mean(0)) / x.std(0)
    eig = np.linalg.eigvalsh(z.T @ z / len(z))[::-1]
    return float(eig[:top].sum() / eig.sum())


def episode_features(store: TrajectoryStore, kind: str = "auto", agent: Any = None) -> np.ndarray:
    """Per-episode features: ``dt`` (the agent's encoder), ``raw`` statistics, or ``auto``."""
    if kind not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {kind!r}")
    if kind == "dt" and agent is None:
        raise ValueError("features='dt' needs a trained DT agent (a model checkpoint)")
    if kind == "raw" or agent is None:
        return raw_features(store)
    return dt_features(agent, store)


def select(
    store: TrajectoryStore,
    budget: float,
    method: str = "disf",
    *,
    seed: int = 0,
    features: np.ndarray | None = None,
    agent: Any = None,
    target: TrajectoryStore | None = None,
    block_size: int = 1024,
    quality_filter: float = 0.0,
    datamask: DataMaskConfig | None = None,
    ntk: NTKConfig | None = None,
    device: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Sorted indices of the episodes of ``store`` chosen by ``method``.

    - ``random``: uniform without replacement; ``top-return``: highest per-task normalised return.
    - ``disf``: DiSF on ``features`` (default: ``episode_features(store, agent=agent)``) in blocks
      of ``block_size``; ``quality_filter`` first drops that bottom fraction by return.
    - ``datamask``: DATAMASK (``datamask`` config) on the same features and normalised returns.
    - ``ntk``: NTK-Selector against ``target`` (a store of target-task episodes) through
      ``agent`` (a DT, ideally trained on ``target``).

    ``budget`` is a fraction in (0, 1] of the episodes or an integer count. Tensors live on
    ``device`` (default: CUDA when available). ``progress(done, total)`` reports work units.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    count = budget_count(budget, store.num_episodes)
    quality = normalized_returns(store)
    if method == "random":
        return np.sort(np.random.default_rng(seed).choice(store.num_episodes, count, replace=False))
    if method == "top-return":
        return np.sort(np.argsort(-quality, kind="stable")[:count])
    if method == "ntk":
        if agent is None or target is None:
            raise ValueError("method 'ntk' needs a DT agent (--model) and a target store (--target)")
        return ntk_select(agent, store, target, count, ntk, seed, progress)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    feats = episode_features(store, agent=agent) if features is None else np.asarray(features)
    if feats.ndim != 2 or feats.shape[0] != store.num_episodes:
        raise ValueError(f"features must be (episodes={store.num_episodes}, d); got {feats.shape}")
    dtype = torch.float64 if method == "disf" else torch.float32
    x = torch.as_tensor(feats, dtype=dtype, device=device)
    if method == "datamask":
        q = torch.as_tensor(quality, dtype=dtype, device=device)
        return datamask_select(x, q, count, datamask, seed, progress)[0]
    if not 0.0 <= quality_filter < 1.0:
        raise ValueError(f"quality_filter must be in [0, 1), got {quality_filter}")
    keep = np.sort(np.argsort(-quality, kind="stable")[
        : max(count, int(np.ceil((1.0 - quality_filter) * store.num_episodes)))])
    chosen = disf_select(x[torch.as_tensor(keep, device=device)], count, block_size, seed,
                         progress=progress)
    return np.sort(keep[chosen])
