"""Loading trained agents back as ready policies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a run dir (its ``final``, else the latest) or a checkpoint dir."""
    from orl.train.checkpoint import checkpoints_dir, latest_checkpoint

    path = Path(path)
    if (path / "state.json").is_file():
        return path
    if (path / "continual.json").is_file():  # a continual run: the agent after its last phase
        from orl.agents.continual.runner import last_snapshot

        return last_snapshot(path)
    final = checkpoints_dir(path) / "final"
    if (final / "state.json").is_file():
        return final
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(
            f"{str(path)!r} is neither a checkpoint directory nor a run directory with checkpoints."
        )
    return latest


def saved_run(path: str | Path) -> tuple[Path, Any, Any, dict[str, Any]]:
    """(checkpoint dir, ``ExperimentConfig``, ``DataSpec``, extra state) of a checkpoint or run dir."""
    from orl.agents import DataSpec
    from orl.config import from_dict
    from orl.config.experiment import ExperimentConfig
    from orl.train.checkpoint import CheckpointError, read_checkpoint

    checkpoint = resolve_checkpoint(path)
    state, _ = read_checkpoint(checkpoint, files=())
    extra = state.get("extra", {})
    if "config" not in extra or "data_spec" not in extra:
        raise CheckpointError(f"checkpoint {checkpoint} was not written by train-agent (no config)")
    try:
        spec = DataSpec.from_dict(extra["data_spec"])
    except ValueError as err:
        raise CheckpointError(f"checkpoint {checkpoint}: {err}. Another orl version wrote it: "
                              "load it with that version, or retrain with this one") from err
    return checkpoint, from_dict(ExperimentConfig, extra["config"]), spec, extra


def load_trained_agent(path: str | Path, device: str | None = None) -> Any:
    """The agent saved in a checkpoint (or a run dir), weights loaded, in eval mode."""
    return _agent_of(*saved_run(path), device)


def _agent_of(checkpoint: Path, cfg: Any, spec: Any, extra: dict[str, Any], device: str | None) -> Any:
    """``load_trained_agent`` from what ``saved_run`` read."""
    from orl.agents import build_agent
    from orl.train.checkpoint import load_model_weights

    num_tasks = len(spec.task_names)
    prompts = None
    if cfg.agent.name in ("prompt_dt", "harmodt") and cfg.sampler.prompt_len > 0:
        shape = (num_tasks, cfg.sampler.prompt_len)
        prompts = {
            "states": torch.zeros(*shape, spec.obs_dim), "actions": torch.zeros(*shape, spec.act_dim),
            "returns_to_go": torch.zeros(shape), "timesteps": torch.zeros(shape, dtype=torch.long),
            "mask": torch.zeros(shape, dtype=torch.bool),
        }
    if cfg.continual.enabled:  # one head per stage
        from orl.agents.continual.runner import build_continual_agent

        agent = build_continual_agent(cfg, spec, torch.zeros(num_tasks, spec.obs_dim),
                                      torch.ones(num_tasks, spec.obs_dim))
    else:
        agent = build_agent(cfg.agent, cfg.model, cfg.sampler, spec,
                            torch.zeros(num_tasks, spec.obs_dim), torch.ones(num_tasks, spec.obs_dim),
                            prompts)
    if "pruned" in extra:  # structured pruning (orl prune): rebuild the kept heads/neurons first
        agent.model.transformer.resize(**extra["pruned"]["structure"])
    load_model_weights(checkpoint, agent)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return agent.to(device).eval()


def load_agent(path: str | Path, device: str | None = None, with_tasks: bool = False,
               task_agnostic: bool = False) -> Any:
    """A ready evaluation policy from a checkpoint or run dir (``orl.evaluate`` accepts it).

    With ``with_tasks`` also the tasks to evaluate it on (``run_eval_tasks``). ``task_agnostic``
    for agents that have such a mode (HarmoDT's merged model, G-HarmoDT's gate).
    """
    run = saved_run(path)
    policy = _agent_of(*run, device).policy(task_agnostic=task_agnostic)
    _, cfg, spec, _ = run
    return (policy, run_eval_tasks(cfg, spec)) if with_tasks else policy


def run_eval_tasks(cfg: Any, spec: Any) -> list[str]:
    """The tasks a trained run is evaluated on: those it evaluated on while training (its
    ``data.eval_tasks`` or the envs its datasets name), else, for runs of older versions, its
    ``data.eval_tasks`` or training tasks; [] when its datasets name no env."""
    tasks = list(spec.eval_tasks) or list(cfg.data.eval_tasks)
    if tasks or cfg.data.datasets:
        return tasks
    return list(spec.task_names)
