"""Decision Transformer learners: DT, MTDT, Prompt-DT and MTBC share one agent class.

They differ only in what conditions the transformer: a task-id embedding (MTDT), a trajectory
prompt (Prompt-DT), or no return-to-go token at all (MTBC). The loss is the DT loss: mean squared
error of the predicted actions on the real (unpadded) steps.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from orl.agents.base import Agent
from orl.model.dt import DecisionTransformer, DTConfig
from orl.model.layers import Route


@dataclass
class DataSpec:
    """What an agent needs to know about its data, saved with every checkpoint."""

    obs_dim: int
    act_dim: int
    task_names: list[str]
    rtg_scale: float
    target_returns: list[float]  # first return-to-go of each task at evaluation (raw units)
    # the env's action space, which a tanh action head is scaled to (None: [-1, 1], older runs)
    action_low: list[float] | None = None
    action_high: list[float] | None = None
    eval_tasks: list[str] = field(default_factory=list)  # envs the run evaluates on ([]: unknown)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSpec:
        """The spec ``to_dict`` saved; a ``ValueError`` names unknown or missing keys."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        missing = [f.name for f in fields(cls) if f.name not in data
                   and f.default is MISSING and f.default_factory is MISSING]
        if unknown or missing:
            problems = ([f"unknown keys {unknown}"] if unknown else []) + (
                [f"missing keys {missing}"] if missing else [])
            raise ValueError(f"data_spec has {' and '.join(problems)}; its keys are {names}")
        return cls(**data)


class DTAgent(Agent):
    """A Decision Transformer with per-task state statistics and evaluation targets.

    ``state_mean``/``state_std`` (num_tasks, obs_dim) and, for Prompt-DT, the per-task
    evaluation prompts are buffers, so they travel with the weights.
    """

    def __init__(self, model_cfg: DTConfig, spec: DataSpec, state_mean: np.ndarray,
                 state_std: np.ndarray, prompts: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.model = DecisionTransformer(model_cfg)
        self.register_buffer("state_mean", torch.as_tensor(state_mean, dtype=torch.float32))
        self.register_buffer("state_std", torch.as_tensor(state_std, dtype=torch.float32))
        self.prompt_fields = sorted(prompts) if prompts else []
        for name in self.prompt_fields:
            self.register_buffer(f"prompt_{name}", prompts[name].clone())

    @property
    def uses_task_id(self) -> bool:
        return self.model.task_embed is not None

    def prompts(self) -> dict[str, torch.Tensor] | None:
        """Per-task evaluation prompts, (num_tasks, P, ...) each, or None."""
        if not self.prompt_fields:
            return None
        return {name: getattr(self, f"prompt_{name}") for name in self.prompt_fields}

    def route(self, task: int | torch.Tensor) -> Route | None:
        """Masks/adapters each sample uses, from its task index (one for the batch, or (B,));
        plain DTs use none."""
        return None

    def forward_batch(self, batch: Any, route: Route | None = None) -> torch.Tensor:
        """Predicted actions for a ``SegmentBatch``, through the masks/adapters of ``route``."""
        prompt = None
        if batch.prompt_states is not None and self.model.prompt_embed is not None:
            prompt = {
                "states": batch.prompt_states, "actions": batch.prompt_actions,
                "returns_to_go": batch.prompt_returns_to_go,
                "timesteps": batch.prompt_timesteps, "mask": batch.prompt_mask,
            }
        return self.model(
            batch.states, batch.actions, batch.returns_to_go, batch.timesteps, batch.mask,
            task=batch.task if self.uses_task_id else None, prompt=prompt,
            route=route,
        )

    def loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = action_mse(self.forward_batch(batch, self.route(batch.tasks)), batch)
        return loss, {"action_mse": loss.detach()}

    def policy(self, target_returns: list[float] | None = None, device: str | None = None,
               task_agnostic: bool = False) -> Any:
        """Batched evaluation policy (``orl.eval.Policy``); ``task_agnostic`` only where the
        agent has a task-agnostic mode (HarmoDT's merged model)."""
        if task_agnostic:
            raise ValueError(f"{type(self).__name__} has no task-agnostic mode "
                             "(eval.task_agnostic needs agent.name=harmodt)")
        return self._policy(target_returns, device, self.route)

    def unseen_policy(self, store: Any, device: str | None = None) -> Any:
        """A policy for tasks held out of training, known only through a few trajectories
        (``store``): their prompts (last steps of each task's best episode), state statistics
        and best returns, and no task id. Needs a prompt-based agent (prompt_dt, harmodt)."""
        from orl.datasets.sampler import SamplerConfig, SegmentSampler

        if self.model.prompt_embed is None:
            raise ValueError(f"{type(self).__name__} without a prompt cannot act on unseen tasks "
                             "(use agent.name=prompt_dt or harmodt with sampler.prompt_len > 0)")
        cfg = self.model.cfg
        sampler = SegmentSampler(store, SamplerConfig(context_len=cfg.context_len,
                                                      prompt_len=cfg.prompt_len), seed=0)
        returns = store.episode_returns
        targets = [float(returns[store.episode_task == t].max()) for t in range(store.num_tasks)]
        mean, std = sampler.state_stats
        return self._policy(targets, device, self.agnostic_route, task_names=store.task_names,
                            stats=(mean, std), prompts=sampler.best_prompts(),
                            context_route=self.context_route())

    def agnostic_route(self, task: torch.Tensor) -> Route | None:
        """Masks/adapters when the task is not known; plain DTs have none."""
        return None

    def context_route(self) -> Any:
        """Masks/adapters chosen at every step from the context when the task is not known
        (``DTPolicy``'s ``context_route``); None: ``agnostic_route`` alone decides."""
        return None

    def _policy(self, target_returns: list[float] | None, device: str | None, route_fn: Any,
                task_names: list[str] | None = None, stats: tuple[Any, Any] | None = None,
                prompts: dict[str, torch.Tensor] | None = None, context_route: Any = None) -> Any:
        from orl.agents.policy import DTPolicy

        names = task_names or self.spec.task_names
        mean, std = stats if stats is not None else (self.state_mean, self.state_std)
        return DTPolicy(
            model=self.model,
            state_mean=mean,
            state_std=std,
            target_return=target_returns or self.spec.target_returns,
            rtg_scale=self.spec.rtg_scale,
            # one task: the policy serves any env name (e.g. a D4RL file's eval env)
            task_names=names if len(names) > 1 else None,
            device=device,
            prompt=prompts if prompts is not None else self.prompts(),
            use_task_embedding=self.uses_task_id and task_names is None,
            route_fn=route_fn,
            context_route=context_route,
        )


def action_mse(predicted: torch.Tensor, batch: Any, groups: int = 1) -> torch.Tensor:
    """The DT loss: mean squared action error over the real (unpadded) steps.

    With ``groups``, the batch is that many equal blocks of samples and the loss is the sum of
    each block's mean (one task's loss per block).
    """
    weight = batch.mask.unsqueeze(-1).to(predicted.dtype)
    error = ((predicted - batch.actions) ** 2 * weight).reshape(groups, -1).sum(dim=1)
    count = (weight.reshape(groups, -1).sum(dim=1) * predicted.shape[-1]).clamp_min(1.0)
    return (error / count).sum()
