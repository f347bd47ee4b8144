"""The interface between a policy and :func:`orl.eval.evaluate`."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Policy(Protocol):
    """Acts on a batch of envs that run in lockstep.

    ``reset`` starts new episodes in all ``num_envs`` envs. A policy may also take
    ``reset(num_envs, tasks=[...])`` (one task name per env); the evaluator passes ``tasks`` only
    to policies whose ``reset`` has that parameter. A policy with a ``keep(rows)`` method is
    told when envs finish their episodes: ``rows`` are the indices (ascending, into the envs it
    acted for so far) of those still playing, and later ``act`` calls get only their
    observations, in that order (see :func:`keeps_rows`). Without it, ``act`` gets every env's
    observation until the episodes of all are over.
    """

    def reset(self, num_envs: int) -> None:
        """Forget the history: every env starts a new episode."""

    def act(self, obs: np.ndarray, reward: np.ndarray) -> np.ndarray:
        """Actions (N, act_dim) for observations (N, obs_dim).

        ``reward`` (N,) is the reward of the previous action, 0 right after ``reset``.
        """


def reset_policy(policy: Policy, num_envs: int, tasks: Sequence[str]) -> None:
    """``policy.reset(num_envs)``, with ``tasks=list(tasks)`` if its ``reset`` accepts it."""
    if accepts_tasks(policy):
        policy.reset(num_envs, tasks=list(tasks))
    else:
        policy.reset(num_envs)


def accepts_tasks(policy: Policy) -> bool:
    """Whether ``policy.reset`` has a ``tasks`` parameter (or ``**kwargs``)."""
    params = inspect.signature(policy.reset).parameters.values()
    return any(p.name == "tasks" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def keeps_rows(policy: Policy) -> bool:
    """Whether ``policy`` can drop the envs that finished their episodes (``keep(rows)``)."""
    return callable(getattr(policy, "keep", None))
