"""HarmoDT: a (Prompt-)DT whose block weights are seen through one learned binary mask per task.

Inner level: every training step runs under the mask of the batch's task (round-robin
single-task batches, ``sampler.task_mode=round_robin``), through the model's masked layers;
weights outside the mask are left exactly as they were (AdamW's momentum and weight decay would
otherwise move them), restored from a copy of the masked layers made just before the optimizer
step. Upper level, every ``mask_interval`` steps (variants M and F): per-task masked and unmasked
gradients on a fresh batch of every task (two passes in all, ``MaskUpdate.task_grads``), then
prune/regrow (``masks.update_task_masks``, over each task's whole mask unless
``mask_scope=layer``). Masks are buffers of the model, updated in place (a
recorded CUDA graph keeps reading them), so they are saved and restored with every checkpoint.

G-HarmoDT (``num_groups > 0``) clusters the tasks at the first mask update, learns one mask per
group, and trains a gating network (``gate.GroupGate``) that picks the group from the context
when the task id is not given (task-agnostic and unseen evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from orl.agents.dt import DataSpec, DTAgent, action_mse
from orl.agents.harmodt.gate import GroupGate, pooled_stats
from orl.agents.harmodt.groups import cluster_tasks, gradient_similarity
from orl.agents.harmodt.masks import (
    MASK_SCOPES,
    VARIANTS,
    apply_masks,
    change_count,
    erk_densities,
    mask_shapes,
    merged_mask,
    random_masks,
    update_task_masks,
)
from orl.model.dt import DTConfig
from orl.model.layers import OrlLinear, Route
from orl.train.callbacks import Callback


@dataclass
class HarmoDTConfig:
    """The ``agent.harmodt`` section (defaults: the authors' code)."""

    variant: str = "F"  # R: fixed random masks; M: magnitude; F: Fisher
    sparsity: float = 0.2  # of every task mask (ERK densities over the block weights)
    mask_interval: int = 500  # steps between mask updates
    eta_max: int = 100  # entries changed per task at the middle of training
    mask_scope: str = "whole"  # whole: eta_max over each task's whole mask (the released code;
    #                            density moves between layers); layer: eta_max in every layer
    gamma: float = 10.0  # weight of the harmony agreement in the prune score
    merge_thres: int = 0  # task-agnostic model: keep weights active in >= this many task
    #                       masks (0: half the tasks, rounded up)
    num_groups: int = 0  # G-HarmoDT: > 0 clusters the tasks into this many groups by gradient
    #                      similarity at the first mask update; a group shares one mask, and a
    #                      gating network learns to pick the group without the task id

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"agent.harmodt.variant must be one of {VARIANTS}, got {self.variant!r}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"agent.harmodt.sparsity must be in [0, 1), got {self.sparsity}")
        if self.mask_interval <= 0:
            raise ValueError(f"agent.harmodt.mask_interval must be > 0, got {self.mask_interval}")
        if self.mask_scope not in MASK_SCOPES:
            raise ValueError(f"agent.harmodt.mask_scope must be one of {MASK_SCOPES}, "
                             f"got {self.mask_scope!r}")
        if self.eta_max < 0:
            raise ValueError(f"agent.harmodt.eta_max must be >= 0, got {self.eta_max}")
        if self.merge_thres < 0:
            raise ValueError(f"agent.harmodt.merge_thres must be >= 0, got {self.merge_thres}")
        if self.num_groups < 0:
            raise ValueError(f"agent.harmodt.num_groups must be >= 0, got {self.num_groups}")
        if self.num_groups and self.variant == "R":
            raise ValueError("agent.harmodt.num_groups > 0 (G-HarmoDT) learns group masks: "
                             "use variant M or F")


class HarmoDTAgent(DTAgent):
    """A DT with per-task ERK masks on every ``OrlLinear`` of its blocks.

    Each layer holds ``num_tasks + 1`` masks: one per task, then the merged mask of the
    task-agnostic model (weights kept by at least ``merge_thres`` tasks), refreshed whenever
    the task masks change.
    """

    def __init__(self, model_cfg: DTConfig, spec: DataSpec, state_mean: np.ndarray,
                 state_std: np.ndarray, prompts: dict[str, torch.Tensor] | None,
                 cfg: HarmoDTConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(model_cfg, spec, state_mean, state_std, prompts)
        self.harmodt = cfg
        shapes = mask_shapes(self.model.transformer)
        densities = erk_densities(shapes, cfg.sparsity)
        num_tasks = len(spec.task_names)
        self.merge_thres = cfg.merge_thres or -(-num_tasks // 2)
        if self.merge_thres > num_tasks:
            raise ValueError(f"agent.harmodt.merge_thres={cfg.merge_thres} exceeds the number of "
                             f"tasks ({num_tasks})")
        if cfg.num_groups > num_tasks:
            raise ValueError(f"agent.harmodt.num_groups={cfg.num_groups} exceeds the number of "
                             f"tasks ({num_tasks})")
        self.set_task_masks(random_masks(shapes, densities, num_tasks,
                                         generator or torch.Generator().manual_seed(0)))
        # the group of every task (HarmoDT: its own); set once by G-HarmoDT's clustering
        self.register_buffer("task_group", torch.arange(num_tasks))
        self.register_buffer("grouped", torch.tensor(False))
        self.gate = (GroupGate(spec.obs_dim, cfg.num_groups, *pooled_stats(self.state_mean, self.state_std))
                     if cfg.num_groups else None)
        self.last_task: int | torch.Tensor | None = None  # task(s) of the batch being trained on

    def masked_linears(self) -> dict[str, OrlLinear]:
        return dict(self.model.transformer.linears())

    @property
    def merged_index(self) -> int:
        """Mask index of the task-agnostic (merged) model."""
        return len(self.spec.task_names)

    def task_masks(self) -> dict[str, torch.Tensor]:
        """name -> (num_tasks, out, in) bool masks (views of the live buffers)."""
        return {name: lin.masks[: self.merged_index] for name, lin in self.masked_linears().items()}

    def set_task_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Install new task masks and recompute the merged one."""
        apply_masks(self.model.transformer, {
            name: torch.cat([m, merged_mask(m, self.merge_thres)[None]]) for name, m in masks.items()
        })

    def assign_groups(self, full_grads: dict[str, torch.Tensor]) -> None:
        """G-HarmoDT: cluster the tasks by their (T, ...) gradients; each task then takes the
        mask of its group's first task."""
        flat = torch.cat([g.flatten(1) for g in full_grads.values()], dim=1)
        groups = cluster_tasks(gradient_similarity(flat), self.harmodt.num_groups)
        first = torch.stack([torch.nonzero(groups == g)[0, 0] for g in groups])
        self.set_task_masks({n: m[first] for n, m in self.task_masks().items()})
        self.task_group.copy_(groups)
        self.grouped.fill_(True)

    def policy(self, target_returns: list[float] | None = None, device: str | None = None,
               task_agnostic: bool = False) -> Any:
        """Task provided: each env's task mask. ``task_agnostic``: no task id; HarmoDT acts with
        the merged mask, G-HarmoDT with the mask of the group its gate picks from the context
        (the env's task still picks its prompt and state statistics, as data of the task)."""
        if not task_agnostic:
            return self._policy(target_returns, device, self.route)
        return self._policy(target_returns, device, self.agnostic_route,
                            context_route=self.context_route())

    def agnostic_route(self, task: torch.Tensor) -> Route:
        """The merged (task-agnostic) mask for every sample."""
        return Route(mask=self.merged_index)

    def route(self, task: int | torch.Tensor) -> Route:
        return Route(mask=task)

    def context_route(self) -> Any:
        """G-HarmoDT: ``(raw states (N, K, obs), valid (N, K)) -> Route`` with the mask of the
        group the gate predicts for every env; HarmoDT: None (the merged mask)."""
        if self.gate is None:
            return None
        if not bool(self.grouped):
            raise ValueError(
                "This G-HarmoDT has not grouped its tasks yet (that happens at the first mask "
                f"update, step agent.harmodt.mask_interval={self.harmodt.mask_interval}): "
                "train it longer before acting without task ids."
            )
        first = self.group_first_task()

        def route(states: torch.Tensor, valid: torch.Tensor) -> Route:
            return Route(mask=first[self.gate(states, valid).argmax(dim=-1)])

        return route

    def group_first_task(self) -> torch.Tensor:
        """(num_groups,) the lowest task index of every group: the index of the group's mask."""
        groups = self.task_group
        return torch.stack([torch.nonzero(groups == g)[0, 0] for g in range(int(groups.max()) + 1)])

    def loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.last_task = batch.tasks
        loss, metrics = super().loss(batch)
        if self.gate is None:
            return loss, metrics
        # the gate learns from raw observations: undo the sampler's per-task normalisation
        task = batch.task[:, None]
        raw = batch.states * self.state_std[task] + self.state_mean[task]
        logits = self.gate(raw, batch.mask)
        label = self.task_group[batch.task] * self.grouped  # 0 while ungrouped (weight 0 below)
        gate_ce = F.cross_entropy(logits.float(), label)
        # labels exist only once the tasks are grouped; no host sync to find out
        loss = loss + gate_ce * self.grouped.to(gate_ce.dtype)
        accuracy = (logits.argmax(dim=-1) == label).float().mean()
        return loss, {**metrics, "gate_ce": gate_ce.detach(), "gate_accuracy": accuracy}

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """The gate's gradient is clipped apart from the DT's (its loss must not shrink the DT's
        steps under a global clip)."""
        if self.gate is None:
            return super().clip_groups()
        gate = {id(p) for p in self.gate.parameters()}
        return [[p for p in self.parameters() if id(p) not in gate], list(self.gate.parameters())]

    def callbacks(self) -> list[Callback]:
        keep = [KeepMaskedOutWeights(self)]
        return keep if self.harmodt.variant == "R" else [*keep, MaskUpdate(self)]


class KeepMaskedOutWeights(Callback):
    """Leaves every weight outside the trained tasks' masks bit-identical across an optimizer
    step, through the optimizer's own pre/post step hooks (no state-dict copies)."""

    def __init__(self, agent: HarmoDTAgent) -> None:
        self.agent = agent
        self.saved: dict[str, torch.Tensor] = {}
        self.handles: list[Any] = []

    def on_train_start(self, trainer: Any) -> None:
        self.handles = [trainer.optimizer.register_step_pre_hook(self._save),
                        trainer.optimizer.register_step_post_hook(self._restore)]

    def on_train_end(self, trainer: Any) -> None:
        for handle in self.handles:
            handle.remove()

    def _save(self, *_: Any) -> None:
        self.saved = {n: lin.weight.detach().clone() for n, lin in self.agent.masked_linears().items()}

    @torch.no_grad()
    def _restore(self, *_: Any) -> None:
        task = self.agent.last_task  # one task (an int) under round robin
        for name, lin in self.agent.masked_linears().items():
            if isinstance(task, int):
                trained = lin.masks[task]
            else:  # the union of the batch's task masks, without a host sync
                present = torch.zeros(len(lin.masks), dtype=torch.bool, device=lin.masks.device)
                trained = (lin.masks & present.index_fill(0, task, True)[:, None, None]).any(dim=0)
            lin.weight.copy_(torch.where(trained, lin.weight, self.saved[name]))
        self.saved = {}


class MaskUpdate(Callback):
    """The upper level: every ``mask_interval`` steps, prune and regrow every task's masks."""

    def __init__(self, agent: HarmoDTAgent) -> None:
        self.agent = agent
        self.every = agent.harmodt.mask_interval

    def task_grads(self, batch: Any, route: Route | None) -> dict[str, torch.Tensor]:
        """(num_tasks, out, in) gradient of every task's loss w.r.t. every masked weight
        (``route`` None: without the masks), from one forward and backward over ``batch``: every
        task's samples, task-major, the same number each.

        A linear layer's weight gradient is a sum over its input rows of ``grad_out^T x``, and
        samples never interact, so the rows of one task sum to that task's gradient.
        """
        linears = self.agent.masked_linears()
        seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

        def keep(name: str) -> Any:
            return lambda layer, args, out: seen.__setitem__(name, (args[0], out))

        hooks = [lin.register_forward_hook(keep(name)) for name, lin in linears.items()]
        try:
            predicted = self.agent.forward_batch(batch, route)
        finally:
            for hook in hooks:
                hook.remove()
        tasks = len(self.agent.spec.task_names)
        loss = action_mse(predicted, batch, groups=tasks)
        outs = torch.autograd.grad(loss, [seen[name][1] for name in linears])
        grads = {}
        for (name, lin), grad_out in zip(linears.items(), outs):
            x = seen[name][0].reshape(tasks, -1, lin.in_features)
            grad = torch.einsum("tro,tri->toi", grad_out.reshape(tasks, -1, lin.out_features), x)
            grads[name] = grad if route is None else grad * lin.masks[:tasks]
        return grads

    def on_step(self, trainer: Any, step: int) -> None:
        agent, cfg = self.agent, self.agent.harmodt
        count = change_count(step, trainer.cfg.steps, cfg.eta_max)
        needs_groups = cfg.num_groups > 0 and not bool(agent.grouped)
        if count == 0 and not needs_groups:
            return
        sampler = trainer.sampler  # one batch of every task's samples, task-major
        starts = np.concatenate([sampler.draw_starts(task=t) for t in range(len(agent.spec.task_names))])
        batch = sampler.segments(starts).to(trainer.device)
        task_masked = self.task_grads(batch, Route(mask=batch.task))
        task_full = self.task_grads(batch, None)
        if needs_groups:
            agent.assign_groups(task_full)
        # one update per group (HarmoDT: every task is its own group) on its mean gradients
        groups = agent.task_group
        size = torch.bincount(groups).to(next(iter(task_full.values())).dtype)
        first = torch.stack([torch.nonzero(groups == g)[0, 0] for g in range(len(size))])

        def group_mean(grads: torch.Tensor) -> torch.Tensor:
            total = grads.new_zeros(len(size), *grads.shape[1:]).index_add_(0, groups, grads)
            return total / size.view(-1, *([1] * (grads.dim() - 1)))

        weights = {name: lin.weight for name, lin in agent.masked_linears().items()}
        new = update_task_masks(
            {n: m[first] for n, m in agent.task_masks().items()}, weights,
            {n: group_mean(g) for n, g in task_masked.items()},
            {n: group_mean(g) for n, g in task_full.items()},
            count, cfg.gamma, cfg.variant, cfg.mask_scope,
        )
        agent.set_task_masks({n: m[groups] for n, m in new.items()})
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            _broadcast_masks(agent)  # every rank drew its own batches: rank 0's masks win


def _broadcast_masks(agent: HarmoDTAgent) -> None:
    """Give every DDP rank rank 0's masks and groups (as uint8: not every backend sends bool)."""
    import torch.distributed as dist

    for lin in agent.masked_linears().values():
        masks = lin.masks.to(torch.uint8)
        dist.broadcast(masks, src=0)
        lin.masks.copy_(masks.bool())
    dist.broadcast(agent.task_group, src=0)
    grouped = agent.grouped.to(torch.uint8).view(1)
    dist.broadcast(grouped, src=0)
    agent.grouped.fill_(bool(grouped.item()))
