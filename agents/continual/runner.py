"""``train-agent`` with ``continual.enabled``: a task sequence learned stage by stage.

Every stage (and every phase of a stage, e.g. CompoFormer's warm-up) is one run of the one
``Trainer`` in its own folder ``stages/<NN>-<name>/<phase>/``, which resumes within the phase.
Between phases the agent and the global RNG states are saved (``<phase>.done``) and
``continual.json`` records, atomically, where the sequence stands, the success of every task
before training, after every stage (the success matrix) and at every evaluation (the curves).
An interrupted run continues with ``train-agent --resume RUN_DIR`` from the last ``<phase>.done``
and its RNG states (each phase's sampler is seeded by its stage), so it ends as the
uninterrupted run would have.
"""

from __future__ import annotations

import json
import random
import re
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from orl.agents.continual.agent import ContinualAgent, Method
from orl.agents.continual.stages import Stage, action_heads, check_stages, load_stage_stores, resolve_stages
from orl.agents.dt import DataSpec
from orl.datasets.sampler import SegmentSampler
from orl.datasets.store import TrajectoryStore

if TYPE_CHECKING:
    from orl.eval.result import TaskResult

STATE_FILE = "continual.json"


def build_continual_agent(cfg: Any, spec: DataSpec, state_mean: np.ndarray,
                          state_std: np.ndarray) -> ContinualAgent:
    """The continual agent of experiment config ``cfg`` for stages described by ``spec``."""
    from orl.agents.continual.methods import build_method
    from orl.model.dt import DTConfig

    stages = resolve_stages(cfg)
    num_heads, heads = action_heads(cfg)
    model_cfg = DTConfig(obs_dim=spec.obs_dim, act_dim=spec.act_dim,
                         context_len=cfg.sampler.context_len,
                         num_action_heads=num_heads, action_low=spec.action_low,
                         action_high=spec.action_high, **asdict(cfg.model))
    method = build_method(cfg.continual, stages)
    return ContinualAgent(model_cfg, spec, state_mean, state_std, method, heads)


def last_snapshot(run_dir: Path) -> Path:
    """The agent saved after the last finished phase of the continual run in ``run_dir``."""
    state = json.loads((Path(run_dir) / STATE_FILE).read_text())
    if not state["restore"]:
        raise FileNotFoundError(f"continual run {str(run_dir)!r} has not finished a phase yet")
    return Path(run_dir) / state["restore"]


def global_rng_state(device: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The global RNG states: python's and numpy's as JSON, torch's (and CUDA's) as tensors."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    return ({"numpy": [keys.tolist(), pos, has_gauss, gauss],
             "python": [version, list(internal), gauss_next]}, tensors)


def set_global_rng_state(state: dict[str, Any], tensors: dict[str, torch.Tensor],
                         device: Any) -> None:
    """Restore what ``global_rng_state`` returned."""
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)


class ReplaySampler(SegmentSampler):
    """Segments of stage ``current``, with ``share`` of each batch drawn uniformly from the
    steps of all earlier stages (the store holds the data of stages ``0 .. current``)."""

    def __init__(self, store: TrajectoryStore, config: Any, seed: int, current: int,
                 share: float, device: Any = "cpu") -> None:
        super().__init__(store, config, seed=seed, device=device)
        self.current = current
        self.memory = np.flatnonzero(self.steps.task < current)
        self.memory_size = round(share * self.config.batch_size) if len(self.memory) else 0

    def sample(self, task: int | None = None) -> Any:
        rows = self.task_steps[self.current]
        size = self.config.batch_size - self.memory_size
        starts = rows[self.rng.integers(0, len(rows), size=size)]
        if self.memory_size:
            memory = self.memory[self.rng.integers(0, len(self.memory), size=self.memory_size)]
            starts = np.concatenate([starts, memory])
        return self.segments(starts)


class _StageLogger:
    """Logs a phase's metrics at ``offset + step`` with the stage index (steps keep rising)."""

    def __init__(self, logger: Any, offset: int, stage: int) -> None:
        self.logger, self.offset, self.stage = logger, offset, stage

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.logger.log({**metrics, "continual/stage": self.stage}, self.offset + step)


