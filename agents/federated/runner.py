"""A federated ``train-agent`` run, independent of the runtime that reaches the clients.

``FederatedRun`` owns the server side: the global agent, the strategy, per-round logging and
evaluation of the global model, and atomic round checkpoints (global weights, slots, counters,
strategy RNG) that a resumed run continues from. A runtime is a callable
``execute(assignments) -> {slot: Update | failure reason}``: ``LocalClients`` trains the clients
in this process (the embedded simulation), ``orl.agents.federated.flower`` sends them to Flower
SuperNodes.

Setup (``federated_setup``) is deterministic by seed and shared by server and clients: the pool
of all clients' trajectories is loaded, per-task state statistics are computed over it (what
clients' summed counts/sums would give) and the pool is split into client datasets. The round
checkpoints are ``checkpoints/step_<round>``; the final global model goes to
``checkpoints/final``, which ``orl eval RUN_DIR`` and ``orl.load_agent`` read.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from orl.agents.federated.client import ClientData, local_train_config, local_update, make_client
from orl.agents.federated.partition import partition
from orl.agents.federated.strategy import Assignment, RoundReport, Update, make_strategy
from orl.agents.federated.weights import get_weights, set_weights
from orl.config import to_dict

log = logging.getLogger(__name__)

Execute = Callable[[list[Assignment]], dict[int, Update | str]]
FEDERATED_AGENTS = ("dt", "mtdt", "mtbc")


@dataclass
class FederatedSetup:
    """What server and clients build from the config: the initial global agent, the clients'
    data and the evaluation tasks."""

    cfg: Any  # ExperimentConfig
    agent: Any  # the global agent (initial weights from run.seed)
    clients: list[ClientData]
    eval_tasks: list[str]


def federated_setup(cfg: Any) -> FederatedSetup:
    """Load the pool, build the global agent and split the pool into client datasets."""
    from orl.experiment import prepare

    if cfg.agent.name not in FEDERATED_AGENTS:
        raise ValueError(f"federated training supports agent.name in {FEDERATED_AGENTS}, "
                         f"got {cfg.agent.name!r}")
    local_train_config(cfg.train, cfg.federated.local_steps)  # fail early on a bad warm-up
    prepared = prepare(cfg)
    pool = prepared.sampler.store
    if prepared.sampler.state_stats is not None:  # normalise once, with the pool's statistics
        mean, std = prepared.sampler.state_stats
        task = pool.step_task
        pool = replace(pool, observations=(pool.observations - mean[task]) / std[task])
    parts = partition(pool, cfg.federated, cfg.run.seed)
    clients = [make_client(c, pool.select_episodes(part), cfg.sampler) for c, part in enumerate(parts)]
    return FederatedSetup(cfg, prepared.agent, clients, prepared.eval_tasks)


class LocalClients:
    """The embedded runtime: every assignment trained in this process, one after the other.

    A client that raises is reported failed; one slower than ``timeout_s`` (> 0) is reported
    timed out and its update dropped.
    """

    def __init__(self, setup: FederatedSetup, run_dir: Path) -> None:
        self.agent = copy.deepcopy(setup.agent)  # the clients' working copy
        self.clients = setup.clients
        self.train = local_train_config(setup.cfg.train, setup.cfg.federated.local_steps)
        self.seed = setup.cfg.run.seed
        self.timeout_s = setup.cfg.federated.client_timeout_s
        self.run_dir = run_dir

    def __call__(self, assignments: list[Assignment]) -> dict[int, Update | str]:
        results: dict[int, Update | str] = {}
        for a in assignments:
            start = time.perf_counter()
            try:
                update = local_update(self.agent, self.clients[a.client], a, self.train, self.seed,
                                      self.run_dir)
            except Exception as err:  # a failing client must not end the round
                log.exception("round %d: client %d failed", a.round + 1, a.client)
                results[a.slot] = f"failed: {err!r}"
                continue
            elapsed = time.perf_counter() - start
            if self.timeout_s and elapsed > self.timeout_s:
                results[a.slot] = f"timed out ({elapsed:.1f} s > {self.timeout_s} s)"
            else:
                results[a.slot] = update
        return results


class FederatedRun:
    """The server side of a federated run in ``run_dir`` (resumed when ``resume``)."""

    def __init__(self, setup: FederatedSetup, run_dir: Path, resume: bool = False,
                 logger: Any = None) -> None:
        from orl.experiment import make_evaluator

        self.setup = setup
        self.cfg = setup.cfg
        self.run_dir = Path(run_dir)
        self.logger = logger
        self.agent = setup.agent
        self.strategy = make_strategy(self.cfg.federated, get_weights(self.agent),
                                      len(setup.clients), self.cfg.run.seed)
        self.evaluator = make_evaluator(self.cfg, setup.eval_tasks) if setup.eval_tasks else None
        self.bytes_total = 0
        self.extra = {"config": to_dict(self.cfg), "data_spec": self.agent.spec.to_dict()}
        if resume:
            self._resume()

    def fit(self, execute: Execute) -> dict[str, float]:
        """Run the remaining rounds; save the final global model; return the last metrics."""
        from orl.experiment import report_final
        from orl.train.checkpoint import checkpoints_dir, copy_checkpoint, latest_checkpoint

        fed = self.cfg.federated
        metrics: dict[str, float] = {}
        while self.strategy.round < fed.rounds:
            report = self.strategy.aggregate(execute(self.strategy.configure()))
            if not report.accepted:
                raise RuntimeError(f"round {report.round + 1}: every client failed "
                                   f"({report.failures}); see the log above")
            metrics = self._after_round(report)
        latest = latest_checkpoint(self.run_dir)
        copy_checkpoint(latest, checkpoints_dir(self.run_dir) / "final")
        if self.evaluator is not None and self.evaluator.last is None:  # resumed after the last
            self.evaluate(self.strategy.round)  # round: the final evaluation again, same result
        if self.evaluator is not None and self.evaluator.last is not None:
            report_final(self.evaluator.last, self.run_dir, self.logger, self.strategy.round)
        if self.evaluator is not None:
            self.evaluator.close()
        return metrics

    def _after_round(self, report: RoundReport) -> dict[str, float]:
        fed = self.cfg.federated
        set_weights(self.agent, self.strategy.global_weights)
        self.bytes_total += report.bytes_sent + report.bytes_received
        done = self.strategy.round
        metrics = report.metrics() | {"fed/bytes_total": self.bytes_total}
        due = done == fed.rounds or (fed.eval_every and done % fed.eval_every == 0)
        if self.evaluator is not None and report.aggregated and due:
            metrics |= self.evaluate(done)
        log.info("round %d/%d: %s", done, fed.rounds,
                 ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if "/success/" not in k))
        if self.logger is not None:
            self.logger.log(metrics, done)
        self._save()
        return metrics

    def evaluate(self, step: int) -> dict[str, float]:
        """Evaluate the global agent (eval mode, no grad, training RNG untouched)."""
        self.agent.eval()
        with torch.no_grad(), torch.random.fork_rng():
            metrics = self.evaluator(self.agent, step)
        return metrics

    # ------------------------------------------------------------ checkpoints
    def _save(self) -> None:
        from orl.train.checkpoint import (
            mark_latest,
            prune_checkpoints,
            save_checkpoint,
            step_checkpoint_path,
        )

        state, tensors = self.strategy.state_dict()
        path = step_checkpoint_path(self.run_dir, self.strategy.round)
        save_checkpoint(path, self.agent, state={
            "step": self.strategy.round, "federated": state, "bytes_total": self.bytes_total,
            "extra": self.extra, "tensors": tensors})
        mark_latest(path)
        prune_checkpoints(self.run_dir, self.cfg.train.keep_checkpoints)

    def _resume(self) -> None:
        from orl.train.checkpoint import TENSORS, latest_checkpoint, read_checkpoint

        path = latest_checkpoint(self.run_dir)
        if path is None:  # stopped before the first round ended: start over
            return
        state, files = read_checkpoint(path, files=(TENSORS,))
        if "federated" not in state:
            raise ValueError(f"{path} was not written by a federated run; resume it without "
                             "federated.strategy")
        self.strategy.load_state_dict(state["federated"], files[TENSORS])
        self.bytes_total = int(state["bytes_total"])
        set_weights(self.agent, self.strategy.global_weights)
        log.info("resumed %s after round %d", self.run_dir, self.strategy.round)


def run_federated(cfg: Any, run_dir: Path, resume: bool,
                  runtime: Callable[[FederatedSetup], Execute]) -> dict[str, float]:
    """Set up, log and run a federated run whose clients ``runtime(setup)`` reaches."""
    from orl.experiment import start_run

    setup = federated_setup(cfg)
    logger = start_run(cfg, run_dir, setup.agent.spec)
    try:
        run = FederatedRun(setup, run_dir, resume=resume, logger=logger)
        summary = run.fit(runtime(setup))
    finally:
        logger.finish()
    print(f"run directory: {run_dir}")
    return summary


def train_federated(cfg: Any, run_dir: Path, resume: bool = False) -> dict[str, float]:
    """``train-agent`` with ``federated.strategy`` set: the embedded in-process simulation."""
    return run_federated(cfg, run_dir, resume, lambda setup: LocalClients(setup, run_dir))
