"""Gymnasium MuJoCo locomotion envs used for D4RL-style data, with D4RL score normalization.

Short names (``"halfcheetah"``) map to gymnasium ids (``"HalfCheetah-v5"``). A normalized score
is ``100 * (return - random) / (expert - random)`` with D4RL's reference returns, so 0 is a
random policy and 100 is D4RL's expert.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

ENV_IDS: dict[str, str] = {
    "halfcheetah": "HalfCheetah-v5",
    "hopper": "Hopper-v5",
    "walker2d": "Walker2d-v5",
}


@dataclass(frozen=True)
class D4RLReference:
    """Undiscounted episode returns of D4RL's random and expert policies."""

    random_score: float
    expert_score: float


D4RL_REFERENCE: dict[str, D4RLReference] = {
    "halfcheetah": D4RLReference(-280.178953, 12135.0),
    "hopper": D4RLReference(-20.272305, 3234.3),
    "walker2d": D4RLReference(1.629008, 4592.3),
}


def _short_name(name: str) -> str | None:
    """``"halfcheetah"`` for ``"halfcheetah"``, ``"HalfCheetah-v5"`` or any version; else None."""
    key = re.sub(r"-v\d+$", "", name.strip()).lower()
    return key if key in ENV_IDS else None


def _unknown(name: str) -> ValueError:
    known = [*ENV_IDS, *ENV_IDS.values()]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"Unknown MuJoCo env {name!r}.{hint} Known: {', '.join(known)}.")


def make_mujoco(name: str, **kwargs: Any) -> gym.Env:
    """``gym.make`` the MuJoCo env for a short name or gymnasium id; kwargs go to ``gym.make``."""
    short = _short_name(name)
    if short is None:
        raise _unknown(name)
    return gym.make(ENV_IDS[short], **kwargs)


def reference_for(env_id: str) -> D4RLReference | None:
    """D4RL reference returns for ``env_id`` (short name or gymnasium id), None if it has none."""
    short = _short_name(env_id)
    return None if short is None else D4RL_REFERENCE[short]


def normalized_score(name_or_env_id: str, returns: float | np.ndarray) -> float | np.ndarray:
    """D4RL normalized score of ``returns`` (scalar or array); unknown envs raise ValueError."""
    ref = reference_for(name_or_env_id)
    if ref is None:
        raise _unknown(name_or_env_id)
    score = 100.0 * (np.asarray(returns, dtype=np.float64) - ref.random_score) / (
        ref.expert_score - ref.random_score
    )
    return float(score) if score.ndim == 0 else score
