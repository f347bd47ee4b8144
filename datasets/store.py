"""In-memory trajectory storage: contiguous float32 arrays plus episode boundaries."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class TrajectoryStore:
    """Episodes of one or several tasks, concatenated step-wise.

    Step arrays have one row per environment step (``N`` rows in all); episode ``e`` occupies
    rows ``episode_starts[e]:episode_starts[e + 1]``. ``episode_task[e]`` indexes ``task_names``.
    """

    observations: np.ndarray  # (N, obs_dim) float32
    actions: np.ndarray  # (N, act_dim) float32
    rewards: np.ndarray  # (N,) float32
    terminals: np.ndarray  # (N,) bool: the episode ended by termination at this step
    timeouts: np.ndarray  # (N,) bool: the episode was truncated at this step
    episode_starts: np.ndarray  # (E + 1,) int64 offsets, episode_starts[0] == 0, [-1] == N
    episode_task: np.ndarray  # (E,) int64 index into task_names
    task_names: list[str]
    episode_success: np.ndarray | None = None  # (E,) bool, where the data records success
    sources: list[str] = field(default_factory=list)  # dataset ids / files this came from

    def __post_init__(self) -> None:
        self.observations = np.ascontiguousarray(self.observations, dtype=np.float32)
        self.actions = np.ascontiguousarray(self.actions, dtype=np.float32)
        self.rewards = np.ascontiguousarray(self.rewards, dtype=np.float32).reshape(-1)
        self.terminals = np.ascontiguousarray(self.terminals, dtype=bool).reshape(-1)
        self.timeouts = np.ascontiguousarray(self.timeouts, dtype=bool).reshape(-1)
        self.episode_starts = np.ascontiguousarray(self.episode_starts, dtype=np.int64)
        self.episode_task = np.ascontiguousarray(self.episode_task, dtype=np.int64)
        if self.episode_success is not None:
            self.episode_success = np.ascontiguousarray(self.episode_success, dtype=bool)
        self.validate()

    # ----------------------------------------------------------------- checks
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistency between the arrays."""
        n = self.observations.shape[0]
        if self.observations.ndim != 2 or self.actions.ndim != 2:
            raise ValueError(
                "observations and actions must be 2-D (steps, dim); got shapes "
                f"{self.observations.shape} and {self.actions.shape}"
            )
        for name in ("actions", "rewards", "terminals", "timeouts"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(
                    f"{name} has {getattr(self, name).shape[0]} rows but observations has {n}"
                )
        starts = self.episode_starts
        if starts.ndim != 1 or starts.size < 1 or starts[0] != 0 or starts[-1] != n:
            raise ValueError(f"episode_starts must run from 0 to {n} (the number of steps)")
        if np.any(np.diff(starts) <= 0):
            raise ValueError("episode_starts must be strictly increasing: empty episodes found")
        if self.episode_task.shape != (self.num_episodes,):
            raise ValueError(
                f"episode_task has shape {self.episode_task.shape}, expected ({self.num_episodes},)"
            )
        if self.num_episodes and (
            self.episode_task.min() < 0 or self.episode_task.max() >= len(self.task_names)
        ):
            raise ValueError("episode_task holds an index outside task_names")
        if self.episode_success is not None and self.episode_success.shape != (self.num_episodes,):
            raise ValueError("episode_success must hold one flag per episode")

    # ------------------------------------------------------------- properties
    @property
    def num_steps(self) -> int:
        return int(self.observations.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.episode_starts.shape[0] - 1)

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def episode_lengths(self) -> np.ndarray:
        """(E,) int64 number of steps of each episode."""
        return np.diff(self.episode_starts)

    @property
    def episode_returns(self) -> np.ndarray:
        """(E,) float64 undiscounted return of each episode."""
        cumulative = np.concatenate([[0.0], np.cumsum(self.rewards, dtype=np.float64)])
        return cumulative[self.episode_starts[1:]] - cumulative[self.episode_starts[:-1]]

    @property
    def step_episode(self) -> np.ndarray:
        """(N,) int64 episode index of every step."""
        return np.repeat(np.arange(self.num_episodes), self.episode_lengths)

    @property
    def step_task(self) -> np.ndarray:
        """(N,) int64 task index of every step."""
        return np.repeat(self.episode_task, self.episode_lengths)

    def task_episodes(self, task: int) -> np.ndarray:
        """Indices of the episodes of task ``task``."""
        return np.flatnonzero(self.episode_task == task)

    def state_stats(self, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
        """Per-task observation mean and std, each (num_tasks, obs_dim) float32.

        Tasks without episodes get mean 0 and std 1.
        """
        mean = np.zeros((self.num_tasks, self.obs_dim), dtype=np.float32)
        std = np.ones((self.num_tasks, self.obs_dim), dtype=np.float32)
        step_task = self.step_task
        for t in range(self.num_tasks):
            rows = self.observations[step_task == t]
            if len(rows):
                mean[t] = rows.mean(axis=0, dtype=np.float64)
                std[t] = rows.std(axis=0, dtype=np.float64) + eps
        return mean, std

    # ------------------------------------------------------------ combination
    def select_episodes(self, episodes: np.ndarray) -> TrajectoryStore:
        """A new store holding the given episodes (in the given order), same task list."""
        episodes = np.asarray(episodes, dtype=np.int64)
        if episodes.ndim != 1 or episodes.size == 0:
            raise ValueError("select_episodes needs a non-empty 1-D array of episode indices")
        if episodes.min() < 0 or episodes.max() >= self.num_episodes:
            raise ValueError(f"episode index out of range [0, {self.num_episodes})")
        lengths = self.episode_lengths[episodes]
        offsets = np.repeat(self.episode_starts[episodes] - np.cumsum(lengths) + lengths, lengths)
        rows = np.arange(lengths.sum()) + offsets
        return TrajectoryStore(
            observations=self.observations[rows],
            actions=self.actions[rows],
            rewards=self.rewards[rows],
            terminals=self.terminals[rows],
            timeouts=self.timeouts[rows],
            episode_starts=np.concatenate([[0], np.cumsum(lengths)]),
            episode_task=self.episode_task[episodes],
            task_names=list(self.task_names),
            episode_success=None if self.episode_success is None else self.episode_success[episodes],
            sources=list(self.sources),
        )

    @staticmethod
    def concatenate(stores: list[TrajectoryStore]) -> TrajectoryStore:
        """Join stores; tasks with the same name share one index in the result."""
        if not stores:
            raise ValueError("concatenate needs at least one store")
        dims = {(s.obs_dim, s.act_dim) for s in stores}
        if len(dims) > 1:
            raise ValueError(f"cannot concatenate stores with different (obs, act) dims: {dims}")
        names: list[str] = []
        for s in stores:
            names += [n for n in s.task_names if n not in names]
        index = {n: i for i, n in enumerate(names)}
        lengths = np.concatenate([s.episode_lengths for s in stores])
        has_success = all(s.episode_success is not None for s in stores)
        return TrajectoryStore(
            observations=np.concatenate([s.observations for s in stores]),
            actions=np.concatenate([s.actions for s in stores]),
            rewards=np.concatenate([s.rewards for s in stores]),
            terminals=np.concatenate([s.terminals for s in stores]),
            timeouts=np.concatenate([s.timeouts for s in stores]),
            episode_starts=np.concatenate([[0], np.cumsum(lengths)]),
            episode_task=np.concatenate(
                [np.array([index[n] for n in s.task_names], dtype=np.int64)[s.episode_task]
                 for s in stores]
            ),
            task_names=names,
            episode_success=(
                np.concatenate([s.episode_success for s in stores]) if has_success else None
            ),
            sources=[src for s in stores for src in s.sources],
        )
