"""Learners that produce or transform policies. ``build_agent`` makes one from a config."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from orl.agents.base import Agent
from orl.agents.dt import DataSpec, DTAgent
from orl.agents.harmodt.agent import HarmoDTAgent
from orl.model.dt import DTConfig


def build_agent(agent_cfg: Any, model_cfg: Any, sampler_cfg: Any, spec: DataSpec,
                state_mean: np.ndarray, state_std: np.ndarray,
                prompts: dict[str, torch.Tensor] | None = None) -> Agent:
    """The agent named by ``agent_cfg.name`` for data described by ``spec``.

    ``*_cfg`` are the ``agent``, ``model`` and ``sampler`` sections of an ``ExperimentConfig``.
    """
    name = agent_cfg.name
    multi_task = name in ("mtdt", "mtbc") and agent_cfg.task_embedding
    dt_cfg = DTConfig(
        obs_dim=spec.obs_dim,
        act_dim=spec.act_dim,
        context_len=sampler_cfg.context_len,
        return_conditioned=name != "mtbc",
        num_tasks=len(spec.task_names) if multi_task else 0,
        prompt_len=sampler_cfg.prompt_len if name in ("prompt_dt", "harmodt") else 0,
        action_low=spec.action_low,
        action_high=spec.action_high,
        **asdict(model_cfg),
    )
    if name == "prompt_dt" and sampler_cfg.prompt_len <= 0:
        raise ValueError("agent.name=prompt_dt needs sampler.prompt_len > 0 (e.g. 5)")
    if name == "dt" and len(spec.task_names) != 1:
        raise ValueError(
            f"agent.name=dt trains on one task, but the data holds {len(spec.task_names)} "
            "(use mtdt, prompt_dt or mtbc for several)"
        )
    if name == "harmodt":
        if len(spec.task_names) < 2:
            raise ValueError("agent.name=harmodt needs at least two tasks")
        seed = int(torch.randint(2**31 - 1, ()))  # from the run's seeded global generator
        return HarmoDTAgent(dt_cfg, spec, state_mean, state_std, prompts, agent_cfg.harmodt,
                            torch.Generator().manual_seed(seed))
    return DTAgent(dt_cfg, spec, state_mean, state_std, prompts if name == "prompt_dt" else None)


__all__ = ["Agent", "DTAgent", "DataSpec", "HarmoDTAgent", "build_agent"]
