"""The configuration of one ``train-agent`` run. Defaults are the built-in quickstart:
MTDT on a small MT10 near-optimal dataset, sized for a 2-core CPU."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orl.agents.continual.config import ContinualConfig
from orl.agents.federated.config import FederatedConfig
from orl.agents.harmodt.agent import HarmoDTConfig
from orl.datasets.sampler import SamplerConfig
from orl.model.dt import ModelConfig
from orl.train.config import TrainConfig

AGENT_NAMES = ("dt", "mtdt", "prompt_dt", "mtbc", "harmodt")
LOGGER_NAMES = ("none", "csv", "wandb")
VECTOR_MODES = ("sync", "async")


@dataclass
class AgentConfig:
    """Which learner. ``dt``: one task; ``mtdt``: shared multi-task DT; ``prompt_dt``: trajectory
    prompt instead of a task id; ``mtbc``: behaviour cloning with the same transformer;
    ``harmodt``: per-task masks over a (Prompt-)DT (section ``agent.harmodt``)."""

    name: str = "mtdt"
    task_embedding: bool = True  # mtdt/mtbc: add a learned task-id embedding to every token
    harmodt: HarmoDTConfig = field(default_factory=HarmoDTConfig)

    def __post_init__(self) -> None:
        if self.name not in AGENT_NAMES:
            raise ValueError(f"agent.name must be one of {', '.join(AGENT_NAMES)}, got {self.name!r}")


@dataclass
class DataConfig:
    """Training data: Meta-World tasks at a level (made locally when missing), or explicit ids.

    ``datasets`` replaces ``tasks``: with datasets given, ``tasks`` is emptied, so the run's
    saved config.yaml names only the data it trained on (a config's tasks may stay in place)."""

    tasks: list[str] = field(default_factory=lambda: ["MT10"])  # tasks and/or benchmarks
    level: str = "near-optimal"
    version: int = 0
    episodes: int = 20  # per task, when a missing dataset is generated
    generate_missing: bool = True
    datasets: list[str] = field(default_factory=list)  # Minari ids / D4RL files instead of tasks
    eval_tasks: list[str] = field(default_factory=list)  # gym ids to evaluate on with `datasets`
    unseen_tasks: list[str] = field(default_factory=list)  # held out of training; evaluated
    #   from a prompt of a few of their trajectories (prompt_dt, harmodt)
    unseen_episodes: int = 5  # trajectories of each unseen task the policy may see

    def __post_init__(self) -> None:
        if self.datasets:
            self.tasks = []


@dataclass
class EvalConfig:
    """Evaluation during and after training (``train.eval_every``)."""

    episodes: int = 10  # per task; episode i uses goal variation i
    num_envs: int = 10  # per task; all tasks' envs step together
    vector: str = "sync"
    target_return: float | None = None  # raw units; None: each task's best dataset return
    max_steps: int | None = None  # cap on episode length (None: the env's own limit)
    task_agnostic: bool = False  # harmodt: no task id (merged mask; G-HarmoDT: gate-picked group mask)
    stop_on_success: bool = False  # end an episode at its first info["success"] (success rates
    #   unchanged; returns and lengths stop there; Meta-World evaluations cost fewer env steps)

    def __post_init__(self) -> None:
        if self.episodes <= 0 or self.num_envs <= 0:
            raise ValueError("eval.episodes and eval.num_envs must be positive")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"eval.max_steps must be > 0 (null: the env's limit), got {self.max_steps}")
        if self.vector not in VECTOR_MODES:
            raise ValueError(f"eval.vector must be one of {VECTOR_MODES}, got {self.vector!r}")

    def rollout_options(self) -> dict[str, Any]:
        """The keyword arguments of ``orl.eval.evaluate`` this section sets (all but episodes)."""
        return {"num_envs": self.num_envs, "vector": self.vector, "max_steps": self.max_steps,
                "stop_on_success": self.stop_on_success}


@dataclass
class RunConfig:
    name: str | None = None  # default: <agent>-<tasks>-<timestamp>
    out_dir: str = "runs"
    seed: int = 0
    logger: str = "wandb"  # none | csv | wandb (offline unless WANDB_MODE says otherwise)
    wandb_project: str = "orl"
    wandb_group: str | None = None  # e.g. the study a run belongs to (the dashboard groups it)

    def __post_init__(self) -> None:
        if self.logger not in LOGGER_NAMES:
            raise ValueError(f"run.logger must be one of {', '.join(LOGGER_NAMES)}, got {self.logger!r}")


@dataclass
class ExperimentConfig:
    agent: AgentConfig = field(default_factory=AgentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(
        default_factory=lambda: SamplerConfig(context_len=20, batch_size=32, rtg_scale=1000.0)
    )
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=2000, lr=1e-3, warmup_steps=200,
                                            log_every=100, checkpoint_every=1000)
    )
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    continual: ContinualConfig = field(default_factory=ContinualConfig)  # task sequences
    federated: FederatedConfig = field(default_factory=FederatedConfig)  # strategy none: off

    def __post_init__(self) -> None:
        if self.continual.enabled and self.federated.active:
            raise ValueError("continual and federated training cannot be combined: set "
                             "continual.enabled=false or federated.strategy=none")
        ignored = self.continual.given_while_off()
        if ignored:
            raise ValueError(f"{', '.join(ignored)} given but continual.enabled is false, so the run "
                             "would ignore them: set continual.enabled=true to learn the sequence, or "
                             "drop them")
