"""Checkpoints: exact round trip, atomic layout, pruning, and clear errors on bad files."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from orl.agents.base import Agent
from orl.datasets.sampler import SamplerConfig, SegmentSampler
from orl.datasets.store import TrajectoryStore
from orl.train.checkpoint import (
    CheckpointError,
    clean_interrupted_writes,
    latest_checkpoint,
    load_checkpoint,
    load_model_weights,
    mark_latest,
    prune_checkpoints,
    save_checkpoint,
)
from orl.train.config import TrainConfig
from orl.train.trainer import Trainer

OBS_DIM, ACT_DIM, CONTEXT = 3, 2, 4


class MLPAgent(Agent):
    """Predicts each step's action from its state; dropout so the RNG state matters."""

    def __init__(self, hidden: int = 16, extra_layer: bool = False) -> None:
        super().__init__()
        layers = [nn.Linear(OBS_DIM, hidden), nn.ReLU(), nn.Dropout(0.2)]
        if extra_layer:
            layers += [nn.Linear(hidden, hidden)]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, ACT_DIM))
        self.register_buffer("scale", torch.ones(ACT_DIM, 4).t())  # non-contiguous

    def loss(self, batch):
        err = ((self.net(batch.states) - batch.actions) ** 2).mean(-1)
        loss = (err * batch.mask).sum() / batch.mask.sum()
        return loss, {}


