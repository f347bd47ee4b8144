"""A client's side of a round: local training with the toolkit's Trainer on the client's data.

Local training is a function of (weights received, client data, round, client id, seed): the
simulation and the Flower ClientApp both call ``local_update`` and get the same update.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orl.agents.base import Agent
from orl.agents.federated.strategy import Assignment, Update
from orl.agents.federated.weights import get_weights, set_weights
from orl.datasets.sampler import SamplerConfig, SegmentSampler
from orl.datasets.store import TrajectoryStore
from orl.train.config import TrainConfig
from orl.train.trainer import Trainer


class ProximalTerm(Agent):
    """FedProx: the wrapped agent's loss plus ``mu/2 ||w - w_start||^2`` over its parameters,
    ``w_start`` being the weights it had when wrapped (the global model of the round)."""

    def __init__(self, agent: Agent, mu: float) -> None:
        super().__init__()
        self.agent = agent
        self.mu = mu
        params = list(agent.parameters())
        for i, p in enumerate(params):
            self.register_buffer(f"anchor_{i}", p.detach().clone(), persistent=False)
        self.num_anchors = len(params)

    def proximal(self) -> torch.Tensor:
        anchors = (getattr(self, f"anchor_{i}") for i in range(self.num_anchors))
        return 0.5 * self.mu * sum(((p - a) ** 2).sum() for p, a in zip(self.agent.parameters(), anchors))

    def loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, metrics = self.agent.loss(batch)
        proximal = self.proximal()
        return loss + proximal, {**metrics, "proximal": proximal.detach()}

    def callbacks(self) -> list:
        return self.agent.callbacks()


@dataclass
class ClientData:
    """One client's trajectories (states already normalised with the run's statistics)."""

    client: int
    store: TrajectoryStore
    sampler: SegmentSampler

    @property
    def num_samples(self) -> int:
        return self.store.num_episodes


def make_client(client: int, store: TrajectoryStore, sampler_cfg: SamplerConfig) -> ClientData:
    """``store`` must hold normalised states: the sampler does not normalise again."""
    return ClientData(client, store, SegmentSampler(store, replace(sampler_cfg, normalize_states=False)))


def local_seed(seed: int, round: int, client: int) -> int:
    """The seed of one client's local training in one round."""
    return int(np.random.SeedSequence([seed, round, client]).generate_state(1)[0])


def local_train_config(train: TrainConfig, steps: int) -> TrainConfig:
    """``train`` for one local round: ``steps`` steps, logged once, no evaluation/checkpoints."""
    if train.warmup_steps >= steps:
        raise ValueError(f"train.warmup_steps ({train.warmup_steps}) must be below "
                         f"federated.local_steps ({steps}): each round's local training starts "
                         "a fresh optimizer with its own warm-up")
    return replace(train, steps=steps, log_every=steps, eval_every=0, checkpoint_every=0)


def local_update(agent: Agent, data: ClientData, assignment: Assignment, train: TrainConfig,
                 seed: int, run_dir: Path) -> Update:
    """Train ``agent`` from the assignment's weights for ``train.steps`` steps on ``data``.

    Torch and the sampler are seeded from (seed, round, client), so the update does not depend
    on which slot or runtime asked for it. Nothing is written to ``run_dir``.
    """
    set_weights(agent, assignment.weights)
    local = local_seed(seed, assignment.round, assignment.client)
    torch.manual_seed(local)
    data.sampler.load_state_dict({"bit_generator": np.random.default_rng(local).bit_generator.state,
                                  "round_robin": 0})
    learner = ProximalTerm(agent, assignment.proximal_mu) if assignment.proximal_mu > 0 else agent
    summary = Trainer(learner, data.sampler, train, run_dir, save_checkpoints=False).fit()
    return Update(get_weights(agent), data.num_samples, {"loss": summary["train/loss"]})
