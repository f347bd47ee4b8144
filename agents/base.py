"""What every learner provides to the trainer and to evaluation."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from orl.train.callbacks import Callback


class Agent(nn.Module):
    """An ``nn.Module`` that owns its model(s) and knows its loss.

    ``loss`` must not synchronise with the host (no ``.item()``): metrics are returned as
    tensors and read by the trainer only when it logs.
    """

    def loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scalar training loss of a batch and named metric tensors (detached)."""
        raise NotImplementedError

    def callbacks(self) -> list[Callback]:
        """Trainer callbacks the algorithm needs (mask updates, penalties, ...)."""
        return []

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """Parameter sets whose gradient norms the trainer clips separately (default: one set)."""
        return [list(self.parameters())]

    def policy(self, **kwargs: Any) -> Any:
        """An evaluation policy (``reset(num_envs)``, ``act(obs, reward)``)."""
        raise NotImplementedError
