"""The continual learner: one multi-head Decision Transformer played stage by stage.

Stage ``t`` trains action head ``t`` (and whatever the method routes task ``t`` through: a mask,
an adapter); the task id is known at test time. A :class:`Method` plugs a continual-learning
algorithm into the loss and the trainer callbacks; the loop is always ``orl.train.Trainer``.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from orl.agents.base import Agent
from orl.agents.dt import DataSpec, action_mse
from orl.model.dt import DecisionTransformer, DTConfig
from orl.model.layers import Index, Route
from orl.train.callbacks import Callback


def take_rows(batch: Any, rows: torch.Tensor) -> Any:
    """The samples ``rows`` (index or bool tensor) of a ``SegmentBatch``."""
    return replace(batch, **{f.name: getattr(batch, f.name)[rows] for f in fields(batch)
                             if getattr(batch, f.name) is not None})


class Method(nn.Module):
    """A continual-learning algorithm as a plug-in of :class:`ContinualAgent`; this base class
    is plain finetuning. Its buffers travel in the agent's checkpoints."""

    memory_share = 0.0  # share of each batch the runner replays from earlier stages
    joint = False  # every stage samples all stages' data (the multi-task bound)

    def attach(self, agent: ContinualAgent) -> None:
        """Allocate what all stages need (masks, adapters, buffers), once, at construction."""

    def stage_parameters(self, agent: ContinualAgent, stage: int) -> list[nn.Parameter]:
        """What stage ``stage`` trains (everything, unless the method isolates tasks)."""
        return list(agent.parameters())

    def begin_stage(self, agent: ContinualAgent, stage: int) -> None:
        """Make only ``stage_parameters`` trainable (before the stage's optimizer is made)."""
        agent.train_only(self.stage_parameters(agent, stage))

    def route(self, task: Index) -> Route | None:
        """Masks/adapters of task ``task``."""
        return None

    def actions(self, agent: ContinualAgent, inputs: tuple[torch.Tensor, ...],
                task: int | torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Predicted actions (B, K, act_dim) of ``inputs`` = (states, actions, returns_to_go,
        timesteps, mask) for task(s) ``task``; (B, 1, act_dim) of the last step with
        ``last_only``."""
        return agent.model(*inputs, route=self.route(task), head=task, last_only=last_only)

    def loss(self, agent: ContinualAgent, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mse = action_mse(agent.batch_actions(batch), batch)
        penalty = self.penalty(agent)
        if penalty is None:
            return mse, {"action_mse": mse.detach()}
        return mse + penalty, {"action_mse": mse.detach(), "penalty": penalty.detach()}

    def penalty(self, agent: ContinualAgent) -> torch.Tensor | None:
        return None

    def callbacks(self, agent: ContinualAgent) -> list[Callback]:
        return []

    def acts_as(self, stage: int) -> int:
        """The stage whose policy task ``stage`` is played with (on its own state statistics and
        target return, as the data its attention was trained on)."""
        return stage

    def run_stage(self, runner: Any, stage: int) -> None:
        """Train stage ``stage`` through ``runner`` (a ``ContinualRun``): one phase."""
        runner.train_phase(stage, "train")

    def end_stage(self, agent: ContinualAgent, stage: int, sampler: Any) -> None:
        """After the stage's training (its data still at hand through ``sampler``)."""

    def added_parameters(self, agent: ContinualAgent, stage: int) -> int:
        """Parameters task ``stage`` (after the first) added to the policy, counted after its
        stage: those its actions depend on and no earlier task's do (here its action head;
        methods add their adapters or kept weights)."""
        return sum(p.numel() for p in agent.model.heads[agent.heads[stage]].parameters())


class ContinualAgent(Agent):
    """A DT with one action head per stage, per-stage state statistics and target returns
    (``spec.task_names`` are the stage names), and a continual-learning ``method``.

    ``heads[i]`` is the action head of stage ``i`` (default: head ``i``); a single-task reference
    run has the heads of the whole sequence and plays its one stage with that stage's head."""

    def __init__(self, model_cfg: DTConfig, spec: DataSpec, state_mean: np.ndarray,
                 state_std: np.ndarray, method: Method, heads: list[int] | None = None) -> None:
        super().__init__()
        stages, count = len(spec.task_names), model_cfg.num_action_heads
        self.heads = list(range(stages)) if heads is None else list(heads)
        if len(self.heads) != stages or not all(0 <= h < count for h in self.heads):
            raise ValueError(f"heads {self.heads} must give each of the {stages} stages one of the "
                             f"model.num_action_heads={count} action heads")
        self.own_heads = self.heads == list(range(count))  # stage i plays head i
        self.spec = spec
        self.model = DecisionTransformer(model_cfg)
        self.register_buffer("state_mean", torch.as_tensor(state_mean, dtype=torch.float32))
        self.register_buffer("state_std", torch.as_tensor(state_std, dtype=torch.float32))
        self.method = method
        self.stage = 0
        method.attach(self)

    @property
    def num_tasks(self) -> int:
        return len(self.spec.task_names)

    def start_stage(self, stage: int) -> None:
        """Make ``stage`` the current one: its head and the method's trainable parameters."""
        self.stage = stage
        self.method.begin_stage(self, stage)

    def shared_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The model's parameters except the per-stage action heads."""
        return [(n, p) for n, p in self.model.named_parameters() if not n.startswith("heads.")]

    def train_only(self, keep: list[nn.Parameter]) -> None:
        """Freeze every parameter of the agent except ``keep``."""
        ids = {id(p) for p in keep}
        for p in self.parameters():
            p.requires_grad_(id(p) in ids)

    def actions(self, inputs: tuple[torch.Tensor, ...], task: int | torch.Tensor,
                last_only: bool = False) -> torch.Tensor:
        return self.method.actions(self, inputs, self.head_of(task), last_only)

    def head_of(self, task: int | torch.Tensor) -> int | torch.Tensor:
        """The action head(s) of stage(s) ``task``."""
        if self.own_heads:
            return task
        if isinstance(task, torch.Tensor):
            return torch.as_tensor(self.heads, device=task.device)[task]
        return self.heads[task]

    def batch_actions(self, batch: Any) -> torch.Tensor:
        """Predicted actions of a ``SegmentBatch`` whose ``task`` holds stage indices."""
        inputs = (batch.states, batch.actions, batch.returns_to_go, batch.timesteps, batch.mask)
        return self.actions(inputs, batch.task)

    def loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.method.loss(self, batch)

    def callbacks(self) -> list[Callback]:
        return self.method.callbacks(self)

    def policy(self, stages: list[int] | None = None, task_names: list[str] | None = None,
               device: str | None = None, **_: Any) -> Any:
        """Evaluation policy for ``stages`` (default all) answering to ``task_names`` (default
        the stage names), e.g. the envs the stages are evaluated on."""
        from orl.agents.policy import DTPolicy

        stages = list(range(self.num_tasks)) if stages is None else list(stages)
        return DTPolicy(
            model=_TaskModel(self), state_mean=self.state_mean[stages],
            state_std=self.state_std[stages],
            target_return=[self.spec.target_returns[i] for i in stages],
            rtg_scale=self.spec.rtg_scale,
            task_names=task_names or [self.spec.task_names[i] for i in stages],
            device=device, action_head=stages,
        )


class _TaskModel(nn.Module):
    """What ``DTPolicy`` drives: a DT-like forward whose ``head`` is the stage index."""

    def __init__(self, agent: ContinualAgent) -> None:
        super().__init__()
        self.agent = agent
        self.cfg = agent.model.cfg

    def forward(self, states: torch.Tensor, actions: torch.Tensor, returns_to_go: torch.Tensor,
                timesteps: torch.Tensor, mask: torch.Tensor | None = None, task: Any = None,
                prompt: Any = None, route: Any = None, head: Index = None,
                last_only: bool = False) -> torch.Tensor:
        return self.agent.actions((states, actions, returns_to_go, timesteps, mask),
                                  0 if head is None else head, last_only)
