"""DDP on CPU (gloo) under torchrun with 2 processes: identical weights on every rank, rank 0
alone logs and writes checkpoints, and a DDP run resumes exactly (each rank its own sampler)."""

import json
import os
import signal
import subprocess
import sys

import torch
from safetensors.torch import load_file

SCRIPT = """
import os, sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn

from orl.agents.base import Agent
from orl.datasets.sampler import SamplerConfig, SegmentSampler
from orl.datasets.store import TrajectoryStore
from orl.logging import RunLogger
from orl.train.config import TrainConfig
from orl.train.trainer import Trainer

RANK = int(os.environ["RANK"])


class MLPAgent(Agent):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))

    def loss(self, batch):
        err = ((self.net(batch.states) - batch.actions) ** 2).mean(-1)
        loss = (err * batch.mask).sum() / batch.mask.sum()
        return loss, {"mse": loss.detach()}


def run(run_dir, steps, resume=False):
    rng = np.random.default_rng(0)  # the same data on every rank
    n = 30
    store = TrajectoryStore(
        observations=rng.normal(size=(n, 3)), actions=rng.uniform(-1, 1, size=(n, 2)),
        rewards=rng.uniform(size=n), terminals=np.zeros(n, bool), timeouts=np.zeros(n, bool),
        episode_starts=np.array([0, 12, 30]), episode_task=np.zeros(2, dtype=np.int64),
        task_names=["task"],
    )
    torch.manual_seed(RANK)  # different initial weights: DDP must broadcast rank 0's
    sampler = SegmentSampler(store, SamplerConfig(context_len=4, batch_size=4), seed=RANK)
    cfg = TrainConfig(steps=steps, lr=1e-2, warmup_steps=2, log_every=1, checkpoint_every=2,
                      device="cpu")
    logger = RunLogger(Path(run_dir) / f"logs_rank{RANK}", backend="csv")
    trainer = Trainer(MLPAgent(), sampler, cfg, Path(run_dir), logger=logger, resume=resume)
    trainer.fit()
    logger.finish()
    return trainer.agent


out = Path(sys.argv[2])
if sys.argv[1] == "first":  # the trainer joins and leaves the process group itself
    agent = run(out / "run", steps=4)
    assert not dist.is_initialized()
    save_file(agent.state_dict(), out / f"first_rank{RANK}.safetensors")
else:  # the caller owns the process group, so one process can run several trainers
    dist.init_process_group("gloo")
    agent = run(out / "reference", steps=6)
    save_file(agent.state_dict(), out / f"reference_rank{RANK}.safetensors")
    agent = run(out / "run", steps=6, resume=True)  # constant LR after warm-up: as if 6 all along
    save_file(agent.state_dict(), out / f"resumed_rank{RANK}.safetensors")
    dist.destroy_process_group()
"""


def torchrun(script, mode, out):
    """Run ``script`` on 2 CPU processes; the whole process group is killed on a timeout."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), mode, str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
    assert proc.returncode == 0, output[-5000:]


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_two_cpu_processes(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    torchrun(script, "first", tmp_path)

    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "final", "latest", "step_00000002", "step_00000004"]
    state = json.loads((checkpoints / "final" / "state.json").read_text())
    assert state["step"] == 4 and state["world_size"] == 2
    assert state["sampler"][0] != state["sampler"][1]  # each rank's own position
    rank0, rank1 = (load_file(tmp_path / f"first_rank{r}.safetensors") for r in (0, 1))
    assert_same(rank0, rank1)  # DDP started from rank 0's weights and kept replicas identical
    assert_same(load_file(checkpoints / "final" / "model.safetensors"), rank0)
    assert (run / "logs_rank0" / "metrics.jsonl").read_text().count("train/loss") == 4
    assert (run / "logs_rank1" / "metrics.jsonl").read_text() == ""  # only rank 0 logs

    torchrun(script, "second", tmp_path)  # resume "run" from step 4 to 6 on both ranks
    reference = [load_file(tmp_path / f"reference_rank{r}.safetensors") for r in (0, 1)]
    resumed = [load_file(tmp_path / f"resumed_rank{r}.safetensors") for r in (0, 1)]
    assert_same(reference[0], reference[1])
    assert_same(resumed[0], reference[0])
    assert_same(resumed[1], reference[1])
    assert not torch.equal(rank0["net.0.weight"], resumed[0]["net.0.weight"])
