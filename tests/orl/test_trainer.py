"""The training loop: LR schedule, learning, exact resume after SIGKILL, NaN stop, callbacks.

The subprocess of the kill-and-resume test loads this file with ``runpy`` to build the very
same run, so the toy agent and the run setup below live at module level.
"""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from orl.agents.base import Agent
from orl.datasets.sampler import SamplerConfig, SegmentSampler
from orl.datasets.store import TrajectoryStore
from orl.model.dt import DecisionTransformer, DTConfig
from orl.train.callbacks import Callback
from orl.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_model_weights,
    step_checkpoint_path,
    with_digest,
)
from orl.train.config import TrainConfig
from orl.train.trainer import NonFiniteLossError, Trainer, learning_rate

OBS_DIM, ACT_DIM, CONTEXT = 3, 2, 4


class TinyDT(Agent):
    """A one-block Decision Transformer with dropout (so the RNG state matters on resume)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = DecisionTransformer(DTConfig(
            obs_dim=OBS_DIM, act_dim=ACT_DIM, context_len=CONTEXT, embed_dim=16, n_layer=1,
            n_head=2, dropout=0.1, max_timestep=32,
        ))

    def loss(self, batch):
        pred = self.model(batch.states, batch.actions, batch.returns_to_go, batch.timesteps,
                          batch.mask)
        mask = batch.mask.float()
        loss = (((pred - batch.actions) ** 2).mean(-1) * mask).sum() / mask.sum()
        return loss, {"mse": loss.detach()}


class NaNAtStep(TinyDT):
    """Its loss turns NaN from the ``bad_step``-th call on."""

    bad_step = 5

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def loss(self, batch):
        self.calls += 1
        loss, metrics = super().loss(batch)
        return (loss * float("nan") if self.calls >= self.bad_step else loss), metrics


class Sleep(Callback):
    """Slows every step down (a process to kill needs to be still running)."""

    every = 1

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds

    def on_step(self, trainer, step):
        time.sleep(self.seconds)


def make_store() -> TrajectoryStore:
    rng = np.random.default_rng(0)
    lengths = np.array([8, 10, 6, 12])
    n = int(lengths.sum())
    return TrajectoryStore(
        observations=rng.normal(size=(n, OBS_DIM)),
        actions=rng.uniform(-1, 1, size=(n, ACT_DIM)),
        rewards=rng.uniform(0, 1, size=n),
        terminals=np.zeros(n, dtype=bool),
        timeouts=np.zeros(n, dtype=bool),
        episode_starts=np.concatenate([[0], np.cumsum(lengths)]),
        episode_task=np.zeros(len(lengths), dtype=np.int64),
        task_names=["task"],
    )


def build(run_dir, steps=12, agent_cls=TinyDT, callbacks=(), resume=False, evaluator=None,
          logger=None, **train) -> Trainer:
    """The run every test uses: the caller seeds torch, the trainer does the rest."""
    torch.manual_seed(0)
    sampler = SegmentSampler(make_store(), SamplerConfig(context_len=CONTEXT, batch_size=8), seed=0)
    cfg = TrainConfig(**{"steps": steps, "lr": 3e-3, "warmup_steps": 3, "schedule": "cosine",
                         "log_every": 2, "checkpoint_every": 4, "device": "cpu"} | train)
    return Trainer(agent_cls(), sampler, cfg, Path(run_dir), logger=logger, evaluator=evaluator,
                   callbacks=callbacks, resume=resume)


class ListLogger:
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict]] = []

    def log(self, metrics, step):
        self.rows.append((step, metrics))


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# ------------------------------------------------------------------------------ tests


def test_learning_rate_schedule_by_hand():
    cosine = TrainConfig(steps=110, lr=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    expected = {0: 0.0, 5: 0.5, 10: 1.0, 60: 0.55, 110: 0.1, 200: 0.1}
    for step, lr in expected.items():
        assert learning_rate(step, cosine) == pytest.approx(lr), step
    constant = TrainConfig(steps=100, lr=2.0, warmup_steps=4)
    assert [learning_rate(s, constant) for s in (1, 2, 4, 50, 100)] == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert learning_rate(1, TrainConfig(steps=10, lr=0.3, warmup_steps=0, schedule="cosine")) \
        == pytest.approx(0.1 * 0.3 + 0.5 * 0.27 * (1 + np.cos(np.pi / 10)))


@pytest.mark.parametrize("field, value", [
    ("steps", 0), ("lr", 0.0), ("weight_decay", -1.0), ("warmup_steps", -1),
    ("schedule", "linear"), ("grad_clip", -0.1), ("log_every", 0), ("keep_checkpoints", 0),
    ("device", "tpu"),
])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"train\.{field}"):
        TrainConfig(**{field: value})


def test_tiny_run_learns(tmp_path):
    logger = ListLogger()
    summary = build(tmp_path, steps=100, lr=1e-2, log_every=20, checkpoint_every=0,
                    warmup_steps=10, schedule="constant", logger=logger).fit()
    losses = [m["train/loss"] for _, m in logger.rows]
    assert [step for step, _ in logger.rows] == [20, 40, 60, 80, 100]
    assert losses[-1] < 0.4 * losses[0]
    assert summary["step"] == 100 and summary["train/loss"] == losses[-1]
    first = logger.rows[0][1]
    assert {"train/mse", "train/grad_norm", "train/lr", "train/steps_per_s",
            "train/samples_per_s"} <= first.keys()
    assert first["train/samples_per_s"] == pytest.approx(8 * first["train/steps_per_s"])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "final", "latest", "step_00000100"]


RUN_AND_GET_KILLED = """
import runpy, sys
helpers = runpy.run_path(sys.argv[1])
helpers["build"](sys.argv[2], steps=int(sys.argv[3]), checkpoint_every=5,
                 callbacks=[helpers["Sleep"](0.05)]).fit()
