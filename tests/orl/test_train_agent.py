"""train-agent / orl eval end to end on a tiny D4RL-format file and Pendulum (seconds)."""

import json

import h5py
import numpy as np
import pytest
import yaml

from orl.cli import main as orl_main
from orl.cli import train_agent_main


def write_pendulum_like(path, episodes=4, length=15, obs_dim=3):
    rng = np.random.default_rng(0)
    n = episodes * length
    with h5py.File(path, "w") as f:
        f["observations"] = rng.normal(size=(n, obs_dim))
        f["actions"] = rng.uniform(-1, 1, size=(n, 1))
        f["rewards"] = rng.normal(size=n)
        f["terminals"] = np.zeros(n, bool)
        f["timeouts"] = (np.arange(n) % length) == length - 1


def tiny_args(tmp_path, data, *extra):
    return [
        f"data.datasets=[{data}]", "data.eval_tasks=[Pendulum-v1]",
        "model.embed_dim=16", "model.n_layer=1", "model.n_head=1",
        "sampler.context_len=4", "sampler.batch_size=8", "sampler.rtg_scale=1.0",
        "train.steps=12", "train.log_every=4", "train.checkpoint_every=6", "train.warmup_steps=2",
        "eval.episodes=2", "eval.num_envs=2", "eval.max_steps=10",
        "run.logger=csv", f"run.out_dir={tmp_path / 'runs'}", "run.name=tiny", *extra,
    ]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "pendulum-tiny.hdf5"
    write_pendulum_like(path)
    return path


def test_train_resume_and_eval(tmp_path, data, capsys):
    assert train_agent_main(tiny_args(tmp_path, data, "agent.name=dt")) == 0
    run = tmp_path / "runs" / "tiny"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["steps"] == 12 and saved["agent"]["name"] == "dt"
    assert (run / "checkpoints" / "final" / "model.safetensors").is_file()
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 4 and steps[-1] == 12
    assert "Pendulum-v1" in capsys.readouterr().out  # the per-task table

    assert train_agent_main(["--resume", str(run), "train.steps=18"]) == 0
    state = json.loads((run / "checkpoints" / "final" / "state.json").read_text())
    assert state["step"] == 18

    out = tmp_path / "eval.json"  # evaluated on the run's data.eval_tasks, not the file's name
    assert orl_main(["eval", str(run), "--episodes", "2", "--num-envs", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert "success/Pendulum-v1" in result or "return/Pendulum-v1" in result
    assert result["return_mean"] < 0  # Pendulum rewards are negative

    (run / "checkpoints" / "final" / "state.json").write_text("{not json")
    assert orl_main(["eval", str(run / "checkpoints" / "final")]) == 2
    assert "error:" in capsys.readouterr().err


def test_tasks_without_episodes_are_reported(monkeypatch):
    import orl.datasets.loading
    import orl.experiment
    from orl.config import load_config
    from orl.config.experiment import ExperimentConfig
    from orl.datasets.store import TrajectoryStore

    rng = np.random.default_rng(0)
    store = TrajectoryStore(
        observations=rng.normal(size=(8, 3)), actions=rng.uniform(-1, 1, (8, 1)),
        rewards=np.ones(8), terminals=np.zeros(8, bool), timeouts=np.zeros(8, bool),
        episode_starts=np.array([0, 8]), episode_task=np.array([0]), task_names=["a", "b"])
    monkeypatch.setattr(orl.experiment, "dataset_sources", lambda cfg: (["x.hdf5"], []))
    monkeypatch.setattr(orl.datasets.loading, "load", lambda sources: store)
    with pytest.raises(ValueError, match=r"without any episode: \['b'\]"):
        orl.experiment.prepare(load_config(ExperimentConfig, None, []))


def test_help_lists_options_with_defaults(capsys):
    with pytest.raises(SystemExit):
        train_agent_main(["--help"])
    text = capsys.readouterr().out
    assert "train.steps" in text and "2000" in text and "sampler.context_len" in text


@pytest.mark.parametrize(
    "extra, message",
    [
        (["train.stepz=3"], "Did you mean train.steps"),
        (["train.lr=fast"], "train.lr: expected float"),
        (["data.eval_tasks=[MountainCarContinuous-v0]"], "observation"),
        (["data.datasets=[metaworld/reach-v3/expert-v7]"], "orl data generate reach-v3"),
    ],
)
def test_bad_input_is_reported_before_training(tmp_path, data, capsys, extra, message):
    assert train_agent_main(tiny_args(tmp_path, data, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs" / "tiny" / "checkpoints").exists()


def test_resume_of_a_missing_run(tmp_path, capsys):
    assert train_agent_main(["--resume", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_existing_run_dir_is_not_overwritten(tmp_path, data, capsys):
    assert train_agent_main(tiny_args(tmp_path, data)) == 0
    before = (tmp_path / "runs" / "tiny" / "checkpoints" / "final" / "model.safetensors").read_bytes()
    assert train_agent_main(tiny_args(tmp_path, data)) == 2
    assert "--resume" in capsys.readouterr().err
    after = (tmp_path / "runs" / "tiny" / "checkpoints" / "final" / "model.safetensors").read_bytes()
    assert before == after


@pytest.mark.parametrize("overrides, prefix", [
    ([], "mtdt-MT10-s3-"),
    (["continual.enabled=true", "continual.tasks=[OCW10]", "continual.method=ewc"],
     "continual-ewc-OCW10-s3-"),
    (["federated.strategy=fedskip", "federated.rounds=6"], "fedskip-mtdt-MT10-s3-"),
])
def test_default_run_name_says_what_runs(overrides, prefix):
    from orl.config.experiment import ExperimentConfig
    from orl.config.loader import load_config
    from orl.experiment import default_run_name

    cfg = load_config(ExperimentConfig, None, ["run.seed=3", "agent.name=mtdt", *overrides])
    assert default_run_name(cfg).startswith(prefix)
