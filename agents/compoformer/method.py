"""CompoFormer (arXiv 2411.11364): continual learning by composing earlier policies.

Every task has a one-sentence description embedded with all-MiniLM-L6-v2 (384-d). For a new
task ``t`` the query/key maps ``q_t, k_t`` (384 -> ``attention_dim``) weigh the earlier tasks
that own parameters ("grown" tasks) with ``softmax(q_t(e_t) . k_t(e_j) / temperature)``.

Compose or grow, for each task after the first:

1. warm-up: only ``q_t, k_t`` train, ``compose_warmup_steps`` steps, the action predicted as
   the attention-weighted sum of the frozen earlier policies' actions;
2. the best-matching earlier policy (hard top-1) plays ``compose_episodes`` episodes of ``t``;
3. success >= ``compose_threshold``: task ``t`` reuses that policy and adds no parameters;
4. otherwise grow a module for ``t``: a LoRA adapter on the attention QKV projections (Grow)
   or a PackNet mask from the free weights (Prune: train, keep the top ``prune_keep`` share,
   fine-tune, split by ``prune_at``). Its state-token feature is concatenated with the
   attention-weighted features of the earlier grown tasks and the task's MLP head maps the
   pair to the action; the query/key maps keep what the warm-up taught them.

The frozen earlier modules run without gradients; with dropout (Grow) or in eval mode (Prune)
as in the released code, unless ``frozen_dropout`` says otherwise. In eval mode they give a
training segment the same features at every step, so a stage's training computes them once
for every segment of its data (:class:`FrozenFeatures`) instead of at every step.

The first task always grows (the backbone itself for Grow) and acts through the DT's action
head, as there is nothing to compose. All tasks' modules and heads are
allocated up front so checkpoints keep one shape; isolation makes earlier tasks' outputs
bit-identical while later tasks train.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from orl.agents.compoformer.text import EMBEDDING_DIM, embed_descriptions
from orl.agents.continual.agent import ContinualAgent, Method
from orl.agents.continual.methods import LoRA, PackNet
from orl.agents.dt import action_mse
from orl.agents.policy import eval_mode
from orl.model.layers import Index, Route
from orl.train.callbacks import Callback

if TYPE_CHECKING:
    from orl.agents.continual.config import ContinualConfig
    from orl.agents.continual.stages import Stage

#: Initial query/key maps give logits of about INIT_SHARPNESS * cosine(e_t, e_j).
INIT_SHARPNESS = 8.0
#: Segments per forward pass when the frozen modules' features of a stage's data are computed.
FEATURE_CHUNK = 64


def stage_descriptions(stages: list[Stage]) -> list[str]:
    """Each stage's description: its own, else the Meta-World description of its env."""
    from orl.envs.descriptions import TASK_DESCRIPTIONS

    out = []
    for stage in stages:
        text = stage.description or TASK_DESCRIPTIONS.get(stage.eval_task.removeprefix("orl/"))
        if not text:
            raise ValueError(
                f"stage {stage.index} ({stage.name}): CompoFormer needs a task description; "
                "set continual.stages[].description (Meta-World tasks have built-in ones)"
            )
        out.append(text)
    return out


def task_head(width: int, hidden: int, act_dim: int) -> nn.Sequential:
    """A grown task's MLP head over [own feature, composed feature], as the released code's
    ``final_head``: Linear (orthogonal, ReLU gain) -> GELU -> LayerNorm -> Linear (orthogonal,
    gain 0.01), zero biases."""
    first, last = nn.Linear(2 * width, hidden), nn.Linear(hidden, act_dim)
    nn.init.orthogonal_(first.weight, gain=nn.init.calculate_gain("relu"))
    nn.init.orthogonal_(last.weight, gain=0.01)
    for layer in (first, last):
        nn.init.zeros_(layer.bias)
    return nn.Sequential(first, nn.GELU(), nn.LayerNorm(hidden), last)


