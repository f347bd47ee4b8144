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
        (["model.max_timestep=10"], "model.max_timestep=10 is shorter than the longest training "
                                    "episode (15 steps): set model.max_timestep=15 or more."),
        (["model.max_timestep=16", "eval.max_steps=20"],
         "shorter than the evaluation episodes of Pendulum-v1 (20 steps)"),
        (["model.context_len=20"], "Did you mean sampler.context_len?"),
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


def final_weights(run):
    return (run / "checkpoints" / "final" / "model.safetensors").read_bytes()


def test_resume_of_a_run_that_stopped_before_its_first_checkpoint(tmp_path, data, monkeypatch,
                                                                   capsys):
    """It starts from step 0 with the saved config, says so, and ends as if never stopped."""
    from orl.train.trainer import Trainer

    assert train_agent_main(tiny_args(tmp_path, data, "run.name=whole")) == 0
    original = Trainer._checkpoint

    def killed(self, final):
        (self.run_dir / "checkpoints").mkdir()
        (self.run_dir / "checkpoints" / "step_00000006.tmp-0123abcd").mkdir()  # half written
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        train_agent_main(tiny_args(tmp_path, data))
    monkeypatch.setattr(Trainer, "_checkpoint", original)
    run = tmp_path / "runs" / "tiny"
    capsys.readouterr()
    assert train_agent_main(["--resume", str(run)]) == 0
    assert "has no checkpoint (it stopped before its first one): starting it from step 0" in (
        capsys.readouterr().out)
    assert final_weights(run) == final_weights(tmp_path / "runs" / "whole")
    assert not list((run / "checkpoints").glob("*.tmp-*"))


def test_resume_finishes_a_run_killed_while_copying_its_final_checkpoint(tmp_path, data,
                                                                         monkeypatch, capsys):
    """Resume writes what the run had not (checkpoints/final, eval_final.json), removes the
    half-made copy, and a resume of the completed run says so and trains nothing."""
    import orl.train.trainer
    from orl.train.checkpoint import copy_checkpoint

    assert train_agent_main(tiny_args(tmp_path, data, "run.name=whole")) == 0
    whole = tmp_path / "runs" / "whole"

    def killed(source, target):
        partial = target.with_name(f"{target.name}.tmp-0123abcd")  # what kill -9 leaves
        partial.mkdir()
        (partial / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes())
        raise KeyboardInterrupt

    monkeypatch.setattr(orl.train.trainer, "copy_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        train_agent_main(tiny_args(tmp_path, data))
    monkeypatch.setattr(orl.train.trainer, "copy_checkpoint", copy_checkpoint)
    run = tmp_path / "runs" / "tiny"
    assert not (run / "checkpoints" / "final").exists() and not (run / "eval_final.json").exists()

    assert train_agent_main(["--resume", str(run)]) == 0
    assert final_weights(run) == final_weights(whole)
    assert (json.loads((run / "eval_final.json").read_text())
            == json.loads((whole / "eval_final.json").read_text()))
    assert not list((run / "checkpoints").glob("*.tmp-*"))
    metrics = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert train_agent_main(["--resume", str(run)]) == 0
    assert f"Run {str(run)!r} is complete" in capsys.readouterr().out
    assert (run / "metrics.jsonl").read_text() == metrics  # nothing trained, evaluated or logged


def test_edited_checkpoint_state_and_unknown_data_spec_keys_are_clear_errors(tmp_path, data,
                                                                            capsys):
    from orl.train.checkpoint import with_digest

    assert train_agent_main(tiny_args(tmp_path, data, "agent.name=dt")) == 0
    final = tmp_path / "runs" / "tiny" / "checkpoints" / "final"
    original = (final / "state.json").read_text()
    state = json.loads(original)
    state["extra"]["config"]["model"]["n_head"] = 4  # loads and acts differently if accepted
    (final / "state.json").write_text(json.dumps(state, indent=1))
    capsys.readouterr()
    assert orl_main(["eval", str(final)]) == 2
    assert "state.json was changed after it was written" in capsys.readouterr().err

    state = json.loads(original)
    state["extra"]["data_spec"]["obs_scale"] = 2.0  # as another orl version might write
    (final / "state.json").write_text(json.dumps(with_digest(state), indent=1))
    assert orl_main(["eval", str(final)]) == 2
    assert "data_spec has unknown keys ['obs_scale']" in capsys.readouterr().err


def test_a_run_reports_what_it_used_and_did(tmp_path, data, capsys):
    """Without a terminal a progress line per log step; config.yaml names the datasets, not the
    default tasks; eval_final.json keeps every episode; `orl eval --max-steps` caps episodes."""
    assert train_agent_main(tiny_args(tmp_path, data, "agent.name=dt")) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("train step")]
    assert [line.split(":")[0] for line in lines] == [f"train step {s}/12" for s in (4, 8, 12)]
    run = tmp_path / "runs" / "tiny"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["tasks"] == [] and saved["data"]["datasets"] == [str(data)]
    final = json.loads((run / "eval_final.json").read_text())
    episodes = final["episodes"]["Pendulum-v1"]
    assert episodes["length"] == [10, 10] and episodes["success"] == [None, None]
    assert final["return/Pendulum-v1"] == pytest.approx(np.mean(episodes["return"]))

    out = tmp_path / "eval.json"
    assert orl_main(["eval", str(run), "--episodes", "2", "--num-envs", "1", "--max-steps", "3",
                     "--json", str(out)]) == 0
    assert json.loads(out.read_text())["episodes"]["Pendulum-v1"]["length"] == [3, 3]
