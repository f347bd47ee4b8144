"""The continual-learning baselines as plug-ins of the one training loop.

* finetuning: :class:`~orl.agents.continual.agent.Method` itself;
* ``l2`` / ``ewc`` / ``mas``: a quadratic penalty ``coef / 2 * sum_i omega_i (theta_i - theta*_i)^2``
  on the shared parameters, ``theta*`` the weights after the last stage and ``omega`` the
  importance summed over the finished stages (1, empirical Fisher, MAS sensitivity);
* ``packnet``: per-stage binary masks over the block linears, free weights pruned by magnitude;
* ``lora``: a LoRA adapter per stage on the attention QKV projection over a backbone frozen
  after the first stage;
* ``replay`` (perfect memory): each batch mixes the current stage with all earlier data;
* ``agem``: the gradient is projected so that the loss on earlier data does not rise;
* ``mtl`` (the multi-task bound): every stage trains on all stages' data at once.

Isolation (packnet, lora) is exact: frozen entries get no gradient and are written back after
every optimizer step, so earlier stages' outputs stay bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from orl.agents.continual.agent import ContinualAgent, Method, take_rows
from orl.agents.dt import action_mse
from orl.model.layers import Index, OrlLinear, Route
from orl.train.callbacks import Callback

if TYPE_CHECKING:
    from orl.agents.continual.config import ContinualConfig
    from orl.agents.continual.stages import Stage
    from orl.train.trainer import Trainer

Frozen = list[tuple[nn.Parameter, torch.Tensor]]  # (parameter, bool mask of frozen entries)


class Freeze(Callback):
    """Keeps the entries ``frozen()`` names unchanged: no gradient flows into them and their
    values are written back after every step (AdamW's decay would move them otherwise)."""

    every = 1

    def __init__(self, frozen: Callable[[], Frozen]) -> None:
        self.frozen = frozen
        self.kept: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []
        self.hooks: list[Any] = []

    def refresh(self) -> None:
        """Snapshot the frozen entries again (after the frozen set changed)."""
        self.remove_hooks()
        self.kept = [(p, m, p.detach().clone()) for p, m in self.frozen()]
        self.hooks = [p.register_hook(lambda g, m=m: g.masked_fill(m, 0)) for p, m, _ in self.kept]

    def remove_hooks(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks = []

    def on_train_start(self, trainer: Trainer) -> None:
        self.refresh()

    @torch.no_grad()
    def on_step(self, trainer: Trainer, step: int) -> None:
        for p, m, value in self.kept:
            p.copy_(torch.where(m, value, p))

    def on_train_end(self, trainer: Trainer) -> None:
        self.remove_hooks()


def block_linears(agent: ContinualAgent) -> list[OrlLinear]:
    return [m for _, m in agent.model.transformer.linears()]


def qkv_linears(agent: ContinualAgent) -> list[OrlLinear]:
    return [block.attn.qkv for block in agent.model.transformer.blocks]


# ------------------------------------------------------------------ penalties
class Regularizer(Method):
    """``l2``, ``ewc`` or ``mas``: ``coef / 2 * sum omega (theta - theta*)^2`` over the shared
    params, ``theta*`` their values after the last stage, ``omega`` ones (l2) or the importance
    summed over the finished stages (ewc, mas)."""

    def __init__(self, kind: str, coef: float, samples: int) -> None:
        super().__init__()
        if kind not in ("l2", "ewc", "mas"):
            raise ValueError(f"unknown penalty {kind!r}")
        self.kind, self.coef, self.samples = kind, coef, samples
        self.names: list[str] = []

    def attach(self, agent: ContinualAgent) -> None:
        for name, p in agent.shared_parameters():
            key = name.replace(".", "__")
            self.names.append(key)
            self.register_buffer(f"omega__{key}", torch.zeros_like(p))
            self.register_buffer(f"anchor__{key}", p.detach().clone())

    def penalty(self, agent: ContinualAgent) -> torch.Tensor:
        total = sum(
            (getattr(self, f"omega__{key}") * (p - getattr(self, f"anchor__{key}")) ** 2).sum()
            for key, (_, p) in zip(self.names, agent.shared_parameters())
        )
        return 0.5 * self.coef * total

    def end_stage(self, agent: ContinualAgent, stage: int, sampler: Any) -> None:
        params = [p for _, p in agent.shared_parameters()]
        gain = importance(agent, sampler, self.kind, self.samples, params)
        with torch.no_grad():
            for key, p, g in zip(self.names, params, gain):
                omega = getattr(self, f"omega__{key}")
                if self.kind == "l2":
                    omega.copy_(g)  # ones: one constant weight
                else:
                    omega.add_(g)
                getattr(self, f"anchor__{key}").copy_(p)


def importance(agent: ContinualAgent, sampler: Any, kind: str, samples: int,
               params: list[nn.Parameter]) -> list[torch.Tensor]:
    """Per-parameter importance from ``samples`` single segments of ``sampler``:
    ones (l2), mean squared gradient of the action error (ewc, empirical Fisher), or mean
    absolute gradient of the squared norm of the predicted actions (mas)."""
    if kind == "l2":
        return [torch.ones_like(p) for p in params]
    total = [torch.zeros_like(p) for p in params]
    was_training = agent.training
    agent.eval()
    seen = 0
    while seen < samples:
        batch = sampler.sample()
        for i in range(min(len(batch.task), samples - seen)):
            one = take_rows(batch, torch.tensor([i]))
            predicted = agent.batch_actions(one)
            if kind == "ewc":
                scalar = action_mse(predicted, one)
            else:
                weight = one.mask.unsqueeze(-1).to(predicted.dtype)
                scalar = (predicted ** 2 * weight).sum() / weight.sum().clamp_min(1.0)
            grads = torch.autograd.grad(scalar, params, allow_unused=True)
            for acc, g in zip(total, grads):
                if g is not None:
                    acc.add_(g ** 2 if kind == "ewc" else g.abs())
            seen += 1
    agent.train(was_training)
    return [acc / samples for acc in total]


# ------------------------------------------------------------------ isolation
class PackNet(Method):
    """Per-stage masks over the block linears: stage ``t`` trains the free weights, keeps the
    ``keep`` share of them with the largest magnitude after ``prune_at`` of its steps (one
    threshold over all the linears, or one per linear: ``scope``; the rest are zeroed and stay
    free), then fine-tunes only its own; the last stage keeps every free weight. Mask ``t``
    holds the weights of stages ``<= t``. Everything else shared (LayerNorms and biases
    included, which the released CompoFormer code's PackNet also prunes) is trained in the first
    stage only."""

    def __init__(self, keep: float, prune_at: float, scope: str = "global") -> None:
        super().__init__()
        self.keep, self.prune_at, self.scope = keep, prune_at, scope
        self.linears: list[OrlLinear] = []

    def attach(self, agent: ContinualAgent) -> None:
        self.linears = block_linears(agent)
        t = agent.num_tasks
        self.last_stage = t - 1
        for k, layer in enumerate(self.linears):
            layer.set_masks(torch.ones(t, *layer.weight.shape, dtype=torch.bool))
            self.register_buffer(f"owner_{k}", torch.full(layer.weight.shape, -1, dtype=torch.int16))
        self.register_buffer("pruned", torch.tensor(-1))  # last stage that has pruned

    def owners(self) -> list[torch.Tensor]:
        return [getattr(self, f"owner_{k}") for k in range(len(self.linears))]

    def task_entries(self, stage: int) -> int:
        """Weights stage ``stage`` owns (kept at its pruning)."""
        return sum(int((owner == stage).sum()) for owner in self.owners())

    def added_parameters(self, agent: ContinualAgent, stage: int) -> int:
        return super().added_parameters(agent, stage) + self.task_entries(stage)

    def route(self, task: Index) -> Route:
        return Route(mask=task)

    def stage_parameters(self, agent: ContinualAgent, stage: int) -> list[nn.Parameter]:
        """What stage ``stage`` trains: everything at first, later the linears' weights (their
        free entries) and the stage's head."""
        if stage == 0:
            return list(agent.parameters())
        return [layer.weight for layer in self.linears] + list(agent.model.heads[stage].parameters())

    def frozen(self, stage: int) -> Frozen:
        """Before pruning, weights owned by earlier stages; after, all but the stage's own."""
        after = int(self.pruned) == stage
        return [(layer.weight, owner != stage if after else owner >= 0)
                for layer, owner in zip(self.linears, self.owners())]

    def callbacks(self, agent: ContinualAgent) -> list[Callback]:
        freeze = Freeze(lambda: self.frozen(agent.stage))
        return [freeze, PruneAt(self, agent, freeze)]  # restore first, then prune

    @torch.no_grad()
    def prune(self, stage: int) -> None:
        """Stage ``stage`` keeps the ``keep`` share of the free weights with the largest
        magnitude, of all the linears at once or of each (``scope``; the last stage: all of
        them); the others are zeroed."""
        owners = self.owners()
        magnitude = [layer.weight.abs().masked_fill(owner >= 0, -1.0).flatten()
                     for layer, owner in zip(self.linears, owners)]
        groups = [torch.cat(magnitude)] if self.scope == "global" else magnitude
        kept = []
        for group in groups:
            free = int((group >= 0).sum())
            mine = torch.zeros_like(group, dtype=torch.bool)
            mine[group.topk(free if stage == self.last_stage else round(self.keep * free)).indices] = True
            kept.append(mine)
        kept = torch.cat(kept).split([o.numel() for o in owners])
        for layer, owner, mine in zip(self.linears, owners, kept):
            owner.view(-1)[mine] = stage
            layer.weight.masked_fill_(owner < 0, 0.0)
            layer.masks[stage] = (owner >= 0) & (owner <= stage)
        self.pruned.fill_(stage)


class PruneAt(Callback):
    """Prunes the current stage after ``prune_at`` of its steps, then re-snapshots ``freeze``."""

    def __init__(self, packnet: PackNet, agent: ContinualAgent, freeze: Freeze) -> None:
        self.packnet, self.agent, self.freeze = packnet, agent, freeze
        self.every = 1

    def on_train_start(self, trainer: Trainer) -> None:
        self.at = max(1, int(self.packnet.prune_at * trainer.cfg.steps))

    def on_step(self, trainer: Trainer, step: int) -> None:
        if step == self.at and int(self.packnet.pruned) != self.agent.stage:
            self.packnet.prune(self.agent.stage)
            self.freeze.refresh()


class LoRA(Method):
    """One LoRA adapter per stage on every attention QKV projection. The first stage trains the
    backbone (its adapter stays zero); later stages train only their adapter and head."""

    def __init__(self, rank: int, alpha: float) -> None:
        super().__init__()
        self.rank, self.alpha = rank, alpha
        self.linears: list[OrlLinear] = []

    def attach(self, agent: ContinualAgent) -> None:
        self.linears = qkv_linears(agent)
        for layer in self.linears:
            layer.add_adapters(agent.num_tasks, self.rank, self.alpha)

    def route(self, task: Index) -> Route:
        return Route(adapter=task)

    def adapters(self) -> list[nn.Parameter]:
        return [p for layer in self.linears for p in (layer.lora_a, layer.lora_b)]

    def task_entries(self, stage: int) -> int:
        """Entries of stage ``stage``'s adapter (none for the first stage, which trains the
        backbone and leaves its adapter zero)."""
        return sum(p[stage].numel() for p in self.adapters()) if stage > 0 else 0

    def added_parameters(self, agent: ContinualAgent, stage: int) -> int:
        return super().added_parameters(agent, stage) + self.task_entries(stage)

    def stage_parameters(self, agent: ContinualAgent, stage: int) -> list[nn.Parameter]:
        if stage == 0:
            adapters = {id(p) for p in self.adapters()}
            return [p for p in agent.parameters() if id(p) not in adapters]
        return self.adapters() + list(agent.model.heads[stage].parameters())

    def frozen(self, stage: int) -> Frozen:
        """All adapters but the stage's own."""
        out = []
        for p in self.adapters():
            mask = torch.ones_like(p, dtype=torch.bool)
            mask[stage] = False
            out.append((p, mask))
        return out

    def callbacks(self, agent: ContinualAgent) -> list[Callback]:
        return [Freeze(lambda: self.frozen(agent.stage))] if agent.stage > 0 else []


# ------------------------------------------------------------------ memory
class Replay(Method):
    """Perfect memory: ``share`` of every batch comes from all earlier stages' data."""

    def __init__(self, share: float) -> None:
        super().__init__()
        self.memory_share = share


class AGEM(Method):
    """A-GEM: the rows of earlier stages in a batch give a reference gradient ``g_ref``; where
    the current gradient ``g`` opposes it, ``g - (g . g_ref / |g_ref|^2) g_ref`` is applied."""

    def __init__(self, share: float) -> None:
        super().__init__()
        self.memory_share = share

    def loss(self, agent: ContinualAgent, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        current = batch.task == agent.stage
        mse = action_mse(agent.batch_actions(take_rows(batch, current)), take_rows(batch, current))
        if bool(current.all()):
            return mse, {"action_mse": mse.detach()}
        memory = take_rows(batch, ~current)
        reference = action_mse(agent.batch_actions(memory), memory)
        params = [p for p in agent.parameters() if p.requires_grad]
        g = torch.autograd.grad(mse, params, retain_graph=True, allow_unused=True)
        g_ref = torch.autograd.grad(reference, params, allow_unused=True)
        pairs = [(p, a, b) for p, a, b in zip(params, g, g_ref) if a is not None and b is not None]
        dot = sum((a * b).sum() for _, a, b in pairs)
        norm = sum((b * b).sum() for _, _, b in pairs).clamp_min(1e-12)
        coef = (dot.clamp(max=0.0) / norm).detach()
        # d/dtheta of the correction is -coef * g_ref; it adds nothing to the loss value
        correction = -coef * sum((p * b).sum() for p, _, b in pairs)
        return mse + correction - correction.detach(), {
            "action_mse": mse.detach(), "reference_mse": reference.detach(),
            "projected": (dot < 0).float().detach(),
        }


class MultiTask(Method):
    """The multi-task bound: every stage trains everything on batches mixing all stages' data,
    each sample through its own stage's head, so ``T`` stages are ``T x train.steps`` joint
    steps, evaluated as the continual methods are. Row ``i`` of its success matrix is the success
    after ``(i + 1) x train.steps`` joint steps; the last row (its P) is the bound."""

    joint = True


def build_method(cfg: ContinualConfig, stages: list[Stage]) -> Method:
    """The method named by ``cfg.method``."""
    name = cfg.method
    if name == "finetune":
        return Method()
    if name in ("l2", "ewc", "mas"):
        return Regularizer(name, cfg.coef, cfg.importance_samples)
    if name == "packnet":
        return PackNet(cfg.prune_keep, cfg.prune_at, cfg.prune_scope)
    if name == "lora":
        return LoRA(cfg.lora_rank, cfg.lora_alpha)
    if name == "replay":
        return Replay(cfg.replay_fraction)
    if name == "agem":
        return AGEM(cfg.replay_fraction)
    if name == "mtl":
        return MultiTask()
    from orl.agents.compoformer.method import CompoFormer

    return CompoFormer(cfg, stages)