"""


def test_sigkill_then_resume_gives_bit_identical_weights(tmp_path):
    steps, run_dir = 40, tmp_path / "killed"
    script = tmp_path / "train.py"
    script.write_text(RUN_AND_GET_KILLED)
    proc = subprocess.Popen([sys.executable, str(script), __file__, str(run_dir), str(steps)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / "checkpoints" / "latest").exists():
            assert proc.poll() is None, "the training subprocess died before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "checkpoints" / "final").exists()

    resumed = build(run_dir, steps=steps, checkpoint_every=5, callbacks=[Sleep()], resume=True)
    start = resumed.step
    assert 5 <= start < steps and start % 5 == 0
    resumed.fit()
    reference = build(tmp_path / "reference", steps=steps, checkpoint_every=5, callbacks=[Sleep()])
    reference.fit()
    assert_same_weights(resumed.agent, reference.agent)
    on_disk = TinyDT()
    load_model_weights(run_dir / "checkpoints" / "final", on_disk)
    assert_same_weights(on_disk, reference.agent)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = build(tmp_path, steps=12, agent_cls=NaNAtStep, log_every=10, checkpoint_every=2)
    with pytest.raises(NonFiniteLossError, match=r"at step 5 .*step_00000004, was kept"):
        trainer.fit()
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000002", "step_00000004"]
    assert latest_checkpoint(tmp_path) == root / "step_00000004"
    good = TinyDT()
    load_model_weights(root / "step_00000004", good)
    assert all(torch.isfinite(p).all() for p in good.parameters())
    assert not all(torch.isfinite(p).all() for p in trainer.agent.parameters())


class Recorder(Callback):
    every = 3

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.checkpoints: list[tuple[int, str]] = []
        self.evals: list[tuple[int, float]] = []
        self.events: list[str] = []

    def on_train_start(self, trainer):
        self.events.append("start")

    def on_step(self, trainer, step):
        self.steps.append(step)

    def on_eval(self, trainer, step, metrics):
        self.evals.append((step, metrics["eval/success_mean"]))

    def on_checkpoint(self, trainer, step, path):
        self.checkpoints.append((step, Path(path).name))

    def on_train_end(self, trainer):
        self.events.append("end")

    def state_dict(self):
        return {"steps": self.steps, "tensors": {"count": torch.tensor(len(self.steps))}}

    def load_state_dict(self, state):
        assert int(state["tensors"]["count"]) == len(state["steps"])
        self.steps = list(state["steps"])


def evaluate(agent, step):
    assert not agent.training
    return {"eval/success_mean": {5: 0.8, 10: 0.5}[step], "eval/return_mean": float(step)}


def test_callbacks_evaluation_and_best_checkpoint(tmp_path):
    recorder, logger = Recorder(), ListLogger()
    build(tmp_path, steps=10, eval_every=5, callbacks=[recorder], evaluator=evaluate,
          logger=logger).fit()
    assert recorder.steps == [3, 6, 9]
    assert recorder.checkpoints == [(4, "step_00000004"), (8, "step_00000008"),
                                    (10, "step_00000010")]
    assert recorder.evals == [(5, 0.8), (10, 0.5)]
    assert recorder.events == ["start", "end"]
    assert (10, {"eval/success_mean": 0.5, "eval/return_mean": 10.0}) in logger.rows
    root = tmp_path / "checkpoints"
    best = json.loads((root / "best" / "state.json").read_text())
    assert best["step"] == 5 and best["best"] == {"metric": "eval/success_mean", "value": 0.8,
                                                  "step": 5}
    assert json.loads((root / "final" / "state.json").read_text())["step"] == 10

    # resume from step 8: the callback gets its state back and keeps counting from there
    again = Recorder()
    trainer = build(tmp_path, steps=10, eval_every=5, callbacks=[again], evaluator=evaluate)
    trainer.resume(root / "step_00000008")
    assert again.steps == [3, 6] and trainer.step == 8 and trainer.best["value"] == 0.8
    trainer.fit()
    assert again.steps == [3, 6, 9] and again.evals == [(10, 0.5)]


def test_resume_needs_a_checkpoint_and_the_same_callbacks(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        build(tmp_path, resume=True)
    build(tmp_path, steps=4, callbacks=[Recorder()]).fit()
    with pytest.raises(CheckpointError, match="1 callback states but the trainer has 0"):
        build(tmp_path, steps=8, resume=True)
    state_file = tmp_path / "checkpoints" / "step_00000004" / "state.json"
    state = json.loads(state_file.read_text()) | {"world_size": 2}
    state_file.write_text(json.dumps(with_digest(state)))  # as two processes would have written it
    trainer = build(tmp_path, steps=8, callbacks=[Recorder()])
    weights = {k: v.clone() for k, v in trainer.agent.state_dict().items()}
    with pytest.raises(CheckpointError, match="written by 2 processes; resume it with the same"):
        trainer.resume()
    assert trainer.step == 0
    assert all(torch.equal(trainer.agent.state_dict()[k], v) for k, v in weights.items())


class TwoClipGroups(TinyDT):
    """Adds a huge-gradient extra parameter that the trainer must clip apart from the model."""

    def __init__(self) -> None:
        super().__init__()
        self.extra = torch.nn.Parameter(torch.ones(3))

    def loss(self, batch):
        loss, metrics = super().loss(batch)
        return loss + 1e4 * self.extra.sum(), metrics

    def clip_groups(self):
        return [list(self.model.parameters()), [self.extra]]


class GradRecorder(Callback):
    def on_train_start(self, trainer):
        trainer.optimizer.register_step_pre_hook(self.record)

    def record(self, *_):
        self.model = torch.cat([p.grad.flatten() for p in self.agent.model.parameters()]).norm()
        self.extra = self.agent.extra.grad.norm()


def test_clip_groups_are_clipped_separately(tmp_path):
    recorder = GradRecorder()
    trainer = build(tmp_path, steps=1, agent_cls=TwoClipGroups, callbacks=[recorder],
                    grad_clip=1.0, checkpoint_every=0)
    recorder.agent = trainer.agent
    trainer.fit()
    assert recorder.extra == pytest.approx(1.0, rel=1e-5)  # clipped from 1e4 * sqrt(3)
    # the model's gradient (norm ~0.1-1) is not shrunk by the extra parameter's
    torch.manual_seed(0)
    agent = TinyDT()
    batch = SegmentSampler(make_store(), SamplerConfig(context_len=CONTEXT, batch_size=8), seed=0).sample()
    agent.loss(batch)[0].backward()
    alone = torch.cat([p.grad.flatten() for p in agent.model.parameters()]).norm()
    assert recorder.model == pytest.approx(min(1.0, float(alone)), rel=1e-4)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def without_dropout(trainer: Trainer) -> Trainer:
    for module in trainer.agent.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return trainer


@cuda
def test_cuda_graphs_train_like_the_eager_step_and_resume(tmp_path):
    """The recorded-and-replayed step ends with the eager step's weights and logged losses, and
    a captured run resumes from its checkpoint (learning rate back on the device)."""
    runs = {}
    for graphs in (False, True):
        logger = ListLogger()
        trainer = without_dropout(build(tmp_path / str(graphs), steps=12, logger=logger,
                                        device="cuda", bf16=False, cuda_graphs=graphs,
                                        log_every=1, checkpoint_every=6))
        trainer.fit()
        runs[graphs] = trainer, [m["train/loss"] for _, m in logger.rows]
    (eager, eager_losses), (graphed, graphed_losses) = runs[False], runs[True]
    assert list(graphed._graphs.graphs) == [None] and eager._graphs is None
    assert graphed_losses == pytest.approx(eager_losses, rel=1e-4, abs=1e-6)
    for a, b in zip(eager.agent.parameters(), graphed.agent.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

    resumed = without_dropout(build(tmp_path / "True", steps=12, device="cuda", bf16=False,
                                    cuda_graphs=True, log_every=1, checkpoint_every=6))
    resumed.resume(step_checkpoint_path(tmp_path / "True", 6))
    assert isinstance(resumed.optimizer.param_groups[0]["lr"], torch.Tensor)
    resumed.fit()
    for a, b in zip(resumed.agent.parameters(), graphed.agent.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@cuda
def test_cuda_graphs_need_batches_of_one_shape(tmp_path):
    trainer = build(tmp_path, steps=8, device="cuda", cuda_graphs=True)
    sample = trainer.sampler.sample
    trainer.sampler.sample = lambda: (sample() if trainer.step < 5
                                      else replace(sample(), states=torch.zeros(4, CONTEXT, OBS_DIM)))
    with pytest.raises(ValueError, match="cuda_graphs.*'states'"):
        trainer.fit()
