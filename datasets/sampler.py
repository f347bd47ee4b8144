"""Vectorised segment sampler for Decision Transformer training.

A segment is a window of ``context_len`` consecutive steps of one episode, left-padded when the
episode ends before the window is full (the original DT convention). Returns-to-go and episode
bounds are precomputed per step once; a batch is then one draw of ``B`` start steps, index maths
on (B, K) numpy arrays, and one torch gather per field on the sampler's device: no Python loop
over samples.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from orl.datasets.store import TrajectoryStore

TASK_MODES = ("mixed", "round_robin")
PROMPT_SOURCES = ("ranked", "random", "best")
PROMPT_FIELDS = ("states", "actions", "returns_to_go", "timesteps", "mask")


@dataclass
class SamplerConfig:
    """How segments are cut and batched."""

    context_len: int = 20  # K: steps per segment
    batch_size: int = 64
    rtg_scale: float = 1.0  # returns-to-go are divided by this
    gamma: float = 1.0  # discount of the returns-to-go; 1.0 is DT's undiscounted RTG
    normalize_states: bool = True  # per-task mean/std from store.state_stats()
    task_mode: str = "mixed"  # "mixed": whole store; "round_robin": one task per batch, cycled
    prompt_len: int = 0  # 0: no prompt; > 0: Prompt-DT prompt of that many steps
    prompt_source: str = "ranked"  # "ranked": by return rank and batch row, as the released
    #                                HarmoDT/Prompt-DT code (``prompt_rank``); "random": any
    #                                episode of the sample's task, drawn per sample; "best":
    #                                the task's best (the evaluation prompt) for every sample

    def __post_init__(self) -> None:
        rules = [
            ("context_len", self.context_len > 0, "> 0"),
            ("batch_size", self.batch_size > 0, "> 0"),
            ("rtg_scale", self.rtg_scale > 0, "> 0"),
            ("gamma", 0 < self.gamma <= 1, "in (0, 1]"),
            ("task_mode", self.task_mode in TASK_MODES, f"one of {TASK_MODES}"),
            ("prompt_len", self.prompt_len >= 0, ">= 0"),
            ("prompt_source", self.prompt_source in PROMPT_SOURCES, f"one of {PROMPT_SOURCES}"),
        ]
        for name, ok, expected in rules:
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")


@dataclass
class SegmentBatch:
    """A batch of ``B`` segments of ``K`` steps; padding sits on the left (mask False)."""

    states: torch.Tensor  # (B, K, obs_dim) float32, normalised
    actions: torch.Tensor  # (B, K, act_dim) float32
    rewards: torch.Tensor  # (B, K) float32
    returns_to_go: torch.Tensor  # (B, K) float32, divided by rtg_scale
    timesteps: torch.Tensor  # (B, K) int64 step index within the episode
    mask: torch.Tensor  # (B, K) bool, True for real steps
    task: torch.Tensor  # (B,) int64
    prompt_states: torch.Tensor | None = None  # (B, P, obs_dim)
    prompt_actions: torch.Tensor | None = None  # (B, P, act_dim)
    prompt_returns_to_go: torch.Tensor | None = None  # (B, P)
    prompt_timesteps: torch.Tensor | None = None  # (B, P)
    prompt_mask: torch.Tensor | None = None  # (B, P)
    # the one task of every sample when the sampler drew the batch from a single task (round
    # robin, or a task asked for): known on the host, so no device sync is needed to find it
    task_id: int | None = None
    start: torch.Tensor | None = None  # (B,) int64 store step each segment starts at (its identity)

    def to(self, device: torch.device | str) -> SegmentBatch:
        """A copy with every tensor on ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)

    @property
    def tasks(self) -> int | torch.Tensor:
        """``task_id`` when the batch has a single task known on the host, else ``task`` (B,)."""
        return self.task if self.task_id is None else self.task_id


def returns_to_go(store: TrajectoryStore, gamma: float) -> np.ndarray:
    """(N,) float64 sum of ``gamma**(j - i) * r_j`` over the steps ``j >= i`` of each episode."""
    rewards = store.rewards.astype(np.float64)
    ends, lengths = store.episode_starts[1:], store.episode_lengths
    if gamma == 1.0:
        cumulative = np.concatenate([[0.0], np.cumsum(rewards)])
        return cumulative[np.repeat(ends, lengths)] - cumulative[:-1]
    rtg = rewards  # right for the last step of every episode; walk back from there
    for back in range(2, int(lengths.max()) + 1):  # all episodes at once, one step per pass
        rows = ends[lengths >= back] - back
        rtg[rows] += gamma * rtg[rows + 1]
    return rtg


