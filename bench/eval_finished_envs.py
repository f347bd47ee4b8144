"""What dropping finished envs from the policy's batch saves in a continual run's evaluation.

Loads the agent a continual run saved after its last finished phase and evaluates the tasks
of its first ``--stages`` stages as a success-matrix row does (every task's envs in one vector
env, the run's eval options: OCW10's study ends episodes at their first success), twice per
round: with the policy acting for every env until the wave's last episode ends (what
``evaluate`` did before policies could ``keep`` rows) and with the finished envs dropped. Rounds
alternate so that load from other processes hits both alike; medians are reported, with the
time spent in ``act``, the success rates of both and whether every episode's return and length
are the same in both (they could differ by the float rounding of batched matrix products of
other shapes: a changed action changes the episode).

    OMP_NUM_THREADS=1 python bench/eval_finished_envs.py RUN_DIR [--stages 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch


class Timed:
    """The policy's ``reset``/``act`` (and ``keep`` when ``keep_rows``), with time in ``act``."""

    def __init__(self, policy, keep_rows: bool) -> None:
        self.policy, self.act_seconds = policy, 0.0
        if keep_rows:
            self.keep = policy.keep

    def reset(self, num_envs: int, tasks: list[str]) -> None:
        self.policy.reset(num_envs, tasks=tasks)

    def act(self, obs: np.ndarray, reward: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        action = self.policy.act(obs, reward)
        self.act_seconds += time.perf_counter() - start
        return action


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--stages", type=int, default=2, help="evaluate the first N stages' tasks")
    parser.add_argument("--episodes", type=int, default=None, help="default: the run's eval.episodes")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    from orl.agents.continual.runner import ContinualRun, last_snapshot
    from orl.eval import evaluate
    from orl.experiment import load_run_config

    cfg = load_run_config(args.run_dir)
    run = ContinualRun(cfg, args.run_dir)
    run.restore(last_snapshot(args.run_dir))
    run.agent.eval()
    stages = list(range(args.stages))
    envs = [run.stages[i].eval_task for i in stages]
    episodes = args.episodes or cfg.eval.episodes

    def timed_evaluation(keep_rows: bool) -> tuple[float, float, object]:
        policy = Timed(run.agent.policy(stages=stages, task_names=envs), keep_rows)
        start = time.perf_counter()
        with torch.no_grad():
            result = evaluate(policy, envs, episodes=episodes, seed=cfg.run.seed, progress=False,
                              env_pool=run.env_pool, **cfg.eval.rollout_options())
        return time.perf_counter() - start, policy.act_seconds, result

    timed_evaluation(True)  # untimed: the env pool makes its envs
    results: dict[str, list] = {"every env": [], "finished dropped": []}
    for _ in range(args.rounds):
        for name, keep_rows in (("every env", False), ("finished dropped", True)):
            results[name].append(timed_evaluation(keep_rows))
    run.env_pool.close()
    every, dropped = (runs[0][2] for runs in results.values())
    same = all(a.returns.tolist() == b.returns.tolist() and a.lengths.tolist() == b.lengths.tolist()
               for a, b in zip(every.tasks, dropped.tasks, strict=True))
    print(f"{args.run_dir.name}: stages 0-{args.stages - 1} ({', '.join(envs)}), {episodes} "
          f"episodes each, {cfg.eval.rollout_options()}, {args.rounds} rounds, medians:")
    for name, runs in results.items():
        seconds = statistics.median(r[0] for r in runs)
        act = statistics.median(r[1] for r in runs)
        result = runs[0][2]
        success = ", ".join(f"{t.success_rate:.2f}" for t in result.tasks)
        print(f"  {name:>16}: {seconds:6.1f} s, act {act:5.1f} s, {result.env_steps} env steps, "
              f"success {success}")
    print(f"  every episode's return and length identical in both: {'yes' if same else 'no'}")


if __name__ == "__main__":
    main()
