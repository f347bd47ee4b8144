"""Success of uniform random actions on some tasks, with the evaluation protocol of the results
(episode i plays goal variation i): the floor a learnt policy's success should be read against.

    python bench/random_policy.py window-close-v3 drawer-close-v3 --episodes 10
"""

from __future__ import annotations

import argparse

import numpy as np

from orl.eval import evaluate


class RandomPolicy:
    """Uniform actions in [-1, 1] (Meta-World's action box)."""

    def __init__(self, act_dim: int, seed: int) -> None:
        self.act_dim, self.rng = act_dim, np.random.default_rng(seed)

    def reset(self, num_envs: int) -> None:
        pass

    def act(self, obs: np.ndarray, reward: np.ndarray) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, size=(len(obs), self.act_dim)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="+")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = evaluate(RandomPolicy(4, args.seed), args.tasks, episodes=args.episodes,
                      num_envs=args.episodes, seed=args.seed, progress=False)
    result.print()


if __name__ == "__main__":
    main()
