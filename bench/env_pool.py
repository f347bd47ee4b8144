"""What making the evaluation envs costs, and what an EnvPool saves: one Meta-World env made,
then the same evaluation (OCW10's first tasks, 20 envs each, the scripted experts, episodes
ending at their first success) with fresh envs and with envs from a pool, repeated as a
continual run's curve and matrix evaluations repeat.

    OMP_NUM_THREADS=1 python bench/env_pool.py [--tasks 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from orl.envs import expert_policy, resolve_tasks
from orl.eval.evaluate import EnvPool, evaluate, make_env, resolve_eval_tasks


class Experts:
    """Meta-World's scripted experts, one per env."""

    def reset(self, num_envs: int, tasks: list[str]) -> None:
        self.experts = [expert_policy(task) for task in tasks]

    def act(self, obs: np.ndarray, reward: np.ndarray) -> np.ndarray:
        return np.stack([expert(o) for expert, o in zip(self.experts, obs)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    tasks = resolve_tasks("OCW10")[: args.tasks]
    env_id = resolve_eval_tasks(tasks[0])[0].env_id
    make_env(env_id, None).close()  # first make: imports and Meta-World's variation tables
    start = time.perf_counter()
    for _ in range(10):
        make_env(env_id, None).close()
    print(f"one env of {tasks[0]}: {(time.perf_counter() - start) / 10 * 1e3:.0f} ms to make")
    kw = dict(episodes=20, num_envs=20, seed=0, progress=False, stop_on_success=True)
    pool = EnvPool()
    for name, options in (("fresh envs", {}), ("env pool", {"env_pool": pool})):
        times, steps = [], 0
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = evaluate(Experts(), tasks, **kw, **options)
            times.append(time.perf_counter() - start)
            steps += result.env_steps
        print(f"{name}: {len(tasks)} tasks x 20 episodes, {args.repeats} times: "
              f"{', '.join(f'{t:.1f}' for t in times)} s ({steps} env steps in all)")
    pool.close()


if __name__ == "__main__":
    main()
