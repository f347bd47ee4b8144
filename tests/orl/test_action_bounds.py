"""A tanh action head acts in the env's action space (issue 15, item 2): its bounds come from the
data's env or the eval env; unknown bounds with larger actions are refused, never clipped."""

import json
import math

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch

from orl.agents import DataSpec, build_agent
from orl.api import load_agent
from orl.cli import train_agent_main
from orl.config.experiment import AgentConfig, ModelConfig
from orl.datasets.origin import action_bounds, tanh_bounds
from orl.datasets.sampler import SamplerConfig
from orl.model.dt import DecisionTransformer, DTConfig

WIDE = "OrlWideToy-v0"  # actions in [-3, 3]
EPISODE = 10


class WideEnv(gym.Env):
    """Rewards actions near 2.5, which a [-1, 1] policy cannot reach."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-5, 5, (3,), np.float32)
        self.action_space = gym.spaces.Box(-3, 3, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.np_random.normal(size=3).astype(np.float32), {}

    def step(self, action):
        obs = self.np_random.normal(size=3).astype(np.float32)
        return obs, -abs(float(action[0]) - 2.5), False, False, {}


if WIDE not in gym.registry:
    gym.register(WIDE, entry_point=WideEnv, max_episode_steps=EPISODE)


def tiny_model(**bounds):
    return DecisionTransformer(DTConfig(obs_dim=2, act_dim=2, context_len=2, embed_dim=8, n_layer=1,
                                        n_head=1, **bounds))


def test_tanh_output_is_scaled_to_the_bounds():
    model = tiny_model(action_low=[-3.0, 0.0], action_high=[3.0, 2.0])
    out = torch.tensor([[0.0, 0.0], [50.0, 50.0], [-50.0, -50.0], [0.5, -0.5]])
    expected = torch.tensor([[0.0, 1.0], [3.0, 2.0], [-3.0, 0.0],
                             [3 * math.tanh(0.5), 1 + math.tanh(-0.5)]])
    torch.testing.assert_close(model.squash(out), expected)
    assert "action_center" not in model.state_dict()  # from the config, not the weights


@pytest.mark.parametrize("bounds", [{}, {"action_low": [-1.0, -1.0], "action_high": [1.0, 1.0]}])
def test_unit_or_unknown_bounds_give_the_exact_tanh(bounds):
    model = tiny_model(**bounds)
    out = torch.randn(4, 2) * 3
    assert model.action_half is None and torch.equal(model.squash(out), torch.tanh(out))


@pytest.mark.parametrize("bounds, message", [
    ({"action_low": [-1.0], "action_high": [1.0]}, "need 2 values"),
    ({"action_low": [1.0, 1.0], "action_high": [1.0, 2.0]}, "low < high"),
    ({"action_low": [-math.inf, 0.0], "action_high": [1.0, 1.0]}, "finite"),
])
def test_bad_bounds_are_refused(bounds, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(**bounds)


def test_checkpoints_without_bounds_load_as_before():
    saved = {"obs_dim": 2, "act_dim": 2, "task_names": ["a"], "rtg_scale": 1.0,
             "target_returns": [1.0]}  # a data_spec written before action bounds were recorded
    spec = DataSpec(**saved)
    agent = build_agent(AgentConfig("dt"), ModelConfig(), SamplerConfig(context_len=2), spec,
                        np.zeros((1, 2)), np.ones((1, 2)))
    assert agent.model.action_half is None and agent.model.cfg.tanh_actions


def test_unknown_bounds_refuse_larger_actions_and_warn_otherwise():
    with pytest.raises(ValueError, match="model.tanh_actions=false"):
        tanh_bounds(None, np.array([[0.5], [-2.0]]))
    with pytest.warns(UserWarning, match="bounds are unknown"):
        assert tanh_bounds(None, np.array([[0.5], [-1.0]])) == ([-1.0], [1.0])
    with pytest.warns(UserWarning, match="50.0% of the dataset's actions lie outside"):
        tanh_bounds(([-1.0], [1.0]), np.array([[0.5], [2.0]]))


def test_dataset_and_eval_env_bounds_must_agree(tmp_path):
    path = write_wide(tmp_path / "wide.hdf5", env_id=WIDE)
    assert action_bounds([str(path)], []) is None  # a D4RL file records no bounds itself
    assert action_bounds([str(path)], [WIDE]) == ([-3.0], [3.0])
    assert action_bounds([str(path)], ["Pendulum-v1"]) == ([-2.0], [2.0])
    with pytest.raises(ValueError, match="Action bounds differ"):
        action_bounds([str(path)], [WIDE, "Pendulum-v1"])


def write_wide(path, env_id=None, episodes=6):
    """D4RL-format data of ``WideEnv``: actions near 2.5 (all beyond 1), optionally naming the env."""
    rng = np.random.default_rng(0)
    n = episodes * EPISODE
    with h5py.File(path, "w") as f:
        f["observations"] = rng.normal(size=(n, 3))
        f["actions"] = np.clip(2.5 + 0.1 * rng.normal(size=(n, 1)), -3, 3)
        f["rewards"] = -np.abs(f["actions"][:, 0] - 2.5)
        f["terminals"] = np.zeros(n, bool)
        f["timeouts"] = (np.arange(n) % EPISODE) == EPISODE - 1
        if env_id:
            f.attrs["env_id"] = env_id
    return path


def wide_args(tmp_path, data, *extra):
    return [f"data.datasets=[{data}]", "agent.name=dt", "model.embed_dim=16", "model.n_layer=1",
            "model.n_head=1", "model.dropout=0.0", "sampler.context_len=4", "sampler.batch_size=16",
            "sampler.rtg_scale=10.0", "train.steps=60", "train.lr=0.01", "train.warmup_steps=2",
            "train.log_every=30", "train.checkpoint_every=60", "eval.episodes=1", "eval.num_envs=1",
            "run.logger=none", f"run.out_dir={tmp_path / 'runs'}", "run.name=wide", *extra]


def test_policy_for_a_wide_action_space_acts_beyond_one(tmp_path):
    data = write_wide(tmp_path / "wide.hdf5", env_id=WIDE)
    assert train_agent_main(wide_args(tmp_path, data)) == 0
    policy, tasks = load_agent(tmp_path / "runs" / "wide", device="cpu", with_tasks=True)
    assert tasks == [WIDE]
    policy.reset(2)
    actions = policy.act(np.random.default_rng(1).normal(size=(2, 3)), np.zeros(2))
    assert (actions > 1.5).all() and (actions <= 3.0).all()


def test_wide_actions_without_known_bounds_are_refused(tmp_path, capsys):
    data = write_wide(tmp_path / "wide.hdf5")
    assert train_agent_main(wide_args(tmp_path, data)) == 2
    assert "bounds are unknown" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "wide" / "checkpoints").exists()


def test_resuming_a_run_trained_with_other_bounds_is_refused(tmp_path, capsys):
    data = write_wide(tmp_path / "wide.hdf5", env_id=WIDE)
    short = ["train.steps=4", "train.checkpoint_every=4", "train.log_every=2"]
    assert train_agent_main(wide_args(tmp_path, data, *short)) == 0
    run = tmp_path / "runs" / "wide"
    spec = json.loads((run / "data_spec.json").read_text())
    assert (spec["action_low"], spec["action_high"]) == ([-3.0], [3.0])
    for key in ("action_low", "action_high", "eval_tasks"):  # as an older version wrote it
        del spec[key]
    (run / "data_spec.json").write_text(json.dumps(spec))
    assert train_agent_main(["--resume", str(run), "train.steps=8"]) == 2
    assert "trained with tanh actions in low [-1.0], high [1.0]" in capsys.readouterr().err
