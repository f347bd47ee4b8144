"""The Decision Transformer: (return-to-go, state, action) tokens through a causal transformer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from orl.model.layers import Index, Route
from orl.model.transformer import ACTIVATIONS, Transformer


@dataclass
class ModelConfig:
    """Transformer size: the ``model`` section of a run's config and the defaults of every DT
    built (context and prompt lengths come from the sampler section)."""

    embed_dim: int = 64
    n_layer: int = 2
    n_head: int = 2
    mlp_ratio: int = 4
    activation: str = "gelu"
    dropout: float = 0.1
    max_timestep: int = 500  # > the longest episode (Meta-World: 500)
    tanh_actions: bool = True

    def __post_init__(self) -> None:
        for name in ("embed_dim", "n_layer", "n_head", "mlp_ratio", "max_timestep"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.embed_dim % self.n_head:
            raise ValueError(
                f"model.embed_dim ({self.embed_dim}) must be divisible by model.n_head ({self.n_head})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"model.activation must be one of {sorted(ACTIVATIONS)}, "
                             f"got {self.activation!r}")


@dataclass(kw_only=True)
class DTConfig(ModelConfig):
    """Shape of a Decision Transformer: its size (:class:`ModelConfig`) and what the data fixes.
    ``return_conditioned=False`` drops the return token (behaviour cloning with the same
    transformer)."""

    obs_dim: int
    act_dim: int
    context_len: int = 20
    return_conditioned: bool = True
    num_tasks: int = 0  # > 0: a learned task-id embedding is added to every token
    prompt_len: int = 0  # > 0: a Prompt-DT prefix of that many steps
    num_action_heads: int = 1
    # the action space a tanh head is scaled to, per dimension (None: [-1, 1])
    action_low: list[float] | None = None
    action_high: list[float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("obs_dim", "act_dim", "context_len", "num_action_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.num_tasks < 0 or self.prompt_len < 0:
            raise ValueError("model.num_tasks and model.prompt_len must be >= 0")
        self._check_action_bounds()

    def _check_action_bounds(self) -> None:
        if self.action_low is None and self.action_high is None:
            return
        low, high = np.asarray(self.action_low, float), np.asarray(self.action_high, float)
        if low.shape != (self.act_dim,) or high.shape != (self.act_dim,):
            raise ValueError(f"action_low and action_high need {self.act_dim} values each (one "
                             f"per action dimension), got {self.action_low} and {self.action_high}")
        if not (np.isfinite(low).all() and np.isfinite(high).all() and (low < high).all()):
            raise ValueError(f"action bounds must be finite with low < high, got low "
                             f"{self.action_low}, high {self.action_high}")

    @property
    def tokens_per_step(self) -> int:
        return 3 if self.return_conditioned else 2


class StepEmbedding(nn.Module):
    """Embeds the steps of a trajectory segment into interleaved tokens (B, T*n, D)."""

    def __init__(self, cfg: DTConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.return_conditioned = cfg.return_conditioned
        self.state = nn.Linear(cfg.obs_dim, d)
        self.action = nn.Linear(cfg.act_dim, d)
        self.ret = nn.Linear(1, d) if cfg.return_conditioned else None
        self.timestep = nn.Embedding(cfg.max_timestep, d)

    def forward(self, states: torch.Tensor, actions: torch.Tensor, returns_to_go: torch.Tensor,
                timesteps: torch.Tensor) -> torch.Tensor:
        time = self.timestep(timesteps)
        tokens = [self.state(states) + time, self.action(actions) + time]
        if self.ret is not None:
            tokens.insert(0, self.ret(returns_to_go.unsqueeze(-1)) + time)
        b, t, d = time.shape
        return torch.stack(tokens, dim=2).reshape(b, t * len(tokens), d)


def action_affine(cfg: DTConfig) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(center, half-width) that map tanh's [-1, 1] onto the action bounds; (None, None) where
    no scaling is needed (tanh off, no bounds, or bounds of [-1, 1]: the exact tanh output)."""
    if not cfg.tanh_actions or cfg.action_low is None:
        return None, None
    low = torch.tensor(cfg.action_low, dtype=torch.float32)
    high = torch.tensor(cfg.action_high, dtype=torch.float32)
    if bool((low == -1).all() and (high == 1).all()):
        return None, None
    return (high + low) / 2, (high - low) / 2


def attention_mask(valid: torch.Tensor) -> torch.Tensor:
    """(B, L) token validity -> (B, 1, L, L) bool: causal, padding keys hidden, diagonal kept
    (a padding query then attends to itself alone instead of to nothing)."""
    length = valid.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
    eye = torch.eye(length, dtype=torch.bool, device=valid.device)
    return ((causal & valid[:, None, :]) | eye).unsqueeze(1)