class CompoFormer(Method):
    """CompoFormer Grow (``compoformer_grow``) or Prune (``compoformer_prune``)."""

    def __init__(self, cfg: ContinualConfig, stages: list[Stage]) -> None:
        super().__init__()
        self.variant = cfg.method.removeprefix("compoformer_")
        self.module = (LoRA(cfg.lora_rank, cfg.lora_alpha) if self.variant == "grow"
                       else PackNet(cfg.prune_keep, cfg.prune_at, cfg.prune_scope))
        self.threshold = cfg.compose_threshold
        self.warmup_steps = cfg.compose_warmup_steps
        self.episodes = cfg.compose_episodes
        self.temperature = cfg.attention_temperature
        self.attention_dim, self.head_hidden = cfg.attention_dim, cfg.head_hidden
        self.frozen_dropout = (self.variant == "grow" if cfg.frozen_dropout is None
                               else cfg.frozen_dropout)
        self.phase = "train"  # or "warmup"
        # the frozen modules' features of every segment of the stage's data (module ->
        # (segments, K, D), row = start step), while a stage trains with FrozenFeatures
        self.frozen_features: dict[int, torch.Tensor] | None = None
        embeddings = torch.as_tensor(embed_descriptions(stage_descriptions(stages)))
        self.register_buffer("embeddings", embeddings)
        # source[t]: t if task t grew, the reused task if it composed, -1 before its stage
        self.register_buffer("source", torch.full((len(stages),), -1, dtype=torch.long))

    def attach(self, agent: ContinualAgent) -> None:
        self.module.attach(agent)
        cfg, t = agent.model.cfg, agent.num_tasks
        self.query = nn.ModuleList(nn.Linear(EMBEDDING_DIM, self.attention_dim) for _ in range(t))
        self.key = nn.ModuleList(nn.Linear(EMBEDDING_DIM, self.attention_dim) for _ in range(t))
        scale = (INIT_SHARPNESS * self.temperature * EMBEDDING_DIM / self.attention_dim) ** 0.5
        with torch.no_grad():
            for query, key in zip(self.query, self.key):  # q = k: logits follow similarity
                nn.init.orthogonal_(query.weight, gain=scale)
                key.weight.copy_(query.weight)
                query.bias.zero_()
                key.bias.zero_()
        hidden = self.head_hidden or cfg.embed_dim
        self.heads = nn.ModuleList(task_head(cfg.embed_dim, hidden, cfg.act_dim) for _ in range(t))

    # ------------------------------------------------------------ composition
    def acts_as(self, stage: int) -> int:
        source = int(self.source[stage])
        return source if source >= 0 else stage

    def grown_before(self, task: int) -> list[int]:
        """Earlier tasks that own parameters."""
        return [i for i in range(task) if int(self.source[i]) == i]

    def attention(self, task: int, earlier: list[int]) -> torch.Tensor:
        """Weights of task ``task`` over ``earlier`` tasks, (len(earlier),), summing to 1."""
        query = self.query[task](self.embeddings[task])
        keys = self.key[task](self.embeddings[earlier])
        return F.softmax(keys @ query / self.temperature, dim=0)

    def route(self, task: Index) -> Route:
        return self.module.route(task)

    def module_features(self, agent: ContinualAgent, inputs: tuple[torch.Tensor | None, ...],
                        rows: dict[int, torch.Tensor], last_only: bool = False,
                        starts: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
        """State-token features of rows ``rows[i]`` of ``inputs`` through module ``i``, for
        every ``i``: one forward pass for all frozen modules (a route per sample), and one that
        keeps its graph for the module in training. ``starts``: the segments' start steps in
        the stage's data, when the inputs are a training batch (the frozen modules' features
        are then looked up, if ``frozen_features`` holds them)."""
        learning = agent.stage if agent.training and self.phase == "train" else None
        out = {}
        if learning in rows:
            picked = [None if x is None else x[rows[learning]] for x in inputs]
            out[learning] = agent.model.encode(*picked, route=self.route(learning),
                                               last_only=last_only)
        frozen = [i for i in rows if i != learning]
        known = self.frozen_features or {}
        if frozen and starts is not None and not last_only and all(i in known for i in frozen):
            out |= {i: known[i][starts[rows[i]]] for i in frozen}
        elif frozen:
            index = torch.cat([rows[i] for i in frozen])
            route = torch.cat([torch.full_like(rows[i], i) for i in frozen])
            with torch.no_grad(), nullcontext() if self.frozen_dropout else eval_mode(agent.model):
                features = agent.model.encode(*(None if x is None else x[index] for x in inputs),
                                              route=self.route(route), last_only=last_only)
            out |= dict(zip(frozen, features.split([len(rows[i]) for i in frozen])))
        return out

    def actions(self, agent: ContinualAgent, inputs: tuple[torch.Tensor, ...],
                task: int | torch.Tensor, last_only: bool = False,
                starts: torch.Tensor | None = None) -> torch.Tensor:
        """Actions of ``task`` (see :meth:`Method.actions`); ``starts``: as in
        :meth:`module_features`."""
        size = len(inputs[0])
        task = torch.full((size,), task, device=inputs[0].device) if isinstance(task, int) else task
        plays = {j: self.acts_as(j) for j in torch.unique(task).tolist()}
        task_rows = {j: torch.nonzero(task == j).flatten() for j in plays}
        needs: dict[int, list[torch.Tensor]] = {}
        for j, s in plays.items():
            for i in {s, *self.grown_before(s)}:
                needs.setdefault(i, []).append(task_rows[j])
        rows = {i: torch.cat(parts) for i, parts in needs.items()}
        found = self.module_features(agent, inputs, rows, last_only, starts)
        # every module's features at their batch positions (rows not needed stay zero)
        features = {i: found[i].new_zeros(size, *found[i].shape[1:]).index_copy(0, rows[i], found[i])
                    for i in found}
        out = None
        for j, s in plays.items():
            at = task_rows[j]
            y = self.policy_actions(agent, s, {i: features[i][at] for i in {s, *self.grown_before(s)}})
            if len(plays) == 1:
                return y
            if out is None:
                out = y.new_empty(size, *y.shape[1:])
            out[at] = y
        return out

    def policy_actions(self, agent: ContinualAgent, grown: int, features: dict[int, torch.Tensor]
                       ) -> torch.Tensor:
        """Actions of grown task ``grown``'s policy from the state-token ``features`` of its
        module and of the earlier grown modules (module -> features of the same rows): its MLP
        head over its own and the attention-weighted earlier features; the first task, with
        nothing to compose, acts through the DT's own action head (as the released code)."""
        earlier = self.grown_before(grown)
        own = features[grown]
        if not earlier:
            return agent.model.predict(own, agent.heads[grown])
        weights = self.attention(grown, earlier)
        composed = sum(w * features[i] for w, i in zip(weights, earlier))
        return agent.model.squash(self.heads[grown](torch.cat([own, composed], dim=-1)))

    def grown_actions(self, agent: ContinualAgent, inputs: tuple[torch.Tensor, ...],
                      grown: list[int]) -> torch.Tensor:
        """Actions (len(grown), B, K, act_dim) of the grown policies ``grown`` on the whole batch
        ``inputs``, every module's features computed once (not once per policy using them)."""
        rows = torch.arange(len(inputs[0]), device=inputs[0].device)
        needed = {i for s in grown for i in (s, *self.grown_before(s))}
        features = self.module_features(agent, inputs, dict.fromkeys(needed, rows))
        return torch.stack([self.policy_actions(agent, s, features) for s in grown])

    # --------------------------------------------------------------- training
    def loss(self, agent: ContinualAgent, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs = (batch.states, batch.actions, batch.returns_to_go, batch.timesteps, batch.mask)
        if self.phase == "train":
            predicted = self.actions(agent, inputs, agent.head_of(batch.task), starts=batch.start)
            mse = action_mse(predicted, batch)
            return mse, {"action_mse": mse.detach()}
        earlier = self.grown_before(agent.stage)
        with torch.no_grad():
            policies = self.grown_actions(agent, inputs, earlier)
        weights = self.attention(agent.stage, earlier)
        mse = action_mse((weights[:, None, None, None] * policies).sum(0), batch)
        return mse, {"action_mse": mse.detach()}

    def stage_parameters(self, agent: ContinualAgent, stage: int) -> list[nn.Parameter]:
        """Warm-up: the query/key maps; then the module's parameters and the MLP head (the maps
        stay as the warm-up left them: the released code's default, ``updateqk`` off)."""
        if self.phase == "warmup":
            return [*self.query[stage].parameters(), *self.key[stage].parameters()]
        return self.module.stage_parameters(agent, stage) + list(self.heads[stage].parameters())

    def callbacks(self, agent: ContinualAgent) -> list[Callback]:
        if self.phase == "warmup":
            return []
        cache = [] if self.frozen_dropout else [FrozenFeatures(self, agent)]
        return self.module.callbacks(agent) + cache

    @torch.no_grad()
    def compute_frozen_features(self, agent: ContinualAgent, sampler: Any) -> None:
        """``frozen_features``: every earlier grown module's features of every segment of
        ``sampler``'s data (segment ``s`` starts at step ``s``), in fixed chunks of segments, so
        a resumed stage gets the same values as an uninterrupted one."""
        modules = self.grown_before(agent.stage)
        self.frozen_features = None
        if not modules:
            return
        parts: dict[int, list[torch.Tensor]] = {i: [] for i in modules}
        for first in range(0, sampler.store.num_steps, FEATURE_CHUNK):
            batch = sampler.segments(np.arange(first, min(first + FEATURE_CHUNK,
                                                          sampler.store.num_steps)))
            inputs = (batch.states, batch.actions, batch.returns_to_go, batch.timesteps, batch.mask)
            rows = {0: torch.arange(len(batch.states), device=batch.states.device)}
            for i in modules:  # one module at a time: its own mask or adapter, no gathers
                parts[i].append(self.module_features(agent, inputs, {i: rows[0]})[i])
        self.frozen_features = {i: torch.cat(chunks) for i, chunks in parts.items()}

    def added_parameters(self, agent: ContinualAgent, stage: int) -> int:
        """None for a composed task; a grown one adds its module's entries (adapter or kept
        weights), its MLP head and, when it weighs two or more earlier policies, its query/key
        maps."""
        if self.acts_as(stage) != stage:
            return 0
        modules = [self.heads[stage]] + ([self.query[stage], self.key[stage]]
                                         if len(self.grown_before(stage)) > 1 else [])
        return self.module.task_entries(stage) + sum(p.numel() for m in modules
                                                     for p in m.parameters())

    def run_stage(self, runner: Any, stage: int) -> None:
        """Warm up, roll out the best-matching earlier policy, then compose or grow."""
        earlier = self.grown_before(stage)
        if not earlier:
            self.source[stage] = stage
            runner.train_phase(stage, "train")
            return
        note = runner.state["notes"].get(str(stage), {})
        if "decision" not in note:
            self.phase = "warmup"
            try:
                runner.train_phase(stage, "warmup", steps=self.warmup_steps, evaluate=False)
            finally:
                self.phase = "train"
            with torch.no_grad():
                weights = self.attention(stage, earlier)
            best = earlier[int(weights.argmax())]
            self.source[stage] = best
            success = runner.success_of(stage, self.episodes)
            note = {"decision": "compose" if success >= self.threshold else "grow",
                    "reused": best, "reuse_success": success,
                    "attention": {runner.stages[i].name: float(w) for i, w in zip(earlier, weights)}}
            runner.note(stage, note)
        composed = note["decision"] == "compose"
        self.source[stage] = note["reused"] if composed else stage
        if "decide" not in runner.state["phases_done"]:
            runner.phase_done(stage, "decide")
        if not composed:
            runner.train_phase(stage, "train")


class FrozenFeatures(Callback):
    """While a stage trains, the frozen earlier modules' features of all its segments, computed
    at the start (also after a resume) and released at the end: the frozen modules run in eval
    mode and their parameters do not change, so each segment's features are the same at every
    step; looking them up replaces a forward pass of every earlier module at every step."""

    def __init__(self, method: CompoFormer, agent: ContinualAgent) -> None:
        self.method, self.agent = method, agent

    def on_train_start(self, trainer: Any) -> None:
        self.method.compute_frozen_features(self.agent, trainer.sampler)

    def on_train_end(self, trainer: Any) -> None:
        self.method.frozen_features = None
