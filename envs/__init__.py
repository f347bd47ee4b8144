"""Environments: Meta-World tasks, benchmark task lists, gymnasium MuJoCo envs."""

from orl.envs.benchmarks import (
    BENCHMARKS,
    MT10,
    MT30,
    MT50,
    OCW10,
    OCW20,
    get_benchmark,
    resolve_tasks,
)
from orl.envs.descriptions import TASK_DESCRIPTIONS, describe
from orl.envs.metaworld import (
    MT50_TASKS,
    MetaWorldEnv,
    check_task,
    env_id,
    expert_policy,
    make,
    register_all,
)
from orl.envs.mujoco import (
    D4RL_REFERENCE,
    ENV_IDS,
    D4RLReference,
    make_mujoco,
    normalized_score,
    reference_for,
)

register_all()

__all__ = [
    "BENCHMARKS", "D4RLReference", "D4RL_REFERENCE", "ENV_IDS", "MT10", "MT30", "MT50",
    "MT50_TASKS", "MetaWorldEnv", "OCW10", "OCW20", "TASK_DESCRIPTIONS", "check_task",
    "describe", "env_id", "expert_policy", "get_benchmark", "make", "make_mujoco",
    "normalized_score", "reference_for", "register_all", "resolve_tasks",
]
