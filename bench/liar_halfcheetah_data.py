"""A HalfCheetah dataset in D4RL format for the LIAR experiments (no D4RL download needed).

How the data is made: a periodic open-loop gait ``a_j(t) = clip(amp_j sin(omega t + phase_j) +
bias_j, -1, 1)`` is tuned by the cross-entropy method (CEM) on HalfCheetah-v5 returns. The
dataset then mixes, like D4RL's "medium-replay"/"medium-expert" files, episodes of the gaits
CEM visited (from poor early ones to the best) played with Gaussian action noise, plus uniformly
random episodes, so returns span a wide range for return-conditioning.

    python bench/liar_halfcheetah_data.py OUT.hdf5 [--episodes 60] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import h5py
import numpy as np

from orl.envs.mujoco import make_mujoco, normalized_score
from orl.io import atomic_path

EPISODE_STEPS = 1000


def gait_actions(params: np.ndarray, steps: int) -> np.ndarray:
    """(steps, 6) actions of the gait ``params`` = [amp(6), phase(6), bias(6), omega]."""
    amp, phase, bias, omega = params[:6], params[6:12], params[12:18], params[18]
    t = np.arange(steps)[:, None]
    return np.clip(amp * np.sin(omega * t + phase) + bias, -1.0, 1.0)


def rollout(env, actions: np.ndarray, seed: int, noise: float, rng: np.random.Generator,
            record: bool = False) -> tuple[float, dict[str, np.ndarray] | None]:
    """Play ``actions`` (plus Gaussian noise) for one episode; its return and, optionally, data."""
    obs, _ = env.reset(seed=seed)
    rows: dict[str, list] = {k: [] for k in ("observations", "actions", "rewards", "terminals",
                                            "timeouts", "next_observations")}
    total = 0.0
    for t, action in enumerate(actions):
        action = np.clip(action + noise * rng.standard_normal(action.shape), -1.0, 1.0)
        next_obs, reward, terminated, truncated, _ = env.step(action.astype(np.float32))
        total += reward
        if record:
            for key, value in zip(rows, (obs, action, reward, terminated,
                                         truncated or t == len(actions) - 1, next_obs)):
                rows[key].append(value)
        obs = next_obs
        if terminated or truncated:
            break
    return total, ({k: np.asarray(v) for k, v in rows.items()} if record else None)


def cem(env, iterations: int, population: int, steps: int, rng: np.random.Generator
        ) -> list[np.ndarray]:
    """Gait parameters CEM visited: the mean of every iteration, poorest (first) to best."""
    mean = np.concatenate([np.full(6, 0.5), np.zeros(6), np.zeros(6), [0.3]])
    std = np.concatenate([np.full(6, 0.4), np.full(6, np.pi), np.full(6, 0.3), [0.15]])
    means = [mean.copy()]
    for it in range(iterations):
        samples = mean + std * rng.standard_normal((population, len(mean)))
        scores = [rollout(env, gait_actions(p, steps), seed=it, noise=0.0, rng=rng)[0]
                  for p in samples]
        elite = samples[np.argsort(scores)[-population // 5:]]
        mean, std = elite.mean(0), elite.std(0) + 0.02
        means.append(mean.copy())
        print(f"cem {it + 1}/{iterations}: best {max(scores):.0f} mean {np.mean(scores):.0f}")
    return means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cem-iterations", type=int, default=20)
    parser.add_argument("--cem-population", type=int, default=30)
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; choose another path")
    rng = np.random.default_rng(args.seed)
    env = make_mujoco("halfcheetah")
    start = time.perf_counter()
    gaits = cem(env, args.cem_iterations, args.cem_population, 500, rng)
    episodes, returns = [], []
    for i in range(args.episodes):
        if i % 6 == 5:  # one in six: uniformly random actions
            actions, noise = rng.uniform(-1, 1, (EPISODE_STEPS, 6)), 0.0
        else:  # a gait of any quality, mildly to strongly perturbed
            actions = gait_actions(gaits[rng.integers(len(gaits))], EPISODE_STEPS)
            noise = float(rng.choice([0.05, 0.2, 0.4]))
        ret, data = rollout(env, actions, seed=args.seed * 10_000 + i, noise=noise, rng=rng,
                            record=True)
        episodes.append(data)
        returns.append(ret)
    with atomic_path(args.out) as tmp, h5py.File(tmp, "w") as f:
        for key in episodes[0]:
            values = np.concatenate([e[key] for e in episodes])
            f[key] = values.astype(np.float32) if values.dtype == np.float64 else values
    returns = np.array(returns)
    print(f"{args.out}: {args.episodes} episodes, return {returns.mean():.0f} ± {returns.std():.0f}"
          f" (min {returns.min():.0f}, max {returns.max():.0f}; D4RL normalized "
          f"{normalized_score('halfcheetah', returns.mean()):.1f}), {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