class TiedAgent(Agent):
    """Two modules share one weight: ``state_dict`` then holds the same tensor twice."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, 4)
        self.decoder = nn.Linear(4, 4)
        self.decoder.weight = self.encoder.weight


def make_sampler(seed: int = 0) -> SegmentSampler:
    rng = np.random.default_rng(0)
    lengths = np.array([6, 9, 7])
    n = int(lengths.sum())
    store = TrajectoryStore(
        observations=rng.normal(size=(n, OBS_DIM)), actions=rng.uniform(-1, 1, size=(n, ACT_DIM)),
        rewards=rng.uniform(size=n), terminals=np.zeros(n, bool), timeouts=np.zeros(n, bool),
        episode_starts=np.concatenate([[0], np.cumsum(lengths)]),
        episode_task=np.zeros(3, dtype=np.int64), task_names=["task"],
    )
    return SegmentSampler(store, SamplerConfig(context_len=CONTEXT, batch_size=4), seed=seed)


def make_trainer(run_dir: Path, seed: int = 0, steps: int = 6) -> Trainer:
    torch.manual_seed(seed)
    cfg = TrainConfig(steps=steps, lr=1e-2, warmup_steps=2, checkpoint_every=3, log_every=3,
                      device="cpu")
    return Trainer(MLPAgent(), make_sampler(seed), cfg, run_dir,
                   extra_state={"config": {"seed": seed}})


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}




@pytest.fixture
def checkpoint(tmp_path) -> tuple[Path, Trainer]:
    trainer = make_trainer(tmp_path)
    trainer.fit()
    return tmp_path / "checkpoints" / "step_00000006", trainer


def test_round_trip_restores_weights_optimizer_sampler_step_and_rng(tmp_path, checkpoint):
    path, done = checkpoint
    assert sorted(p.name for p in path.iterdir()) == [
        "model.safetensors", "optimizer.safetensors", "state.json", "state.safetensors"]
    fresh = make_trainer(tmp_path, seed=1)  # other initial weights, sampler seed and RNG
    state = fresh.resume(path)
    assert fresh.step == 6 and state["extra"] == {"config": {"seed": 0}}
    assert state["train"]["lr"] == 1e-2 and state["world_size"] == 1
    for key, value in done.agent.state_dict().items():
        assert torch.equal(fresh.agent.state_dict()[key], value), key
    saved, loaded = done.optimizer.state_dict(), fresh.optimizer.state_dict()
    assert saved["param_groups"] == [
        g | {"betas": tuple(g["betas"])} for g in loaded["param_groups"]]
    assert saved["state"].keys() == loaded["state"].keys()
    for index, values in saved["state"].items():
        for name, tensor in values.items():
            assert torch.equal(loaded["state"][index][name], tensor), (index, name)
    assert fresh.sampler.state_dict() == done.sampler.state_dict()
    assert torch.equal(torch.get_rng_state(), state["tensors"]["rng.0.torch"])
    assert latest_checkpoint(tmp_path) == path
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000006"


def test_aliased_and_non_contiguous_tensors_round_trip(tmp_path):
    tied = TiedAgent()
    save_checkpoint(tmp_path / "tied", tied)
    other = TiedAgent()
    load_model_weights(tmp_path / "tied", other)
    assert torch.equal(other.encoder.weight, tied.encoder.weight)
    assert other.decoder.weight is other.encoder.weight

    strided = MLPAgent()
    strided.scale.mul_(torch.arange(8.0).view(4, 2))
    assert not strided.scale.is_contiguous()
    save_checkpoint(tmp_path / "strided", strided)
    loaded = MLPAgent()
    load_model_weights(tmp_path / "strided", loaded)
    assert torch.equal(loaded.scale, strided.scale)


def test_saving_replaces_an_existing_checkpoint_atomically(tmp_path):
    first, second = MLPAgent(), MLPAgent()
    save_checkpoint(tmp_path / "best", first, state={"step": 1})
    save_checkpoint(tmp_path / "best", second, state={"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    loaded = MLPAgent()
    assert load_model_weights(tmp_path / "best", loaded)["step"] == 2
    assert torch.equal(loaded.net[0].weight, second.net[0].weight)
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path / "bad", first, state={"step": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no temp dir left


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:100]), r"model\.safetensors has 100 bytes"),
    (lambda p: p.write_bytes(p.read_bytes()[:-1] + b"\x00"),
     r"model\.safetensors does not match the sha256"),
])
def test_damaged_model_file_is_a_clear_error_and_nothing_changes(checkpoint, damage, message):
    path, _ = checkpoint
    damage(path / "model.safetensors")
    before = snapshot(path)
    agent = MLPAgent()
    weights = {k: v.clone() for k, v in agent.state_dict().items()}
    with pytest.raises(CheckpointError, match=rf"step_00000006 is corrupt or truncated: {message}"):
        load_checkpoint(path, agent)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model_weights(path, agent)
    assert snapshot(path) == before
    assert all(torch.equal(agent.state_dict()[k], v) for k, v in weights.items())


@pytest.mark.parametrize("text", ['{"step": 6, "files": {', "", "[1, 2]"])
def test_damaged_state_json_is_a_clear_error(checkpoint, text):
    path, _ = checkpoint
    (path / "state.json").write_text(text)
    before = snapshot(path)
    with pytest.raises(CheckpointError, match=r"corrupt or truncated: state\.json"):
        load_checkpoint(path, MLPAgent())
    assert snapshot(path) == before


def test_missing_files_and_directories(tmp_path, checkpoint):
    path, _ = checkpoint
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        load_checkpoint(tmp_path / "nope", MLPAgent())
    (path / "optimizer.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors is missing"):
        load_checkpoint(path, MLPAgent())
    assert latest_checkpoint(tmp_path / "empty") is None


def test_model_that_does_not_fit_lists_keys_and_shapes(checkpoint):
    path, _ = checkpoint
    other = MLPAgent(hidden=8, extra_layer=True)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, other)
    text = str(err.value)
    assert "does not match the agent" in text
    assert "missing keys (in the agent, not in the checkpoint): net.4.bias, net.4.weight" in text
    assert "unexpected keys" not in text
    assert "net.0.weight (16, 3) in the checkpoint vs (8, 3)" in text
    assert "net.3.weight (2, 16) in the checkpoint vs (8, 8)" in text
    assert "another version of orl wrote it: load it with that version" in text
    assert all(torch.equal(other.state_dict()[k], v) for k, v in before.items())


def test_optimizer_that_does_not_fit_is_an_error(tmp_path, checkpoint):
    path, _ = checkpoint
    agent = MLPAgent()
    optimizer = torch.optim.AdamW([agent.net[0].weight])
    with pytest.raises(CheckpointError, match=r"parameter groups of sizes \[2, 2\], the optimizer \[1\]"):
        load_checkpoint(path, agent, optimizer)


def test_pruning_keeps_the_newest_and_never_best_or_final(tmp_path):
    agent = MLPAgent()
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 10):
        mark_latest(save_checkpoint(root / f"step_{step:08d}", agent, state={"step": step}))
    save_checkpoint(root / "best", agent)
    save_checkpoint(root / "final", agent)
    (root / "step_00000011.tmp-deadbeef").mkdir()  # left over by a killed writer
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in root.iterdir()) == [
        "best", "final", "latest", "step_00000003", "step_00000010"]
    assert json.loads((latest_checkpoint(tmp_path) / "state.json").read_text())["step"] == 10


def test_a_device_learning_rate_is_saved_as_a_number(tmp_path):
    """CUDA-graph training keeps the learning rate as a tensor; the checkpoint stores a float."""
    agent = MLPAgent()
    optimizer = torch.optim.AdamW(agent.parameters(), lr=0.01)
    optimizer.param_groups[0]["lr"] = torch.tensor(0.003)
    save_checkpoint(tmp_path / "ckpt", agent, optimizer, {"step": 1})
    saved = json.loads((tmp_path / "ckpt" / "state.json").read_text())["optimizer"]["param_groups"]
    assert saved[0]["lr"] == pytest.approx(0.003)
    fresh = torch.optim.AdamW(agent.parameters(), lr=0.01)
    load_checkpoint(tmp_path / "ckpt", agent, fresh)
    assert fresh.param_groups[0]["lr"] == pytest.approx(0.003)


@pytest.mark.parametrize("edit", [
    lambda state: state["extra"]["config"].update(seed=1),  # e.g. n_head 2 -> 4 in a real run
    lambda state: state.update(step=7),
    lambda state: state.pop("state_sha256"),
])
def test_edited_state_json_is_refused(checkpoint, edit):
    path, _ = checkpoint
    state = json.loads((path / "state.json").read_text())
    edit(state)
    (path / "state.json").write_text(json.dumps(state, indent=1))
    agent = MLPAgent()
    weights = {k: v.clone() for k, v in agent.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"corrupt or truncated: state\.json (was changed "
                                              r"after it was written|has no state_sha256)"):
        load_checkpoint(path, agent)
    with pytest.raises(CheckpointError, match="state_sha256"):
        load_model_weights(path, agent)
    assert all(torch.equal(agent.state_dict()[k], v) for k, v in weights.items())


def test_reformatted_state_json_still_loads(checkpoint):
    path, _ = checkpoint
    state = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(json.dumps(state, indent=4, sort_keys=True))
    assert load_checkpoint(path, MLPAgent())["step"] == 6


def test_interrupted_writes_are_cleaned_and_a_checkpoint_moved_aside_comes_back(tmp_path):
    agent = MLPAgent()
    root = tmp_path / "checkpoints"
    save_checkpoint(root / "best", agent, state={"step": 3})
    save_checkpoint(root / "final", agent, state={"step": 6})
    (root / "best").rename(root / "best.old-0123abcd")  # killed while replacing best ...
    (root / "best.tmp-89abcdef").mkdir()  # ... with a new one
    (root / "final.old-deadbeef").mkdir()  # killed while deleting the final it replaced
    (root / ".latest.tmp-00ff00ff").write_text("step_00000006")  # an atomic file write
    (root / "notes.tmp-1").write_text("not ours")  # no random suffix: not a leftover
    clean_interrupted_writes(root)
    assert sorted(p.name for p in root.iterdir()) == ["best", "final", "notes.tmp-1"]
    assert load_model_weights(root / "best", MLPAgent())["step"] == 3
