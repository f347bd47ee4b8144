"""Decision Transformer learners: DT, MTDT, Prompt-DT and MTBC share one agent class.

They differ only in what conditions the transformer: a task-id embedding (MTDT), a trajectory
prompt (Prompt-DT), or no return-to-go token at all (MTBC). The loss is the DT loss: mean squared
error of the predicted actions on the real (unpadded) steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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

    def route(self, task: torch.Tensor) -> Route | None:
        """Masks/adapters each sample uses, from its task index; plain DTs use none."""
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
        loss = action_mse(self.forward_batch(batch, self.route(batch.task)), batch)
        return loss, {"action_mse": loss.detach()}

    def policy(self, target_returns: list[float] | None = None, device: str | None = None,
               task_agnostic: bool = False) -> Any:
        """Batched evaluation policy (``orl.eval.Policy``); ``task_agnostic`` only where the
        agent has a task-agnostic mode (HarmoDT's merged model)."""
        if task_agnostic:
            raise ValueError(f"{type(self).__name__} has no task-agnostic mode "
                             "(eval.task_agnostic needs agent.name=harmodt)")
        return self._policy(target_returns, device, self.route)

    def _policy(self, target_returns: list[float] | None, device: str | None,
                route_fn: Any) -> Any:
        from orl.agents.policy import DTPolicy

        return DTPolicy(
            model=self.model,
            state_mean=self.state_mean,
            state_std=self.state_std,
            target_return=target_returns or self.spec.target_returns,
            rtg_scale=self.spec.rtg_scale,
            # one task: the policy serves any env name (e.g. a D4RL file's eval env)
            task_names=self.spec.task_names if len(self.spec.task_names) > 1 else None,
            device=device,
            prompt=self.prompts(),
            use_task_embedding=self.uses_task_id,
            route_fn=route_fn,
        )


def action_mse(predicted: torch.Tensor, batch: Any) -> torch.Tensor:
    """The DT loss: mean squared action error over the real (unpadded) steps."""
    weight = batch.mask.unsqueeze(-1).to(predicted.dtype)
    error = ((predicted - batch.actions) ** 2 * weight).sum()
    return error / (weight.sum() * predicted.shape[-1]).clamp_min(1.0)