def prompt_rank(row: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Return rank (0: best) of the prompt episode of batch row ``row`` among a task's ``count``
    episodes, as the released code's ``get_prompt`` picks it (``stochastic_prompt`` off): row
    ``i`` takes ``sorted_inds[-i]`` of the episodes sorted by increasing return, so row 0 takes
    the lowest-return one (a quirk of that code), rows 1..count-1 the best, second best, ...,
    row ``count`` the lowest again, and rows past ``count`` the best."""
    return np.where(row == 0, count - 1, np.where(row > count, 0, row - 1))


def check_prompt_len(store: TrajectoryStore, prompt_len: int) -> None:
    """Raise ``ValueError`` if an episode of ``store`` is shorter than ``prompt_len`` steps
    (its prompt would be mostly padding)."""
    lengths = store.episode_lengths
    if prompt_len <= 0 or not np.any(lengths < prompt_len):
        return
    shortest = int(np.argmin(lengths))
    task = store.task_names[store.episode_task[shortest]]
    raise ValueError(
        f"sampler.prompt_len={prompt_len} is longer than the shortest prompt episode "
        f"({lengths[shortest]} steps: episode {shortest}, task {task!r}; "
        f"{int(np.sum(lengths < prompt_len))} of {len(lengths)} are shorter than the prompt). Set "
        f"sampler.prompt_len <= {lengths[shortest]} or leave the short episodes out of the data."
    )


def sliding_windows(x: torch.Tensor, length: int) -> torch.Tensor:
    """View of ``x`` (contiguous) whose row ``i`` is ``x[i : i + length]``; no copy."""
    shape = (len(x) - length + 1, length, *x.shape[1:])
    return x.as_strided(shape, (x.stride(0), *x.stride()))


class _Steps:
    """One store's per-step data: episode bounds in numpy for the index maths, and the
    step arrays as tensors on the device for the gathers."""

    def __init__(self, store: TrajectoryStore, config: SamplerConfig, device: torch.device,
                 state_stats: tuple[np.ndarray, np.ndarray] | None = None):
        lengths = store.episode_lengths
        self.device = device
        self.episode_first = np.repeat(store.episode_starts[:-1], lengths)
        self.episode_end = np.repeat(store.episode_starts[1:], lengths)
        self.task = store.step_task
        rtg = returns_to_go(store, config.gamma) / config.rtg_scale
        observations = store.observations
        if state_stats is not None:  # normalise once here, not in every batch
            mean, std = state_stats
            observations = ((observations - mean[self.task]) / std[self.task]).astype(np.float32)
        self.observations = self.tensor(observations)
        self.actions = self.tensor(store.actions)
        self.rewards = self.tensor(store.rewards)
        self.returns_to_go = self.tensor(rtg.astype(np.float32))

    def tensor(self, array: np.ndarray) -> torch.Tensor:
        """``array`` on the device: no copy on CPU; on CUDA from pinned memory, asynchronously
        (a pageable copy would wait for the GPU to finish its queued work)."""
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def window(self, first: np.ndarray, length: int) -> dict[str, torch.Tensor]:
        """Steps ``first .. min(first + length, end) - 1`` of each episode, left-padded.

        Returns the ``SegmentBatch`` fields: states, actions, rewards, returns_to_go,
        timesteps, mask and task.
        """
        n_pad = np.maximum(first + length - self.episode_end[first], 0)  # (B,)
        block = first - n_pad  # row at window position 0; the padding reads rows before `first`
        position = np.arange(length)
        mask = position >= n_pad[:, None]  # (B, L)
        timesteps = ((block - self.episode_first[first])[:, None] + position) * mask
        task = self.tensor(self.task[first])

        if block.min() >= 0:  # each window is one block of rows: gather it whole, far cheaper
            index = self.tensor(block)

            def take(x: torch.Tensor) -> torch.Tensor:
                return sliding_windows(x, length).index_select(0, index)
        else:  # a window starts before row 0 (short first episode): row by row, padding at 0
            rows = self.tensor(np.maximum(block[:, None] + position, 0).ravel())

            def take(x: torch.Tensor) -> torch.Tensor:
                return x.index_select(0, rows).view(*mask.shape, *x.shape[1:])

        gathered = {
            "states": take(self.observations),
            "actions": take(self.actions),
            "rewards": take(self.rewards),
            "returns_to_go": take(self.returns_to_go),
        }
        mask_t = self.tensor(mask)
        if n_pad.any():  # most windows are whole: skip the zeroing then
            keep = mask_t.to(self.observations.dtype)
            for x in gathered.values():  # the gathers are fresh tensors: zero in place
                x.mul_(keep.view(*mask.shape, *(1,) * (x.dim() - 2)))
        return gathered | {
            "timesteps": self.tensor(timesteps),
            "mask": mask_t,
            "task": task,
        }


class SegmentSampler:
    """Draws DT training segments from a ``TrajectoryStore``: seeded, resumable, vectorised.

    The start step is uniform over all steps of the eligible tasks, i.e. the episode is picked
    with probability proportional to its length. Prompt episodes (``prompt_len > 0``) come from
    ``prompt_store`` when given (same task names), else from ``store``; both are normalised with
    the state statistics of ``store``. A prompt is the released code's window of an episode: its
    last ``prompt_len`` steps before the final step (``get_prompt``: start
    ``max(0, T - prompt_len - 1)``), the whole episode when it has exactly ``prompt_len`` steps;
    shorter episodes are an error. Training rows pick the episode per ``prompt_source``;
    evaluation (``best_prompts``) takes each task's best.
    """

    def __init__(
        self,
        store: TrajectoryStore,
        config: SamplerConfig | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        prompt_store: TrajectoryStore | None = None,
    ):
        if store.num_episodes == 0:
            raise ValueError("cannot sample segments from an empty store (no episodes)")
        self.store = store
        self.config = config or SamplerConfig()
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        self.state_stats = store.state_stats() if self.config.normalize_states else None
        self.steps = _Steps(store, self.config, self.device, self.state_stats)
        self.task_steps = [np.flatnonzero(self.steps.task == t) for t in range(store.num_tasks)]
        self.tasks_with_data = [t for t, rows in enumerate(self.task_steps) if len(rows)]
        self.round_robin = 0  # position in tasks_with_data of the next round-robin batch
        if self.config.prompt_len > 0:
            self._init_prompts(store if prompt_store is None else prompt_store)

    def _init_prompts(self, source: TrajectoryStore) -> None:
        """Index the prompt episodes of every task by decreasing return (ties: lower index
        first), and each task's best one."""
        if source.task_names != self.store.task_names:
            raise ValueError("prompt_store must have the same task_names as the store")
        if (source.obs_dim, source.act_dim) != (self.store.obs_dim, self.store.act_dim):
            raise ValueError("prompt_store must have the same obs and act dims as the store")
        missing = [t for t in self.tasks_with_data if not np.any(source.episode_task == t)]
        if missing:
            names = [self.store.task_names[t] for t in missing]
            raise ValueError(f"no prompt episodes for tasks {names}")
        check_prompt_len(source, self.config.prompt_len)
        self.prompt_steps = (
            self.steps if source is self.store
            else _Steps(source, self.config, self.device, self.state_stats)
        )
        # prompt window start: the last prompt_len steps before each episode's final step
        self.prompt_first = np.maximum(
            source.episode_starts[:-1], source.episode_starts[1:] - self.config.prompt_len - 1
        )
        episodes = np.arange(source.num_episodes)
        self.prompt_by_task = np.lexsort((episodes, -source.episode_returns, source.episode_task))
        self.prompt_count = np.bincount(source.episode_task, minlength=source.num_tasks)
        self.prompt_offset = np.concatenate([[0], np.cumsum(self.prompt_count)[:-1]])
        first = self.prompt_by_task[np.minimum(self.prompt_offset, source.num_episodes - 1)]
        self.prompt_best = np.where(self.prompt_count > 0, first, -1)

    # --------------------------------------------------------------- sampling
    def check_task(self, task: int) -> None:
        """Raise ``ValueError`` unless ``task`` indexes a task with episodes."""
        if not 0 <= task < self.store.num_tasks:
            raise ValueError(f"task {task} out of range [0, {self.store.num_tasks})")
        if len(self.task_steps[task]) == 0:
            raise ValueError(f"task {task} ({self.store.task_names[task]!r}) has no episodes")

    def batch_task(self, task: int | None = None) -> int | None:
        """The one task the next batch comes from (``task``, or the next in the round robin,
        which this advances), or None for a batch mixing tasks (``task_mode: mixed``)."""
        if task is None and self.config.task_mode == "mixed":
            return None
        if task is None:
            task = self.tasks_with_data[self.round_robin]
            self.round_robin = (self.round_robin + 1) % len(self.tasks_with_data)
        self.check_task(task)
        return int(task)

    def draw_starts(self, task: int | None = None) -> np.ndarray:
        """(B,) start steps: uniform over the steps of ``task``, or as ``task_mode`` says."""
        return self._starts(self.batch_task(task))

    def _starts(self, task: int | None) -> np.ndarray:
        """(B,) start steps: uniform over the steps of ``task`` (None: of the whole store)."""
        size = self.config.batch_size
        if task is None:
            return self.rng.integers(0, self.store.num_steps, size=size)
        rows = self.task_steps[task]
        return rows[self.rng.integers(0, len(rows), size=size)]

    def draw_prompt_episodes(self, tasks: np.ndarray) -> np.ndarray:
        """Prompt episode for each sample of a batch whose tasks are ``tasks``: "ranked": sample
        ``i`` takes its task's episode of rank ``prompt_rank(i % batch_size, count)`` (a batch of
        several ``batch_size`` blocks, like the mask update's, ranks each block alike);
        "random": one drawn uniformly; "best": rank 0."""
        count = self.prompt_count[tasks]
        source = self.config.prompt_source
        if source == "ranked":
            rank = prompt_rank(np.arange(len(tasks)) % self.config.batch_size, count)
        else:
            rank = self.rng.integers(0, count) if source == "random" else np.zeros_like(count)
        return self.prompt_by_task[self.prompt_offset[tasks] + rank]

    def segments(
        self, starts: np.ndarray, prompt_episodes: np.ndarray | None = None
    ) -> SegmentBatch:
        """The batch of segments beginning at the given start steps.

        Prompt episodes (prompt store indices) are drawn per ``prompt_source`` unless given.
        """
        starts = np.asarray(starts, dtype=np.int64)
        batch = self.steps.window(starts, self.config.context_len)
        if self.config.prompt_len > 0:
            if prompt_episodes is None:
                prompt_episodes = self.draw_prompt_episodes(self.steps.task[starts])
            prompt = self.prompt_steps.window(
                self.prompt_first[prompt_episodes], self.config.prompt_len
            )
            batch |= {f"prompt_{name}": prompt[name] for name in PROMPT_FIELDS}
        return SegmentBatch(**batch, start=self.steps.tensor(starts))

    def best_prompts(self) -> dict[str, torch.Tensor]:
        """Each task's evaluation prompt: the prompt window of its best-return episode (the
        released code's ``get_prompt(index=-1)``).

        Fields as in the batch without the ``prompt_`` prefix, each (num_tasks, P, ...); tasks
        without prompt episodes get an all-padding prompt.
        """
        if self.config.prompt_len == 0:
            raise ValueError("best_prompts needs sampler.prompt_len > 0")
        have = self.prompt_best >= 0
        window = self.prompt_steps.window(self.prompt_first[np.where(have, self.prompt_best, 0)],
                                          self.config.prompt_len)
        window["mask"] &= self.steps.tensor(have)[:, None]
        return {name: window[name] for name in PROMPT_FIELDS}

    def sample(self, task: int | None = None) -> SegmentBatch:
        """One batch: all from ``task`` if given, else per ``task_mode``."""
        task = self.batch_task(task)
        batch = self.segments(self._starts(task))
        return batch if task is None else replace(batch, task_id=task)

    def __iter__(self) -> Iterator[SegmentBatch]:
        while True:
            yield self.sample()

    # ------------------------------------------------------------- resuming
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable sampler position: random generator state and round-robin slot."""
        return {"bit_generator": self.rng.bit_generator.state, "round_robin": self.round_robin}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where the sampler that produced ``state`` stopped."""
        self.rng.bit_generator.state = state["bit_generator"]
        self.round_robin = int(state["round_robin"])
