"""One ``train-agent`` run: data -> sampler -> agent -> Trainer -> evaluation, in a run dir.

The run directory holds ``config.yaml`` (the resolved config), ``data_spec.json``,
``checkpoints/``, ``metrics.jsonl``/``metrics.csv``, ``eval_final.json`` and the wandb files, and
``done.json`` once everything else is written (the config the run completed with, its metrics).
"""

from __future__ import annotations

import json
import os
import random
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

DONE_FILE = "done.json"


@dataclass
class Prepared:
    """Everything a run needs, built from its config."""

    agent: Any
    sampler: Any
    eval_tasks: list[str]
    unseen: Any = None  # TrajectoryStore of the few trajectories of each unseen task


def seed_everything(seed: int) -> None:
    """One seed drives torch, numpy and ``random`` (the sampler and envs take it explicitly)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def dataset_sources(cfg: ExperimentConfig) -> tuple[list[str], list[str]]:
    """(dataset ids or files to load, tasks to evaluate on); makes missing Meta-World data.

    Fails before any training when a dataset is missing and may not be generated.
    """
    from orl.datasets.generation import GenerationConfig, generate
    from orl.datasets.origin import dataset_eval_tasks
    from orl.datasets.registry import metaworld_id, require_dataset
    from orl.envs.benchmarks import resolve_tasks

    if cfg.data.datasets:  # evaluated on data.eval_tasks, else on the envs the data names
        return list(cfg.data.datasets), list(cfg.data.eval_tasks) or dataset_eval_tasks(
            list(cfg.data.datasets))
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


def check_max_timestep(max_timestep: int, episode_lengths: np.ndarray, eval_tasks: list[str],
                       eval_max_steps: int | None) -> None:
    """Fail before training when an episode of the data or of evaluation has more steps than
    ``model.max_timestep`` (the timestep embedding has one row per step)."""
    from orl.eval.evaluate import env_info, resolve_eval_tasks

    longest = int(episode_lengths.max(initial=0))
    if longest > max_timestep:
        raise ValueError(f"model.max_timestep={max_timestep} is shorter than the longest training "
                         f"episode ({longest} steps): set model.max_timestep={longest} or more.")
    for task in resolve_eval_tasks(eval_tasks) if eval_tasks else []:
        limits = [n for n in (env_info(task.env_id)[2], eval_max_steps) if n is not None]
        if limits and min(limits) > max_timestep:
            raise ValueError(
                f"model.max_timestep={max_timestep} is shorter than the evaluation episodes of "
                f"{task.env_id} ({min(limits)} steps): set model.max_timestep={min(limits)} or "
                f"more, or cap them with eval.max_steps={max_timestep}.")


def run_action_bounds(cfg: ExperimentConfig, sources: list[str], eval_tasks: list[str],
                      actions: np.ndarray) -> tuple[list[float] | None, list[float] | None]:
    """(low, high) of the action space the policy acts in, from the datasets or the eval envs;
    with ``model.tanh_actions`` checked against the data's ``actions`` (see ``tanh_bounds``)."""
    from orl.datasets.origin import action_bounds, tanh_bounds

    bounds = action_bounds(sources, eval_tasks)
    if cfg.model.tanh_actions:
        bounds = tanh_bounds(bounds, actions)
    return bounds if bounds is not None else (None, None)


