"""One ``train-agent`` run: data -> sampler -> agent -> Trainer -> evaluation, in a run dir.

The run directory holds ``config.yaml`` (the resolved config), ``data_spec.json``,
``checkpoints/``, ``metrics.jsonl``/``metrics.csv``, ``eval_final.json`` and the wandb files.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from orl.config import ConfigError, from_dict, to_dict
from orl.config.experiment import ExperimentConfig
from orl.io import atomic_path


@dataclass
class Prepared:
    """Everything a run needs, built from its config."""

    agent: Any
    sampler: Any
    eval_tasks: list[str]
    unseen: Any = None  # TrajectoryStore of the few trajectories of each unseen task


def seed_everything(seed: int) -> None:
    """One seed drives torch and numpy (the sampler and envs take it explicitly)."""
    torch.manual_seed(seed)
    np.random.seed(seed)


def dataset_sources(cfg: ExperimentConfig) -> tuple[list[str], list[str]]:
    """(dataset ids or files to load, tasks to evaluate on); makes missing Meta-World data.

    Fails before any training when a dataset is missing and may not be generated.
    """
    from orl.datasets.generation import GenerationConfig, generate
    from orl.datasets.registry import metaworld_id, require_dataset
    from orl.envs.benchmarks import resolve_tasks

    if cfg.data.datasets:
        return list(cfg.data.datasets), list(cfg.data.eval_tasks)
    tasks = list(dict.fromkeys(resolve_tasks(cfg.data.tasks)))  # repeated tasks load once
    unseen = unseen_tasks(cfg)
    ids = [metaworld_id(task, cfg.data.level, cfg.data.version) for task in tasks + unseen]
    if cfg.data.generate_missing:
        generate(GenerationConfig(tasks=tasks + unseen, levels=[cfg.data.level],
                                  episodes=cfg.data.episodes, seed=cfg.run.seed,
                                  version=cfg.data.version), exist_ok=True)
    for dataset_id in ids:
        require_dataset(dataset_id)
    return ids[: len(tasks)], list(cfg.data.eval_tasks) or tasks


def unseen_tasks(cfg: ExperimentConfig) -> list[str]:
    """The held-out tasks, checked to be disjoint from the training tasks."""
    from orl.envs.benchmarks import resolve_tasks

    if not cfg.data.unseen_tasks:
        return []
    unseen = list(dict.fromkeys(resolve_tasks(cfg.data.unseen_tasks)))
    overlap = set(unseen) & set(resolve_tasks(cfg.data.tasks))
    if overlap:
        raise ValueError(f"data.unseen_tasks overlap the training tasks: {sorted(overlap)}")
    if cfg.data.unseen_episodes <= 0:
        raise ValueError(f"data.unseen_episodes must be > 0, got {cfg.data.unseen_episodes}")
    return unseen


def load_unseen(cfg: ExperimentConfig) -> Any:
    """The first ``data.unseen_episodes`` trajectories of every unseen task, as one store."""
    from orl.datasets.loading import load
    from orl.datasets.registry import metaworld_id

    tasks = unseen_tasks(cfg)
    if not tasks:
        return None
    store = load([metaworld_id(t, cfg.data.level, cfg.data.version) for t in tasks])
    keep = np.concatenate([store.task_episodes(t)[: cfg.data.unseen_episodes]
                           for t in range(store.num_tasks)])
    return store.select_episodes(keep)


def check_env_dims(obs_dim: int, act_dim: int, eval_tasks: list[str]) -> None:
    """Fail before training when the data does not fit the envs it will be evaluated on."""
    from orl.eval.evaluate import env_info, resolve_eval_tasks

    for task in resolve_eval_tasks(eval_tasks):
        obs_space, action_space, _ = env_info(task.env_id)
        if obs_space.shape != (obs_dim,) or action_space.shape != (act_dim,):
            raise ValueError(
                f"The dataset has observations of size {obs_dim} and actions of size {act_dim}, "
                f"but {task.env_id} has observation shape {obs_space.shape} and action shape "
                f"{action_space.shape}: evaluate on a matching env (data.eval_tasks)."
            )


def prepare(cfg: ExperimentConfig) -> Prepared:
    """Load the data and build the sampler and the agent (seeded by ``run.seed``)."""
    from orl.agents import DataSpec, build_agent
    from orl.datasets.loading import load
    from orl.datasets.sampler import SegmentSampler

    sources, eval_tasks = dataset_sources(cfg)
    store = load(sources)
    empty = [name for t, name in enumerate(store.task_names) if not (store.episode_task == t).any()]
    if empty:
        raise ValueError(f"The training data names tasks without any episode: {empty}. "
                         "Remove them from the dataset's task list or add their episodes.")
    if eval_tasks:
        check_env_dims(store.obs_dim, store.act_dim, eval_tasks)
    seed_everything(cfg.run.seed)
    rank = int(os.environ.get("RANK", 0))
    device = "cuda" if cfg.train.device == "auto" and torch.cuda.is_available() else (
        "cpu" if cfg.train.device == "auto" else cfg.train.device)
    sampler = SegmentSampler(store, cfg.sampler, seed=cfg.run.seed + rank, device=device)
    returns = store.episode_returns
    targets = [
        cfg.eval.target_return if cfg.eval.target_return is not None
        else float(returns[store.episode_task == t].max())
        for t in range(store.num_tasks)
    ]
    spec = DataSpec(obs_dim=store.obs_dim, act_dim=store.act_dim, task_names=list(store.task_names),
                    rtg_scale=cfg.sampler.rtg_scale, target_returns=targets)
    mean, std = sampler.state_stats if sampler.state_stats is not None else (
        np.zeros((store.num_tasks, store.obs_dim)), np.ones((store.num_tasks, store.obs_dim)))
    prompts = sampler.best_prompts() if cfg.sampler.prompt_len > 0 else None
    agent = build_agent(cfg.agent, cfg.model, cfg.sampler, spec, mean, std, prompts)
    return Prepared(agent=agent, sampler=sampler, eval_tasks=eval_tasks, unseen=load_unseen(cfg))


def make_evaluator(cfg: ExperimentConfig, tasks: list[str], unseen: Any = None):
    """``evaluator(agent, step) -> metrics`` for the Trainer; keeps the last result.

    With unseen tasks their evaluation is logged under ``eval/unseen/``.
    """
    from orl.eval.evaluate import evaluate

    def run(policy: Any, on: list[str]) -> Any:
        return evaluate(policy, on, episodes=cfg.eval.episodes, num_envs=cfg.eval.num_envs,
                        seed=cfg.run.seed, vector=cfg.eval.vector, max_steps=cfg.eval.max_steps,
                        progress=False)

    def evaluator(agent: Any, step: int) -> dict[str, float]:
        result = run(agent.policy(task_agnostic=cfg.eval.task_agnostic), tasks)
        evaluator.last = result
        metrics = {f"eval/{k}": v for k, v in result.to_dict().items() if v is not None}
        if unseen is not None:
            unseen_result = run(agent.unseen_policy(unseen), list(unseen.task_names))
            evaluator.last_unseen = unseen_result
            metrics |= {f"eval/unseen/{k}": v for k, v in unseen_result.to_dict().items()
                        if v is not None}
        return metrics

    evaluator.last = evaluator.last_unseen = None
    return evaluator


def default_run_name(cfg: ExperimentConfig) -> str:
    """``<what>-<tasks>-s<seed>-<time>``; what = the agent, the continual method or the
    federated strategy."""
    if cfg.continual.enabled:
        what = f"continual-{cfg.continual.method}"
        tasks = "+".join(cfg.continual.tasks) if cfg.continual.tasks else "custom"
    else:
        what = f"{cfg.federated.strategy}-{cfg.agent.name}" if cfg.federated.active else cfg.agent.name
        tasks = "+".join(cfg.data.tasks) if not cfg.data.datasets else "custom"
    return f"{what}-{tasks}-s{cfg.run.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def save_config(cfg: ExperimentConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_run_config(run_dir: Path) -> ExperimentConfig:
    """The resolved config saved in a run directory."""
    path = Path(run_dir) / "config.yaml"
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"Run directory {str(run_dir)!r} does not exist; nothing to resume.")
    if not path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} has no config.yaml: it is not an orl run directory.")
    try:
        return from_dict(ExperimentConfig, yaml.safe_load(path.read_text()))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def start_run(cfg: ExperimentConfig, run_dir: Path, spec: Any) -> Any:
    """Write ``config.yaml`` and ``data_spec.json`` into ``run_dir`` and open its ``RunLogger``
    (a resumed run continues its wandb run)."""
    from orl.logging import RunLogger

    save_config(cfg, run_dir)
    write_json(run_dir / "data_spec.json", spec.to_dict())
    wandb_id_file = run_dir / "wandb_id"
    logger = RunLogger(run_dir, cfg.run.logger, config=to_dict(cfg), project=cfg.run.wandb_project,
                       name=run_dir.name,
                       resume_id=wandb_id_file.read_text() if wandb_id_file.exists() else None)
    if logger.wandb_id:
        wandb_id_file.write_text(logger.wandb_id)
    return logger


def report_final(result: Any, run_dir: Path, logger: Any, step: int) -> None:
    """Print the final evaluation, write ``eval_final.json`` and log it under ``final/``."""
    result.print()
    write_json(run_dir / "eval_final.json", result.to_dict())
    if logger is not None:
        result.log(logger, step, prefix="final")


def train(config_path: Path | None = None, overrides: list[str] = (),
          resume: Path | None = None, cfg: ExperimentConfig | None = None) -> dict[str, Any]:
    """Run (or resume) one experiment; returns the final metrics.

    ``resume`` is a run directory: its saved config is used (``overrides`` may change e.g.
    ``train.steps`` to train longer).
    """
    from orl.config.loader import load_config, merge, parse_overrides
    from orl.train.trainer import Trainer

    if resume is not None:
        saved = load_run_config(resume)
        cfg = from_dict(ExperimentConfig, merge(to_dict(saved), parse_overrides(list(overrides))))
        run_dir = Path(resume)
    else:
        cfg = cfg or load_config(ExperimentConfig, config_path, overrides)
        if cfg.run.name is None and int(os.environ.get("WORLD_SIZE", 1)) > 1:
            raise ValueError("Under torchrun set run.name: every process must use the same run "
                             "directory (the default name holds a timestamp).")
        run_dir = Path(cfg.run.out_dir) / (cfg.run.name or default_run_name(cfg))
        # rank 0 alone: under torchrun the other ranks would see the dir rank 0 is filling
        if int(os.environ.get("RANK", 0)) == 0 and run_dir.exists() and any(run_dir.iterdir()):
            raise FileExistsError(
                f"Run directory {str(run_dir)!r} already exists: resume it with "
                f"`train-agent --resume {run_dir}` or pick another run.name."
            )
    if cfg.continual.enabled:
        from orl.agents.continual.runner import run_continual

        return run_continual(cfg, run_dir)
    if cfg.federated.active:
        from orl.agents.federated.runner import train_federated

        return train_federated(cfg, run_dir, resume=resume is not None)
    prepared = prepare(cfg)
    is_main = int(os.environ.get("RANK", 0)) == 0
    logger = None
    if is_main:
        logger = start_run(cfg, run_dir, prepared.agent.spec)
    evaluator = (make_evaluator(cfg, prepared.eval_tasks, prepared.unseen)
                 if prepared.eval_tasks else None)
    trainer = Trainer(prepared.agent, prepared.sampler, cfg.train, run_dir, logger=logger,
                      evaluator=evaluator, extra_state={"config": to_dict(cfg),
                                                        "data_spec": prepared.agent.spec.to_dict()},
                      resume=resume is not None)
    try:
        summary = trainer.fit()
        if is_main and evaluator is not None and evaluator.last is not None:
            report_final(evaluator.last, run_dir, logger, trainer.step)
            if evaluator.last_unseen is not None:
                evaluator.last_unseen.print()
                write_json(run_dir / "eval_final_unseen.json", evaluator.last_unseen.to_dict())
    finally:
        if logger is not None:
            logger.finish()
    if is_main:
        print(f"run directory: {run_dir}")
    return summary
