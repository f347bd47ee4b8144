"""Training on your own data (issue 15, item 7): without data.eval_tasks a run is evaluated on the
env its dataset names (Minari env spec, D4RL file attribute ``env_id``), says so when it names
none, and ``orl eval RUN`` works either way."""

import json
import warnings

import gymnasium as gym
import h5py
import numpy as np
import pytest

from orl.cli import main as orl_main
from orl.cli import train_agent_main
from orl.datasets.origin import action_bounds, dataset_eval_tasks

from .test_train_agent import write_pendulum_like


def write_pendulum(path, env_id=None):
    write_pendulum_like(path)
    if env_id:
        with h5py.File(path, "a") as f:
            f.attrs["env_id"] = env_id
    return path


def write_minari_pendulum(dataset_id, episodes=3, steps=12):
    """A Minari dataset of random Pendulum-v1 episodes (cut to ``steps``), made with Minari's API."""
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    env = gym.make("Pendulum-v1")
    buffers = []
    for seed in range(episodes):
        obs, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        observations, actions, rewards = [obs], [], []
        for _ in range(steps):
            actions.append(env.action_space.sample())
            obs, reward, _, _, _ = env.step(actions[-1])
            observations.append(obs)
            rewards.append(reward)
        buffers.append(EpisodeBuffer(
            id=seed, observations=np.array(observations), actions=np.array(actions),
            rewards=np.array(rewards), terminations=np.zeros(steps, bool),
            truncations=np.arange(steps) == steps - 1, infos={}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no author, code permalink, ...
        minari.create_dataset_from_buffers(dataset_id, buffers, env=env, algorithm_name="random")


def run_args(tmp_path, data, name, *extra):
    return [f"data.datasets=[{data}]", "agent.name=dt", "model.embed_dim=16", "model.n_layer=1",
            "model.n_head=1", "sampler.context_len=4", "sampler.batch_size=8",
            "sampler.rtg_scale=100.0", "train.steps=6", "train.log_every=3",
            "train.checkpoint_every=6", "train.warmup_steps=1", "eval.episodes=1", "eval.num_envs=1",
            "eval.max_steps=5", "run.logger=csv", f"run.out_dir={tmp_path / 'runs'}",
            f"run.name={name}", *extra]


def eval_json(tmp_path, run, *extra):
    out = tmp_path / f"{run.name}-eval.json"
    code = orl_main(["eval", str(run), "--episodes", "1", "--num-envs", "1", "--max-steps", "5",
                     "--json", str(out), *extra])
    return code, json.loads(out.read_text()) if code == 0 else None


def test_d4rl_file_naming_its_env_is_evaluated_on_it(tmp_path):
    data = write_pendulum(tmp_path / "mine.hdf5", env_id="Pendulum-v1")
    assert train_agent_main(run_args(tmp_path, data, "d4rl")) == 0
    run = tmp_path / "runs" / "d4rl"
    assert "return/Pendulum-v1" in json.loads((run / "eval_final.json").read_text())
    assert json.loads((run / "data_spec.json").read_text())["action_high"] == [2.0]
    code, result = eval_json(tmp_path, run)
    assert code == 0 and "return/Pendulum-v1" in result


def test_minari_dataset_is_evaluated_on_its_env(tmp_path):
    write_minari_pendulum("mine/pendulum-v0")
    assert train_agent_main(run_args(tmp_path, "mine/pendulum-v0", "minari")) == 0
    run = tmp_path / "runs" / "minari"
    assert "return/Pendulum-v1" in json.loads((run / "eval_final.json").read_text())
    spec = json.loads((run / "data_spec.json").read_text())
    assert (spec["action_low"], spec["action_high"], spec["eval_tasks"]) == ([-2.0], [2.0],
                                                                             ["Pendulum-v1"])
    code, result = eval_json(tmp_path, run)
    assert code == 0 and "return/Pendulum-v1" in result
    with pytest.raises(ValueError, match=r"action bounds \[-2, 2\] differ .* \[-1, 1\]"):
        action_bounds(["mine/pendulum-v0"], ["MountainCarContinuous-v0"])


def test_data_without_env_warns_and_eval_asks_for_tasks(tmp_path, capsys):
    data = write_pendulum(tmp_path / "anon.hdf5")
    with pytest.warns(UserWarning, match="the run evaluates nothing"):
        assert train_agent_main(run_args(tmp_path, data, "anon")) == 0
    run = tmp_path / "runs" / "anon"
    assert not (run / "eval_final.json").exists()
    code, _ = eval_json(tmp_path, run)
    assert code == 2 and "pass --tasks" in capsys.readouterr().err
    code, result = eval_json(tmp_path, run, "--tasks", "Pendulum-v1")
    assert code == 0 and "return/Pendulum-v1" in result


def test_an_unregistered_env_is_named_in_the_warning(tmp_path):
    data = write_pendulum(tmp_path / "odd.hdf5", env_id="NoSuchEnv-v0")
    with pytest.warns(UserWarning, match="'NoSuchEnv-v0' is not registered with gymnasium"):
        assert dataset_eval_tasks([str(data)]) == []
