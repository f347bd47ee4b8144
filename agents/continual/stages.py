"""The stages of a task sequence: names, datasets and evaluation envs, checked before training."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from orl.datasets.store import TrajectoryStore


@dataclass(frozen=True)
class Stage:
    """Stage ``index``: trains on ``dataset``, evaluated on env ``eval_task``."""

    index: int
    name: str
    dataset: str
    eval_task: str
    description: str = ""


def resolve_stages(cfg: Any) -> list[Stage]:
    """The stages experiment config ``cfg`` trains: the sequence, or with
    ``continual.reference`` its stage of that name alone (as stage 0)."""
    sequence = sequence_stages(cfg)
    if not cfg.continual.reference:
        return sequence
    return [replace(reference_stage(cfg, sequence), index=0)]


def action_heads(cfg: Any) -> tuple[int, list[int]]:
    """The number of action heads of ``cfg``'s model (one per stage of the sequence) and the
    head of each stage ``resolve_stages`` gives: a reference run keeps every head and trains
    the one its stage has in the sequence."""
    sequence = sequence_stages(cfg)
    if not cfg.continual.reference:
        return len(sequence), [s.index for s in sequence]
    return len(sequence), [reference_stage(cfg, sequence).index]


def reference_stage(cfg: Any, sequence: list[Stage]) -> Stage:
    """The stage of ``sequence`` named ``continual.reference``."""
    names = [s.name for s in sequence]
    if cfg.continual.reference not in names:
        raise ValueError(f"continual.reference={cfg.continual.reference!r} is not a stage of the "
                         f"sequence; give one of {names}")
    return sequence[names.index(cfg.continual.reference)]


def sequence_stages(cfg: Any) -> list[Stage]:
    """The stages of the sequence of ``cfg`` (``continual.tasks`` or ``continual.stages``).

    A task repeated in the sequence (OCW20) gets its occurrence in the name: ``hammer-v3#2``.
    """
    from orl.datasets.registry import metaworld_id
    from orl.envs.benchmarks import resolve_tasks

    section = cfg.continual
    if section.stages:
        return [Stage(i, s.name, s.dataset, s.eval_task, s.description)
                for i, s in enumerate(section.stages)]
    try:
        tasks = resolve_tasks(section.tasks)
    except ValueError as err:
        raise ValueError(f"continual.tasks: {err}") from None
    stages = []
    for i, task in enumerate(tasks):
        seen = tasks[:i].count(task)
        name = f"{task}#{seen + 1}" if seen else task
        stages.append(Stage(i, name, metaworld_id(task, cfg.data.level, cfg.data.version), task))
    return stages


def check_stages(stages: list[Stage]) -> list[Stage]:
    """The stages with their env names resolved (``hammer`` -> ``hammer-v3``); fails before any
    training if a stage's dataset or evaluation env does not exist."""
    from orl.datasets.registry import require_dataset
    from orl.eval.evaluate import resolve_eval_tasks

    checked = []
    for stage in stages:
        where = f"stage {stage.index} ({stage.name})"
        if stage.dataset.endswith((".hdf5", ".h5")):
            if not Path(stage.dataset).is_file():
                raise FileNotFoundError(f"{where}: dataset file {stage.dataset!r} does not exist")
        else:
            try:
                require_dataset(stage.dataset)
            except FileNotFoundError as err:
                raise FileNotFoundError(f"{where}: {err}") from None
        try:
            env = resolve_eval_tasks([stage.eval_task])
        except ValueError as err:
            raise ValueError(f"{where}: unknown eval_task {stage.eval_task!r}: {err}") from None
        checked.append(replace(stage, eval_task=env[0].name))
    return checked


def load_stage_stores(stages: list[Stage]) -> list[TrajectoryStore]:
    """Each stage's data as a store over all stage names whose episodes belong to that stage
    (task index = stage index), so the sampler's task ids are stage ids."""
    from orl.datasets.loading import load

    names = [s.name for s in stages]
    stores = []
    for stage in stages:
        store = load(stage.dataset)
        if store.num_tasks != 1:
            raise ValueError(f"stage {stage.name}: dataset {stage.dataset!r} holds "
                             f"{store.num_tasks} tasks; a stage trains on one")
        stores.append(replace(store, episode_task=np.full(store.num_episodes, stage.index),
                              task_names=names))
    dims = {(s.obs_dim, s.act_dim) for s in stores}
    if len(dims) > 1:
        raise ValueError(f"the stages' datasets have different (obs, act) dims {sorted(dims)}: "
                         "one model plays the whole sequence")
    return stores