class DecisionTransformer(nn.Module):
    """Predicts a_t from the hidden state of the s_t token.

    Inputs are (B, K, ...) segments as produced by ``SegmentSampler``; ``mask`` (B, K) marks
    real steps (False = left padding). ``prompt`` is a dict with ``states, actions,
    returns_to_go, timesteps, mask`` of shape (B, prompt_len, ...).
    """

    def __init__(self, cfg: DTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = StepEmbedding(cfg)
        self.prompt_embed = StepEmbedding(cfg) if cfg.prompt_len else None
        self.task_embed = nn.Embedding(cfg.num_tasks, cfg.embed_dim) if cfg.num_tasks else None
        self.embed_ln = nn.LayerNorm(cfg.embed_dim)
        self.transformer = Transformer(cfg.embed_dim, cfg.n_layer, cfg.n_head, cfg.mlp_ratio,
                                       cfg.activation, cfg.dropout)
        self.heads = nn.ModuleList(
            nn.Linear(cfg.embed_dim, cfg.act_dim) for _ in range(cfg.num_action_heads)
        )
        center, half = action_affine(cfg)
        # not saved with the weights: they come from the config (older checkpoints load as [-1, 1])
        self.register_buffer("action_center", center, persistent=False)
        self.register_buffer("action_half", half, persistent=False)

    def encode(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        returns_to_go: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor | None = None,
        task: torch.Tensor | None = None,
        prompt: dict[str, torch.Tensor] | None = None,
        route: Route | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Hidden states at the state tokens, (B, K, embed_dim); with ``last_only`` at the last
        state token alone, (B, 1, embed_dim), computed with less work: the last action token,
        which that state token never attends to, is dropped and the final block computes one
        position (same values as the full forward)."""
        n = self.cfg.tokens_per_step
        b, k, _ = states.shape
        if k > self.cfg.context_len:
            raise ValueError(f"segment of {k} steps exceeds model.context_len={self.cfg.context_len}")
        x = self.embed(states, actions, returns_to_go, timesteps)
        valid = None if mask is None else mask.repeat_interleave(n, dim=1)
        if last_only:
            x, valid = x[:, :-1], None if valid is None else valid[:, :-1]
        if prompt is not None:
            if self.prompt_embed is None:
                raise ValueError("a prompt was given but the model has model.prompt_len=0")
            p = self.prompt_embed(prompt["states"], prompt["actions"], prompt["returns_to_go"],
                                  prompt["timesteps"])
            x = torch.cat([p, x], dim=1)
            p_valid = prompt["mask"].repeat_interleave(n, dim=1)
            valid = torch.cat([p_valid, torch.ones_like(x[:, p.shape[1]:, 0], dtype=torch.bool)
                               if valid is None else valid], dim=1)
        attn = None if valid is None else attention_mask(valid)
        h = self.transformer(self._normalise(x, task), attn, route, last_only)
        if last_only:
            return h
        h = h[:, -n * k:]  # drop the prompt positions
        return h.reshape(b, k, n, -1)[:, :, n - 2]  # the state token of every step

    def _normalise(self, tokens: torch.Tensor, task: torch.Tensor | None) -> torch.Tensor:
        """Embedded tokens (B, L, D) plus the task embedding, through ``embed_ln``."""
        if self.task_embed is not None:
            if task is None:
                raise ValueError("this model has a task embedding: pass task (B,) indices")
            tokens = tokens + self.task_embed(task)[:, None, :]
        return self.embed_ln(tokens)

    def token_features(self, tokens: torch.Tensor, task: torch.Tensor | None = None,
                       route: Route | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The part of the forward that each token's own embedding decides: for embedded tokens
        (B, L, D) (``embed`` or ``prompt_embed`` outputs), the transformer's input and the first
        block's query/key/value projection (B, L, 3D). Inference computes them once per token
        and passes those of a window to ``encode_cached``."""
        x = self._normalise(tokens, task)
        return x, self.transformer.blocks[0].project(x, route)

    def encode_cached(self, x: torch.Tensor, qkv: torch.Tensor, valid: torch.Tensor | None = None,
                      route: Route | None = None) -> torch.Tensor:
        """Hidden state (B, 1, D) of the last token of a window given its ``token_features``
        (e.g. the prompt's tokens, then the steps' up to the last state token): the same values
        as ``encode(..., last_only=True)`` with less work. ``valid`` (B, L) marks the tokens to
        attend to (None: all). Eval mode only (no dropout)."""
        if self.training:
            raise RuntimeError("encode_cached runs in eval mode only: call model.eval() first")
        attn = None if valid is None else attention_mask(valid)
        return self.transformer(x, attn, route, last_only=True, first_qkv=qkv)

    def predict(self, features: torch.Tensor, head: Index = None) -> torch.Tensor:
        """Actions from state-token features with head ``head`` (int, (B,) tensor or None = 0)."""
        if head is None or isinstance(head, int):
            out = self.heads[head or 0](features)
        else:
            out = torch.stack([h(features) for h in self.heads])[head, torch.arange(len(head))]
        return self.squash(out)

    def squash(self, out: torch.Tensor) -> torch.Tensor:
        """Actions from raw head outputs: with ``tanh_actions``, tanh scaled to the action
        bounds; else the outputs as they are."""
        if not self.cfg.tanh_actions:
            return out
        action = torch.tanh(out)
        return action if self.action_half is None else self.action_center + self.action_half * action

    def forward(self, states: torch.Tensor, actions: torch.Tensor, returns_to_go: torch.Tensor,
                timesteps: torch.Tensor, mask: torch.Tensor | None = None,
                task: torch.Tensor | None = None, prompt: dict[str, torch.Tensor] | None = None,
                route: Route | None = None, head: Index = None,
                last_only: bool = False) -> torch.Tensor:
        """Predicted actions (B, K, act_dim); with ``last_only`` the last step's alone,
        (B, 1, act_dim), for less work (see ``encode``)."""
        features = self.encode(states, actions, returns_to_go, timesteps, mask, task, prompt,
                               route, last_only)
        return self.predict(features, head)
