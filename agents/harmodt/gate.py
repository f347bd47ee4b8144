"""G-HarmoDT's gating network: which task group an env is playing, without its task id.

Our design (the extension paper gives no code): a small MLP embeds every raw observation of the
recent context window, the embeddings of the real (unpadded) steps are averaged, and a linear
layer gives one logit per group. Observations are standardised with statistics pooled over all
training tasks, so nothing task-specific is needed at test time. It is trained on the offline
segments with the groups of their tasks as labels (cross-entropy, alongside the DT loss).
"""

from __future__ import annotations

import torch
from torch import nn


def pooled_stats(mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the union of tasks (equal weights) from per-task (T, D) statistics."""
    pooled_mean = mean.mean(dim=0)
    second_moment = (std**2 + mean**2).mean(dim=0)
    return pooled_mean, (second_moment - pooled_mean**2).clamp_min(1e-12).sqrt()


class GroupGate(nn.Module):
    """Group logits (B, num_groups) from raw observations (B, K, obs_dim) and their validity (B, K)."""

    def __init__(self, obs_dim: int, num_groups: int, obs_mean: torch.Tensor, obs_std: torch.Tensor,
                 hidden: int = 128) -> None:
        super().__init__()
        self.register_buffer("obs_mean", obs_mean.float().clone())
        self.register_buffer("obs_std", obs_std.float().clamp_min(1e-6).clone())
        self.embed = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(),
                                   nn.Linear(hidden, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, num_groups)

    def forward(self, states: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = self.embed((states - self.obs_mean) / self.obs_std)
        weight = valid.unsqueeze(-1).to(h.dtype)
        return self.out((h * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0))