def prepare(cfg: ExperimentConfig) -> Prepared:
    """Load the data and build the sampler and the agent (seeded by ``run.seed``)."""
    from orl.agents import DataSpec, build_agent
    from orl.datasets.loading import load
    from orl.datasets.sampler import SegmentSampler, check_prompt_len

    sources, eval_tasks = dataset_sources(cfg)
    store = load(sources)
    empty = [name for t, name in enumerate(store.task_names) if not (store.episode_task == t).any()]
    if empty:
        raise ValueError(f"The training data names tasks without any episode: {empty}. "
                         "Remove them from the dataset's task list or add their episodes.")
    if eval_tasks:
        check_env_dims(store.obs_dim, store.act_dim, eval_tasks)
    check_max_timestep(cfg.model.max_timestep, store.episode_lengths, eval_tasks, cfg.eval.max_steps)
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
    low, high = run_action_bounds(cfg, sources, eval_tasks, store.actions)
    spec = DataSpec(obs_dim=store.obs_dim, act_dim=store.act_dim, task_names=list(store.task_names),
                    rtg_scale=cfg.sampler.rtg_scale, target_returns=targets, action_low=low,
                    action_high=high, eval_tasks=eval_tasks)
    mean, std = sampler.state_stats if sampler.state_stats is not None else (
        np.zeros((store.num_tasks, store.obs_dim)), np.ones((store.num_tasks, store.obs_dim)))
    prompts = sampler.best_prompts() if cfg.sampler.prompt_len > 0 else None
    agent = build_agent(cfg.agent, cfg.model, cfg.sampler, spec, mean, std, prompts)
    unseen = load_unseen(cfg)
    if unseen is not None:  # their prompts are cut at evaluation: fail now, not after training
        check_prompt_len(unseen, cfg.sampler.prompt_len)
    return Prepared(agent=agent, sampler=sampler, eval_tasks=eval_tasks, unseen=unseen)


def make_evaluator(cfg: ExperimentConfig, tasks: list[str], unseen: Any = None):
    """``evaluator(agent, step) -> metrics`` for the Trainer; keeps the last result. Its
    evaluations step the same envs (an :class:`~orl.eval.evaluate.EnvPool`;
    ``evaluator.close()`` closes them).

    With unseen tasks their evaluation is logged under ``eval/unseen/``.
    """
    from orl.eval.evaluate import EnvPool, evaluate

    pool = EnvPool()

    def run(policy: Any, on: list[str]) -> Any:
        return evaluate(policy, on, episodes=cfg.eval.episodes, seed=cfg.run.seed, progress=False,
                        env_pool=pool, **cfg.eval.rollout_options())

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
    evaluator.close = pool.close
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


def completed_summary(run_dir: Path, cfg: ExperimentConfig) -> dict[str, Any] | None:
    """The final metrics of the run in ``run_dir`` if it completed with config ``cfg``, else None
    (not finished, or resumed with overrides that change it, e.g. a larger ``train.steps``)."""
    path = Path(run_dir) / DONE_FILE
    if not path.is_file():
        return None
    done = json.loads(path.read_text())
    return done["summary"] if done["config"] == to_dict(cfg) else None


def clean_run_dir(run_dir: Path) -> None:
    """Remove what writes cut short by a kill left in ``run_dir``: in it, in its checkpoints and
    in the folders of its continual stages (see ``clean_interrupted_writes``)."""
    from orl.train.checkpoint import checkpoints_dir, clean_interrupted_writes

    for directory in [run_dir, checkpoints_dir(run_dir), *Path(run_dir).glob("stages/*")]:
        clean_interrupted_writes(directory)


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def check_same_action_bounds(saved_spec: Path, spec: Any) -> None:
    """Refuse to go on with a run (``saved_spec``: its ``data_spec.json``) whose tanh actions
    were scaled to other bounds, e.g. one an older orl version started (always [-1, 1])."""
    if not saved_spec.is_file():
        return
    saved = json.loads(saved_spec.read_text())
    unit = [-1.0] * spec.act_dim, [1.0] * spec.act_dim
    before = saved.get("action_low") or unit[0], saved.get("action_high") or unit[1]
    now = spec.action_low or unit[0], spec.action_high or unit[1]
    if before != now:
        raise ValueError(
            f"{str(saved_spec.parent)!r} was trained with tanh actions in low {before[0]}, high "
            f"{before[1]}, but its data now gives the action bounds low {now[0]}, high {now[1]} "
            "(orl versions that did not record action bounds kept tanh actions in [-1, 1] for "
            "every env): finish it with the version that started it, or start a new run.")


