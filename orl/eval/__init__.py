"""Policy evaluation on Meta-World tasks and gymnasium envs, all envs batched into one policy call."""

from orl.eval.evaluate import EnvPool, evaluate, make_vector_env, resolve_eval_tasks
from orl.eval.policy import Policy
from orl.eval.result import EvalResult, TaskResult

__all__ = ["EnvPool", "EvalResult", "Policy", "TaskResult", "evaluate", "make_vector_env",
           "resolve_eval_tasks"]
