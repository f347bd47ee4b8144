"""Tiny continual-learning fixtures shared by the continual and CompoFormer tests: a gym env
whose success is the sign of the action, and D4RL-format data of it (made in the test).

The ``toys`` fixture hands the helpers of this module to the tests."""

import sys

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch
import yaml

from orl.agents.continual.runner import build_continual_agent
from orl.agents.dt import DataSpec
from orl.config import from_dict
from orl.config.experiment import ExperimentConfig
from orl.datasets.sampler import SamplerConfig, SegmentSampler

EPISODE = 8
ENVS = {"ToySignPlus-v0": 1.0, "ToySignMinus-v0": -1.0}
DESCRIPTIONS = {"ToySignPlus-v0": "Push a puck across the table to a goal position.",
                "ToySignMinus-v0": "Rotate a dial on the table to a target angle."}


class SignEnv(gym.Env):
    """Success when the action has the env's sign (|a| > 0.5); 3-d observations."""

    def __init__(self, sign: float) -> None:
        self.sign = sign
        self.observation_space = gym.spaces.Box(-5, 5, (3,), np.float32)
        self.action_space = gym.spaces.Box(-1, 1, (1,), np.float32)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.normal(size=3).astype(np.float32), {}

    def step(self, action):
        self.t += 1
        value = float(action[0]) * self.sign
        obs = self.np_random.normal(size=3).astype(np.float32)
        return obs, value, False, self.t >= EPISODE, {"success": value > 0.5}


for env_id, sign in ENVS.items():
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=SignEnv, kwargs={"sign": sign}, max_episode_steps=EPISODE)


def write_sign_data(path, sign: float, episodes: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = episodes * EPISODE
    actions = np.clip(sign * 0.9 + 0.05 * rng.normal(size=(n, 1)), -1, 1)
    with h5py.File(path, "w") as f:
        f["observations"] = rng.normal(size=(n, 3))
        f["actions"] = actions
        f["rewards"] = (actions[:, 0] * sign)
        f["terminals"] = np.zeros(n, bool)
        f["timeouts"] = (np.arange(n) % EPISODE) == EPISODE - 1
    return path


def stage_list(tmp_path, envs):
    """One stage per env id in ``envs`` (repeats allowed), each with its own data file."""
    stages = []
    for i, env_id in enumerate(envs):
        path = write_sign_data(tmp_path / f"stage{i}.hdf5", ENVS[env_id], seed=i)
        stages.append({"name": f"s{i}", "dataset": str(path), "eval_task": env_id,
                       "description": DESCRIPTIONS[env_id]})
    return stages


def tiny_config(tmp_path, envs, method="finetune", **continual):
    """Path of a YAML config training ``envs`` in sequence with a tiny model."""
    cfg = {
        "continual": {"enabled": True, "method": method, "stages": stage_list(tmp_path, envs),
                      "compose_warmup_steps": 4, "attention_dim": 8, "head_hidden": 8,
                      "importance_samples": 4, "lora_rank": 2, **continual},
        "model": {"embed_dim": 8, "n_layer": 1, "n_head": 1, "max_timestep": 20, "dropout": 0.0},
        "sampler": {"context_len": 3, "batch_size": 8, "rtg_scale": 1.0},
        "train": {"steps": 10, "lr": 0.01, "warmup_steps": 1, "log_every": 5, "eval_every": 5,
                  "checkpoint_every": 5},
        "eval": {"episodes": 2, "num_envs": 2},
        "run": {"logger": "csv", "out_dir": str(tmp_path / "runs"), "name": "seq"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def tiny_agent(tmp_path, envs, method, **continual):
    """A continual agent over ``envs`` and one sampler per stage (task index = stage)."""
    from orl.agents.continual.stages import load_stage_stores, resolve_stages

    cfg = from_dict(ExperimentConfig, yaml.safe_load(tiny_config(tmp_path, envs, method,
                                                                 **continual).read_text()))
    stores = load_stage_stores(resolve_stages(cfg))
    spec = DataSpec(obs_dim=3, act_dim=1, task_names=[f"s{i}" for i in range(len(envs))],
                    rtg_scale=1.0, target_returns=[EPISODE * 0.9] * len(envs))
    torch.manual_seed(0)
    agent = build_continual_agent(cfg, spec, np.zeros((len(envs), 3)), np.ones((len(envs), 3)))
    samplers = [SegmentSampler(s, SamplerConfig(context_len=3, batch_size=8), seed=i)
                for i, s in enumerate(stores)]
    return cfg, agent, samplers


@pytest.fixture
def toys():
    return sys.modules[__name__]