def start_run(cfg: ExperimentConfig, run_dir: Path, spec: Any) -> Any:
    """Write ``config.yaml`` and ``data_spec.json`` into ``run_dir`` and open its ``RunLogger``
    (a resumed run continues its wandb run)."""
    from orl.logging import RunLogger

    if cfg.model.tanh_actions:
        check_same_action_bounds(run_dir / "data_spec.json", spec)
    save_config(cfg, run_dir)
    write_json(run_dir / "data_spec.json", spec.to_dict())
    wandb_id_file = run_dir / "wandb_id"
    logger = RunLogger(run_dir, cfg.run.logger, config=to_dict(cfg), project=cfg.run.wandb_project,
                       name=run_dir.name, group=cfg.run.wandb_group,
                       resume_id=wandb_id_file.read_text() if wandb_id_file.exists() else None)
    if logger.wandb_id:
        wandb_id_file.write_text(logger.wandb_id)
    return logger


def report_final(result: Any, run_dir: Path, logger: Any, step: int) -> None:
    """Print the final evaluation, write ``eval_final.json`` and log it under ``final/``."""
    result.print()
    write_json(run_dir / "eval_final.json", result.to_json())
    if logger is not None:
        result.log(logger, step, prefix="final")


def train(config_path: Path | None = None, overrides: list[str] = (),
          resume: Path | None = None, cfg: ExperimentConfig | None = None) -> dict[str, Any]:
    """Run (or resume) one experiment; returns the final metrics.

    ``resume`` is a run directory: its saved config is used (``overrides`` may change e.g.
    ``train.steps`` to train longer).
    """
    from orl.config.loader import load_config, merge, parse_overrides
    from orl.train.checkpoint import latest_checkpoint

    if resume is not None:
        saved = load_run_config(resume)
        cfg = from_dict(ExperimentConfig, merge(to_dict(saved), parse_overrides(list(overrides))))
        run_dir = Path(resume)
        done = completed_summary(run_dir, cfg)
        if done is not None:
            print(f"Run {str(run_dir)!r} is complete (checkpoints and results are written): "
                  "nothing to resume. To train it longer, resume it with a larger train.steps "
                  "(federated.rounds for a federated run).")
            return done
        if int(os.environ.get("RANK", 0)) == 0:
            clean_run_dir(run_dir)
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
    resuming = resume is not None and latest_checkpoint(run_dir) is not None
    if resume is not None and not resuming and not cfg.continual.enabled:
        print(f"Run {str(run_dir)!r} has no checkpoint (it stopped before its first one): "
              "starting it from step 0 with its saved config.")
    if cfg.continual.enabled:
        from orl.agents.continual.runner import run_continual

        summary = run_continual(cfg, run_dir)
    elif cfg.federated.active:
        from orl.agents.federated.runner import train_federated

        summary = train_federated(cfg, run_dir, resume=resuming)
    else:
        summary = train_single(cfg, run_dir, resume=resuming)
    if int(os.environ.get("RANK", 0)) == 0:
        write_json(run_dir / DONE_FILE, {"config": to_dict(cfg), "summary": summary})
    return summary


def train_single(cfg: ExperimentConfig, run_dir: Path, resume: bool) -> dict[str, Any]:
    """A run of one ``Trainer`` (neither continual nor federated); ``resume`` continues it from
    its latest checkpoint. Returns the final metrics."""
    from orl.train.trainer import Trainer

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
                      resume=resume)
    try:
        summary = trainer.fit()
        if is_main and evaluator is not None and evaluator.last is not None:
            report_final(evaluator.last, run_dir, logger, trainer.step)
            if evaluator.last_unseen is not None:
                evaluator.last_unseen.print()
                write_json(run_dir / "eval_final_unseen.json", evaluator.last_unseen.to_json())
    finally:
        if evaluator is not None:
            evaluator.close()
        if logger is not None:
            logger.finish()
    if is_main:
        print(f"run directory: {run_dir}")
    return summary
