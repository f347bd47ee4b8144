"""DATAMASK: learn one logit per item with policy gradients (ICLR 2026).

A mask is ``S`` draws without replacement from ``softmax(logits)`` (Gumbel top-k). For a group
of ``G`` masks the objective ``f(U) = lam * quality(U) + (1 - lam) * diversity(U)`` is
evaluated, advantages are group-normalised, ``(f_j - mean) / std``, and the logits ascend
``mean_j adv_j * grad log P(M_j)`` (REINFORCE; ``P`` is the probability of the ordered draw).

Accelerations: items in the bottom ``prefilter`` fraction by quality are dropped and the logits
start from z-scored quality; every step works on a random block of items (masks of the
block's share of the budget) and updates a random ``update_frac`` of the block's logits. The
selection is the ``count`` items with the highest final logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

DIVERSITIES = ("cosine", "disf")


@dataclass
class DataMaskConfig:
    """DATAMASK hyper-parameters (defaults: the paper's ranges where it gives one)."""

    lam: float = 0.3  # weight of quality; 1 - lam weighs diversity
    diversity: str = "cosine"  # "cosine": 1 - mean pairwise cosine; "disf": 1 - DiSF mass
    steps: int = 300
    group_size: int = 128  # G masks per step
    lr: float = 0.5
    block_size: int = 4096
    update_frac: float = 0.1  # fraction of the block's logits updated per step
    prefilter: float = 0.4  # drop this bottom fraction by quality before learning
    init_scale: float = 1.0  # initial logits = init_scale * z-scored quality

    def __post_init__(self) -> None:
        rules = [
            ("lam", 0.0 <= self.lam <= 1.0, "in [0, 1]"),
            ("diversity", self.diversity in DIVERSITIES, f"one of {DIVERSITIES}"),
            ("steps", self.steps >= 0, ">= 0"),
            ("group_size", self.group_size >= 2, ">= 2"),
            ("lr", self.lr > 0, "> 0"),
            ("block_size", self.block_size >= 2, ">= 2"),
            ("update_frac", 0.0 < self.update_frac <= 1.0, "in (0, 1]"),
            ("prefilter", 0.0 <= self.prefilter < 1.0, "in [0, 1)"),
        ]
        for name, ok, expected in rules:
            if not ok:
                raise ValueError(f"datamask.{name} must be {expected}, got {getattr(self, name)!r}")


def _cosine_from_sums(unit_sum: torch.Tensor, self_sim: torch.Tensor, s: int) -> torch.Tensor:
    """``(1 - mean pairwise cosine) / 2`` from the sum of a set's unit vectors and of their
    squared norms (``sum_{i != j} cos_ij = |sum_i u_i|^2 - sum_i |u_i|^2``)."""
    return 0.5 * (1.0 - (unit_sum.pow(2).sum(-1) - self_sim) / (s * (s - 1)))


def cosine_diversity(features: torch.Tensor) -> torch.Tensor:
    """``(1 - mean pairwise cosine similarity) / 2`` in [0, 1] of sets ``(G, S, d)``, per set."""
    unit = torch.nn.functional.normalize(features, dim=-1)
    return _cosine_from_sums(unit.sum(1), unit.pow(2).sum((1, 2)), features.shape[1])


def disf_diversity(features: torch.Tensor) -> torch.Tensor:
    """``1 - offdiag / (d (d - 1))`` in [0, 1] of sets ``(G, S, d)`` (see ``disf.offdiag_mass``)."""
    centred = features - features.mean(1, keepdim=True)
    var = centred.pow(2).sum(1, keepdim=True)
    z = centred * torch.where(var > 1e-12 * var.amax(-1, keepdim=True).clamp_min(1e-30),
                              var.rsqrt(), 0.0)
    corr = z.transpose(1, 2) @ z
    off = corr.pow(2).sum((1, 2)) - torch.diagonal(corr, dim1=1, dim2=2).pow(2).sum(-1)
    d = features.shape[-1]
    return 1.0 - off / max(d * (d - 1), 1)


def mask_objective(features: torch.Tensor, quality: torch.Tensor, masks: torch.Tensor,
                   lam: float, diversity: str) -> torch.Tensor:
    """``f`` of every mask: ``masks`` (G, S) item indices into ``features`` (n, d), ``quality`` (n,)."""
    if diversity == "disf":
        return lam * quality[masks].mean(1) + (1.0 - lam) * disf_diversity(features[masks])
    # cosine: sums over each mask as one (G, n) x (n, d) product, no (G, S, d) gather
    membership = torch.zeros(len(masks), len(features), dtype=features.dtype, device=features.device)
    membership.scatter_(1, masks, 1.0)
    unit = torch.nn.functional.normalize(features, dim=-1)
    s = masks.shape[1]
    div = _cosine_from_sums(membership @ unit, membership @ unit.pow(2).sum(-1), s)
    return lam * (membership @ quality) / s + (1.0 - lam) * div


def gumbel_masks(logits: torch.Tensor, groups: int, size: int,
                 generator: torch.Generator) -> torch.Tensor:
    """(G, S) ordered draws without replacement from ``softmax(logits)`` (Gumbel top-k)."""
    uniform = torch.rand(groups, len(logits), generator=generator, device=logits.device,
                         dtype=logits.dtype)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))
    return torch.topk(logits.detach() + gumbel, size, dim=1).indices


