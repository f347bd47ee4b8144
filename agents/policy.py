"""Batched Decision Transformer inference: the evaluation policy that every DT agent returns."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from orl.model.dt import DecisionTransformer
from orl.model.layers import Route


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode (no dropout) inside the block; the submodules that were training
    are put back into training mode after it, the others left alone (only they are switched:
    ``Module.eval``/``train`` set every submodule, costly at every step of an evaluation)."""
    training = [module for module in model.modules() if module.training]
    for module in training:
        module.training = False
    try:
        yield
    finally:
        for module in training:
            module.training = True


class DTPolicy:
    """Acts with a Decision Transformer on a batch of envs that may play different tasks.

    Every env's history is kept as ``SegmentSampler`` cuts training segments: states normalised
    with the statistics of the env's task, returns-to-go divided by ``rtg_scale`` and starting at
    the task's ``target_return`` (raw reward units), timesteps counted from the reset, and the
    last ``context_len`` steps left-padded with zeros and mask False while fewer were played.

    ``act`` runs one batched forward for all envs and computes only what the next action needs.
    Each token's embedding and first-block projection are computed once, when the token enters
    the window (``DecisionTransformer.token_features``), and kept while it stays there; a step
    then embeds its new tokens and runs the rest of the transformer over the window
    (``encode_cached``). The actions are those of a full forward over the padded window. The
    model must not change during an episode (``reset`` starts the cache afresh). With
    ``context_route`` the route may change at every step, so the window goes through a full
    forward, as it does for a ``model`` that is not a ``DecisionTransformer`` but is called like
    one (e.g. a continual agent's composition of policies).

    Per task (index ``i``, named ``task_names[i]``): ``state_mean``/``state_std`` rows,
    ``target_return``, optionally ``action_head[i]`` and the Prompt-DT ``prompt`` tensors (a dict
    with the model's prompt keys ``states, actions, returns_to_go, timesteps, mask``, each
    ``(num_tasks, prompt_len, ...)``). ``use_task_embedding`` passes the task indices to the
    model; ``route_fn(task_indices) -> Route`` picks masks or adapters per env at reset, or
    ``context_route(raw_states, valid) -> Route`` at every step from the context window when the
    task is not known (e.g. G-HarmoDT's gate; raw = unnormalised, (N, K, obs_dim) and (N, K)).
    """

    def __init__(
        self,
        model: DecisionTransformer,
        state_mean: np.ndarray | torch.Tensor,
        state_std: np.ndarray | torch.Tensor,
        target_return: float | Sequence[float],
        rtg_scale: float = 1.0,
        task_names: Sequence[str] | None = None,
        context_len: int | None = None,
        device: torch.device | str | None = None,
        prompt: dict[str, torch.Tensor] | None = None,
        use_task_embedding: bool = False,
        action_head: Sequence[int] | None = None,
        route_fn: Callable[[torch.Tensor], Route] | None = None,
        context_route: Callable[[torch.Tensor, torch.Tensor], Route] | None = None,
    ) -> None:
        cfg = model.cfg
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.state_mean = self._tensor(state_mean).reshape(-1, cfg.obs_dim)
        self.state_std = self._tensor(state_std).reshape(-1, cfg.obs_dim)
        num_tasks = len(self.state_mean)
        target = self._tensor(target_return).reshape(-1)
        self.target_return = target.expand(num_tasks).clone() if len(target) == 1 else target
        self.rtg_scale = float(rtg_scale)
        self.context_len = context_len or cfg.context_len
        self.task_names = list(task_names) if task_names is not None else None
        self.prompt = None if prompt is None else {
            key: torch.as_tensor(value, device=self.device) for key, value in prompt.items()
        }
        self.use_task_embedding = use_task_embedding
        self.action_head = None if action_head is None else torch.as_tensor(
            action_head, dtype=torch.long, device=self.device
        )
        self.route_fn = route_fn
        self.context_route = context_route
        # the token cache needs a DecisionTransformer and a route fixed for the episode
        self._cached = isinstance(model, DecisionTransformer) and context_route is None
        sizes = {"state_std": self.state_std, "target_return": self.target_return,
                 "task_names": self.task_names, "action_head": self.action_head}
        for name, values in sizes.items():
            if values is not None and len(values) != num_tasks:
                raise ValueError(f"state_mean has {num_tasks} tasks but {name} has {len(values)}")
        if self.task_names is None and num_tasks > 1:
            raise ValueError(f"{num_tasks} tasks need task_names")
        if not 0 < self.context_len <= cfg.context_len:
            raise ValueError(f"context_len must be in [1, {cfg.context_len}], got {self.context_len}")
        if prompt is not None and model.prompt_embed is None:
            raise ValueError("a prompt was given but the model has model.prompt_len=0")
        if use_task_embedding and model.task_embed is None:
            raise ValueError("use_task_embedding needs a model with a task embedding (num_tasks > 0)")
        # Step t of an episode sits at buffer position pad + t; the first pad positions are the
        # left padding of the first windows (zeros, mask False, timestep 0).
        self._pad = self.context_len - 1
        length = self._pad + cfg.max_timestep
        self._timesteps = (torch.arange(length, device=self.device) - self._pad).clamp(min=0)
        self._valid = torch.arange(length, device=self.device) >= self._pad
        self.reset(1)  # ready for one env of task 0

    def _tensor(self, values: float | Sequence[float] | np.ndarray | torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.float32, device=self.device)

    def task_index(self, task: str) -> int:
        """Index of task ``task``. A single-task policy plays every task as its task 0 (env ids
        and dataset task names often differ, and transfer to other tasks is a fair question)."""
        if self.task_names is None or len(self.task_names) == 1:
            return 0
        try:
            return self.task_names.index(task)
        except ValueError:
            raise ValueError(f"DTPolicy knows no task {task!r}; it has {self.task_names}") from None

    @torch.inference_mode()
    def reset(self, num_envs: int, tasks: Sequence[str] | None = None) -> None:
        """Start new episodes in ``num_envs`` envs playing ``tasks`` (default: all task 0)."""
        if tasks is not None and len(tasks) != num_envs:
            raise ValueError(f"{len(tasks)} tasks for {num_envs} envs")
        index = [0] * num_envs if tasks is None else [self.task_index(t) for t in tasks]
        cfg, length = self.model.cfg, len(self._valid)
        self._states = torch.zeros(num_envs, length, cfg.obs_dim, device=self.device)
        self._actions = torch.zeros(num_envs, length, cfg.act_dim, device=self.device)
        self._rtg = torch.zeros(num_envs, length, device=self.device)
        self._play(torch.tensor(index, dtype=torch.long, device=self.device))
        if self._cached:
            self._start_cache()
        self._step = 0

    @torch.inference_mode()
    def keep(self, rows: np.ndarray) -> None:
        """Act for the envs ``rows`` (ascending indices into the envs acted for so far) only:
        the others have finished their episodes, and later ``act`` calls get the kept envs'
        observations in this order. Each kept env's history and token cache stay as they were,
        so its actions do not change; an evaluation stops paying for envs that are done."""
        index = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=self.device)
        self._states, self._actions, self._rtg = (
            self._states[index], self._actions[index], self._rtg[index])
        self._play(self._env_task[index])
        if self._cached:
            if self._step:  # the cache starts at the first step
                self._tokens, self._qkv = self._tokens[index], self._qkv[index]
            self._start_cache()

    def _play(self, task: torch.Tensor) -> None:
        """What depends on the task of each env (``task``: (N,) task indices)."""
        self._env_task = task
        self._mean, self._std = self.state_mean[task], self.state_std[task]
        self._target = self.target_return[task] / self.rtg_scale
        self._task = task if self.use_task_embedding else None
        self._prompt = None if self.prompt is None else {k: v[task] for k, v in self.prompt.items()}
        self._route = None if self.route_fn is None else self.route_fn(task)
        self._head: int | torch.Tensor | None = None
        if self.action_head is not None:
            heads = self.action_head[task]
            self._head = int(heads[0]) if bool((heads == heads[0]).all()) else heads

    @torch.inference_mode()
    def act(self, obs: np.ndarray, reward: np.ndarray) -> np.ndarray:
        """Actions (N, act_dim) float32 for observations (N, obs_dim); ``reward`` (N,) is the
        reward of the previous action (ignored at the first step)."""
        t, pos = self._step, self._pad + self._step
        if pos >= len(self._valid):
            max_timestep = self.model.cfg.max_timestep
            raise RuntimeError(f"more steps since reset than the model's max_timestep ({max_timestep})")
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        self._states[:, pos] = (obs_t - self._mean) / self._std
        if t == 0:
            self._rtg[:, pos] = self._target
        else:
            reward_t = torch.as_tensor(reward, dtype=torch.float32, device=self.device)
            self._rtg[:, pos] = self._rtg[:, pos - 1] - reward_t / self.rtg_scale
        with eval_mode(self.model):
            if self._cached:
                action = self.model.predict(self._encode_cached(pos), self._head)[:, -1]
            else:
                action = self._forward_window(pos)[:, -1]
        self._actions[:, pos] = action
        self._step += 1
        return action.cpu().numpy()

    def _start_cache(self) -> None:
        """Where the token cache of ``_encode_cached`` starts: with the prompt's tokens, if any
        (their features are computed at the first step)."""
        self._prefix, self._prefix_valid = 0, None
        if self._prompt is not None:
            valid = self._prompt["mask"].repeat_interleave(self.model.cfg.tokens_per_step, dim=1)
            self._prefix, self._prefix_valid = valid.shape[1], None if valid.all() else valid

    def _encode_cached(self, pos: int) -> torch.Tensor:
        """Features of the last state token from the token cache: the tokens new at this step
        (the previous action, this return-to-go and state) are embedded and projected once,
        appended, and the oldest step's tokens leave once the window is full. Every env has
        played the same number of steps, so the window needs no padding."""
        model, n, t = self.model, self.model.cfg.tokens_per_step, self._step
        steps = slice(max(pos - 1, self._pad), pos + 1)  # steps t-1 and t (t alone at t = 0)
        tokens = model.embed(self._states[:, steps], self._actions[:, steps], self._rtg[:, steps],
                             self._timesteps[steps].expand(len(self._states), -1))
        if t == 0:  # the window starts: the prompt's tokens come first
            new = tokens[:, :-1]  # the last action is not known yet
            if self._prompt is not None:
                p = self._prompt
                prompt = model.prompt_embed(p["states"], p["actions"], p["returns_to_go"], p["timesteps"])
                new = torch.cat([prompt, new], dim=1)
            self._tokens, self._qkv = model.token_features(new, self._task, self._route)
        else:
            x, qkv = model.token_features(tokens[:, -n - 1:-1], self._task, self._route)
            old = self._prefix + (n if t >= self.context_len else 0)  # the oldest step leaves
            self._tokens = torch.cat([self._tokens[:, :self._prefix], self._tokens[:, old:], x], dim=1)
            self._qkv = torch.cat([self._qkv[:, :self._prefix], self._qkv[:, old:], qkv], dim=1)
        valid = self._prefix_valid
        if valid is not None:
            valid = torch.cat([valid, valid.new_ones(len(valid), self._tokens.shape[1] - self._prefix)], 1)
        return model.encode_cached(self._tokens, self._qkv, valid, self._route)

    def _forward_window(self, pos: int) -> torch.Tensor:
        """The last action (N, 1, act_dim) from a full forward over the padded window, with the
        route ``context_route`` picks from it if given (it may change at every step)."""
        t, k, n = self._step, self.context_len, len(self._states)
        window = slice(pos + 1 - k, pos + 1)
        states, valid = self._states[:, window], self._valid[window].expand(n, k)
        route = self._route
        if self.context_route is not None:
            route = self.context_route(states * self._std[:, None] + self._mean[:, None], valid)
        return self.model(
            states, self._actions[:, window], self._rtg[:, window], self._timesteps[window].expand(n, k),
            valid if t < k - 1 else None,  # a full window: the plain causal mask
            task=self._task, prompt=self._prompt, route=route, head=self._head, last_only=True,
        )
