"""Env steps per second of ``orl.eval.evaluate`` with a paper-sized DTPolicy against random actions.

Both policies drive the same vector env (``--num-envs`` envs of one Meta-World task, one wave of
episodes capped at ``--max-steps``) through ``evaluate``; the random policy's time is env
stepping plus the evaluator's bookkeeping, so the difference is what DT inference adds (the
overhead). The same envs stepped in a plain loop with random actions show what ``evaluate``
itself costs. ``act`` is timed inside the runs, and the bare model forward on a batch of the same
shape shows what ``act`` adds around the model: the last-step forward that ``act`` runs, and the
full forward over every step of the window that it would cost without ``last_only``. The model
(embed 256, 6 layers, 8 heads, K 20, obs 39, act 4) is randomly initialised: its cost does not
depend on the weights. Runs alternate in rounds so that load from other processes hits all
alike; medians are reported.

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
from orl.envs import env_id
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


def run(policy: Policy, args: argparse.Namespace) -> tuple[float, float]:
    """Env steps/s of one evaluation wave and the mean time of one ``act`` call (s)."""
    timed = TimedPolicy(policy)
    result = evaluate(timed, args.task, episodes=args.num_envs, num_envs=args.num_envs,
                      vector=args.vector, max_steps=args.max_steps, progress=False)
    return result.env_steps / result.seconds, timed.act_seconds / timed.act_calls


def raw_steps_per_second(args: argparse.Namespace) -> float:
    """Env steps/s of the same envs reset and stepped in a plain loop with random actions."""
    envs = [gymnasium.make(env_id(args.task)) for _ in range(args.num_envs)]
    policy = RandomPolicy()
    start = time.perf_counter()
    for i, env in enumerate(envs):
        env.reset(seed=i, options={"variation": i})
    for _ in range(args.max_steps):
        actions = policy.act(np.zeros((args.num_envs, OBS_DIM)), np.zeros(args.num_envs))
        for env, action in zip(envs, actions):
            env.step(action)
    seconds = time.perf_counter() - start
    for env in envs:
        env.close()
    return args.num_envs * args.max_steps / seconds


def forward_seconds(model: DecisionTransformer, batch: int, last_only: bool, repeats: int = 20) -> float:
    """Mean time of a bare model forward on a full (batch, K) window: with ``last_only`` the
    last step's action alone without a padding mask (what ``act`` runs once K steps were
    played), else every step's action through an explicit mask (the plain full forward)."""
    k = model.cfg.context_len
    device = next(model.parameters()).device
    inputs = (torch.randn(batch, k, OBS_DIM, device=device), torch.randn(batch, k, ACT_DIM, device=device),
              torch.randn(batch, k, device=device), torch.arange(k, device=device).expand(batch, k),
              None if last_only else torch.ones(batch, k, dtype=torch.bool, device=device))
    with torch.inference_mode():
        model(*inputs, last_only=last_only)
        start = time.perf_counter()
        for _ in range(repeats):
            model(*inputs, last_only=last_only)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return names[0]
    except (OSError, IndexError):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="reach-v3", help="Meta-World task")
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
    dt = DTPolicy(model, np.zeros(OBS_DIM), np.ones(OBS_DIM), target_return=4500.0, rtg_scale=1000.0)
    random = RandomPolicy()
    params = sum(p.numel() for p in model.parameters())

    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
          f"{platform.python_implementation()} {platform.python_version()}, torch {torch.__version__} "
          f"(default {default_threads} threads), gymnasium {gymnasium.__version__}, "
          f"mujoco {mujoco.__version__}, metaworld {importlib.metadata.version('metaworld')}, "
          f"device {args.device}")
    print(f"task {args.task}, {args.num_envs} envs ({args.vector}), {args.max_steps} steps per "
          f"episode; DT embed {args.embed_dim}, {args.n_layer} layers, {args.n_head} heads, "
          f"K {args.context_len}, {params / 1e6:.2f}M parameters; median of {args.rounds} rounds\n")
    print("| torch threads | policy | env steps/s | act ms/step | last-step forward ms | "
          "full forward ms | overhead vs random |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    warm_up = argparse.Namespace(**{**vars(args), "max_steps": 2})
    for n in threads:
        torch.set_num_threads(n)
        run(random, warm_up), run(dt, warm_up)  # Meta-World goal variations, spaces, torch
        rates: dict[str, list[tuple[float, float]]] = {"random": [], "DT": []}
        raw, forward, full = [], [], []
        for _ in range(args.rounds):
            raw.append(raw_steps_per_second(args))
            rates["random"].append(run(random, args))
            rates["DT"].append(run(dt, args))
            forward.append(forward_seconds(model, args.num_envs, last_only=True))
            full.append(forward_seconds(model, args.num_envs, last_only=False))
        (base, base_act), (dt_rate, dt_act) = (np.median(rates[p], axis=0) for p in ("random", "DT"))
        forward_ms, full_ms = (1e3 * float(np.median(t)) for t in (forward, full))
        print(f"| {n} | random, plain loop without evaluate | {np.median(raw):.0f} | - | - | - | - |")
        print(f"| {n} | random | {base:.0f} | {1e3 * base_act:.2f} | - | - | - |")
        print(f"| {n} | DT | {dt_rate:.0f} | {1e3 * dt_act:.2f} | {forward_ms:.2f} | {full_ms:.2f} | "
              f"{100 * (base / dt_rate - 1):+.0f}% |")
    torch.set_num_threads(default_threads)


if __name__ == "__main__":
    main()
