"""One feature vector per trajectory: a DT encoder's mean-pooled hidden states, or raw statistics."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from orl.datasets.sampler import SamplerConfig, SegmentBatch, SegmentSampler
from orl.datasets.store import TrajectoryStore
from orl.model.layers import Route


def raw_features(store: TrajectoryStore) -> np.ndarray:
    """(E, 2 obs + 2 act + 2) per-episode statistics, each column z-scored over the store.

    Columns: observation mean and std, action mean and std, return, length. Needs no model.
    """
    episode = store.step_episode
    count = store.episode_lengths[:, None].astype(np.float64)

    def mean_std(x: np.ndarray) -> np.ndarray:
        total = np.zeros((store.num_episodes, x.shape[1]))
        square = np.zeros_like(total)
        np.add.at(total, episode, x)
        np.add.at(square, episode, x.astype(np.float64) ** 2)
        mean = total / count
        return np.concatenate([mean, np.sqrt(np.maximum(square / count - mean**2, 0.0))], axis=1)

    columns = np.concatenate(
        [mean_std(store.observations), mean_std(store.actions),
         store.episode_returns[:, None], count], axis=1,
    )
    std = columns.std(0)
    return ((columns - columns.mean(0)) / np.where(std > 0, std, 1.0)).astype(np.float32)


def episode_segments(store: TrajectoryStore, context_len: int,
                     max_segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Start steps of up to ``max_segments`` evenly spaced K-step windows per episode, and the
    episode of each window. Together the windows cover short episodes whole."""
    starts, owners = [], []
    for e, (first, length) in enumerate(zip(store.episode_starts[:-1], store.episode_lengths)):
        count = min(max_segments, -(-int(length) // context_len))
        offsets = np.linspace(0, max(int(length) - context_len, 0), count).round().astype(np.int64)
        starts.append(first + offsets)
        owners.append(np.full(count, e))
    return np.concatenate(starts), np.concatenate(owners)


def task_index(store: TrajectoryStore, task_names: list[str]) -> np.ndarray:
    """(E,) index of each episode's task in a model's ``task_names``."""
    missing = sorted(set(store.task_names) - set(task_names))
    if missing:
        raise ValueError(
            f"The model was trained on tasks {task_names} and has no task id for {missing}: "
            "use a model trained on these tasks or one without a task embedding."
        )
    lookup = np.array([task_names.index(n) for n in store.task_names], dtype=np.int64)
    return lookup[store.episode_task]


class SegmentEncoder:
    """Cuts a store into K-step segments and feeds them through a DT agent's model.

    ``agent`` is a DT agent (``orl.agents.DTAgent``: ``model``, ``spec``); segments are normalised
    with the store's own per-task state statistics and returns-to-go scaled as the agent was
    trained. Prompted models get no prompt here (a zero-length prompt is not possible, so they
    are refused).
    """

    def __init__(self, agent: Any, store: TrajectoryStore, max_segments: int = 8) -> None:
        model = agent.model
        if model.prompt_embed is not None:
            raise ValueError("segment features need a DT without a prompt (dt, mtdt or mtbc)")
        self.model = model
        self.store = store
        self.device = next(model.parameters()).device
        cfg = SamplerConfig(context_len=model.cfg.context_len, batch_size=1,
                            rtg_scale=agent.spec.rtg_scale)
        self.sampler = SegmentSampler(store, cfg, device=self.device)
        self.starts, self.owner = episode_segments(store, model.cfg.context_len, max_segments)
        self.task = None
        if model.task_embed is not None:
            self.task = torch.as_tensor(task_index(store, list(agent.spec.task_names)),
                                        device=self.device)

    def batch(self, segments: np.ndarray) -> SegmentBatch:
        """Segments ``segments`` (indices into ``starts``) as a batch, with model task ids."""
        batch = self.sampler.segments(self.starts[segments])
        if self.task is not None:
            batch.task = self.task[torch.as_tensor(self.owner[segments], device=self.device)]
        return batch

    def hidden(self, batch: SegmentBatch, route: Route | None = None) -> torch.Tensor:
        """State-token hidden states (B, K, D) of a batch, through the adapters of ``route``."""
        return self.model.encode(batch.states, batch.actions, batch.returns_to_go,
                                 batch.timesteps, batch.mask,
                                 task=batch.task if self.task is not None else None, route=route)


@torch.no_grad()
def dt_features(agent: Any, store: TrajectoryStore, max_segments: int = 8,
                batch_size: int = 256) -> np.ndarray:
    """(E, embed_dim) mean of the encoder's state-token hidden states over each episode's real
    steps (up to ``max_segments`` evenly spaced K-step windows per episode)."""
    encoder = SegmentEncoder(agent, store, max_segments)
    was_training = encoder.model.training
    encoder.model.eval()
    dim = encoder.model.cfg.embed_dim
    total = torch.zeros(store.num_episodes, dim, dtype=torch.float64, device=encoder.device)
    steps = torch.zeros(store.num_episodes, dtype=torch.float64, device=encoder.device)
    owner = torch.as_tensor(encoder.owner, device=encoder.device)
    for lo in range(0, len(encoder.starts), batch_size):
        rows = np.arange(lo, min(lo + batch_size, len(encoder.starts)))
        batch = encoder.batch(rows)
        mask = batch.mask.to(torch.float64)
        pooled = (encoder.hidden(batch).to(torch.float64) * mask[..., None]).sum(1)
        total.index_add_(0, owner[rows], pooled)
        steps.index_add_(0, owner[rows], mask.sum(1))
    encoder.model.train(was_training)
    return (total / steps[:, None]).float().cpu().numpy()
