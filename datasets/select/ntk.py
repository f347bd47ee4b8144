"""NTK-Selector: pick pool trajectories whose neural-tangent features match a small target set.

The Jacobian-free kernel of two items is ``K(x, x') = <R g(x), R g(x')>`` with ``g(x)`` the
gradient, over a chosen parameter set, of the sum of a DT's action-head outputs over every real
step of the item's segments (one backward pass per item, no Jacobian), and ``R`` a shared,
seeded Rademacher matrix (entries +-1/sqrt(p)) projecting to ``p`` dims. The parameter set is
the LoRA adapters of every ``OrlLinear`` (added, rank ``rank``, seeded, to a copy of the model
when it has none: B starts at zero, so the gradients live in B until the adapters are trained) or the
last transformer block.

Two stages: a reverse-nearest-neighbour vote in the encoder's embedding space keeps
``prefilter_factor * count`` candidates (each target item votes for its nearest pool items);
each candidate is then scored by its mean kernel value against the target set and the
``count`` best are kept. The model should have been warmed up on the target set (e.g. a DT
trained on it with ``train-agent``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from orl.datasets.select.features import SegmentEncoder, dt_features
from orl.datasets.store import TrajectoryStore
from orl.model.layers import OrlLinear, Route

PARAM_SETS = ("adapter", "last-block")
PROJECTION_CHUNK = 4096  # rows of R made at once; the matrix never exists whole


@dataclass
class NTKConfig:
    """NTK-Selector settings."""

    params: str = "adapter"  # "adapter" (LoRA of every OrlLinear) or "last-block"
    rank: int = 8  # LoRA rank when adapters are added
    dim: int = 8192  # p: projected gradient size
    prefilter_factor: float = 4.0  # candidates kept by the reverse-kNN vote, times count
    max_segments: int = 8  # K-step windows per trajectory

    def __post_init__(self) -> None:
        if self.params not in PARAM_SETS:
            raise ValueError(f"ntk.params must be one of {PARAM_SETS}, got {self.params!r}")
        if self.rank <= 0 or self.dim <= 0 or self.max_segments <= 0:
            raise ValueError("ntk.rank, ntk.dim and ntk.max_segments must be positive")
        if self.prefilter_factor < 1.0:
            raise ValueError(f"ntk.prefilter_factor must be >= 1, got {self.prefilter_factor}")


def kernel_agent(agent: Any, params: str, rank: int,
                 seed: int = 0) -> tuple[Any, list[torch.nn.Parameter], Route | None]:
    """A copy of ``agent`` for gradients, the parameters to differentiate and the route to use.

    Adapters added here are initialised from ``seed`` (the global RNG is left untouched).
    """
    agent = copy.deepcopy(agent).eval()
    for p in agent.parameters():
        p.requires_grad_(False)
    if params == "last-block":
        chosen = list(agent.model.transformer.blocks[-1].parameters())
        route = None
    else:
        layers = [m for m in agent.model.modules() if isinstance(m, OrlLinear)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for layer in layers:
                if layer.lora_a is None:
                    layer.add_adapters(1, rank)
        chosen = [p for layer in layers for p in (layer.lora_a, layer.lora_b)]
        route = Route(adapter=0)
    for p in chosen:
        p.requires_grad_(True)
    return agent, chosen, route


def rademacher_rows(start: int, stop: int, dim: int, seed: int,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """Rows ``start:stop`` of the shared (num_params, dim) Rademacher matrix, entries +-1/sqrt(dim).

    Row ``r`` depends only on (seed, r): rows are made in fixed chunks of ``PROJECTION_CHUNK``.
    """
    rows = []
    for chunk in range(start // PROJECTION_CHUNK, -(-stop // PROJECTION_CHUNK)):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + chunk)
        signs = torch.randint(0, 2, (PROJECTION_CHUNK, dim), generator=generator)
        lo = max(start - chunk * PROJECTION_CHUNK, 0)
        hi = min(stop - chunk * PROJECTION_CHUNK, PROJECTION_CHUNK)
        rows.append(signs[lo:hi])
    return (torch.cat(rows).to(device, torch.float32) * 2.0 - 1.0) / dim**0.5


def project(gradients: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """``gradients`` (n, num_params) times the shared Rademacher matrix, chunk by chunk: (n, dim)."""
    out = gradients.new_zeros(len(gradients), dim)
    for lo in range(0, gradients.shape[1], PROJECTION_CHUNK):
        hi = min(lo + PROJECTION_CHUNK, gradients.shape[1])
        out += gradients[:, lo:hi] @ rademacher_rows(lo, hi, dim, seed, gradients.device)
    return out


def summed_output_gradients(agent: Any, store: TrajectoryStore, params: str = "adapter",
                            rank: int = 8, max_segments: int = 8, seed: int = 0,
                            progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """(E, num_params) gradient of the summed action-head outputs of each episode's segments."""
    model_agent, chosen, route = kernel_agent(agent, params, rank, seed)
    encoder = SegmentEncoder(model_agent, store, max_segments)
    rows = []
    for e in range(store.num_episodes):
        batch = encoder.batch(np.flatnonzero(encoder.owner == e))
        actions = model_agent.model.predict(encoder.hidden(batch, route))
        total = (actions * batch.mask[..., None]).sum()
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(total, chosen)]))
        if progress is not None:
            progress(1)
    return torch.stack(rows)


