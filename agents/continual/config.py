"""The ``continual:`` section of an experiment config (off by default)."""

from __future__ import annotations

from dataclasses import dataclass, field

METHODS = ("finetune", "l2", "ewc", "mas", "packnet", "lora", "replay", "agem",
           "compoformer_grow", "compoformer_prune", "mtl")
#: Penalty coefficients of the released OCW benchmark, used when ``reg_coef`` is not set.
DEFAULT_REG_COEF = {"l2": 5000.0, "ewc": 5000.0, "mas": 10.0}


@dataclass
class StageConfig:
    """One stage given explicitly: its name, its dataset (Minari id or D4RL file), the env
    (gymnasium id or Meta-World task) it is evaluated on, and for CompoFormer a one-sentence
    description (default: the Meta-World description of ``eval_task``)."""

    name: str
    dataset: str
    eval_task: str
    description: str = ""


@dataclass
class ContinualConfig:
    """A task sequence learned one task at a time; ``train.steps`` is the budget of each task,
    ``train.eval_every`` how often the tasks of the sequence are evaluated during a stage:
    every task (``curve_tasks: all``, the curves of Continual World's plots) or only the stage's
    own task (``current``: what forward transfer needs, at a tenth of OCW10's evaluation cost).
    The end of every stage evaluates the rows of the success matrix: every task
    (``matrix_tasks: all``) or the tasks trained so far and the next one (``seen``: what P, F and
    both forward transfers need, a third less evaluation on OCW10; the rest of the row is NaN).

    Stages come from ``tasks`` (Meta-World tasks and/or benchmarks such as ``OCW10``, data
    ``metaworld/<task>/<data.level>-v<data.version>``) or from explicit ``stages``.

    ``method: mtl`` is the multi-task bound: every stage trains on all stages' data at once.
    ``reference`` (a stage name, e.g. ``push-wall-v3``) makes a single-task reference run for
    Continual World's forward transfer: the model of the whole sequence (every action head, the
    same initialisation for the same ``run.seed``) trains only that stage, from scratch, with
    its head, as plain finetuning.
    """

    enabled: bool = False
    tasks: list[str] = field(default_factory=list)
    stages: list[StageConfig] = field(default_factory=list)
    method: str = "finetune"  # one of METHODS
    reference: str = ""  # a stage name: train only that stage (a single-task reference run)
    curve_tasks: str = "all"  # all | current: tasks evaluated every train.eval_every steps
    matrix_tasks: str = "all"  # all | seen: tasks evaluated at the end of each stage
    final_episodes: int = 0  # > 0: after the last stage every task again, with this many
    # episodes: the last row of the success matrix (the last stage's end evaluates its task only)
    reg_coef: float | None = None  # l2 / ewc / mas penalty weight (None: DEFAULT_REG_COEF)
    importance_samples: int = 64  # ewc / mas: per-sample gradients at the end of a stage
    lora_rank: int = 8  # lora, compoformer_grow: adapter of each task on the attention QKV
    lora_alpha: float = 1.0
    prune_keep: float = 0.5  # packnet, compoformer_prune: share of free weights a task keeps
    prune_at: float = 0.8  # ... pruned after this share of the task's steps (40k of 50k)
    prune_scope: str = "global"  # ... by one magnitude threshold over all linears (the released
    # code) or one per linear (layer); the last task keeps every free weight either way
    replay_fraction: float = 0.5  # replay, agem: share of each batch from earlier tasks
    compose_threshold: float = 0.8  # compoformer: reuse an earlier policy at this success
    compose_warmup_steps: int = 1000  # compoformer: steps training the query/key maps
    compose_episodes: int = 10  # compoformer: rollouts of the best-matching earlier policy
    attention_dim: int = 256  # compoformer: query/key size
    attention_temperature: float = 16.0  # softmax(q . k / temperature)
    head_hidden: int | None = None  # compoformer: hidden units of each task's MLP head
    # (None: model.embed_dim, as the released code)
    # compoformer: dropout in the frozen earlier modules while a task trains; None: as the
    # released code, on for Grow and off (eval mode) for Prune
    frozen_dropout: bool | None = None

    def __post_init__(self) -> None:
        rules = [
            ("method", self.method in METHODS, f"one of {', '.join(METHODS)}"),
            ("curve_tasks", self.curve_tasks in ("all", "current"), "all or current"),
            ("matrix_tasks", self.matrix_tasks in ("all", "seen"), "all or seen"),
            ("final_episodes", self.final_episodes >= 0, ">= 0 (0: the last row of the matrix)"),
            ("reg_coef", self.reg_coef is None or self.reg_coef >= 0, ">= 0"),
            ("importance_samples", self.importance_samples > 0, "> 0"),
            ("lora_rank", self.lora_rank > 0, "> 0"),
            ("prune_keep", 0 < self.prune_keep < 1, "in (0, 1)"),
            ("prune_at", 0 < self.prune_at < 1, "in (0, 1)"),
            ("prune_scope", self.prune_scope in ("global", "layer"), "global or layer"),
            ("replay_fraction", 0 < self.replay_fraction < 1, "in (0, 1)"),
            ("compose_threshold", 0 <= self.compose_threshold <= 1, "in [0, 1]"),
            ("compose_warmup_steps", self.compose_warmup_steps > 0, "> 0"),
            ("compose_episodes", self.compose_episodes > 0, "> 0"),
            ("attention_dim", self.attention_dim > 0, "> 0"),
            ("attention_temperature", self.attention_temperature > 0, "> 0"),
            ("head_hidden", self.head_hidden is None or self.head_hidden > 0,
             "> 0 (null: model.embed_dim)"),
        ]
        for name, ok, expected in rules:
            if not ok:
                raise ValueError(f"continual.{name} must be {expected}, got {getattr(self, name)!r}")
        if self.enabled and bool(self.tasks) == bool(self.stages):
            raise ValueError("continual: give either continual.tasks (e.g. [OCW10]) or "
                             "continual.stages (name, dataset, eval_task each), not both or neither")
        if self.reference and self.method != "finetune":
            raise ValueError(f"continual.reference={self.reference!r} trains one stage from scratch "
                             f"as plain finetuning: set continual.method=finetune, not {self.method!r}")
        names = [s.name for s in self.stages]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"continual.stages: duplicate stage names {repeated}; every stage "
                             "needs its own name")

    def given_while_off(self) -> list[str]:
        """The keys that say what the sequence is, set while ``enabled`` is false: an experiment
        would ignore them (``ExperimentConfig`` refuses that)."""
        if self.enabled:
            return []
        given = [("tasks", self.tasks), ("stages", self.stages),
                 ("method", self.method != type(self).method), ("reference", self.reference)]
        return [f"continual.{name}" for name, is_set in given if is_set]

    @property
    def coef(self) -> float:
        """The penalty weight of l2 / ewc / mas."""
        return self.reg_coef if self.reg_coef is not None else DEFAULT_REG_COEF.get(self.method, 0.0)
