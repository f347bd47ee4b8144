"""Client data: which trajectories of the pool each client holds.

``tasks``: whole tasks per client (strong task heterogeneity), explicit lists or task i on
client i % clients. ``dirichlet``: each task's trajectories are split over the clients in
proportions drawn from Dirichlet(beta), the usual label-skew split (small beta: each client
sees few tasks).
"""

from __future__ import annotations

import numpy as np

from orl.datasets.store import TrajectoryStore


def task_partition(store: TrajectoryStore, clients: int,
                   client_tasks: list[list[str]] | None = None) -> list[np.ndarray]:
    """Episode indices of each client: the episodes of its tasks."""
    names = list(store.task_names)
    if client_tasks:
        unknown = sorted({t for tasks in client_tasks for t in tasks} - set(names))
        if unknown:
            raise ValueError(f"federated.client_tasks names tasks the data does not hold: {unknown} "
                             f"(the data has {names})")
        tasks_of = [[names.index(t) for t in tasks] for tasks in client_tasks]
    else:
        if clients > len(names):
            raise ValueError(f"partition 'tasks' gives each of the {clients} clients whole tasks, but "
                             f"the data has only {len(names)}: lower federated.clients or use "
                             "federated.partition=dirichlet")
        tasks_of = [list(range(c, len(names), clients)) for c in range(clients)]
    parts = [np.flatnonzero(np.isin(store.episode_task, tasks)) for tasks in tasks_of]
    empty = [c for c, part in enumerate(parts) if part.size == 0]
    if empty:
        raise ValueError(f"clients {empty} get no trajectories: give each client at least one task")
    return parts


def dirichlet_partition(store: TrajectoryStore, clients: int, beta: float,
                        rng: np.random.Generator, max_tries: int = 100) -> list[np.ndarray]:
    """Episode indices of each client; every task split by Dirichlet(beta) proportions.

    Draws again until every client holds at least one trajectory.
    """
    if store.num_episodes < clients:
        raise ValueError(f"{store.num_episodes} trajectories cannot be split over {clients} clients")
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for task in range(store.num_tasks):
            episodes = rng.permutation(store.task_episodes(task))
            shares = rng.dirichlet(np.full(clients, beta))
            cuts = (np.cumsum(shares)[:-1] * len(episodes)).astype(int)
            for client, piece in enumerate(np.split(episodes, cuts)):
                parts[client].append(piece)
        joined = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in joined) > 0:
            return joined
    raise ValueError(f"no Dirichlet({beta}) split in {max_tries} draws gave every one of the {clients} "
                     "clients a trajectory: raise federated.dirichlet_beta or lower federated.clients")


def partition(store: TrajectoryStore, cfg, seed: int) -> list[np.ndarray]:
    """The client episode indices a ``FederatedConfig`` asks for (deterministic by seed)."""
    if cfg.partition == "tasks":
        return task_partition(store, cfg.clients, cfg.client_tasks)
    return dirichlet_partition(store, cfg.clients, cfg.dirichlet_beta, np.random.default_rng(seed))