def ntk_features(agent: Any, store: TrajectoryStore, cfg: NTKConfig, seed: int,
                 progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """(E, p) projected gradients: ``ntk_features(a) @ ntk_features(b).T`` is the kernel."""
    grads = summed_output_gradients(agent, store, cfg.params, cfg.rank, cfg.max_segments, seed,
                                    progress)
    return project(grads, cfg.dim, seed)


def reverse_knn(pool: np.ndarray, target: np.ndarray, keep: int) -> np.ndarray:
    """Indices of ``keep`` pool rows chosen by a reverse-nearest-neighbour vote.

    Each target row votes for its ``ceil(keep / len(target))`` most cosine-similar pool rows;
    pool rows are ranked by votes, then by their best similarity to any target row.
    """
    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    sim = unit(target.astype(np.float64)) @ unit(pool.astype(np.float64)).T  # (T, N)
    k = min(len(pool), -(-keep // len(target)))
    nearest = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    votes = np.bincount(nearest.ravel(), minlength=len(pool))
    order = np.lexsort((-sim.max(0), -votes))  # votes first, then best similarity
    return np.sort(order[:keep])


def ntk_select(agent: Any, pool: TrajectoryStore, target: TrajectoryStore, count: int,
               cfg: NTKConfig | None = None, seed: int = 0,
               progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Indices of ``count`` pool episodes with the highest mean kernel value against ``target``.

    ``progress(1, total)`` is called after every per-episode gradient.
    """
    cfg = cfg or NTKConfig()
    if not 0 < count <= pool.num_episodes:
        raise ValueError(f"NTK count must be in [1, {pool.num_episodes}] (the pool size), got {count}")
    keep = min(pool.num_episodes, int(np.ceil(cfg.prefilter_factor * count)))
    candidates = reverse_knn(dt_features(agent, pool, cfg.max_segments),
                             dt_features(agent, target, cfg.max_segments), keep)
    total = len(candidates) + target.num_episodes
    tick = None if progress is None else (lambda n: progress(n, total))
    phi_pool = ntk_features(agent, pool.select_episodes(candidates), cfg, seed, tick)
    phi_target = ntk_features(agent, target, cfg, seed, tick)
    scores = phi_pool @ phi_target.mean(0)  # mean kernel value against the target set
    best = torch.topk(scores, count).indices.cpu().numpy()
    return np.sort(candidates[best])
