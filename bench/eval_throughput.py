"""Env steps per second of ``orl.eval.evaluate`` with a DTPolicy against random actions.

Random actions and two DT policies drive the same vector env (``--num-envs`` envs of one
Meta-World task, one wave of episodes capped at ``--max-steps``) through ``evaluate``: the DT
policy as it runs (each token's embedding and first-block projection cached while the token is
in the window), and the same model through a full forward over the padded window at every step
(what the policy runs when a ``context_route`` picks the route from the window). The random
policy's time is env stepping plus the evaluator's bookkeeping, so the difference is what DT
inference adds (the overhead). The same envs stepped in a plain loop with random actions show
what ``evaluate`` itself costs. ``act`` is timed inside the runs, and again back to back on a
fixed observation after the window is full (``warm``: no env stepping in between, so the core's
caches hold the model's code and data). The model (embed 256, 6 layers, 8 heads, K 20, obs 39,
act 4 by default) is randomly initialised: its cost does not depend on the weights. Runs
alternate in rounds so that load from other processes hits all alike; medians are reported.

    python bench/eval_throughput.py --task reach-v3 --num-envs 10 --max-steps 100 --threads 2 1
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import time
from collections.abc import Sequence

import gymnasium
import mujoco
import numpy as np
import torch

from orl.agents.policy import DTPolicy
from orl.envs import env_id, resolve_tasks
from orl.eval import Policy, evaluate
from orl.eval.policy import reset_policy
from orl.model.dt import DecisionTransformer, DTConfig

OBS_DIM, ACT_DIM = 39, 4


class RandomPolicy:
    """Uniform actions in [-1, 1]: the cost of choosing an action is next to nothing."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def reset(self, num_envs: int) -> None:
        pass

    def act(self, obs: np.ndarray, reward: np.ndarray) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, size=(len(obs), ACT_DIM)).astype(np.float32)


class TimedPolicy:
    """Passes everything to ``policy`` and adds up the time spent in ``act``."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.act_seconds = 0.0
        self.act_calls = 0

    def reset(self, num_envs: int, tasks: Sequence[str]) -> None:
        reset_policy(self.policy, num_envs, tasks)

    def act(self, obs: np.ndarray, reward: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        action = self.policy.act(obs, reward)
        self.act_seconds += time.perf_counter() - start
        self.act_calls += 1
        return action


def run(policy: Policy, args: argparse.Namespace) -> tuple[float, float, float]:
    """Env steps/s of one evaluation wave, the mean time of one ``act`` call (s), and the time
    in ``act`` over the rest of the wave's time (env stepping and bookkeeping, same run)."""
    timed = TimedPolicy(policy)
    result = evaluate(timed, args.task, episodes=args.num_envs, num_envs=args.num_envs,
                      vector=args.vector, max_steps=args.max_steps, progress=False)
    rest = result.seconds - timed.act_seconds
    return result.env_steps / result.seconds, timed.act_seconds / timed.act_calls, timed.act_seconds / rest


def raw_steps_per_second(args: argparse.Namespace) -> float:
    """Env steps/s of the same envs reset and stepped in a plain loop with random actions."""
    envs = [gymnasium.make(env_id(task)) for task in resolve_tasks(args.task)
            for _ in range(args.num_envs)]
    policy = RandomPolicy()
    start = time.perf_counter()
    for i, env in enumerate(envs):
        env.reset(seed=i, options={"variation": i % args.num_envs})
    for _ in range(args.max_steps):
        actions = policy.act(np.zeros((len(envs), OBS_DIM)), np.zeros(len(envs)))
        for env, action in zip(envs, actions):
            env.step(action)
    seconds = time.perf_counter() - start
    for env in envs:
        env.close()
    return len(envs) * args.max_steps / seconds


