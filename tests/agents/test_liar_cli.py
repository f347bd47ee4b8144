"""``orl prune`` end to end: a tiny train-agent run on a D4RL-format file, pruned, reloaded,
evaluated and fine-tuned through the Trainer."""

import h5py
import numpy as np
import pytest
import torch

import orl
from orl.agents.liar import finetune_checkpoint
from orl.api import load_trained_agent
from orl.cli import main as orl_main
from orl.cli import train_agent_main


def write_random_task(path, seed, n=60, length=12):
    """Random Pendulum-shaped (3-dim obs, 1-dim action) D4RL-format data."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f["observations"] = rng.normal(size=(n, 3)).astype(np.float32)
        f["actions"] = rng.uniform(-1, 1, size=(n, 1)).astype(np.float32)
        f["rewards"] = rng.normal(size=n).astype(np.float32)
        f["terminals"] = np.zeros(n, bool)
        f["timeouts"] = (np.arange(n) % length) == length - 1
    return path


def train_tiny(root, name, *args):
    assert train_agent_main([
        "model.embed_dim=16", "model.n_layer=1", "model.n_head=2", "sampler.context_len=4",
        "sampler.batch_size=8", "train.steps=4", "train.warmup_steps=1", "run.logger=none",
        f"run.out_dir={root / 'runs'}", f"run.name={name}", *args,
    ]) == 0
    return root / "runs" / name


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 1-layer DT with 2 heads trained a few steps on random Pendulum-shaped data."""
    root = tmp_path_factory.mktemp("liar")
    data = write_random_task(root / "pendulum-liar.hdf5", seed=1)
    return train_tiny(root, "tiny", "agent.name=dt", f"data.datasets=[{data}]")


def test_prune_writes_a_smaller_checkpoint_that_loads_and_evaluates(run, tmp_path, capsys):
    out = tmp_path / "pruned"
    args = [str(run), "--ratio", "0.5", "--criterion", "wanda", "--reconstruct", "liar",
            "--calib-episodes", "2", "--calib-windows", "16", "-o", str(out)]
    assert orl_main(["prune", *args]) == 0
    printed = capsys.readouterr().out
    assert "blocks.0.mlp" in printed and "parameters:" in printed and "block parameters" in printed

    original, pruned = load_trained_agent(run, "cpu"), load_trained_agent(out, "cpu")
    assert pruned.model.transformer.structure() == {"heads": [1], "hidden": [32]}
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in original.parameters())
    result = orl.evaluate(orl.load_agent(out, device="cpu"), "Pendulum-v1", episodes=2,
                          num_envs=2, max_steps=5, progress=False)
    assert result.to_dict()["return_mean"] < 0  # Pendulum rewards are negative

    assert orl_main(["prune", *args]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err

    tuned = finetune_checkpoint(out, tmp_path / "finetune", steps=2, lr=1e-3)
    again = load_trained_agent(tuned.parent.parent, "cpu")
    assert again.model.transformer.structure() == pruned.model.transformer.structure()
    assert not torch.equal(again.model.transformer.blocks[0].mlp.fc.weight,
                           pruned.model.transformer.blocks[0].mlp.fc.weight)


@pytest.mark.parametrize("extra, message", [
    (["--ratio", "1.5"], "ratio must be in"),
    (["--calib-episodes", "0"], "calibration needs episodes"),
])
def test_bad_arguments_are_reported(run, tmp_path, capsys, extra, message):
    assert orl_main(["prune", str(run), "-o", str(tmp_path / "x"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_missing_checkpoint_is_reported(tmp_path, capsys):
    assert orl_main(["prune", str(tmp_path / "nope"), "-o", str(tmp_path / "x")]) == 2
    assert "nope" in capsys.readouterr().err


def test_harmodt_checkpoint_prunes_without_reconstruction_and_reloads(tmp_path, capsys):
    files = [write_random_task(tmp_path / f"task-{i}.hdf5", seed=i) for i in range(2)]
    run = train_tiny(tmp_path, "harmodt", "agent.name=harmodt", f"data.datasets=[{files[0]},{files[1]}]",
                     "sampler.prompt_len=2", "sampler.task_mode=round_robin",
                     "agent.harmodt.mask_interval=2")
    assert orl_main(["prune", str(run), "--ratio", "0.5", "-o", str(tmp_path / "liar")]) == 2
    assert "--reconstruct none" in capsys.readouterr().err and not (tmp_path / "liar").exists()
    out = tmp_path / "pruned"
    assert orl_main(["prune", str(run), "--ratio", "0.5", "--reconstruct", "none",
                     "--calib-episodes", "2", "-o", str(out)]) == 0
    agent = load_trained_agent(out, "cpu")
    assert type(agent).__name__ == "HarmoDTAgent"
    assert agent.model.transformer.blocks[0].mlp.fc.masks.shape == (3, 32, 16)  # 2 tasks + merged
    assert orl.load_agent(out, device="cpu", task_agnostic=True) is not None