class ContinualRun:
    """One continual run in ``run_dir``: checks every stage, then trains them in order."""

    def __init__(self, cfg: Any, run_dir: Path, logger: Any = None) -> None:
        from orl.eval.evaluate import EnvPool
        from orl.experiment import check_env_dims, check_max_timestep, run_action_bounds, seed_everything

        self.cfg, self.run_dir, self.logger = cfg, Path(run_dir), logger
        self.stages = check_stages(resolve_stages(cfg))
        self.stores = load_stage_stores(self.stages)
        eval_tasks = list(dict.fromkeys(s.eval_task for s in self.stages))
        check_env_dims(self.stores[0].obs_dim, self.stores[0].act_dim, eval_tasks)
        check_max_timestep(cfg.model.max_timestep,
                           np.concatenate([s.episode_lengths for s in self.stores]), eval_tasks,
                           cfg.eval.max_steps)
        seed_everything(cfg.run.seed)
        stats = [store.state_stats() for store in self.stores]
        mean = np.stack([m[i] for i, (m, _) in enumerate(stats)])
        std = np.stack([s[i] for i, (_, s) in enumerate(stats)])
        targets = [cfg.eval.target_return if cfg.eval.target_return is not None
                   else float(store.episode_returns.max()) for store in self.stores]
        first = self.stores[0]
        low, high = run_action_bounds(cfg, [s.dataset for s in self.stages], eval_tasks,
                                      np.concatenate([s.actions for s in self.stores]))
        self.spec = DataSpec(obs_dim=first.obs_dim, act_dim=first.act_dim,
                             task_names=[s.name for s in self.stages],
                             rtg_scale=cfg.sampler.rtg_scale, target_returns=targets,
                             action_low=low, action_high=high)
        self.agent = build_continual_agent(cfg, self.spec, mean, std)
        self.env_pool = EnvPool()  # every evaluation of the run steps the same envs
        self.device = "cuda" if cfg.train.device == "auto" and torch.cuda.is_available() else (
            "cpu" if cfg.train.device == "auto" else cfg.train.device)
        self.state = self._load_state()

    @property
    def method(self) -> Method:
        return self.agent.method

    # ----------------------------------------------------------------- state
    def _load_state(self) -> dict[str, Any]:
        path = self.run_dir / STATE_FILE
        if path.is_file():
            state = json.loads(path.read_text())
            if state["stages"] != [asdict(s) for s in self.stages]:
                raise ValueError(f"{path} was written for other stages than the config's")
            return state
        return {"stages": [asdict(s) for s in self.stages], "stage": 0, "phases_done": [],
                "restore": None, "steps_done": 0, "before": None, "rows": [], "evaluations": [],
                "notes": {}}

    def save_state(self) -> None:
        from orl.experiment import write_json

        write_json(self.run_dir / STATE_FILE, self.state)

    def stage_dir(self, stage: int) -> Path:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.stages[stage].name)
        return self.run_dir / "stages" / f"{stage:02d}-{name}"

    def note(self, stage: int, info: dict[str, Any]) -> None:
        """Record facts about a stage (e.g. CompoFormer's compose-or-grow decision)."""
        self.state["notes"].setdefault(str(stage), {}).update(info)
        self.save_state()

    def extra_state(self, stage: int) -> dict[str, Any]:
        from orl.config import to_dict

        return {"config": to_dict(self.cfg), "data_spec": self.spec.to_dict(), "stage": stage}

    # ------------------------------------------------------------ evaluation
    def evaluate_all(self, episodes: int | None = None, stages: int | None = None) -> np.ndarray:
        """Success rate of every stage's task with that stage's head, (T,), over ``episodes``
        per task (default ``eval.episodes``); only the first ``stages`` stages if given (the
        others NaN)."""
        success = np.full(len(self.stages), np.nan)
        for group in _distinct_env_groups(self.stages[:stages]):
            success[group] = self.evaluate_group(group, episodes or self.cfg.eval.episodes)
        return success

    def row_stages(self, stage: int) -> int | None:
        """How many stages the row of the success matrix after ``stage`` evaluates (None: all):
        with ``continual.matrix_tasks: seen`` those trained so far and the next."""
        return stage + 2 if self.cfg.continual.matrix_tasks == "seen" else None

    def final_replaces_row(self, stage: int) -> bool:
        """Whether the evaluation after the sequence (``continual.final_episodes``) is the row
        of the success matrix after ``stage`` (the last): the end of that stage then evaluates
        only what its curves need."""
        return stage == len(self.stages) - 1 and self.cfg.continual.final_episodes > 0

    def success_of(self, stage: int, episodes: int) -> float:
        """Success rate of stage ``stage``'s task in ``episodes`` episodes."""
        return float(self.evaluate_group([stage], episodes)[0])

    def evaluate_after_sequence(self, episodes: int) -> dict[str, list[float] | None]:
        """Every task after the sequence on ``episodes`` episodes: ``final``, their success, and
        ``final_matched``, the success on the first ``eval.episodes`` of them. Episode ``i`` of a
        task is played with seed ``run.seed + i`` and goal variation ``i % 50`` whatever their
        number (:func:`orl.eval.evaluate`), so those are the episodes of every row of the
        success matrix: forgetting compares one set of episodes before and after (None when
        ``episodes`` is fewer)."""
        row_episodes = self.cfg.eval.episodes
        final, matched = np.full(len(self.stages), np.nan), np.full(len(self.stages), np.nan)
        for group in _distinct_env_groups(self.stages):
            for i, task in zip(group, self.evaluate_tasks(group, episodes)):
                final[i] = task.success_rate
                matched[i] = float(np.mean(task.successes[:row_episodes]))
        return {"final": final.tolist(),
                "final_matched": matched.tolist() if episodes >= row_episodes else None}

    def evaluate_group(self, group: list[int], episodes: int) -> list[float]:
        """Success of stages ``group`` (all on different envs), evaluated together."""
        return [task.success_rate for task in self.evaluate_tasks(group, episodes)]

    def evaluate_tasks(self, group: list[int], episodes: int) -> list[TaskResult]:
        """The evaluated episodes of stages ``group`` (all on different envs), together."""
        from orl.eval.evaluate import evaluate

        envs = [self.stages[i].eval_task for i in group]
        devices = [self.device] if torch.device(self.device).type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):  # training RNG untouched
            result = evaluate(self.agent.policy(stages=group, task_names=envs), envs,
                              episodes=episodes, seed=self.cfg.run.seed, progress=False,
                              env_pool=self.env_pool, **self.cfg.eval.rollout_options())
        for i, task in zip(group, result.tasks):
            if task.success_rate is None:
                raise ValueError(f"stage {self.stages[i].name}: env {task.env_id} reports no "
                                 "info['success']; the success matrix needs it")
        return list(result.tasks)

    def record(self, stage: int, phase: str, step: int, steps: int) -> dict[str, float]:
        """Evaluate the tasks and record them as point ``stage + step / steps`` of the curves:
        the tasks of a matrix row at the end of a phase (``row_stages``; not for the last stage
        when the evaluation after the sequence is its row), else every task or, with
        ``continual.curve_tasks: current``, the stage's own task (the others NaN)."""
        row = step == steps and not self.final_replaces_row(stage)
        if not row and self.cfg.continual.curve_tasks == "current":
            success = np.full(len(self.stages), np.nan)
            success[stage] = self.success_of(stage, self.cfg.eval.episodes)
        else:
            success = self.evaluate_all(stages=self.row_stages(stage) if row else None)
        key = (stage, phase, step)
        self.state["evaluations"] = [e for e in self.state["evaluations"]
                                     if (e["stage"], e["phase"], e["step"]) != key]
        self.state["evaluations"].append({"stage": stage, "phase": phase, "step": step,
                                          "position": stage + step / steps,
                                          "success": success.tolist()})
        self.save_state()
        names = [s.name for s in self.stages]
        return {"eval/success_mean": float(np.nanmean(success)),
                **{f"eval/{n}/success": float(v) for n, v in zip(names, success) if not np.isnan(v)}}

    # --------------------------------------------------------------- training
    def sampler(self, stage: int) -> SegmentSampler:
        """Stage ``stage``'s data (plus all earlier data for replay methods, all stages' data
        for the multi-task bound)."""
        seed = self.cfg.run.seed + 1000 * stage
        if self.method.joint:
            return SegmentSampler(TrajectoryStore.concatenate(self.stores), self.cfg.sampler,
                                  seed=seed, device=self.device)
        if self.method.memory_share > 0 and stage > 0:
            store = TrajectoryStore.concatenate(self.stores[: stage + 1])
            return ReplaySampler(store, self.cfg.sampler, seed, stage, self.method.memory_share,
                                 device=self.device)
        return SegmentSampler(self.stores[stage], self.cfg.sampler, seed=seed, device=self.device)

    def train_phase(self, stage: int, phase: str, steps: int | None = None,
                    evaluate: bool = True) -> None:
        """Train the current stage for ``steps`` (default ``train.steps``) with the Trainer in
        its own folder, resuming it if it was interrupted; nothing if the phase is done."""
        from orl.train.checkpoint import latest_checkpoint
        from orl.train.trainer import Trainer

        if phase in self.state["phases_done"]:
            return
        train_cfg = replace(self.cfg.train, steps=steps or self.cfg.train.steps)
        if not evaluate:
            train_cfg = replace(train_cfg, eval_every=0)
        self.agent.start_stage(stage)
        phase_dir = self.stage_dir(stage) / phase
        logger = (None if self.logger is None
                  else _StageLogger(self.logger, self.state["steps_done"], stage))
        evaluator = ((lambda agent, step: self.record(stage, phase, step, train_cfg.steps))
                     if evaluate else None)
        trainer = Trainer(self.agent, self.sampler(stage), train_cfg, phase_dir, logger=logger,
                          evaluator=evaluator, extra_state=self.extra_state(stage),
                          resume=latest_checkpoint(phase_dir) is not None)
        trainer.fit()
        self.phase_done(stage, phase, train_cfg.steps)

    def phase_done(self, stage: int, phase: str, steps: int = 0) -> None:
        """Save the agent after ``phase`` and record it, so a resume starts from here."""
        from orl.train.checkpoint import save_checkpoint

        path = self.stage_dir(stage) / f"{phase}.done"
        rng, tensors = global_rng_state(self.device)
        save_checkpoint(path, self.agent, state={"extra": self.extra_state(stage), "rng": rng,
                                                 "tensors": tensors})
        self.state["phases_done"].append(phase)
        self.state["restore"] = str(path.relative_to(self.run_dir))
        self.state["steps_done"] += steps
        self.save_state()

    def restore(self, path: Path) -> None:
        """Load the agent and the global RNG states that ``phase_done`` saved in ``path``."""
        from orl.train.checkpoint import load_checkpoint

        state = load_checkpoint(path, self.agent)
        if "rng" in state:
            set_global_rng_state(state["rng"], state["tensors"], self.device)
        else:
            warnings.warn(f"{path} has no RNG states (an older orl wrote it): the resumed run "
                          "may differ from an uninterrupted one", stacklevel=2)

    def stage_row(self, stage: int) -> list[float]:
        """Success on every task after ``stage``: its last evaluation, else a fresh one."""
        done = [e for e in self.state["evaluations"] if e["stage"] == stage]
        last = max(done, key=lambda e: e["position"]) if done else None
        if last is None or last["position"] < stage + 1:
            self.record(stage, "end", 1, 1)
            last = self.state["evaluations"][-1]
        return last["success"]

    def run(self) -> dict[str, Any]:
        """Train the remaining stages; return the metrics of the run."""
        from orl.agents.continual.report import report

        self.agent.to(self.device)
        if self.state["restore"]:
            self.restore(self.run_dir / self.state["restore"])
        if self.state["before"] is None:
            self.state["before"] = self.evaluate_all().tolist()
            self.save_state()
        for stage in range(self.state["stage"], len(self.stages)):
            self.agent.start_stage(stage)
            self.method.run_stage(self, stage)
            if "end" not in self.state["phases_done"]:
                self.method.end_stage(self.agent, stage, self.sampler(stage))
                self.phase_done(stage, "end")
            if stage > 0:  # the first stage trains the backbone every method starts from
                self.note(stage, {"added_parameters": self.method.added_parameters(self.agent, stage)})
            self.state["rows"].append(self.stage_row(stage))
            self.state |= {"stage": stage + 1, "phases_done": []}
            self.save_state()
        episodes = self.cfg.continual.final_episodes
        if episodes and self.state.get("final") is None:  # the agent after the sequence
            self.state |= self.evaluate_after_sequence(episodes)
            self.save_state()
        return report(self.run_dir, logger=self.logger)


def _distinct_env_groups(stages: list[Stage]) -> list[list[int]]:
    """Stage indices in groups whose envs differ (a task repeated in the sequence, as in OCW20,
    is evaluated once per group, with the head of that occurrence)."""
    groups: list[list[int]] = []
    for stage in stages:
        group = next((g for g in groups if all(stages[i].eval_task != stage.eval_task for i in g)),
                     None)
        if group is None:
            groups.append([stage.index])
        else:
            group.append(stage.index)
    return groups


def run_continual(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Entry point of ``train()`` for configs with ``continual.enabled`` (a new run, or the
    continuation of the one in ``run_dir``)."""
    from orl.experiment import start_run

    run = ContinualRun(cfg, run_dir)  # every stage is checked before anything is written
    logger = start_run(cfg, run_dir, run.spec)
    run.logger = logger
    try:
        summary = run.run()
    finally:
        run.env_pool.close()
        logger.finish()
    print(f"run directory: {run_dir}")
    return summary