def warm_act_seconds(policy: DTPolicy, num_envs: int, steps: int = 40) -> float:
    """Median time of one ``act`` once the window is full, called back to back."""
    obs, reward = np.random.default_rng(0).normal(size=(2, num_envs, OBS_DIM)).astype(np.float32)
    policy.reset(num_envs)
    times = []
    for step in range(policy.context_len + steps):
        start = time.perf_counter()
        policy.act(obs, reward[:, 0])
        if step >= policy.context_len:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return names[0]
    except (OSError, IndexError):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="reach-v3",
                        help="Meta-World task or benchmark (MT10: --num-envs envs of each task)")
    parser.add_argument("--num-envs", type=int, default=10)
    parser.add_argument("--max-steps", type=int, default=100, help="steps per episode")
    parser.add_argument("--vector", choices=("sync", "async"), default="sync")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    parser.add_argument("--threads", type=int, nargs="*", default=None,
                        help="torch thread counts to time (default: torch's default, then 1)")
    parser.add_argument("--embed-dim", type=int, default=256)
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-head", type=int, default=8)
    parser.add_argument("--context-len", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    default_threads = torch.get_num_threads()
    threads = args.threads or sorted({default_threads, 1}, reverse=True)
    torch.manual_seed(0)
    model = DecisionTransformer(DTConfig(
        obs_dim=OBS_DIM, act_dim=ACT_DIM, context_len=args.context_len, embed_dim=args.embed_dim,
        n_layer=args.n_layer, n_head=args.n_head,
    )).to(args.device).eval()
    stats = (np.zeros(OBS_DIM), np.ones(OBS_DIM), 4500.0, 1000.0)
    dts = {"DT": DTPolicy(model, *stats),
           "DT, full window": DTPolicy(model, *stats, context_route=lambda raw, valid: None)}
    random = RandomPolicy()
    params = sum(p.numel() for p in model.parameters())

    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
          f"{platform.python_implementation()} {platform.python_version()}, torch {torch.__version__} "
          f"(default {default_threads} threads), gymnasium {gymnasium.__version__}, "
          f"mujoco {mujoco.__version__}, metaworld {importlib.metadata.version('metaworld')}, "
          f"device {args.device}")
    total_envs = args.num_envs * len(resolve_tasks(args.task))
    print(f"task {args.task}, {args.num_envs} envs per task ({total_envs} in all, {args.vector}), "
          f"{args.max_steps} steps per episode; DT embed {args.embed_dim}, {args.n_layer} layers, "
          f"{args.n_head} heads, K {args.context_len}, {params / 1e6:.2f}M parameters; "
          f"median of {args.rounds} rounds\n")
    print("| torch threads | policy | env steps/s | act ms/step | warm act ms/step | "
          "overhead vs random | act / rest of its run |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    warm_up = argparse.Namespace(**{**vars(args), "max_steps": 2})
    for n in threads:
        torch.set_num_threads(n)
        for policy in (random, *dts.values()):  # Meta-World goal variations, spaces, torch
            run(policy, warm_up)
        rates: dict[str, list[tuple[float, float, float]]] = {name: [] for name in ("random", *dts)}
        raw: list[float] = []
        warm: dict[str, list[float]] = {name: [] for name in dts}
        for _ in range(args.rounds):
            raw.append(raw_steps_per_second(args))
            rates["random"].append(run(random, args))
            for name, policy in dts.items():
                rates[name].append(run(policy, args))
                warm[name].append(warm_act_seconds(policy, total_envs))
        base, base_act, _ = np.median(rates["random"], axis=0)
        print(f"| {n} | random, plain loop without evaluate | {np.median(raw):.0f} | - | - | - | - |")
        print(f"| {n} | random | {base:.0f} | {1e3 * base_act:.2f} | - | - | - |")
        for name in dts:
            rate, act, share = np.median(rates[name], axis=0)
            print(f"| {n} | {name} | {rate:.0f} | {1e3 * act:.2f} | "
                  f"{1e3 * float(np.median(warm[name])):.2f} | {100 * (base / rate - 1):+.0f}% | "
                  f"{100 * share:.0f}% |")
    torch.set_num_threads(default_threads)


if __name__ == "__main__":
    main()
