"""Dataset generation speed: env-steps/s per worker of ``orl data generate`` vs the raw simulator.

    python bench/generation_throughput.py --task push-v3 --episodes 60 --workers 2

The baseline steps Meta-World's env class directly with its scripted policy in one process
(no wrapper, no noise, no storage). The generator's figure includes everything a user waits
for: worker start-up, env creation, noise, shard files and Minari assembly.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def raw_steps_per_second(task: str, steps: int) -> float:
    import metaworld
    from metaworld.policies import ENV_POLICY_MAP

    mt1 = metaworld.MT1(task, seed=0)
    env = mt1.train_classes[task]()
    env.set_task(mt1.train_tasks[0])
    policy = ENV_POLICY_MAP[task]()
    obs, _ = env.reset()
    start = time.perf_counter()
    for _ in range(steps):
        obs, _, terminated, truncated, _ = env.step(np.clip(policy.get_action(obs), -1, 1))
        if terminated or truncated:
            obs, _ = env.reset()
    return steps / (time.perf_counter() - start)


def generator_steps_per_second(task: str, episodes: int, workers: int) -> tuple[float, float]:
    from orl.datasets.generation import GenerationConfig, generate

    with tempfile.TemporaryDirectory() as root:
        cfg = GenerationConfig(tasks=[task], levels=["near-optimal"], episodes=episodes,
                               workers=workers, episodes_per_shard=max(1, episodes // (2 * workers)))
        start = time.perf_counter()
        generate(cfg, root=Path(root), progress=False)
        elapsed = time.perf_counter() - start
    total = episodes * 500 / elapsed
    return total, total / workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="push-v3")
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--raw-steps", type=int, default=10000)
    args = parser.parse_args()

    raw = raw_steps_per_second(args.task, args.raw_steps)
    total, per_worker = generator_steps_per_second(args.task, args.episodes, args.workers)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores")
    print(f"task {args.task}, {args.episodes} episodes x 500 steps, {args.workers} workers")
    print("| what | env-steps/s |\n|---|---|")
    print(f"| raw simulator + scripted policy, 1 process | {raw:,.0f} |")
    print(f"| orl data generate, all workers | {total:,.0f} |")
    print(f"| orl data generate, per worker | {per_worker:,.0f} ({per_worker / raw:.2f}x raw) |")


if __name__ == "__main__":
    main()
