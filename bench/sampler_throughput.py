"""Batches per second of SegmentSampler against the usual per-sample Python loop.

The store is synthetic and shaped like MT10 (10 tasks x 50 episodes x 500 steps, obs 39, act 4).
The baseline is the loop most DT repos use (after the original DT code): draw the batch's
episodes weighted by length, then for each sample pick a start, slice the arrays, sum the rewards
into returns-to-go, normalise, left-pad with np.concatenate; stack and torch.tensor at the end.
Both are timed at torch's default thread count and at 1 thread (as in a DataLoader worker).

    python bench/sampler_throughput.py --batch-size 256 --context-len 20 --steps 100
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch

from orl.datasets.sampler import SamplerConfig, SegmentSampler
from orl.datasets.store import TrajectoryStore


def synthetic_store(tasks: int, episodes: int, steps: int, obs_dim: int, act_dim: int,
                    seed: int = 0) -> TrajectoryStore:
    rng = np.random.default_rng(seed)
    n = tasks * episodes * steps
    return TrajectoryStore(
        observations=rng.normal(size=(n, obs_dim)).astype(np.float32),
        actions=rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        rewards=rng.uniform(0, 10, size=n).astype(np.float32),
        terminals=np.zeros(n, dtype=bool),
        timeouts=np.zeros(n, dtype=bool),
        episode_starts=np.arange(tasks * episodes + 1) * steps,
        episode_task=np.repeat(np.arange(tasks), episodes),
        task_names=[f"task-{t}" for t in range(tasks)],
    )


class LoopSampler:
    """The straightforward per-sample sampler, kept here only as the baseline."""

    def __init__(self, store: TrajectoryStore, config: SamplerConfig, seed: int = 0):
        self.store, self.config = store, config
        self.rng = np.random.default_rng(seed)
        self.mean, self.std = store.state_stats()
        self.p_episode = store.episode_lengths / store.num_steps

    def sample(self) -> tuple[torch.Tensor, ...]:
        store, K = self.store, self.config.context_len
        episodes = self.rng.choice(store.num_episodes, size=self.config.batch_size,
                                   p=self.p_episode)
        s, a, r, rtg, ts, mask = [], [], [], [], [], []
        for e in episodes:
            first, end = store.episode_starts[e], store.episode_starts[e + 1]
            task = store.episode_task[e]
            si = first + self.rng.integers(0, end - first)
            last = min(si + K, end)
            rewards = store.rewards[si:end]
            returns = np.cumsum(rewards[::-1])[::-1][: last - si] / self.config.rtg_scale
            pad = K - (last - si)
            obs = (store.observations[si:last] - self.mean[task]) / self.std[task]
            s.append(np.concatenate([np.zeros((pad, store.obs_dim)), obs]))
            a.append(np.concatenate([np.zeros((pad, store.act_dim)), store.actions[si:last]]))
            r.append(np.concatenate([np.zeros(pad), store.rewards[si:last]]))
            rtg.append(np.concatenate([np.zeros(pad), returns]))
            ts.append(np.concatenate([np.zeros(pad), np.arange(si - first, last - first)]))
            mask.append(np.concatenate([np.zeros(pad), np.ones(last - si)]))
        return (
            torch.tensor(np.stack(s), dtype=torch.float32),
            torch.tensor(np.stack(a), dtype=torch.float32),
            torch.tensor(np.stack(r), dtype=torch.float32),
            torch.tensor(np.stack(rtg), dtype=torch.float32),
            torch.tensor(np.stack(ts), dtype=torch.long),
            torch.tensor(np.stack(mask), dtype=torch.bool),
        )


def batches_per_second(sample: Callable[[], object], batches: int) -> float:
    start = time.perf_counter()
    for _ in range(batches):
        sample()
    return batches / (time.perf_counter() - start)


def compare(loop: Callable[[], object], vectorised: Callable[[], object], steps: int,
            rounds: int) -> tuple[float, float]:
    """Median batches/s of both, timed in alternating rounds so that load from other
    processes hits both alike; the slow loop runs a tenth of the batches."""
    loop(), vectorised()  # warm-up
    loop_rates, vectorised_rates = [], []
    for _ in range(rounds):
        loop_rates.append(batches_per_second(loop, max(steps // 10, 1)))
        vectorised_rates.append(batches_per_second(vectorised, steps))
    return float(np.median(loop_rates)), float(np.median(vectorised_rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--context-len", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100,
                        help="timed SegmentSampler batches per round (the loop runs a tenth)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    parser.add_argument("--threads", type=int, nargs="*", default=None,
                        help="torch thread counts to time (default: torch's default, then 1)")
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=50, help="per task")
    parser.add_argument("--episode-len", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    default_threads = torch.get_num_threads()
    threads = args.threads or sorted({default_threads, 1}, reverse=True)
    store = synthetic_store(args.tasks, args.episodes, args.episode_len, obs_dim=39, act_dim=4)
    config = SamplerConfig(context_len=args.context_len, batch_size=args.batch_size)
    t0 = time.perf_counter()
    sampler = SegmentSampler(store, config, device=args.device)
    init_s = time.perf_counter() - t0
    loop = LoopSampler(store, config)
    sync = torch.cuda.synchronize if sampler.device.type == "cuda" else (lambda: None)

    def vectorised() -> None:
        sampler.sample()
        sync()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}, torch {torch.__version__} "
          f"(default {default_threads} threads), numpy {np.__version__}, device {args.device}")
    print(f"store: {store.num_tasks} tasks x {args.episodes} episodes x {args.episode_len} steps "
          f"({store.num_steps} steps), batch {args.batch_size}, K {args.context_len}, "
          f"sampler init {init_s:.2f}s; batches/s, median of {args.rounds} rounds")
    print(f"{'threads':>7}  {'per-sample loop':>15}  {'SegmentSampler':>14}  {'speed-up':>8}")
    for n in threads:
        torch.set_num_threads(n)
        slow, fast = compare(loop.sample, vectorised, args.steps, args.rounds)
        print(f"{n:>7}  {slow:>15.1f}  {fast:>14.1f}  {fast / slow:>7.1f}x")
    torch.set_num_threads(default_threads)


if __name__ == "__main__":
    main()