def ordered_log_prob(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """log P of each ordered draw (G, S) without replacement (Plackett-Luce), differentiable."""
    shifted = logits - logits.max().detach()
    weights = shifted.exp()
    picked = weights[masks]  # (G, S)
    before = torch.cumsum(picked, 1) - picked  # weight already drawn before each pick
    remaining = (weights.sum() - before).clamp_min(1e-30)
    return (shifted[masks] - remaining.log()).sum(1)


def datamask_select(
    features: torch.Tensor,
    quality: torch.Tensor,
    count: int,
    cfg: DataMaskConfig | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, torch.Tensor]:
    """Indices of ``count`` items of ``features`` (N, d) chosen by DATAMASK, and the final logits
    (N,; ``-inf`` for pre-filtered items). ``quality`` (N,) is in [0, 1] (normalised return).
    ``progress(1, steps)`` is called after every step."""
    cfg = cfg or DataMaskConfig()
    n = len(features)
    if not 0 < count <= n:
        raise ValueError(f"DATAMASK count must be in [1, {n}] (the pool size), got {count}")
    if quality.shape != (n,):
        raise ValueError(f"quality must have shape ({n},), got {tuple(quality.shape)}")
    device = features.device
    generator = torch.Generator(device=device).manual_seed(seed)
    keep = max(count, int(np.ceil((1.0 - cfg.prefilter) * n)))
    pool = torch.sort(torch.topk(quality, keep).indices).values  # survivors, in pool order
    feats, qual = features[pool], quality[pool].to(features.dtype)
    z = (qual - qual.mean()) / qual.std().clamp_min(1e-12) if keep > 1 else qual * 0
    logits = cfg.init_scale * z
    block = min(cfg.block_size, keep)
    size = min(max(2, round(count * block / keep)), block - 1) if block > 2 else 1
    steps = cfg.steps if count < keep and block > 2 else 0
    for _ in range(steps):
        items = torch.randperm(keep, generator=generator, device=device)[:block]
        block_logits = logits[items].clone().requires_grad_(True)
        masks = gumbel_masks(block_logits, cfg.group_size, size, generator)
        with torch.no_grad():
            value = mask_objective(feats[items], qual[items], masks, cfg.lam, cfg.diversity)
            advantage = (value - value.mean()) / value.std().clamp_min(1e-12)
        (grad,) = torch.autograd.grad((advantage * ordered_log_prob(block_logits, masks)).mean(),
                                      block_logits)
        update = torch.randperm(block, generator=generator, device=device)[
            : max(1, round(cfg.update_frac * block))]
        logits[items[update]] += cfg.lr * grad[update]
        if progress is not None:
            progress(1, steps)
    chosen = pool[torch.topk(logits, count).indices]
    full = torch.full((n,), -torch.inf, dtype=logits.dtype, device=device)
    full[pool] = logits
    return np.sort(chosen.cpu().numpy()), full
