"""How close pruned policies stay to the unpruned one offline: on windows of episodes not used
for calibration, the mean squared difference between each model's predicted actions and the
unpruned model's, and each model's action MSE against the dataset (real steps only).

    python bench/liar_fidelity.py BASE_RUN PRUNED [PRUNED ...] [--first-episode 10] [--episodes 5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from orl.agents.dt import action_mse
from orl.agents.liar.calibration import calibration_batches
from orl.agents.liar.checkpoint import _source
from orl.api import load_trained_agent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("pruned", nargs="+", type=Path)
    parser.add_argument("--first-episode", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--windows", type=int, default=512)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--episode-starts", action="store_true",
                        help="one window from the first step of each episode instead (the first "
                             "steps of an evaluation episode)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = load_trained_agent(args.base, device="cpu")
    batches = calibration_batches(_source(args.base)[1]["config"], base.state_mean, args.episodes,
                                  args.windows, seed=args.seed, first_episode=args.first_episode,
                                  episode_starts=args.episode_starts)

    def predict(agent):
        with torch.no_grad():
            return [agent.forward_batch(b, agent.route(b.task)) for b in batches]

    reference = predict(base)
    for path in [args.base, *args.pruned]:
        agent = load_trained_agent(path, device="cpu")
        actions = predict(agent)
        to_base = sum(float(((a - r) ** 2 * b.mask[..., None]).sum()) / float(b.mask.sum())
                      for a, r, b in zip(actions, reference, batches)) / len(batches)
        to_data = sum(float(action_mse(a, b)) for a, b in zip(actions, batches)) / len(batches)
        print(json.dumps({"checkpoint": str(path), "sq_diff_to_base": to_base,
                          "action_mse_to_data": to_data}))


if __name__ == "__main__":
    main()
