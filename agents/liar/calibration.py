"""Calibration data and the forward (and, for Taylor scores, backward) passes over it.

Calibration windows are ``SegmentSampler`` segments of the policy's own training data: the
first episodes of every task, cut at random start steps, normalised with the statistics the
agent was trained with. Hooks on the ``proj`` layers of the chosen sites collect their inputs
(the head outputs / FFN activations) on the real tokens only (padding tokens influence nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from orl.agents.liar.reconstruct import ActivationStats
from orl.agents.liar.units import Site


def calibration_batches(config: dict[str, Any], state_mean: torch.Tensor, episodes: int,
                        windows: int, batch_size: int = 64, seed: int = 0,
                        first_episode: int = 0, episode_starts: bool = False) -> list[Any]:
    """``windows`` segments from episodes ``first_episode .. first_episode + episodes - 1`` of
    every task of the data the run with resolved ``config`` (``ExperimentConfig`` as a dict) was
    trained on; with ``episode_starts``, one segment from the first step of each episode."""
    from orl.config import from_dict
    from orl.config.experiment import ExperimentConfig
    from orl.datasets.loading import load
    from orl.datasets.sampler import SegmentSampler
    from orl.experiment import dataset_sources

    if episodes <= 0 or windows <= 0 or batch_size <= 0:
        raise ValueError(f"calibration needs episodes, windows and batch size > 0, got "
                         f"{episodes}, {windows}, {batch_size}")
    cfg = from_dict(ExperimentConfig, config)
    cfg.data.generate_missing = False  # calibrate on the data that exists, never make new data
    sources, _ = dataset_sources(cfg)
    store = load(sources)
    sampler = SegmentSampler(store, cfg.sampler, seed=seed)
    if sampler.state_stats is not None and not np.allclose(
            sampler.state_stats[0], state_mean.cpu().numpy(), rtol=1e-3, atol=1e-3):
        raise ValueError(f"the dataset(s) {sources} do not match the data the policy was trained "
                         "on (state statistics differ): was it regenerated?")
    chosen = np.concatenate([store.task_episodes(t)[first_episode:first_episode + episodes]
                             for t in range(store.num_tasks)])
    if len(chosen) == 0:
        raise ValueError(f"no episodes from index {first_episode} on in {sources}")
    if episode_starts:
        starts = store.episode_starts[chosen]
    else:
        steps = np.concatenate([np.arange(store.episode_starts[e], store.episode_starts[e + 1])
                                for e in chosen])
        rng = np.random.default_rng(seed)
        starts = rng.choice(steps, size=min(windows, len(steps)), replace=False)
    return [sampler.segments(starts[i:i + batch_size]) for i in range(0, len(starts), batch_size)]


def token_mask(agent: Any, batch: Any) -> torch.Tensor:
    """(B, L) True at the real tokens of the transformer input (prompt tokens first)."""
    n = agent.model.cfg.tokens_per_step
    valid = batch.mask.repeat_interleave(n, dim=1)
    if batch.prompt_mask is not None and agent.model.prompt_embed is not None:
        valid = torch.cat([batch.prompt_mask.repeat_interleave(n, dim=1), valid], dim=1)
    return valid


def collect(agent: Any, batches: Sequence[Any], sites: Sequence[Site], gradients: bool = False
            ) -> tuple[list[ActivationStats], list[torch.Tensor] | None]:
    """Input statistics of every site's ``proj`` over ``batches`` and, with ``gradients``, the
    first-order Taylor (Fisher) importance of every unit: the sum over batches of
    ``(sum over real tokens and the unit's columns of a * dL/da)^2`` for the agent's loss."""
    stats = [ActivationStats.zeros(site.proj.in_features) for site in sites]
    fisher = [torch.zeros(site.num_units, dtype=torch.float64) for site in sites] if gradients else None
    inputs: list[torch.Tensor] = []
    valid = torch.zeros(0, dtype=torch.bool)

    def hook(index: int):
        def record(_: Any, args: tuple[torch.Tensor, ...]) -> None:
            stats[index].update(args[0][valid])
            inputs.append(args[0])
        return record

    device = next(agent.parameters()).device
    handles = [site.proj.register_forward_pre_hook(hook(i)) for i, site in enumerate(sites)]
    try:
        for batch in batches:
            batch = batch.to(device)
            valid = token_mask(agent, batch)
            inputs.clear()
            with torch.set_grad_enabled(gradients):
                if gradients:
                    loss, _ = agent.loss(batch)
                    grads = torch.autograd.grad(loss, inputs)
                    for i, (a, g) in enumerate(zip(inputs, grads)):
                        fisher[i] += sites[i].per_unit((a.detach() * g)[valid].sum(0)).double().cpu() ** 2
                else:
                    agent.forward_batch(batch, agent.route(batch.task))
    finally:
        for handle in handles:
            handle.remove()
    return stats, fisher
